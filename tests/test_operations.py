"""Operating a mount for real: status, metrics, prefetch, the fstab helper, systemd
readiness, and the settings/help surface of the `modelfs` command."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fusefs import __version__
from fusefs.testing import (
    MiB,
    clean_env,
    free_port,
    is_mounted,
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_regions,
    start_server,
    write_file,
)

LONG_FILES = 120  # with long paths: more than fits one xattr value if all were listed
HELPER = Path("/sbin/mount.fuse.modelfs")
VENV_HELPER = Path(sys.executable).parent / "mount.fuse.modelfs"


def mounted_paths() -> set[str]:
    with open("/proc/mounts") as f:
        return {line.split()[1] for line in f}


def mount_type(path: Path) -> str | None:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(path):
                return fields[2]
    return None


def wait_gone(pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive after {timeout}s")


def force_unmount(path: Path) -> None:
    if is_mounted(path):
        run_cli("unmount", str(path))
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One region (`local`) holding two repos: one warmed by prefetch, one read for metrics."""
    root = tmp_path_factory.mktemp("store")
    write_file(root / "acme" / "x" / "config.json", b'{"hidden_size": 64}\n')
    write_file(root / "acme" / "x" / "weights.bin", sample_bytes(6 * MiB + 321, seed=41))
    write_file(root / "acme" / "x" / "sub" / "extra.bin", sample_bytes(MiB + 5, seed=42))
    write_file(root / "acme" / "m" / "data.bin", sample_bytes(2 * MiB + 7, seed=43))
    deep = root / "acme" / "long" / ("d" * 100) / ("e" * 100)
    for i in range(LONG_FILES):
        write_file(deep / f"{'shard-' * 10}{i:04d}.bin", f"{i}\n".encode())
    server = start_server(root)
    yield root, server
    server.stop()


@pytest.fixture(scope="module")
def local_mount(store, tmp_path_factory):
    root, server = store
    port = free_port()
    mp = tmp_path_factory.mktemp("local") / "models"
    m = start_mount(
        mp,
        server.hub,
        "--repo",
        "acme/x",
        "--repo",
        "acme/m",
        "--region",
        "local",
        "--metrics",
        f"127.0.0.1:{port}",
        "--memory",
        "64M",
        "--max-streams",  # every file read here stays listed in the status
        str(2 * LONG_FILES),
        "--linger",
        "600",
    )
    yield m, root, f"http://127.0.0.1:{port}/metrics"
    m.unmount()
    assert not is_mounted(mp)


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    root = tmp_path_factory.mktemp("regional")
    write_file(root / "acme" / "peer" / "model.bin", sample_bytes(3 * MiB + 99, seed=44))
    write_file(root / "other" / "near" / "a.txt", b"near\n")
    server = start_regions(root, {"east": ["other/*"], "west": ["acme/*"]})
    yield root, server
    server.stop()


# -- status --------------------------------------------------------------------------


def test_status_marks_a_peer_served_file(regions, tmp_path):
    root, server = regions
    m = start_mount(tmp_path / "mp", server.hub, "--region", "east", "--inter-regions", "west")
    try:
        rel = Path("acme/peer/model.bin")
        size = (root / rel).stat().st_size
        assert sha256_file(m.path / rel) == sha256_file(root / rel)

        assert os.getxattr(m.path / rel, "user.modelfs.source") == b"peer"
        assert os.getxattr(m.path / rel, "user.modelfs.region") == b"west"
        assert os.getxattr(m.path / rel, "user.modelfs.endpoint").startswith(
            f"grpc://{server.grpc['west']}/west/".encode()
        )

        human = run_cli("status", str(m.path))
        assert human.returncode == 0, human.stderr
        line = next(ln for ln in human.stdout.splitlines() if str(rel) in ln)
        assert line.lstrip().startswith("⇄ ")
        assert "3.0 MiB read" in line and "[peer west]" in line
        assert re.search(r"^region\s+east\s+peers: west$", human.stdout, re.M)
        assert re.search(r"^read\s+3\.0 MiB peer$", human.stdout, re.M)

        raw = run_cli("status", "--json", str(m.path))
        assert raw.returncode == 0, raw.stderr
        state = json.loads(raw.stdout)
        (entry,) = [f for f in state["files"] if f["path"] == str(rel)]
        assert (entry["source"], entry["region"], entry["marker"]) == ("peer", "west", "⇄")
        assert entry["bytes_read"] == size
        assert state["bytes_read"] == {"peer": size}
        assert state["region"] == "east" and state["peers"] == ["west"]
    finally:
        m.unmount()
    assert not is_mounted(m.path)


