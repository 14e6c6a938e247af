"""Regions that live in Cloud Storage buckets: where such a region has a file.

A region of the topology may keep its replica in a bucket (`gcs = "gs://BUCKET/PREFIX"`)
instead of behind a gRPC listener of this store, under the object names of the
store's own data plane: `PREFIX/<repo key>/<path>`. A probe for such a region (from a
client that reads `grpc://` locations) is answered with the object itself on the
storage gRPC endpoint, `grpcs://storage.googleapis.com:443/BUCKET/<name>?generation=G`
(or the region's `gcs_grpc_endpoint`), which the client reads with its own
credentials. The store never reads the bucket's bytes; it lists the bucket through
the JSON API with credentials of its own (Application Default Credentials, looked for
on first use; none with STORAGE_EMULATOR_HOST), repo by repo:

* a repo's listing is kept and used while younger than `--rescan-interval`; then the
  next probe has it listed again, once however many probes ask (they wait for it
  until it has taken `WAIT` seconds; a probe that cannot be answered by then is told
  503 at once, which a client takes as a transient miss of this region and goes on
  to the next);
* an object is this region's copy of a file only when it is that very file: the
  size and the MD5 (the CRC32C when the object has no MD5) the store computed of it.
  Otherwise — missing, stale, another file — the region does not have the file, and
  the probe names the CDN, as for a region that does not hold the repo;
* a listing that failed is not asked again for `FAILURE_TTL` seconds (one log line
  per region and reason);
* listings hold at most `--index-files` objects in all (least recently used repos go
  first) and `MAX_REPO_OBJECTS` per repo.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType

import google.auth.credentials
import trio

from fusefs.data.gcs_auth import GcsAuth, GcsEndpoints, TokenSource
from fusefs.hub.client import HubError, RepoId
from fusefs.hub.gcs import MAX_REPO_OBJECTS, GcsCatalog, GcsObject
from fusefs.server.limits import Limits
from fusefs.server.store import FileSums, StoredFile
from fusefs.server.topology import Region

log = logging.getLogger(__name__)

WAIT = 2.0  # seconds a probe waits for a listing (a client's probe has 3 in all)
FAILURE_TTL = 5.0  # seconds a failed listing is not asked again


class Unavailable(Exception):
    """The bucket cannot say now whether it has the file; the message is one line."""


@dataclass
class _Listing:
    objects: dict[str, GcsObject]  # by path in the repo
    at: float  # trio clock: when it was asked for


_Key = tuple[str, RepoId]  # (region, repo)


class BucketRegions:
    """The bucket-backed regions of a topology (see the module docstring); use inside
    `async with`, on the trio thread of the HTTP side."""

    def __init__(
        self,
        regions: Iterable[Region],
        limits: Limits,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """GcsSetupError (one line) when a region's endpoints cannot be used."""
        self.limits = limits
        self.listings = 0  # asked for
        self.failures = 0  # listings that failed
        self._catalogs: dict[str, GcsCatalog] = {}
        shared: TokenSource | None = None  # one set of credentials for every bucket
        for region in regions:
            if region.bucket is None:
                continue
            where = region.bucket
            endpoints = GcsEndpoints.resolve(where.json_endpoint, where.grpc_endpoint, environ)
            if endpoints.anonymous:
                anonymous = google.auth.credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]
                tokens = TokenSource(anonymous)
            else:
                shared = tokens = shared or TokenSource.deferred()
            self._catalogs[region.name] = GcsCatalog(where.url, GcsAuth(endpoints, tokens))
        self._listings: OrderedDict[_Key, _Listing] = OrderedDict()
        self._held = 0  # objects in self._listings
        self._failed: dict[_Key, tuple[float, str]] = {}  # until (trio clock), why
        self._told: dict[str, str] = {}  # region -> the failure last logged
        self._pending: dict[_Key, tuple[trio.Event, float]] = {}  # done, started
        self._nursery: trio.Nursery | None = None
        self._stack = AsyncExitStack()

    def __bool__(self) -> bool:
        return bool(self._catalogs)

    async def __aenter__(self) -> BucketRegions:
        for catalog in self._catalogs.values():
            await self._stack.enter_async_context(catalog)  # closed last
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # listings in flight end with the store
        await self._stack.__aexit__(exc_type, exc, tb)

    async def locate(
        self, region: Region, repo: RepoId, path: str, f: StoredFile, sums: FileSums
    ) -> str | None:
        """The location of `region`'s copy of the file (`path` of `repo`, as the store
        has it: `f`, `sums`); None when the region's bucket does not have it.
        Unavailable when the bucket cannot be listed now."""
        catalog = self._catalogs[region.name]
        listing = await self._listing(region.name, repo)
        obj = listing.objects.get(path)
        if obj is None or not _same(obj, f, sums):
            return None
        return catalog.object_location(obj.name, obj.generation)

    async def _listing(self, region: str, repo: RepoId) -> _Listing:
        key, asked = (region, repo), trio.current_time()
        known = self._listings.get(key)
        if known is not None and asked - known.at < self.limits.rescan_interval:
            self._listings.move_to_end(key)
            return known
        failed = self._failed.get(key)
        if failed is not None and failed[0] > asked:
            raise Unavailable(failed[1])
        pending = self._pending.get(key)
        if pending is None:
            assert self._nursery is not None, "BucketRegions used outside `async with`"
            pending = self._pending[key] = (trio.Event(), asked)
            self._nursery.start_soon(self._list, key, pending[0])
        done, started = pending
        with trio.move_on_after(max(0.0, started + WAIT - asked)):  # a slow listing
            await done.wait()  # holds up its first probes, not every one
        known = self._listings.get(key)
        if known is not None and known.at >= started:
            return known  # listed for this probe
        failed = self._failed.get(key)
        if failed is not None:
            raise Unavailable(failed[1])
        raise Unavailable(f"no listing of {repo} from region {region} within {WAIT:g} s")

    async def _list(self, key: _Key, done: trio.Event) -> None:
        region, repo = key
        catalog = self._catalogs[region]
        prefix = catalog.repo_prefix(repo)
        at = trio.current_time()
        self.listings += 1
        try:
            objects: dict[str, GcsObject] = {}
            async for obj in catalog.objects(prefix):
                if len(objects) >= MAX_REPO_OBJECTS:
                    raise HubError(f"more than {MAX_REPO_OBJECTS} objects under {prefix}")
                objects[obj.name[len(prefix) :]] = obj
        except HubError as e:
            self.failures += 1
            why = f"{catalog.url}: {e}"
            self._failed[key] = (trio.current_time() + FAILURE_TTL, why)
            self._drop(key)
            if self._told.get(region) != why:
                self._told[region] = why
                log.warning("region %s: cannot list %s (%s)", region, repo, why)
        else:
            self._failed.pop(key, None)
            if self._told.pop(region, None) is not None:
                log.info("region %s: its bucket lists again", region)
            self._drop(key)
            self._listings[key] = _Listing(objects, at)
            self._held += len(objects)
            while self._held > self.limits.index_files and len(self._listings) > 1:
                self._drop(next(iter(self._listings)))  # least recently used first
        finally:
            del self._pending[key]
            done.set()

    def _drop(self, key: _Key) -> None:
        gone = self._listings.pop(key, None)
        if gone is not None:
            self._held -= len(gone.objects)


def _same(obj: GcsObject, f: StoredFile, sums: FileSums) -> bool:
    """Whether a bucket's object is this very file of the store."""
    if obj.size != f.size:
        return False
    if obj.md5 is not None:
        return obj.md5 == sums.md5.hex()
    return obj.crc32c is not None and obj.crc32c == sums.crc32c
