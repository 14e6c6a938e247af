"""The store's HTTP side: the hub API (ModelScope shape), the CDN range route, admin.

Routes:
  GET  /api/v1/models/{owner}/{name}                      repo info
  GET  /api/v1/models/{owner}/{name}/revisions            branches (master = current content)
  GET  /api/v1/models/{owner}/{name}/repo/files           listing (Revision, Recursive, Root)
  HEAD|GET /api/v1/models/{owner}/{name}/repo             302 to where the bytes are (probe)
  GET  /api/v1/repos/internalAccelerationInfo             where to ask for this client's region
  GET  /api/v1/repos/regionId                             this client's region, text/plain
  GET|HEAD /cdn/{owner}/{name}/{commit}/{path}            file bytes, single Range supported
  GET  /admin/stats, POST /admin/stats/reset              counters
  GET|POST|DELETE /admin/faults                           fault injection (with --faults only)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, unquote

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

from fusefs.data.location import GrpcObject
from fusefs.hub.client import REGION_HEADER, RepoId
from fusefs.server.faults import FaultPlan
from fusefs.server.stats import Stats
from fusefs.server.store import RepoState, Store
from fusefs.server.topology import Region

log = logging.getLogger(__name__)

CDN_CHUNK = 1 << 20
LFS_THRESHOLD = 1 << 20
_MODEL = re.compile(r"^/api/v1/models/([^/]+)/([^/]+)(/revisions|/repo/files|/repo)?$")
_CDN = re.compile(r"^/cdn/([^/]+)/([^/]+)/([0-9a-f]{40})/(.+)$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class Reply(Exception):
    """A complete non-streamed answer (raised or returned)."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ):
        self.status, self.body = status, body
        self.headers = {"content-type": content_type, **(headers or {})}


async def send_start(send: ASGISendCallable, status: int, headers: dict[str, str]) -> None:
    event: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    await send(event)


async def send_body(send: ASGISendCallable, body: bytes, *, more: bool = False) -> None:
    event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": more}
    await send(event)


def ok(data: object) -> Reply:
    return Reply(
        200, json.dumps({"Code": 200, "Data": data, "Message": "", "Success": True}).encode()
    )


def error(status: int, message: str) -> Reply:
    return Reply(
        status, json.dumps({"Code": status, "Message": message, "Success": False}).encode()
    )


