"""One memory budget for every buffered byte of every open file.

Ranges are charged when requested, before a byte arrives, so the total of data
in memory and data on its way never passes the limit by more than the demand
reads in flight (which are bounded by the FUSE request size times the number of
FUSE workers). Settled ranges are evicted least recently used first. Used from the
trio side only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from fusefs.data.ranges import RangeRead


class MemoryBudget:
    def __init__(self, limit: int):
        if limit <= 0:
            raise ValueError("memory budget must be positive")
        self.limit = limit
        self.in_use = 0
        self.evictions = 0
        # range -> callback that detaches it from its file's RangeMap
        self._lru: OrderedDict[RangeRead, Callable[[RangeRead], None]] = OrderedDict()

    def charge(self, rr: RangeRead, detach: Callable[[RangeRead], None], *, force: bool) -> bool:
        """Account for a new range; False (nothing charged) if it does not fit
        and `force` is off. Demand reads force: they must be served regardless."""
        if not self._make_room(rr.length, force) and not force:
            return False
        self.in_use += rr.length
        self._lru[rr] = detach
        return True

    def touch(self, rr: RangeRead) -> None:
        if rr in self._lru:
            self._lru.move_to_end(rr)

    def drop(self, rr: RangeRead) -> None:
        """Forget a range (its file closed it, or it failed)."""
        detach = self._lru.pop(rr, None)
        if detach is not None:
            self.in_use -= rr.length
            detach(rr)

    def _make_room(self, need: int, force: bool) -> bool:
        if self.in_use + need <= self.limit:
            return True
        victims = []
        freed = 0
        for rr in self._lru:
            if self.in_use - freed + need <= self.limit:
                break
            if rr.settled and not rr.pins:  # else a reader is waiting on it or reading it
                victims.append(rr)
                freed += rr.length
        fits = self.in_use - freed + need <= self.limit
        if fits or force:  # evicting for a request that still cannot go is a loss
            for rr in victims:
                self.drop(rr)
                self.evictions += 1
        return fits
