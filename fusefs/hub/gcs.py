"""A Cloud Storage bucket as a catalog of repos, through the JSON API (httpx).

`gs://BUCKET[/PREFIX]` laid out as `PREFIX/<repo key>/<files…>` reads like a hub (the
repo key is `<owner>/<name>` for a model, `_datasets/<owner>/<name>` for a dataset: the
object names of the store's data plane): a repo is found by listing its prefix (page
by page), and its snapshot pins every object's generation, with its size, mtime and
the CRC32C/MD5 the listing gives, so a reader can check what it gets. The snapshot's
id (its "commit") is a hash of the (object name, generation) set: it changes exactly
when an object is added, removed or overwritten.

`BucketResolver` says where a file of a mounted bucket is read: its own object at the
pinned generation (`GcsCatalog.location`), with no probe.

Every answer is checked before it is used: object names as repo paths, sizes,
generations (digits), hashes (base64 of the right length), page tokens, page sizes
(bytes) and counts; entries that fail are skipped with a log line. Each request has
a total deadline; credentials go only to the storage endpoint (`GcsAuth`), and no
redirect is followed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import httpx
import trio

from fusefs.data.errors import AuthError
from fusefs.data.gcs_auth import GcsAuth
from fusefs.data.gcs_media import object_path
from fusefs.data.location import GrpcObject
from fusefs.hub.client import REPO_TYPES, HubError, RepoId, RepoNotFound, Snapshot
from fusefs.hub.listing import MAX_FILE_SIZE, RepoFile, bad_path, tree_files
from fusefs.hub.resolve import Resolution, ResolveError

log = logging.getLogger(__name__)

PAGE_SIZE = 1000  # the most the service returns per page
MAX_PAGE_BYTES = 32 << 20  # a page of 1000 objects is ~1 MB; more is a broken answer
MAX_REPO_OBJECTS = 200_000  # per repo: more is not a model repo (and not held in memory)
MAX_TOKEN = 4096
ATTEMPTS = 3  # per request, for 429/5xx/timeouts/connection errors
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{0,220}[a-z0-9]$|^[a-z0-9]$")
_GENERATION = re.compile(r"^[1-9][0-9]{0,18}$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,15})$")
_TRANSIENT = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class BucketUrl:
    bucket: str
    prefix: str  # "" or "a/b/" (always ending with '/')

    @classmethod
    def parse(cls, text: str) -> BucketUrl:
        """`gs://BUCKET[/PREFIX]`; ValueError naming what is wrong."""
        if not text.startswith("gs://"):
            raise ValueError(f"expected gs://BUCKET[/PREFIX], got {text!r}")
        bucket, _, prefix = text[5:].partition("/")
        if not _BUCKET.match(bucket):
            raise ValueError(f"bad bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix and (why := bad_path(prefix)):
            raise ValueError(f"bad prefix: {why}")
        return cls(bucket, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class GcsObject:
    """One object as a listing or a metadata answer describes it, checked."""

    name: str
    size: int
    generation: int
    crc32c: int | None
    md5: str | None  # hex
    updated: int  # unix seconds (0 when not given)


def _digest(value: object, length: int, what: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != length:
        raise ValueError(f"{what} is {len(raw)} bytes, not {length}")
    return raw


def _seconds(value: object) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return max(0, int(datetime.fromisoformat(value).timestamp()))
    except (ValueError, OverflowError):
        return 0


def parse_object(item: object, bucket: str) -> GcsObject:
    """An Object resource of `bucket`; ValueError saying why it cannot be used."""
    if not isinstance(item, dict):
        raise ValueError("not an object")
    name = item.get("name")
    if not isinstance(name, str) or not name or len(name.encode()) > 1024:
        raise ValueError("bad name")
    if item.get("bucket", bucket) != bucket:
        raise ValueError(f"{name!r} is of another bucket")
    size, generation = item.get("size"), item.get("generation")
    if not isinstance(size, str) or not _SIZE.match(size) or int(size) > MAX_FILE_SIZE:
        raise ValueError(f"{name!r}: bad size {size!r:.40}")
    if not isinstance(generation, str) or not _GENERATION.match(generation):
        raise ValueError(f"{name!r}: bad generation {generation!r:.40}")
    if int(generation) >= 1 << 63:
        raise ValueError(f"{name!r}: generation out of range")
    crc = _digest(item.get("crc32c"), 4, f"{name!r}: crc32c")
    md5 = _digest(item.get("md5Hash"), 16, f"{name!r}: md5Hash")
    return GcsObject(
        name=name,
        size=int(size),
        generation=int(generation),
        crc32c=int.from_bytes(crc, "big") if crc is not None else None,
        md5=md5.hex() if md5 is not None else None,
        updated=_seconds(item.get("updated")),
    )


def snapshot_id(bucket: str, objects: list[tuple[str, int]]) -> str:
    """A 40-hex id of a set of (object name, generation): a bucket's "commit"."""
    h = hashlib.sha1(f"gs://{bucket}\n".encode())
    for name, generation in sorted(objects):
        h.update(f"{name}\0{generation}\n".encode())
    return h.hexdigest()


