"""Thousands of files, many readers: a 10,000-file repo read through a mount under
`ulimit -n 1024`, every byte checked, and the mount's streams and descriptors bounded."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fusefs.data.client import DEFAULT_MAX_STREAMS
from fusefs.fs.mount import FD_RESERVE
from fusefs.testing import MiB, sample_bytes, start_mount, start_server, wait_for

SMALL = 10_000
LARGE = [16 * MiB + 5, 8 * MiB, 3 * MiB + 1]
READERS = 8
NOFILE = 1024  # soft and hard: the mount cannot raise it


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """acme/many: 10,000 small files (a few hundred bytes to 4 KB, every size different
    content) and a few large ones; {path: bytes}."""
    root = tmp_path_factory.mktemp("store")
    repo = root / "acme" / "many"
    repo.mkdir(parents=True)
    pool = sample_bytes(SMALL * 8 + 4096, seed=61)
    files: dict[str, bytes] = {}
    for i in range(SMALL):
        size = 200 + (i * 397) % 3900
        files[f"f{i:05d}.txt"] = pool[i * 8 : i * 8 + size]
    for i, size in enumerate(LARGE):
        files[f"large-{i}.bin"] = sample_bytes(size, seed=62 + i)
    for name, data in files.items():
        (repo / name).write_bytes(data)
    server = start_server(root)
    yield server, files
    server.stop()


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def test_ten_thousand_files_eight_readers_under_ulimit_1024(many, tmp_path):
    server, files = many
    m = start_mount(
        tmp_path / "mnt",
        server.hub,
        "--repo",
        "acme/many",
        "--region",
        "local",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--cache-min-free",
        "1",
        "--linger",
        "1",
        nofile=NOFILE,
    )
    try:
        limits = Path(f"/proc/{m.pid}/limits").read_text()
        assert any(
            line.startswith("Max open files") and line.split()[3:5] == ["1024", "1024"]
            for line in limits.splitlines()
        ), limits
        server.reset_stats()
        repo = m.path / "acme" / "many"
        peak_fds, peak_status_streams = 0, 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_fds, peak_status_streams
            last_status = 0.0
            while not done.is_set():
                peak_fds = max(peak_fds, fd_count(m.pid))
                if time.monotonic() - last_status > 0.5:
                    last_status = time.monotonic()
                    streams = m.status()["streams"]
                    peak_status_streams = max(peak_status_streams, streams["open"])
                time.sleep(0.01)

        wrong: list[str] = []

        def read(name: str) -> None:
            with open(repo / name, "rb") as f:
                if f.read() != files[name]:
                    wrong.append(name)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        try:
            names = sorted(files, key=lambda n: (not n.startswith("large"), n))
            with ThreadPoolExecutor(READERS) as pool:
                list(pool.map(read, names))
        finally:
            done.set()
            sampler.join()
        elapsed = time.monotonic() - started
        assert wrong == []

        state = m.status()
        stats = server.stats()
        total = sum(len(d) for d in files.values())
        streams = state["streams"]
        print(
            f"\n{len(files)} files, {total / MiB:.1f} MiB in {elapsed:.1f}s "
            f"({len(files) / elapsed:.0f} files/s); peak descriptors {peak_fds} of {NOFILE}, "
            f"streams {streams['peak']} (the store saw {stats['streams_peak'].get('local')}) "
            f"of {DEFAULT_MAX_STREAMS}, {streams['waited']} waited"
        )
        assert state["errors"] == {}
        assert set(state["bytes_read"]) <= {"local", "cache"}, state["bytes_read"]  # no CDN
        # Every byte served; more is allowed: under memory pressure the kernel drops pages
        # of files being read and asks for them again (seen with a 350 MiB memory cgroup).
        assert sum(state["bytes_read"].values()) >= total
        assert state["stream_refusals"] == 0
        assert stats["cdn_requests"] == 0
        # Streams: the mount's cap, and what the store saw at once (it refuses the 257th).
        # The store counts a closed stream until its handler notices the cancel: a little
        # over the mount's count, never near the store's limit.
        assert streams["limit"] == DEFAULT_MAX_STREAMS
        assert streams["peak"] <= DEFAULT_MAX_STREAMS and peak_status_streams <= streams["peak"]
        assert stats["streams_peak"]["local"] <= 2 * DEFAULT_MAX_STREAMS
        # Descriptors: a cache entry per file open or lingering (at most the readers plus
        # max_streams), and the reserve for everything else.
        assert peak_fds <= READERS + DEFAULT_MAX_STREAMS + FD_RESERVE, peak_fds
        assert peak_fds < NOFILE // 2

        def all_closed() -> bool:
            now = m.status()
            return now["data_paths"] == 0 and now["streams"]["open"] == 0

        wait_for(all_closed, timeout=20, what="every data path closed after the linger")
        state = m.status()
        assert state["files_open"] == 0
        assert state["data_paths_closed"] >= len(files)
        assert fd_count(m.pid) < 100
    finally:
        m.unmount()
