"""Baselines run as real programs for scripts/bench.py: nginx serving a directory on
loopback, and `rclone mount` of that HTTP server.

Each process is owned by a context manager that stops it on the way out, whatever
happened; `unmount_all_under` is the last resort for a FUSE mount left behind.
Children run in their own session so that a Ctrl-C reaches only the bench, which then
stops them in order (a mount before the server it reads from).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fusefs.testing import free_port, is_mounted, mount_points

SBIN = "/usr/sbin:/sbin"  # nginx lives here, and a non-root PATH often lacks it
APT_TIMEOUT = 600.0
START_TIMEOUT = 30.0


class PeerUnavailable(Exception):
    """The baseline cannot run on this machine; its rows are reported as null."""


def find_binary(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def _apt(args: list[str]) -> subprocess.CompletedProcess[str]:
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    # Wait for another apt/dpkg run to finish rather than fail on its lock at once.
    cmd = [*sudo, "apt-get", "-o", "DPkg::Lock::Timeout=300", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(cmd, 1, "", str(e))


def ensure_packages(packages: dict[str, str]) -> None:
    """Install the Debian packages ({binary: package}) whose binaries are missing."""
    missing = sorted({pkg for binary, pkg in packages.items() if find_binary(binary) is None})
    if not missing:
        return
    print(f"bench: installing {' '.join(missing)} (apt-get)", flush=True)
    install = ["install", "-y", "--no-install-recommends", *missing]
    result = _apt(install)
    if result.returncode != 0:  # a fresh image has no package lists yet
        _apt(["update", "-qq"])
        result = _apt(install)
    absent = [binary for binary in packages if find_binary(binary) is None]
    if result.returncode != 0 or absent:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise PeerUnavailable(
            f"apt-get install {' '.join(missing)} failed "
            f"({lines[-1] if lines else f'exit {result.returncode}'})"
        )


def version_line(cmd: list[str]) -> str:
    """First line a program prints about its version (nginx prints it on stderr)."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (nginx and rclone both shut down cleanly on it), then SIGKILL to the
    child's whole process group, nginx workers included."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its leader is alive, so the group is still ours
        proc.wait()


def fuse_unmount(path: Path, lazy: bool = False) -> bool:
    tool = find_binary("fusermount3") or find_binary("fusermount")
    cmd = (
        [tool, "-u", *(["-z"] if lazy else []), str(path)]
        if tool
        else ["umount", *(["-l"] if lazy else []), str(path)]
    )
    result = subprocess.run(cmd, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return result.returncode == 0


def unmount_all_under(root: Path) -> list[str]:
    """Lazily unmount whatever is still mounted below root, deepest first."""
    prefix = os.path.abspath(root) + os.sep
    left = sorted((p for p in mount_points() if p.startswith(prefix)), key=len, reverse=True)
    for path in left:
        fuse_unmount(Path(path), lazy=True)
    return left


def _wait(ready, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            return True
        time.sleep(0.05)
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


NGINX_CONF = """\
# Generated by scripts/bench: serves {root} on {listen}; everything nginx writes is in {home}.
{user}worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {home}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {home}/client_body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server {{
        listen {listen};
        root {root};
        location / {{ autoindex on; }}
    }}
}}
"""


@dataclass
class Nginx:
    proc: subprocess.Popen
    url: str
    home: Path


def _start_nginx(
    binary: str, root: Path, home: Path, attempts: int = 3
) -> tuple[subprocess.Popen, str]:
    # As root the master would switch its workers to an unprivileged user, which cannot
    # read a 0700 temp dir; these workers only ever serve loopback from that dir.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    for _ in range(attempts):  # another process may take the free port before nginx binds it
        listen = f"127.0.0.1:{free_port()}"
        conf = home / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=root, listen=listen, home=home, user=user))
        with open(home / "stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [
                    binary,
                    "-p",
                    f"{home}/",
                    "-e",
                    str(home / "error.log"),
                    "-c",
                    str(conf),
                    "-g",
                    "daemon off;",
                ],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        url = f"http://{listen}/"
        if _wait(functools.partial(_http_ok, url), proc, START_TIMEOUT):
            return proc, url
        stop_process(proc)
    raise PeerUnavailable(f"nginx did not start: {_tail(home / 'error.log')}")


@contextmanager
def nginx_serving(root: Path, home: Path) -> Iterator[Nginx]:
    """nginx in the foreground, serving root (with directory listings) on a free loopback port."""
    binary = find_binary("nginx")
    if binary is None:
        raise PeerUnavailable("nginx not found")
    home.mkdir(parents=True)
    proc, url = _start_nginx(binary, root, home)
    try:
        yield Nginx(proc, url, home)
    finally:
        stop_process(proc)


# What people use to stream files from HTTP with rclone: no local file cache
# (--vfs-cache-mode off), so reads go to the server through rclone's read-ahead buffer;
# rclone's other settings stay at their defaults.
RCLONE_FLAGS = ["--read-only", "--vfs-cache-mode", "off"]


@dataclass
class RcloneMount:
    path: Path
    proc: subprocess.Popen
    log: Path


@contextmanager
def rclone_mount(url: str, mountpoint: Path, home: Path) -> Iterator[RcloneMount]:
    """`rclone mount` of an HTTP server on mountpoint, as a child process we own."""
    binary = find_binary("rclone")
    if binary is None:
        raise PeerUnavailable("rclone not found")
    if not (find_binary("fusermount3") or find_binary("fusermount")):
        raise PeerUnavailable("rclone mount needs fusermount (Debian fuse3)")
    home.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True)
    config = home / "rclone.conf"
    config.touch()  # an empty config of our own, never the user's
    log = home / f"{mountpoint.name}.log"
    cmd = [
        binary,
        "mount",
        f":http,url='{url}':",
        str(mountpoint),
        *RCLONE_FLAGS,
        "--cache-dir",
        str(home / "cache"),
        "--log-file",
        str(log),
    ]
    with open(home / f"{mountpoint.name}.stderr", "ab") as err:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, "RCLONE_CONFIG": str(config)},
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    try:
        if not _wait(lambda: is_mounted(mountpoint), proc, START_TIMEOUT):
            raise PeerUnavailable(f"rclone mount did not come up: {_tail(log)}")
        yield RcloneMount(mountpoint, proc, log)
    finally:
        if is_mounted(mountpoint) and not fuse_unmount(mountpoint):
            fuse_unmount(mountpoint, lazy=True)  # still busy: detach now, gone once idle
        stop_process(proc)
        if is_mounted(mountpoint):  # rclone died without unmounting
            fuse_unmount(mountpoint, lazy=True)
