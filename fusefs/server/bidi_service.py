"""`google.storage.v2.Storage/BidiReadObject` for one region of the store.

Each stream serves one object. A thread drains the client's request messages
into the stream's set of active ranges; the handler yields chunks round-robin
across those ranges, so ranges interleave and none waits for another to finish.
Chunks are read with pread (never a whole file) and carry their CRC32C.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c
import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from fusefs.data.location import BUCKET_PREFIX
from fusefs.hub.client import split_key
from fusefs.proto import storage_pb2 as pb
from fusefs.server.faults import Fault, FaultPlan
from fusefs.server.stats import Stats
from fusefs.server.store import Store, StoredFile
from fusefs.server.topology import Region
from fusefs.server.wire import data_response

log = logging.getLogger(__name__)

MAX_RANGES_PER_MESSAGE = 100
DEFAULT_CHUNK = 2 << 20


class _Abort(Exception):
    def __init__(
        self, code: grpc.StatusCode, message: str, details: list[Message] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or []


@dataclass
class _Range:
    read_id: int
    offset: int
    end: int


class _Ranges:
    """The active ranges of one stream, fed by the request thread."""

    def __init__(self, size: int):
        self.size = size
        self.active: deque[_Range] = deque()
        self.ids: set[int] = set()
        self.half_closed = False
        self.done = False  # RPC over (cancelled or finished)
        self.error: _Abort | None = None
        self.cond = threading.Condition()

    def add(self, ranges: Sequence[pb.ReadRange]) -> None:
        if len(ranges) > MAX_RANGES_PER_MESSAGE:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{len(ranges)} ranges in one message; at most {MAX_RANGES_PER_MESSAGE}",
            )
        new: list[_Range] = []
        for r in ranges:
            if r.read_id in self.ids or any(n.read_id == r.read_id for n in new):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"read_id {r.read_id} is already outstanding"
                )
            offset = r.read_offset if r.read_offset >= 0 else self.size + r.read_offset
            if (
                r.read_length < 0
                or offset < 0
                or offset > self.size
                or (r.read_length and offset + r.read_length > self.size)
            ):
                raise _range_error(
                    r.read_id,
                    f"range {r.read_offset}+{r.read_length} is outside "
                    f"an object of {self.size} bytes",
                )
            end = offset + r.read_length if r.read_length else self.size
            new.append(_Range(r.read_id, offset, end))
        with self.cond:
            for rng in new:
                self.ids.add(rng.read_id)
                self.active.append(rng)
            self.cond.notify()

    def fail(self, error: _Abort) -> None:
        with self.cond:
            self.error = error
            self.cond.notify()

    def finish(self) -> None:
        with self.cond:
            self.done = True
            self.cond.notify()

    def next(self) -> _Range | None:
        """The range to serve a chunk of next; None when the stream should end."""
        with self.cond:
            while not self.active and not self.error and not self.done and not self.half_closed:
                self.cond.wait()
            if self.error:
                raise self.error
            if not self.active or self.done:
                return None
            rng = self.active.popleft()
            return rng

    def put_back(self, rng: _Range) -> None:
        with self.cond:
            self.active.append(rng)

    def retire(self, rng: _Range) -> None:
        with self.cond:
            self.ids.discard(rng.read_id)


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


def method_handlers(service: BidiReadService) -> grpc.GenericRpcHandler:
    """Register the service; responses leave it already serialized (see wire.py)."""
    return grpc.method_handlers_generic_handler(
        "google.storage.v2.Storage",
        {
            "BidiReadObject": grpc.stream_stream_rpc_method_handler(
                service.BidiReadObject,
                request_deserializer=pb.BidiReadObjectRequest.FromString,
                response_serializer=None,
            ),
        },
    )


class BidiReadService:
    def __init__(
        self,
        region: Region,
        store: Store,
        stats: Stats,
        faults: FaultPlan | None,
        chunk_size: int = DEFAULT_CHUNK,
    ):
        self.region = region
        self.bucket = BUCKET_PREFIX + region.name
        self.store = store
        self.stats = stats
        self.faults = faults
        self.chunk_size = chunk_size

    def BidiReadObject(
        self, request_iterator: Iterator[pb.BidiReadObjectRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self.stats.stream_begins(self.region.name)
        try:
            yield from self._serve(request_iterator, context)
        except _Abort as e:
            if e.details:
                status = status_pb2.Status(code=e.code.value[0], message=e.message)
                for detail in e.details:
                    packed = any_pb2.Any()
                    packed.Pack(detail)
                    status.details.append(packed)
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status.SerializeToString()),)
                )
            context.abort(e.code, e.message)
        finally:
            self.stats.stream_ends(self.region.name)

    def _fault(self, kind: str) -> Fault | None:
        return self.faults.take(kind, self.region.name) if self.faults else None

    def _open(self, spec: pb.BidiReadObjectSpec) -> StoredFile:
        if spec.bucket != self.bucket:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no bucket {spec.bucket!r} here")
        named = split_key(spec.object)  # <owner>/<name>/<path>, datasets under _datasets/
        repo, path = named if named else (None, "")
        if (
            repo is None
            or not path
            or not self.store.exists(repo)
            or not self.region.holds(str(repo))
        ):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no object {spec.object!r} in {self.bucket}")
        f = self.store.file(repo, path)
        if f is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no object {spec.object!r} in {self.bucket}")
        if spec.generation and spec.generation != f.generation:
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"{spec.object!r} has no generation {spec.generation}"
            )
        return f

    def _serve(
        self, request_iterator: Iterator[pb.BidiReadObjectRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        region = self.region.name
        self.stats.add("streams_opened", region)
        first = next(request_iterator, None)
        if first is None:
            return
        if not first.HasField("read_object_spec"):
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "first message needs read_object_spec")
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
        f = self._open(first.read_object_spec)
        ranges = _Ranges(f.size)
        ranges.add(first.read_ranges)
        context.add_callback(ranges.finish)
        threading.Thread(
            target=self._drain, args=(request_iterator, ranges), daemon=True, name="bidi-requests"
        ).start()
        fd = os.open(f.abspath, os.O_RDONLY)
        try:
            yield pb.BidiReadObjectResponse(
                metadata=pb.Object(
                    name=first.read_object_spec.object,
                    bucket=self.bucket,
                    generation=f.generation,
                    metageneration=1,
                    size=f.size,
                ),
                read_handle=pb.BidiReadHandle(handle=f"{f.path}@{f.generation}".encode()),
            ).SerializeToString()
            sent = 0
            breaking, broken_from = None, 0
            while (rng := ranges.next()) is not None:
                n = min(self.chunk_size, rng.end - rng.offset)
                if breaking is None and (breaking := self._fault("break")) is not None:
                    broken_from = sent  # a break hits live streams too, counted from now
                if breaking is not None:
                    allowance = int(breaking.params.get("after_bytes", 0)) - (sent - broken_from)
                    if allowance <= 0:
                        raise _Abort(grpc.StatusCode.UNAVAILABLE, "injected: stream broken")
                    n = min(n, allowance)
                data = os.pread(fd, n, rng.offset) if n else b""
                if len(data) != n:
                    raise _Abort(grpc.StatusCode.DATA_LOSS, f"{f.path} shrank while being read")
                crc = crc32c.crc32c(data)
                if self._fault("corrupt"):
                    crc ^= 0x5A5A5A5A
                if delay := self._fault("delay"):
                    time.sleep(float(delay.params.get("ms", 100)) / 1000)
                offset = rng.offset
                rng.offset += n
                last = rng.offset == rng.end
                if last:
                    ranges.retire(rng)
                else:
                    ranges.put_back(rng)
                sent += n
                self.stats.add("grpc_bytes", region, n)
                yield data_response(data, crc, offset, rng.read_id, last)
        finally:
            os.close(fd)

    def _drain(self, request_iterator: Iterator[pb.BidiReadObjectRequest], ranges: _Ranges) -> None:
        try:
            for request in request_iterator:
                ranges.add(request.read_ranges)
                self.stats.add("ranges", self.region.name, len(request.read_ranges))
        except _Abort as e:
            ranges.fail(e)
        except Exception:  # the RPC ended under us: nothing left to serve
            ranges.finish()
            return
        with ranges.cond:
            ranges.half_closed = True
            ranges.cond.notify()
