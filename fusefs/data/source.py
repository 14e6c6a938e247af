"""What a reader needs of a transport: the `RangeSource` protocol and its counters.

A transport (one bidi stream, ranged HTTP GETs, the disk cache in front of
either) fetches the byte ranges a `FileReader` submits and feeds them from its
own threads or tasks. Status and metrics read its `counters`; nothing probes a
source for attributes it may not have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Protocol

from fusefs.data.ranges import RangeRead

Waker = Callable[[Callable[[], None]], None]
"""Hands a callback to the trio loop from any thread (see `ranges.trio_waker`)."""


@dataclass
class SourceCounters:
    """What one transport did; bumped from its own thread, read by status and metrics."""

    opens: int = 0  # streams opened (gRPC)
    reopens: int = 0  # streams reopened after a break
    redirects: int = 0  # reopens that followed a redirect
    bad_chunks: int = 0  # chunks refused (CRC, offsets, framing)
    requests: int = 0  # ranged HTTP requests sent
    retries: int = 0  # ranged HTTP requests sent again after a failure
    refusals: int = 0  # streams refused by a full store (RESOURCE_EXHAUSTED), asked again
    bytes: int = 0  # received from the network

    def add(self, other: SourceCounters) -> None:
        """Fold another transport's counts into these (a closed one's, for totals)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class RangeSource(Protocol):
    """Where a file's ranges are fetched from."""

    @property
    def progress(self) -> int:
        """Bytes received so far: any change means the source is alive."""
        ...

    @property
    def counters(self) -> SourceCounters: ...

    def submit(self, ranges: list[RangeRead]) -> None: ...

    def abandon(self, rr: RangeRead) -> None: ...

    def close(self) -> None: ...


class GuessedSource(RangeSource, Protocol):
    """A source opened on a predicted location, before the file's probe answered."""

    def confirm(self, generation: int) -> bool:
        """The probe named this very object at `generation`: True when the source reads
        that generation (then it never serves another), False when it does not."""
        ...


class NoSource:
    """The source of a file with no bytes: a reader never asks it for anything."""

    counters = SourceCounters()  # never bumped
    progress = 0

    def submit(self, ranges: list[RangeRead]) -> None:
        raise ValueError("an empty file has no ranges")

    def abandon(self, rr: RangeRead) -> None:
        pass

    def close(self) -> None:
        pass


NO_SOURCE = NoSource()