def test_status_of_a_fresh_mount_and_of_a_plain_directory(regions, tmp_path):
    _, server = regions
    m = start_mount(tmp_path / "mp", server.hub, "--region", "east")
    try:
        out = run_cli("status", str(m.path))
        assert out.returncode == 0, out.stderr
        assert re.search(r"^read\s+nothing yet$", out.stdout, re.M), out.stdout
        assert re.search(r"^files\s+0 open, 0 with a data path", out.stdout, re.M)
    finally:
        m.unmount()
    plain = run_cli("status", str(tmp_path))
    assert plain.returncode != 0
    assert "not a modelfs mount" in plain.stderr and len(plain.stderr.strip().splitlines()) == 1


def test_status_with_many_open_files_fits_in_one_xattr(local_mount):
    m, _root, _ = local_mount
    base = m.path / "acme" / "long"
    paths = sorted(p for p in base.rglob("*") if p.is_file())
    assert len(paths) == LONG_FILES
    with ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(Path.read_bytes, paths))
    assert contents == [f"{i}\n".encode() for i in range(LONG_FILES)]
    result = run_cli("status", "--json", str(m.path))
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    listed = [f for f in state["files"] if f["path"].startswith("acme/long/")]
    assert listed, "some files are listed"
    assert state["data_paths"] == len(state["files"]) + state["files_not_listed"]
    assert state["data_paths"] >= LONG_FILES  # closed, kept for a quick reopen
    assert state["files_open"] == 0
    assert state["bytes_read"]["local"] >= sum(p.stat().st_size for p in paths)
    human = run_cli("status", str(m.path))
    assert human.returncode == 0, human.stderr
    assert (
        f"… and {state['files_not_listed']} more" in human.stdout or not state["files_not_listed"]
    )


# -- metrics -------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metrics_count_bytes_reads_and_probes(local_mount):
    m, root, url = local_mount
    rel = Path("acme/m/data.bin")
    size = (root / rel).stat().st_size
    before = scrape(url)
    local_bytes = ("modelfs_read_bytes_total", (("source", "local"),))
    assert ("modelfs_memory_bytes", (("state", "limit"),)) in before
    assert before[("modelfs_memory_bytes", (("state", "limit"),))] == 64 * MiB
    assert ("modelfs_memory_bytes", (("state", "in_use"),)) in before

    with open(m.path / rel, "rb") as f:
        assert f.read() == (root / rel).read_bytes()
        during = scrape(url)
    after = scrape(url)
    assert during[("modelfs_open_files", ())] >= 1  # with a handle open
    assert during[("modelfs_streams", (("state", "open"),))] >= 1
    assert during[("modelfs_streams", (("state", "limit"),))] == 2 * LONG_FILES
    fds = during[("modelfs_descriptors", (("state", "open"),))]
    assert 0 < fds < during[("modelfs_descriptors", (("state", "limit"),))]

    assert after[local_bytes] - before.get(local_bytes, 0) == size
    assert total(after, "modelfs_read_seconds_count") > total(before, "modelfs_read_seconds_count")
    assert total(after, "modelfs_read_seconds_sum") > total(before, "modelfs_read_seconds_sum")
    assert (
        total(after, "modelfs_first_byte_seconds_count")
        == total(before, "modelfs_first_byte_seconds_count") + 1
    )
    assert after[("modelfs_probes_total", (("outcome", "internal"),))] >= 1
    assert total(after, "modelfs_probes_total") > total(before, "modelfs_probes_total")
    assert (
        total(after, "modelfs_stream_opens_total")
        >= total(before, "modelfs_stream_opens_total") + 1
    )
    assert after[("modelfs_data_paths", ())] >= 1  # closed, lingering
    assert not any(n == "modelfs_errors_total" for n, _ in after)  # no read failed


# -- prefetch ------------------------------------------------------------------------


def run_in_pty(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run argv with a terminal on stdin/stdout/stderr; (exit code, everything it wrote)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = clean_env(TERM="xterm-256color", COLUMNS="200", LINES="50")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(
                    f"{argv} did not finish in {timeout}s:\n{out.decode(errors='replace')}"
                )
            ready, _, _ = select.select([master], [], [], min(left, 1.0))
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: every holder of the terminal has gone
                    raise
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=timeout), out.decode(errors="replace")


