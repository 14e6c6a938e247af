"""modelfs benchmark: one run, baselines measured side by side, ratios reported.

Systems (all on loopback, all reading the same files of one temp store):
  mount       `modelfs mount` on `modelfs serve`, in the region that holds the repo: the
              gRPC data path (one BidiReadObject stream per file)
  mount_http  `modelfs mount` on the same store, in a region that holds nothing and with
              no peers, so every probe is answered with the public path, which the store
              (`--cdn-base`) points at nginx: the ranged-HTTP data path real hubs use (CDN,
              OSS). Each such mount is checked on the way out: the store served no byte and
              the mount read only from nginx; otherwise the bench fails
  raw         the modelfs client library on the same server, no FUSE (gRPC path)
  local       the store's files read directly (cold: evicted from the page cache; warm: cached)
  rclone      `rclone mount` (--vfs-cache-mode off) of the same nginx serving the store;
              rclone and nginx are installed with apt-get when missing; without nginx the
              mount_http and rclone rows are null, without rclone the rclone rows

Workloads (mount, mount_http and rclone each run every streaming one: cold_seq, shards,
random, random_large, safetensors, warm, ttfb):
  cold_seq      1 GiB read sequentially in 1 MiB blocks; also raw and local
  shards        a "model" of 4 safetensors shards read one after another; also raw and local
  random        pread 4 KiB and 1 MiB from 1 and 4 threads (IOPS, MB/s, p50/p99), each run
                over distinct blocks of a 256/512 MiB file its system has not read yet: no
                block is read twice, so it shows what read-ahead costs or gains; kept beside
                random_large for its 1-thread and 1 MiB runs
  random_large  pread 4 KiB and 64 KiB at uniformly random block-aligned offsets of the
                1 GiB file (far larger than any read-ahead window), 4 threads, --seconds per
                run; offsets may repeat, as a real random reader's do; each thread draws from
                its own seeded generator, so every system reads the same offsets in the same
                order. Each run is on a fresh mount (its page cache empty) and drops the
                file's pages first (POSIX_FADV_DONTNEED through the mount); the store's and
                nginx's copy stays in the host page cache, as in every workload here. This is
                the §7 random-read workload (IOPS, MB/s, p50/p99)
  safetensors   the 4 shards loaded by read and by mmap through fresh mounts, vs the raw
                client fetching the same bytes and the local files (page cache)
  warm          re-read of the 1 GiB file after close/reopen (page cache kept) vs local
  ttfb          open + first byte of cold files (p50/p95): 0 peers, and 3 peers (mount in a
                region holding nothing; the third peer holds the repo), counting probes
  small_files   a few hundred ~2 KB files of another repo read whole one after another, cold
                (files/s), each open + first byte timed (p50/p95) once the repo's region is
                known: mount, rclone
  shared        4 processes reading the 1 GiB file at once vs 1 process (cold, fresh mount)
  disk_cache    the 1 GiB file read cold through `--cache-dir` (network + filling the cache),
                then, once it is sealed, re-read through a fresh mount on the same cache dir
                (FUSE page cache empty): with the cache file in the page cache, and after its
                pages are dropped (read from disk); the 4 shards loaded by read and by mmap
                through fresh mounts on that cache; the bytes the store served after the
                remount (should be 0)
  store_vs_pump `modelfs serve` against a minimal gRPC byte pump, one stream
  memory        peak RSS (VmHWM) of every mount process, read just before it is unmounted

`--only http` runs cold_seq (and the raw client's) and random_large alone, on a store of
just the 1 GiB file: the two data paths beside rclone in a couple of minutes.

Writes a JSON report (--out), prints the numbers side by side, then each target of
DESIGN.md §7 with the measured value and whether it was met. Everything started is
stopped, unmounted and removed on the way out, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from fusefs.cache.digest import Digest
from fusefs.cache.entry import Layout, is_sealed
from fusefs.cache.store import CacheLimits, DiskCache, cache_key
from fusefs.data.client import DEFAULT_MEMORY_BUDGET, DataClient
from fusefs.data.malloc_tuning import tune_malloc
from fusefs.hub.client import HubClient, RepoId
from fusefs.testing import Mount, ServerHandle, peak_rss_mib, start_mount, start_regions

from bench_peers import (
    RCLONE_FLAGS,
    PeerUnavailable,
    ensure_packages,
    find_binary,
    nginx_serving,
    rclone_mount,
    unmount_all_under,
    version_line,
)
from bench_report import Report, add_path_ratios, add_ratios, print_report, targets

MiB = 1 << 20
REPO = RepoId("bench", "model")
SHARDS = 4
SMALL_FILES = 40  # 1 MiB each: the first 20 for ttfb with no peers, the rest with 3 peers
VERIFY_FILE = "small-039.bin"  # checked through every rclone mount; nothing there reads it later
RANDOM_RUNS = ((4096, 1), (4096, 4), (MiB, 1), (MiB, 4))  # (block, threads)
RANDOM_FILE_BYTES = {4096: 256 * MiB, MiB: 512 * MiB}
LARGE_RANDOM_BLOCKS = (4096, 64 * 1024)  # random_large: preads over the 1 GiB file
LARGE_RANDOM_THREADS = 4
SYSTEMS = ("mount", "mount_http", "rclone")
HTTP_REGION = "away"  # mount_http's region: in no topology, so probes get the public path
# the mounts that ran workloads cold_seq..safetensors (mount and mount_http)
MAIN_MOUNTS = ("main", "st-read", "st-mmap", "http-main", "http-st-read", "http-st-mmap")
CACHE_SIZE = "8G"  # --cache-size: room for everything the disk-cache workload reads
SMALL_COUNT = 400  # bench/small: files of ~2 KB, read one after another
SEAL_TIMEOUT = 120.0  # seconds to wait, after the cold reads, for the cache to seal the files


def log(msg: str) -> None:
    """Progress on stderr, so stdout is the report alone."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --- the store ---------------------------------------------------------------------------


