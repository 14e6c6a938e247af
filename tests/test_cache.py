"""The persistent disk cache under real mounts: remounts, a stopped store, damage, sharing,
eviction and a killed mount. Bytes fetched are counted at the store."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fusefs.cache.entry import Layout
from fusefs.testing import (
    MiB,
    free_port,
    is_mounted,
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_server,
    wait_for,
    write_file,
)

BLOCK = 64 << 10
SIZES = {
    "remount": [24 * MiB + 7, 40 * MiB],
    "stopped": [6 * MiB + 1, 1 * MiB],
    "damaged": [10 * MiB + 3],
    "shared": [24 * MiB + 11, 20 * MiB],
    "evict": [12 * MiB] * 5,
    "crash": [48 * MiB + 5],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    files: dict[str, list[bytes]] = {}
    for seed, (repo, sizes) in enumerate(SIZES.items()):
        files[repo] = [sample_bytes(size, seed=100 * seed + i) for i, size in enumerate(sizes)]
        for i, data in enumerate(files[repo]):
            write_file(root / "acme" / repo / f"f{i}.bin", data)
    server = start_server(root, "--faults")
    yield root, server, files
    server.stop()


def fetched(server) -> int:
    return sum(server.stats()["grpc_bytes"].values())


def entry_path(cache: Path, data: bytes) -> Path:
    key = "sha256-" + hashlib.sha256(data).hexdigest()
    return cache / "v1" / "entries" / key[-2:] / key


def cache_mount(server, where: Path, repo: str, cache: Path, *args: str):
    return start_mount(
        where,
        server.hub,
        "--repo",
        f"acme/{repo}",
        "--region",
        "local",
        "--cache-dir",
        str(cache),
        "--cache-min-free",
        "1",
        *args,
    )


OFFSETS = [5 * MiB + 4096, 17 * MiB - 4096, 33 * MiB]  # not 0: a read at 0 starts a prefetch


def test_second_read_after_remount_fetches_nothing(store, tmp_path):
    _, server, files = store
    big, sparse = files["remount"]
    cache = tmp_path / "cache"
    m = cache_mount(server, tmp_path / "a", "remount", cache)
    try:
        d = m.path / "acme" / "remount"
        assert sha256_file(d / "f0.bin") == hashlib.sha256(big).hexdigest()
        with open(d / "f1.bin", "rb") as f:  # a random reader caches only what it reads
            for off in OFFSETS:
                assert os.pread(f.fileno(), 4096, off) == sparse[off : off + 4096]
        wait_for(lambda: m.status()["cache"]["sealed"] >= 1, what="f0 sealed")
    finally:
        m.unmount()
    assert os.path.getsize(entry_path(cache, sparse)) > 0
    assert os.stat(entry_path(cache, sparse)).st_blocks * 512 < len(sparse) // 2  # sparse
    before = fetched(server)
    port = free_port()
    m = cache_mount(server, tmp_path / "b", "remount", cache, "--metrics", f"127.0.0.1:{port}")
    try:
        d = m.path / "acme" / "remount"
        assert sha256_file(d / "f0.bin") == hashlib.sha256(big).hexdigest()
        with open(d / "f1.bin", "rb") as f:
            for off in OFFSETS:
                assert os.pread(f.fileno(), 4096, off) == sparse[off : off + 4096]
        assert os.getxattr(d / "f0.bin", "user.modelfs.source") == b"cache"
        state = m.status()["cache"]
        assert state["hit_bytes"] >= len(big) and state["used"] >= len(big)
        text = run_cli("status", str(m.path)).stdout
        assert "cache" in text and "● acme/remount/f0.bin" in text
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'modelfs_cache_bytes_total{kind="hit"}' in metrics
    finally:
        m.unmount()
    assert fetched(server) == before


def test_a_sealed_file_reads_with_the_store_stopped(tmp_path):
    root = tmp_path / "store"
    kept, other = sample_bytes(6 * MiB + 1, seed=7), sample_bytes(MiB, seed=8)
    write_file(root / "acme" / "m" / "kept.bin", kept)
    write_file(root / "acme" / "m" / "other.bin", other)
    server = start_server(root)
    cache = tmp_path / "cache"
    args = (
        "--repo",
        "acme/m",
        "--region",
        "local",
        "--cache-dir",
        str(cache),
        "--cache-min-free",
        "1",
        "--read-timeout",
        "3",
    )
    try:
        m = start_mount(tmp_path / "a", server.hub, *args)
        try:
            assert (m.path / "acme/m/kept.bin").read_bytes() == kept
            wait_for(lambda: m.status()["cache"]["sealed"] >= 1, what="sealed")
        finally:
            m.unmount()
        m = start_mount(tmp_path / "b", server.hub, *args)
    finally:
        server.stop()
    try:
        assert (m.path / "acme/m/kept.bin").read_bytes() == kept  # no hub, no store: disk only
        with pytest.raises(OSError) as e:  # and the store really is gone
            (m.path / "acme/m/other.bin").read_bytes()
        assert e.value.errno == errno.EIO
    finally:
        m.unmount()
    # A node rebooting while the hub is down still mounts, from the listing the cache kept.
    m = start_mount(tmp_path / "c", server.hub, *args)
    try:
        assert (m.path / "acme/m/kept.bin").read_bytes() == kept
        assert "using the listing kept in the cache" in m.log_text()
    finally:
        m.unmount()
    # Without a cache there is nothing to fall back on: one clear line, non-zero exit.
    (tmp_path / "d").mkdir()
    failed = run_cli(
        "mount", str(tmp_path / "d"), "--hub", server.hub, "--repo", "acme/m", "--region", "local"
    )
    assert failed.returncode != 0 and "unreachable" in failed.stderr


def test_a_damaged_entry_is_detected_and_refetched_never_served(store, tmp_path):
    _, server, files = store
    (data,) = files["damaged"]
    cache = tmp_path / "cache"
    m = cache_mount(server, tmp_path / "a", "damaged", cache)
    try:
        assert (m.path / "acme/damaged/f0.bin").read_bytes() == data
        wait_for(lambda: m.status()["cache"]["sealed"] >= 1, what="sealed")
    finally:
        m.unmount()
    path = entry_path(cache, data)
    pos = Layout(len(data), BLOCK).data_offset + 5 * BLOCK + 1000
    with open(path, "r+b") as f:  # a bit rots on disk
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0x01]))
    before = fetched(server)
    m = cache_mount(server, tmp_path / "b", "damaged", cache)
    try:
        assert (m.path / "acme/damaged/f0.bin").read_bytes() == data
        assert m.status()["cache"]["damaged_blocks"] >= 1
    finally:
        m.unmount()
    refetched = fetched(server) - before
    assert 0 < refetched <= 4 * BLOCK  # the damaged block, not the file
    with open(path, "rb") as f:
        f.seek(pos)
        assert f.read(1) == byte  # repaired on disk too


def test_two_mounts_sharing_a_cache_fetch_each_block_once(store, tmp_path):
    _, server, files = store
    cache = tmp_path / "cache"
    before = fetched(server)
    a = cache_mount(server, tmp_path / "a", "shared", cache)
    b = cache_mount(server, tmp_path / "b", "shared", cache)
    try:
        jobs = [(m, i) for i in range(2) for m in (a, b)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            digests = list(
                pool.map(
                    lambda job: sha256_file(job[0].path / "acme" / "shared" / f"f{job[1]}.bin"),
                    jobs,
                )
            )
        assert digests == [hashlib.sha256(files["shared"][i]).hexdigest() for _, i in jobs]
        served = a.status()["cache"]["hit_bytes"] + b.status()["cache"]["hit_bytes"]
    finally:
        a.unmount()
        b.unmount()
    total = sum(len(d) for d in files["shared"])
    assert fetched(server) - before == total
    assert served > 0  # one mount read from disk what the other fetched


def test_eviction_keeps_the_cache_under_its_limit_while_a_reader_is_active(store, tmp_path):
    _, server, files = store
    cache = tmp_path / "cache"
    limit = 40 * MiB
    entries = cache / "v1" / "entries"

    def on_disk() -> int:
        return sum(p.stat().st_blocks * 512 for p in entries.glob("*/*") if ".tmp." not in p.name)

    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, on_disk())
            time.sleep(0.005)

    m = cache_mount(server, tmp_path / "a", "evict", cache, "--cache-size", str(limit))
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        d = m.path / "acme" / "evict"
        with open(d / "f0.bin", "rb") as held:  # a reader stays active throughout
            assert held.read() == files["evict"][0]
            for i in range(1, 5):
                assert (d / f"f{i}.bin").read_bytes() == files["evict"][i]
                held.seek(0)
                assert held.read(MiB) == files["evict"][0][:MiB]
            assert entry_path(cache, files["evict"][0]).exists()
        state = m.status()["cache"]
    finally:
        stop.set()
        sampler.join()
        m.unmount()
    assert state["evictions"] >= 1, state  # more when the kernel releases closed files sooner
    assert peak <= limit, f"cache took {peak} bytes, over its {limit}-byte limit"
    assert on_disk() <= limit


def test_kill_9_while_filling_leaves_a_cache_the_next_mount_uses(store, tmp_path):
    _, server, files = store
    (data,) = files["crash"]
    cache = tmp_path / "cache"
    server.add_fault("delay", ms=40, count=10_000)  # a slow store: the kill lands mid-fill
    try:
        m = cache_mount(server, tmp_path / "a", "crash", cache)
        f = open(m.path / "acme/crash/f0.bin", "rb")
        assert f.read(16 * MiB) == data[: 16 * MiB]
        time.sleep(0.3)
        os.kill(m.pid, signal.SIGKILL)  # while prefetched blocks are still being stored
        m.wait_exit(10)
        with pytest.raises(OSError):
            f.close()  # the connection to the dead mount is gone
        wait_for(lambda: not is_mounted(m.path), what="auto unmount")
    finally:
        server.clear_faults()
    assert not list(cache.glob("v1/entries/*/*.tmp.*"))
    before = fetched(server)
    m = cache_mount(server, tmp_path / "b", "crash", cache)
    try:
        assert (m.path / "acme/crash/f0.bin").read_bytes() == data
        reused = m.status()["cache"]["hit_bytes"]
    finally:
        m.unmount()
    assert reused >= 16 * MiB
    assert fetched(server) - before <= len(data) - 16 * MiB
