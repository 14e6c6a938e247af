"""`modelfs serve` at scale: 2,000 concurrent streams from several client processes (half
of them never reading), and a 20,000-file repo mounted through a real FUSE mount.

The numbers each test measures are printed (`pytest -s`) and asserted only as bounds
that do not depend on the machine's speed: no refusal, threads and memory under stated
caps, no walk of the repo per request."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

from fusefs.proto import storage_pb2 as pb
from fusefs.server.limits import SMALL_CHUNK, Limits
from fusefs.testing import MiB, sample_bytes, start_mount, start_server, wait_for, write_file

LOAD = Path(__file__).parent / "support" / "stream_load.py"
METHOD = "/google.storage.v2.Storage/BidiReadObject"
PROCESSES, PER_PROCESS = 8, 250  # 2,000 streams, one channel per process
BASE_RSS_MIB = 150  # the store idle: interpreter, grpc, hypercorn, trio


def proc_status(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {
        "threads": int(fields["Threads"]),
        "rss_mib": int(fields["VmRSS"].split()[0]) // 1024,
    }


def small_reads(target: str, n: int) -> list[float]:
    """Seconds each of n new streams takes to read 64 KiB (spec, range, data)."""
    channel = grpc.insecure_channel(target)
    stream = channel.stream_stream(METHOD)
    request = pb.BidiReadObjectRequest(
        read_object_spec=pb.BidiReadObjectSpec(
            bucket="projects/_/buckets/local", object="acme/m/small.bin"
        ),
        read_ranges=[pb.ReadRange(read_offset=0, read_length=64 << 10, read_id=1)],
    ).SerializeToString()
    took = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            got = sum(
                len(d.checksummed_data.content)
                for raw in stream(iter([request]), timeout=60)
                for d in pb.BidiReadObjectResponse.FromString(raw).object_data_ranges
            )
            took.append(time.perf_counter() - start)
            assert got == 64 << 10
    finally:
        channel.close()
    return took


def test_2000_streams_many_channels_some_never_read(tmp_path):
    root = tmp_path / "s"
    write_file(root / "acme" / "m" / "small.bin", sample_bytes(MiB, seed=1))
    write_file(root / "acme" / "m" / "big.bin", sample_bytes(64 * MiB, seed=2))
    server = start_server(root)
    loads: list[subprocess.Popen[str]] = []
    try:
        idle = proc_status(server.pid)
        before = statistics.median(small_reads(server.grpc[""], 20))
        for _ in range(PROCESSES):
            loads.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(LOAD),
                        server.grpc[""],
                        "local",
                        "--idle",
                        "acme/m/small.bin",
                        "--stalled",
                        "acme/m/big.bin",
                        "--streams",
                        str(PER_PROCESS),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        results = [json.loads(p.stdout.readline()) for p in loads if p.stdout]
        total = PROCESSES * PER_PROCESS
        assert sum(r["ok"] for r in results) == total, results  # no refusal of any kind
        stats = server.stats()
        assert stats["streams_active"]["local"] >= total and stats["streams_refused"] == 0
        time.sleep(2)  # the stalled streams' writes settle on their clients' windows
        held = proc_status(server.pid)
        reads = small_reads(server.grpc[""], 50)
        during = proc_status(server.pid)
        queued = server.stats()["process"]
        for p in loads:
            assert p.stdin is not None
            p.stdin.close()  # each client cancels its streams
        for p in loads:
            p.wait(30)
        wait_for(lambda: not server.stats()["streams_active"].get("local"), 20, "streams to end")
        wait_for(
            lambda: proc_status(server.pid)["rss_mib"] < (held["rss_mib"] + idle["rss_mib"]) / 2,
            15,
            "memory to be returned",
        )
        after = proc_status(server.pid)
        p50, p99 = statistics.median(reads), sorted(reads)[int(len(reads) * 0.99) - 1]
        print(
            f"\n2,000 streams: threads {idle['threads']} idle, {held['threads']} held, "
            f"{during['threads']} during reads; RSS {idle['rss_mib']} MiB idle, "
            f"{held['rss_mib']} MiB held, {after['rss_mib']} MiB after cancel; queued "
            f"{queued['queued_bytes'] >> 20} MiB (peak {queued['queued_bytes_peak'] >> 20}); "
            f"64 KiB read p50 {p50 * 1000:.1f} ms / p99 {p99 * 1000:.1f} ms "
            f"(alone: {before * 1000:.1f} ms)"
        )
        # No thread per stream: grpc core's few, the loop, its two I/O threads, trio's.
        assert max(held["threads"], during["threads"]) <= idle["threads"] + 12
        # Memory: what the limits allow to be queued (held twice while a write waits),
        # plus what 2,000 streams cost in grpc core (~30 KiB each).
        limits = Limits()
        queued_bound = 2 * (limits.send_memory + limits.stream_buffer + total * SMALL_CHUNK)
        assert held["rss_mib"] <= BASE_RSS_MIB + (queued_bound + total * (64 << 10)) / MiB
        assert queued["queued_bytes"] <= limits.queued_bound()
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait()
        server.stop()


def test_a_20000_file_repo_mounts_and_reads_without_walking_it_per_request(tmp_path):
    """200 directories of 100 files: once a walk of the whole repo per request (118 s to
    mount, 0.7 s for a cold `cat`); now one walk builds the index and every listing
    page and probe is answered from it."""
    root = tmp_path / "s"
    repo = root / "acme" / "big"
    for d in range(200):
        (repo / f"d{d:03d}").mkdir(parents=True)
        for f in range(100):
            (repo / f"d{d:03d}" / f"f{f:03d}.txt").write_bytes(
                f"{d:03d}/{f:03d} twenty7 bytes\n".encode()
            )
    server = start_server(root)
    try:
        start = time.monotonic()
        m = start_mount(tmp_path / "mnt", server.hub, "--repo", "acme/big")
        mount_s = time.monotonic() - start
        try:
            start = time.monotonic()
            data = (m.path / "acme" / "big" / "d123" / "f045.txt").read_bytes()
            cat_ms = (time.monotonic() - start) * 1000
            assert data == b"123/045 twenty7 bytes\n"
            start = time.monotonic()  # another file: the channel to the store is open now
            assert (m.path / "acme" / "big" / "d150" / "f020.txt").read_bytes()[:7] == b"150/020"
            second_ms = (time.monotonic() - start) * 1000
            for d, f in ((0, 0), (199, 99), (57, 3)):
                path = m.path / "acme" / "big" / f"d{d:03d}" / f"f{f:03d}.txt"
                assert path.read_bytes() == f"{d:03d}/{f:03d} twenty7 bytes\n".encode()
            assert len(list((m.path / "acme" / "big" / "d007").iterdir())) == 100
        finally:
            m.unmount()
        stats = server.stats()
        print(
            f"\n20,000 files: mounted in {mount_s:.2f} s, cold cat {cat_ms:.1f} ms "
            f"(another file: {second_ms:.1f} ms); {stats['hub_requests']} hub requests, "
            f"{stats['store']['repo_scans']} walks of the repo"
        )
        # the mount walked the cut listing (201 listing requests and a probe per file
        # read): the repo itself was walked once, for its index, plus at most a couple
        # of rechecks when the index got older than --rescan-interval
        assert stats["hub_requests"] > 200
        assert stats["store"]["repo_scans"] <= 1 + mount_s / Limits().rescan_interval + 1
    finally:
        server.stop()