def test_prefetch_on_a_terminal_shows_one_bar_per_file(local_mount):
    m, root, _ = local_mount
    code, out = run_in_pty([sys.executable, "-m", "fusefs", "prefetch", str(m.path / "acme" / "x")])
    assert code == 0, out
    for name in ("config.json", "weights.bin", "extra.bin"):
        assert re.search(rf"⚡ {re.escape(name)}\b", out), (name, out)
    assert "\x1b[" in out  # drawn live with terminal control sequences
    files = sorted((root / "acme" / "x").rglob("*.*"))
    size = sum(p.stat().st_size for p in files)
    assert f"prefetched 3 of 3 files, {size / MiB:.1f} MiB" in out
    for p in files:  # each was opened through the mount: it has a data path now
        rel = p.relative_to(root)
        assert os.getxattr(m.path / rel, "user.modelfs.source") == b"local"


def test_prefetch_without_a_terminal_prints_only_the_summary(local_mount):
    m, _, _ = local_mount
    result = run_cli("prefetch", "-j", "2", str(m.path / "acme" / "x"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert re.fullmatch(r"prefetched 3 of 3 files, 7\.0 MiB", result.stderr.strip())
    assert "\x1b[" not in result.stderr and "⚡" not in result.stderr


def test_prefetch_of_a_missing_path_fails(local_mount):
    m, _, _ = local_mount
    missing = m.path / "acme" / "x" / "no-such-file.bin"
    result = run_cli("prefetch", str(m.path / "acme" / "x" / "config.json"), str(missing))
    assert result.returncode != 0
    assert f"{missing}:" in result.stderr
    assert "prefetched 1 of 2 files" in result.stderr


# -- fstab helper ----------------------------------------------------------------------


@pytest.fixture
def fstab_helper():
    if shutil.which("mount") is None:
        pytest.skip("mount(8) is not installed")
    if not VENV_HELPER.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "-e",
                f"{Path(__file__).resolve().parents[1]}[test]",
            ],
            check=True,
        )
    if os.path.lexists(HELPER):
        if not (HELPER.is_symlink() and os.readlink(HELPER) == str(VENV_HELPER)):
            pytest.skip(f"{HELPER} exists and is not ours")
        created = False
    else:
        HELPER.symlink_to(VENV_HELPER)
        created = True
    try:
        yield HELPER
    finally:
        if created and HELPER.is_symlink():
            HELPER.unlink()


