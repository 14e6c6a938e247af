"""A file's ranges served from its cache entry; missing blocks fetched once, then stored.

`CachedSource` is the `RangeSource` a reader gets when a cache is configured. The
reader asks for whole blocks only (it aligns its ranges to the cache's block
size). For each range:

* every block on disk and intact: fed from disk by a worker thread, which checks
  each block's CRC32C the first time this process reads it;
* some blocks missing: they are claimed (a lock other processes see), fetched from
  the network source, fed to the reader as they arrive, then written to the entry;
* claimed by another process: wait for its bytes, then read them from disk; a claim
  held longer than `claim_wait` is taken as stuck and the blocks are fetched anyway.

With no network source (a sealed file, opened without asking the hub), a missing or
damaged block raises GoneError: the mount then resolves the file and retries with
the network. A failing cache disk never fails a read that the network can serve.

A source made `trusted=False` (its network stream opened on a guess, before the probe
confirmed where the file is) stores nothing until `trust()`: bytes that might belong
to another object never reach the disk.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from fusefs.cache.digest import Digest
from fusefs.cache.entry import Entry, EntryError, Layout, is_sealed
from fusefs.cache.store import DiskCache, cache_key
from fusefs.data.errors import DataError, DeadlineError, GoneError
from fusefs.data.ranges import RangeRead, trio_waker
from fusefs.data.source import RangeSource, SourceCounters

log = logging.getLogger(__name__)

_NO_NETWORK = SourceCounters()  # what a disk-only source reports (never bumped)


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    blocks: range
    on_disk: bool


def segments(layout: Layout, blocks: range, present: list[bool]) -> list[Segment]:
    """Runs of consecutive blocks that are all on disk or all missing, in order."""
    out: list[Segment] = []
    run_start = blocks.start
    for i in range(1, len(blocks) + 1):
        if i == len(blocks) or present[i] != present[i - 1]:
            run = range(run_start, blocks.start + i)
            out.append(Segment(*layout.span(run), run, present[i - 1]))
            run_start = blocks.start + i
    return out


class CachedSource:
    def __init__(
        self,
        cache: DiskCache,
        key: str,
        size: int,
        digest: Digest | None,
        network: RangeSource | None,
        nursery: trio.Nursery,
        wake: Callable[[Callable[[], None]], None],
        *,
        trusted: bool = True,
    ):
        self.block_size = cache.limits.block_size
        self._trusted = trio.Event()
        if trusted:
            self._trusted.set()
        self.network = network
        self._cache = cache
        self._key, self._size, self._digest = key, size, digest
        self._entry: Entry = cache.open_entry(key, size, digest)
        self._held = True  # this process keeps the entry from eviction
        self._nursery = nursery
        self._wake = wake
        self._subs: dict[RangeRead, list[RangeRead]] = {}
        self._tasks = 0
        self._paused = self._closed = self._sealing = self._stored_since_check = False
        self._sealed = False  # by this source (a sealed entry opened as such stores nothing)
        self._whole_unsealed = self._entry.all_present() and not self._entry.complete()
        self._checked_at = float("-inf")
        self._seal_pending = False
        self._disk_bytes = 0

    @property
    def path(self) -> str:
        return self._entry.path

    @property
    def counters(self) -> SourceCounters:
        """The network transport's counters (all zero for a file read from disk alone)."""
        return self.network.counters if self.network is not None else _NO_NETWORK

    @property
    def progress(self) -> int:
        return self._disk_bytes + (self.network.progress if self.network else 0)

    def submit(self, ranges: list[RangeRead]) -> None:
        for rr in ranges:
            self._tasks += 1
            self._nursery.start_soon(self._serve, rr)

    def abandon(self, rr: RangeRead) -> None:
        for sub in self._subs.pop(rr, ()):
            assert self.network is not None  # subranges exist only when there is a network
            self.network.abandon(sub)
            if sub is not rr:
                sub.fail(DeadlineError("abandoned"))

    def trust(self) -> None:
        """What the network sends is this file's: store it from now on."""
        self._trusted.set()

    def close(self) -> None:
        self._closed = True
        self._trusted.set()  # stores waiting for it see the source closed and give up
        if self.network is not None:
            self.network.close()
        self._let_go()

    def pause(self) -> None:
        """No handle is open: the entry may be evicted once nothing is in flight."""
        self._paused = True
        self._let_go()

    async def resume(self) -> None:
        """A handle is open again; an entry evicted meanwhile is replaced by a fresh one.
        Call before the file is read again (no range is in flight after `pause`)."""
        self._paused = False
        if self._held:
            return
        self._held = True
        if self._entry.resume():  # a lock and an fstat: fine on the trio thread
            return
        try:
            # A fresh entry needs room, and making room may walk the cache directory.
            fresh = await trio.to_thread.run_sync(
                self._cache.open_entry, self._key, self._size, self._digest
            )
        except (OSError, EntryError) as e:
            # The evicted entry's file still works for this process; nothing is lost.
            log.warning("cache %s: could not reopen (%s); using the evicted copy", self._key, e)
            return
        self._entry.close()
        self._entry = fresh
        self._sealed = False

    def _let_go(self) -> None:
        if self._tasks:
            return  # the last task to finish comes back here
        try:
            if self._closed:
                self._entry.close()
                self._cache.released()
            elif self._paused and self._held:
                self._entry.pause()
                self._held = False
                self._cache.released()
        except OSError as e:  # never out of a task's finally: it would end the mount
            log.warning("cache %s: %s", self._key, e)

    # -- one range -------------------------------------------------------------

    async def _serve(self, rr: RangeRead) -> None:
        try:
            await self._fill(rr)
        except DataError as e:
            rr.fail(e)
        except Exception as e:
            log.exception("cache %s: range %r failed", self._entry.path, rr)
            rr.fail(DataError(f"cache: {e.__class__.__name__}: {e}"))
        except BaseException:
            rr.fail(DataError("cache: shutting down"))
            raise
        finally:
            self._subs.pop(rr, None)
            self._tasks -= 1
            self._let_go()

    async def _fill(self, rr: RangeRead) -> None:
        try:
            await self._fill_through_cache(rr)
        except OSError as e:  # the cache's disk failed: the network can still serve the reader
            if self.network is None:
                raise GoneError(f"cache: {self._key}: {e}") from None
            if not rr.settled:
                log.warning("cache %s: disk error (%s); reading around the cache", self._key, e)
                self._subs[rr] = [rr]
                self.network.submit([rr])  # resumes at the range's first byte not yet fed

    async def _fill_through_cache(self, rr: RangeRead) -> None:
        entry = self._entry
        layout = entry.layout
        blocks = layout.block_range(rr.offset, rr.end)
        if layout.span(blocks) != (rr.offset, rr.end):
            raise DataError(f"cache: range {rr!r} is not whole blocks")
        waiting_since: float | None = None
        pause = 0.002
        while not rr.settled:
            present = entry.present(blocks)
            if all(present):
                if await self._from_disk(entry, rr, rr.offset, rr.end):
                    return
                continue  # a damaged block was forgotten: it is missing now
            if self.network is None:
                raise GoneError(f"cache: {self._key} is not all on disk")
            missing = [s.blocks for s in segments(layout, blocks, present) if not s.on_disk]
            now = trio.current_time()
            claimed = _claim_all(entry, missing)
            waited = now - waiting_since if waiting_since is not None else 0.0
            stuck = not claimed and waited > self._cache.limits.claim_wait
            if stuck:
                log.warning(
                    "cache %s: blocks claimed for %.0fs by another process; fetching them",
                    self._key,
                    waited,
                )
            if claimed or stuck:
                try:
                    fetched = stuck or entry.present(blocks) == present  # nobody stored meanwhile
                    if fetched:
                        await self._fetch(entry, rr, blocks, present)
                finally:
                    if claimed:
                        for run in missing:
                            entry.release(run)
                if fetched:
                    # After the claims are released: others go on while the file is checked.
                    await self._seal_if_whole(entry, now=blocks.stop == layout.blocks)
                    return
                continue
            if waiting_since is None:
                waiting_since = now
                self._cache.stats.add(waits=1)
            await trio.sleep(pause * random.uniform(0.5, 1.5))  # jitter: no lockstep retries
            pause = min(pause * 2, 0.05)

    async def _from_disk(self, entry: Entry, rr: RangeRead, start: int, end: int) -> bool:
        """Feed [start, end) from disk; False when a block was damaged (now forgotten)."""
        data = await trio.to_thread.run_sync(entry.read, start, end)
        if data is None:
            self._cache.stats.add(damaged_blocks=1)
            return False
        self._disk_bytes += len(data)
        self._cache.stats.add(hit_bytes=len(data))
        rr.feed(start, data)
        if self._whole_unsealed:  # left complete but unsealed (a crash, a failed check)
            self._whole_unsealed = False
            self._stored_since_check = True
            await self._seal_if_whole(entry, now=True)
        return True

    async def _fetch(self, entry: Entry, rr: RangeRead, blocks: range, present: list[bool]) -> None:
        network = self.network
        assert network is not None  # only called when blocks can be fetched
        parts = segments(entry.layout, blocks, present)
        if len(parts) == 1:  # all missing: the reader's range goes to the network as it is
            self._subs[rr] = [rr]
            network.submit([rr])
            await rr.wait_until(rr.end)
            await self._store(entry, rr, blocks)
            return
        subs = {
            p.start: RangeRead(p.start, p.end - p.start, self._wake) for p in parts if not p.on_disk
        }
        self._subs[rr] = list(subs.values())
        network.submit(list(subs.values()))
        fetched = []
        for part in parts:
            if part.on_disk and await self._from_disk(entry, rr, part.start, part.end):
                continue
            sub = subs.get(part.start)
            if sub is None:  # was on disk a moment ago, damaged now: fetch it as well
                sub = RangeRead(part.start, part.end - part.start, self._wake)
                self._subs[rr].append(sub)
                network.submit([sub])
            await _forward(sub, rr)
            fetched.append((sub, part.blocks))
        for sub, run in fetched:  # the reader has all its bytes before any disk write
            await self._store(entry, sub, run)

    async def _store(self, entry: Entry, src: RangeRead, blocks: range) -> None:
        if not self._trusted.is_set():
            await self._trusted.wait()
        if self._closed:
            return
        start, end = entry.layout.span(blocks)
        pieces = src.view(start, end)
        self._cache.stats.add(miss_bytes=end - start)
        try:
            if await trio.to_thread.run_sync(self._write, entry, pieces, blocks):
                self._stored_since_check = True
        except OSError as e:  # the reader already has its bytes; the disk is not its problem
            log.warning("cache %s: not stored (%s)", self._key, e)

    async def _seal_if_whole(self, entry: Entry, *, now: bool = False) -> None:
        """Seal the entry once its last block is stored: one check at a time, and again
        after any block stored while a check ran (that block may have been the last).

        The check reads the whole block table, so while a file fills it runs at most once
        a second (a huge file would read it quadratically), and always when `now` (the
        file's tail was just stored, or it was found whole). A file left whole but
        unsealed is sealed the next time it is read from disk."""
        if self._sealing or self._sealed:
            return
        if not now and trio.current_time() - self._checked_at < 1.0:
            if not self._seal_pending:  # checked a moment ago: check again a moment later
                self._seal_pending = True
                self._nursery.start_soon(self._seal_later, entry)
            return
        self._checked_at = trio.current_time()
        self._sealing = True
        try:
            while self._stored_since_check and not self._sealed:
                self._stored_since_check = False
                sealed = await trio.to_thread.run_sync(entry.verify_and_seal)
                if sealed is True:
                    self._sealed = True
                    self._cache.stats.add(sealed=1)
                    log.debug("cache: %s complete and verified", self._key)  # counted in status
                elif sealed is False:
                    self._cache.stats.add(rejected=1)
                    log.error(
                        "cache: %s does not match its %s; its blocks are discarded",
                        self._key,
                        self._digest.kind if self._digest is not None else "digest",
                    )
        except OSError as e:
            log.warning("cache %s: not sealed (%s)", self._key, e)
        finally:
            self._sealing = False

    async def _seal_later(self, entry: Entry) -> None:
        # Not counted as a task: it must not keep a closed file from eviction.
        await trio.sleep(1.0)
        self._seal_pending = False
        if not self._closed and entry is self._entry:
            await self._seal_if_whole(entry, now=True)

    def _write(self, entry: Entry, pieces: list[memoryview], blocks: range) -> bool:
        if not self._cache.reserve(sum(len(p) for p in pieces)):
            return False
        self._cache.stats.add(written_bytes=entry.write(pieces, blocks))
        return True


