"""What the store has served, for tests, benchmarks and operators (`GET /admin/stats`)."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.streams_active: Counter[str] = Counter()  # open right now (never reset)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.probes: Counter[str] = Counter()  # by region header ("" for none)
            self.streams_opened: Counter[str] = Counter()
            # the most streams open at once since the last reset (by region)
            self.streams_peak: Counter[str] = Counter(self.streams_active)
            self.grpc_bytes: Counter[str] = Counter()
            self.ranges: Counter[str] = Counter()
            self.counts: Counter[str] = Counter()  # hub_requests, cdn_requests, cdn_bytes
            # the CDN route serving as a region's internal path (`?region=R`), by region
            self.internal_http_requests: Counter[str] = Counter()
            self.internal_http_bytes: Counter[str] = Counter()

    def add(self, counter: str, key: str, n: int = 1) -> None:
        with self._lock:
            getattr(self, counter)[key] += n

    def stream_begins(self, region: str) -> None:
        with self._lock:
            self.streams_active[region] += 1
            self.streams_peak[region] = max(self.streams_peak[region], self.streams_active[region])

    def stream_ends(self, region: str) -> None:
        with self._lock:
            self.streams_active[region] -= 1

    def view(self, faults_injected: dict[str, int]) -> dict[str, object]:
        with self._lock:
            return {
                "probes": dict(self.probes),
                "streams_opened": dict(self.streams_opened),
                "streams_active": {k: v for k, v in self.streams_active.items() if v},
                "streams_peak": dict(self.streams_peak),
                # refused: past --max-streams; unauthenticated: --require-token said no
                "streams_refused": self.counts["streams_refused"],
                "streams_unauthenticated": self.counts["grpc_refused"],
                "grpc_bytes": dict(self.grpc_bytes),
                "ranges": dict(self.ranges),
                "hub_requests": self.counts["hub_requests"],
                "cdn_requests": self.counts["cdn_requests"],
                "cdn_bytes": self.counts["cdn_bytes"],
                "internal_http": {
                    "requests": dict(self.internal_http_requests),
                    "bytes": dict(self.internal_http_bytes),
                },
                "requests_with_credentials": {
                    "api": self.counts["auth_api"],
                    "cdn": self.counts["auth_cdn"],
                    "gcs": self.counts["auth_gcs"],
                },
                "gcs": {
                    "requests": self.counts["gcs_requests"],
                    "refused": self.counts["gcs_refused"],
                    "bytes": self.counts["gcs_bytes"],
                },
                "faults_injected": dict(faults_injected),
            }
