"""`google.storage.v2.Storage/BidiReadObject` on grpc.aio, for each region of the store.

Threads: the servers of all regions run on one asyncio loop (`GrpcLoop`, thread
`grpc-aio`); a chunk is read on the loop while it is the only one in flight, else
in a pool of `IO_THREADS` (`grpc-io`) so that no loop iteration waits on the disk
for long; bearer tokens that need an introspection request are checked in a pool
of `AUTH_THREADS` (`grpc-auth`). There is no thread per stream.

Each stream serves one object. Its handler reads and validates the first message
(the object and its first ranges), opens the file below ROOT without following any
link and sends the metadata response. A reader task then reads later messages,
validates every field, and adds their ranges; while a stream has `max_ranges`
ranges outstanding it stops reading, so a client that floods ranges is held back by
HTTP/2 flow control instead of by our memory. The writer serves the active ranges
round-robin, one chunk at a time (pread, CRC32C, wire bytes), and awaits each
`context.write`, which returns once the transport has taken the message within the
client's flow-control window: a consumer that does not read stops being fed.

Chunk sizes follow a slow start: `SMALL_CHUNK` first, ×4 after each write that
completes within `SLOW_WRITE`, up to `stream_buffer`; back to `SMALL_CHUNK` after a
slow write, and while the bytes queued by all streams exceed `send_memory`. Memory
held by queued chunks is therefore at most `Limits.queued_bound()` (×2: grpc core
copies a message while it waits), and it is returned when streams end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import crc32c
import grpc
import grpc.aio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from fusefs.data.location import BUCKET_PREFIX
from fusefs.hub.client import split_key
from fusefs.proto import storage_pb2 as pb
from fusefs.server.bearer import TokenChecker, Verdict
from fusefs.server.faults import Fault, FaultPlan
from fusefs.server.limits import (
    FIRST_MESSAGE_TIMEOUT,
    MAX_FIELD_BYTES,
    MAX_NAME_BYTES,
    MAX_RANGES_PER_MESSAGE,
    SMALL_CHUNK,
    Limits,
)
from fusefs.server.names import path_error, text_error
from fusefs.server.stats import Stats
from fusefs.server.store import Store, StoredFile
from fusefs.server.topology import Region
from fusefs.server.wire import data_response

log = logging.getLogger(__name__)

IO_THREADS = 2  # more contend for the GIL and two cores (measured: worse latency)
AUTH_THREADS = 4
IO_INLINE_MAX = 256 << 10  # smaller chunks are always read on the loop
SLOW_WRITE = 0.2  # seconds: a write slower than this means the client is not keeping up

Context = grpc.aio.ServicerContext[object, bytes]


class _Abort(Exception):
    """Ends a stream with a status (and details for the status's trailer)."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()):
        super().__init__(message)
        self.code, self.message, self.details = code, message, list(details)


def _range_error(read_id: int, message: str) -> _Abort:
    err = pb.BidiReadObjectError(
        read_range_errors=[
            pb.ReadRangeError(
                read_id=read_id,
                status=status_pb2.Status(code=code_pb2.OUT_OF_RANGE, message=message),
            )
        ]
    )
    return _Abort(grpc.StatusCode.OUT_OF_RANGE, message, [err])


def _invalid(message: str) -> _Abort:
    return _Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_request(raw: object) -> pb.BidiReadObjectRequest:
    """One request message; INVALID_ARGUMENT when it is not a BidiReadObjectRequest."""
    if not isinstance(raw, bytes):
        raise _invalid("request is not a message")
    try:
        return pb.BidiReadObjectRequest.FromString(raw)
    except (DecodeError, ValueError, RuntimeError):
        raise _invalid("request is not a valid BidiReadObjectRequest") from None


def check_spec(spec: pb.BidiReadObjectSpec) -> None:
    """Every field of the object spec, by the API's rules; INVALID_ARGUMENT if not."""
    if why := text_error(spec.bucket, "bucket", MAX_FIELD_BYTES):
        raise _invalid(why)
    name = spec.object
    if not name:
        raise _invalid("read_object_spec.object is empty")
    if why := text_error(name, "object name", MAX_NAME_BYTES):
        raise _invalid(why)
    for number in ("generation", "if_generation_match", "if_generation_not_match"):
        if getattr(spec, number) < 0:
            raise _invalid(f"read_object_spec.{number} is negative")
    if spec.HasField("read_handle") and len(spec.read_handle.handle) > MAX_FIELD_BYTES:
        raise _invalid(f"read_handle longer than {MAX_FIELD_BYTES} bytes")
    if why := text_error(spec.routing_token, "routing_token", MAX_FIELD_BYTES):
        raise _invalid(why)


@dataclass(slots=True)
class _Range:
    read_id: int
    offset: int  # next byte to send
    end: int


def new_ranges(
    ranges: Sequence[pb.ReadRange], size: int, outstanding: set[int] | frozenset[int]
) -> list[_Range]:
    """The ranges of one message, checked against the object and each other: at most
    MAX_RANGES_PER_MESSAGE, read_ids unique among outstanding ones, lengths not
    negative, offsets (negative: from the end) inside the object."""
    if len(ranges) > MAX_RANGES_PER_MESSAGE:
        raise _invalid(f"{len(ranges)} ranges in one message; at most {MAX_RANGES_PER_MESSAGE}")
    new: list[_Range] = []
    ids: set[int] = set()
    for r in ranges:
        if r.read_id in outstanding or r.read_id in ids:
            raise _invalid(f"read_id {r.read_id} is already outstanding")
        ids.add(r.read_id)
        offset = r.read_offset if r.read_offset >= 0 else size + r.read_offset
        if (
            r.read_length < 0
            or offset < 0
            or offset > size
            or (r.read_length and offset + r.read_length > size)
        ):
            raise _range_error(
                r.read_id,
                f"range {r.read_offset}+{r.read_length} is outside an object of {size} bytes",
            )
        end = offset + r.read_length if r.read_length else size
        new.append(_Range(r.read_id, offset, end))
    return new


def _build_chunk(fd: int, n: int, offset: int, read_id: int, last: bool, corrupt: bool) -> bytes:
    """pread + CRC32C + wire bytes (each releases the GIL for a large chunk)."""
    data = os.pread(fd, n, offset) if n else b""
    if len(data) != n:
        raise _Abort(grpc.StatusCode.DATA_LOSS, "the object shrank while being read")
    crc = crc32c.crc32c(data)
    if corrupt:
        crc ^= 0x5A5A5A5A
    return data_response(data, crc, offset, read_id, last)


class SendBudget:
    """Bytes of response messages handed to grpc and not yet taken by the transport,
    over all streams. Used only on the loop's thread; read elsewhere for stats."""

    def __init__(self, soft_limit: int):
        self.soft_limit = soft_limit
        self.in_flight = 0
        self.peak = 0
        self.released = 0  # since the allocator last gave memory back

    def chunk(self, want: int) -> int:
        return want if self.in_flight < self.soft_limit else min(want, SMALL_CHUNK)

    def take(self, n: int) -> None:
        self.in_flight += n
        self.peak = max(self.peak, self.in_flight)

    def give(self, n: int) -> None:
        self.in_flight -= n
        self.released += n


@dataclass
class DataPlane:
    """What the streams of every region share: caps, the send budget, the pools, the
    fault plan and counters. Lives on the `grpc-aio` loop."""

    store: Store
    stats: Stats
    limits: Limits
    faults: FaultPlan | None = None
    bearer: TokenChecker | None = None
    budget: SendBudget = field(init=False)
    io: ThreadPoolExecutor = field(init=False)
    auth: ThreadPoolExecutor | None = field(init=False, default=None)
    open_streams: int = 0
    idle: asyncio.Event = field(init=False, default_factory=asyncio.Event)  # no stream open

    def __post_init__(self) -> None:
        self.budget = SendBudget(self.limits.send_memory)
        self.io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="grpc-io")
        if self.bearer is not None and self.bearer.blocking:
            self.auth = ThreadPoolExecutor(AUTH_THREADS, thread_name_prefix="grpc-auth")

    def close(self) -> None:
        self.io.shutdown(wait=False, cancel_futures=True)
        if self.auth is not None:
            self.auth.shutdown(wait=False, cancel_futures=True)


