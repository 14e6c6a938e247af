"""Helpers for tests that mount for real: sample repos, `modelfs mount` as a process."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MiB = 1 << 20


def make_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


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


def is_mounted(path: Path | str) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def modelfs(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusefs", *args], capture_output=True,
                          text=True, timeout=timeout, check=check)


@dataclass
class Mount:
    path: Path
    pid: int
    log: Path

    def status(self) -> dict:
        return json.loads(os.getxattr(self.path, "user.modelfs.status"))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while _alive(self.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"mount process {self.pid} still alive after {timeout}s")
            time.sleep(0.05)

    def unmount(self, timeout: float = 20) -> None:
        if is_mounted(self.path):
            modelfs("unmount", str(self.path))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_mounted(self.path) and not _alive(self.pid):
                return
            time.sleep(0.05)
        raise AssertionError(f"{self.path} still mounted or mount process alive:\n{self.log_text()[-3000:]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def start_mount(path: Path, hub: str, *args: str, log: Path | None = None) -> Mount:
    path.mkdir(parents=True, exist_ok=True)
    log = log or path.with_name(path.name + ".log")
    result = modelfs("mount", str(path), "--hub", hub, "--log-file", str(log), *args)
    if result.returncode != 0:
        raise AssertionError(f"mount failed ({result.returncode}): {result.stderr}\n"
                             f"{log.read_text() if log.exists() else ''}")
    pid = int(re.search(r"pid (\d+)", result.stdout).group(1))
    assert is_mounted(path)
    return Mount(path, pid, log)


@contextmanager
def mount_factory(base: Path, hub: str, *common: str):
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
