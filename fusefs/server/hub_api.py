"""The hub API of the store, in the real ModelScope hub's shapes, as the official SDK asks.

Routes ({type} is `models` or `datasets`; datasets only with `modelfs serve --datasets`):
  GET  /openapi/v1/{type}/{owner}/{name}                repo info (OpenAPI envelope)
  GET  /api/v1/{type}/{owner}/{name}                    repo info
  GET  /api/v1/{type}/{owner}/{name}/revisions          branches and tags: Revision, CreatedAt
  GET  /api/v1/{type}/{owner}/{name}/commits            Ref, PageNumber, PageSize → Data.Commit[]
  GET  /api/v1/{type}/{owner}/{name}/repo/files         listing: Revision, Recursive, Root;
                                                        cut at --listing-limit (recursive)
                                                        or --directory-limit
  GET  /api/v1/{type}/{owner}/{name}/repo/tree          the same, paged by PageNumber/PageSize
  HEAD|GET /api/v1/{type}/{owner}/{name}/repo           Revision, FilePath → 302 to the bytes
  GET  /api/v1/repos/internalAccelerationInfo           Data.InternalRegionQueryAddress
  GET  /api/v1/repos/regionId                           the client's region, text/plain

Every answer comes from the repo's index in memory (`Store.state`): a listing page
costs what the page holds (a directory's children are indexed, a subtree is a
range of the sorted paths), and a probe for one file costs one lstat of that file
(`Store.current`). Paths are routed by segment, each percent-decoded once.

What the store can say honestly, having no git history:
* A repo has one branch, `master`, at one commit: a hash of its current content
  (`Store.state`). Older commits are not held: asking for one is a 404.
* A file's `Revision` in a listing is the commit of the first store state, since
  this process started, in which the file had its current content (unchanged files
  keep it across changes to others). A file may also be downloaded at that revision,
  or at any commit the store has named since (the last `HISTORY` of them).
* `LatestCommitter.Id` and `commits` name the current commit.

Where bytes are (the answer to `repo`, a 302):
* with the region header of a region that holds the repo, from a client that sends
  `x-modelfs-accept: grpc`: that region's BidiReadObject endpoint (`grpc://…`); for a
  region in a Cloud Storage bucket, the file's object there when the bucket has this
  very file (`buckets.py`: `grpcs://storage.googleapis.com:443/BUCKET/…?generation=G`),
  else the public path (below), and 503 while the bucket cannot say;
* with such a region header but without that header (the ModelScope SDK): the CDN
  route as that region's internal path (`/cdn/…?region=R`), counted as R's;
* otherwise: the public CDN route, or with `modelfs serve --cdn-base URL`
  `URL/<repo key>/<path>` (a static server of ROOT; datasets under `_datasets/`).
"""

from __future__ import annotations

import bisect
import json
import uuid
from urllib.parse import quote

import trio

from fusefs.data.location import GrpcObject
from fusefs.hub.client import ACCEPT_HEADER, REGION_HEADER, RepoId
from fusefs.server.buckets import Unavailable
from fusefs.server.http import Reply, Request, StoreContext
from fusefs.server.store import RepoState
from fusefs.server.topology import Region

LFS_THRESHOLD = 1 << 20
_KINDS = {"models": "model", "datasets": "dataset"}
_WHAT = {(): "", ("revisions",): "revisions", ("commits",): "commits", ("repo",): "repo"}
_WHAT |= {("repo", "files"): "files", ("repo", "tree"): "tree"}
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


def repo_route(segments: list[str]) -> tuple[bool, RepoId, str] | None:
    """(openapi, repo, what) of `/{api|openapi}/v1/{models|datasets}/{owner}/{name}[/…]`,
    from the path's segments (each decoded once): what is "", "revisions", "commits",
    "files", "tree" or "repo"; None for any other path."""
    if len(segments) < 6 or segments[0] != "" or segments[1] not in ("api", "openapi"):
        return None
    if segments[2] != "v1" or segments[3] not in _KINDS:
        return None
    what = _WHAT.get(tuple(segments[6:]))
    openapi = segments[1] == "openapi"
    if what is None or (openapi and what):
        return None
    return openapi, RepoId(segments[4], segments[5], _KINDS[segments[3]]), what


