"""The Cloud Storage JSON API of the store, for what it stores, so any GCS client can read it.

A bucket is a region's name; its objects are `<owner>/<name>/<path>` for the repos that
region holds (the names BidiReadObject uses). The generation of an object is its
file's mtime in microseconds, as the gRPC side says; CRC32C and MD5 are computed once
per file version and cached (`Store.checksums`).

  GET /storage/v1/b/{bucket}                       the bucket
  GET /storage/v1/b/{bucket}/o                     list: prefix, delimiter ("/"), pageToken,
                                                   maxResults (≤ 1000)
  GET /storage/v1/b/{bucket}/o/{object}            the object; its bytes with alt=media
  GET /download/storage/v1/b/{bucket}/o/{object}   its bytes; one Range; generation,
                                                   ifGenerationMatch

Object names are one path segment, percent-encoded (`/` as `%2F`), so routes are
matched on the raw path. Answers have the API's exact shapes: int64 fields as strings,
`crc32c` as base64 of the big-endian CRC, `nextPageToken` only when there is a next
page, `mediaLink` on this server, errors as `{"error": {"code", "message", "errors"}}`.
With `--require-token`, every route here wants `Authorization: Bearer <token>`.

A listing page walks only the repos its prefix and page token leave (each scanned
once per page) and hashes only the objects on the page.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote, unquote

import trio
from hypercorn.typing import ASGISendCallable

from fusefs.hub.client import RepoId, valid_repo_part
from fusefs.hub.listing import bad_path
from fusefs.server.bearer import Verdict
from fusefs.server.cdn import parse_range
from fusefs.server.http import Reply, Request, StoreContext, send_body, send_start
from fusefs.server.store import StoredFile
from fusefs.server.topology import Region

CHUNK = 1 << 20
HASH_INLINE_MAX = 64 << 20
MAX_RESULTS = 1000
MAX_TOKEN = 2048
_BUCKET = re.compile(r"^/storage/v1/b/([^/]+)$")
_LIST = re.compile(r"^/storage/v1/b/([^/]+)/o/?$")
_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+)$")
_DOWNLOAD = re.compile(r"^/download/storage/v1/b/([^/]+)/o/(.+)$")
_DIGITS = re.compile(r"^[0-9]{1,19}$")
_UNSUPPORTED = ("startOffset", "endOffset", "matchGlob", "versions")


def gcs_error(status: int, reason: str, message: str, **extra: str) -> Reply:
    """An error in the JSON API's shape."""
    item = {"domain": "global", "reason": reason, "message": message, **extra}
    body = {"error": {"code": status, "message": message, "errors": [item]}}
    headers = {"www-authenticate": 'Bearer realm="modelfs"'} if status == 401 else {}
    return Reply(status, json.dumps(body).encode(), headers, "application/json; charset=UTF-8")


