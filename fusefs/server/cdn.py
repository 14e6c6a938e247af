"""The store's CDN-style route: a file's bytes at a commit, one `Range` at a time.

GET|HEAD /cdn/{repo key}/{commit}/{path}[?region=R]      file bytes, single Range supported

The repo key is `owner/name` for a model, `_datasets/owner/name` for a dataset
(`RepoId.key`). With `region=R` the route is region R's internal path, handed to
clients that send a region header but read no grpc:// locations: R must hold the
repo, and what it serves is counted as R's (`internal_http` in the stats).
Answers carry the file's sha256 as `ETag` and `X-Linked-ETag` (the header the
ModelScope SDK checks downloads against). A request costs one lstat and one open
of that file, never a walk of the repo (`Store.current`).
"""

from __future__ import annotations

import os
import re

import trio
from hypercorn.typing import ASGISendCallable

from fusefs.hub.client import DATASET_KEY_PREFIX, RepoId, split_key
from fusefs.server.http import (
    Reply,
    Request,
    StoreContext,
    error,
    parse_range,
    send_body,
    send_start,
)

CDN_CHUNK = 1 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")


def cdn_target(segments: list[str]) -> tuple[RepoId, str, str] | None:
    """(repo, commit, path) of a CDN path's segments, each decoded once; a segment
    holding '/' (sent as %2F) names nothing."""
    rest = segments[2:]
    width = 3 if rest[:1] == [DATASET_KEY_PREFIX] else 2
    if len(rest) < width + 2 or any("/" in s for s in rest):
        return None
    named = split_key("/".join(rest[:width]))
    commit, path = rest[width], "/".join(rest[width + 1 :])
    if named is None or named[1] or not _COMMIT.fullmatch(commit):
        return None
    return named[0], commit, path


class Cdn:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        target = cdn_target(req.segments)
        if target is None or req.segments[:2] != ["", "cdn"]:
            return error(404, "no such route")
        if req.method not in ("GET", "HEAD"):
            return error(405, f"{req.method} is not served here")
        return await self.cdn(req, send, *target)

    async def cdn(
        self, req: Request, send: ASGISendCallable, repo: RepoId, commit: str, path: str
    ) -> Reply | None:
        store = self.ctx.store
        if not store.exists(repo):
            return error(404, "no such repo")
        region = req.query.get("region")
        if region is not None:
            held = self.ctx.regions.get(region)
            if held is None or not held.holds(str(repo)):
                return error(404, f"region {region!r} holds no {repo.key}")
        found = await trio.to_thread.run_sync(store.current, repo, path)
        gone = error(404, "no such file at that commit")
        if found is None:
            return gone
        state, f = found
        if not state.holds(path, commit):
            return gone
        if self.ctx.faults and self.ctx.faults.take("cdn_forbidden"):
            return error(403, "injected: URL expired")
        opened = await trio.to_thread.run_sync(store.open_file, repo, path)
        if opened is None:
            return gone
        fd, now = opened
        try:
            if now.key != f.key:
                return gone  # changed since it was indexed: not the bytes of that commit
            return await self._send(req, send, fd, f.size, state.sha256(path), region)
        finally:
            os.close(fd)

    async def _send(
        self,
        req: Request,
        send: ASGISendCallable,
        fd: int,
        size: int,
        sha256: str,
        region: str | None,
    ) -> Reply | None:
        headers = {
            "etag": f'"{sha256}"',
            "x-linked-etag": sha256,
            "accept-ranges": "bytes",
            "content-type": "application/octet-stream",
        }
        first, last, status = 0, size - 1, 200
        if spec := req.headers.get("range"):
            parsed = parse_range(spec, size)
            if parsed == "unsatisfiable":
                return Reply(416, b"", {**headers, "content-range": f"bytes */{size}"})
            if parsed is not None:
                first, last = parsed
                status = 206
                headers["content-range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1 if size else 0
        stats = self.ctx.stats
        if region is not None:
            stats.add("internal_http_requests", region)
        else:
            stats.add("counts", "cdn_requests")
        await send_start(send, status, {**headers, "content-length": str(length)})
        if req.method == "HEAD" or length == 0:
            await send_body(send, b"")
            return None
        pos = first
        while pos <= last:
            n = min(CDN_CHUNK, last + 1 - pos)
            data = await trio.to_thread.run_sync(os.pread, fd, n, pos)
            if not data:
                break  # the file shrank: the client sees a short body and retries
            pos += len(data)
            if region is not None:
                stats.add("internal_http_bytes", region, len(data))
            else:
                stats.add("counts", "cdn_bytes", len(data))
            await send_body(send, data, more=pos <= last)
        return None
