"""Which regions the store plays, where each listens, and which repos each holds.

A region is served by a gRPC listener of this store, or lives in a Cloud Storage
bucket (a replica kept there, `PREFIX/<repo key>/<path>`, read by clients with their
own credentials; see `buckets.py`):

[regions.cn-hangzhou]
grpc = "127.0.0.1:0"
repos = ["Qwen/*", "acme/model-a"]

[regions.us-central1]
gcs = "gs://models-replica/store"
gcs_endpoint = "https://storage.googleapis.com"      # optional: the JSON API
gcs_grpc_endpoint = "grpcs://storage.googleapis.com:443"  # optional: BidiReadObject
repos = ["*/*"]
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from urllib.parse import urlsplit

from fusefs.data.gcs_auth import GrpcEndpoint, JsonEndpoint
from fusefs.data.location import valid_region
from fusefs.hub.gcs import BucketUrl


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class RegionBucket:
    """Where a region in Cloud Storage keeps its replica, and the endpoints to reach it."""

    url: BucketUrl
    json_endpoint: str | None = None  # None: STORAGE_EMULATOR_HOST, else Google's
    grpc_endpoint: str | None = None  # None: Google's


@dataclass(frozen=True)
class Region:
    name: str
    grpc: str | None  # HOST:PORT to listen on (port 0: any free port); None: a bucket's
    repos: tuple[str, ...]  # globs over "owner/name"
    bucket: RegionBucket | None = None  # the region lives in this bucket

    def holds(self, repo: str) -> bool:
        return any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.repos)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise TopologyError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_cdn_base(text: str) -> str:
    """An http(s) URL a public path may start with, without its trailing slash. It goes
    into every public answer's Location, so it may carry no credentials, query or fragment."""
    if not text.isprintable() or any(c.isspace() for c in text):
        raise TopologyError(f"--cdn-base: {text!r} holds spaces or control characters")
    url = urlsplit(text)
    try:
        url.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise TopologyError(f"--cdn-base: bad port in {text!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise TopologyError(
            f"--cdn-base: expected an http(s)://HOST[:PORT][/PATH] URL, got {text!r}"
        )
    if url.username is not None:  # the URL itself is not echoed: it holds a secret
        raise TopologyError("--cdn-base: a URL with credentials would go to every client")
    if url.query or url.fragment or "?" in text or "#" in text:
        raise TopologyError(f"--cdn-base: no query or fragment, got {text!r}")
    return text.rstrip("/")


def _text(spec: dict[str, object], key: str, where: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise TopologyError(f"{where}.{key}: expected a string")
    return value


def _bucket(spec: dict[str, object], where: str) -> RegionBucket:
    url, json_endpoint = _text(spec, "gcs", where), _text(spec, "gcs_endpoint", where)
    grpc_endpoint = _text(spec, "gcs_grpc_endpoint", where)
    assert url is not None
    try:
        bucket = BucketUrl.parse(url)
    except ValueError as e:
        raise TopologyError(f"{where}.gcs: {e}") from None
    try:
        if json_endpoint is not None:
            json_endpoint = JsonEndpoint.parse(json_endpoint).base
    except ValueError as e:
        raise TopologyError(f"{where}.gcs_endpoint: {e}") from None
    try:
        if grpc_endpoint is not None:
            grpc_endpoint = str(GrpcEndpoint.parse(grpc_endpoint))
    except ValueError as e:
        raise TopologyError(f"{where}.gcs_grpc_endpoint: {e}") from None
    return RegionBucket(bucket, json_endpoint, grpc_endpoint)


def load(path: str) -> list[Region]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TopologyError(f"topology {path}: {e}") from None
    unknown = set(doc) - {"regions"}
    if unknown:
        raise TopologyError(f"topology {path}: unknown key {sorted(unknown)[0]!r}")
    table = doc.get("regions")
    if not isinstance(table, dict) or not table:
        raise TopologyError(f"topology {path}: no [regions.<name>] tables")
    regions = []
    for name, spec in table.items():
        where = f"topology {path}: regions.{name}"
        if not valid_region(name):
            raise TopologyError(f"{where}: bad region name")
        if not isinstance(spec, dict):
            raise TopologyError(f"{where}: expected a table")
        extra = set(spec) - {"grpc", "repos", "gcs", "gcs_endpoint", "gcs_grpc_endpoint"}
        if extra:
            raise TopologyError(f"{where}: unknown key {sorted(extra)[0]!r}")
        if "grpc" not in spec and "gcs" not in spec:
            raise TopologyError(f"{where}: missing key 'grpc' (a listener) or 'gcs' (a bucket)")
        if "grpc" in spec and "gcs" in spec:
            raise TopologyError(f"{where}: both 'grpc' and 'gcs': a region is one or the other")
        if "gcs" not in spec and spec.keys() & {"gcs_endpoint", "gcs_grpc_endpoint"}:
            raise TopologyError(f"{where}: gcs endpoints without 'gcs'")
        repos = spec.get("repos", [])
        if not isinstance(repos, list) or not all(isinstance(r, str) and "/" in r for r in repos):
            raise TopologyError(f'{where}.repos: expected a list of "owner/name" globs')
        if "gcs" in spec:
            regions.append(Region(name, None, tuple(repos), _bucket(spec, where)))
        else:
            parse_host_port(spec["grpc"], f"{where}.grpc")
            regions.append(Region(name, spec["grpc"], tuple(repos)))
    return regions