class HubApi:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request) -> Reply:
        ctx, path = self.ctx, req.path
        ctx.stats.add("counts", "hub_requests")
        if ctx.faults and (f := ctx.faults.take("hub_error")):
            return fail(int(f.params.get("status", 503)), "injected hub error")
        if req.method not in ("GET", "HEAD"):
            return fail(405, f"{req.method} is not served here")
        if req.segments == ["", "api", "v1", "repos", "internalAccelerationInfo"]:
            if self._client_region() is None:
                return ok({})  # nothing to tell: the client asks no further
            return ok({"InternalRegionQueryAddress": f"{ctx.base}/api/v1/repos/regionId"})
        if req.segments == ["", "api", "v1", "repos", "regionId"]:
            region = self._client_region()
            if region is None:
                return fail(404, "client region unknown")
            return Reply(200, region.encode(), content_type="text/plain")
        routed = repo_route(req.segments)
        if routed is None:
            if path.startswith("/openapi/"):
                return openapi_fail(404, "ResourceNotFound", "no such route")
            return fail(404, "no such route")
        openapi, repo, what = routed
        if not ctx.store.exists(repo):
            if openapi:
                return openapi_fail(404, "ResourceNotFound", f"{repo.repo_type} {repo} not found")
            return fail(404, f"{repo.repo_type} {repo} not found")
        if what == "repo":
            return await self.locate(req, repo)
        state = await trio.to_thread.run_sync(ctx.store.state, repo)
        if openapi:
            return openapi_ok(self.info(repo, state, openapi=True))
        if what == "":
            return ok(self.info(repo, state, openapi=False))
        if what == "revisions":
            branch = {"Revision": "master", "CreatedAt": state.date}
            return ok({"RevisionMap": {"Branches": [branch], "Tags": []}})
        if what == "commits":
            return self.commits(req, repo, state)
        return self.listing(req, repo, state)

    def _client_region(self) -> str | None:
        regions = self.ctx.regions
        return self.ctx.client_region or (next(iter(regions)) if len(regions) == 1 else None)

    @staticmethod
    def _held(repo: RepoId, state: RepoState, revision: str | None) -> None:
        if revision not in (None, "", "master", state.commit):
            raise fail(404, f"revision {revision!r} of {repo} is not held by this store")

    # -- answers -------------------------------------------------------------------------

    def info(self, repo: RepoId, state: RepoState, *, openapi: bool) -> dict[str, object]:
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
                "last_modified": state.date,
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
            "LastModified": state.date,
            "Revision": state.commit,
        }

    def commits(self, req: Request, repo: RepoId, state: RepoState) -> Reply:
        ref = req.query.get("Ref") or "master"
        if ref not in ("master", state.commit):
            return fail(404, f"no branch, tag or commit {ref!r} in {repo}")
        page = _int(req.query, "PageNumber", 1, 1, _MAX_PAGE_NUMBER)
        _int(req.query, "PageSize", 1, 1, self.ctx.listing_limit)
        commit = {
            "Id": state.commit,
            "ShortId": state.commit[:8],
            "Title": "store content",
            "Message": "store content",
            "AuthorName": "modelfs",
            "AuthorEmail": "",
            "AuthoredDate": state.date,
            "CommitterName": "modelfs",
            "CommitterEmail": "",
            "CommittedDate": state.date,
            "CreatedAt": state.date,
        }
        return ok({"Commit": [commit] if page == 1 else [], "TotalCount": 1})

    def listing(self, req: Request, repo: RepoId, state: RepoState) -> Reply:
        q = req.query
        self._held(repo, state, q.get("Revision"))
        root = q.get("Root", "").strip("/")
        recursive = q.get("Recursive", "false").lower() == "true"
        limit = self.ctx.listing_limit
        if "PageNumber" in q or "PageSize" in q:
            page = _int(q, "PageNumber", 1, 1, _MAX_PAGE_NUMBER)
            size = _int(q, "PageSize", 100, 1, limit)
            first, last = (page - 1) * size, page * size
        else:
            # `repo/files` has no pages: a recursive listing is cut at the limit, as the
            # hub cuts it, and clients walk its directories for more; one directory's
            # listing, at the (larger) directory limit.
            first, last = 0, limit if recursive else self.ctx.limits.directory_limit
        blobs, dirs = _scope(state, root, recursive)
        files = [_blob(state, p) for p in blobs.page(first, last)]
        trees = [_tree(state, p) for p in dirs.page(first - len(blobs), last - len(blobs))]
        latest = {
            "Id": state.commit,
            "ShortId": state.commit[:8],
            "Name": "modelfs",
            "Email": "",
            "CommittedDate": state.date,
        }
        return ok(
            {
                "Files": files + trees,
                "IsVisual": 0,
                "LatestCommitter": latest,
                "TotalCount": len(blobs) + len(dirs),
            }
        )

    async def locate(self, req: Request, repo: RepoId) -> Reply:
        """Where a file's bytes are: a 302 (the probe of the mount, the SDK's download)."""
        ctx = self.ctx
        region_name = req.headers.get(REGION_HEADER, "")
        ctx.stats.add("probes", region_name)
        path = req.query.get("FilePath", "")
        found = await trio.to_thread.run_sync(ctx.store.current, repo, path)
        if found is None:
            return fail(404, f"no file {path!r} in {repo}")
        state, f = found
        revision = req.query.get("Revision")
        if not state.holds(path, revision):  # any commit since the file has its content
            return fail(404, f"{path!r} at {revision!r} is not held by this store")
        region = ctx.regions.get(region_name)
        if region is None or not region.holds(str(repo)):
            return Reply(302, b"", {"location": self._public(repo, state, path)})
        accepts = {t.strip() for t in req.headers.get(ACCEPT_HEADER, "").lower().split(",")}
        if "grpc" in accepts and region.bucket is not None:
            return await self._in_bucket(region, repo, state, path)
        if "grpc" in accepts:
            grpc = GrpcObject(
                ctx.grpc_addrs[region.name], region.name, f"{repo.key}/{path}", f.generation
            )
            return Reply(302, b"", {"location": grpc.url()})
        location = self._cdn(repo, state, path) + f"?region={quote(region.name, safe='')}"
        return Reply(302, b"", {"location": location})

    async def _in_bucket(self, region: Region, repo: RepoId, state: RepoState, path: str) -> Reply:
        """Where a region that lives in a bucket has the file: its object, or the CDN."""
        buckets = self.ctx.buckets
        assert buckets is not None  # made for every topology with a bucket region
        try:
            where = await buckets.locate(region, repo, path, state.files[path], state.sums[path])
        except Unavailable as e:
            return fail(503, f"region {region.name}: {e}")
        return Reply(302, b"", {"location": where or self._public(repo, state, path)})

    def _cdn(self, repo: RepoId, state: RepoState, path: str) -> str:
        return f"{self.ctx.base}/cdn/{_quoted(repo.key)}/{state.commit}/{_quoted(path)}"

    def _public(self, repo: RepoId, state: RepoState, path: str) -> str:
        """Where a client no region serves reads: the external static server of ROOT
        (`--cdn-base`; it has no notion of commits, and the probe has just checked that
        the file on disk is the revision asked for), else this store's own CDN route."""
        if self.ctx.cdn_base is None:
            return self._cdn(repo, state, path)
        return f"{self.ctx.cdn_base}/{_quoted(repo.key)}/{_quoted(path)}"


