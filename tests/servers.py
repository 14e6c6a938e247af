"""`modelfs serve` as a real process for tests and benchmarks; always stopped."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0


@dataclass
class ServerHandle:
    proc: subprocess.Popen
    hub: str
    grpc: dict[str, str] = field(default_factory=dict)  # region -> HOST:PORT ("" = single region)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _call(self, method: str, path: str, body: dict | None = None) -> object:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.hub + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self) -> dict:
        return self._call("GET", "/admin/stats")

    def reset_stats(self) -> None:
        self._call("POST", "/admin/stats/reset", {})

    def add_fault(self, kind: str, **params) -> None:
        self._call("POST", "/admin/faults", {"kind": kind, **params})

    def clear_faults(self) -> None:
        self._call("DELETE", "/admin/faults")

    def stop(self, timeout: float = 10.0) -> int:
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
    """Start `modelfs serve ROOT --http 127.0.0.1:0 ARGS…` and wait for its address lines."""
    log = log or Path(root).with_name(Path(root).name + "-serve.log")
    err = open(log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", "serve", str(root), "--http", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    err.close()
    handle = ServerHandle(proc, hub="")
    deadline = time.monotonic() + START_TIMEOUT
    buf = b""
    expect_topology = "--topology" in args
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError(f"modelfs serve did not start; see {log}:\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            buf += chunk
            for line in buf.decode().splitlines():
                key, _, value = line.partition(": ")
                if key == "hub":
                    handle.hub = value.strip()
                elif key == "grpc":
                    handle.grpc[""] = value.strip()
                elif key.startswith("grpc "):
                    handle.grpc[key[5:]] = value.strip()
            if handle.hub and handle.grpc and (not expect_topology or buf.endswith(b"\n")):
                return handle
    except BaseException:
        handle.stop()
        raise


def start_regions(root: Path | str, regions: dict[str, list[str]], *args: str) -> ServerHandle:
    """`modelfs serve` playing several regions, {name: [repo globs]}, each on its own port."""
    topology = Path(root).with_name(Path(root).name + "-topology.toml")
    topology.write_text("".join(
        f'[regions.{name}]\ngrpc = "127.0.0.1:0"\nrepos = {json.dumps(globs)}\n'
        for name, globs in regions.items()))
    return start_server(root, "--topology", str(topology), *args)
