"""The hub API of the store, in the real ModelScope hub's shapes, as the official SDK asks.

Routes ({type} is `models` or `datasets`; datasets only with `modelfs serve --datasets`):
  GET  /openapi/v1/{type}/{owner}/{name}                repo info (OpenAPI envelope)
  GET  /api/v1/{type}/{owner}/{name}                    repo info
  GET  /api/v1/{type}/{owner}/{name}/revisions          branches and tags: Revision, CreatedAt
  GET  /api/v1/{type}/{owner}/{name}/commits            Ref, PageNumber, PageSize → Data.Commit[]
  GET  /api/v1/{type}/{owner}/{name}/repo/files         listing: Revision, Recursive, Root;
                                                        a recursive one cut at --listing-limit
  GET  /api/v1/{type}/{owner}/{name}/repo/tree          the same, paged by PageNumber/PageSize
  HEAD|GET /api/v1/{type}/{owner}/{name}/repo           Revision, FilePath → 302 to the bytes
  GET  /api/v1/repos/internalAccelerationInfo           Data.InternalRegionQueryAddress
  GET  /api/v1/repos/regionId                           the client's region, text/plain

What the store can say honestly, having no git history:
* A repo has one branch, `master`, at one commit: a hash of its current content
  (`Store.state`). Older commits are not held: asking for one is a 404.
* A file's `Revision` in a listing is the commit of the first store state, since
  this process started, in which the file had its current content (unchanged files
  keep it across changes to others). A file may also be downloaded by that revision.
* `LatestCommitter.Id` and `commits` name the current commit.

Where bytes are (the answer to `repo`, a 302):
* with the region header of a region that holds the repo, from a client that sends
  `x-modelfs-accept: grpc`: that region's BidiReadObject endpoint (`grpc://…`);
* with such a region header but without that header (the ModelScope SDK): the CDN
  route as that region's internal path (`/cdn/…?region=R`), counted as R's;
* otherwise: the public CDN route.
"""

from __future__ import annotations

import bisect
import json
import re
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import trio

from fusefs.data.location import GrpcObject
from fusefs.hub.client import ACCEPT_HEADER, REGION_HEADER, RepoId
from fusefs.server.http import Reply, Request, StoreContext
from fusefs.server.store import RepoState

LFS_THRESHOLD = 1 << 20
_REPO = re.compile(
    r"/(api|openapi)/v1/(models|datasets)/([^/]+)/([^/]+)"
    r"(/revisions|/commits|/repo/files|/repo/tree|/repo)?"
)
_MAX_PAGE_NUMBER = 1 << 31


def _request_id() -> str:
    return uuid.uuid4().hex


def ok(data: object) -> Reply:
    body = {"Code": 200, "Data": data, "Message": "success", "RequestId": _request_id()}
    return Reply(200, json.dumps({**body, "Success": True}).encode())


def fail(status: int, message: str) -> Reply:
    """A legacy error: the HTTP status is what clients go by (the SDK does)."""
    body = {"Code": status, "Message": message, "RequestId": _request_id(), "Success": False}
    return Reply(status, json.dumps(body).encode())


def openapi_ok(data: object) -> Reply:
    return Reply(
        200, json.dumps({"success": True, "data": data, "request_id": _request_id()}).encode()
    )


def openapi_fail(status: int, code: str, message: str) -> Reply:
    body = {"success": False, "code": code, "message": message, "request_id": _request_id()}
    return Reply(status, json.dumps(body).encode())


