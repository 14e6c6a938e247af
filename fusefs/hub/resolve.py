"""Where a file is read from: decided once per file, at open.

Order of preference: an internal endpoint in our own region (`local`), then an
internal endpoint of each peer region in the configured order (`peer`), then
the public path (`cdn`). A probe is one HEAD of the file's download URL with the
region header, redirects not followed.

Probing every region for every file would flood the hub when a large repo is
opened, so (keys always include the commit):

* identical probes in flight at once are made once (single flight);
* the region that won for a repo@commit is probed first for the repo's other
  files, and while the first file of a repo is being resolved, the others wait
  for its answer instead of walking every region themselves — N files and P
  peers cost about N + P probes; every file is still confirmed by its own probe;
* a walk where every region missed is remembered only briefly (`miss_ttl`);
  a walk with a transient failure (timeout, 5xx, refused) is not remembered;
* an inline `200` (a small file served by the hub itself) decides nothing for
  the repo's other files.

What a winning internal answer looked like is kept with the winner, for the pinned
commit: `predict` names where another file of the repo most likely is (same endpoint
and bucket, objects named the same way), so that its stream can be opened while its
own probe runs. A prediction is only ever a guess to confirm: the probe decides.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

import trio

from fusefs.data.location import BadLocation, GrpcObject, is_internal, location_kind, parse_grpc_url
from fusefs.hub.client import Answer, HubError, RepoId

log = logging.getLogger(__name__)

MARKERS = {"local": "⚡", "peer": "⇄", "cdn": " ", "cache": "●", "empty": " ", "bucket": "☁"}
_CDN = ""  # the winner value meaning "no region had it internally"


@dataclass(frozen=True)
class Resolution:
    # local | peer | cdn | cache (whole and verified on local disk) | empty | bucket (the
    # object itself, in the Cloud Storage bucket a mount reads)
    source: str
    region: str  # the region whose endpoint serves it ("" for the public path)
    location: str

    @property
    def marker(self) -> str:
        return MARKERS[self.source]


class ResolveError(HubError):
    pass


@dataclass(frozen=True)
class _Naming:
    """How the winning region names a repo's objects: the object of one file, minus its path."""

    source: str
    region: str
    target: GrpcObject
    prefix: str  # the object name of every file is prefix + its path

    @classmethod
    def learn(cls, res: Resolution, path: str) -> _Naming | None:
        try:
            target = parse_grpc_url(res.location)
        except BadLocation:
            return None  # http(s) locations may be signed per file: nothing to predict
        if not target.object.endswith(path):
            return None
        prefix = target.object[: len(target.object) - len(path)]
        if prefix and not prefix.endswith("/"):
            return None
        return cls(res.source, res.region, target, prefix)

    def predict(self, path: str) -> Resolution:
        t = self.target
        guess = GrpcObject(t.endpoint, t.bucket, self.prefix + path, generation=0, tls=t.tls)
        return Resolution(self.source, self.region, guess.url())


@dataclass
class _Winner:
    region: str  # a region name, or _CDN
    expires: float  # monotonic time; inf for an internal winner
    naming: _Naming | None = None  # for an internal winner with a grpc location


_ProbeKey = tuple[RepoId, str, str, str | None]  # repo, commit, path, region


