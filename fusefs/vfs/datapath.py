"""One file's data path: where its bytes come from, the reader over them, and failover.

A `DataPath` is made when a file is opened and none is left from an earlier open; it
is shared by all the file's handles and closed a little after the last one is released
(`fusefs.vfs.openfiles`). Opening resolves the file's source once (or finds it whole
in the disk cache and needs no network at all; an empty file needs nothing at all)
and puts a `FileReader` on it, through the disk cache when there is one: readers chain
cache → network, with an explicit fallback to the network alone when the cache cannot
be used.

When a read fails in a way its source could not recover from, the data path
decides what comes next: a file whose URL expired or moved is resolved again (at
most once a minute: a second "gone" right after is an error), a dead internal endpoint
gives way to the next candidate region (skipped for a minute, not for good), a sealed
file that lost a block is fetched from the network, and an object whose Cloud Storage
bucket refuses bidi reads is read again from the same place with media GETs (the data
client reads that bucket so from then on). A credential the storage service refuses
(`AuthError`) is never retried here. A deadline is never retried
here: the reader has already waited as long as a read may. All of this belongs to
the data path, so it ends with it: the next open starts afresh.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial

import trio

from fusefs.cache.digest import Digest
from fusefs.cache.entry import EntryError
from fusefs.cache.source import CachedSource, FileCache
from fusefs.data.client import DataClient
from fusefs.data.errors import (
    BidiRefusedError,
    DataError,
    DeadlineError,
    GoneError,
    TransientError,
)
from fusefs.data.location import BadLocation, parse_grpc_url
from fusefs.data.reader import FileReader
from fusefs.data.source import NO_SOURCE, RangeSource, SourceCounters
from fusefs.hub.client import HubError
from fusefs.hub.resolve import FileResolver, Resolution
from fusefs.vfs.tree import FileNode

log = logging.getLogger(__name__)

# What can go wrong while setting up a source: the hub, the location, the cache's disk.
SETUP_ERRORS = (HubError, DataError, ValueError, OSError, EntryError)
HEAD = 256 << 10  # asked for at open on a predicted stream: what a first read wants
RERESOLVE_INTERVAL = 60.0  # "gone" again sooner than this after resolving again: an error
FAILED_REGION_TTL = 60.0  # a region whose endpoint failed is skipped for this long


@dataclass(frozen=True)
class Services:
    """The mount-wide services every file's data path draws on."""

    resolver: FileResolver
    data: DataClient
    cache: FileCache | None = None