def _quoted(path: str) -> str:
    return "/".join(quote(p, safe="") for p in path.split("/"))


class _Span:
    """A slice of a sorted list, paged without copying the rest."""

    def __init__(self, items: list[str], lo: int = 0, hi: int | None = None) -> None:
        self.items, self.lo = items, lo
        self.hi = len(items) if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def page(self, first: int, last: int) -> list[str]:
        first, last = max(first, 0), min(max(last, 0), len(self))
        return self.items[self.lo + first : self.lo + last] if first < last else []


def _scope(state: RepoState, root: str, recursive: bool) -> tuple[_Span, _Span]:
    """The blobs and directories a listing of `root` shows, in order: a directory's
    children from the index, or its subtree as a range of the sorted paths."""
    if not recursive:
        blobs, dirs = state.children.get(root, ([], []))
        return _Span(blobs), _Span(dirs)
    if not root:
        return _Span(state.blobs), _Span(state.dirs)
    prefix = root + "/"

    def under(paths: list[str]) -> _Span:
        # '0' follows '/': every path starting with the prefix sorts between the two
        return _Span(
            paths, bisect.bisect_left(paths, prefix), bisect.bisect_left(paths, root + "0")
        )

    return under(state.blobs), under(state.dirs)


def _blob(state: RepoState, path: str) -> dict[str, object]:
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
        "Revision": state.revision(path),
        "Sha256": state.sha256(path),
        "Size": f.size,
        "Type": "blob",
    }


def _tree(state: RepoState, path: str) -> dict[str, object]:
    return {
        "CommitMessage": "",
        "CommittedDate": 0,
        "CommitterName": "",
        "InCheck": False,
        "IsLFS": False,
        "Mode": "16384",
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Revision": state.commit,
        "Sha256": "",
        "Size": 0,
        "Type": "tree",
    }
