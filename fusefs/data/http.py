"""Ranged HTTP GETs: the data path for CDN and OSS locations.

Each range is one `Range:` GET on a pooled httpx client (HTTP/2 where the
server offers it over TLS). The answer must be `206` with exactly the
`Content-Range` asked for; the body is fed to the range as it streams in. A
broken transfer resumes from the first missing byte, with the same bounded
retries as the bidi stream; `403`/`404` mean the URL expired or the file is
gone, which the caller answers by resolving the file again.
"""

from __future__ import annotations

import logging
import re

import httpx
import trio

from fusefs.data.bidi import StreamLimits
from fusefs.data.errors import DataError, GoneError, ProtocolError, TransientError
from fusefs.data.ranges import RangeRead
from fusefs.data.source import SourceCounters

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class HttpRangeSource:
    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        size: int,
        nursery: trio.Nursery,
        limits: StreamLimits = StreamLimits(),
    ):
        self.url = url
        self.size = size
        self.limits = limits
        self.counters = SourceCounters()
        self._http = http
        self._nursery = nursery
        self._scopes: dict[RangeRead, trio.CancelScope] = {}
        self._closed = False

    @property
    def progress(self) -> int:
        return self.counters.bytes

    def submit(self, ranges: list[RangeRead]) -> None:
        if self._closed:
            raise DataError(f"{self.url}: closed")
        for rr in ranges:
            scope = trio.CancelScope()
            self._scopes[rr] = scope
            self._nursery.start_soon(self._fetch, rr, scope)

    def abandon(self, rr: RangeRead) -> None:
        scope = self._scopes.pop(rr, None)
        if scope is not None:
            scope.cancel()

    def close(self) -> None:
        self._closed = True
        for rr, scope in list(self._scopes.items()):
            scope.cancel()
            rr.fail(DataError(f"{self.url}: closed"))
        self._scopes.clear()

    async def _fetch(self, rr: RangeRead, scope: trio.CancelScope) -> None:
        failures = 0
        start = trio.current_time()
        with scope:
            try:
                while not rr.settled:
                    try:
                        await self._get(rr)
                        failures = 0
                    except TransientError as e:
                        failures += 1
                        elapsed = trio.current_time() - start
                        if (
                            failures > self.limits.max_attempts
                            or elapsed > self.limits.retry_window
                        ):
                            rr.fail(e)
                            return
                        self.counters.retries += 1
                        delay = min(
                            self.limits.backoff_initial * 2 ** (failures - 1),
                            self.limits.backoff_max,
                        )
                        log.info("%s: %s; retrying in %.2fs", self.url, e, delay)
                        await trio.sleep(delay)
            except DataError as e:
                rr.fail(e)
            finally:
                self._scopes.pop(rr, None)

    # Hooks for a source that speaks a protocol over these GETs (gcs_media.py).

    async def _request_headers(self) -> dict[str, str]:
        """Headers to send besides Range (credentials, for instance)."""
        return {}

    def _check_response(self, response: httpx.Response, first: int, last: int) -> None:
        """Checks before the generic ones (status, Content-Range); raise DataError to refuse."""

    async def _consume(self, response: httpx.Response, rr: RangeRead, first: int) -> None:
        """Feed the body to `rr` as it streams in."""
        pos = first
        async for data in response.aiter_bytes():
            self.counters.bytes += len(data)
            rr.feed(pos, data)  # ProtocolError on anything past what was asked
            pos += len(data)

    async def _get(self, rr: RangeRead) -> None:
        first, last = rr.next_offset, rr.end - 1
        self.counters.requests += 1
        try:
            headers = {**await self._request_headers(), "Range": f"bytes={first}-{last}"}
            async with self._http.stream("GET", self.url, headers=headers) as response:
                self._check_response(response, first, last)
                if response.status_code in (403, 404, 410):
                    raise GoneError(f"{self.url}: HTTP {response.status_code}")
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(f"{self.url}: HTTP {response.status_code}")
                if response.status_code != 206:
                    raise DataError(f"{self.url}: HTTP {response.status_code} to a range request")
                _check_content_range(
                    response.headers.get("content-range", ""), first, last, self.size
                )
                await self._consume(response, rr, first)
        except httpx.HTTPError as e:
            raise TransientError(f"{self.url}: {e.__class__.__name__}: {e}") from None
        if not rr.done:
            raise TransientError(f"{self.url}: body ended at {rr.next_offset}, before {rr.end}")


def _check_content_range(value: str, first: int, last: int, size: int) -> None:
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        raise ProtocolError(f"bad Content-Range {value!r}")
    a, b, total = int(match[1]), int(match[2]), match[3]
    if (a, b) != (first, last) or (total != "*" and int(total) != size):
        raise ProtocolError(f"Content-Range {value!r} does not match bytes {first}-{last}/{size}")
