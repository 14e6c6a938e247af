"""One BidiReadObject stream per file, shared by every reader of that file.

Requests go out through a queue that gRPC drains on its own thread; responses
are consumed by one receive thread per stream generation (which also starts the
call, and is reused for the next generation when there are `Receivers`); it checks each
chunk (CRC32C, offset, bounds) and appends it to the `RangeRead` its `read_id`
names. The receive thread never waits on a reader: it only appends and wakes.
Responses arrive as the bytes gRPC received and are decoded by `decode`, so a
chunk reaches the reader as a slice of them, never copied.

A break (transport error, UNAVAILABLE, bad chunk, redirect) is seen by exactly
one thread — the receive thread of that generation — so the stream is reopened
once per break: a new generation resends every pending range from its first
missing byte, with the same read_id, the read handle, the routing token and the
pinned object generation. Consecutive breaks without progress are bounded in
count and time; past that, pending reads fail and the next read starts afresh. A
store that refuses for want of capacity (RESOURCE_EXHAUSTED) is asked again, on the
same stream, with a jittered backoff, for a bounded time of its own: it is busy, not
broken, and another region is only tried after that.

A stream to Cloud Storage itself (`cloud_storage`, the storage gRPC endpoint with its
credentials) reads a few statuses differently: UNAUTHENTICATED is worth one reopen
(the credentials' interceptor has the token replaced; it says `CredentialsRpcError`
when a new token cannot help, which is an `AuthError`, as PERMISSION_DENIED is), and
a refusal of BidiReadObject itself (the codes in `refused`, see
`gcs_media.bidi_refused`) is a `BidiRefusedError`:
the object is to be read with media GETs instead. The object's CRC32C, when pinned by
a listing, must be the one the store's metadata names.

Within a data client the stream holds one of its `StreamSlots` while open: it asks for
one when it starts, waits its turn when none is free, and tells the slots (on the trio
thread) when it turns idle, so that an idle stream can be closed for another or once
idle too long. Without slots it never idles out.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol
from urllib.parse import quote

import grpc
from google.rpc import status_pb2

from fusefs.data.decode import decode_response
from fusefs.data.errors import (
    AuthError,
    BidiRefusedError,
    ChecksumError,
    DataError,
    GoneError,
    OverloadedError,
    ProtocolError,
    RangeError,
    TransientError,
)
from fusefs.data.gcs_auth import CredentialsRpcError
from fusefs.data.location import GrpcObject
from fusefs.data.ranges import RangeRead
from fusefs.data.receivers import Receivers
from fusefs.data.slots import StreamSlots
from fusefs.data.source import SourceCounters, Waker
from fusefs.proto import storage_pb2 as pb

log = logging.getLogger(__name__)

MAX_RANGES_PER_MESSAGE = 100
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_METHOD = "/" + pb.DESCRIPTOR.services_by_name["Storage"].full_name + "/BidiReadObject"
_GONE_CODES = {
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}


@dataclass(frozen=True)
class StreamLimits:
    """How hard a stream tries before its pending reads fail."""

    max_attempts: int = 8  # consecutive reopens without receiving a byte
    retry_window: float = 20.0  # seconds from the first of those breaks
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    idle_timeout: float = 60.0  # close a stream nobody has used for this long
    # RESOURCE_EXHAUSTED: the store is full, not broken; asked again for this long
    busy_window: float = 20.0
    busy_backoff_initial: float = 0.1
    busy_backoff_max: float = 2.0  # before a random factor of 0.5-1.5: refused clients spread

    def gives_up(self, failures: int, since_first: float) -> bool:
        """After `failures` consecutive breaks without progress, the first `since_first`
        seconds ago: whether to fail the pending reads rather than try again."""
        return failures > self.max_attempts or since_first > self.retry_window

    def backoff(self, failures: int) -> float:
        """Seconds to wait before the next try, after `failures` consecutive breaks."""
        return min(self.backoff_initial * 2.0 ** min(failures - 1, 16), self.backoff_max)


class _Call(Protocol):
    """A started BidiReadObject call: the responses (as received bytes) and cancel."""

    def __iter__(self) -> Iterator[bytes]: ...

    def cancel(self) -> bool: ...


_Requests = queue.SimpleQueue["pb.BidiReadObjectRequest | None"]


@dataclass
class _Generation:
    number: int
    requests: _Requests
    metadata: tuple[tuple[str, str], ...]
    call: _Call | None = None  # set by its receive thread, which starts it
    cancelled: bool = False  # by us: closing, idling, or superseded


class _Break(Exception):
    """How a generation ended, decided from its status or from a bad chunk."""

    def __init__(
        self,
        error: DataError | None,
        *,
        redirect: pb.BidiReadObjectRedirectedError | None = None,
        range_errors: dict[int, DataError] | None = None,
    ):
        super().__init__(str(error))
        self.error = error
        self.redirect = redirect
        self.range_errors = range_errors or {}


class BidiStream:
    """Ranged reads of one object over one bidi stream (see module docstring)."""

    def __init__(
        self,
        channel: grpc.Channel,
        target: GrpcObject,
        size: int,
        limits: StreamLimits = StreamLimits(),
        *,
        slots: StreamSlots | None = None,
        wake: Waker | None = None,
        receivers: Receivers | None = None,
        cloud_storage: bool = False,
        refused: frozenset[grpc.StatusCode] = frozenset(),
        crc32c: int | None = None,
    ):
        if (slots is None) != (wake is None):
            raise ValueError("slots are told from the trio thread: give both or neither")
        self.target = target
        self.size = size
        self.limits = limits
        self.counters = SourceCounters()
        self.cloud_storage = cloud_storage
        self._refused = refused
        self._crc32c = crc32c
        self._slots = slots
        self._wake = wake
        self._receivers = receivers
        # Responses stay bytes (no deserializer): `decode_response` reads them in place.
        self._rpc: grpc.StreamStreamMultiCallable[pb.BidiReadObjectRequest, bytes] = (
            channel.stream_stream(  # type: ignore[call-arg]  # (the stubs lack this keyword)
                _METHOD,
                request_serializer=pb.BidiReadObjectRequest.SerializeToString,
                response_deserializer=None,
                _registered_method=True,
            )
        )
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._pending: dict[int, RangeRead] = {}
        self._next_id = 1
        self._generation = 0
        self._active: _Generation | None = None
        self._object_generation = target.generation
        self._read_handle: bytes | None = None
        self._routing_token = target.routing_token
        self._failures = 0
        self._first_failure = 0.0
        self._refusals = 0  # RESOURCE_EXHAUSTED in a row
        self._first_refusal = 0.0
        self._broken = False  # the last generation broke with ranges outstanding

    # -- the reader side -------------------------------------------------------

    def submit(self, ranges: list[RangeRead]) -> None:
        """Send these ranges; opens the stream (again) if it is not open: at once when it
        has or gets a slot, else when its turn comes. Call on the trio thread when the
        stream has slots."""
        with self._lock:
            if self._closing.is_set():
                raise DataError(f"{self.target.object}: stream closed")
            batch = []
            for rr in ranges:
                read_id = self._next_id
                self._next_id += 1
                self._pending[read_id] = rr
                batch.append((read_id, rr))
            if self._active is not None:
                self._send_locked(self._active, batch)
            elif self._slots is None:
                self._start_locked()
            if self._slots is None or self._active is not None:
                if self._slots is not None:
                    self._slots.busy(self)
                return
        if self._slots.acquire(self):
            self.start_granted()

    def abandon(self, rr: RangeRead) -> None:
        """A reader gave up on `rr`: stop resending it after breaks."""
        with self._lock:
            for read_id, pending in list(self._pending.items()):
                if pending is rr:
                    del self._pending[read_id]
        self._settle()

    def close(self) -> None:
        with self._lock:
            self._closing.set()
            self._stop_locked()
            pending, self._pending = self._pending, {}
        if self._slots is not None:
            self._slots.release(self)
        for rr in pending.values():
            rr.fail(DataError(f"{self.target.object}: stream closed"))

    # -- the slots' side (trio thread) -----------------------------------------

    def start_granted(self) -> bool:
        with self._lock:
            if self._closing.is_set() or (self._active is None and not self._pending):
                return False
            if self._active is None:
                self._start_locked()
        if self._slots is not None:
            self._slots.busy(self)
        return True

    def stop_idle(self) -> bool:
        with self._lock:
            if self._pending:
                return False
            if self._active is not None:
                log.debug("%s: closing idle stream", self.target.object)
                self._stop_locked()
            return True

    def _settle(self) -> None:
        """After ranges finished or failed: tell the slots whether this stream is idle
        (open, nothing outstanding) or done with its slot (closed, nothing outstanding)."""
        slots = self._slots
        if slots is None:
            return
        with self._lock:
            if self._closing.is_set() or self._pending:
                return
            active = self._active is not None
        if active:
            slots.idle(self)
        else:
            slots.release(self)

    def _notify(self) -> None:
        """From the receive thread: have `_settle` run on the trio thread."""
        if self._wake is not None:
            self._wake(self._settle)

    def confirm(self, generation: int) -> bool:
        """A stream opened on a guess (generation 0) is told the generation the probe
        found: True when it reads that generation, or has not been told any by the
        store yet (then it refuses any other); False when it reads another one."""
        with self._lock:
            if self._object_generation not in (0, generation):
                return False
            self._object_generation = generation
            return True

    @property
    def open(self) -> bool:
        return self._active is not None

    @property
    def progress(self) -> int:
        return self.counters.bytes

    # -- generations -----------------------------------------------------------

    def _start_locked(self) -> None:
        self._generation += 1
        requests: _Requests = queue.SimpleQueue()
        spec = pb.BidiReadObjectSpec(
            bucket=self.target.bucket_path,
            object=self.target.object,
            generation=self._object_generation,
        )
        if self._read_handle:
            spec.read_handle.handle = self._read_handle
        if self._routing_token:
            spec.routing_token = self._routing_token
        items = list(self._pending.items())
        first, rest = items[:MAX_RANGES_PER_MESSAGE], items[MAX_RANGES_PER_MESSAGE:]
        requests.put(
            pb.BidiReadObjectRequest(
                read_object_spec=spec, read_ranges=[_range_message(i, rr) for i, rr in first]
            )
        )
        params = "bucket=" + quote(self.target.bucket_path, safe="")
        if self._routing_token:
            params += "&routing_token=" + quote(self._routing_token, safe="")
        gen = _Generation(self._generation, requests, (("x-goog-request-params", params),))
        self._send_locked(gen, rest)
        self._active = gen
        self.counters.opens += 1
        if self._broken:
            self.counters.reopens += 1
            self._broken = False
        # The call is started by the thread that reads it: starting one (and gRPC's own
        # request thread) blocks, and the caller is often the FUSE loop.
        if self._receivers is not None:
            self._receivers.run(partial(self._receive, gen))
        else:
            threading.Thread(
                target=self._receive, args=(gen,), daemon=True, name=f"bidi-recv-{gen.number}"
            ).start()

    @staticmethod
    def _send_locked(gen: _Generation, batch: list[tuple[int, RangeRead]]) -> None:
        for i in range(0, len(batch), MAX_RANGES_PER_MESSAGE):
            gen.requests.put(
                pb.BidiReadObjectRequest(
                    read_ranges=[
                        _range_message(read_id, rr)
                        for read_id, rr in batch[i : i + MAX_RANGES_PER_MESSAGE]
                    ]
                )
            )

    def _stop_locked(self) -> None:
        gen, self._active = self._active, None
        if gen is not None:
            gen.cancelled = True
            gen.requests.put(None)
            if gen.call is None:
                pass  # its receive thread cancels it as soon as it has started it
            elif self._receivers is not None:
                # Cancelling waits for the call's lock, which its reader holds most of
                # the time: ~0.4 ms of the FUSE loop per stream closed, unless done here.
                self._receivers.run(gen.call.cancel)
            else:
                gen.call.cancel()

    # -- the receive thread ----------------------------------------------------

    def _receive(self, gen: _Generation) -> None:
        """The receive thread of one generation: starts its call, reads it to the end."""
        call = self._rpc(_drain(gen.requests), metadata=gen.metadata)
        with self._lock:
            gen.call = call
            if gen.cancelled:
                call.cancel()  # stopped before it started
        try:
            for response in call:
                self._on_response(response)
            outcome = _Break(None)
        except grpc.RpcError as e:
            outcome = _classify(e, self._refused if self.cloud_storage else None)
        except ProtocolError as e:
            self.counters.bad_chunks += 1
            call.cancel()
            outcome = _Break(e)
        except _Break as e:
            call.cancel()
            outcome = e
        finally:
            gen.requests.put(None)  # lets gRPC's request thread finish
        if not gen.cancelled:
            self._after_break(gen, outcome)

    def _on_response(self, message: bytes) -> None:
        response = decode_response(message)
        self._refusals = 0  # the store took the stream: no longer refused
        if response.metadata is not None:
            meta = response.metadata
            # Other bytes than the pinned listing promised: never serve them.
            if meta.size != self.size:
                raise _Break(
                    GoneError(
                        f"{self.target.object}: store has {meta.size} bytes, "
                        f"the pinned listing says {self.size}"
                    )
                )
            with self._lock:  # `confirm` pins the generation from the trio thread
                if self._object_generation and meta.generation != self._object_generation:
                    raise _Break(
                        GoneError(
                            f"{self.target.object}: generation {meta.generation}, "
                            f"pinned {self._object_generation}"
                        )
                    )
                self._object_generation = meta.generation
            if (
                self._crc32c is not None
                and meta.HasField("checksums")
                and meta.checksums.HasField("crc32c")
                and meta.checksums.crc32c != self._crc32c
            ):
                raise _Break(
                    GoneError(f"{self.target.object}: its CRC32C is not the pinned one (changed)")
                )
        if response.read_handle is not None:
            self._read_handle = response.read_handle.handle
        for data in response.ranges:
            read_id = data.read_id
            self.counters.bytes += data.size  # liveness, even for data nobody waits on
            rr = self._pending.get(read_id)
            if rr is None:
                continue  # finished or abandoned: trailing data is ignored
            if data.crc32c is None:
                raise ProtocolError(f"{self.target.object}: chunk without CRC32C")
            if data.content_crc32c() != data.crc32c:
                raise ChecksumError(f"{self.target.object}: CRC32C mismatch at {data.read_offset}")
            complete = rr.feed(data.read_offset, data.content)
            if data.range_end and not complete:
                raise ProtocolError(
                    f"{self.target.object}: range {read_id} ended at "
                    f"{rr.next_offset}, before {rr.end}"
                )
            if data.size:
                # Bytes received: the breaks before them are forgiven. Only bytes: a
                # server that ends ranges early without any would otherwise be reopened
                # forever, every break looking like the first.
                self._failures = 0
            if complete:
                with self._lock:
                    self._pending.pop(read_id, None)
                    idle = not self._pending
                if idle:
                    self._notify()

    def _after_break(self, gen: _Generation, outcome: _Break) -> None:
        delay = self._retry_delay(gen, outcome)
        if delay is None:
            self._notify()  # closed with nothing outstanding: its slot is free
            return
        if self._closing.wait(delay):
            return
        with self._lock:
            if self._active is None and self._pending and not self._closing.is_set():
                self._start_locked()
                return
        self._notify()

    def _retry_delay(self, gen: _Generation, outcome: _Break) -> float | None:
        """Seconds until the stream reopens after `gen` ended, or None when it stays closed
        (nothing outstanding, or every outstanding range failed)."""
        with self._lock:
            if self._active is not gen:
                return None
            self._active = None
            delay = self._next_try_locked(outcome)
            # Whoever starts the next generation (this thread after the delay, or a read
            # submitted meanwhile) counts it as a reopen.
            self._broken = delay is not None
            return delay

    def _next_try_locked(self, outcome: _Break) -> float | None:
        """What follows a broken generation (the lock held): the delay before the next,
        or None when the stream stays closed (nothing outstanding, or all failed)."""
        for read_id, error in outcome.range_errors.items():
            rr = self._pending.pop(read_id, None)
            if rr is not None:
                rr.fail(error)
        if not self._pending:
            return None
        error = outcome.error or TransientError(
            f"{self.target.object}: stream ended with ranges outstanding"
        )
        if not isinstance(error, TransientError):
            self._fail_all_locked(error)
            return None
        now = time.monotonic()
        if isinstance(error, OverloadedError):
            self.counters.refusals += 1
            if self._refusals == 0:
                self._first_refusal = now
            self._refusals += 1
            if now - self._first_refusal > self.limits.busy_window:
                log.warning(
                    "%s: still refused after %.0fs: %s",
                    self.target.object,
                    now - self._first_refusal,
                    error,
                )
                self._refusals = 0
                self._fail_all_locked(error)
                return None
            backoff = self.limits.busy_backoff_initial * 2.0 ** min(self._refusals - 1, 16)
            delay = min(backoff, self.limits.busy_backoff_max) * random.uniform(0.5, 1.5)
            log.info("%s: %s; asking again in %.2fs", self.target.object, error, delay)
            return delay
        if self._failures == 0:
            self._first_failure = now
        self._failures += 1
        if self.limits.gives_up(self._failures, now - self._first_failure):
            log.warning(
                "%s: giving up after %d attempts: %s", self.target.object, self._failures, error
            )
            self._failures = 0
            self._fail_all_locked(error)
            return None
        if outcome.redirect is not None:
            self.counters.redirects += 1
            if outcome.redirect.HasField("routing_token"):
                self._routing_token = outcome.redirect.routing_token
            if outcome.redirect.read_handle.handle:
                self._read_handle = outcome.redirect.read_handle.handle
            delay = 0.0
        else:
            delay = self.limits.backoff(self._failures)
        log.info("%s: stream broke (%s); reopening in %.2fs", self.target.object, error, delay)
        return delay

    def _fail_all_locked(self, error: DataError) -> None:
        pending, self._pending = self._pending, {}
        for rr in pending.values():
            rr.fail(error)


def _range_message(read_id: int, rr: RangeRead) -> pb.ReadRange:
    return pb.ReadRange(read_offset=rr.next_offset, read_length=rr.remaining, read_id=read_id)


def _drain(requests: _Requests) -> Iterator[pb.BidiReadObjectRequest]:
    while (message := requests.get()) is not None:
        yield message


def _classify(e: grpc.RpcError, cloud_storage: frozenset[grpc.StatusCode] | None = None) -> _Break:
    """How a call's status ends a generation; `cloud_storage`: the codes that mean bidi
    reads are refused, for a stream to Cloud Storage itself (None: any other store)."""
    code = e.code()
    message = f"{code.name}: {e.details()}"
    if cloud_storage is not None:
        if isinstance(e, CredentialsRpcError) or code == grpc.StatusCode.PERMISSION_DENIED:
            return _Break(AuthError(e.details() or message))
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return _Break(TransientError(message))  # a new token is on its way
        if code in cloud_storage:
            return _Break(BidiRefusedError(message))
    status = _status_details(e)
    redirect: pb.BidiReadObjectRedirectedError | None = None
    range_errors: dict[int, DataError] = {}
    for detail in status.details if status else ():
        if detail.Is(pb.BidiReadObjectRedirectedError.DESCRIPTOR):
            redirect = pb.BidiReadObjectRedirectedError()
            detail.Unpack(redirect)
            message += " (redirected)"
        elif detail.Is(pb.BidiReadObjectError.DESCRIPTOR):
            errors = pb.BidiReadObjectError()
            detail.Unpack(errors)
            for item in errors.read_range_errors:
                range_errors[item.read_id] = RangeError(
                    f"read {item.read_id}: {item.status.message or message}"
                )
    if redirect is not None:
        return _Break(TransientError(message), redirect=redirect)
    if range_errors:
        return _Break(TransientError(message), range_errors=range_errors)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _Break(OverloadedError(message))
    if code in _GONE_CODES:
        return _Break(GoneError(message))
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    ):
        return _Break(DataError(message))
    return _Break(TransientError(message))


def _status_details(e: grpc.RpcError) -> status_pb2.Status | None:
    for item in e.trailing_metadata() or ():  # (key, value) named tuples
        if item.key == _STATUS_DETAILS_KEY and isinstance(item.value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(item.value)
            except Exception:  # a garbled trailer must not mask the status code
                return None
            return status
    return None
