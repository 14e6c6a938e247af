"""One trio task that ends what has outlived its time: idle streams, files left open.

Each part registered with `add` keeps its own deadlines; `expire(now)` closes what is
due and returns the part's next deadline (trio clock), or `inf` when it has none. The
reaper sleeps until the earliest of them. A part that sets a deadline earlier than the
one the reaper sleeps to calls `poke(deadline)`. No timer starts a thread, and nothing
runs while nothing is due. Used from the trio thread only.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio


class Expiring(Protocol):
    def expire(self, now: float) -> float:
        """Close what is due at `now`; the next deadline, or `math.inf`."""
        ...


class Reaper:
    def __init__(self) -> None:
        self._parts: list[Expiring] = []
        self._wake_at = math.inf
        self._poked = trio.Event()

    def add(self, part: Expiring) -> None:
        self._parts.append(part)
        self._poked.set()

    def poke(self, deadline: float) -> None:
        """A deadline was set: wake up for it if the reaper would sleep past it."""
        if deadline < self._wake_at:
            self._poked.set()

    async def run(self) -> None:
        """Expire what is due, forever (cancel the surrounding scope to stop it)."""
        while True:
            self._poked = trio.Event()
            now = trio.current_time()
            self._wake_at = min((part.expire(now) for part in self._parts), default=math.inf)
            with trio.move_on_at(self._wake_at):
                await self._poked.wait()
