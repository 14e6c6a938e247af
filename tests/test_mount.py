"""The mount, for real: `modelfs serve` and `modelfs mount` as processes, read through
the kernel."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import signal
import stat
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from fusefs.fs.mount import mount_source
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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two repos: a model with safetensors shards and assorted files, and a wide one."""
    root = tmp_path_factory.mktemp("store")
    model = root / "acme" / "tiny-llm"
    write_file(model / "config.json", b'{"hidden_size": 64}\n')
    write_file(model / "empty.txt", b"")
    write_file(model / "weights.bin", sample_bytes(40 * MiB + 12345, seed=1))
    write_file(model / "sub" / "dir" / "odd.bin", sample_bytes(3 * MiB + 1, seed=2))
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    for shard in (1, 2):
        tensors = {
            f"layer{shard}.{i}.weight": rng.standard_normal((256, 512), dtype=np.float32)
            for i in range(4)
        }
        save_file(tensors, str(model / f"model-0000{shard}-of-00002.safetensors"))
    wide = root / "acme" / "wide"
    (wide / "many").mkdir(parents=True)
    for i in range(3000):
        (wide / "many" / f"f{i:05d}.txt").write_bytes(f"{i}\n".encode())
    (wide / "zzz-last.txt").write_bytes(b"last\n")  # sorts past a 3000-entry cut
    handle = start_server(root)
    yield root, handle
    handle.stop()


@pytest.fixture(scope="module")
def mounted(store, tmp_path_factory):
    root, server = store
    mp = tmp_path_factory.mktemp("mnt") / "models"
    m = start_mount(
        mp, server.hub, "--repo", "acme/tiny-llm", "--region", "local", "--read-timeout", "10"
    )
    yield mp, root, m
    m.unmount()
    assert not is_mounted(mp)


def model_files(root: Path) -> list[Path]:
    base = root / "acme" / "tiny-llm"
    return sorted(p.relative_to(root) for p in base.rglob("*") if p.is_file())


def test_tree_and_attributes(mounted):
    mp, root, _ = mounted
    assert sorted(os.listdir(mp)) == ["acme"]
    assert sorted(os.listdir(mp / "acme")) == ["tiny-llm"]
    assert sorted(os.listdir(mp / "acme" / "tiny-llm")) == sorted(
        os.listdir(root / "acme" / "tiny-llm")
    )
    for rel in model_files(root):
        st = os.stat(mp / rel)
        src = os.stat(root / rel)
        assert stat.S_IMODE(st.st_mode) == 0o444 and stat.S_ISREG(st.st_mode)
        assert st.st_size == src.st_size
        assert int(st.st_mtime) == int(src.st_mtime)
    dst = os.stat(mp / "acme" / "tiny-llm" / "sub")
    assert stat.S_ISDIR(dst.st_mode) and stat.S_IMODE(dst.st_mode) == 0o555
    # inode numbers are stable for the mount's life
    assert (
        os.stat(mp / "acme" / "tiny-llm" / "config.json").st_ino
        == os.stat(mp / "acme" / "tiny-llm" / "config.json").st_ino
    )
    sv = os.statvfs(mp)
    assert sv.f_namemax == 255 and sv.f_bfree == 0


def test_every_file_reads_byte_exact_sequentially(mounted):
    mp, root, _ = mounted
    for rel in model_files(root):
        assert sha256_file(mp / rel) == sha256_file(root / rel), rel


def test_random_preads(mounted):
    mp, root, _ = mounted
    rel = Path("acme/tiny-llm/weights.bin")
    size = os.path.getsize(root / rel)
    rng = random.Random(7)
    src = os.open(root / rel, os.O_RDONLY)
    fd = os.open(mp / rel, os.O_RDONLY)
    try:
        for _ in range(300):
            n = rng.choice([1, 4096, 65536, 1_000_000])
            off = rng.randrange(0, size)
            assert os.pread(fd, n, off) == os.pread(src, n, off)
        assert os.pread(fd, 100, size) == b""  # at EOF
    finally:
        os.close(fd)
        os.close(src)


