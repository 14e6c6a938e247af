"""Which files have a data path, for how long, and how many: the mount's file lifetimes.

A file's data path (its source, stream, cache descriptor, buffered ranges) is made at
its first open and shared by its handles. When the last handle is released it
lingers for `linger` seconds, so that the open-read-close-open pattern of many
programs reuses it, then it is closed. At most `keep` data paths linger at once: past
that the least recently released goes first. Data paths with handles are never
closed here: what the kernel holds open stays open.

Expiry runs on the mount's reaper (one trio task for every deadline of the mount).
Used from the trio thread only.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

from fusefs.data.reaper import Reaper
from fusefs.vfs.datapath import DataPath

DEFAULT_LINGER = 5.0


@dataclass(frozen=True)
class Lifetimes:
    linger: float = DEFAULT_LINGER  # seconds a released file's data path is kept
    keep: int = 64  # released files' data paths kept at once, at most
    cached: int | None = None  # data paths holding a cache descriptor, at most (None: any)


class OpenFiles:
    def __init__(
        self, lifetimes: Lifetimes, reaper: Reaper, on_close: Callable[[DataPath], None]
    ) -> None:
        self.lifetimes = lifetimes
        self._reaper = reaper
        self._on_close = on_close
        self._paths: dict[int, DataPath] = {}
        self._handles: Counter[int] = Counter()
        self._lingering: OrderedDict[int, float] = OrderedDict()  # inode -> until, oldest first
        self._cached: set[int] = set()  # data paths that hold a cache descriptor
        self.closed = 0  # data paths closed so far

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, inode: int) -> bool:
        return inode in self._paths

    def items(self) -> Iterator[tuple[int, DataPath]]:
        return iter(self._paths.items())

    def get(self, inode: int) -> DataPath | None:
        return self._paths.get(inode)

    def handles(self, inode: int) -> int:
        return self._handles.get(inode, 0)

    @property
    def with_handles(self) -> int:
        """Files open right now: with at least one handle."""
        return len(self._handles)

    @property
    def cached(self) -> int:
        return len(self._cached)

    def add(self, inode: int, path: DataPath) -> None:
        """A new data path, with the handle that opened it."""
        self._paths[inode] = path
        self._handles[inode] += 1
        if path.cached is not None:
            self._cached.add(inode)

    def acquire(self, inode: int) -> bool:
        """One more handle on an existing data path; True when it was lingering."""
        self._handles[inode] += 1
        return self._lingering.pop(inode, None) is not None

    def release(self, inode: int) -> None:
        """A handle closed; the last one starts the data path's linger."""
        self._handles[inode] -= 1
        if self._handles[inode] > 0:
            return
        del self._handles[inode]
        path = self._paths[inode]
        path.pause()
        if self.lifetimes.linger <= 0:
            self._close(inode)
            return
        until = trio.current_time() + self.lifetimes.linger
        self._lingering[inode] = until
        self._reaper.poke(until)
        while len(self._lingering) > self.lifetimes.keep:
            self._close(next(iter(self._lingering)))

    def room_for_cached(self) -> bool:
        """Whether a new data path may hold a cache descriptor: lingering ones are
        closed for it when the budget is spent, least recently released first."""
        limit = self.lifetimes.cached
        if limit is None:
            return True
        while len(self._cached) >= limit and self._lingering:
            self._close(next(iter(self._lingering)))
        return len(self._cached) < limit

    def expire(self, now: float) -> float:
        while self._lingering:
            inode, until = next(iter(self._lingering.items()))
            if until > now:
                return until
            self._close(inode)
        return math.inf

    def close_all(self) -> None:
        for inode in list(self._paths):
            self._close(inode)
        self._handles.clear()

    def _close(self, inode: int) -> None:
        self._lingering.pop(inode, None)
        self._cached.discard(inode)
        path = self._paths.pop(inode)
        path.close()
        self.closed += 1
        self._on_close(path)
