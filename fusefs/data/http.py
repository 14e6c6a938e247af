"""Ranged HTTP GETs: the data path for CDN and OSS locations.

Each range is one `Range:` GET on a warm HTTP/1.1 connection (`http_conn`), run by
the data client's range workers (`http_workers`), so a file has as many ranges in
flight as its reader asks for (demand reads and the prefetch window, under the same
memory budget as a stream) and random reads from several threads overlap. The body
is read into one buffer per range, in growing steps, and each step is handed to the
range as a view of that buffer: what FUSE replies with is the very memory the socket
wrote, never copied in Python.

The answer must be `206` with exactly the `Content-Range` asked for (or `200` with
the whole object when the whole object was asked for), a matching `Content-Length`
and no content coding. A broken transfer resumes from the first missing byte, with
the bounded retries of `StreamLimits` (a try that brought bytes resets the count);
`403`/`404`/`410` mean the URL expired or the file is gone, which the caller answers
by resolving the file again.

HTTP/2 is not spoken here: on the same loopback transfers, several HTTP/1.1
connections read with `readinto` moved bytes several times faster than one
multiplexed HTTP/2 connection through a Python HTTP/2 stack, whose frames are
parsed and copied in Python.
"""

from __future__ import annotations

import ctypes
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

from fusefs.data.bidi import StreamLimits
from fusefs.data.errors import DataError, GoneError, ProtocolError, TransientError
from fusefs.data.http_conn import ConnectionPool, Origin
from fusefs.data.http_workers import RangeWorkers
from fusefs.data.ranges import RangeRead
from fusefs.data.source import SourceCounters

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)", re.ASCII)
FIRST_STEP = 64 << 10  # the first bytes of a range reach a waiting reader early
MAX_STEP = 1 << 20  # later steps: few wake-ups per range, a reader never far behind


@dataclass
class ResponseHead:
    """What a source's checks see of an answer: its status and headers, and the
    headers the request carried."""

    status: int
    headers: Message
    sent: dict[str, str]


class _Cancelled(Exception):
    """The range was abandoned or its source closed while being fetched."""


class RangeFetch:
    """One range of one source: the job the workers run until it is settled."""

    __slots__ = ("_conn", "_lock", "cancelled", "failures", "first_failure", "rr", "source")

    def __init__(self, source: HttpRangeSource, rr: RangeRead):
        self.source = source
        self.rr = rr
        self.cancelled = False
        self.failures = 0
        self.first_failure = 0.0
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    @property
    def demand(self) -> bool:
        return self.rr.pins > 0  # a read is assembling from it

    def step(self) -> float | None:
        return self.source._attempt(self)

    def attach(self, conn: http.client.HTTPConnection | None) -> None:
        with self._lock:
            self._conn = conn
        if conn is not None and self.cancelled:
            self._interrupt(conn)

    def cancel(self) -> None:
        """Stop the fetch; a transfer under way is cut at once (its socket shut down)."""
        self.cancelled = True
        with self._lock:
            conn = self._conn
        if conn is not None:
            self._interrupt(conn)

    @staticmethod
    def _interrupt(conn: http.client.HTTPConnection) -> None:
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


