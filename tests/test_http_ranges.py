"""The ranged-HTTP data path without FUSE: against the store's own CDN route, and
against a scripted HTTP/1.1 server for the answers a real server gives only when it
misbehaves (cut bodies, wrong ranges, dropped keep-alive connections, silence)."""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable

import pytest
import trio

from fusefs.data.bidi import StreamLimits
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError, DeadlineError, GoneError
from fusefs.data.http import HttpRangeSource
from fusefs.data.http_conn import ConnectionLimits, ConnectionPool, Origin
from fusefs.data.http_workers import RangeWorkers
from fusefs.data.location import BadLocation
from fusefs.data.reader import ReadLimits
from fusefs.hub.client import HubClient, RepoId
from fusefs.testing import MiB, sample_bytes, start_server, write_file

from support.readers import read_all
from support.tls import self_signed

REPO = RepoId("acme", "data")
SIZE = 40 * MiB + 123
FAST = StreamLimits(backoff_initial=0.01, backoff_max=0.05, max_attempts=3)


# --- against `modelfs serve`'s CDN route -------------------------------------------


@pytest.fixture(scope="module")
def cdn(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    data = sample_bytes(SIZE, seed=5)
    write_file(root / "acme" / "data" / "blob.bin", data)
    handle = start_server(root)
    yield handle, data
    handle.stop()


async def cdn_location(hub_url: str) -> str:
    async with HubClient(hub_url) as hub:
        snap = await hub.snapshot(REPO)
        answer = await hub.ask_location(REPO, snap.commit, "blob.bin", None)
    assert answer.status == 302
    assert answer.location.startswith("http://")  # no region: the public CDN
    return answer.location


async def test_a_sequential_read_is_exact_with_ranges_in_flight_on_warm_connections(cdn):
    server, data = cdn
    url = await cdn_location(server.hub)
    async with DataClient() as client:
        reader = client.open_reader(url, SIZE)
        got = await read_all(reader)
        counters = reader.source.counters
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert counters.bytes == SIZE  # nothing fetched twice
        assert counters.retries == 0
        # 8 MiB ranges: 5 of them plus the first window's pieces, over a few connections
        assert counters.requests >= SIZE // (8 * MiB)
        assert client.http_pool.opened < counters.requests
        assert client.http_workers.threads > 1  # several ranges were in flight at once


async def test_concurrent_random_reads_are_exact_and_cost_only_their_bytes(cdn):
    server, data = cdn
    url = await cdn_location(server.hub)
    rng = random.Random(7)
    # far enough apart that none continues another: every read is random to the reader
    reads = [
        (off + rng.randrange(100), 4096)
        for off in rng.sample(range(MiB, SIZE - MiB, MiB // 4), 100)
    ]
    async with DataClient() as client:
        reader = client.open_reader(url, SIZE)

        async def one(off: int, n: int) -> None:
            assert bytes(await reader.read(off, n)) == data[off : off + n]

        async with trio.open_nursery() as nursery:
            for off, n in reads:
                nursery.start_soon(one, off, n)
        # random reads prefetch nothing: the blocks asked for and no more
        assert reader.source.counters.bytes == 100 * 4096
        assert reader.source.counters.requests == 100


# --- against a scripted server -----------------------------------------------------


class Cut(bytes):
    """Raw bytes to send before hanging up."""


Answer = Callable[[int, int, int], bytes | None]  # (first, last, request number) -> raw answer


class ScriptedHttp:
    """An HTTP/1.1 server on loopback that answers each request as `answer` says:
    raw bytes to send (then the connection stays open, unless they are `Cut`), or None
    to hang up without a word."""

    def __init__(self, data: bytes, answer: Answer, tls: ssl.SSLContext | None = None):
        self.data = data
        self.answer = answer
        self.ranges: list[tuple[int, int]] = []
        self.connections = 0
        self.server_names: list[str | None] = []  # SNI of each TLS connection
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        origin = "https://localhost" if tls else "http://127.0.0.1"  # a name to verify
        self.url = f"{origin}:{self._sock.getsockname()[1]}/f.bin"
        if tls:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                conn.close()
                return
        self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as requests:
            while True:
                lines = []
                while (line := requests.readline()) not in (b"\r\n", b""):
                    lines.append(line.decode("latin-1").strip())
                if not lines:
                    return
                spec = next(v for v in lines if v.lower().startswith("range:"))
                first, last = map(int, spec.split("=", 1)[1].split("-"))
                self.ranges.append((first, last))
                raw = self.answer(first, last, len(self.ranges))
                if raw is None:
                    return
                try:
                    conn.sendall(raw)
                except OSError:
                    return
                if isinstance(raw, Cut):
                    return

    def partial(self, first: int, last: int, *, body: bytes | None = None, **headers) -> bytes:
        body = self.data[first : last + 1] if body is None else body
        head = {
            "Content-Range": f"bytes {first}-{last}/{len(self.data)}",
            "Content-Length": str(len(body)),
            **headers,
        }
        return _response(206, head, body)


def _response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def scripted():
    servers: list[ScriptedHttp] = []

    def make(data: bytes, answer: Answer, tls: ssl.SSLContext | None = None) -> ScriptedHttp:
        servers.append(ScriptedHttp(data, answer, tls))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


DATA = sample_bytes(3 * MiB + 5, seed=9)


def client(**kw) -> DataClient:
    return DataClient(stream_limits=FAST, **kw)


async def test_a_cut_body_resumes_from_the_first_missing_byte(scripted):
    def answer(first, last, n):
        full = srv.partial(first, last)
        if n == 1:  # headers for the whole range, half the body, then the peer hangs up
            return Cut(full[: len(full) - (last - first + 1) // 2])
        return full

    srv = scripted(DATA, answer)
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        got = await read_all(reader, block=len(DATA))
    assert got == DATA
    (f1, l1), (f2, l2) = srv.ranges[:2]
    assert (f1, l1) == (0, len(DATA) - 1)
    assert 0 < f2 < l1 and l2 == l1  # the second GET asked only for what was missing
    assert reader.source.counters.bytes == len(DATA)


async def test_a_warm_connection_the_server_dropped_costs_no_attempt(scripted):
    # Every other request is met by a hang-up with no answer: on one worker that is
    # always the request on the connection the previous answer came on.
    srv = scripted(DATA, lambda first, last, n: None if n % 2 == 0 else srv.partial(first, last))
    async with client(http_workers=1) as c:
        reader = c.open_reader(srv.url, len(DATA))
        for off in (0, MiB, 2 * MiB):
            assert bytes(await reader.read(off, 4096)) == DATA[off : off + 4096]
    assert reader.source.counters.retries == 0
    assert len(srv.ranges) > 2


async def test_a_wrong_content_range_never_reaches_the_reader(scripted):
    def answer(first, last, n):  # the bytes one further on, labelled as such
        head = {"Content-Range": f"bytes {first + 1}-{last + 1}/{len(DATA)}"}
        return _response(206, {**head, "Content-Length": str(last - first + 1)}, b"x" * 4096)

    srv = scripted(DATA, answer)
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        with pytest.raises(DataError, match="Content-Range"):
            await reader.read(MiB, 4096)
    assert len(srv.ranges) == FAST.max_attempts + 1  # retried within bounds, then failed


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (404, {}, GoneError),
        (410, {}, GoneError),
        (200, {"Content-Length": "4096"}, DataError),  # a whole-object answer to a range
        (302, {"Location": "http://127.0.0.1:1/x"}, DataError),  # never followed
    ],
)
async def test_answers_that_are_not_the_range_fail_the_read(scripted, status, headers, error):
    srv = scripted(DATA, lambda first, last, n: _response(status, headers, DATA[:4096]))
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        with pytest.raises(error):
            await reader.read(MiB, 4096)


async def test_a_content_coding_is_refused(scripted):
    srv = scripted(
        DATA, lambda first, last, n: srv.partial(first, last, **{"Content-Encoding": "gzip"})
    )
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        with pytest.raises(DataError, match="content coding"):
            await reader.read(MiB, 4096)


async def test_a_whole_object_may_come_as_200(scripted):
    small = DATA[:1000]
    srv = scripted(small, lambda first, last, n: _response(200, {"Content-Length": "1000"}, small))
    async with client() as c:
        reader = c.open_reader(srv.url, len(small))
        assert bytes(await reader.read(0, 4096)) == small


async def test_a_server_error_is_retried(scripted):
    def answer(first, last, n):
        if n == 1:
            return _response(503, {"Content-Length": "0"}, b"")
        return srv.partial(first, last)

    srv = scripted(DATA, answer)
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        assert bytes(await reader.read(MiB, 4096)) == DATA[MiB : MiB + 4096]
    assert reader.source.counters.retries == 1


async def test_an_abandoned_transfer_frees_its_worker_at_once(scripted):
    """A server that goes silent holds no worker past the reader's deadline: abandoning
    the range cuts its connection, so the next read (on the only worker) is served."""

    def answer(first, last, n):
        if n == 1:
            time.sleep(30)  # silent far longer than the reader waits
            return None
        return srv.partial(first, last)

    srv = scripted(DATA, answer)
    limits = ReadLimits(deadline=0.5, stalled_deadline=0.5)
    async with client(http_workers=1, read_limits=limits) as c:
        reader = c.open_reader(srv.url, len(DATA))
        with pytest.raises(DeadlineError):
            await reader.read(0, 4096)
        assert bytes(await reader.read(MiB, 4096)) == DATA[MiB : MiB + 4096]


# --- the worker pool's order -------------------------------------------------------


class _Job:
    def __init__(self, name: str, demand: bool, log: list[str], gate: threading.Event):
        self.name, self.demand, self.log, self.gate = name, demand, log, gate
        self.tries = 0

    def step(self) -> float | None:
        self.gate.wait(5)
        self.log.append(self.name)
        self.tries += 1
        if self.name == "retry" and self.tries == 1:
            return 0.01
        return None


def test_reads_waited_on_go_before_read_ahead_and_retries_wait_without_a_thread():
    log: list[str] = []
    gate = threading.Event()
    workers = RangeWorkers(1)
    try:
        workers.submit(_Job("first", False, log, gate))  # takes the only thread
        time.sleep(0.05)
        for name, demand in (("ahead-1", False), ("retry", True), ("ahead-2", False)):
            workers.submit(_Job(name, demand, log, gate))
        workers.submit(_Job("demand", True, log, gate))
        gate.set()
        deadline = time.monotonic() + 5
        while len(log) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log[:3] == ["first", "retry", "demand"]
        assert sorted(log[3:]) == ["ahead-1", "ahead-2", "retry"]
        assert workers.started == 1
    finally:
        workers.close()


# --- warm connections ---------------------------------------------------------------


def test_idle_connections_are_kept_warm_within_their_caps():
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    origins = [Origin("http", "127.0.0.1", s.getsockname()[1]) for s in listeners]
    pool = ConnectionPool(ConnectionLimits(keep_per_origin=2, keep_total=3, idle_timeout=0.2))
    try:
        a = [pool.take(origins[0]) for _ in range(3)]
        assert [warm for _, warm in a] == [False] * 3 and pool.opened == 3
        for conn, _ in a:
            pool.give_back(origins[0], conn)
        assert a[0][0].sock is None  # past keep_per_origin: the first given back closed
        conn, warm = pool.take(origins[0])
        assert warm and conn is a[2][0]  # the most recent first
        pool.give_back(origins[0], conn)
        others = [pool.take(o)[0] for o in origins[1:] for _ in range(2)]
        for o, c in zip([origins[1]] * 2 + [origins[2]] * 2, others, strict=True):
            pool.give_back(o, c)
        kept = [c for c in (*(x for x, _ in a), *others) if c.sock is not None]
        assert len(kept) == 3  # keep_total, the newest
        time.sleep(0.25)
        conn, warm = pool.take(origins[2])
        assert not warm  # idle past idle_timeout: a new connection, the old one closed
        pool.give_back(origins[2], conn)
    finally:
        pool.close()
        for s in listeners:
            s.close()
    assert conn.sock is None  # closed with the pool


# --- TLS ------------------------------------------------------------------------------


async def test_https_ranges_are_verified_and_kept_warm(scripted, tmp_path, monkeypatch):
    context, ca_file = self_signed(tmp_path)
    srv = scripted(DATA, lambda first, last, n: srv.partial(first, last), tls=context)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)  # the system roots, as far as OpenSSL knows
    async with client(http_workers=1) as c:
        reader = c.open_reader(srv.url, len(DATA))
        for off in (MiB, 2 * MiB, 3 * MiB):
            assert bytes(await reader.read(off, 4096)) == DATA[off : off + 4096]
        assert c.http_pool.opened == 1  # one TLS handshake for every range
    assert srv.server_names == ["localhost"]  # SNI sent


async def test_an_https_server_with_a_certificate_not_trusted_is_refused(scripted, tmp_path):
    context, _ = self_signed(tmp_path)  # not added to any trust store
    srv = scripted(DATA, lambda first, last, n: srv.partial(first, last), tls=context)
    async with client() as c:
        reader = c.open_reader(srv.url, len(DATA))
        with pytest.raises(DataError, match="CERTIFICATE_VERIFY_FAILED"):
            await reader.read(MiB, 4096)
    assert srv.ranges == []  # no request was sent over it
    assert srv.connections == 1  # and it is not tried again: a certificate does not heal


async def test_a_bug_in_a_fetch_fails_the_read_at_once(scripted):
    class Broken(HttpRangeSource):
        def _check_response(self, head, first, last):
            raise RuntimeError("a bug")

    srv = scripted(DATA, lambda first, last, n: srv.partial(first, last))
    async with client() as c:
        source = Broken(srv.url, len(DATA), c.http_workers, c.http_pool)
        reader = c.reader(source, len(DATA), "broken")
        # the bug's own error, not the read deadline's (DeadlineError) much later
        with pytest.raises(DataError, match="RuntimeError: a bug"):
            await reader.read(MiB, 4096)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/a b",
        "http://127.0.0.1:1/a\x00b",
        "http://127.0.0.1:1/a\r\nX-Injected: 1",
        "http://127.0.0.1:1/caf\u00e9",
        "http://user:pass@127.0.0.1:1/f",
        "ftp://127.0.0.1/f",
        "http://127.0.0.1:99999/f",
    ],
)
async def test_a_location_that_cannot_be_requested_as_it_is_is_refused_at_open(url):
    async with client() as c:
        with pytest.raises(BadLocation):
            c.open_source(url, 10)
