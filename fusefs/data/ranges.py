"""Range bookkeeping: the bytes of one file that are in memory or on their way.

A `RangeRead` is one requested byte range. A transport (bidi stream, HTTP) feeds
it from its own thread, strictly in order; readers on the trio side wait until the
prefix they need has arrived. A `RangeMap` holds a file's ranges without overlap,
so a read can tell which parts are covered and which gaps still need a request.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import trio

from fusefs.data.errors import DataError, ProtocolError


def trio_waker() -> Callable[[Callable[[], None]], None]:
    """A `wake` for RangeRead: runs a callback on the calling trio loop, from any thread."""
    token = trio.lowlevel.current_trio_token()

    def wake(fn: Callable[[], None]) -> None:
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass  # the loop is gone; nobody is left to wake

    return wake


class RangeRead:
    """Bytes [offset, offset+length) of one object, arriving in order.

    `feed` and `fail` may be called from any thread; `wait_until` and `view`
    belong to the trio side. `wake` hands an event to the trio loop
    (`TrioToken.run_sync_soon`), so the feeding thread never blocks on a reader.
    """

    __slots__ = (
        "_chunks",
        "_error",
        "_lock",
        "_received",
        "_starts",
        "_waiters",
        "_wake",
        "length",
        "offset",
        "pins",
    )

    def __init__(self, offset: int, length: int, wake: Callable[[Callable[[], None]], None]):
        if offset < 0 or length <= 0:
            raise ValueError(f"bad range {offset}+{length}")
        self.offset = offset
        self.length = length
        self._chunks: list[bytes | memoryview] = []
        self._starts: list[int] = []
        self._received = 0
        self._error: DataError | None = None
        self._waiters: list[tuple[int, trio.Event]] = []
        self._lock = threading.Lock()
        self._wake = wake
        self.pins = 0  # reads assembling from this range right now: never evict it

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def next_offset(self) -> int:
        """The first absolute offset not yet received: where a resend resumes."""
        return self.offset + self._received

    @property
    def remaining(self) -> int:
        return self.length - self._received

    @property
    def done(self) -> bool:
        return self._received == self.length

    @property
    def error(self) -> DataError | None:
        return self._error

    @property
    def settled(self) -> bool:
        """Nothing more will change: complete or failed."""
        return self.done or self._error is not None

    def feed(self, offset: int, data: bytes | memoryview) -> bool:
        """Append a chunk (kept as given, never copied); True when the range is now complete.

        Raises ProtocolError when the chunk is not the next expected bytes or runs
        past the range: accepting it could hand a reader the wrong bytes.
        """
        with self._lock:
            if self._error is not None:
                return False
            expected = self.offset + self._received
            if offset != expected:
                raise ProtocolError(f"chunk at offset {offset}, expected {expected}")
            if len(data) > self.length - self._received:
                raise ProtocolError(
                    f"chunk of {len(data)} bytes at {offset} runs past range end {self.end}"
                )
            if data:
                self._starts.append(offset)
                self._chunks.append(data)
                self._received += len(data)
            self._release_waiters(self.offset + self._received)
            return self._received == self.length

    def fail(self, error: DataError) -> None:
        with self._lock:
            if self._error is not None or self._received == self.length:
                return
            self._error = error
            self._release_waiters(None)

    def _release_waiters(self, upto: int | None) -> None:
        if not self._waiters:
            return
        keep = []
        for need, event in self._waiters:
            if upto is None or need <= upto:
                self._wake(event.set)
            else:
                keep.append((need, event))
        self._waiters = keep

    async def wait_until(self, end: int) -> None:
        """Return once bytes up to `end` are here; raise the range's error if it failed."""
        end = min(end, self.end)
        while True:
            with self._lock:
                if self._error is not None:
                    raise self._error
                if self.offset + self._received >= end:
                    return
                event = trio.Event()
                self._waiters.append((end, event))
            await event.wait()

    def view(self, start: int, end: int) -> list[memoryview]:
        """Zero-copy pieces covering [start, end), which must already have arrived."""
        with self._lock:
            if start < self.offset or end > self.offset + self._received:
                raise ValueError(f"[{start}, {end}) not received in {self!r}")
            pieces = []
            i = bisect.bisect_right(self._starts, start) - 1
            pos = start
            while pos < end:
                chunk_start = self._starts[i]
                chunk = self._chunks[i]
                lo = pos - chunk_start
                hi = min(len(chunk), end - chunk_start)
                pieces.append(memoryview(chunk)[lo:hi])
                pos = chunk_start + hi
                i += 1
            return pieces

    def __repr__(self) -> str:
        state = "failed" if self._error else ("done" if self.done else "pending")
        return f"<RangeRead {self.offset}+{self.length} {state} got={self._received}>"