class HttpRangeSource:
    def __init__(
        self,
        url: str,
        size: int,
        workers: RangeWorkers,
        pool: ConnectionPool,
        limits: StreamLimits = StreamLimits(),
    ):
        self.url = url
        self.size = size
        self.limits = limits
        self.counters = SourceCounters()
        self.origin, self._target = Origin.of(url)  # ValueError for a bad URL
        self._workers = workers
        self._pool = pool
        self._route = pool.route(self.origin)  # direct or through a proxy
        self._lock = threading.Lock()
        self._jobs: dict[RangeRead, RangeFetch] = {}
        self._closed = False

    @property
    def progress(self) -> int:
        return self.counters.bytes

    def submit(self, ranges: list[RangeRead]) -> None:
        jobs = []
        with self._lock:
            if self._closed:
                raise DataError(f"{self.url}: closed")
            for rr in ranges:
                job = self._jobs[rr] = RangeFetch(self, rr)
                jobs.append(job)
        for job in jobs:
            self._workers.submit(job)

    def abandon(self, rr: RangeRead) -> None:
        with self._lock:
            job = self._jobs.pop(rr, None)
        if job is not None:
            job.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            jobs, self._jobs = self._jobs, {}
        for rr, job in jobs.items():
            job.cancel()
            rr.fail(DataError(f"{self.url}: closed"))

    # Hooks for a source that speaks a protocol over these GETs (gcs_media.py).
    # They run on a range worker and may block.

    def _request_headers(self) -> dict[str, str]:
        """Headers to send besides Range (credentials, for instance)."""
        return {}

    def _check_response(self, head: ResponseHead, first: int, last: int) -> None:
        """Checks before the generic ones (status, Content-Range); raise DataError to refuse."""

    def _consume(self, job: RangeFetch, response: http.client.HTTPResponse, first: int) -> None:
        """Read the body into the range, from `first` to its end."""
        self._receive(job, response, first, job.rr.feed)  # ProtocolError past the range

    def _receive(
        self,
        job: RangeFetch,
        response: http.client.HTTPResponse,
        first: int,
        on_step: Callable[[int, memoryview], object] | None = None,
    ) -> memoryview:
        """The body, bytes `first` to the range's end, read into one buffer in growing
        steps, each handed to `on_step(offset, piece)` as it arrives; the whole of it is
        returned. `_Cancelled` as soon as the fetch is abandoned between two steps."""
        end = job.rr.end
        view = memoryview(_unfilled_buffer(end - first))  # the views keep the buffer alive
        pos, step = 0, FIRST_STEP
        while pos < len(view):
            if job.cancelled:
                raise _Cancelled
            got = response.readinto(view[pos : pos + step])
            if not got:
                raise TransientError(f"{self.url}: body ended at {first + pos}, before {end}")
            self._count("bytes", got)
            if on_step is not None:
                on_step(first + pos, view[pos : pos + got])
            pos += got
            step = min(step * 2, MAX_STEP)
        return view

    def _count(self, what: str, n: int = 1) -> None:
        """Bump a counter: several workers may fetch ranges of this source at once."""
        with self._lock:
            setattr(self.counters, what, getattr(self.counters, what) + n)

    # The fetch, on a range worker.

    def _attempt(self, job: RangeFetch) -> float | None:
        delay = self._try(job)
        if delay is None:
            with self._lock:
                if self._jobs.get(job.rr) is job:
                    del self._jobs[job.rr]
        return delay

    def _try(self, job: RangeFetch) -> float | None:
        """One GET for what the range still lacks: None when the range is settled (or
        no longer wanted), else the backoff before the next try."""
        rr = job.rr
        before = rr.next_offset
        try:
            if not (job.cancelled or rr.settled):
                self._get(job)
        except _Cancelled:
            pass
        except TransientError as e:
            if job.cancelled:
                return None
            now = time.monotonic()
            if rr.next_offset > before:
                job.failures = 0  # it moved: count breaks without progress only
            if job.failures == 0:
                job.first_failure = now
            job.failures += 1
            if self.limits.gives_up(job.failures, now - job.first_failure):
                log.warning("%s: giving up after %d attempts: %s", self.url, job.failures, e)
                rr.fail(e)
                return None
            self._count("retries")
            delay = self.limits.backoff(job.failures)
            log.info("%s; retrying in %.2fs", e, delay)
            return delay
        except DataError as e:
            rr.fail(e)
        except Exception as e:  # a bug: fail the read now rather than at its deadline
            log.exception("%s: range %d-%d", self.url, rr.offset, rr.end - 1)
            rr.fail(DataError(f"{self.url}: {e.__class__.__name__}: {e}"))
        return None

    def _get(self, job: RangeFetch) -> None:
        rr = job.rr
        first, last = rr.next_offset, rr.end - 1
        headers = {
            **self._request_headers(),
            "Range": f"bytes={first}-{last}",
            "Accept-Encoding": "identity",  # the listed size and hashes are of stored bytes
        }
        conn = None
        try:
            conn, response = self._send(job, headers)
            self._count("requests")
            self._check(ResponseHead(response.status, response.msg, headers), first, last)
            self._consume(job, response, first)
            if response.chunked and response.read(1):
                raise ProtocolError(f"{self.url}: more bytes than bytes {first}-{last}")
            reusable = not response.will_close and response.isclosed()
        except (OSError, http.client.HTTPException) as e:
            if conn is not None:
                conn.close()
            if job.cancelled:
                raise _Cancelled from None
            if isinstance(e, ssl.SSLCertVerificationError):  # asking again cannot help
                raise DataError(f"{self.url}: {e.__class__.__name__}: {e}") from None
            raise TransientError(f"{self.url}: {e.__class__.__name__}: {e}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        finally:
            job.attach(None)
        if reusable:
            self._pool.give_back(self.origin, conn)
        else:
            conn.close()

    def _send(
        self, job: RangeFetch, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The request on a warm connection, or a fresh one when the warm one turns out
        closed by the server before answering (that costs no attempt)."""
        conn, warm = self._pool.take(self.origin)
        job.attach(conn)
        try:
            return conn, self._request(conn, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            conn.close()
            if not warm or job.cancelled:
                raise
        except BaseException:
            conn.close()
            raise
        conn = self._pool.connect(self.origin)
        job.attach(conn)
        try:
            return conn, self._request(conn, headers)
        except BaseException:
            conn.close()
            raise

    def _request(
        self, conn: http.client.HTTPConnection, headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        route = self._route
        conn.putrequest("GET", route.prefix + self._target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        for name, value in route.headers:
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse()

    def _check(self, head: ResponseHead, first: int, last: int) -> None:
        self._check_response(head, first, last)
        status = head.status
        if status in (403, 404, 410):
            raise GoneError(f"{self.url}: HTTP {status}")
        if status >= 500 or status == 429:
            raise TransientError(f"{self.url}: HTTP {status}")
        coding = head.headers.get("content-encoding", "identity").strip().lower()
        if coding != "identity":
            raise DataError(f"{self.url}: body sent with content coding {coding[:40]!r}")
        length = last - first + 1
        if status == 200 and first == 0 and length == self.size:
            pass  # the whole object, as asked for, without Content-Range
        elif status == 206:
            check_content_range(head.headers.get("content-range", ""), first, last, self.size)
        else:
            raise DataError(f"{self.url}: HTTP {status} to a range request")
        declared = head.headers.get_all("content-length") or []
        if any(value.strip() != str(length) for value in declared):
            raise ProtocolError(f"{self.url}: Content-Length {declared!r} for {length} bytes")


def _bytearray_maker() -> Callable[[int], bytearray]:
    """`bytearray(n)` zero-fills the buffer while holding the GIL (0.4 ms per 8 MiB range,
    a quarter of the GIL time of a fast sequential read); the C API makes one with its
    contents left as they are, and every byte a reader may see is written by `readinto`
    first."""
    try:
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except AttributeError:  # not CPython
        return bytearray
    make.restype = ctypes.py_object
    make.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)

    def unfilled(n: int) -> bytearray:
        buf = make(None, n)
        assert isinstance(buf, bytearray) and len(buf) == n
        return buf

    return unfilled


_unfilled_buffer = _bytearray_maker()


def check_content_range(value: str, first: int, last: int, size: int) -> None:
    """A 206's Content-Range must name exactly the bytes asked for, of an object of
    the size listed; ProtocolError otherwise."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        raise ProtocolError(f"bad Content-Range {value[:80]!r}")
    a, b, total = int(match[1]), int(match[2]), match[3]
    if (a, b) != (first, last) or (total != "*" and int(total) != size):
        raise ProtocolError(f"Content-Range {value!r} does not match bytes {first}-{last}/{size}")