def shard_names() -> list[str]:
    return [f"model-{i:05d}-of-{SHARDS:05d}.safetensors" for i in range(1, SHARDS + 1)]


def random_name(block: int, threads: int) -> str:
    return f"random-{block // 1024}k-x{threads}.bin"


def write_random(path: Path, size: int, rng: np.random.Generator) -> None:
    # random_raw is ~4x faster than Generator.bytes; the content only has to be incompressible
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.bit_generator.random_raw(n // 8).tobytes())
            left -= n


def make_small_store(root: Path) -> Path:
    """The repo bench/small: SMALL_COUNT files of about 2 KB; returns its directory."""
    repo = root / "bench" / "small"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(SMALL_COUNT):
        size = int(rng.integers(1536, 2560))
        (repo / f"s{i:04d}.json").write_bytes(rng.bytes(size))
    return repo


def make_store(root: Path, big: int, minimal: bool = False) -> Path:
    """The repo bench/model under root; returns its directory. `minimal`: only the big
    file and the one rclone is checked with (--only http)."""
    repo = root / "bench" / "model"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_random(repo / "big.bin", big, rng)
    if minimal:
        write_random(repo / VERIFY_FILE, MiB, rng)
        return repo
    for i in range(SMALL_FILES):
        write_random(repo / f"small-{i:03d}.bin", MiB, rng)
    for block, threads in RANDOM_RUNS:  # one file per run, so each run starts cold
        write_random(repo / random_name(block, threads), RANDOM_FILE_BYTES[block], rng)
    from safetensors.numpy import save_file

    for shard, name in enumerate(shard_names(), 1):  # ~64 MiB each
        tensors = {
            f"layers.{shard}.{i}.weight": rng.standard_normal((2048, 2048), dtype=np.float32)
            for i in range(4)
        }
        save_file(tensors, str(repo / name))
    return repo


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- workloads ---------------------------------------------------------------------------


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (flushed first: dirty pages would stay;
    through a FUSE mount, that mount's copy, which has nothing to flush)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            os.fsync(fd)
        except OSError:
            pass  # a read-only mount refuses fsync: nothing there is dirty
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_fraction(paths: list[Path]) -> float | None:
    """Share of the files' pages that are in the page cache (mincore), None for no pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    pages = resident = 0
    for path in paths:
        size = path.stat().st_size
        if not size:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap {path}")
            try:
                vec = np.zeros((size + page - 1) // page, dtype=np.uint8)
                if _libc.mincore(addr, size, vec.ctypes.data) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore {path}")
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        pages += len(vec)
        resident += int((vec & 1).sum())
    return resident / pages if pages else None


def read_sequential(path: Path, block: int = MiB) -> tuple[int, float]:
    t = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            total += len(chunk)
    return total, time.perf_counter() - t


def read_files_mb_s(paths: list[Path]) -> float:
    """MB/s reading the files one after another, as a model load goes shard after shard."""
    t = time.perf_counter()
    total = sum(read_sequential(p)[0] for p in paths)
    return total / (time.perf_counter() - t) / 1e6


def load_shards(directory: Path, how: str) -> float:
    """Seconds to load every shard with the safetensors library, by read or by mmap."""
    from safetensors.numpy import load, load_file

    t = time.perf_counter()
    for name in shard_names():
        if how == "read":
            tensors = load((directory / name).read_bytes())
        else:
            tensors = load_file(str(directory / name))  # maps the file, as transformers does
        for array in tensors.values():
            float(array.reshape(-1)[::4096].sum())  # touch every page the way a model load would
    return time.perf_counter() - t


def concurrent_readers(path: Path, readers: int) -> float:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    t = time.perf_counter()
    procs = [ctx.Process(target=read_sequential, args=(path,)) for _ in range(readers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return time.perf_counter() - t


PUMP_SERVER = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
import grpc
from fusefs.data.malloc_tuning import tune_malloc
from fusefs.proto import storage_pb2 as pb, storage_pb2_grpc
CHUNK, TOTAL = 2 << 20, int(sys.argv[1])
tune_malloc()  # the same allocator settings as modelfs serve: compare the serving, not malloc

class Pump(storage_pb2_grpc.StorageServicer):
    def BidiReadObject(self, requests, context):
        next(requests)
        payload = os.urandom(CHUNK)
        yield pb.BidiReadObjectResponse(metadata=pb.Object(size=TOTAL))
        for i in range(TOTAL // CHUNK):
            yield pb.BidiReadObjectResponse(object_data_ranges=[pb.ObjectRangeData(
                checksummed_data=pb.ChecksummedData(content=payload, crc32c=0),
                read_range=pb.ReadRange(read_offset=i * CHUNK, read_length=CHUNK, read_id=1),
                range_end=i == TOTAL // CHUNK - 1)])

server = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_send_message_length", 16 << 20)])
storage_pb2_grpc.add_StorageServicer_to_server(Pump(), server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def grpc_drain(endpoint: str, bucket: str, obj: str, size: int) -> float:
    """MB/s of one stream reading `size` bytes, parsing messages, nothing else."""
    import grpc

    from fusefs.proto import storage_pb2 as pb
    from fusefs.proto import storage_pb2_grpc

    channel = grpc.insecure_channel(endpoint, [("grpc.max_receive_message_length", 32 * MiB)])
    request = pb.BidiReadObjectRequest(
        read_object_spec=pb.BidiReadObjectSpec(bucket=f"projects/_/buckets/{bucket}", object=obj),
        read_ranges=[pb.ReadRange(read_offset=0, read_length=size, read_id=1)],
    )
    t = time.perf_counter()
    got = 0
    for response in storage_pb2_grpc.StorageStub(channel).BidiReadObject(iter([request])):
        for d in response.object_data_ranges:
            got += len(d.checksummed_data.content)
    elapsed = time.perf_counter() - t
    channel.close()
    assert got == size, (got, size)
    return size / elapsed / 1e6


def pump_vs_store(store_endpoint: str, size: int) -> dict:
    """`modelfs serve` against a minimal byte pump, same client, same size, one stream."""
    import subprocess

    pump = subprocess.Popen(
        [sys.executable, "-c", PUMP_SERVER, str(size)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert pump.stdout is not None
        port = int(pump.stdout.readline())
        pump_mb_s = max(grpc_drain(f"127.0.0.1:{port}", "x", "x", size) for _ in range(2))
    finally:
        pump.kill()
        pump.wait()
        if pump.stdout:
            pump.stdout.close()
    store_mb_s = max(
        grpc_drain(store_endpoint, "home", "bench/model/big.bin", size) for _ in range(2)
    )
    return {"pump_mb_s": pump_mb_s, "store_mb_s": store_mb_s, "ratio": store_mb_s / pump_mb_s}


async def raw_client_sequential(hub: str, paths: list[str], block: int = MiB) -> float:
    """Seconds for the client library (no FUSE) to fetch these files, one after another."""
    async with HubClient(hub) as client:
        snap = await client.snapshot(REPO)
        sizes = {f.path: f.size for f in snap.files}
        locations = [
            (await client.ask_location(REPO, snap.commit, p, "home")).location for p in paths
        ]
    async with DataClient() as data:
        t = time.perf_counter()
        for path, location in zip(paths, locations, strict=False):
            reader = data.open_reader(location, sizes[path])
            off = 0
            while chunk := await reader.read(off, block):
                off += len(chunk)
        return time.perf_counter() - t


def timed_preads(
    path: Path, block: int, threads: int, seconds: float, offsets: Callable[[int], Iterator[int]]
) -> dict:
    """pread `block` bytes at each offset thread i draws from `offsets(i)`, from `threads`
    threads at once, until the offsets run out or `seconds` pass: IOPS, MB/s, p50/p99, and
    how many distinct offsets were read."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    seen: list[set[int]] = [set() for _ in range(threads)]
    stop = time.perf_counter() + seconds

    def worker(i: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            for off in offsets(i):
                if time.perf_counter() >= stop:
                    break
                t = time.perf_counter()
                n = len(os.pread(fd, block, off))
                latencies[i].append(time.perf_counter() - t)
                seen[i].add(off)
                if n != block:
                    raise RuntimeError(f"{path}: short read at {off}: {n} of {block} bytes")
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed = time.perf_counter() - t0
    merged = sorted(x for mine in latencies for x in mine)
    n = len(merged)
    return {
        "block": block,
        "threads": threads,
        "ops": n,
        "distinct_offsets": len(set().union(*seen)),
        "seconds": elapsed,
        "iops": n / elapsed,
        "mb_s": n * block / elapsed / 1e6,
        "p50_ms": merged[n // 2] * 1e3,
        "p99_ms": merged[min(n - 1, n * 99 // 100)] * 1e3,
    }


def random_preads(
    path: Path, size: int, block: int, threads: int, seconds: float, seed: int
) -> dict:
    """pread of random, distinct, block-aligned blocks of a file this system has not read.

    No block is read twice, so a read is served from memory only when the system brought
    it in ahead of time (read-ahead), never because an earlier read left it cached. A run
    stops after `seconds`, or sooner once every block has been read. The same seed gives
    every system the same offsets.
    """
    slots = list(range(0, size - block + 1, block))
    random.Random(seed).shuffle(slots)
    out = timed_preads(path, block, threads, seconds, lambda i: iter(slots[i::threads]))
    out["all_blocks_read"] = out["ops"] == len(slots)
    return out


def random_preads_large(
    path: Path, size: int, block: int, threads: int, seconds: float, seed: int
) -> dict:
    """pread of uniformly random block-aligned blocks of a large file for `seconds`.

    Thread i draws offsets from Random(seed, i), so every system reads the same offsets in
    the same order, as far as it gets; offsets may repeat. The file's pages are dropped
    first.
    """
    slots = size // block
    evict(path)

    def offsets(i: int) -> Iterator[int]:
        rng = random.Random(f"{seed}/{i}")
        while True:
            yield rng.randrange(slots) * block

    return timed_preads(path, block, threads, seconds, offsets)


def open_first_byte(path: Path) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        f.read(1)
    return time.perf_counter() - t


def small_files(paths: list[Path]) -> dict:
    """Each (cold) file opened, its first byte read (timed), then the rest, one file after
    another: files per second over the whole run, and open + first byte p50/p95."""
    firsts = []
    size = 0
    started = time.perf_counter()
    for path in paths:
        t = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            first = f.read(1)
            firsts.append(time.perf_counter() - t)
            size += len(first) + len(f.read())
    elapsed = time.perf_counter() - started
    firsts.sort()
    return {
        "files": len(paths),
        "bytes": size,
        "files_s": len(paths) / elapsed,
        "ttfb_p50_ms": statistics.median(firsts) * 1e3,
        "ttfb_p95_ms": firsts[int(len(firsts) * 0.95) - 1] * 1e3,
    }


def ttfb(paths: list[Path]) -> dict:
    """Open + first byte of each (cold) file, one after another."""
    samples = sorted(open_first_byte(p) for p in paths)
    return {
        "files": len(samples),
        "p50_ms": statistics.median(samples) * 1e3,
        "p95_ms": samples[int(len(samples) * 0.95) - 1] * 1e3,
    }


# --- the systems under test --------------------------------------------------------------


@dataclass
class Bench:
    work: Path
    store: Path  # what modelfs serve and nginx both serve: <store>/bench/model/...
    server: ServerHandle
    seconds: float
    peer_url: str | None = None  # nginx; None when the rclone baseline is skipped
    cdn_url: str | None = None  # nginx, the store's --cdn-base; None: no mount_http
    hwm: dict[str, float | None] = field(default_factory=dict)  # mount process peak RSS, MiB

    @property
    def local(self) -> Path:
        return self.store / "bench" / "model"

    @contextmanager
    def modelfs_mount(self, label: str, *args: str, repo: str = "bench/model") -> Iterator[Mount]:
        """A fresh `modelfs mount` of the repo."""
        m = start_mount(self.work / f"mnt-{label}", self.server.hub, "--repo", repo, *args)
        try:
            yield m
        finally:
            self.hwm[label] = peak_rss_mib(m.pid)  # before unmount: the process exits with it
            m.unmount()

    @contextmanager
    def modelfs(self, label: str, *args: str) -> Iterator[Path]:
        """A fresh `modelfs mount`; yields the repo directory in it."""
        with self.modelfs_mount(label, *args) as m:
            yield m.path / "bench" / "model"

    def store_bytes(self) -> int:
        """Bytes the store has served so far, gRPC and CDN."""
        stats = self.server.stats()
        return sum(stats["grpc_bytes"].values()) + stats["cdn_bytes"]

    def store_data_bytes(self) -> int:
        """Bytes the store has served on every data plane: gRPC, CDN, region paths, GCS."""
        stats = self.server.stats()
        return (
            self.store_bytes()
            + sum(stats["internal_http"]["bytes"].values())
            + stats["gcs"]["bytes"]
        )

    @contextmanager
    def modelfs_http(self, label: str, repo: str = "bench/model") -> Iterator[Path]:
        """A fresh `modelfs mount` whose files all take the public path, nginx, by ranged
        HTTP; yields the repo directory. Checked once the work is done: the store served
        no byte, and every byte the mount read came from nginx."""
        assert self.cdn_url is not None
        before = self.store_data_bytes()
        with self.modelfs_mount(label, "--region", HTTP_REGION, repo=repo) as m:
            yield m.path / "bench" / "model"
            status = m.status()
        read = {k: v for k, v in status["bytes_read"].items() if v}
        served = self.store_data_bytes() - before
        elsewhere = [
            f"{f['path']} from {f['endpoint']}"
            for f in status["files"]
            if not str(f["endpoint"]).startswith(self.cdn_url)
        ]
        if set(read) != {"cdn"} or served or elsewhere:
            raise RuntimeError(
                f"mount {label} did not read by HTTP from nginx alone: bytes read by source "
                f"{read}, bytes served by the store {served}, files read elsewhere {elsewhere}"
            )

    def available(self, system: str) -> bool:
        return {"mount": True, "mount_http": bool(self.cdn_url), "rclone": bool(self.peer_url)}[
            system
        ]

    def fresh(self, system: str, label: str) -> AbstractContextManager[Path]:
        """A fresh mount of the repo by one of SYSTEMS; yields the repo directory."""
        if system == "mount":
            return self.modelfs(label, "--region", "home")
        if system == "mount_http":
            return self.modelfs_http(f"http-{label}")
        return self.rclone(label)

    @contextmanager
    def rclone(self, label: str, repo: str = "model", verify: str = VERIFY_FILE) -> Iterator[Path]:
        """A fresh `rclone mount` of nginx, checked to return the right bytes of `verify`."""
        assert self.peer_url is not None
        with rclone_mount(self.peer_url, self.work / f"rclone-{label}", self.work / "rclone") as rm:
            model = rm.path / "bench" / repo
            local = self.store / "bench" / repo
            if sha256_of(model / verify) != sha256_of(local / verify):
                raise PeerUnavailable(f"rclone mount returned wrong bytes for {verify}")
            try:
                yield model
            finally:
                self.hwm[f"rclone-{label}"] = peak_rss_mib(rm.proc.pid)


def start_nginx(cleanup: ExitStack, work: Path, store: Path, report: Report) -> str | None:
    """nginx serving the store, for rclone to mount and for the store's --cdn-base (so it
    starts before the store); its URL, or None when it cannot run (the rows go null)."""
    info = report["rclone"] = {"available": False, "skipped_because": None, "flags": RCLONE_FLAGS}
    report["mount_http"] = {"available": False, "region": HTTP_REGION, "cdn_base": None}
    try:
        ensure_packages({"rclone": "rclone", "nginx": "nginx"})
        info["version"] = version_line([str(find_binary("rclone")), "version"])
        info["nginx"] = version_line([str(find_binary("nginx")), "-v"])
        nginx = cleanup.enter_context(nginx_serving(store, work / "nginx"))
    except PeerUnavailable as e:
        print(f"bench: nginx unavailable, mount_http and rclone rows are null: {e}", flush=True)
        info["skipped_because"] = report["mount_http"]["skipped_because"] = str(e)
        return None
    info["available"] = True
    report["mount_http"].update(available=True, cdn_base=nginx.url)
    return nginx.url


def start_store(
    cleanup: ExitStack, store: Path, regions: dict[str, list[str]], cdn_url: str | None
) -> ServerHandle:
    """modelfs serve playing the regions; with nginx, its public path is nginx."""
    server = start_regions(store, regions, *(("--cdn-base", cdn_url) if cdn_url else ()))
    cleanup.callback(quietly, "stopping modelfs serve", server.stop)
    return server


def skip_peer(b: Bench, report: Report, reason: str) -> None:
    print(f"bench: rclone baseline skipped, its rows are null: {reason}", flush=True)
    report["rclone"].update(available=False, skipped_because=reason)
    b.peer_url = None


T = TypeVar("T")


def on_system(
    b: Bench, report: Report, system: str, label: str, work: Callable[[Path], T]
) -> T | None:
    """work(repo directory) on a fresh mount by `system`; None when that system cannot run
    here (rclone that does not come up is skipped from then on; the others fail the run)."""
    if not b.available(system):
        return None
    try:
        with b.fresh(system, label) as model:
            return work(model)
    except PeerUnavailable as e:
        if system != "rclone":
            raise
        skip_peer(b, report, str(e))
        return None


def streaming_suite(model: Path, local: Path, seconds: float) -> dict:
    """Cold and warm sequential, shards, first bytes, random reads, on one fresh mount."""
    size = (local / "big.bin").stat().st_size
    n, t = read_sequential(model / "big.bin")
    assert n == size, (n, size)
    out: dict[str, Any] = {"cold_seq_mb_s": size / t / 1e6}
    n, t = read_sequential(model / "big.bin")
    out["warm_seq_mb_s"] = size / t / 1e6
    out["shards_mb_s"] = read_files_mb_s([model / name for name in shard_names()])
    out["ttfb"] = ttfb([model / f"small-{i:03d}.bin" for i in range(20)])
    out["random"] = []
    for block, threads in RANDOM_RUNS:
        name = random_name(block, threads)
        out["random"].append(
            random_preads(
                model / name,
                (local / name).stat().st_size,
                block,
                threads,
                seconds,
                seed=block + threads,
            )
        )
    return out


def measure_raw_seq(b: Bench, report: Report) -> None:
    log("raw client")
    size = report["size_bytes"]
    report["raw_client_seq_mb_s"] = (
        size / trio.run(raw_client_sequential, b.server.hub, ["big.bin"]) / 1e6
    )


def measure_baselines(b: Bench, report: Report) -> None:
    size = report["size_bytes"]
    log("store vs byte pump")
    report["store_vs_pump"] = pump_vs_store(b.server.grpc["home"], size)
    measure_raw_seq(b, report)
    raw_shards_s = trio.run(raw_client_sequential, b.server.hub, shard_names())
    shards = [b.local / name for name in shard_names()]
    total = sum(p.stat().st_size for p in shards)
    report["shards"] = {
        "files": SHARDS,
        "bytes": total,
        "raw_client_mb_s": total / raw_shards_s / 1e6,
    }
    report["safetensors"] = {"raw_client_fetch_s": raw_shards_s}
    log("local disk")
    evict(b.local / "big.bin")
    report["local_cold_seq_mb_s"] = size / read_sequential(b.local / "big.bin")[1] / 1e6
    for p in shards:
        evict(p)
    report["shards"]["local_cold_mb_s"] = read_files_mb_s(shards)
    read_sequential(b.local / "big.bin")  # in the page cache: the best a disk cache can do
    report["local_warm_seq_mb_s"] = size / read_sequential(b.local / "big.bin")[1] / 1e6


def measure_streaming(b: Bench, report: Report) -> None:
    report["random"] = {}
    got: dict[str, dict[str, Any]] = {}
    for system in SYSTEMS:
        if b.available(system):
            log(f"{system}: cold/warm sequential, shards, first bytes, random reads")
        got[system] = (
            on_system(b, report, system, "main", lambda m: streaming_suite(m, b.local, b.seconds))
            or {}
        )
        report[f"{system}_cold_seq_mb_s"] = got[system].get("cold_seq_mb_s")
        report[f"{system}_warm_seq_mb_s"] = got[system].get("warm_seq_mb_s")
        report["shards"][f"{system}_mb_s"] = got[system].get("shards_mb_s")
        report["random"][system] = got[system].get("random")
    report["ttfb_0_peers"] = got["mount"]["ttfb"]
    report["mount_http_ttfb"] = got["mount_http"].get("ttfb")
    report["rclone_ttfb"] = got["rclone"].get("ttfb")


def measure_cold_seq(b: Bench, report: Report) -> None:
    """The cold sequential read alone, each system on a fresh mount (--only http)."""
    size = report["size_bytes"]

    def cold(model: Path) -> float:
        n, t = read_sequential(model / "big.bin")
        assert n == size, (n, size)
        return size / t / 1e6

    for system in SYSTEMS:
        if b.available(system):
            log(f"{system}: cold sequential")
        report[f"{system}_cold_seq_mb_s"] = on_system(b, report, system, "seq", cold)


def measure_random_large(b: Bench, report: Report) -> None:
    """random_large: each system and block size on a fresh mount, the same offsets."""
    size = (b.local / "big.bin").stat().st_size
    out: dict[str, Any] = {
        "file": "big.bin",
        "bytes": size,
        "threads": LARGE_RANDOM_THREADS,
        "seconds": b.seconds,
    }
    report["random_large"] = out
    for system in SYSTEMS:
        runs = []
        for block in LARGE_RANDOM_BLOCKS:
            if b.available(system):
                log(f"{system}: random {block // 1024} KiB preads over the 1 GiB file")
            run = on_system(
                b,
                report,
                system,
                f"rl-{block // 1024}k",
                lambda model, block=block: random_preads_large(
                    model / "big.bin", size, block, LARGE_RANDOM_THREADS, b.seconds, seed=block
                ),
            )
            if run is not None:
                runs.append(run)
        out[system] = runs or None


def measure_safetensors(b: Bench, report: Report) -> None:
    st = report["safetensors"]
    for how in ("read", "mmap"):
        log(f"safetensors by {how}")
        for system in SYSTEMS:
            st[f"{system}_{how}_s"] = on_system(
                b, report, system, f"st-{how}", lambda model, how=how: load_shards(model, how)
            )
        load_shards(b.local, how)  # warm the local files
        st[f"local_{how}_s"] = load_shards(b.local, how)


def measure_shared(b: Bench, report: Report) -> None:
    log("4 readers of one file")
    with b.modelfs("shared", "--region", "home") as model:
        report["shared_4_readers_s"] = concurrent_readers(model / "big.bin", 4)
    report["shared_1_reader_s"] = report["size_bytes"] / (report["mount_cold_seq_mb_s"] * 1e6)


def measure_peers(b: Bench, report: Report) -> None:
    """First bytes through 3 peer regions, and the probes it takes to open every file."""
    log("3 peers: first bytes and probes")
    peers = ["p1", "p2", "p3"]
    with b.modelfs("peers", "--region", "away", "--inter-regions", ",".join(peers)) as model:
        files = sorted(model.iterdir())  # listed before counting: probes are per open
        b.server.reset_stats()
        smalls = [model / f"small-{i:03d}.bin" for i in range(20, SMALL_FILES)]
        report["ttfb_3_peers"] = ttfb(smalls)
        for path in files:
            if path not in smalls:
                open_first_byte(path)
        probes = sum(b.server.stats()["probes"].values())
    report["probes"] = {"files": len(files), "peers": len(peers), "probes": probes}


def measure_small_files(b: Bench, report: Report) -> None:
    """Small files one after another, cold, through the mount and through rclone. Each
    system reads its first file before the timing (the mount learns the repo's region,
    rclone lists the directory); the checked file is the last, outside the timed ones."""
    log(f"small files: {SMALL_COUNT} of ~2 KB, one after another")
    names = sorted(os.listdir(b.store / "bench" / "small"))
    first, timed, checked = names[0], names[1:-1], names[-1]
    out: dict[str, Any] = {"files": len(timed), "mount": None, "rclone": None}
    report["small_files"] = out
    with b.modelfs_mount("small", "--region", "home", repo="bench/small") as m:
        repo = m.path / "bench" / "small"
        open_first_byte(repo / first)
        out["mount"] = small_files([repo / n for n in timed])
        out["mount"]["status"] = {k: m.status()[k] for k in ("probes", "streams", "errors")}
        if sha256_of(repo / checked) != sha256_of(b.store / "bench" / "small" / checked):
            raise RuntimeError(f"the mount returned wrong bytes for {checked}")
    if b.peer_url:
        try:
            with b.rclone("small", repo="small", verify=checked) as repo:
                os.listdir(repo)
                open_first_byte(repo / first)
                out["rclone"] = small_files([repo / n for n in timed])
        except PeerUnavailable as e:
            skip_peer(b, report, str(e))


def wait_until(predicate: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until predicate() held, or None when it did not within timeout."""
    t = time.perf_counter()
    while not predicate():
        if time.perf_counter() - t > timeout:
            return None
        time.sleep(0.05)
    return time.perf_counter() - t


async def cache_entries_of(hub: str, paths: list[str]) -> list[tuple[str, int, Digest | None]]:
    """(cache key, size, digest) of each file, as a mount of the repo names its cache entry."""
    async with HubClient(hub) as client:
        snap = await client.snapshot(REPO)
    files = {f.path: f for f in snap.files}
    out = []
    for p in paths:
        f = files[p]
        digest = Digest.of(f)
        key = cache_key(digest, f.size, REPO.key, snap.content_id(f), p)
        out.append((key, f.size, digest))
    return out


def measure_disk_cache(b: Bench, report: Report) -> None:
    """Cold through the disk cache, then warm from it after a remount (fresh FUSE page cache):
    with the cache files in the page cache, and with their pages dropped (read from disk)."""
    cache = b.work / "cache"
    args = (
        "--region",
        "home",
        "--cache-dir",
        str(cache),
        "--cache-size",
        CACHE_SIZE,
        "--cache-min-free",
        "1",
    )
    size = report["size_bytes"]
    big = "big.bin"
    shards = shard_names()
    dc: dict[str, Any] = {"cache_size": CACHE_SIZE, "files": 1 + SHARDS}
    report["disk_cache"] = dc

    def entries() -> list[Path]:
        return sorted(p for p in (cache / "v1" / "entries").glob("*/*") if ".tmp." not in p.name)

    # Sealed = complete and verified: read from the entries' headers, since the status
    # counter counts seal confirmations, which can exceed the files.
    disk = DiskCache(cache, CacheLimits(size=0))  # for path_of only; never opened
    expected = trio.run(cache_entries_of, b.server.hub, [big, *shards])

    def sealed(key: str, size: int, digest: Digest | None) -> bool:
        return is_sealed(disk.path_of(key), Layout(size, disk.limits.block_size), digest)

    def all_sealed(m: Mount) -> bool:
        return m.status()["cache"]["sealed"] >= len(expected) and all(sealed(*e) for e in expected)

    log("disk cache: cold through the cache (filling it)")
    with b.modelfs_mount("cache-fill", *args) as m:
        model = m.path / "bench" / "model"
        before = b.store_bytes()
        n, t = read_sequential(model / big)
        assert n == size, (n, size)
        dc["cold_fill_mb_s"] = size / t / 1e6
        dc["cold_fill_store_bytes"] = b.store_bytes() - before
        dc["shards_cold_fill_mb_s"] = read_files_mb_s([model / name for name in shards])
        dc["seal_wait_s"] = wait_until(lambda: all_sealed(m), SEAL_TIMEOUT)
        dc["fill_status"] = m.status()["cache"]
    dc["files_sealed"] = sum(sealed(*e) for e in expected)
    if dc["seal_wait_s"] is None:
        log(
            f"disk cache: not all sealed within {SEAL_TIMEOUT:.0f} s: "
            f"{dc['files_sealed']} of {len(expected)} files"
        )
    dc["entries"] = len(entries())
    dc["entry_bytes_on_disk"] = sum(p.stat().st_blocks * 512 for p in entries())

    def remounted(label: str, work: Callable[[Path], float]) -> dict[str, Any]:
        """work(repo dir) on a fresh mount of the same cache; what it returned, store bytes."""
        with b.modelfs_mount(label, *args) as m:
            model = m.path / "bench" / "model"
            resident = resident_fraction(entries())
            before = b.store_bytes()
            value = work(model)
            served = b.store_bytes() - before
            source = (
                os.getxattr(model / big, "user.modelfs.source").decode()
                if label.startswith("cache-warm")
                else None
            )
            status = m.status()["cache"]
        return {
            "value": value,
            "store_bytes": served,
            "entries_resident": resident,
            "source": source,
            "hit_bytes": status["hit_bytes"],
            "miss_bytes": status["miss_bytes"],
        }

    def read_big(model: Path) -> float:
        n, t = read_sequential(model / big)
        assert n == size, (n, size)
        return size / t / 1e6

    log("disk cache: warm after remount, cache files in the page cache")
    dc["warm_remount"] = remounted("cache-warm", read_big)
    for how in ("read", "mmap"):
        log(f"disk cache: safetensors by {how} after remount")
        dc[f"safetensors_{how}"] = remounted(
            f"cache-st-{how}", lambda model, how=how: load_shards(model, how)
        )
    log("disk cache: warm after remount, cache files evicted from the page cache")
    for path in entries():
        evict(path)
    dc["warm_remount_evicted"] = remounted("cache-warm-evicted", read_big)
    dc["remount_store_bytes"] = sum(
        dc[k]["store_bytes"]
        for k in ("warm_remount", "warm_remount_evicted", "safetensors_read", "safetensors_mmap")
    )
    if dc["remount_store_bytes"]:
        log(f"disk cache: the store served {dc['remount_store_bytes']} bytes after the remount")


# --- running it all ----------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Cleanup runs to the end even when Ctrl-C is pressed again."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = [signal.signal(s, signal.SIG_IGN) for s in sigs]
    try:
        yield
    finally:
        for s, handler in zip(sigs, old, strict=False):
            signal.signal(s, handler)


def quietly(what: str, fn: Callable[[], object]) -> None:
    """Run one cleanup step; a failure is reported and the next steps still run."""
    try:
        fn()
    except Exception as e:
        print(f"bench: cleanup: {what} failed: {e}", file=sys.stderr)


def remove_workdir(work: Path) -> None:
    left = unmount_all_under(work)
    if left:
        print(f"bench: cleanup: lazily unmounted {', '.join(left)}", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)


WORKLOADS = ("all", "small_files", "http")


def run(cleanup: ExitStack, args: argparse.Namespace, report: Report) -> None:
    work = Path(tempfile.mkdtemp(prefix="modelfs-bench-"))
    cleanup.callback(quietly, f"removing {work}", lambda: remove_workdir(work))
    log(f"writing the store in {work}")
    store = work / "store"
    if args.only == "small_files":
        make_small_store(store)
        url = start_nginx(cleanup, work, store, report)
        server = start_store(cleanup, store, {"home": ["bench/*"]}, url)
        b = Bench(work, store, server, args.seconds, peer_url=url, cdn_url=url)
        measure_small_files(b, report)
        return
    if args.only == "http":
        make_store(store, report["size_bytes"], minimal=True)
        url = start_nginx(cleanup, work, store, report)
        server = start_store(cleanup, store, {"home": ["bench/*"]}, url)
        b = Bench(work, store, server, args.seconds, peer_url=url, cdn_url=url)
        measure_raw_seq(b, report)
        measure_cold_seq(b, report)
        measure_random_large(b, report)
        record_memory(b, report)
        return
    make_small_store(store)
    make_store(store, report["size_bytes"])
    url = start_nginx(cleanup, work, store, report)
    # home holds the repo; of three peers only the last does
    regions = {"home": ["bench/*"], "p1": ["none/*"], "p2": ["none/*"], "p3": ["bench/*"]}
    server = start_store(cleanup, store, regions, url)
    b = Bench(work, store, server, args.seconds, peer_url=url, cdn_url=url)
    measure_baselines(b, report)
    measure_streaming(b, report)
    measure_random_large(b, report)
    measure_safetensors(b, report)
    measure_shared(b, report)
    measure_peers(b, report)
    measure_small_files(b, report)
    measure_disk_cache(b, report)
    record_memory(b, report)


def record_memory(b: Bench, report: Report) -> None:
    """Peak RSS of each mount process; the headline is the max over the mounts that ran
    the sequential, shard, random and safetensors workloads."""
    by_mount = report["mount_vm_hwm_mib_by_mount"] = {
        k: v for k, v in b.hwm.items() if not k.startswith("rclone-")
    }
    report["mount_vm_hwm_mib"] = max(
        (v for k, v in by_mount.items() if k in MAIN_MOUNTS and v is not None), default=None
    )
    rclone_hwm = [v for k, v in b.hwm.items() if k.startswith("rclone-") and v is not None]
    report["rclone_vm_hwm_mib"] = max(rclone_hwm, default=None)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big file")
    ap.add_argument(
        "--seconds", type=float, default=5.0, help="longest duration of each random-read run"
    )
    ap.add_argument("--out", default="bench-out/report.json")
    ap.add_argument(
        "--only", choices=WORKLOADS, default="all", help="run one workload (with its baselines)"
    )
    args = ap.parse_args()
    started = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    tune_malloc()  # as the modelfs command does, so the raw client is measured at its best
    report: Report = {
        "size_bytes": args.size_mib * MiB,
        "memory_budget_mib": DEFAULT_MEMORY_BUDGET / MiB,
    }
    cleanup = ExitStack()
    try:
        run(cleanup, args, report)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping and removing what it started", file=sys.stderr)
        return 130
    finally:
        with interrupts_ignored():
            cleanup.close()
    if args.only == "all":
        add_ratios(report)
    elif args.only == "http":
        add_path_ratios(report)
    ts = targets(report)
    report["targets"] = [
        {
            "source": t.source,
            "what": t.what,
            "op": t.op,
            "bound": t.bound,
            "measured": t.measured,
            "met": t.met,
        }
        for t in ts
    ]
    report["elapsed_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print_report(report, ts)
    print(f"\nreport: {out}")
    print(f"total elapsed: {report['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
