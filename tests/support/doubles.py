"""Test doubles shared by the suite: a scripted hub for resolution rules, a hostile hub
and a listener that are real HTTP servers, and a range source that answers from memory.

They stand in only where the real thing cannot show the behaviour under test
(a scripted answer, a hostile one); everything else runs against `modelfs serve`.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import crc32c
import grpc
import trio

from fusefs.data.client import DataClient
from fusefs.data.errors import DataError
from fusefs.data.source import SourceCounters
from fusefs.hub.client import Answer, RepoId, RepoNotFound, Snapshot
from fusefs.hub.listing import RepoFile
from fusefs.proto import storage_pb2 as pb
from fusefs.server.wire import data_response
from fusefs.testing import sample_bytes

CDN = "https://cdn.example.com/"
COMMIT = "c" * 40
CONTENT = sample_bytes(300_000, seed=5)


class ScriptedHub:
    """Answers probes from a table {region: paths held}; counts every probe. Also lists
    the repos added with `add_repo` (others are unknown), counting those calls too."""

    def __init__(self, holders: dict[str, set[str]], delay: float = 0.0):
        self.holders = holders  # region -> paths it holds internally
        self.delay = delay
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail: dict[str | None, list[object]] = {}  # region -> queued failures
        self.inline: set[str] = set()
        self.missing: set[str] = set()  # paths that do not exist at any commit: 404
        self.repos: dict[RepoId, Snapshot] = {}
        self.snapshot_calls: list[RepoId] = []

    def repo(self, owner: str, name: str) -> RepoId:
        return RepoId(owner, name)

    def add_repo(self, repo: RepoId, files: dict[str, bytes]) -> Snapshot:
        snap = Snapshot(
            repo, "master", COMMIT, [RepoFile(p, len(d), None, 0) for p, d in sorted(files.items())]
        )
        self.repos[repo] = snap
        return snap

    async def snapshot(self, repo, revision="master"):
        self.snapshot_calls.append(repo)
        await trio.sleep(self.delay)
        if repo not in self.repos:
            raise RepoNotFound(f"not found on the hub: {repo}")
        return self.repos[repo]

    def download_url(self, repo, commit, path):
        return f"http://hub/{repo}/{commit}/{path}"

    async def ask_location(self, repo, commit, path, region):
        self.calls.append((commit, path, region))
        await trio.sleep(self.delay)
        queued = self.fail.get(region)
        if queued:
            failure = queued.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return Answer(failure, None)
        if path in self.missing:
            return Answer(404, None)
        if path in self.inline:
            return Answer(200, None)
        if region and path in self.holders.get(region, ()):
            return Answer(302, f"grpc://{region}.store:443/{region}/{repo}/{path}?generation=1")
        return Answer(302, CDN + path)


class HostileHub:
    """Answers in the real hub's shapes (revisions without commit ids; the head commit
    from `commits`), unless told otherwise; records every request."""

    def __init__(self):
        self.files: list[dict] = []
        self.listing_body: bytes | None = None  # overrides the JSON listing
        self.location: str | None = None  # overrides the probe's Location
        self.cdn_extra = b""  # bytes appended past what a Range asked for
        self.commits = True  # answer `commits?Ref=` with COMMIT (else 404, as a bare hub)
        self.latest_committer: dict | None = None  # the listing's Data.LatestCommitter
        self.accel: dict | None = None  # internalAccelerationInfo's Data (None: 404)
        self.trickle: float | None = None  # seconds between bytes of every JSON answer
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                trickle = hub.trickle
                if trickle is None or status >= 300:
                    self.wfile.write(body)
                    return
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(trickle)
                except OSError:
                    pass  # the client gave up on us: what a trickle is for

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                hub.requests.append((self.command, self.path, dict(self.headers.items())))
                if url.path == "/api/v1/repos/internalAccelerationInfo" and hub.accel is not None:
                    return self._send(200, json.dumps({"Code": 200, "Data": hub.accel}).encode())
                if url.path.endswith("/revisions"):
                    refs = {"Branches": [{"Revision": "master", "CreatedAt": 1760000000}]}
                    body = {"Code": 200, "Data": {"RevisionMap": {**refs, "Tags": []}}}
                    return self._send(200, json.dumps(body).encode())
                if url.path.endswith("/commits") and hub.commits:
                    body = {
                        "Code": 200,
                        "Data": {"Commit": [{"Id": COMMIT, "ShortId": COMMIT[:8]}]},
                    }
                    return self._send(200, json.dumps(body).encode())
                if url.path.endswith(("/repo/files", "/repo/tree")):  # no paging at all
                    data = {"Files": hub.files}
                    if hub.latest_committer is not None:
                        data["LatestCommitter"] = hub.latest_committer
                    body = hub.listing_body or json.dumps({"Code": 200, "Data": data}).encode()
                    return self._send(200, body)
                if url.path.endswith("/repo"):
                    loc = hub.location or f"{hub.url}/cdn/{quote(q.get('FilePath', ''))}"
                    return self._send(302, headers=[("Location", loc)])
                if url.path.startswith("/cdn/"):
                    first, last = map(int, self.headers["Range"][6:].split("-"))
                    body = CONTENT[first : last + 1] + hub.cdn_extra
                    return self._send(
                        206, body, [("Content-Range", f"bytes {first}-{last}/{len(CONTENT)}")]
                    )
                return self._send(404, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A real HTTP server on another port that answers every GET with `body` and keeps
    each request's headers: where did a client send what?"""

    def __init__(self, body: bytes = b"cn-elsewhere\n"):
        self.headers: list[dict[str, str]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                listener.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class InstantSource:
    """Serves every range at once from memory: the reader's bookkeeping under test.

    `failures` are raised into the next ranges submitted (one error per range), and
    `location` says where the data path that opened it thought it was reading from;
    `generation` is the one the (pretend) store has, which `confirm` compares."""

    def __init__(self, data: bytes, location: str = "", generation: int = 1):
        self.data = data
        self.location = location
        self.generation = generation
        self.counters = SourceCounters()
        self.submitted: list[tuple[int, int]] = []
        self.failures: list[DataError] = []
        self.confirmed: list[int] = []
        self.closed = False

    def confirm(self, generation: int) -> bool:
        self.confirmed.append(generation)
        return generation == self.generation

    @property
    def progress(self) -> int:
        return self.counters.bytes

    def submit(self, ranges):
        if self.closed:
            raise DataError("closed")
        for rr in ranges:
            self.submitted.append((rr.offset, rr.length))
            if self.failures:
                rr.fail(self.failures.pop(0))
                continue
            self.counters.bytes += rr.length
            rr.feed(rr.offset, self.data[rr.offset : rr.end])

    def abandon(self, rr):
        pass

    def close(self):
        self.closed = True


class FakeData(DataClient):
    """The real data client, but every location it opens is served from memory:
    `files` maps an object's path (the location's tail) to its bytes. Locations that
    start with a prefix in `impostors` serve other bytes of the same size (another
    object at that name), at generation 2."""

    def __init__(self, files: dict[str, bytes], **kwargs):
        super().__init__(**kwargs)
        self.files = files
        self.opened: list[InstantSource] = []
        self.guessed: list[InstantSource] = []
        self.fail_next: dict[str, list[DataError]] = {}  # location prefix -> failures
        self.impostors: set[str] = set()

    def open_source(self, location, size, **pins):
        path = next(p for p in self.files if location.split("?")[0].endswith("/" + p))
        data, generation = self.files[path], 1
        if any(location.startswith(prefix) for prefix in self.impostors):
            data, generation = bytes(255 - b for b in data), 2
        source = InstantSource(data, location, generation)
        for prefix, failures in self.fail_next.items():
            if location.startswith(prefix):
                source.failures, self.fail_next[prefix] = failures, []
        self.opened.append(source)
        return source

    def open_guess(self, location, size):
        source = self.open_source(location, size)
        self.guessed.append(source)
        return source


class CraftedRpc:
    """Stands in for a channel's BidiReadObject method: every call answers with what
    `respond(first_request, call)` yields (response messages as wire bytes), then ends.
    `call.cancelled` is set when the client cancels it (a respond may wait on it)."""

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[CraftedCall] = []

    def __call__(self, requests, metadata=()):
        call = CraftedCall(requests, self.respond)
        self.calls.append(call)
        return call


class CraftedCall:
    def __init__(self, requests, respond):
        self._requests = requests
        self._respond = respond
        self.cancelled = threading.Event()

    def __iter__(self):
        first = next(self._requests)
        yield from self._respond(first, self)

    def cancel(self):
        self.cancelled.set()
        return True


class RefusingStore:
    """A real BidiReadObject server on loopback that refuses its first `refusals` streams
    with RESOURCE_EXHAUSTED, as a full store does, then serves `data` (one object)."""

    def __init__(self, data: bytes, refusals: int):
        self.data = data
        self.refusals = refusals
        self.refused = 0
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(8))
        handler = grpc.method_handlers_generic_handler(
            "google.storage.v2.Storage",
            {
                "BidiReadObject": grpc.stream_stream_rpc_method_handler(
                    self._serve,
                    request_deserializer=pb.BidiReadObjectRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.location = f"grpc://127.0.0.1:{port}/home/acme/m/model.bin?generation=1"

    def _serve(self, requests, context):
        with self._lock:
            refuse = self.refused < self.refusals
            self.refused += refuse
        if refuse:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        for n, request in enumerate(requests):
            if n == 0:
                yield pb.BidiReadObjectResponse(
                    metadata=pb.Object(size=len(self.data), generation=1)
                ).SerializeToString()
            for r in request.read_ranges:
                chunk = self.data[r.read_offset : r.read_offset + r.read_length]
                yield data_response(chunk, crc32c.crc32c(chunk), r.read_offset, r.read_id, True)

    def stop(self):
        self.server.stop(0)