class DataPath:
    def __init__(
        self, file: FileNode, services: Services, resolution: Resolution, reader: FileReader
    ) -> None:
        self.file = file
        self.resolution = resolution
        self.reader = reader
        self.opened_at = time.monotonic()  # until the first byte is served; then 0
        self.bytes_read = 0  # across every source this file has had
        self.retired = SourceCounters()  # what the sources it no longer uses did
        self._services = services
        self._failed_regions: dict[str, float] = {}  # region -> skipped until (trio clock)
        self._reresolved_at = -math.inf
        self._switching = trio.Lock()

    @classmethod
    async def open(cls, file: FileNode, services: Services, *, cache: bool = True) -> DataPath:
        """Resolve `file` and open its source (through the disk cache unless `cache` is
        off); SETUP_ERRORS when that cannot be done."""
        if file.size == 0:
            # Nothing to read: no hub, no network, no cache entry.
            empty = services.data.reader(NO_SOURCE, 0, file.path)
            return cls(file, services, Resolution("empty", "", ""), empty)
        if not cache:
            services = Services(services.resolver, services.data)
        reader = await _sealed_reader(file, services)
        if reader is not None:
            # Whole and verified on local disk: no hub, no network for this file.
            assert isinstance(reader.source, CachedSource)
            resolution = Resolution("cache", "", "file://" + reader.source.path)
        else:
            f, snap = file.file, file.snapshot
            guess = services.resolver.predict(snap.repo, snap.commit, f.path)
            opened = await _open_on_guess(file, services, guess) if guess is not None else None
            if opened is not None:
                resolution, reader = opened
            else:
                resolution = await services.resolver.resolve(snap.repo, snap.commit, f.path)
                reader = await _reader(file, services, _network(file, services, resolution))
        return cls(file, services, resolution, reader)

    @property
    def cached(self) -> CachedSource | None:
        source = self.reader.source
        return source if isinstance(source, CachedSource) else None

    @property
    def counters(self) -> SourceCounters:
        """What every source of this data path did, the one in use included."""
        total = SourceCounters()
        total.add(self.retired)
        total.add(self.reader.source.counters)
        return total

    def pause(self) -> None:
        """No handle is open: the disk cache may evict the file meanwhile."""
        if (cached := self.cached) is not None:
            cached.pause()

    async def resume(self) -> None:
        """A handle is open again (after `pause`)."""
        if (cached := self.cached) is not None:
            await cached.resume()

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """The bytes at [offset, offset + size); DataError when no source can serve them."""
        reader = self.reader
        try:
            data = await reader.read(offset, size)
        except DataError as e:
            if isinstance(e, DeadlineError) or not await self._switch_source(reader, e):
                raise
            data = await self.reader.read(offset, size)
        self.bytes_read += len(data)
        return data

    def first_byte(self) -> float | None:
        """Seconds from open to the first byte served, once; None afterwards."""
        if not self.opened_at:
            return None
        elapsed, self.opened_at = time.monotonic() - self.opened_at, 0.0
        return elapsed

    def close(self) -> None:
        self.reader.close()

    async def _switch_source(self, failed: FileReader, error: DataError) -> bool:
        """After a failure the source could not recover from: True when there is a new
        reader to try (see the module docstring for what is tried)."""
        async with self._switching:
            if self.reader is not failed:
                return True  # another reader already switched
            res, now = self.resolution, trio.current_time()
            if isinstance(error, BidiRefusedError) and self._services.data.refuse_bidi(
                res.location
            ):
                return await self._reopen(failed)  # the same object, with media GETs
            if isinstance(error, GoneError) and res.source == "cache":
                pass  # a sealed file lost a block: fetch from the network from now on
            elif isinstance(error, GoneError) and now - self._reresolved_at > RERESOLVE_INTERVAL:
                self._reresolved_at = now
            elif isinstance(error, TransientError) and res.source not in ("cdn", "empty", "bucket"):
                self._failed_regions[res.region] = now + FAILED_REGION_TTL
            else:
                return False
            f = self.file.file
            skip = frozenset(r for r, until in self._failed_regions.items() if until > now)
            try:
                new = await self._services.resolver.resolve(
                    self.file.snapshot.repo, self.file.snapshot.commit, f.path, exclude=skip
                )
                reader = await _reader(
                    self.file, self._services, _network(self.file, self._services, new)
                )
            except SETUP_ERRORS as e:
                log.warning("%s: no other source after %s: %s", failed.name, error, e)
                return False
            log.warning(
                "%s: %s failed (%s); now %s", failed.name, describe(res), error, describe(new)
            )
            self._replace(failed, new, reader)
            return True

    async def _reopen(self, failed: FileReader) -> bool:
        """A new reader from the same resolution (the data client now reads it another way)."""
        try:
            reader = await _reader(
                self.file, self._services, _network(self.file, self._services, self.resolution)
            )
        except SETUP_ERRORS as e:
            log.warning("%s: cannot reopen: %s", failed.name, e)
            return False
        self._replace(failed, self.resolution, reader)
        return True

    def _replace(self, failed: FileReader, res: Resolution, reader: FileReader) -> None:
        failed.close()
        self.retired.add(failed.source.counters)
        self.resolution, self.reader = res, reader


