"""The bidi stream against crafted server answers: breaks, reopens and their bounds."""

from __future__ import annotations

import threading
import time
from threading import Timer

import crc32c
import grpc
import pytest
import trio

from fusefs.data.bidi import BidiStream, StreamLimits
from fusefs.data.errors import GoneError, ProtocolError
from fusefs.data.location import parse_grpc_url
from fusefs.data.ranges import RangeRead, trio_waker
from fusefs.data.reaper import Reaper
from fusefs.data.slots import StreamSlots
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
    def respond(first, call):
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
    def respond(first, call):
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


def test_a_read_submitted_during_the_reopen_backoff_reopens_and_is_counted_so(channel):
    def respond(first, call):
        yield metadata()
        if len(rpc.calls) == 1:  # the first generation: ten bytes, then it breaks
            (wanted,) = first.read_ranges
            piece = bytes(10)
            yield data_response(
                piece, crc32c.crc32c(piece), wanted.read_offset, wanted.read_id, False
            )
            return
        for r in first.read_ranges:  # the next one serves whatever is asked
            data = bytes(r.read_length)
            yield data_response(data, crc32c.crc32c(data), r.read_offset, r.read_id, True)
        call.cancelled.wait(10)

    slow = StreamLimits(max_attempts=3, retry_window=30, backoff_initial=5.0, backoff_max=5.0)
    stream, rpc = crafted_stream(channel, respond, slow)
    first, second = RangeRead(0, 60, lambda fn: fn()), RangeRead(100, 60, lambda fn: fn())
    try:
        stream.submit([first])
        deadline = time.monotonic() + 3
        while stream.counters.bytes < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the generation has ended; its receive thread waits out 5 s
        stream.submit([second])  # starts the next generation itself
        settle(first)
        settle(second)
    finally:
        stream.close()
    assert first.done and second.done
    assert len(rpc.calls) == 2
    assert (stream.counters.opens, stream.counters.reopens) == (2, 1)


# -- slots: a cap on open streams, idle ones closed from the trio side --------------------


def serve_when(gate: threading.Event):
    """A store that answers each range once `gate` is set, then keeps the stream open."""

    def respond(first, call):
        yield metadata()
        requests = list(first.read_ranges)
        if gate.wait(10):
            for r in requests:
                data = bytes(r.read_length)
                yield data_response(data, crc32c.crc32c(data), r.read_offset, r.read_id, True)
        call.cancelled.wait(10)

    return respond


def slotted_stream(channel, respond, slots, limits=FAST) -> tuple[BidiStream, CraftedRpc]:
    target = parse_grpc_url("grpc://127.0.0.1:9/home/acme/m/model.bin?generation=1")
    stream = BidiStream(channel, target, SIZE, limits, slots=slots, wake=trio_waker())
    rpc = CraftedRpc(respond)
    stream._rpc = rpc
    return stream, rpc


async def test_streams_beyond_the_cap_wait_for_a_busy_one_to_finish(channel):
    slots = StreamSlots(2, idle_timeout=60)
    gate = threading.Event()
    made = [slotted_stream(channel, serve_when(gate), slots) for _ in range(4)]
    waker = trio_waker()
    reads = [RangeRead(0, 4096, waker) for _ in made]
    try:
        for (stream, _), rr in zip(made, reads, strict=True):
            stream.submit([rr])
        assert [len(rpc.calls) for _, rpc in made] == [1, 1, 0, 0]
        assert (slots.open, slots.waiting) == (2, 2)
        gate.set()
        with trio.fail_after(10):
            for rr in reads:
                await rr.wait_until(rr.end)
        assert [len(rpc.calls) for _, rpc in made] == [1, 1, 1, 1]
        assert slots.peak == 2 and slots.waits == 2
    finally:
        for stream, _ in made:
            stream.close()
    assert slots.open == 0


async def test_an_idle_stream_is_closed_by_the_reaper_not_by_a_timer_thread(channel):
    limits = StreamLimits(idle_timeout=0.2)
    reaper = Reaper()
    slots = StreamSlots(4, limits.idle_timeout, reaper)
    reaper.add(slots)
    gate = threading.Event()
    gate.set()
    stream, rpc = slotted_stream(channel, serve_when(gate), slots, limits)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper.run)
        try:
            for round_ in range(3):
                rr = RangeRead(0, 4096, trio_waker())
                stream.submit([rr])
                with trio.fail_after(10):
                    await rr.wait_until(rr.end)
                    while stream.open:  # idle: closed after idle_timeout
                        assert not [t for t in threading.enumerate() if isinstance(t, Timer)]
                        await trio.sleep(0.01)
                assert slots.open == 0 and len(rpc.calls) == round_ + 1
                assert rpc.calls[-1].cancelled.is_set()
        finally:
            stream.close()
            nursery.cancel_scope.cancel()


# -- a stream opened on a guess, confirmed by the probe -----------------------------


def guessed_stream(channel, generation: int, gate: threading.Event):
    """A stream to a guessed object (generation 0) whose store has `generation`; the
    store's first answer waits for `gate`."""

    def respond(first, call):
        gate.wait(10)
        yield pb.BidiReadObjectResponse(
            metadata=pb.Object(size=SIZE, generation=generation)
        ).SerializeToString()
        for r in first.read_ranges:
            data = bytes(r.read_length)
            yield data_response(data, crc32c.crc32c(data), r.read_offset, r.read_id, True)
        call.cancelled.wait(10)

    target = parse_grpc_url("grpc://127.0.0.1:9/home/acme/m/model.bin?generation=0")
    stream = BidiStream(channel, target, SIZE, FAST)
    stream._rpc = CraftedRpc(respond)
    return stream


def test_a_guessed_stream_confirms_only_the_generation_its_store_reads(channel):
    gate = threading.Event()
    gate.set()
    stream = guessed_stream(channel, 7, gate)
    rr = RangeRead(0, 10, lambda fn: fn())
    try:
        stream.submit([rr])
        settle(rr)
        assert rr.done
        assert not stream.confirm(8)
        assert stream.confirm(7)
    finally:
        stream.close()


def test_a_generation_confirmed_before_the_store_answers_is_enforced(channel):
    gate = threading.Event()
    stream = guessed_stream(channel, 7, gate)
    rr = RangeRead(0, 10, lambda fn: fn())
    try:
        stream.submit([rr])
        assert stream.confirm(5)  # nothing heard yet: pinned to what the probe said
        gate.set()
        settle(rr)
        assert isinstance(rr.error, GoneError) and "generation 7" in str(rr.error)
    finally:
        stream.close()
