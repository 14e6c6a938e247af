"""Run a store and a mount as real processes: for tests, benchmarks and soaks.

Like `trio.testing`, this ships with the package so that the project's own suite,
its benchmark and soak scripts, and users who test training code against a local
modelfs all drive the same processes the same way. Everything started here is
stopped by its handle (`ServerHandle.stop`, `Mount.unmount`, `mount_factory`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.fs.mount import mount_source, mount_table

MiB = 1 << 20
START_TIMEOUT = 60.0


# -- data -------------------------------------------------------------------------


def sample_bytes(size: int, seed: int) -> bytes:
    """`size` reproducible pseudo-random bytes (incompressible, unlike zeros)."""
    rng = random.Random(seed)
    piece = 64 * MiB  # randbytes takes at most 2**31 bits at once
    return b"".join(rng.randbytes(min(piece, size - i)) for i in range(0, size, piece))


def write_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def sha256_file(path: Path | str, block: int = MiB) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# -- processes and ports ------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on loopback right now (another process may take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


PROXY_SETTINGS = {
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "grpc_proxy",
    "no_grpc_proxy",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any modelfs, ModelScope or proxy setting (the servers a
    test starts are on loopback), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MODELFS_", "MODELSCOPE_", "NOTIFY_SOCKET"))
        and k.lower() not in PROXY_SETTINGS
    }
    return {**env, **extra}


def run_cli(
    *args: str,
    timeout: float = 60,
    check: bool = False,
    env: dict[str, str] | None = None,
    nofile: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`modelfs ARGS…` in a child process, as a user would run it; settings come only
    from ARGS and `env` (default: `clean_env()`), never from the caller's environment.
    `nofile` sets the child's descriptor limit, soft and hard (as `ulimit -n` does); the
    processes it starts inherit it."""

    def limit_descriptors() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        env=clean_env() if env is None else env,
        preexec_fn=limit_descriptors if nofile is not None else None,
    )


def is_mounted(path: Path | str) -> bool:
    return mount_source(os.path.abspath(path)) is not None


def mount_points() -> list[str]:
    """Every mount point of this mount namespace."""
    return list(mount_table())


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# -- the store ------------------------------------------------------------------------


@dataclass
class ServerHandle:
    proc: subprocess.Popen[bytes]
    hub: str
    grpc: dict[str, str] = field(default_factory=dict)  # region -> HOST:PORT ("" = single region)
    admin: str = ""  # http://HOST:PORT of the admin listener (counters, faults)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        """An admin route (`/admin/…`), on the admin listener."""
        if not self.admin:
            raise RuntimeError("this store was started without an admin listener")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self) -> dict[str, object]:
        stats = self._call("GET", "/admin/stats")
        assert isinstance(stats, dict)
        return stats

    def reset_stats(self) -> None:
        self._call("POST", "/admin/stats/reset", {})

    def add_fault(self, kind: str, **params: object) -> None:
        self._call("POST", "/admin/faults", {"kind": kind, **params})

    def clear_faults(self) -> None:
        self._call("DELETE", "/admin/faults")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a test may have stopped it
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return self.proc.returncode


def start_server(root: Path | str, *args: str, log: Path | None = None) -> ServerHandle:
    """Start `modelfs serve ROOT --http 127.0.0.1:0 --admin 127.0.0.1:0 ARGS…` (no
    `--admin` of its own when ARGS has one) and wait for its address lines."""
    log = log or Path(root).with_name(Path(root).name + "-serve.log")
    admin = () if "--admin" in args else ("--admin", "127.0.0.1:0")
    command = ["serve", str(root), "--http", "127.0.0.1:0", *admin, *args]
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fusefs", *command],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    handle = ServerHandle(proc, hub="")
    deadline = time.monotonic() + START_TIMEOUT
    buf = b""
    assert proc.stdout is not None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(
                    f"modelfs serve did not start; see {log}:\n"
                    f"{log.read_text(errors='replace')[-2000:]}"
                )
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            buf += os.read(proc.stdout.fileno(), 4096)
            for line in buf.decode().splitlines():
                key, _, value = line.partition(": ")
                if key == "hub":
                    handle.hub = value.strip()
                elif key == "admin":
                    handle.admin = value.strip()
                elif key == "grpc":
                    handle.grpc[""] = value.strip()
                elif key.startswith("grpc "):
                    handle.grpc[key[5:]] = value.strip()
            if handle.hub and handle.grpc and handle.admin and buf.endswith(b"\n"):
                return handle
    except BaseException:
        handle.stop()
        raise


def start_regions(root: Path | str, regions: dict[str, list[str]], *args: str) -> ServerHandle:
    """`modelfs serve` playing several regions, {name: [repo globs]}, each on its own port."""
    topology = Path(root).with_name(Path(root).name + "-topology.toml")
    topology.write_text(
        "".join(
            f'[regions.{name}]\ngrpc = "127.0.0.1:0"\nrepos = {json.dumps(globs)}\n'
            for name, globs in regions.items()
        )
    )
    return start_server(root, "--topology", str(topology), *args)


# -- the mount ------------------------------------------------------------------------


@dataclass
class Mount:
    path: Path
    pid: int
    log: Path

    def status(self) -> dict[str, object]:
        state = json.loads(os.getxattr(self.path, "user.modelfs.status"))
        assert isinstance(state, dict)
        return state

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while alive(self.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"mount process {self.pid} still alive after {timeout}s")
            time.sleep(0.05)

    def unmount(self, timeout: float = 20) -> None:
        if is_mounted(self.path):
            run_cli("unmount", str(self.path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_mounted(self.path) and not alive(self.pid):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"{self.path} still mounted or mount process alive:\n{self.log_text()[-3000:]}"
        )


def start_mount(
    path: Path,
    hub: str,
    *args: str,
    log: Path | None = None,
    nofile: int | None = None,
    env: dict[str, str] | None = None,
) -> Mount:
    """`modelfs mount PATH --hub HUB ARGS…`, returning once the mount is live; `nofile`
    and `env` as for `run_cli`."""
    path.mkdir(parents=True, exist_ok=True)
    log = log or path.with_name(path.name + ".log")
    command = ("mount", str(path), "--hub", hub, "--log-file", str(log), *args)
    result = run_cli(*command, nofile=nofile, env=env)
    if result.returncode != 0:
        raise AssertionError(
            f"mount failed ({result.returncode}): {result.stderr}\n"
            f"{log.read_text() if log.exists() else ''}"
        )
    found = re.search(r"pid (\d+)", result.stdout)
    assert found is not None, result.stdout
    assert is_mounted(path)
    return Mount(path, int(found.group(1)), log)


@contextmanager
def mount_factory(base: Path, hub: str, *common: str) -> Iterator[Callable[..., Mount]]:
    """Yields make(*args) -> Mount; every mount made is unmounted (and checked) at the end."""
    made: list[Mount] = []

    def make(*args: str) -> Mount:
        m = start_mount(base / f"m{len(made)}", hub, *common, *args)
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.unmount()
            assert not is_mounted(m.path)
