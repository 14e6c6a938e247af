"""The bidi stream against crafted server answers: breaks, reopens and their bounds."""

from __future__ import annotations

import time

import crc32c
import grpc
import pytest

from fusefs.data.bidi import BidiStream, StreamLimits
from fusefs.data.errors import ProtocolError
from fusefs.data.location import parse_grpc_url
from fusefs.data.ranges import RangeRead
from fusefs.proto import storage_pb2 as pb
from fusefs.server.wire import data_response

from support.doubles import CraftedRpc

SIZE = 1 << 20
FAST = StreamLimits(max_attempts=3, retry_window=10, backoff_initial=0.001, backoff_max=0.002)


@pytest.fixture
def channel():
    channel = grpc.insecure_channel("127.0.0.1:9")  # never connected: calls are crafted
    yield channel
    channel.close()


def crafted_stream(channel, respond, limits: StreamLimits = FAST) -> tuple[BidiStream, CraftedRpc]:
    target = parse_grpc_url("grpc://127.0.0.1:9/home/acme/m/model.bin?generation=1")
    stream = BidiStream(channel, target, SIZE, limits)
    rpc = CraftedRpc(respond)
    stream._rpc = rpc
    return stream, rpc


def metadata() -> bytes:
    return pb.BidiReadObjectResponse(
        metadata=pb.Object(size=SIZE, generation=1), read_handle=pb.BidiReadHandle(handle=b"h")
    ).SerializeToString()


def settle(rr: RangeRead, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not rr.settled and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_range_ended_early_with_an_empty_chunk_fails_after_the_bounded_attempts(channel):
    def respond(first):
        (wanted,) = first.read_ranges
        yield metadata()
        yield data_response(b"", 0, wanted.read_offset, wanted.read_id, True)  # ends, empty

    stream, rpc = crafted_stream(channel, respond)
    rr = RangeRead(4096, 100, lambda fn: fn())
    try:
        stream.submit([rr])
        settle(rr)
    finally:
        stream.close()
    assert isinstance(rr.error, ProtocolError), rr.error
    assert len(rpc.calls) == FAST.max_attempts + 1  # the first open, then each reopen


def test_progress_between_breaks_keeps_the_stream_going(channel):
    def respond(first):
        (wanted,) = first.read_ranges
        yield metadata()
        piece = bytes(range(10))  # ten bytes per generation, then the stream ends
        yield data_response(piece, crc32c.crc32c(piece), wanted.read_offset, wanted.read_id, False)

    stream, rpc = crafted_stream(channel, respond)
    rr = RangeRead(0, 60, lambda fn: fn())
    try:
        stream.submit([rr])
        settle(rr)
    finally:
        stream.close()
    assert rr.done and rr.error is None
    assert len(rpc.calls) == 6  # more than max_attempts breaks, each after progress