def test_mmap_reads(mounted):
    mp, root, _ = mounted
    rel = Path("acme/tiny-llm/sub/dir/odd.bin")
    expected = (root / rel).read_bytes()
    with open(mp / rel, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        rng = random.Random(1)
        for _ in range(200):
            off = rng.randrange(0, len(expected))
            assert m[off : off + 777] == expected[off : off + 777]
        assert hashlib.sha256(m[:]).hexdigest() == hashlib.sha256(expected).hexdigest()


def _hash_range(path: str, start: int, length: int) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        return hashlib.sha256(f.read(length)).hexdigest()


def test_sixteen_threads_and_four_processes_at_once(mounted):
    mp, root, _ = mounted
    rel = "acme/tiny-llm/weights.bin"
    size = os.path.getsize(root / rel)
    pieces = [(i * size // 16, size // 16 + 1) for i in range(16)]
    with ThreadPoolExecutor(16) as threads, ProcessPoolExecutor(4) as procs:
        t = [threads.submit(_hash_range, str(mp / rel), s, n) for s, n in pieces]
        p = [procs.submit(sha256_file, str(mp / rel)) for _ in range(4)]
        got_threads = [f.result() for f in t]
        got_procs = [f.result() for f in p]
    assert got_threads == [_hash_range(str(root / rel), s, n) for s, n in pieces]
    assert got_procs == [sha256_file(root / rel)] * 4


def test_safetensors_load_by_read_and_by_mmap(mounted):
    from safetensors import safe_open
    from safetensors.numpy import load, load_file

    mp, root, _ = mounted
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        src = root / "acme" / "tiny-llm" / shard
        dst = mp / "acme" / "tiny-llm" / shard
        want = load_file(str(src))
        by_read = load(dst.read_bytes())
        by_mmap = load_file(str(dst))  # safetensors maps the file
        with safe_open(str(dst), framework="numpy") as f:
            lazily = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        for got in (by_read, by_mmap, lazily):
            assert got.keys() == want.keys()
            for k in want:
                assert np.array_equal(got[k], want[k]), (shard, k)


def test_kernel_sends_large_reads_many_in_flight(mounted):
    mp, _, _ = mounted
    dev, _ = mount_source(str(mp))
    assert int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text()) == 16 * 1024
    connection = Path("/sys/fs/fuse/connections") / dev.split(":")[1]
    assert int((connection / "max_background").read_text()) == 64


def test_every_write_path_is_read_only(mounted):
    mp, _, _ = mounted
    repo = mp / "acme" / "tiny-llm"
    attempts = [
        lambda: open(repo / "config.json", "wb"),
        lambda: open(repo / "config.json", "r+b"),
        lambda: open(repo / "new.txt", "wb"),
        lambda: os.mkdir(repo / "newdir"),
        lambda: os.unlink(repo / "config.json"),
        lambda: os.rename(repo / "config.json", repo / "x.json"),
        lambda: os.chmod(repo / "config.json", 0o644),
        lambda: os.truncate(repo / "config.json", 0),
        lambda: os.setxattr(repo / "config.json", "user.x", b"1"),
        lambda: os.symlink("config.json", repo / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, attempt


def test_xattrs_say_where_an_opened_file_came_from(mounted):
    mp, _, _ = mounted
    path = mp / "acme" / "tiny-llm" / "config.json"
    with open(path, "rb") as f:
        f.read()
        assert os.getxattr(path, "user.modelfs.source") == b"local"
        assert os.getxattr(path, "user.modelfs.region") == b"local"
        assert os.getxattr(path, "user.modelfs.endpoint").startswith(b"grpc://127.0.0.1:")
        assert "user.modelfs.source" in os.listxattr(path)


def test_unpinned_repo_is_found_on_first_access_and_unknown_is_enoent(mounted):
    mp, root, _ = mounted
    many = mp / "acme" / "wide" / "many"
    names = os.listdir(many)  # discovered on lookup, pinned, 3000 entries paged by readdir
    assert len(names) == 3000 and len(set(names)) == 3000
    assert sorted(names) == sorted(os.listdir(root / "acme" / "wide" / "many"))
    assert (many / "f02999.txt").read_bytes() == b"2999\n"
    assert sorted(os.listdir(mp / "acme")) == ["tiny-llm", "wide"]  # side by side
    with pytest.raises(FileNotFoundError):
        os.stat(mp / "acme" / "no-such-repo")
    with pytest.raises(FileNotFoundError):
        os.stat(mp / "acme" / "tiny-llm" / "no-such-file")


def test_bad_command_lines_fail_with_one_line_and_mount_nothing(store, tmp_path):
    _, server = store
    cases = []
    missing = tmp_path / "missing"
    cases.append(([str(missing), "--hub", server.hub], "does not exist"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    cases.append(([str(full), "--hub", server.hub], "not empty"))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases.append(([str(empty), "--hub", server.hub, "--repo", "acme/nope"], "not found"))
    cases.append(
        ([str(empty), "--hub", "http://127.0.0.1:9", "--repo", "acme/tiny-llm"], "unreachable")
    )
    cases.append(([str(empty), "--hub", server.hub, "--repo", "bad"], "OWNER/NAME"))
    for args, words in cases:
        result = run_cli("mount", *args)
        assert result.returncode != 0, args
        assert words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not is_mounted(empty) and not is_mounted(full)


def _start_readers(path: Path, n: int):
    stop = threading.Event()
    outcomes: list[int] = []

    def reader():
        try:
            with open(path, "rb") as f:
                while not stop.is_set():
                    if not f.read(MiB):
                        f.seek(0)
        except OSError as e:
            outcomes.append(e.errno)
        else:
            outcomes.append(0)

    threads = [threading.Thread(target=reader) for _ in range(n)]
    for t in threads:
        t.start()
    return stop, threads, outcomes


@pytest.mark.parametrize("how", ["unmount", "sigterm"])
def test_stopping_while_readers_are_active_leaves_no_mount(store, tmp_path, how):
    _, server = store
    mp = tmp_path / "m"
    m = start_mount(mp, server.hub, "--repo", "acme/tiny-llm", "--region", "local")
    stop, threads, outcomes = _start_readers(mp / "acme" / "tiny-llm" / "weights.bin", 4)
    try:
        time.sleep(0.5)
        if how == "unmount":
            result = run_cli("unmount", str(mp))
            assert result.returncode == 0, result.stderr
            assert not is_mounted(mp)  # detached at once, even with files open
        else:
            os.kill(m.pid, signal.SIGTERM)
            m.wait_exit(timeout=10)  # exits within seconds despite the readers
            assert not is_mounted(mp)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    m.unmount()
    assert not is_mounted(mp)
    if how == "sigterm":
        assert outcomes and all(
            o in (0, errno.ENOTCONN, errno.EIO, errno.ECONNABORTED) for o in outcomes
        ), outcomes


def test_a_listing_cut_short_by_the_hub_is_walked_by_subtree(store, tmp_path):
    import httpx

    _root, server = store  # acme/wide has 3000 files in one directory plus the directory
    listing = httpx.get(
        f"{server.hub}/api/v1/models/acme/wide/repo/files", params={"Recursive": "true"}
    ).json()["Data"]["Files"]
    assert len(listing) == 3000  # the hub cut it short
    assert "zzz-last.txt" not in {e["Path"] for e in listing}
    m = start_mount(tmp_path / "m", server.hub, "--repo", "acme/wide", "--region", "local")
    try:
        names = os.listdir(m.path / "acme" / "wide" / "many")
        assert len(names) == 3000
        assert (m.path / "acme" / "wide" / "many" / "f02999.txt").read_bytes() == b"2999\n"
        assert (m.path / "acme" / "wide" / "zzz-last.txt").read_bytes() == b"last\n"
    finally:
        m.unmount()