class _Stream:
    """One stream's ranges: added by its reader task, served by its writer."""

    __slots__ = ("active", "cwnd", "error", "half_closed", "ids", "io", "room", "size", "wake")

    def __init__(self, size: int):
        self.size = size
        self.active: deque[_Range] = deque()
        self.ids: set[int] = set()  # read_ids of outstanding ranges
        self.half_closed = False
        self.error: _Abort | None = None
        self.wake = asyncio.Event()  # a range was added, or the request side ended
        self.room = asyncio.Event()  # a range finished
        self.cwnd = SMALL_CHUNK  # the next chunk's size (slow start)
        self.io: Future[bytes] | None = None  # a pool read for this stream, if running

    def add(self, ranges: list[_Range]) -> None:
        for rng in ranges:
            self.ids.add(rng.read_id)
            self.active.append(rng)
        self.wake.set()

    def end(self, error: _Abort | None = None) -> None:
        self.half_closed = True
        self.error = self.error or error
        self.wake.set()

    async def next(self) -> _Range | None:
        """The range to serve a chunk of next; None when the stream is done."""
        while True:
            if self.error is not None:
                raise self.error
            if self.active:
                return self.active.popleft()
            if self.half_closed:
                return None
            self.wake.clear()
            await self.wake.wait()

    def wrote(self, n: int, seconds: float, largest: int) -> None:
        if seconds >= SLOW_WRITE:
            self.cwnd = SMALL_CHUNK
        elif n >= self.cwnd:
            self.cwnd = min(self.cwnd * 4, largest)


