"""The soak: many readers, every byte checked, while the store breaks on purpose.

Readers mix sequential reads, random preads and mmap over several files of a
mounted repo; a fault thread injects a random fault every `fault_every` seconds
(broken streams, delays, UNAVAILABLE, redirects, corrupt checksums) and restarts
the store once. `scripts/soak` runs it for long; tests/test_soak.py runs it short.
It prints its report as JSON and exits non-zero on a wrong byte, a hang, or
memory above the budget plus 300 MiB.
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.testing import MiB, peak_rss_mib, sample_bytes, start_mount, start_server, write_file

FAULTS = [
    ("break", lambda rng: {"after_bytes": rng.randrange(1, 6 * MiB)}),
    ("delay", lambda rng: {"ms": rng.choice([20, 100, 400]), "count": rng.randrange(1, 8)}),
    ("unavailable", lambda rng: {"count": rng.randrange(1, 4)}),
    ("redirect", lambda rng: {"routing_token": f"t{rng.randrange(1000)}"}),
    ("corrupt", lambda rng: {"count": rng.randrange(1, 4)}),
]


@dataclass
class Report:
    seconds: float = 0.0
    readers: int = 0
    reads: int = 0
    bytes: int = 0
    wrong_bytes: int = 0
    errors: int = 0
    hung: int = 0
    slowest_op: float = 0.0
    faults_injected: dict = field(default_factory=dict)
    restarts: int = 0
    reopens: int = 0
    peak_rss_mib: float = 0.0
    memory_budget_mib: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, n: int, wrong: int, elapsed: float) -> None:
        with self._lock:
            self.reads += 1
            self.bytes += n
            self.wrong_bytes += wrong
            self.slowest_op = max(self.slowest_op, elapsed)

    def view(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def _mismatch(got: bytes, want: bytes) -> int:
    if got == want:
        return 0
    return sum(a != b for a, b in zip(got, want, strict=False)) + abs(len(got) - len(want))


def run_soak(
    work: Path,
    *,
    seconds: float,
    readers: int,
    files: int,
    file_mib: int,
    fault_every: float,
    restart: bool,
    memory_mib: int = 128,
    read_timeout: float = 5.0,
    seed: int = 1,
) -> Report:
    root = work / "store"
    contents = {}
    for i in range(files):
        data = sample_bytes(file_mib * MiB + 1000 * i, seed=seed + i)
        write_file(root / "soak" / "repo" / f"f{i}.bin", data)
        contents[f"f{i}.bin"] = data
    server = start_server(root, "--faults")
    http_port = server.hub.rsplit(":", 1)[1]
    grpc_addr = server.grpc[""]
    mount = start_mount(
        work / "mnt",
        server.hub,
        "--repo",
        "soak/repo",
        "--region",
        "local",
        "--memory",
        f"{memory_mib}M",
        "--read-timeout",
        str(read_timeout),
    )
    report = Report(readers=readers, memory_budget_mib=memory_mib)
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    hang_limit = read_timeout * 2 + 10

    def reader(index: int, until: float) -> None:
        """One reader process's life; results go back through `results`."""
        rng = random.Random(seed * 1000 + index)
        names = sorted(contents)
        mine = Report()
        while time.monotonic() < until:
            name = rng.choice(names)
            want = contents[name]
            path = mount.path / "soak" / "repo" / name
            mode = rng.choice(["seq", "pread", "mmap"])
            start = time.monotonic()
            try:
                with open(path, "rb", buffering=0) as f:
                    if mode == "seq":
                        off = rng.randrange(0, len(want))
                        f.seek(off)
                        for _ in range(rng.randrange(1, 16)):
                            got = f.read(MiB)
                            mine.add(
                                len(got),
                                _mismatch(got, want[off : off + len(got)]),
                                time.monotonic() - start,
                            )
                            off += len(got)
                            if not got:
                                break
                    elif mode == "pread":
                        for _ in range(rng.randrange(1, 32)):
                            n = rng.choice([4096, 65536, 1 << 20])
                            off = rng.randrange(0, len(want))
                            t = time.monotonic()
                            got = os.pread(f.fileno(), n, off)
                            mine.add(
                                len(got), _mismatch(got, want[off : off + n]), time.monotonic() - t
                            )
                    else:
                        # an I/O error under mmap is SIGBUS: the parent counts the death
                        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                            for _ in range(rng.randrange(1, 32)):
                                off = rng.randrange(0, len(want))
                                t = time.monotonic()
                                got = m[off : off + 8192]
                                mine.add(
                                    len(got),
                                    _mismatch(got, want[off : off + 8192]),
                                    time.monotonic() - t,
                                )
            except OSError:
                mine.errors += 1
            if time.monotonic() - start > hang_limit:
                mine.hung += 1
            results.put(
                (
                    index,
                    mine.reads,
                    mine.bytes,
                    mine.wrong_bytes,
                    mine.errors,
                    mine.hung,
                    mine.slowest_op,
                )
            )
            mine = Report()

    def drop_page_cache() -> None:
        # Without this, readers soon hit only the kernel's page cache and no fault lands.
        for name in contents:
            fd = os.open(mount.path / "soak" / "repo" / name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def faults() -> None:
        nonlocal server
        rng = random.Random(seed)
        restarted = not restart
        while not stop.wait(fault_every):
            if time.monotonic() > deadline:
                return
            try:
                if not restarted and time.monotonic() > deadline - seconds / 2:
                    injected = server.stats()["faults_injected"]
                    for k, v in injected.items():
                        report.faults_injected[k] = report.faults_injected.get(k, 0) + v
                    server.stop()
                    time.sleep(0.5)
                    server = start_server(
                        root, "--faults", "--http", f"127.0.0.1:{http_port}", "--grpc", grpc_addr
                    )
                    report.restarts += 1
                    restarted = True
                    continue
                kind, params = rng.choice(FAULTS)
                server.add_fault(kind, **params(rng))
                drop_page_cache()
            except Exception:  # the store is mid-restart: skip this round
                continue

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    injector = threading.Thread(target=faults, daemon=True)
    t0 = time.monotonic()
    procs: dict[int, multiprocessing.Process] = {}

    def spawn(index: int) -> None:
        p = ctx.Process(target=reader, args=(index, deadline), daemon=True)
        p.start()
        procs[index] = p

    def collect() -> None:
        while True:
            try:
                _, reads, nbytes, wrong, errors, hung, slowest = results.get_nowait()
            except queue.Empty:
                return
            report.reads += reads
            report.bytes += nbytes
            report.wrong_bytes += wrong
            report.errors += errors
            report.hung += hung
            report.slowest_op = max(report.slowest_op, slowest)

    try:
        for i in range(readers):
            spawn(i)
        injector.start()
        while time.monotonic() < deadline + hang_limit:
            collect()
            for i, p in list(procs.items()):
                if p.exitcode is not None and p.exitcode != 0:
                    report.errors += 1  # died of SIGBUS: an mmap read hit EIO
                    if time.monotonic() < deadline - 1:
                        spawn(i)
                    else:
                        del procs[i]
            if all(p.exitcode is not None for p in procs.values()):
                break
            time.sleep(0.1)
        collect()
        stragglers = [p for p in procs.values() if p.exitcode is None]
        report.hung += len(stragglers)
        for p in stragglers:
            p.kill()
        stop.set()
        injector.join(timeout=30)
        report.seconds = time.monotonic() - t0
        report.peak_rss_mib = peak_rss_mib(mount.pid) or 0.0
        status = mount.status()
        report.reopens = status["stream_reopens"]
        for k, v in server.stats()["faults_injected"].items():
            report.faults_injected[k] = report.faults_injected.get(k, 0) + v
    finally:
        stop.set()
        mount.unmount()
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/soak")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--readers", type=int, default=32)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--fault-every", type=float, default=3.0)
    ap.add_argument("--memory-mib", type=int, default=256)
    ap.add_argument("--read-timeout", type=float, default=10)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelfs-soak-") as tmp:
        report = run_soak(
            Path(tmp),
            seconds=a.minutes * 60,
            readers=a.readers,
            files=a.files,
            file_mib=a.file_mib,
            fault_every=a.fault_every,
            restart=True,
            memory_mib=a.memory_mib,
            read_timeout=a.read_timeout,
        )
    view = report.view()
    print(json.dumps(view, indent=2))
    ok = (
        view["wrong_bytes"] == 0
        and view["hung"] == 0
        and view["peak_rss_mib"] <= view["memory_budget_mib"] + 300
    )
    print("soak:", "PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