def test_mount_t_fuse_modelfs_through_the_helper(store, fstab_helper, tmp_path):
    root, server = store
    mp = tmp_path / "fstab"
    mp.mkdir()
    log = tmp_path / "fstab.log"
    result = subprocess.run(
        [
            "mount",
            "-t",
            "fuse.modelfs",
            server.hub,
            str(mp),
            "-o",
            f"repo=acme/x,region=local,_netdev,log_file={log}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    pid = None
    try:
        assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
        pid = int(re.search(r"pid (\d+)", result.stdout).group(1))
        assert mount_type(mp) == "fuse.modelfs"
        assert sorted(os.listdir(mp / "acme" / "x")) == ["config.json", "sub", "weights.bin"]
        for rel in ("acme/x/config.json", "acme/x/weights.bin"):
            assert sha256_file(mp / rel) == sha256_file(root / rel)
        assert os.getxattr(mp / "acme/x/weights.bin", "user.modelfs.source") == b"local"
        unmounted = run_cli("unmount", str(mp))
        assert unmounted.returncode == 0, unmounted.stderr
        assert not is_mounted(mp)
        wait_gone(pid)
    finally:
        force_unmount(mp)
        if pid is not None:
            wait_gone(pid)
    assert str(mp) not in mounted_paths()


def test_helper_rejects_unknown_options(store, fstab_helper, tmp_path):
    _, server = store
    result = subprocess.run(
        ["mount", "-t", "fuse.modelfs", server.hub, str(tmp_path), "-o", "repo=acme/x,colour=red"],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
    )
    assert result.returncode != 0
    assert "unknown option 'colour=red'" in result.stderr
    assert not is_mounted(tmp_path)


# -- systemd readiness -----------------------------------------------------------------


def test_ready_only_once_live_and_stopping_on_sigterm(store, tmp_path):
    root, server = store
    mp = tmp_path / "svc"
    mp.mkdir()
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    log = open(tmp_path / "svc.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fusefs",
            "mount",
            str(mp),
            "--hub",
            server.hub,
            "--repo",
            "acme/x",
            "--region",
            "local",
            "--foreground",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env=clean_env(NOTIFY_SOCKET=sock_path),
    )
    try:
        message = sock.recv(4096).decode()
        # checked right as READY=1 arrives: the mount is already there and answering
        live = str(mp) in mounted_paths()
        st = os.stat(mp / "acme" / "x" / "weights.bin")
        assert "READY=1" in message.splitlines(), message
        assert live
        assert st.st_size == (root / "acme" / "x" / "weights.bin").stat().st_size
        assert f"STATUS=mounted {mp}" in message.splitlines()
        assert (mp / "acme" / "x" / "config.json").read_bytes() == b'{"hidden_size": 64}\n'

        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode().splitlines()
        assert proc.wait(timeout=30) == 0
        assert str(mp) not in mounted_paths()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mp)
        sock.close()
        log.close()
    assert "unmounted" in (tmp_path / "svc.log").read_text()


def test_a_vanished_notify_socket_does_not_stop_the_mount(store, tmp_path):
    """A supervisor that went away must not take a live mount down with it."""
    _, server = store
    mp = tmp_path / "svc"
    mp.mkdir()
    gone = str(tmp_path / "gone.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(gone)  # the path stays, nobody listens any more
    result = run_cli(
        "mount",
        str(mp),
        "--hub",
        server.hub,
        "--repo",
        "acme/x",
        "--region",
        "local",
        "--log-file",
        str(tmp_path / "svc.log"),
        env=clean_env(NOTIFY_SOCKET=gone),
    )
    pid = None
    try:
        assert result.returncode == 0, result.stderr
        pid = int(re.search(r"pid (\d+)", result.stdout).group(1))
        log = tmp_path / "svc.log"
        deadline = time.monotonic() + 10  # READY=1 is sent just after the starter is told
        while "could not notify" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "could not notify" in log.read_text()
        assert os.path.getsize(mp / "acme" / "x" / "weights.bin") == 6 * MiB + 321
        assert is_mounted(mp)
        assert run_cli("unmount", str(mp)).returncode == 0
        wait_gone(pid)
    finally:
        force_unmount(mp)
        if pid is not None:
            wait_gone(pid)
    assert not is_mounted(mp)


# -- settings and help -------------------------------------------------------------------


def test_config_show_names_each_value_and_origin(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        'hub = "http://hub.internal:8080"\nregion = "from-file"\n'
        'memory = "1G"\nrepos = ["acme/x", "acme/m@v1"]\n'
    )
    result = run_cli(
        "config",
        "show",
        "--config",
        str(cfg),
        "--read-timeout",
        "12",
        env=clean_env(MODELFS_REGION="cn-east", MODELFS_LOG_FORMAT="json"),
    )
    assert result.returncode == 0, result.stderr
    shown = {}
    for line in result.stdout.splitlines():
        m = re.fullmatch(r"(\w+)\s+= (.*?)\s+\((.+)\)", line)
        assert m, line
        shown[m[1]] = (m[2], m[3])
    assert shown["read_timeout"] == ("12.0", "flag")
    assert shown["region"] == ("cn-east", "env MODELFS_REGION")
    assert shown["log_format"] == ("json", "env MODELFS_LOG_FORMAT")
    assert shown["hub"] == ("http://hub.internal:8080", f"file {cfg}")
    assert shown["memory"] == (str(1 << 30), f"file {cfg}")
    assert shown["repos"] == ("acme/x,acme/m@v1", f"file {cfg}")
    assert shown["log_level"] == ("info", "default")
    assert shown["allow_other"] == ("False", "default")
    assert set(shown) >= {
        "hub",
        "repos",
        "region",
        "inter_regions",
        "token_file",
        "memory",
        "read_timeout",
        "metrics",
        "log_format",
        "log_level",
        "allow_other",
    }


def test_config_show_rejects_an_unknown_key(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('hub = "http://hub:8080"\nregoin = "cn-east"\n')
    result = run_cli("config", "show", "--config", str(cfg))
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "unknown key 'regoin'" in result.stderr and str(cfg) in result.stderr


def test_systemd_unit_is_notify_type():
    result = run_cli("systemd-unit", "--mountpoint", "/data/models")
    assert result.returncode == 0, result.stderr
    unit = result.stdout
    assert "[Service]" in unit and "Type=notify" in unit.splitlines()
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.endswith("mount /data/models --foreground --config /etc/modelfs/config.toml")
    assert os.access(exec_start.removeprefix("ExecStart=").split()[0], os.X_OK)
    assert any(
        ln.startswith("ExecStop=") and ln.endswith("unmount /data/models")
        for ln in unit.splitlines()
    )


@pytest.mark.parametrize(
    "command",
    [
        (),
        ("serve",),
        ("mount",),
        ("unmount",),
        ("status",),
        ("prefetch",),
        ("config",),
        ("config", "show"),
        ("systemd-unit",),
    ],
)
def test_help_has_examples(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")
    assert re.search(r"^\s*Examples?:$", result.stdout, re.M), result.stdout
    assert re.search(r"^\s+(\w+=\S+ )*modelfs \S", result.stdout, re.M)  # a command line


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"modelfs, version {__version__}"
