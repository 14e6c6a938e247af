"""The hub API of the store, in the ModelScope shape: repos, revisions, listings, probes.

Routes:
  GET  /api/v1/models/{owner}/{name}                      repo info
  GET  /api/v1/models/{owner}/{name}/revisions            branches (master = current content)
  GET  /api/v1/models/{owner}/{name}/repo/files           listing (Revision, Recursive, Root)
  HEAD|GET /api/v1/models/{owner}/{name}/repo             302 to where the bytes are (probe)
  GET  /api/v1/repos/internalAccelerationInfo             where to ask for this client's region
  GET  /api/v1/repos/regionId                             this client's region, text/plain
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote, unquote

import trio

from fusefs.data.location import GrpcObject
from fusefs.hub.client import REGION_HEADER, RepoId
from fusefs.server.http import Reply, Request, StoreContext, error, ok
from fusefs.server.store import RepoState

LFS_THRESHOLD = 1 << 20
_MODEL = re.compile(r"^/api/v1/models/([^/]+)/([^/]+)(/revisions|/repo/files|/repo)?$")


class HubApi:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request) -> Reply:
        ctx, path = self.ctx, req.path
        ctx.stats.add("counts", "hub_requests")
        if ctx.faults and (f := ctx.faults.take("hub_error")):
            return error(int(f.params.get("status", 503)), "injected hub error")
        if path == "/api/v1/repos/internalAccelerationInfo":
            return ok({"RegionQueryAddress": f"{ctx.base}/api/v1/repos/regionId"})
        if path == "/api/v1/repos/regionId":
            region = ctx.client_region or (
                next(iter(ctx.regions)) if len(ctx.regions) == 1 else None
            )
            return (
                Reply(200, region.encode(), content_type="text/plain")
                if region
                else error(404, "client region unknown")
            )
        if m := _MODEL.match(path):
            repo = RepoId(unquote(m[1]), unquote(m[2]))
            if not ctx.store.exists(repo):
                return error(404, f"model {repo} not found")
            return await self.model(req, repo, m[3] or "")
        return error(404, "no such route")

    async def current(
        self, repo: RepoId, revision: str | None, path: str | None = None
    ) -> RepoState:
        """The repo's state at `revision` (404 when it is not the current one); a request
        for one `path` at a pinned commit needs no walk of the repo."""
        store = self.ctx.store
        if path is None:
            state = await trio.to_thread.run_sync(store.state, repo)
        else:
            state = await trio.to_thread.run_sync(store.state_for_file, repo, revision, path)
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
                entries = entries[
                    : self.ctx.listing_limit
                ]  # as the hub does: walk subtrees for more
            return ok({"Files": entries})
        # the download URL: a probe
        region_name = req.headers.get(REGION_HEADER, "")
        self.ctx.stats.add("probes", region_name)
        file_path = req.query.get("FilePath", "")
        state = await self.current(repo, req.query.get("Revision"), file_path)
        f = state.files.get(file_path)
        if f is None:
            return error(404, "no such file")
        region = self.ctx.regions.get(region_name)
        if region is not None and region.holds(str(repo)):
            location = GrpcObject(
                self.ctx.grpc_addrs[region.name], region.name, f"{repo}/{f.path}", f.generation
            ).url()
        else:
            parts = "/".join(quote(p, safe="") for p in f.path.split("/"))
            location = (
                f"{self.ctx.base}/cdn/{quote(repo.owner, safe='')}/"
                f"{quote(repo.name, safe='')}/{state.commit}/{parts}"
            )
        return Reply(302, b"", {"location": location})


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