def _close_when_idle(fd: int, stream: _Stream | None) -> None:
    """Close a stream's descriptor, but never under a pool read of it: cancelling the
    awaiting task does not stop the thread, and a reused descriptor number would have
    it read another file."""
    job = stream.io if stream is not None else None
    if job is not None and not job.done():
        job.add_done_callback(lambda _: os.close(fd))
    else:
        os.close(fd)


def method_handlers(service: BidiReadService) -> grpc.GenericRpcHandler:
    """Requests arrive as bytes (parsed and checked by the handler, so a malformed one is
    INVALID_ARGUMENT); responses leave already serialized (see wire.py)."""
    return grpc.method_handlers_generic_handler(
        "google.storage.v2.Storage",
        {
            "BidiReadObject": grpc.stream_stream_rpc_method_handler(
                service.BidiReadObject, request_deserializer=None, response_serializer=None
            ),
        },
    )


class BidiReadService:
    def __init__(self, region: Region, plane: DataPlane):
        self.region = region
        self.bucket = BUCKET_PREFIX + region.name
        self.plane = plane

    def _fault(self, kind: str) -> Fault | None:
        faults = self.plane.faults
        return faults.take(kind, self.region.name) if faults else None

    async def BidiReadObject(self, request_iterator: object, context: Context) -> None:
        plane, region = self.plane, self.region.name
        if plane.open_streams >= plane.limits.max_streams:
            plane.stats.add("counts", "streams_refused")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {plane.limits.max_streams} streams open at once",
            )
        plane.open_streams += 1
        plane.idle.clear()
        plane.stats.stream_begins(region)
        plane.stats.add("streams_opened", region)
        stream: _Stream | None = None
        reader: asyncio.Task[None] | None = None
        fd = -1
        try:
            await self._authorize(context)
            try:
                raw = await asyncio.wait_for(context.read(), FIRST_MESSAGE_TIMEOUT)
            except TimeoutError:
                raise _Abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no read_object_spec within {FIRST_MESSAGE_TIMEOUT:g} s",
                ) from None
            if raw is grpc.aio.EOF:
                return
            first = parse_request(raw)
            if not first.HasField("read_object_spec"):
                raise _invalid("the first message needs read_object_spec")
            spec = first.read_object_spec
            check_spec(spec)
            self._injected_open_faults()
            fd, f = self._open(spec)
            stream = _Stream(f.size)
            stream.add(new_ranges(first.read_ranges, f.size, frozenset()))
            plane.stats.add("ranges", region, len(first.read_ranges))
            reader = asyncio.create_task(self._read_requests(context, stream))
            await context.write(self._metadata(spec, f))
            await self._serve(context, fd, f, stream)
        except _Abort as e:
            await _end_with(context, e)
        except grpc.aio.InternalError:
            # The client went away while a write was pending. Returning quietly keeps
            # grpc from logging a traceback for every cancelled stream.
            pass
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("BidiReadObject in region %s failed", region)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
        finally:
            if reader is not None:
                reader.cancel()
            if fd >= 0:
                _close_when_idle(fd, stream)
            plane.open_streams -= 1
            if not plane.open_streams:
                plane.idle.set()
            plane.stats.stream_ends(region)

    async def _authorize(self, context: Context) -> None:
        bearer = self.plane.bearer
        if bearer is None:
            return
        metadata = tuple(context.invocation_metadata() or ())
        if self.plane.auth is not None:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(self.plane.auth, bearer.check, metadata)
        else:
            verdict = bearer.check(metadata)
        if verdict is Verdict.UNAVAILABLE:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "token introspection is unavailable")
        if verdict is not Verdict.OK:
            self.plane.stats.add("counts", "grpc_refused")
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    def _injected_open_faults(self) -> None:
        if refused := self._fault("bidi_refused"):
            code = grpc.StatusCode.UNIMPLEMENTED
            if refused.params.get("code") == "FAILED_PRECONDITION":
                code = grpc.StatusCode.FAILED_PRECONDITION
            raise _Abort(code, "injected: bidi reads are not served for this bucket")
        if self._fault("unavailable"):
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "injected: unavailable")
        if redirect := self._fault("redirect"):
            raise _Abort(
                grpc.StatusCode.ABORTED,
                "injected: redirected",
                [
                    pb.BidiReadObjectRedirectedError(
                        read_handle=pb.BidiReadHandle(handle=b"redirected"),
                        routing_token=str(redirect.params.get("routing_token", "token")),
                    )
                ],
            )

    def _open(self, spec: pb.BidiReadObjectSpec) -> tuple[int, StoredFile]:
        """(descriptor, file) of the object the spec names; NOT_FOUND, FAILED_PRECONDITION
        or INVALID_ARGUMENT otherwise."""
        if spec.bucket != self.bucket:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no bucket {spec.bucket!r} here")
        missing = _Abort(grpc.StatusCode.NOT_FOUND, f"no object {spec.object!r} in {self.bucket}")
        named = split_key(spec.object)  # <owner>/<name>/<path>, datasets under _datasets/
        if named is None:
            raise missing
        repo, path = named
        if why := path_error(path):
            raise _invalid(f"object name: {why}")
        store = self.plane.store
        if not self.region.holds(str(repo)):
            raise missing
        opened = store.open_file(repo, path)
        if opened is None:
            raise missing
        fd, f = opened
        try:
            if spec.generation and spec.generation != f.generation:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"{spec.object!r} has no generation {spec.generation}",
                )
            if spec.HasField("if_generation_match") and spec.if_generation_match != f.generation:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "if_generation_match failed")
            if (
                spec.HasField("if_generation_not_match")
                and spec.if_generation_not_match == f.generation
            ):
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "if_generation_not_match failed")
        except _Abort:
            os.close(fd)
            raise
        return fd, f

    def _metadata(self, spec: pb.BidiReadObjectSpec, f: StoredFile) -> bytes:
        return pb.BidiReadObjectResponse(
            metadata=pb.Object(
                name=spec.object,
                bucket=self.bucket,
                generation=f.generation,
                metageneration=1,
                size=f.size,
            ),
            read_handle=pb.BidiReadHandle(handle=f"{f.path}@{f.generation}".encode()),
        ).SerializeToString()

    async def _read_requests(self, context: Context, stream: _Stream) -> None:
        """Later messages: more ranges. Stops reading while the stream has as many ranges
        outstanding as it may (the client then waits in HTTP/2 flow control)."""
        cap = max(self.plane.limits.max_ranges - MAX_RANGES_PER_MESSAGE, 0)
        try:
            while True:
                while len(stream.ids) > cap:
                    stream.room.clear()
                    await stream.room.wait()
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    break
                request = parse_request(raw)
                if request.HasField("read_object_spec"):
                    raise _invalid("one object per stream: read_object_spec in a later message")
                stream.add(new_ranges(request.read_ranges, stream.size, stream.ids))
                self.plane.stats.add("ranges", self.region.name, len(request.read_ranges))
        except _Abort as e:
            stream.end(e)
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # the RPC ended under us: nothing more will come
            pass
        stream.end()

    async def _serve(self, context: Context, fd: int, f: StoredFile, stream: _Stream) -> None:
        loop = asyncio.get_running_loop()
        plane, region = self.plane, self.region.name
        budget, largest = plane.budget, plane.limits.stream_buffer
        sent, broken_from = 0, 0
        breaking: Fault | None = None
        while (rng := await stream.next()) is not None:
            if context.done():
                return  # cancelled under us: take no fault meant for a live stream
            n = min(budget.chunk(stream.cwnd), rng.end - rng.offset)
            if breaking is None and (breaking := self._fault("break")) is not None:
                broken_from = sent  # a break hits live streams too, counted from now
            if breaking is not None:
                allowance = int(breaking.params.get("after_bytes", 0)) - (sent - broken_from)
                if allowance <= 0:
                    raise _Abort(grpc.StatusCode.UNAVAILABLE, "injected: stream broken")
                n = min(n, allowance)
            corrupt = self._fault("corrupt") is not None
            if delay := self._fault("delay"):
                await asyncio.sleep(float(delay.params.get("ms", 100)) / 1000)
            offset = rng.offset
            last = offset + n == rng.end
            budget.take(n)
            try:
                message = await self._chunk(fd, stream, n, offset, rng.read_id, last, corrupt)
                rng.offset += n
                if last:
                    stream.ids.discard(rng.read_id)
                    stream.room.set()
                else:
                    stream.active.append(rng)
                began = loop.time()
                await context.write(message)
                del message
            finally:
                budget.give(n)
            stream.wrote(n, loop.time() - began, largest)
            sent += n
            plane.stats.add("grpc_bytes", region, n)

    async def _chunk(
        self, fd: int, stream: _Stream, n: int, offset: int, read_id: int, last: bool, bad: bool
    ) -> bytes:
        budget = self.plane.budget
        if n < IO_INLINE_MAX or budget.in_flight <= n:
            return _build_chunk(fd, n, offset, read_id, last, bad)  # alone: no hand-off
        stream.io = self.plane.io.submit(_build_chunk, fd, n, offset, read_id, last, bad)
        message = await asyncio.wrap_future(stream.io)
        stream.io = None
        return message


async def _end_with(context: Context, e: _Abort) -> None:
    trailer: list[tuple[str, str | bytes]] = []
    if e.details:
        status = status_pb2.Status(code=e.code.value[0], message=e.message)
        for detail in e.details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        trailer.append(("grpc-status-details-bin", status.SerializeToString()))
    await context.abort(e.code, e.message, tuple(trailer))