def _claim_all(entry: Entry, runs: list[range]) -> bool:
    """Claim every run or none: never hold some while waiting for others."""
    taken: list[range] = []
    for run in runs:
        if not entry.claim(run):
            for got in taken:
                entry.release(got)
            return False
        taken.append(run)
    return True


async def _forward(sub: RangeRead, rr: RangeRead) -> None:
    """Feed `rr` with `sub`'s bytes as they arrive (no copy: the same chunks)."""
    pos = sub.offset
    while pos < sub.end:
        await sub.wait_until(pos + 1)
        upto = sub.next_offset
        for piece in sub.view(pos, upto):
            rr.feed(pos, piece)
            pos += len(piece)


class FileCache:
    """The cache as a mount uses it: the directory, and the nursery its range tasks run in."""

    def __init__(self, disk: DiskCache, nursery: trio.Nursery):
        self.disk = disk
        self._nursery = nursery
        self._wake = trio_waker()

    def sealed(self, key: str, size: int, digest: Digest | None) -> bool:
        """Whether the entry for `key` is sealed: readable with no network at all."""
        return is_sealed(self.disk.path_of(key), Layout(size, self.disk.limits.block_size), digest)

    def source(
        self,
        key: str,
        size: int,
        digest: Digest | None,
        network: RangeSource | None,
        *,
        trusted: bool = True,
    ) -> CachedSource:
        return CachedSource(
            self.disk, key, size, digest, network, self._nursery, self._wake, trusted=trusted
        )

    key = staticmethod(cache_key)


@asynccontextmanager
async def serving(disk: DiskCache) -> AsyncIterator[FileCache]:
    """Run an opened cache directory's range tasks for the lifetime of the block."""
    async with trio.open_nursery() as nursery:
        yield FileCache(disk, nursery)
        nursery.cancel_scope.cancel()  # what is still being stored is simply not cached
