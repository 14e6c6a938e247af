"""Throws malformed and random requests at a running `modelfs serve` for a bounded time.

    scripts/fuzz-store [--seconds 60] [--seed N] [--workers 2] [--rss-bound-mib 256]

A store is started on a temp directory (a repo, a dataset-less root, a link that
points outside it). Worker threads then send, until the time is up:

* gRPC: random bytes as request messages (through a generic channel with identity
  serializers), valid requests with bytes flipped or cut, structured requests with
  random field values (names with control characters, `..`, links, huge or negative
  ids, offsets and lengths, too many ranges, a second object spec), unknown methods,
  streams abandoned mid-read and streams that never read;
* HTTP: raw requests on a socket with random methods, paths (routes with random
  segments, percent-escapes valid or not), query strings, headers (non-UTF-8 bytes,
  long values, `Range` values of every shape) and bodies (some past the body cap).

Meanwhile a prober reads 64 KiB over a new stream every 100 ms (the "normal read") and
the store's memory is sampled. A finding is an HTTP 5xx, a gRPC UNKNOWN or INTERNAL, a
normal read that fails, a traceback in the store's log, a store that exits, or a peak
RSS over the bound. Prints a JSON report (requests tried, answers, findings, peak RSS,
normal read p50/p99); exits 1 when there are findings.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import grpc
import httpx

from fusefs.proto import storage_pb2 as pb
from fusefs.testing import MiB, ServerHandle, sample_bytes, start_server, write_file

METHOD = "/google.storage.v2.Storage/BidiReadObject"
BUCKET = "projects/_/buckets/local"
SIZE = MiB + 123
INT64 = (-(1 << 63), (1 << 63) - 1)
GRPC_FINDINGS = {"UNKNOWN", "INTERNAL"}
MAX_FINDINGS = 50


class Findings:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.lock = threading.Lock()

    def add(self, what: str) -> None:
        with self.lock:
            if len(self.items) < MAX_FINDINGS:
                self.items.append(what[:4000])


# -- random values ---------------------------------------------------------------------


def edge_int(rng: random.Random) -> int:
    return rng.choice(
        [
            0,
            1,
            -1,
            SIZE,
            SIZE - 1,
            SIZE + 1,
            -SIZE,
            -SIZE - 1,
            INT64[0],
            INT64[1],
            1 << 32,
            rng.randint(*INT64),
            rng.randint(-4096, SIZE + 4096),
        ]
    )


def random_text(rng: random.Random, limit: int = 40) -> str:
    alphabet = rng.choice(
        [
            "abc/._-%",
            "\x00\n\r\x1b\x7f\x85/",
            "é中😀/\u202e\u2028",
            "٠١٢٣٤٥٦٧٨٩0123456789",
        ]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))


def object_name(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "acme/m/a.bin"
    return rng.choice(
        [
            "acme/m/a.bin",
            "acme/m/sub/b.txt",
            "acme/m/.gitattributes",
            "acme/m/outside/secret.txt",
            "acme/m/link.bin",
            "acme/m/../m/a.bin",
            "acme/m/sub/%2e%2e/a.bin",
            "acme/m/a.bin\x00",
            "acme/m\n/a.bin",
            "_datasets/acme/m/a.bin",
            "acme/m/" + "x" * rng.choice([255, 256, 4096, 5000]),
            "acme/m/.git/config",
            "",
            random_text(rng),
            "acme/m/" + random_text(rng),
        ]
    )


def structured_request(rng: random.Random, with_spec: bool) -> pb.BidiReadObjectRequest:
    request = pb.BidiReadObjectRequest()
    if with_spec:
        spec = request.read_object_spec
        spec.bucket = rng.choice([BUCKET] * 6 + ["projects/_/buckets/x", random_text(rng)])
        spec.object = object_name(rng)
        if rng.random() < 0.3:
            spec.generation = edge_int(rng)
        if rng.random() < 0.1:
            spec.if_generation_match = edge_int(rng)
        if rng.random() < 0.1:
            spec.if_generation_not_match = edge_int(rng)
        if rng.random() < 0.1:
            spec.read_handle.handle = rng.randbytes(rng.choice([0, 10, 2000]))
        if rng.random() < 0.1:
            spec.routing_token = random_text(rng, 3000)
    sane = rng.random() < 0.5  # mostly valid ranges: the data path gets exercised too
    for i in range(rng.choice([0, 1, 1, 2, 5, 100, 101, 150])):
        if sane:
            offset = rng.randrange(-SIZE, SIZE)
            length = rng.randrange(0, 64 << 10) if offset >= 0 else 0
            length = min(length, SIZE - offset) if offset >= 0 else 0
            read_id = rng.choice([i, -i - 1, (1 << 62) + i])
        else:
            offset, read_id = edge_int(rng), edge_int(rng)
            length = rng.choice([0, 1, 100, 64 << 10, edge_int(rng)])
        request.read_ranges.append(
            pb.ReadRange(read_offset=offset, read_length=length, read_id=read_id)
        )
    return request


def mutate(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randrange(1, 5)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6 and data:
            del data[rng.randrange(len(data)) :]
        elif choice < 0.8:
            data[rng.randrange(len(data) + 1) : 0] = rng.randbytes(rng.randrange(1, 12))
        else:
            data += rng.randbytes(rng.randrange(1, 40))
    return bytes(data)


# -- gRPC ------------------------------------------------------------------------------


def grpc_worker(
    target: str, rng: random.Random, until: float, tally: Counter[str], found: Findings
) -> None:
    channel = grpc.insecure_channel(target, [("grpc.max_receive_message_length", 32 << 20)])
    stalling = grpc.insecure_channel(target, [("grpc.http2.bdp_probe", 0)])
    stream = channel.stream_stream(METHOD)
    try:
        while time.monotonic() < until:
            kind = rng.choice(
                ["raw", "mutated", "structured", "structured", "method", "abandon", "stall"]
            )
            messages: list[bytes] = []
            if kind == "raw":
                messages = [rng.randbytes(rng.randrange(300)) for _ in range(rng.randrange(1, 4))]
            elif kind == "mutated":
                valid = structured_request(random.Random(rng.random()), True)
                valid.read_object_spec.bucket = BUCKET
                valid.read_object_spec.object = "acme/m/a.bin"
                messages = [mutate(rng, valid.SerializeToString())]
            elif kind in ("structured", "method"):
                messages = [structured_request(rng, True).SerializeToString()]
                messages += [
                    structured_request(rng, rng.random() < 0.2).SerializeToString()
                    for _ in range(rng.choice([0, 0, 1, 3]))
                ]
            try:
                if kind == "method":
                    name = rng.choice(
                        [
                            "/google.storage.v2.Storage/ReadObject",
                            "/google.storage.v2.Storage/" + random_text(rng, 20),
                            "/" + random_text(rng, 30),
                        ]
                    )
                    method = channel.stream_stream(name)
                    for _ in method(iter(messages), timeout=5):
                        pass
                elif kind in ("abandon", "stall"):
                    first = pb.BidiReadObjectRequest(
                        read_object_spec=pb.BidiReadObjectSpec(
                            bucket=BUCKET, object="acme/m/a.bin"
                        ),
                        read_ranges=[pb.ReadRange(read_offset=0, read_length=0, read_id=1)],
                    ).SerializeToString()
                    call = (stalling if kind == "stall" else channel).stream_stream(METHOD)(
                        iter([first]), timeout=10
                    )
                    next(call)
                    if kind == "stall":
                        time.sleep(rng.random() * 0.3)
                    call.cancel()
                    tally["grpc:CANCELLED_BY_US"] += 1
                    continue
                else:
                    for _ in stream(iter(messages), timeout=5):
                        pass
                tally["grpc:OK"] += 1
            except grpc.RpcError as e:
                code = e.code().name if e.code() else "NONE"
                tally[f"grpc:{code}"] += 1
                if code in GRPC_FINDINGS and "Received RST_STREAM" not in (e.details() or ""):
                    found.add(f"gRPC {kind} -> {code} {e.details()!r}: {messages!r}")
            except Exception as e:  # the client library choked: worth a look, not the store
                tally["grpc:client-error"] += 1
                found.add(f"gRPC client error {e!r} on {kind}: {messages!r}")
    finally:
        channel.close()
        stalling.close()


# -- HTTP ------------------------------------------------------------------------------


def http_path(rng: random.Random, commit: str) -> bytes:
    segments = rng.choice(
        [
            ["api", "v1", "models", "acme", "m"],
            ["api", "v1", "models", "acme", "m", "repo", "files"],
            ["api", "v1", "datasets", "acme", "m", "repo", "tree"],
            ["api", "v1", "models", "acme", "m", "repo"],
            ["openapi", "v1", "models", "acme", "m"],
            ["cdn", "acme", "m", commit, "a.bin"],
            ["cdn", "acme", "m", commit, "outside", "secret.txt"],
            ["storage", "v1", "b", "local", "o"],
            ["storage", "v1", "b", "local", "o", "acme%2Fm%2Fa.bin"],
            ["download", "storage", "v1", "b", "local", "o", "acme%2Fm%2Fa.bin"],
            ["admin", "stats"],
            [],
        ]
    )
    segments = list(segments)
    for _ in range(rng.choice([0, 0, 1, 2])):
        i = rng.randrange(len(segments) + 1)
        segments.insert(
            i,
            rng.choice(
                [
                    "..",
                    "%2e%2e",
                    "%252e%252e",
                    "%2F",
                    "%00",
                    "%ff%fe",
                    "%",
                    "%zz",
                    "a%0Ab",
                    quote(random_text(rng, 12), safe=""),
                    "x" * rng.choice([10, 300, 5000]),
                ]
            ),
        )
    if segments and rng.random() < 0.3:
        segments[rng.randrange(len(segments))] = quote(random_text(rng, 10), safe="/%")
    path = "/" + "/".join(segments)
    if rng.random() < 0.6:
        keys = ["Revision", "FilePath", "Recursive", "Root", "PageNumber", "PageSize", "prefix"]
        keys += ["delimiter", "pageToken", "maxResults", "alt", "generation", "region", "Ref"]
        pairs = []
        for _ in range(rng.randrange(1, 6)):
            value = rng.choice(
                [
                    "a.bin",
                    "master",
                    commit,
                    "true",
                    "-1",
                    "9" * rng.choice([3, 20, 5000]),
                    "%ff",
                    "%00",
                    quote(random_text(rng, 20), safe=""),
                    "",
                ]
            )
            pairs.append(f"{rng.choice(keys)}={value}")
        if rng.random() < 0.05:
            pairs *= 40  # past the query field cap
        path += "?" + "&".join(pairs)
    return path.encode("ascii", "replace")


def range_value(rng: random.Random) -> bytes:
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"bytes={digits(rng.randrange(1, 6))}-{digits(rng.randrange(0, 6))}",
            f"bytes=-{digits(rng.randrange(1, 8))}",
            f"bytes={digits(5000)}-",
            f"bytes=0-{digits(5000)}",
            "bytes=١-٣",
            "bytes=1-2,5-6",
            "BYTES=0-0",
            "bytes=--1",
            random_text(rng),
        ]
    ).encode("utf-8")


def header_lines(rng: random.Random) -> bytes:
    lines = [b"Host: store"]
    if rng.random() < 0.5:
        lines.append(b"Range: " + range_value(rng))
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        name = rng.choice([b"X-Fuzz", b"Authorization", b"x-aliyun-region-id", b"x-modelfs-accept"])
        value = rng.choice(
            [
                rng.randbytes(rng.randrange(1, 30)).replace(b"\r", b"").replace(b"\n", b""),
                b"\xff\xfe\xc3\x28",
                b"Bearer " + b"a" * rng.choice([10, 9000]),
                b"local",
                b"grpc",
                b"v" * rng.choice([100, 20000]),
            ]
        )
        lines.append(name + b": " + value)
    return b"\r\n".join(lines)


def http_worker(
    url: str, commit: str, rng: random.Random, until: float, tally: Counter[str], found: Findings
) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    while time.monotonic() < until:
        method = rng.choice([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"FUZZ"])
        body = b""
        if rng.random() < 0.2:
            body = rng.randbytes(rng.choice([10, 2000, 70 << 10]))
        request = (
            method
            + b" "
            + http_path(rng, commit)
            + b" HTTP/1.1\r\n"
            + header_lines(rng)
            + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        if rng.random() < 0.05:
            request = mutate(rng, request)
        try:
            with socket.create_connection((host, int(port)), timeout=2) as s:
                s.sendall(request)
                head = s.recv(64)
        except OSError as e:
            tally[f"http:{e.__class__.__name__}"] += 1
            continue
        if not head:
            tally["http:closed"] += 1
            continue
        parts = head.split(b" ", 2)
        status = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
        tally[f"http:{status}"] += 1
        if not head.startswith(b"HTTP/1.1 ") or status.startswith("5"):
            found.add(f"HTTP -> {head[:40]!r}: {request[:400]!r}")


# -- the normal read, memory -----------------------------------------------------------


def prober(target: str, until: float, took: list[float], found: Findings, data: bytes) -> None:
    channel = grpc.insecure_channel(target)
    stream = channel.stream_stream(METHOD)
    request = pb.BidiReadObjectRequest(
        read_object_spec=pb.BidiReadObjectSpec(bucket=BUCKET, object="acme/m/a.bin"),
        read_ranges=[pb.ReadRange(read_offset=4096, read_length=64 << 10, read_id=1)],
    ).SerializeToString()
    try:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                got = b"".join(
                    d.checksummed_data.content
                    for raw in stream(iter([request]), timeout=30)
                    for d in pb.BidiReadObjectResponse.FromString(raw).object_data_ranges
                )
            except grpc.RpcError as e:
                found.add(f"a normal read failed: {e.code()} {e.details()!r}")
                continue
            took.append(time.perf_counter() - start)
            if got != data[4096 : 4096 + (64 << 10)]:
                found.add("a normal read returned the wrong bytes")
            time.sleep(0.1)
    finally:
        channel.close()


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))
    except (OSError, StopIteration):
        return 0.0


def fuzz(seconds: float, seed: int, workers: int, rss_bound: float, work: Path) -> dict:
    root = work / "root"
    data = sample_bytes(SIZE, seed=seed)
    write_file(root / "acme" / "m" / "a.bin", data)
    write_file(root / "acme" / "m" / "sub" / "b.txt", b"b\n")
    write_file(root / "acme" / "m" / ".gitattributes", b"* -text\n")
    write_file(work / "outside" / "secret.txt", b"never served\n")
    (root / "acme" / "m" / "outside").symlink_to(work / "outside")
    (root / "acme" / "m" / "link.bin").symlink_to(root / "acme" / "m" / "a.bin")
    log = work / "serve.log"
    server: ServerHandle = start_server(root, log=log)
    found = Findings()
    tally: Counter[str] = Counter()
    took: list[float] = []
    peak = 0.0
    try:
        head = httpx.get(f"{server.hub}/api/v1/models/acme/m/commits").json()
        commit = head["Data"]["Commit"][0]["Id"]
        until = time.monotonic() + seconds
        threads = [
            threading.Thread(target=prober, args=(server.grpc[""], until, took, found, data))
        ]
        counters: list[Counter[str]] = []
        for i in range(workers):
            for worker, args in (
                (grpc_worker, (server.grpc[""], random.Random(seed * 1000 + i))),
                (http_worker, (server.hub, commit, random.Random(seed * 1000 + 500 + i))),
            ):
                counters.append(Counter())
                threads.append(
                    threading.Thread(target=worker, args=(*args, until, counters[-1], found))
                )
        for t in threads:
            t.daemon = True
            t.start()
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_mib(server.pid))
            if server.proc.poll() is not None:
                found.add(f"the store exited with {server.proc.returncode}")
                break
            time.sleep(0.25)
        for t in threads:
            t.join(60)
        for counter in counters:
            tally.update(counter)
        # afterwards: it still answers a normal read, both planes
        after: list[float] = []
        prober(server.grpc[""], time.monotonic() + 0.5, after, found, data)
        if not after:
            found.add("no normal read after the fuzz")
        cdn = httpx.get(f"{server.hub}/cdn/acme/m/{commit}/a.bin", headers={"Range": "bytes=0-99"})
        if cdn.status_code != 206 or cdn.content != data[:100]:
            found.add(f"the CDN route after the fuzz: {cdn.status_code}")
        peak = max(peak, rss_mib(server.pid, "VmHWM"))
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    if "Traceback" in text:
        trace = text[text.index("Traceback") :].splitlines()
        last = next((line for line in trace[1:] if not line.startswith(" ")), trace[-1])
        found.add(f"a traceback in the store's log ({last.strip()}): " + "\n".join(trace[:40]))
    if peak > rss_bound:
        found.add(f"peak RSS {peak:.0f} MiB over the bound of {rss_bound:.0f} MiB")
    ordered = sorted(took)
    return {
        "seconds": seconds,
        "seed": seed,
        "requests": {
            "grpc": sum(v for k, v in tally.items() if k.startswith("grpc:")),
            "http": sum(v for k, v in tally.items() if k.startswith("http:")),
        },
        "answers": dict(sorted(tally.items())),
        "normal_reads": len(took),
        "normal_read_ms": {
            "p50": round(statistics.median(ordered) * 1000, 2) if ordered else None,
            "p99": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2)
            if ordered
            else None,
        },
        "peak_rss_mib": round(peak, 1),
        "rss_bound_mib": rss_bound,
        "findings": found.items,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--workers", type=int, default=2, help="gRPC and HTTP threads, each")
    p.add_argument("--rss-bound-mib", type=float, default=256)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fuzz-store-") as work:
        report = fuzz(a.seconds, a.seed, a.workers, a.rss_bound_mib, Path(work))
    print(json.dumps(report, indent=1))
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