def _int(query: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    text = query.get(key)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12 or not lo <= int(text) <= hi:
        raise fail(400, f"{key} must be a whole number from {lo} to {hi}")
    return int(text)


@dataclass(frozen=True)
class _Names:
    """One repo state's paths, sorted, so a page of a listing costs what the page holds."""

    commit: str
    blobs: list[str]
    dirs: list[str]
    digests: dict[str, str]  # path -> sha256
    revisions: dict[str, str]  # path -> the commit that first had its current content
    date: int  # the newest file's mtime: the state's commit date


class HubApi:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx
        self._names: dict[RepoId, _Names] = {}  # the last state seen of each repo

    async def route(self, req: Request) -> Reply:
        ctx, path = self.ctx, req.path
        ctx.stats.add("counts", "hub_requests")
        if ctx.faults and (f := ctx.faults.take("hub_error")):
            return fail(int(f.params.get("status", 503)), "injected hub error")
        if req.method not in ("GET", "HEAD"):
            return fail(405, f"{req.method} is not served here")
        if path == "/api/v1/repos/internalAccelerationInfo":
            if self._client_region() is None:
                return ok({})  # nothing to tell: the client asks no further
            return ok({"InternalRegionQueryAddress": f"{ctx.base}/api/v1/repos/regionId"})
        if path == "/api/v1/repos/regionId":
            region = self._client_region()
            if region is None:
                return fail(404, "client region unknown")
            return Reply(200, region.encode(), content_type="text/plain")
        m = _REPO.fullmatch(path)  # the path is percent-decoded already (ASGI): not again
        openapi = path.startswith("/openapi/")
        if m is None or (openapi and m[5]):
            if openapi:
                return openapi_fail(404, "ResourceNotFound", "no such route")
            return fail(404, "no such route")
        repo = RepoId(m[3], m[4], m[2][:-1])
        if not ctx.store.exists(repo):
            if openapi:
                return openapi_fail(404, "ResourceNotFound", f"{repo.repo_type} {repo} not found")
            return fail(404, f"{repo.repo_type} {repo} not found")
        what = m[5] or ""
        if what == "/repo" and not openapi:  # one file: no walk of the repo when unchanged
            file_path = req.query.get("FilePath", "")
            state, names = await self._view(repo, req.query.get("Revision"), file_path)
        else:
            state, names = await self._view(repo)
        if openapi:
            return openapi_ok(self.info(repo, names, openapi=True))
        if what == "":
            return ok(self.info(repo, names, openapi=False))
        if what == "/revisions":
            branch = {"Revision": "master", "CreatedAt": names.date}
            return ok({"RevisionMap": {"Branches": [branch], "Tags": []}})
        if what == "/commits":
            return self.commits(req, repo, names)
        if what in ("/repo/files", "/repo/tree"):
            return self.listing(req, repo, state, names)
        return self.locate(req, repo, state, names)

    def _client_region(self) -> str | None:
        regions = self.ctx.regions
        return self.ctx.client_region or (next(iter(regions)) if len(regions) == 1 else None)

    async def _view(
        self, repo: RepoId, revision: str | None = None, path: str | None = None
    ) -> tuple[RepoState, _Names]:
        """The repo's current state, and its names (built once per state); for a request
        of one `path` at a `revision`, the state known when that file is unchanged."""
        store = self.ctx.store
        if path is None:
            state = await trio.to_thread.run_sync(store.state, repo)
        else:
            state = await trio.to_thread.run_sync(store.state_for_file, repo, revision, path)
        known = self._names.get(repo)
        if known is not None and known.commit == state.commit:
            return state, known
        dirs = {p.rsplit("/", i)[0] for p in state.files for i in range(1, p.count("/") + 1)}
        # A file keeps its revision while its content stays; changed or new: this commit.
        revisions = {
            path: known.revisions[path]
            if known is not None and known.digests.get(path) == digest
            else state.commit
            for path, digest in state.digests.items()
        }
        names = _Names(
            state.commit,
            sorted(state.files),
            sorted(dirs),
            state.digests,
            revisions,
            max((f.mtime for f in state.files.values()), default=0),
        )
        self._names[repo] = names
        return state, names

    @staticmethod
    def _held(repo: RepoId, names: _Names, revision: str | None) -> None:
        if revision not in (None, "", "master", names.commit):
            raise fail(404, f"revision {revision!r} of {repo} is not held by this store")

    # -- answers -------------------------------------------------------------------------

    def info(self, repo: RepoId, names: _Names, *, openapi: bool) -> dict[str, object]:
        if openapi:
            return {
                "id": str(repo),
                "owner": repo.owner,
                "name": repo.name,
                "private": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "license": "",
                "tags": [],
                "last_modified": names.date,
            }
        return {
            "Id": str(repo),
            "Path": repo.owner,
            "Name": repo.name,
            "Visibility": 5,  # public, in the hub's numbering
            "License": "",
            "Description": "",
            "Downloads": 0,
            "Likes": 0,
            "Tags": [],
            "LastModified": names.date,
            "Revision": names.commit,
        }

    def commits(self, req: Request, repo: RepoId, names: _Names) -> Reply:
        ref = req.query.get("Ref") or "master"
        if ref not in ("master", names.commit):
            return fail(404, f"no branch, tag or commit {ref!r} in {repo}")
        page = _int(req.query, "PageNumber", 1, 1, _MAX_PAGE_NUMBER)
        _int(req.query, "PageSize", 1, 1, self.ctx.listing_limit)
        commit = {
            "Id": names.commit,
            "ShortId": names.commit[:8],
            "Title": "store content",
            "Message": "store content",
            "AuthorName": "modelfs",
            "AuthorEmail": "",
            "AuthoredDate": names.date,
            "CommitterName": "modelfs",
            "CommitterEmail": "",
            "CommittedDate": names.date,
            "CreatedAt": names.date,
        }
        return ok({"Commit": [commit] if page == 1 else [], "TotalCount": 1})

    def listing(self, req: Request, repo: RepoId, state: RepoState, names: _Names) -> Reply:
        q = req.query
        self._held(repo, names, q.get("Revision"))
        root = q.get("Root", "").strip("/")
        recursive = q.get("Recursive", "false").lower() == "true"
        limit = self.ctx.listing_limit
        last: int | None
        if "PageNumber" in q or "PageSize" in q:
            page = _int(q, "PageNumber", 1, 1, _MAX_PAGE_NUMBER)
            size = _int(q, "PageSize", 100, 1, limit)
            first, last = (page - 1) * size, page * size
        else:
            # `repo/files` has no pages: a recursive listing is cut, as the hub cuts it,
            # and clients walk its directories for more.
            first, last = 0, limit if recursive else None
        blobs, dirs = _scope(names, root, recursive)
        files = [_blob(state, names, p) for p in blobs[first:last]]
        rest = None if last is None else max(0, last - len(blobs))
        trees = [_tree(names, p) for p in dirs[max(0, first - len(blobs)) : rest]]
        latest = {
            "Id": names.commit,
            "ShortId": names.commit[:8],
            "Name": "modelfs",
            "Email": "",
            "CommittedDate": names.date,
        }
        return ok(
            {
                "Files": files + trees,
                "IsVisual": 0,
                "LatestCommitter": latest,
                "TotalCount": len(blobs) + len(dirs),
            }
        )

    def locate(self, req: Request, repo: RepoId, state: RepoState, names: _Names) -> Reply:
        """Where a file's bytes are: a 302 (the probe of the mount, the SDK's download)."""
        ctx = self.ctx
        region_name = req.headers.get(REGION_HEADER, "")
        ctx.stats.add("probes", region_name)
        path = req.query.get("FilePath", "")
        f = state.files.get(path)
        if f is None:
            return fail(404, f"no file {path!r} in {repo}")
        revision = req.query.get("Revision")
        if names.revisions.get(path) != revision:  # a file may be read at its own revision
            self._held(repo, names, revision)
        region = ctx.regions.get(region_name)
        if region is None or not region.holds(str(repo)):
            return Reply(302, b"", {"location": self._cdn(repo, state, path)})
        accepts = {t.strip() for t in req.headers.get(ACCEPT_HEADER, "").lower().split(",")}
        if "grpc" in accepts:
            grpc = GrpcObject(
                ctx.grpc_addrs[region.name], region.name, f"{repo.key}/{path}", f.generation
            )
            return Reply(302, b"", {"location": grpc.url()})
        location = self._cdn(repo, state, path) + f"?region={quote(region.name, safe='')}"
        return Reply(302, b"", {"location": location})

    def _cdn(self, repo: RepoId, state: RepoState, path: str) -> str:
        return f"{self.ctx.base}/cdn/{_quoted(repo.key)}/{state.commit}/{_quoted(path)}"


def _quoted(path: str) -> str:
    return "/".join(quote(p, safe="") for p in path.split("/"))


def _scope(names: _Names, root: str, recursive: bool) -> tuple[list[str], list[str]]:
    """The blobs and directories a listing of `root` shows, in order."""
    prefix = root + "/" if root else ""

    def under(paths: list[str]) -> list[str]:
        lo = bisect.bisect_left(paths, prefix)
        hi = bisect.bisect_left(paths, prefix[:-1] + "0") if prefix else len(paths)
        inside = paths[lo:hi]  # '0' follows '/': every path starting with prefix
        if recursive:
            return inside
        return [p for p in inside if "/" not in p[len(prefix) :]]

    return under(names.blobs), under(names.dirs)


def _blob(state: RepoState, names: _Names, path: str) -> dict[str, object]:
    f = state.files[path]
    return {
        "CommitMessage": "store content",
        "CommittedDate": f.mtime,
        "CommitterName": "modelfs",
        "InCheck": False,
        "IsLFS": f.size >= LFS_THRESHOLD,
        "Mode": "33188",
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Revision": names.revisions[path],
        "Sha256": state.digests[path],
        "Size": f.size,
        "Type": "blob",
    }


def _tree(names: _Names, path: str) -> dict[str, object]:
    return {
        "CommitMessage": "",
        "CommittedDate": 0,
        "CommitterName": "",
        "InCheck": False,
        "IsLFS": False,
        "Mode": "16384",
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Revision": names.commit,
        "Sha256": "",
        "Size": 0,
        "Type": "tree",
    }