@dataclass(frozen=True)
class Gap:
    start: int
    end: int


class RangeMap:
    """A file's ranges, sorted by offset and never overlapping."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[RangeRead] = []

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[RangeRead]:
        return iter(list(self._ranges))

    def add(self, rr: RangeRead) -> None:
        i = bisect.bisect_left(self._starts, rr.offset)
        if i > 0 and self._ranges[i - 1].end > rr.offset:
            raise ValueError(f"{rr!r} overlaps {self._ranges[i - 1]!r}")
        if i < len(self._ranges) and self._ranges[i].offset < rr.end:
            raise ValueError(f"{rr!r} overlaps {self._ranges[i]!r}")
        self._starts.insert(i, rr.offset)
        self._ranges.insert(i, rr)

    def remove(self, rr: RangeRead) -> None:
        i = bisect.bisect_left(self._starts, rr.offset)
        if i < len(self._ranges) and self._ranges[i] is rr:
            del self._starts[i]
            del self._ranges[i]

    def overlapping(self, start: int, end: int) -> list[RangeRead]:
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        out = []
        while i < len(self._ranges) and self._ranges[i].offset < end:
            if self._ranges[i].end > start:
                out.append(self._ranges[i])
            i += 1
        return out

    def gaps(self, start: int, end: int) -> list[Gap]:
        """The parts of [start, end) no range covers."""
        out = []
        pos = start
        for rr in self.overlapping(start, end):
            if rr.offset > pos:
                out.append(Gap(pos, rr.offset))
            pos = max(pos, rr.end)
        if pos < end:
            out.append(Gap(pos, end))
        return out


def aligned_pieces(gap: Gap, unit: int) -> Iterable[Gap]:
    """Cut a gap at multiples of `unit`, so ranges line up across reads."""
    pos = gap.start
    while pos < gap.end:
        nxt = min((pos // unit + 1) * unit, gap.end)
        yield Gap(pos, nxt)
        pos = nxt


class SequentialTracker:
    """Finds sequential runs among a file's reads, several at once.

    Kernel readahead, several processes and DataLoader workers interleave their
    requests, so one "last offset" per file would call them all random. Each run
    keeps its own window, which doubles while the run continues; a read that
    continues no run starts a new one with no prefetch at all.
    """

    def __init__(self, initial: int, maximum: int, max_runs: int = 8):
        self.initial = initial
        self.maximum = maximum
        self.max_runs = max_runs
        self._runs: list[list[int]] = []  # [next_offset, window], most recent last

    def observe(self, offset: int, size: int) -> tuple[int, int]:
        """Record a read; return (prefetch_start, prefetch_end), empty when random."""
        end = offset + size
        for i, run in enumerate(self._runs):
            nxt, window = run
            # A run continues where it left off, give or take one read (the kernel
            # sends a run's requests several at a time and they may overtake one
            # another) or its window. Not more: a random read that lands near a run by
            # chance would start a prefetch that nobody reads.
            slack = max(window, 2 * size)
            if nxt - slack <= offset <= nxt + slack:
                run[0] = max(nxt, end)
                run[1] = min(max(window * 2, self.initial), self.maximum)
                self._runs.append(self._runs.pop(i))
                return run[0], run[0] + run[1]
        window = self.initial if offset == 0 else 0
        self._runs.append([end, window])
        if len(self._runs) > self.max_runs:
            self._runs.pop(0)
        return end, end + window
