"""Faults the store injects on request, for tests. Off unless `serve --faults`."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

KINDS = {
    "break",
    "delay",
    "unavailable",
    "redirect",
    "corrupt",
    "hub_error",
    "cdn_forbidden",
    # BidiReadObject answered UNIMPLEMENTED (or `code`: FAILED_PRECONDITION), as by a
    # storage service that does not serve bidi reads for a bucket
    "bidi_refused",
}


@dataclass
class Fault:
    kind: str
    count: int = 1
    region: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


class FaultPlan:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()

    def add(self, spec: dict[str, Any]) -> Fault:
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(KINDS)}")
        count = spec.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        params = {k: v for k, v in spec.items() if k not in ("kind", "count", "region")}
        fault = Fault(kind, count, spec.get("region"), params)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"kind": f.kind, "count": f.count, "region": f.region, **f.params}
                for f in self._faults
            ]

    def take(self, kind: str, region: str | None = None) -> Fault | None:
        """Use up one occurrence of the first matching fault."""
        with self._lock:
            for f in self._faults:
                if f.kind == kind and (f.region is None or f.region == region):
                    f.count -= 1
                    if f.count == 0:
                        self._faults.remove(f)
                    self.injected[kind] += 1
                    return f
        return None