def describe(res: Resolution) -> str:
    marker = f"{res.marker} " if res.marker.strip() else ""
    return f"{marker}via {res.source}" + (f" {res.region}" if res.region else "")


def _network(file: FileNode, services: Services, res: Resolution) -> RangeSource:
    """The network source of `file` at `res`, checking what the listing pinned."""
    f = file.file
    return services.data.open_source(res.location, f.size, crc32c=f.crc32c, md5=f.md5)


def _cache_key(file: FileNode, cache: FileCache) -> str:
    snap, f = file.snapshot, file.file
    return cache.key(Digest.of(f), f.size, snap.repo.key, snap.content_id(f), f.path)


async def _sealed_reader(file: FileNode, services: Services) -> FileReader | None:
    """A reader from the disk cache alone, when the file is sealed there."""
    cache, f = services.cache, file.file
    if cache is None or not cache.sealed(_cache_key(file, cache), f.size, Digest.of(f)):
        return None
    try:
        return await _reader(file, services, None)
    except (OSError, EntryError) as e:
        log.warning("%s: sealed in the cache but not readable (%s)", file.path, e)
        return None


async def _open_on_guess(
    file: FileNode, services: Services, guess: Resolution
) -> tuple[Resolution, FileReader] | None:
    """Open: the file's probe, and meanwhile its stream to the predicted location with
    its head asked for. The stream is kept only when the probe names that very object,
    and the store reads it at the generation the probe gave; no byte of it is served
    (or cached) before, since the open returns only then. None when the predicted
    object would not be read over a stream (nothing was started)."""
    f, snap = file.file, file.snapshot
    network = services.data.open_guess(guess.location, f.size)
    if network is None:
        return None
    probed: list[Resolution | Exception] = []

    async def probe() -> None:
        try:
            probed.append(await services.resolver.resolve(snap.repo, snap.commit, f.path))
        except SETUP_ERRORS as e:
            probed.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        reader = await _reader(file, services, network, trusted=False)
        reader.prefetch(0, HEAD)
    (outcome,) = probed
    if isinstance(outcome, Exception):
        reader.close()
        raise outcome
    if _same_object(outcome.location, guess.location) and network.confirm(
        parse_grpc_url(outcome.location).generation
    ):
        if isinstance(cached := reader.source, CachedSource):
            cached.trust()
        return outcome, reader
    log.info("%s: not where its repo's other files are; reopening", file.path)
    reader.close()
    return outcome, await _reader(file, services, _network(file, services, outcome))


def _same_object(location: str, guessed: str) -> bool:
    """Whether a probe's location names the guessed object (any generation), with no
    routing of its own."""
    try:
        found, guess = parse_grpc_url(location), parse_grpc_url(guessed)
    except BadLocation:
        return False
    return found.routing_token is None and (
        found.endpoint,
        found.bucket,
        found.object,
        found.tls,
    ) == (guess.endpoint, guess.bucket, guess.object, guess.tls)


async def _reader(
    file: FileNode, services: Services, network: RangeSource | None, *, trusted: bool = True
) -> FileReader:
    """A reader for this file over `network`, through the disk cache when there is one
    (storing nothing until trusted, see CachedSource). A cache that fails here costs the
    caching, never the read."""
    f, cache, data = file.file, services.cache, services.data
    if cache is None:
        assert network is not None  # a disk-only reader needs a cache
        return data.reader(network, f.size, file.path)
    key = _cache_key(file, cache)
    try:
        # Opening an entry may have to make room (evict), which walks the directory.
        source = await trio.to_thread.run_sync(
            partial(cache.source, key, f.size, Digest.of(f), network, trusted=trusted)
        )
    except (OSError, EntryError) as e:
        if network is None:
            raise
        log.warning("%s: not cached (%s)", file.path, e)
        return data.reader(network, f.size, file.path)
    except BaseException:
        if network is not None:
            network.close()
        raise
    return data.reader(source, f.size, file.path, align=source.block_size)