class GcsCatalog:
    """Repos of one bucket prefix; `snapshot` as `HubClient.snapshot` does it for a hub."""

    def __init__(
        self,
        url: BucketUrl,
        auth: GcsAuth,
        *,
        repo_type: str = "model",
        timeout: float = 10.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo type must be one of {', '.join(REPO_TYPES)}")
        self.url = url
        self.auth = auth
        self.repo_type = repo_type
        self.timeout = timeout
        self.page_size = page_size
        self.requests = 0  # sent to the JSON API
        self._base = f"{auth.endpoints.json.base}/storage/v1"
        self._http = httpx.AsyncClient(
            headers={"user-agent": "modelfs"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
        )

    async def __aenter__(self) -> GcsCatalog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    # -- requests ----------------------------------------------------------------------

    async def _get_json(self, path: str, params: dict[str, str]) -> dict[str, object]:
        """GET a JSON API path; retried on transient failures, each try within the deadline."""
        url = self._base + path
        error = HubError(f"{url}: no answer")
        refreshed = False
        for attempt in range(ATTEMPTS):
            if attempt:
                await trio.sleep(0.2 * 2 ** (attempt - 1))
            with trio.move_on_after(self.timeout) as deadline:
                try:
                    status, body, sent = await self._get_once(url, params)
                except httpx.HTTPError as e:
                    error = HubError(f"{url}: {e.__class__.__name__}")
                    continue
                except AuthError as e:
                    raise HubError(str(e)) from None
            if deadline.cancelled_caught:
                error = HubError(f"{url}: no answer within {self.timeout:.0f}s")
                continue
            if status == 401 and not refreshed and self.auth.tokens.reject(sent or None):
                refreshed = True
                continue
            if status == 200:
                if sent:
                    self.auth.tokens.accepted(sent)
                try:
                    doc = json.loads(body)
                except ValueError:
                    raise HubError(f"{url}: malformed JSON") from None
                if not isinstance(doc, dict):
                    raise HubError(f"{url}: unexpected answer")
                return doc
            if status == 404:
                raise RepoNotFound(f"not found in {self.url}: {path}")
            if status in (401, 403):
                raise HubError(f"{url}: the storage service refused the credentials ({status})")
            error = HubError(f"{url}: HTTP {status}")
            if status not in _TRANSIENT:
                break
        raise error

    async def _get_once(self, url: str, params: dict[str, str]) -> tuple[int, bytes, str]:
        """(status, body, token sent) of one GET, reading at most MAX_PAGE_BYTES."""
        headers = await self.auth.json_headers(url)
        self.requests += 1
        async with self._http.stream("GET", url, params=params, headers=headers) as response:
            body = bytearray()
            if response.status_code == 200:
                async for data in response.aiter_bytes():
                    body += data
                    if len(body) > MAX_PAGE_BYTES:
                        raise HubError(f"{url}: answer larger than {MAX_PAGE_BYTES} bytes")
        sent = headers.get("authorization", "").removeprefix("Bearer ")
        return response.status_code, bytes(body), sent

    # -- objects -----------------------------------------------------------------------

    async def objects(self, prefix: str) -> AsyncIterator[GcsObject]:
        """Every object whose name starts with `prefix` (full name), page by page."""
        token: str | None = None
        seen: set[str] = set()
        while True:
            params = {
                "prefix": prefix,
                "maxResults": str(self.page_size),
                "projection": "noAcl",
                "fields": "items(name,bucket,size,generation,crc32c,md5Hash,updated),nextPageToken",
            }
            if token is not None:
                params["pageToken"] = token
            page = await self._get_json(f"/b/{quote(self.url.bucket, safe='')}/o", params)
            items = page.get("items", [])
            if not isinstance(items, list):
                raise HubError(f"{self.url}: listing without a list of items")
            for item in items:
                try:
                    obj = parse_object(item, self.url.bucket)
                except ValueError as e:
                    log.warning("%s: skipping listing entry: %s", self.url, e)
                    continue
                if not obj.name.startswith(prefix):
                    log.warning("%s: skipping %r: not under %r", self.url, obj.name, prefix)
                    continue
                yield obj
            following = page.get("nextPageToken")
            if following is None:
                return
            if (
                not isinstance(following, str)
                or not following
                or len(following) > MAX_TOKEN
                or following in seen
            ):
                raise HubError(f"{self.url}: bad or repeated page token")
            seen.add(following)
            token = following

    async def stat(self, name: str, generation: int | None = None) -> GcsObject:
        """One object's metadata (the live generation, or the one asked for)."""
        params = {"projection": "noAcl"}
        if generation:
            params["generation"] = str(generation)
        doc = await self._get_json(object_path(self.url.bucket, name), params)
        try:
            obj = parse_object(doc, self.url.bucket)
        except ValueError as e:
            raise HubError(f"{self.url}: metadata of {name!r}: {e}") from None
        if obj.name != name or (generation and obj.generation != generation):
            raise HubError(f"{self.url}: metadata for another object than {name!r}")
        return obj

    # -- repos -------------------------------------------------------------------------

    def repo(self, owner: str, name: str) -> RepoId:
        """A repo of the kind this catalog serves."""
        return RepoId(owner, name, self.repo_type)

    def repo_prefix(self, repo: RepoId) -> str:
        return f"{self.url.prefix}{repo.key}/"

    async def snapshot(self, repo: RepoId, revision: str = "master") -> Snapshot:
        """The repo's objects as they are now, every generation pinned."""
        prefix = self.repo_prefix(repo)
        files: dict[str, RepoFile] = {}
        count = 0
        async for obj in self.objects(prefix):
            count += 1
            if count > MAX_REPO_OBJECTS:
                raise HubError(f"{repo}: more than {MAX_REPO_OBJECTS} objects under {prefix}")
            path = obj.name[len(prefix) :]
            if path.endswith("/") and obj.size == 0:
                continue  # a "folder" placeholder: directories follow from the files
            if (why := bad_path(path)) is not None:
                log.warning("%s: skipping object: %s", repo, why)
                continue
            if path in files:
                log.warning("%s: skipping duplicate object %r", repo, path)
                continue
            files[path] = RepoFile(
                path=path,
                size=obj.size,
                sha256=None,
                mtime=obj.updated,
                generation=obj.generation,
                crc32c=obj.crc32c,
                md5=obj.md5,
            )
        if not files:
            raise RepoNotFound(f"{repo}: no objects under {self.url.bucket}/{prefix}")
        listed = tree_files(str(repo), files)
        commit = snapshot_id(
            self.url.bucket, [(prefix + f.path, f.generation or 0) for f in listed]
        )
        if revision not in ("", "master", commit):
            raise RepoNotFound(
                f"{repo}: a bucket has no revision {revision!r}; "
                "its objects are pinned as they are at mount"
            )
        return Snapshot(repo, revision, commit, listed)

    def location(self, repo: RepoId, file: RepoFile) -> str:
        """The data-plane location of a pinned file: its object on the gRPC endpoint."""
        return self.object_location(self.repo_prefix(repo) + file.path, file.generation or 0)

    def object_location(self, name: str, generation: int) -> str:
        """`grpc[s]://HOST:PORT/BUCKET/<name>?generation=G` on the storage gRPC endpoint."""
        ep = self.auth.endpoints.grpc
        return GrpcObject(ep.target, self.url.bucket, name, generation, tls=ep.tls).url()


class BucketResolver:
    """Where a file of a mounted bucket is read: its object, at the generation its
    repo's snapshot pinned (`pinned` finds the file the mount shows). No hub, no probe,
    no regions: source `bucket` (marker ☁)."""

    region: str | None = None
    peers: tuple[str, ...] = ()

    def __init__(
        self, catalog: GcsCatalog, pinned: Callable[[RepoId, str, str], RepoFile | None]
    ) -> None:
        self.catalog = catalog
        self.probes: Counter[str] = Counter()  # none are made
        self._pinned = pinned

    async def resolve(
        self, repo: RepoId, commit: str, path: str, *, exclude: frozenset[str] = frozenset()
    ) -> Resolution:
        f = self._pinned(repo, commit, path)
        if f is None or not f.generation:
            raise ResolveError(f"{repo}/{path}: not pinned at {commit[:12]} in {self.catalog.url}")
        return Resolution("bucket", "", self.catalog.location(repo, f))

    def predict(self, repo: RepoId, commit: str, path: str) -> Resolution | None:
        return None  # resolving costs nothing: there is no probe to overlap
