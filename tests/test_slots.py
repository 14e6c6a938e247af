"""The stream slots and the reaper: caps, who goes first, idle expiry (pure logic, trio)."""

from __future__ import annotations

import pytest
import trio

from fusefs.data.reaper import Reaper
from fusefs.data.slots import StreamSlots


class Stream:
    """What slots see of a stream: busy while it has work, idle (closable) otherwise."""

    def __init__(self, name: str):
        self.name = name
        self.work = True
        self.open = False
        self.starts = 0

    def start_granted(self) -> bool:
        if not self.work:
            return False
        self.open, self.starts = True, self.starts + 1
        return True

    def stop_idle(self) -> bool:
        if self.work:
            return False
        self.open = False
        return True

    def __repr__(self) -> str:
        return self.name


def start(slots: StreamSlots, s: Stream) -> bool:
    if slots.acquire(s):
        return s.start_granted()
    return False


async def test_the_cap_closes_the_longest_idle_stream_first():
    slots = StreamSlots(2, idle_timeout=60)
    a, b, c = Stream("a"), Stream("b"), Stream("c")
    assert start(slots, a) and start(slots, b)
    a.work = b.work = False
    slots.idle(b)
    slots.idle(a)  # b has been idle longer
    assert start(slots, c)
    assert not b.open and a.open and c.open
    assert slots.open == 2 and slots.peak == 2 and slots.closed_idle == 1


async def test_when_every_stream_is_busy_a_new_one_waits_its_turn_then_starts():
    slots = StreamSlots(2, idle_timeout=60)
    a, b, c, d = (Stream(n) for n in "abcd")
    assert start(slots, a) and start(slots, b)
    assert not start(slots, c) and not start(slots, d)  # in line, in order
    assert (slots.open, slots.waiting, slots.waits) == (2, 2, 2)
    b.work = False
    slots.idle(b)  # b finished: closed at once for the first in line
    assert not b.open and c.open and not d.open
    a.work = False
    slots.release(a)  # a closed by its file
    assert d.open and slots.open == 2 and slots.waiting == 0
    assert slots.peak == 2


async def test_a_stream_that_no_longer_needs_its_turn_gives_it_to_the_next():
    slots = StreamSlots(1, idle_timeout=60)
    a, b, c = Stream("a"), Stream("b"), Stream("c")
    assert start(slots, a)
    assert not start(slots, b) and not start(slots, c)
    b.work = False  # its reader gave up while it waited
    a.work = False
    slots.release(a)
    assert not b.open and c.open and slots.open == 1


async def test_idle_streams_are_closed_by_the_reaper_after_the_timeout(autojump_clock):
    reaper = Reaper()
    slots = StreamSlots(4, idle_timeout=10, reaper=reaper)
    reaper.add(slots)
    a, b = Stream("a"), Stream("b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper.run)
        assert start(slots, a) and start(slots, b)
        a.work = False
        slots.idle(a)
        await trio.sleep(9)
        assert a.open
        await trio.sleep(2)
        assert not a.open and b.open and slots.open == 1
        b.work = False
        slots.idle(b)
        await trio.sleep(5)
        assert b.open
        slots.busy(b)  # used again: no longer expires
        await trio.sleep(20)
        assert b.open
        nursery.cancel_scope.cancel()


async def test_a_reaper_with_nothing_due_sleeps_until_poked(autojump_clock):
    reaper = Reaper()
    calls: list[float] = []

    class Part:
        due = float("inf")

        def expire(self, now: float) -> float:
            calls.append(now)
            if now >= self.due:
                self.due = float("inf")
            return self.due

    part = Part()
    reaper.add(part)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper.run)
        await trio.sleep(1000)
        assert len(calls) == 1  # nothing due: one look, then asleep
        part.due = trio.current_time() + 5
        reaper.poke(part.due)
        await trio.sleep(10)
        assert len(calls) == 3  # woken by the poke, then at the deadline
        nursery.cancel_scope.cancel()


def test_a_cap_below_one_is_refused():
    with pytest.raises(ValueError):
        StreamSlots(0, idle_timeout=1)
