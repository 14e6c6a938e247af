"""Where a file is read from: decided once per file, at open.

Order of preference: an internal endpoint in our own region (`local`), then an
internal endpoint of each peer region in the configured order (`peer`), then
the public path (`cdn`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fusefs.data.location import BadLocation, is_internal, location_kind
from fusefs.hub.client import HubClient, HubError, RepoId

log = logging.getLogger(__name__)

MARKERS = {"local": "⚡", "peer": "⇄", "cdn": " "}


@dataclass(frozen=True)
class Resolution:
    source: str  # local | peer | cdn
    region: str  # the region whose endpoint serves it ("" for the public path)
    location: str

    @property
    def marker(self) -> str:
        return MARKERS[self.source]


class ResolveError(HubError):
    pass


class Resolver:
    def __init__(self, hub: HubClient, region: str | None, peers: tuple[str, ...] = ()):
        self.hub = hub
        self.region = region
        self.peers = peers
        self.probes = 0

    async def resolve(self, repo: RepoId, commit: str, path: str) -> Resolution:
        candidates = [("local", r) for r in (self.region,) if r]
        candidates += [("peer", r) for r in self.peers]
        public: str | None = None
        for source, region in candidates + [("cdn", None)]:
            self.probes += 1
            answer = await self.hub.ask_location(repo, commit, path, region)
            if answer.location is None:
                continue
            try:
                location_kind(answer.location)
            except BadLocation as e:
                log.warning("%s/%s: %s", repo, path, e)
                continue
            if region and is_internal(answer.location):
                return self._chosen(repo, path, Resolution(source, region, answer.location))
            public = public or answer.location
            if region is None:
                break
        if public is None:
            raise ResolveError(f"{repo}/{path}: the hub gave no usable location")
        return self._chosen(repo, path, Resolution("cdn", "", public))

    @staticmethod
    def _chosen(repo: RepoId, path: str, res: Resolution) -> Resolution:
        log.info("%s %s/%s via %s%s", res.marker, repo, path, res.source,
                 f" ({res.region})" if res.region else "")
        return res
