"""Where a file's bytes live: the `Location` the hub hands out, parsed.

Internal data-plane URLs have the form

    grpc://HOST:PORT/<bucket>/<object>?generation=G[&routing_token=T]
    grpcs://HOST:PORT/...            (TLS)

`<bucket>` is the short bucket name (the wire carries `projects/_/buckets/<bucket>`),
`<object>` the object name, percent-encoded per path segment. Anything with an
http(s) scheme is a ranged-GET location (CDN, or an OSS URL).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

from fusefs.data.http_conn import Origin

BUCKET_PREFIX = "projects/_/buckets/"
GRPC_SCHEMES = ("grpc", "grpcs")
HTTP_SCHEMES = ("http", "https")
_OSS_INTERNAL = re.compile(r"\.oss[a-z0-9.-]*-internal\.aliyuncs\.com$")


_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def valid_region(name: str) -> bool:
    """Region names double as bucket names, so they follow bucket rules."""
    return bool(_REGION.match(name))


class BadLocation(ValueError):
    """A Location the client refuses to follow."""


@dataclass(frozen=True)
class GrpcObject:
    """One object on a BidiReadObject endpoint."""

    endpoint: str  # HOST:PORT
    bucket: str  # short name, without BUCKET_PREFIX
    object: str
    generation: int = 0
    tls: bool = False
    routing_token: str | None = None

    @property
    def bucket_path(self) -> str:
        return BUCKET_PREFIX + self.bucket

    def url(self) -> str:
        scheme = "grpcs" if self.tls else "grpc"
        obj = "/".join(quote(part, safe="") for part in self.object.split("/"))
        query = f"generation={self.generation}"
        if self.routing_token:
            query += "&routing_token=" + quote(self.routing_token, safe="")
        return f"{scheme}://{self.endpoint}/{quote(self.bucket, safe='')}/{obj}?{query}"


def parse_grpc_url(url: str) -> GrpcObject:
    parts = urlsplit(url)
    if parts.scheme not in GRPC_SCHEMES:
        raise BadLocation(f"not a grpc location: {url!r}")
    if not parts.hostname or parts.port is None:
        raise BadLocation(f"grpc location without host:port: {url!r}")
    segments = parts.path.lstrip("/").split("/")
    if len(segments) < 2 or not segments[0] or not all(segments[1:]):
        raise BadLocation(f"grpc location without bucket/object: {url!r}")
    query = parse_qs(parts.query)
    try:
        generation = int(query.get("generation", ["0"])[0])
    except ValueError:
        raise BadLocation(f"grpc location with a bad generation: {url!r}") from None
    token = query.get("routing_token", [None])[0]
    return GrpcObject(
        endpoint=parts.netloc,
        bucket=unquote(segments[0]),
        object="/".join(unquote(s) for s in segments[1:]),
        generation=generation,
        tls=parts.scheme == "grpcs",
        routing_token=token,
    )


def location_kind(url: str) -> str:
    """'grpc' or 'http' for a followable Location; BadLocation otherwise."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in GRPC_SCHEMES:
        return "grpc"
    if scheme in HTTP_SCHEMES:
        try:
            Origin.of(url)  # the checks the HTTP data path makes at open, made here first
        except ValueError as e:
            raise BadLocation(f"refusing Location: {e}") from None
        return "http"
    raise BadLocation(f"refusing Location with scheme {scheme!r}: {url!r}")


def is_internal(url: str) -> bool:
    """Internal = a grpc(s) store, or an OSS '-internal' host; else the public path."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in GRPC_SCHEMES:
        return True
    if scheme in HTTP_SCHEMES:
        return bool(_OSS_INTERNAL.search((parts.hostname or "").lower()))
    return False
