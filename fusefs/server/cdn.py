"""The store's CDN-style route: a file's bytes at a commit, one `Range` at a time.

GET|HEAD /cdn/{repo key}/{commit}/{path}[?region=R]      file bytes, single Range supported

The repo key is `owner/name` for a model, `_datasets/owner/name` for a dataset
(`RepoId.key`). With `region=R` the route is region R's internal path, handed to
clients that send a region header but read no grpc:// locations: R must hold the
repo, and what it serves is counted as R's (`internal_http` in the stats).
Answers carry the file's sha256 as `ETag` and `X-Linked-ETag` (the header the
ModelScope SDK checks downloads against).
"""

from __future__ import annotations

import os
import re
from typing import Literal

import trio
from hypercorn.typing import ASGISendCallable

from fusefs.hub.client import RepoId, split_key
from fusefs.server.http import Reply, Request, StoreContext, error, send_body, send_start

CDN_CHUNK = 1 << 20
_CDN = re.compile(r"^/cdn/((?:_datasets/)?[^/]+/[^/]+)/([0-9a-f]{40})/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Cdn:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        # The path is already percent-decoded (ASGI): decoding it again would turn
        # a name's literal '%2e' into '.'.
        if (m := _CDN.match(req.path)) and (named := split_key(m[1])):
            return await self.cdn(req, send, named[0], m[2], m[3])
        return error(404, "no such route")

    async def cdn(
        self, req: Request, send: ASGISendCallable, repo: RepoId, commit: str, path: str
    ) -> Reply | None:
        if not self.ctx.store.exists(repo):
            return error(404, "no such repo")
        region = req.query.get("region")
        if region is not None:
            held = self.ctx.regions.get(region)
            if held is None or not held.holds(str(repo)):
                return error(404, f"region {region!r} holds no {repo.key}")
        state = await trio.to_thread.run_sync(self.ctx.store.state_for_file, repo, commit, path)
        f = state.files.get(path)
        if commit != state.commit or f is None:
            return error(404, "no such file at that commit")
        if self.ctx.faults and self.ctx.faults.take("cdn_forbidden"):
            return error(403, "injected: URL expired")
        size = f.size
        headers = {
            "etag": f'"{state.digests[path]}"',
            "x-linked-etag": state.digests[path],
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
        if region is not None:
            self.ctx.stats.add("internal_http_requests", region)
        else:
            self.ctx.stats.add("counts", "cdn_requests")
        await send_start(send, status, {**headers, "content-length": str(length)})
        if req.method == "HEAD" or length == 0:
            await send_body(send, b"")
            return None
        fd = os.open(f.abspath, os.O_RDONLY)
        try:
            pos = first
            while pos <= last:
                n = min(CDN_CHUNK, last + 1 - pos)
                data = await trio.to_thread.run_sync(os.pread, fd, n, pos)
                pos += len(data)
                if region is not None:
                    self.ctx.stats.add("internal_http_bytes", region, len(data))
                else:
                    self.ctx.stats.add("counts", "cdn_bytes", len(data))
                await send_body(send, data, more=pos <= last)
        finally:
            os.close(fd)
        return None


def parse_range(spec: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(first, last) for one satisfiable byte range; None to ignore; 'unsatisfiable'."""
    m = _RANGE.match(spec.strip())
    if not m or (not m[1] and not m[2]):
        return None  # malformed or multi-range: answer with the whole file
    if not m[1]:  # suffix: the last n bytes
        n = int(m[2])
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    first = int(m[1])
    if m[2] and int(m[2]) < first:
        return None  # invalid: ignored, as RFC 9110 allows
    if first >= size:
        return "unsatisfiable"
    last = int(m[2]) if m[2] else size - 1
    return first, min(last, size - 1)
