"""Ranged JSON-API media reads of a Cloud Storage object: the data path where the
service refuses BidiReadObject for a bucket.

Each range is one `GET …/download/storage/v1/b/{bucket}/o/{object}?alt=media&generation=G`
with `Range` (the ranged-GET machinery of `http.py`), carrying the storage token. Beyond
what any ranged GET must satisfy (206, the exact Content-Range), an answer must be of
the pinned generation (`x-goog-generation`) and, where it names the object's hashes
(`x-goog-hash`, always of the whole object), the hashes the listing pinned: a changed
object is never served to a pinned snapshot. A whole-object read of a small object is
checked against its CRC32C before a byte of it reaches a reader.

A 401 asks the token source for a new token once; a 403 is an `AuthError` (the
credentials do not allow reading this object); a 404 means the pinned generation is
gone (`GoneError`).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
from urllib.parse import quote

import crc32c
import grpc

from fusefs.data.bidi import StreamLimits
from fusefs.data.errors import AuthError, ChecksumError, DataError, GoneError, TransientError
from fusefs.data.gcs_auth import GcsAuth, JsonEndpoint
from fusefs.data.http import HttpRangeSource, RangeFetch, ResponseHead
from fusefs.data.http_conn import ConnectionPool
from fusefs.data.http_workers import RangeWorkers
from fusefs.data.location import GrpcObject

log = logging.getLogger(__name__)

# gRPC answers that mean "no bidi reads here", to be met by reading the same object
# with media GETs. UNIMPLEMENTED is what a server without the method says. No public
# statement names the status Cloud Storage gives for a bucket that does not support
# BidiReadObject; FAILED_PRECONDITION is counted too because our requests carry no
# precondition it could be about.
BIDI_REFUSED = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION})
WHOLE_CHECK_MAX = 8 << 20  # whole-object reads up to this size are held until checked


def bidi_refused(code: grpc.StatusCode) -> bool:
    """Whether a BidiReadObject status means this bucket is to be read with media GETs."""
    return code in BIDI_REFUSED


def object_path(bucket: str, name: str) -> str:
    """`/b/{bucket}/o/{object}` with the object name as one percent-encoded segment."""
    return f"/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def media_url(endpoint: JsonEndpoint, bucket: str, name: str, generation: int) -> str:
    query = f"alt=media&generation={generation}" if generation else "alt=media"
    return f"{endpoint.base}/download/storage/v1{object_path(bucket, name)}?{query}"


def parse_hashes(values: list[str]) -> dict[str, bytes]:
    """`x-goog-hash` values (`crc32c=<b64>,md5=<b64>`, in one header or several) as
    {"crc32c": 4 bytes, "md5": 16 bytes}; ValueError on anything malformed."""
    out: dict[str, bytes] = {}
    for value in values:
        for item in value.split(","):
            name, sep, encoded = item.strip().partition("=")
            if not sep:
                raise ValueError(f"bad x-goog-hash item {item.strip()[:40]!r}")
            try:
                digest = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"bad base64 in x-goog-hash {name}") from None
            expected = {"crc32c": 4, "md5": 16}.get(name.lower())
            if expected is not None:
                if len(digest) != expected:
                    raise ValueError(f"x-goog-hash {name} of {len(digest)} bytes")
                out[name.lower()] = digest
    return out


class GcsMediaSource(HttpRangeSource):
    """Ranges of one pinned object generation over JSON-API media GETs."""

    def __init__(
        self,
        auth: GcsAuth,
        target: GrpcObject,
        size: int,
        workers: RangeWorkers,
        pool: ConnectionPool,
        limits: StreamLimits = StreamLimits(),
        *,
        crc32c: int | None = None,
        md5: str | None = None,  # hex
    ):
        url = media_url(auth.endpoints.json, target.bucket, target.object, target.generation)
        super().__init__(url, size, workers, pool, limits)
        self.target = target
        self._auth = auth
        self._crc32c = crc32c
        self._md5 = bytes.fromhex(md5) if md5 else None

    def _request_headers(self) -> dict[str, str]:
        return self._auth.json_headers_blocking(self.url)

    def _check_response(self, head: ResponseHead, first: int, last: int) -> None:
        name, status = self.target.object, head.status
        sent = head.sent.get("authorization", "").removeprefix("Bearer ")
        if status == 401:
            if sent and self._auth.tokens.reject(sent):
                raise TransientError(f"{name}: token refused (HTTP 401); asking for a new one")
            raise AuthError(f"{name}: the storage service refused the credentials (HTTP 401)")
        if status == 403:
            raise AuthError(f"{name}: permission denied (HTTP 403)")
        if status not in (200, 206):
            return  # the generic checks decide
        if sent:
            self._auth.tokens.accepted(sent)  # a later 401 of it is worth a new token
        headers = head.headers
        generation = headers.get("x-goog-generation", "")
        if not generation.isdigit():
            raise DataError(f"{name}: media answer without x-goog-generation")
        if self.target.generation and int(generation) != self.target.generation:
            raise GoneError(
                f"{name}: generation {generation} served, pinned {self.target.generation}"
            )
        stored = headers.get("x-goog-stored-content-encoding", "identity").lower()
        coding = headers.get("content-encoding", "identity").lower()
        if stored != "identity" or coding != "identity":
            raise DataError(f"{name}: stored with content encoding {stored!r}: not supported")
        try:
            hashes = parse_hashes(headers.get_all("x-goog-hash") or [])
        except ValueError as e:
            raise DataError(f"{name}: {e}") from None
        pinned = {"crc32c": _crc_bytes(self._crc32c), "md5": self._md5}
        for kind, digest in hashes.items():
            want = pinned.get(kind)
            if want is not None and digest != want:
                raise GoneError(f"{name}: the object's {kind} is not the pinned one (changed)")
        if self._crc32c is None and "crc32c" in hashes:
            self._crc32c = int.from_bytes(hashes["crc32c"], "big")

    def _consume(self, job: RangeFetch, response: http.client.HTTPResponse, first: int) -> None:
        rr = job.rr
        whole = first == 0 and rr.end == self.size
        if not whole or self._crc32c is None or self.size > WHOLE_CHECK_MAX:
            super()._consume(job, response, first)
            return
        view = self._receive(job, response, 0)  # held until checked: no step is fed
        if crc32c.crc32c(view) != self._crc32c:
            self._count("bad_chunks")
            raise ChecksumError(f"{self.target.object}: CRC32C of the whole object differs")
        rr.feed(0, view)


def _crc_bytes(value: int | None) -> bytes | None:
    return None if value is None else value.to_bytes(4, "big")
