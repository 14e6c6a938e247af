"""Reads of one file: what is in memory is served from it, the rest becomes ranges.

A `FileReader` sits on one `RangeSource` (a bidi stream, or ranged HTTP GETs)
and is shared by every handle of the file. Demand reads request exactly the
missing bytes; reads that continue a sequential run also request a window ahead,
which grows while the run lasts. Every buffered byte is charged to one global
`MemoryBudget`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from fusefs.data.errors import DataError, DeadlineError
from fusefs.data.memory_budget import MemoryBudget
from fusefs.data.ranges import RangeMap, RangeRead, SequentialTracker, aligned_pieces
from fusefs.data.source import RangeSource, Waker

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True)
class ReadLimits:
    deadline: float = 30.0  # a read not served by then fails (EIO at the mount)
    stalled_deadline: float = 1.0  # while the source has sent nothing since a deadline passed
    range_unit: int = 8 * MiB  # largest single range; prefetch is aligned to it
    prefetch_initial: int = 4 * MiB
    prefetch_max: int = 64 * MiB


class FileReader:
    def __init__(
        self,
        source: RangeSource,
        size: int,
        budget: MemoryBudget,
        limits: ReadLimits,
        wake: Waker,
        name: str = "",
        *,
        align: int = 1,
    ):
        self.source = source
        self.size = size
        self.name = name
        self._budget = budget
        self._limits = limits
        self._wake = wake
        self._align = align  # every range starts and ends on a multiple (a cache's blocks)
        self._map = RangeMap()
        self._tracker = SequentialTracker(limits.prefetch_initial, limits.prefetch_max)
        self._stalled_at: int | None = None  # source.progress when a deadline last passed

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        ahead_start, ahead_end = self._tracker.observe(offset, end - offset)
        # Pin what this read assembles from before anything is charged: charging a
        # new range may evict settled ones, and these must stay until we are done.
        covering = self._map.overlapping(offset, end)
        for rr in covering:
            rr.pins += 1
        try:
            covering += self._request(offset, end, force=True, pin=True)
            covering.sort(key=lambda rr: rr.offset)
            if ahead_end > ahead_start:
                unit = self._limits.range_unit
                # Whole aligned units only: many tiny prefetch ranges cost more than they save.
                ahead_end = min(-(-ahead_end // unit) * unit, self.size)
                self._request(max(ahead_start, end), ahead_end, force=False, pin=False)
            return await self._assemble(covering, offset, end)
        finally:
            for rr in covering:
                rr.pins -= 1

    def prefetch(self, offset: int, size: int) -> None:
        """Ask for [offset, offset + size) before any read does (the head of a file being
        opened); skipped when the memory budget has no room for it."""
        end = min(offset + size, self.size)
        if offset < end:
            self._request(offset, end, force=False, pin=False)

    async def _assemble(
        self, covering: list[RangeRead], offset: int, end: int
    ) -> bytes | memoryview:
        pos = offset
        for rr in covering:
            if rr.offset > pos:  # cannot happen; if it did, refuse rather than misplace bytes
                raise DataError(f"{self.name}: no range covers [{pos}, {rr.offset})")
            pos = max(pos, rr.end)
        if pos < end:
            raise DataError(f"{self.name}: no range covers [{pos}, {end})")
        deadline = self._limits.deadline
        if self._stalled_at is not None:
            if self.source.progress != self._stalled_at:
                self._stalled_at = None  # it came back
            else:
                # The kernel retries a failed readahead page by page; without this each
                # retry would wait out a full deadline on a source known to be stuck.
                deadline = min(deadline, self._limits.stalled_deadline)
        try:
            with trio.fail_after(deadline):
                for rr in covering:
                    await rr.wait_until(end)
        except trio.TooSlowError:
            self._give_up(covering)
            self._stalled_at = self.source.progress
            raise DeadlineError(
                f"{self.name}: {end - offset} bytes at {offset} not served within {deadline:g}s"
            ) from None
        except DataError:
            self._give_up(covering)
            raise
        pieces = []
        for rr in covering:
            pieces.extend(rr.view(max(offset, rr.offset), min(end, rr.end)))
            self._budget.touch(rr)
        if len(pieces) == 1:
            return pieces[0]  # zero-copy: FUSE replies straight from the received chunk
        return b"".join(pieces)

    def close(self) -> None:
        for rr in self._map:
            self._budget.drop(rr)
        self.source.close()

    @property
    def buffered(self) -> int:
        return sum(rr.length for rr in self._map)

    def _request(self, start: int, end: int, *, force: bool, pin: bool) -> list[RangeRead]:
        """New ranges for the gaps in [start, end), submitted as one batch."""
        if self._align > 1:
            start -= start % self._align
            end = min(-(-end // self._align) * self._align, self.size)
        batch = []
        for gap in self._map.gaps(start, end):
            for piece in aligned_pieces(gap, self._limits.range_unit):
                rr = RangeRead(piece.start, piece.end - piece.start, self._wake)
                rr.pins = int(pin)
                if not self._budget.charge(rr, self._map.remove, force=force):
                    break
                self._map.add(rr)
                batch.append(rr)
        if batch:
            self.source.submit(batch)
        return batch

    def _give_up(self, ranges: list[RangeRead]) -> None:
        """Forget unfinished or failed ranges so the next read asks again."""
        for rr in ranges:
            if not rr.done:
                if rr.error is None:
                    self.source.abandon(rr)
                    rr.fail(DeadlineError(f"{self.name}: abandoned"))
                self._budget.drop(rr)
