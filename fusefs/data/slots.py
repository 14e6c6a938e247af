"""The open streams of one data client (a mount): how many, and which one goes first.

A store serves a bounded number of concurrent streams to all its clients, and each
stream costs the mount two threads; so a mount holds at most `limit` streams open.
A stream takes a slot when it starts and keeps it while it is open, busy (ranges
outstanding) or idle. When no slot is free:

* the idle stream that has been idle longest is closed and its slot taken (it reopens
  lazily, on its file's next read);
* when every open stream is busy, the new stream waits in line (first come, first
  served) and starts as soon as one finishes its ranges; its reads keep their
  deadline. Nothing fails for want of a slot, and the cap is never exceeded.

An idle stream is also closed after `idle_timeout`, by the reaper. Slots are kept on
the trio thread; streams report from their own threads through the trio token.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol

import trio

from fusefs.data.reaper import Reaper


class Slotted(Protocol):
    """A stream as its slots see it (see `BidiStream`)."""

    def start_granted(self) -> bool:
        """A slot is yours: start if there is work; False (nothing to do) gives it back."""
        ...

    def stop_idle(self) -> bool:
        """Close now if nothing is outstanding; False when busy after all."""
        ...


class StreamSlots:
    def __init__(self, limit: int, idle_timeout: float, reaper: Reaper | None = None):
        if limit < 1:
            raise ValueError("at least one stream")
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._reaper = reaper
        self._open: set[Slotted] = set()
        self._idle: OrderedDict[Slotted, float] = OrderedDict()  # since when, oldest first
        self._waiting: OrderedDict[Slotted, None] = OrderedDict()
        self.peak = 0  # most streams open at once
        self.waits = 0  # streams that had to wait for a slot
        self.closed_idle = 0  # idle streams closed (for a slot, or timed out)

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def holds(self, stream: Slotted) -> bool:
        return stream in self._open

    def acquire(self, stream: Slotted) -> bool:
        """A slot for `stream` now (True), or a place in line (False: `start_granted`
        is called when its turn comes)."""
        if stream in self._open:
            self._idle.pop(stream, None)
            return True
        if len(self._open) < self.limit or self._close_longest_idle():
            self._hold(stream)
            return True
        if stream not in self._waiting:
            self._waiting[stream] = None
            self.waits += 1
        return False

    def busy(self, stream: Slotted) -> None:
        self._idle.pop(stream, None)

    def idle(self, stream: Slotted) -> None:
        """`stream` is open with nothing outstanding: closable from now on."""
        if stream not in self._open:
            return
        if self._waiting and stream.stop_idle():
            self.closed_idle += 1
            self.release(stream)  # its slot goes to the first in line
            return
        now = trio.current_time()
        self._idle[stream] = now
        self._idle.move_to_end(stream)
        if self._reaper is not None:
            self._reaper.poke(now + self.idle_timeout)

    def release(self, stream: Slotted) -> None:
        """`stream` closed (or no longer waits): its slot goes to the first in line."""
        self._waiting.pop(stream, None)
        self._idle.pop(stream, None)
        if stream in self._open:
            self._open.discard(stream)
            self._grant()

    def expire(self, now: float) -> float:
        """Close streams idle for `idle_timeout`; when the next one is due."""
        while self._idle:
            stream, since = next(iter(self._idle.items()))
            if since + self.idle_timeout > now:
                return since + self.idle_timeout
            del self._idle[stream]
            if stream.stop_idle():
                self.closed_idle += 1
                self._open.discard(stream)
                self._grant()
        return math.inf

    def _hold(self, stream: Slotted) -> None:
        self._waiting.pop(stream, None)
        self._open.add(stream)
        self.peak = max(self.peak, len(self._open))

    def _grant(self) -> None:
        while self._waiting and len(self._open) < self.limit:
            stream = next(iter(self._waiting))
            self._hold(stream)
            if not stream.start_granted():
                self._open.discard(stream)

    def _close_longest_idle(self) -> bool:
        while self._idle:
            stream, _ = self._idle.popitem(last=False)
            if stream.stop_idle():
                self.closed_idle += 1
                self._open.discard(stream)
                return True
        return False
