"""Faults under a real mount: the store breaks, the reader sees exact bytes or a prompt EIO."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time

import pytest

from fusefs.testing import (
    MiB,
    is_mounted,
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_server,
    write_file,
)

SIZE = 32 * MiB + 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    for i in range(6):
        write_file(root / "acme" / "faulty" / f"f{i}.bin", sample_bytes(SIZE, seed=100 + i))
    server = start_server(root, "--faults")
    mp = tmp_path_factory.mktemp("mnt") / "models"
    m = start_mount(
        mp, server.hub, "--repo", "acme/faulty", "--region", "local", "--read-timeout", "4"
    )
    yield root, server, mp, m
    m.unmount()
    server.stop()
    assert not is_mounted(mp)


@pytest.mark.parametrize(
    ("index", "kind", "params"),
    [
        (0, "break", {"after_bytes": 7 * MiB + 11}),
        (1, "corrupt", {"count": 2}),
        (2, "unavailable", {"count": 3}),
        (3, "redirect", {"routing_token": "r1"}),
        (4, "delay", {"ms": 50, "count": 5}),
    ],
)
def test_fault_mid_read_keeps_bytes_exact(setup, index, kind, params):
    root, server, mp, _ = setup
    server.clear_faults()
    server.reset_stats()
    server.add_fault(kind, **params)
    rel = f"acme/faulty/f{index}.bin"
    assert sha256_file(mp / rel) == sha256_file(root / rel)
    stats = server.stats()
    assert stats["faults_injected"][kind] >= 1
    if kind == "break":  # exactly one reopen for one break
        assert sum(stats["streams_opened"].values()) == 2


def test_stopped_store_gives_eio_within_deadline_and_recovers(setup):
    root, server, mp, _ = setup
    rel = "acme/faulty/f5.bin"
    fd = os.open(mp / rel, os.O_RDONLY)  # resolved and streaming before the store stops
    assert len(os.pread(fd, 4096, 0)) == 4096
    os.kill(server.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            os.pread(fd, MiB, 20 * MiB)
        elapsed = time.monotonic() - start
        assert e.value.errno == errno.EIO
        assert elapsed < 4 + 3, elapsed  # the deadline plus scheduling slack
        # the namespace comes from the pinned listing: still there
        assert os.stat(mp / rel).st_size == SIZE
        assert len(os.listdir(mp / "acme" / "faulty")) == 6
    finally:
        os.kill(server.pid, signal.SIGCONT)
    with open(root / rel, "rb") as src:
        src.seek(20 * MiB)
        assert os.pread(fd, MiB, 20 * MiB) == src.read(MiB)
    os.close(fd)


def _d_state_tasks(pids) -> list[str]:
    stuck = []
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] == "D":
                stuck.append(f"{pid}/{tid}")
    return stuck


def test_unmount_while_reads_are_blocked_on_a_stopped_store(tmp_path):
    root = tmp_path / "store"
    write_file(root / "acme" / "stuck" / "f.bin", sample_bytes(SIZE, seed=7))
    server = start_server(root)
    m = start_mount(
        tmp_path / "mnt",
        server.hub,
        "--repo",
        "acme/stuck",
        "--region",
        "local",
        "--read-timeout",
        "6",
    )
    results = []
    try:
        fd = os.open(m.path / "acme" / "stuck" / "f.bin", os.O_RDONLY)
        assert len(os.pread(fd, 4096, 0)) == 4096
        os.kill(server.pid, signal.SIGSTOP)

        def blocked_read(off):
            start = time.monotonic()
            try:
                os.pread(fd, MiB, off)
                results.append(("ok", time.monotonic() - start))
            except OSError as e:
                results.append((e.errno, time.monotonic() - start))

        threads = [threading.Thread(target=blocked_read, args=(o * MiB,)) for o in (12, 20, 28)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # the reads are now waiting on the stopped store
        result = run_cli("unmount", str(m.path))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(m.path)
        for t in threads:
            t.join(timeout=20)
        assert not any(t.is_alive() for t in threads)
        assert all(r[0] != "ok" and r[1] < 6 + 6 for r in results), results
        assert not _d_state_tasks([os.getpid(), m.pid])
        os.close(fd)
        m.wait_exit(timeout=20)
    finally:
        os.kill(server.pid, signal.SIGCONT)
        m.unmount()
        server.stop()


def test_an_empty_file_reads_with_the_store_and_hub_stopped(tmp_path):
    root = tmp_path / "store"
    write_file(root / "acme" / "quiet" / "empty.txt", b"")
    write_file(root / "acme" / "quiet" / "full.bin", b"x" * 1000)
    server = start_server(root)
    m = start_mount(tmp_path / "mnt", server.hub, "--repo", "acme/quiet", "--region", "local")
    try:
        server.stop()  # the hub and the data plane are gone
        d = m.path / "acme" / "quiet"
        started = time.monotonic()
        assert (d / "empty.txt").read_bytes() == b""
        assert time.monotonic() - started < 2
        assert os.getxattr(d / "empty.txt", "user.modelfs.source") == b"empty"
        with pytest.raises(OSError) as e:
            (d / "full.bin").read_bytes()  # this one needs the hub: it is really down
        assert e.value.errno == errno.EIO
    finally:
        m.unmount()