def _json(doc: object) -> Reply:
    return Reply(200, json.dumps(doc).encode(), content_type="application/json; charset=UTF-8")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _rfc3339(microseconds: int) -> str:
    moment = datetime.fromtimestamp(microseconds / 1e6, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def _decode_token(token: str) -> str:
    if len(token) > MAX_TOKEN:
        raise ValueError("page token too long")
    try:
        key = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("bad page token") from None
    if not key:
        raise ValueError("empty page token")
    return key


class GcsApi:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        ctx = self.ctx
        ctx.stats.add("counts", "gcs_requests")
        if "authorization" in req.headers:  # lets tests see where credentials went
            ctx.stats.add("counts", "auth_gcs")
        if ctx.bearer is not None:
            verdict = await trio.to_thread.run_sync(ctx.bearer.check, req.headers)
            if verdict is Verdict.MISSING:
                return gcs_error(
                    401,
                    "required",
                    "Login Required",
                    locationType="header",
                    location="Authorization",
                )
            if verdict is Verdict.INVALID:
                ctx.stats.add("counts", "gcs_refused")
                return gcs_error(401, "authError", "Invalid Credentials")
            if verdict is Verdict.UNAVAILABLE:
                return gcs_error(503, "backendError", "Token introspection is unavailable")
        if req.method not in ("GET", "HEAD"):
            return gcs_error(405, "methodNotAllowed", "This store is read-only")
        path = req.raw_path or req.path
        if m := _DOWNLOAD.match(path):
            return await self._object(req, send, unquote(m[1]), unquote(m[2]), media=True)
        if m := _OBJECT.match(path):
            media = req.query.get("alt") == "media"
            return await self._object(req, send, unquote(m[1]), unquote(m[2]), media=media)
        if m := _LIST.match(path):
            return await self._list(req, unquote(m[1]))
        if m := _BUCKET.match(path):
            region = self._region(unquote(m[1]))
            return _json(
                {"kind": "storage#bucket", "id": region.name, "name": region.name}
                | {"selfLink": f"{ctx.base}/storage/v1/b/{quote(region.name, safe='')}"}
                | {"storageClass": "STANDARD", "location": region.name.upper()}
            )
        return gcs_error(404, "notFound", "Not Found")

    def _region(self, bucket: str) -> Region:
        region = self.ctx.regions.get(bucket)
        if region is None:
            raise gcs_error(404, "notFound", "The specified bucket does not exist.")
        return region

    def _find(self, region: Region, name: str) -> tuple[RepoId, StoredFile] | None:
        owner, _, rest = name.partition("/")
        repo_name, _, path = rest.partition("/")
        if bad_path(path) or not valid_repo_part(owner) or not valid_repo_part(repo_name):
            return None
        repo = RepoId(owner, repo_name)
        if not region.holds(str(repo)) or not self.ctx.store.exists(repo):
            return None
        f = self.ctx.store.file(repo, path)
        return (repo, f) if f is not None else None

    def _resource(
        self, bucket: str, name: str, f: StoredFile, sums: tuple[int, bytes]
    ) -> dict[str, object]:
        quoted = quote(name, safe="")
        generation = str(f.generation)
        stamp = _rfc3339(f.generation)
        base = self.ctx.base
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{generation}",
            "selfLink": f"{base}/storage/v1/b/{quote(bucket, safe='')}/o/{quoted}",
            "mediaLink": f"{base}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quoted}"
            f"?generation={generation}&alt=media",
            "name": name,
            "bucket": bucket,
            "generation": generation,
            "metageneration": "1",
            "contentType": "application/octet-stream",
            "storageClass": "STANDARD",
            "size": str(f.size),
            "md5Hash": _b64(sums[1]),
            "crc32c": _b64(sums[0].to_bytes(4, "big")),
            "etag": _b64(f.generation.to_bytes(8, "big")),
            "timeCreated": stamp,
            "updated": stamp,
            "timeStorageClassUpdated": stamp,
            "timeFinalized": stamp,
        }

    # -- one object --------------------------------------------------------------------

    async def _object(
        self, req: Request, send: ASGISendCallable, bucket: str, name: str, *, media: bool
    ) -> Reply | None:
        region = self._region(bucket)
        found = await trio.to_thread.run_sync(self._find, region, name)
        missing = gcs_error(404, "notFound", f"No such object: {bucket}/{name}")
        if found is None:
            return missing
        _repo, f = found
        for key in ("generation", "ifGenerationMatch"):
            value = req.query.get(key)
            if value is None:
                continue
            if not _DIGITS.match(value):
                return gcs_error(400, "invalid", f"Invalid value for {key}: {value[:40]}")
            if int(value) != f.generation:
                if key == "generation":
                    return missing
                return gcs_error(412, "conditionNotMet", "Precondition Failed")
        if not media:
            sums = await trio.to_thread.run_sync(self.ctx.store.checksums, f)
            assert sums is not None
            return _json(self._resource(bucket, name, f, sums))
        return await self._media(req, send, f)

    async def _media(self, req: Request, send: ASGISendCallable, f: StoredFile) -> Reply | None:
        size, store = f.size, self.ctx.store
        first, last, status = 0, size - 1, 200
        headers = {
            "content-type": "application/octet-stream",
            "accept-ranges": "bytes",
            "etag": _b64(f.generation.to_bytes(8, "big")),
            "x-goog-generation": str(f.generation),
            "x-goog-metageneration": "1",
            "x-goog-storage-class": "STANDARD",
            "x-goog-stored-content-length": str(size),
            "x-goog-stored-content-encoding": "identity",
        }
        if spec := req.headers.get("range"):
            parsed = parse_range(spec, size)
            if parsed == "unsatisfiable":
                error = gcs_error(416, "requestedRangeNotSatisfiable", "Range Not Satisfiable")
                error.headers["content-range"] = f"bytes */{size}"
                return error
            if parsed is not None:
                first, last = parsed
                status = 206
                headers["content-range"] = f"bytes {first}-{last}/{size}"
        # The hashes describe the whole object: computed here for a whole read of a file
        # small enough that hashing it first does not hold up its first byte; otherwise
        # sent once known (a listing or metadata request computes them).
        inline = status == 200 and size <= HASH_INLINE_MAX
        sums = await trio.to_thread.run_sync(lambda: store.checksums(f, compute=inline))
        if sums is not None:
            headers["x-goog-hash"] = (
                f"crc32c={_b64(sums[0].to_bytes(4, 'big'))},md5={_b64(sums[1])}"
            )
        length = last - first + 1 if size else 0
        await send_start(send, status, {**headers, "content-length": str(length)})
        if req.method == "HEAD" or length == 0:
            await send_body(send, b"")
            return None
        fd = os.open(f.abspath, os.O_RDONLY)
        try:
            pos = first
            while pos <= last:
                n = min(CHUNK, last + 1 - pos)
                data = await trio.to_thread.run_sync(os.pread, fd, n, pos)
                if not data:
                    break  # the file shrank: the client sees a short body and retries
                pos += len(data)
                self.ctx.stats.add("counts", "gcs_bytes", len(data))
                await send_body(send, data, more=pos <= last)
        finally:
            os.close(fd)
        return None

    # -- listing -----------------------------------------------------------------------

    async def _list(self, req: Request, bucket: str) -> Reply:
        region = self._region(bucket)
        q = req.query
        for key in _UNSUPPORTED:
            if key in q and not (key == "versions" and q[key].lower() == "false"):
                return gcs_error(400, "invalid", f"{key} is not supported by this store")
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        if delimiter not in ("", "/"):
            return gcs_error(400, "invalid", "Only the delimiter '/' is supported")
        limit = MAX_RESULTS
        if "maxResults" in q:
            if not _DIGITS.match(q["maxResults"]) or int(q["maxResults"]) == 0:
                return gcs_error(400, "invalid", "Invalid value for maxResults")
            limit = min(int(q["maxResults"]), MAX_RESULTS)
        after = None
        if "pageToken" in q:
            try:
                after = _decode_token(q["pageToken"])
            except ValueError:
                return gcs_error(400, "invalid", "Invalid value for pageToken")
        doc = await trio.to_thread.run_sync(
            self._page, region, prefix, bool(delimiter), after, limit
        )
        return _json(doc)

    def _page(
        self, region: Region, prefix: str, delimited: bool, after: str | None, limit: int
    ) -> dict[str, object]:
        items: list[dict[str, object]] = []
        prefixes: list[str] = []
        last = None
        more = False
        for key, found in self._entries(region, prefix, delimited, after):
            if len(items) + len(prefixes) == limit:
                more = True
                break
            if found is None:
                prefixes.append(key)
            else:
                sums = self.ctx.store.checksums(found)
                assert sums is not None
                items.append(self._resource(region.name, key, found, sums))
            last = key
        doc: dict[str, object] = {"kind": "storage#objects"}
        if items:
            doc["items"] = items
        if prefixes:
            doc["prefixes"] = prefixes
        if more and last is not None:
            doc["nextPageToken"] = _encode_token(last)
        return doc

    def _entries(
        self, region: Region, prefix: str, delimited: bool, after: str | None
    ) -> Iterator[tuple[str, StoredFile | None]]:
        """(name, file) for objects and (prefix, None) for collapsed prefixes, in name
        order, after `after`. Keys never decrease, which is what makes `after` a cursor."""
        emitted: str | None = None
        for repo in self._repos(region, prefix):
            top = f"{repo}/"
            if after is not None and top < after and not after.startswith(top):
                continue  # every name in this repo sorts before the cursor
            if delimited and top.startswith(prefix) and len(top) > len(prefix):
                # All of this repo's names collapse into one prefix that `top` decides.
                key = top[: top.index("/", len(prefix)) + 1]
                if key != emitted and (after is None or key > after) and self.ctx.store.scan(repo):
                    emitted = key
                    yield key, None
                continue
            files = self.ctx.store.scan(repo)
            for rel in sorted(files):
                name = top + rel
                if not name.startswith(prefix):
                    continue
                entry: StoredFile | None = files[rel]
                key = name
                if delimited and (cut := name.find("/", len(prefix))) != -1:
                    key, entry = name[: cut + 1], None
                if key == emitted or (after is not None and key <= after):
                    continue
                emitted = key
                yield key, entry

    def _repos(self, region: Region, prefix: str) -> list[RepoId]:
        """The repos of this region whose names the prefix allows, in object-name order."""
        owner_part, slash, rest = prefix.partition("/")
        name_part, slash2, _ = rest.partition("/")
        root = self.ctx.store.root
        owners = [owner_part] if slash else _subdirs(root, owner_part)
        repos = []
        for owner in owners:
            if not valid_repo_part(owner):
                continue
            names = [name_part] if slash2 else _subdirs(os.path.join(root, owner), name_part)
            for name in names:
                repo = RepoId(owner, name)
                if (
                    valid_repo_part(name)
                    and region.holds(str(repo))
                    and self.ctx.store.exists(repo)
                ):
                    repos.append(repo)
        return sorted(repos, key=lambda r: f"{r}/")


def _subdirs(path: str, starting: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [
                e.name
                for e in it
                if e.name.startswith(starting) and not e.name.startswith(".") and e.is_dir()
            ]
    except OSError:
        return []
