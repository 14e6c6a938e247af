"""modelfs benchmark: one run, baselines measured side by side, ratios reported.

Workloads (each against the same `modelfs serve` on loopback):
  cold_seq      1 GiB read sequentially in 1 MiB blocks: mount vs raw client library
  random        pread 4 KiB and 1 MiB from 4 threads through the mount (IOPS, MB/s, p50/p99)
  warm          re-read of the same file after close/reopen (page cache kept) vs local disk
  safetensors   4 shards loaded through a fresh mount by read and by mmap, vs the raw client
                fetching the same bytes, and vs the same files on local disk (page cache)
  shared        4 processes reading the 1 GiB file at once vs 1 process (cold, fresh mount)
  ttfb          open + first byte of cold files (p50/p95), with 0 peers and with 3 peers
                (mount in a region holding nothing; the third peer holds the repo)
Writes a JSON report (--out) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mounting import start_mount  # noqa: E402
from servers import start_regions  # noqa: E402

from fusefs.data.client import DataClient  # noqa: E402
from fusefs.data.memory import tune_malloc  # noqa: E402
from fusefs.hub.client import HubClient, RepoId  # noqa: E402

MiB = 1 << 20
REPO = RepoId("bench", "model")




def make_store(root: Path, big: int, small_count: int) -> None:
    repo = root / "bench" / "model"
    repo.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(repo / "big.bin", "wb") as f:
        left = big
        while left:
            n = min(left, 64 * MiB)
            f.write(rng.bytes(n))
            left -= n
    for i in range(small_count):
        (repo / f"small-{i:03d}.bin").write_bytes(rng.bytes(MiB))
    with open(repo / "random.bin", "wb") as f:  # its own file, so random reads start cold
        f.write(rng.bytes(256 * MiB))
    from safetensors.numpy import save_file
    for shard in range(1, SHARDS + 1):  # ~64 MiB each, as a "model" of four shards
        tensors = {f"layers.{shard}.{i}.weight": rng.standard_normal((2048, 2048), dtype=np.float32)
                   for i in range(4)}
        save_file(tensors, str(repo / f"model-{shard:05d}-of-{SHARDS:05d}.safetensors"))


SHARDS = 4


def shard_names() -> list[str]:
    return [f"model-{i:05d}-of-{SHARDS:05d}.safetensors" for i in range(1, SHARDS + 1)]


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
from fusefs.data.memory import tune_malloc
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
        read_ranges=[pb.ReadRange(read_offset=0, read_length=size, read_id=1)])
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
    pump = subprocess.Popen([sys.executable, "-c", PUMP_SERVER, str(size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(pump.stdout.readline())
        pump_mb_s = max(grpc_drain(f"127.0.0.1:{port}", "x", "x", size) for _ in range(2))
    finally:
        pump.kill()
        pump.wait()
    store_mb_s = max(grpc_drain(store_endpoint, "home", "bench/model/big.bin", size)
                     for _ in range(2))
    return {"pump_mb_s": pump_mb_s, "store_mb_s": store_mb_s, "ratio": store_mb_s / pump_mb_s}


def drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_sequential(path: Path, block: int = MiB) -> tuple[int, float]:
    t = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(block):
            total += len(chunk)
    return total, time.perf_counter() - t


async def raw_client_sequential(hub: str, paths: list[str], block: int = MiB) -> float:
    """Seconds for the client library (no FUSE) to fetch these files, one after another."""
    async with HubClient(hub) as client:
        snap = await client.snapshot(REPO)
        sizes = {f.path: f.size for f in snap.files}
        locations = [(await client.ask_location(REPO, snap.commit, p, "home")).location
                     for p in paths]
    async with DataClient() as data:
        t = time.perf_counter()
        for path, location in zip(paths, locations):
            reader = data.open_reader(location, sizes[path])
            off = 0
            while chunk := await reader.read(off, block):
                off += len(chunk)
        return time.perf_counter() - t


def random_preads(path: Path, size: int, block: int, threads: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = []
        fd = os.open(path, os.O_RDONLY)
        try:
            while time.perf_counter() < stop:
                off = rng.randrange(0, size - block) // 4096 * 4096
                t = time.perf_counter()
                os.pread(fd, block, off)
                mine.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        with lock:
            latencies.extend(mine)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)
    return {
        "block": block, "threads": threads, "ops": n, "iops": n / elapsed,
        "mb_s": n * block / elapsed / 1e6,
        "p50_ms": latencies[n // 2] * 1e3, "p99_ms": latencies[min(n - 1, n * 99 // 100)] * 1e3,
    }


def ttfb(paths: list[Path]) -> dict:
    """Open + first byte of each (cold) file, one after another."""
    samples = []
    for p in paths:
        t = time.perf_counter()
        with open(p, "rb", buffering=0) as f:
            f.read(1)
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"files": len(samples), "p50_ms": statistics.median(samples) * 1e3,
            "p95_ms": samples[int(len(samples) * 0.95) - 1] * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the big file")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each random-read run")
    ap.add_argument("--out", default="bench-out/report.json")
    args = ap.parse_args()
    tune_malloc()  # as the modelfs command does, so the raw client is measured at its best
    size = args.size_mib * MiB
    report: dict = {"size_bytes": size}
    with tempfile.TemporaryDirectory(prefix="modelfs-bench-") as tmp:
        work = Path(tmp)
        store = work / "store"
        make_store(store, size, small_count=40)
        local = store / "bench" / "model" / "big.bin"
        # home holds the repo; of three peers only the last does
        server = start_regions(store, {"home": ["bench/*"], "p1": ["none/*"], "p2": ["none/*"],
                                       "p3": ["bench/*"]})
        try:
            report["store_vs_pump"] = pump_vs_store(server.grpc["home"], size)
            # raw client library, no FUSE
            raw_t = trio.run(raw_client_sequential, server.hub, ["big.bin"])
            report["raw_client_seq_mb_s"] = size / raw_t / 1e6
            # cold through a fresh mount
            m = start_mount(work / "mnt", server.hub, "--repo", "bench/model", "--region", "home")
            try:
                model = m.path / "bench" / "model"
                big = model / "big.bin"
                n, t = read_sequential(big)
                assert n == size
                report["mount_cold_seq_mb_s"] = size / t / 1e6
                n, t = read_sequential(big)
                report["mount_warm_seq_mb_s"] = size / t / 1e6
                read_sequential(local)  # local file in page cache: the best a disk cache can do
                n, t = read_sequential(local)
                report["local_warm_seq_mb_s"] = size / t / 1e6
                report["ttfb_0_peers"] = ttfb(sorted(model.glob("small-*.bin"))[:20])
                rnd = model / "random.bin"
                report["random"] = []
                for block in (4096, MiB):
                    drop_page_cache(rnd)
                    report["random"].append(random_preads(rnd, 256 * MiB, block, 4, args.seconds))
                with open(f"/proc/{m.pid}/status") as f:
                    report["mount_vm_hwm_mib"] = next(
                        int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
            finally:
                m.unmount()
            st = report["safetensors"] = {
                "raw_client_fetch_s": trio.run(raw_client_sequential, server.hub, shard_names())}
            for how in ("read", "mmap"):
                m = start_mount(work / f"mnt-{how}", server.hub, "--repo", "bench/model",
                                "--region", "home")
                try:
                    st[f"mount_{how}_s"] = load_shards(m.path / "bench" / "model", how)
                finally:
                    m.unmount()
                load_shards(store / "bench" / "model", how)  # warm the local files
                st[f"local_{how}_s"] = load_shards(store / "bench" / "model", how)
                st[f"ratio_mount_{how}_vs_raw"] = st[f"mount_{how}_s"] / st["raw_client_fetch_s"]
            m = start_mount(work / "mnt-shared", server.hub, "--repo", "bench/model",
                            "--region", "home")
            try:
                report["shared_4_readers_s"] = concurrent_readers(
                    m.path / "bench" / "model" / "big.bin", 4)
            finally:
                m.unmount()
            report["shared_1_reader_s"] = size / (report["mount_cold_seq_mb_s"] * 1e6)
            report["ratio_4_readers_vs_1"] = report["shared_4_readers_s"] / report["shared_1_reader_s"]
            m = start_mount(work / "mnt3", server.hub, "--repo", "bench/model", "--region",
                            "away", "--inter-regions", "p1,p2,p3")
            try:
                report["ttfb_3_peers"] = ttfb(sorted((m.path / "bench" / "model").glob(
                    "small-*.bin"))[20:])
            finally:
                m.unmount()
        finally:
            server.stop()
    report["ratio_cold_mount_vs_raw"] = report["mount_cold_seq_mb_s"] / report["raw_client_seq_mb_s"]
    report["ratio_warm_mount_vs_local"] = report["mount_warm_seq_mb_s"] / report["local_warm_seq_mb_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{'workload':38} {'value':>12}")
    sp = report["store_vs_pump"]
    print(f"{'gRPC byte pump, one stream':38} {sp['pump_mb_s']:10.0f} MB/s")
    print(f"{'modelfs serve, one stream':38} {sp['store_mb_s']:10.0f} MB/s")
    print(f"{'  ratio serve/pump (target >= 0.8)':38} {sp['ratio']:12.2f}")
    print(f"{'raw client, cold sequential':38} {report['raw_client_seq_mb_s']:10.0f} MB/s")
    print(f"{'mount, cold sequential':38} {report['mount_cold_seq_mb_s']:10.0f} MB/s")
    print(f"{'  ratio mount/raw (target >= 0.8)':38} {report['ratio_cold_mount_vs_raw']:12.2f}")
    print(f"{'mount, warm re-read':38} {report['mount_warm_seq_mb_s']:10.0f} MB/s")
    print(f"{'local file, page cache':38} {report['local_warm_seq_mb_s']:10.0f} MB/s")
    print(f"{'  ratio warm/local (target >= 0.9)':38} {report['ratio_warm_mount_vs_local']:12.2f}")
    for r in report["random"]:
        label = f"random {r['block'] // 1024} KiB x{r['threads']} threads"
        print(f"{label:38} "
              f"{r['iops']:10.0f} IOPS {r['mb_s']:8.0f} MB/s p50 {r['p50_ms']:.2f} ms "
              f"p99 {r['p99_ms']:.2f} ms")
    for peers in (0, 3):
        r = report[f"ttfb_{peers}_peers"]
        print(f"{f'open + first byte, cold, {peers} peers':38} p50 {r['p50_ms']:.2f} ms "
              f"p95 {r['p95_ms']:.2f} ms")
    st = report["safetensors"]
    print(f"{'safetensors, raw client fetch':38} {st['raw_client_fetch_s']:10.2f} s")
    for how in ("read", "mmap"):
        print(f"{f'safetensors by {how}, mount (cold)':38} {st[f'mount_{how}_s']:10.2f} s"
              f"   local {st[f'local_{how}_s']:.2f} s")
        print(f"{f'  ratio mount/raw ({how}; target <= 1.5)':38} "
              f"{st[f'ratio_mount_{how}_vs_raw']:12.2f}")
    print(f"{'4 readers of one file vs 1 (<= 1.5)':38} {report['ratio_4_readers_vs_1']:12.2f}")
    print(f"{'mount peak RSS':38} {report['mount_vm_hwm_mib']:10.0f} MiB")
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
