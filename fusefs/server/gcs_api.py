"""The Cloud Storage JSON API of the store, for what it stores, so any GCS client can read it.

A bucket is a region's name; its objects are `<owner>/<name>/<path>` for the repos that
region holds (the names BidiReadObject uses). The generation of an object is its
file's mtime in microseconds, as the gRPC side says; CRC32C and MD5 are computed once
per file version and cached (`Store.sums`).

  GET /storage/v1/b/{bucket}                       the bucket
  GET /storage/v1/b/{bucket}/o                     list: prefix, delimiter ("/"), pageToken,
                                                   maxResults (≤ 1000)
  GET /storage/v1/b/{bucket}/o/{object}            the object; its bytes with alt=media
  GET /download/storage/v1/b/{bucket}/o/{object}   its bytes; one Range; generation,
                                                   ifGenerationMatch

Object names are one path segment, percent-encoded (`/` as `%2F`), so routes are
matched on the path's segments, each percent-decoded once. Answers have the API's
exact shapes: int64 fields as strings, `crc32c` as base64 of the big-endian CRC,
`nextPageToken` only when there is a next page, `mediaLink` on this server, errors
as `{"error": {"code", "message", "errors"}}`.
With `--require-token`, every route here wants `Authorization: Bearer <token>`.

A listing page reads only the repos its prefix and page token leave, each from its
index (`Store.state`): a range of its sorted paths, or (with a delimiter) of one
directory's children, so a page costs what it holds, not what the repo holds.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import quote

import trio
from hypercorn.typing import ASGISendCallable

from fusefs.hub.client import RepoId, valid_repo_part
from fusefs.server.bearer import Verdict
from fusefs.server.http import Reply, Request, StoreContext, parse_range, send_body, send_start
from fusefs.server.names import unserved
from fusefs.server.store import FileSums, RepoState, StoredFile
from fusefs.server.topology import Region

CHUNK = 1 << 20
HASH_INLINE_MAX = 64 << 20
MAX_RESULTS = 1000
MAX_TOKEN = 2048
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
        # /storage/v1/b/B[/o[/NAME]] and /download/storage/v1/b/B/o/NAME, NAME one segment
        # (%2F inside) or, as some clients send it, several
        parts = req.segments[1:]
        download = parts[:1] == ["download"]
        parts = parts[1:] if download else parts
        if parts[:3] != ["storage", "v1", "b"] or len(parts) < 4 or not parts[3]:
            return gcs_error(404, "notFound", "Not Found")
        bucket, rest = parts[3], parts[4:]
        if rest[:1] == ["o"] and len(rest) > 1 and any(rest[1:]):
            media = download or req.query.get("alt") == "media"
            return await self._object(req, send, bucket, "/".join(rest[1:]), media=media)
        if download:
            return gcs_error(404, "notFound", "Not Found")
        if rest in (["o"], ["o", ""]):
            return await self._list(req, bucket)
        if not rest:
            region = self._region(bucket)
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

    @staticmethod
    def _target(region: Region, name: str) -> tuple[RepoId, str] | None:
        """(repo, path) an object name means in this bucket (names only, no disk)."""
        owner, _, rest = name.partition("/")
        repo_name, _, path = rest.partition("/")
        if unserved(path) or not valid_repo_part(owner) or not valid_repo_part(repo_name):
            return None
        repo = RepoId(owner, repo_name)
        return (repo, path) if region.holds(str(repo)) else None

    def _resource(self, bucket: str, name: str, f: StoredFile, sums: FileSums) -> dict[str, object]:
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
            "md5Hash": _b64(sums.md5),
            "crc32c": _b64(sums.crc32c.to_bytes(4, "big")),
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
        missing = gcs_error(404, "notFound", f"No such object: {bucket}/{name[:1024]}")
        target = self._target(region, name)
        if target is None:
            return missing
        store = self.ctx.store
        opened = await trio.to_thread.run_sync(store.open_file, *target)
        if opened is None:
            return missing
        fd, f = opened
        try:
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
                sums = await trio.to_thread.run_sync(store.sums, fd, f)
                return _json(self._resource(bucket, name, f, sums))
            return await self._media(req, send, fd, f)
        finally:
            os.close(fd)

    async def _media(
        self, req: Request, send: ASGISendCallable, fd: int, f: StoredFile
    ) -> Reply | None:
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
        if status == 200 and size <= HASH_INLINE_MAX:
            sums: FileSums | None = await trio.to_thread.run_sync(store.sums, fd, f)
        else:
            sums = store.cached_sums(f.key)
        if sums is not None:
            headers["x-goog-hash"] = (
                f"crc32c={_b64(sums.crc32c.to_bytes(4, 'big'))},md5={_b64(sums.md5)}"
            )
        length = last - first + 1 if size else 0
        await send_start(send, status, {**headers, "content-length": str(length)})
        if req.method == "HEAD" or length == 0:
            await send_body(send, b"")
            return None
        pos = first
        while pos <= last:
            n = min(CHUNK, last + 1 - pos)
            data = await trio.to_thread.run_sync(os.pread, fd, n, pos)
            if not data:
                break  # the file shrank: the client sees a short body and retries
            pos += len(data)
            self.ctx.stats.add("counts", "gcs_bytes", len(data))
            await send_body(send, data, more=pos <= last)
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
                state, path = found
                items.append(self._resource(region.name, key, state.files[path], state.sums[path]))
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
    ) -> Iterator[tuple[str, tuple[RepoState, str] | None]]:
        """(name, (state, path)) for objects and (prefix, None) for collapsed prefixes,
        in name order, after `after`. Keys never decrease, which is what makes `after`
        a cursor."""
        store = self.ctx.store
        emitted: str | None = None
        for repo in self._repos(region, prefix):
            top = f"{repo}/"
            if after is not None and top < after and not after.startswith(top):
                continue  # every name in this repo sorts before the cursor
            if len(top) > len(prefix) and top.startswith(prefix):
                if delimited:
                    # All of this repo's names collapse into one prefix that `top` decides.
                    key = top[: top.index("/", len(prefix)) + 1]
                    if key != emitted and (after is None or key > after) and store.has_files(repo):
                        emitted = key
                        yield key, None
                    continue
                inner = ""
            elif prefix.startswith(top):
                inner = prefix[len(top) :]
            else:
                continue
            state = store.state(repo)
            cursor = after[len(top) :] if after is not None and after.startswith(top) else None
            for rel, is_dir in _names_in(state, inner, delimited, cursor):
                key = top + rel
                if is_dir:
                    emitted = key
                    yield key, None
                else:
                    yield key, (state, rel)

    def _repos(self, region: Region, prefix: str) -> list[RepoId]:
        """The repos of this region whose names the prefix allows, in object-name order."""
        owner_part, slash, rest = prefix.partition("/")
        name_part, slash2, _ = rest.partition("/")
        store = self.ctx.store
        owners = [owner_part] if slash else store.subdirs("model")
        repos = []
        for owner in owners:
            if not owner.startswith(owner_part) or not valid_repo_part(owner):
                continue
            names = [name_part] if slash2 else store.subdirs("model", owner)
            for name in names:
                repo = RepoId(owner, name)
                if (
                    name.startswith(name_part)
                    and valid_repo_part(name)
                    and region.holds(str(repo))
                    and store.exists(repo)
                ):
                    repos.append(repo)
        return sorted(repos, key=lambda r: f"{r}/")


def _names_in(
    state: RepoState, prefix: str, delimited: bool, after: str | None
) -> Iterator[tuple[str, bool]]:
    """(name, is a collapsed prefix) of one repo's names that start with `prefix`, after
    `after`, in order. Without a delimiter: a range of the sorted paths. With one: the
    children of the directory the prefix is in (files as paths, directories as 'd/'),
    merged in name order."""
    if not delimited:
        yield from _from(state.blobs, prefix, after, False)
        return
    folder = prefix.rpartition("/")[0]
    files, dirs = state.children.get(folder, ([], []))
    yield from heapq.merge(_from(files, prefix, after, False), _from(dirs, prefix, after, True))


def _from(
    names: list[str], prefix: str, after: str | None, dirs: bool
) -> Iterator[tuple[str, bool]]:
    """Names of a sorted list (directories keyed 'd/', as the index sorts them) that
    start with `prefix` and sort after `after`, lazily: a page stops early."""

    def key(name: str) -> str:
        return name + "/" if dirs else name

    start = bisect.bisect_left(names, prefix, key=key)
    if after is not None:
        start = max(start, bisect.bisect_right(names, after, key=key))
    for i in range(start, len(names)):
        name = key(names[i])
        if not name.startswith(prefix):
            return
        yield name, dirs