@dataclass
class _Flight:
    """One probe in flight, and what it found, for the identical probes that wait on it."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None  # None: it failed transiently (or was cancelled)
    missing: ResolveError | None = None  # the file does not exist at that commit


class Prober(Protocol):
    """What resolution asks of the hub (HubClient; tests script it)."""

    def download_url(self, repo: RepoId, commit: str, path: str) -> str: ...

    async def ask_location(
        self, repo: RepoId, commit: str, path: str, region: str | None
    ) -> Answer: ...


class FileResolver(Protocol):
    """Where a file's data path reads it from (`Resolver` for a hub, probing regions;
    `fusefs.hub.gcs.BucketResolver` for a bucket, whose objects are where they are)."""

    region: str | None
    peers: tuple[str, ...]
    probes: Counter[str]

    async def resolve(
        self, repo: RepoId, commit: str, path: str, *, exclude: frozenset[str] = frozenset()
    ) -> Resolution: ...

    def predict(self, repo: RepoId, commit: str, path: str) -> Resolution | None: ...


class Resolver:
    def __init__(
        self,
        hub: Prober,
        region: str | None,
        peers: tuple[str, ...] = (),
        *,
        miss_ttl: float = 60.0,
        probe_attempts: int = 3,
    ):
        self.hub = hub
        self.region = region
        self.peers = tuple(p for p in peers if p != region)
        self.miss_ttl = miss_ttl
        self.probe_attempts = probe_attempts
        self.probes: Counter[str] = Counter()  # by outcome
        self._winners: dict[tuple[RepoId, str], _Winner] = {}
        self._walking: dict[tuple[RepoId, str], trio.Event] = {}
        self._inflight: dict[_ProbeKey, _Flight] = {}

    @property
    def candidates(self) -> list[tuple[str, str | None]]:
        """(source, region) in the order they are probed."""
        local: list[tuple[str, str | None]] = [("local", self.region)] if self.region else []
        return local + [("peer", p) for p in self.peers]

    async def resolve(
        self, repo: RepoId, commit: str, path: str, *, exclude: frozenset[str] = frozenset()
    ) -> Resolution:
        """Where to read `path` from, skipping regions in `exclude` (they failed)."""
        key = (repo, commit)
        while (walking := self._walking.get(key)) is not None and self._winner(key) is None:
            await walking.wait()
        winner = self._winner(key)
        leader = winner is None and key not in self._walking
        if leader:
            self._walking[key] = trio.Event()
        try:
            res, conclusive = await self._walk(repo, commit, path, winner, exclude)
        finally:
            if leader:
                self._walking.pop(key).set()
        if conclusive and not exclude:
            if res.source != "cdn":
                if winner is None or winner.region != res.region or winner.naming is None:
                    naming = _Naming.learn(res, path)
                    self._winners[key] = _Winner(res.region, float("inf"), naming)
            elif winner is None or winner.region != _CDN:
                self._winners[key] = _Winner(_CDN, trio.current_time() + self.miss_ttl)
        # One line when a repo's files start coming from somewhere, not one per file.
        known = winner is not None and winner.region == (res.region or _CDN)
        log.log(
            logging.DEBUG if known and not exclude else logging.INFO,
            "%s %s/%s via %s%s",
            res.marker,
            repo,
            path,
            res.source,
            f" ({res.region})" if res.region else "",
        )
        return res

    def predict(self, repo: RepoId, commit: str, path: str) -> Resolution | None:
        """Where `path` most likely is, when the repo's winning region is known and names
        its objects predictably (its generation unknown: 0); else None. A guess: only
        `resolve` says where a file is."""
        winner = self._winner((repo, commit))
        if winner is None or winner.naming is None:
            return None
        return winner.naming.predict(path)

    def _winner(self, key: tuple[RepoId, str]) -> _Winner | None:
        winner = self._winners.get(key)
        if winner is not None and winner.expires < trio.current_time():
            del self._winners[key]
            return None
        return winner

    async def _walk(
        self, repo: RepoId, commit: str, path: str, winner: _Winner | None, exclude: frozenset[str]
    ) -> tuple[Resolution, bool]:
        """Probe in order; (resolution, whether every probe gave a clear answer)."""
        order = [c for c in self.candidates if c[1] not in exclude]
        if winner is not None and winner.region != _CDN:
            order.sort(key=lambda c: c[1] != winner.region)  # stable: the rest keep their order
        elif winner is not None and order:
            order = order[:1]  # recently all missed: one probe for the public location
        if not order:
            order = [("cdn", None)]
        public: str | None = None
        conclusive = True
        for source, region in order:
            answer = await self._probe(repo, commit, path, region)
            if answer is None:
                conclusive = False
                continue
            if answer.status == 200:
                # Served inline by the hub: fine for this file, says nothing of the others.
                url = self.hub.download_url(repo, commit, path)
                return Resolution("cdn", "", url), False
            if answer.location is None:
                conclusive = False
                continue
            if region and is_internal(answer.location):
                return Resolution(source, region, answer.location), conclusive
            public = public or answer.location
        if public is None:
            raise ResolveError(f"{repo}/{path}: the hub gave no usable location")
        return Resolution("cdn", "", public), conclusive

    async def _probe(
        self, repo: RepoId, commit: str, path: str, region: str | None
    ) -> Answer | None:
        """One probe (shared with identical ones in flight); None if it failed transiently."""
        key = (repo, commit, path, region)
        if (shared := self._inflight.get(key)) is not None:
            await shared.done.wait()
            if shared.missing is not None:
                raise shared.missing  # the leader's 404 is every follower's 404
            return shared.answer
        flight = _Flight()
        self._inflight[key] = flight
        try:
            flight.answer = await self._probe_with_retries(repo, commit, path, region)
            return flight.answer
        except ResolveError as e:
            flight.missing = e
            raise
        finally:
            del self._inflight[key]
            flight.done.set()

    async def _probe_with_retries(
        self, repo: RepoId, commit: str, path: str, region: str | None
    ) -> Answer | None:
        for attempt in range(self.probe_attempts):
            if attempt:
                await trio.sleep(0.05 * 2**attempt)
            try:
                answer = await self.hub.ask_location(repo, commit, path, region)
            except HubError as e:
                self.probes["error"] += 1
                log.info("probe %s/%s region=%s failed: %s", repo, path, region or "-", e)
                continue
            if answer.status >= 500 or answer.status == 429:
                self.probes["error"] += 1
                continue
            if answer.status == 404:
                self.probes["missing"] += 1
                raise ResolveError(f"{repo}/{path}: not found at {commit[:12]}")
            if answer.location is not None:
                try:
                    location_kind(answer.location)
                except BadLocation as e:
                    self.probes["refused"] += 1
                    log.warning("%s/%s: %s", repo, path, e)
                    return Answer(answer.status, None)
                self.probes["internal" if is_internal(answer.location) else "public"] += 1
            else:
                self.probes["inline" if answer.status == 200 else "other"] += 1
            return answer
        return None