class HubApp:
    def __init__(
        self,
        store: Store,
        regions: list[Region],
        grpc_addrs: dict[str, str],
        stats: Stats,
        faults: FaultPlan | None,
        client_region: str | None,
        listing_limit: int = 3000,
    ):
        self.store = store
        self.regions = {r.name: r for r in regions}
        self.grpc_addrs = grpc_addrs
        self.stats = stats
        self.faults = faults
        self.client_region = client_region
        self.listing_limit = listing_limit
        self.base = ""  # http://HOST:PORT, set once listening
        # set by the command: stops one region's gRPC listener
        self.stop_listener: Callable[[str], bool] = lambda region: False

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message["body"]
            if not message["more_body"]:
                break
        req = Request(
            scope["method"],
            scope["path"],
            {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()},
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body,
        )
        try:
            reply = await self.route(req, send)
        except Reply as r:
            reply = r
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            reply = error(500, "internal error")
        if reply is not None:
            headers = {**reply.headers, "content-length": str(len(reply.body))}
            await send_start(send, reply.status, headers)
            await send_body(send, b"" if req.method == "HEAD" else reply.body)

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        path = req.path
        if path.startswith("/admin/"):
            return self.admin(req)
        if "authorization" in req.headers:  # lets tests see where credentials went
            self.stats.add("counts", "auth_cdn" if path.startswith("/cdn/") else "auth_api")
        if path.startswith("/api/"):
            self.stats.add("counts", "hub_requests")
            if self.faults and (f := self.faults.take("hub_error")):
                return error(int(f.params.get("status", 503)), "injected hub error")
        if path == "/api/v1/repos/internalAccelerationInfo":
            return ok({"RegionQueryAddress": f"{self.base}/api/v1/repos/regionId"})
        if path == "/api/v1/repos/regionId":
            region = self.client_region or (
                next(iter(self.regions)) if len(self.regions) == 1 else None
            )
            return (
                Reply(200, region.encode(), content_type="text/plain")
                if region
                else error(404, "client region unknown")
            )
        if m := _MODEL.match(path):
            repo = RepoId(unquote(m[1]), unquote(m[2]))
            if not self.store.exists(repo):
                return error(404, f"model {repo} not found")
            return await self.model(req, repo, m[3] or "")
        if m := _CDN.match(path):
            return await self.cdn(
                req, send, RepoId(unquote(m[1]), unquote(m[2])), m[3], unquote(m[4])
            )
        return error(404, "no such route")

    async def current(self, repo: RepoId, revision: str | None) -> RepoState:
        state = await trio.to_thread.run_sync(self.store.state, repo)
        if revision not in (None, "", "master", state.commit):
            raise error(404, f"revision {revision!r} of {repo} is not held by this store")
        return state

    async def model(self, req: Request, repo: RepoId, what: str) -> Reply:
        if what == "":
            return ok(
                {
                    "Name": repo.name,
                    "Path": repo.owner,
                    "Id": f"{repo}",
                    "ModelType": [],
                    "Description": "",
                }
            )
        if what == "/revisions":
            state = await self.current(repo, None)
            return ok(
                {
                    "RevisionMap": {
                        "Branches": [
                            {
                                "Revision": "master",
                                "CommitId": state.commit,
                                "CreatedAt": int(time.time()),
                            }
                        ],
                        "Tags": [],
                    }
                }
            )
        if what == "/repo/files":
            state = await self.current(repo, req.query.get("Revision"))
            recursive = req.query.get("Recursive", "false").lower() == "true"
            entries = listing(state, req.query.get("Root", "").strip("/"), recursive)
            if recursive:
                entries = entries[: self.listing_limit]  # as the hub does: walk subtrees for more
            return ok({"Files": entries})
        # the download URL: a probe
        region_name = req.headers.get(REGION_HEADER, "")
        self.stats.add("probes", region_name)
        state = await self.current(repo, req.query.get("Revision"))
        f = state.files.get(req.query.get("FilePath", ""))
        if f is None:
            return error(404, "no such file")
        region = self.regions.get(region_name)
        if region is not None and region.holds(str(repo)):
            location = GrpcObject(
                self.grpc_addrs[region.name], region.name, f"{repo}/{f.path}", f.generation
            ).url()
        else:
            parts = "/".join(quote(p, safe="") for p in f.path.split("/"))
            location = (
                f"{self.base}/cdn/{quote(repo.owner, safe='')}/"
                f"{quote(repo.name, safe='')}/{state.commit}/{parts}"
            )
        return Reply(302, b"", {"location": location})

    async def cdn(
        self, req: Request, send: ASGISendCallable, repo: RepoId, commit: str, path: str
    ) -> Reply | None:
        if not self.store.exists(repo):
            return error(404, "no such repo")
        state = await self.current(repo, None)
        f = state.files.get(path)
        if commit != state.commit or f is None:
            return error(404, "no such file at that commit")
        if self.faults and self.faults.take("cdn_forbidden"):
            return error(403, "injected: URL expired")
        size = f.size
        headers = {
            "etag": f'"{state.digests[path]}"',
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
        self.stats.add("counts", "cdn_requests")
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
                self.stats.add("counts", "cdn_bytes", len(data))
                await send_body(send, data, more=pos <= last)
        finally:
            os.close(fd)
        return None

    def admin(self, req: Request) -> Reply:
        if req.path == "/admin/stats" and req.method == "GET":
            return Reply(
                200,
                json.dumps(self.stats.view(self.faults.injected if self.faults else {})).encode(),
            )
        if req.path == "/admin/stats/reset" and req.method == "POST":
            self.stats.reset()
            if self.faults:
                self.faults.injected.clear()
            return Reply(200, b"{}")
        if req.path == "/admin/faults" and self.faults is not None:
            if req.method == "GET":
                return Reply(200, json.dumps(self.faults.listing()).encode())
            if req.method == "DELETE":
                self.faults.clear()
                return Reply(200, b"{}")
            if req.method == "POST":
                try:
                    spec = json.loads(req.body)
                    if spec.get("kind") == "stop_listener":  # a region's data plane dies
                        if not self.stop_listener(spec.get("region")):
                            return error(404, f"no region {spec.get('region')!r}")
                        return Reply(200, b"{}")
                    self.faults.add(spec)
                except (ValueError, AttributeError) as e:
                    return error(400, str(e))
                return Reply(200, b"{}")
        return error(404, "no such route")


def listing(state: RepoState, root: str, recursive: bool) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    dirs: set[str] = set()
    prefix = root + "/" if root else ""
    for path in sorted(state.files):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        parts = rest.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        if not recursive and len(parts) > 1:
            continue
        f = state.files[path]
        entries.append(
            {
                "Name": parts[-1],
                "Path": path,
                "Size": f.size,
                "Sha256": state.digests[path],
                "Type": "blob",
                "Revision": state.commit,
                "CommittedDate": f.mtime,
                "IsLFS": f.size >= LFS_THRESHOLD,
            }
        )
    for d in sorted(dirs):
        if recursive or "/" not in d:
            entries.append(
                {
                    "Name": d.rsplit("/", 1)[-1],
                    "Path": prefix + d,
                    "Size": 0,
                    "Sha256": "",
                    "Type": "tree",
                    "Revision": state.commit,
                    "CommittedDate": 0,
                    "IsLFS": False,
                }
            )
    return entries


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
