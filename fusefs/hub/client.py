"""The control plane: the hub's HTTP API as the official ModelScope SDK speaks it, over httpx.

It answers which repos exist, pins a revision to a commit, lists a commit's
files and says, per file and region, where the bytes live (a `Location`). It
never reads file content.

How the hub is read (the SDK, modelscope-hub 0.5, is the reference):

* The HTTP status decides: 2xx is an answer, whose `Data` is the payload (the whole
  body when it has no `Data`); 404 means not found; anything else is an error line
  carrying the body's `Message`. `Code` and `Success` are not looked at, as the SDK
  does not look at them.
* Models are listed with `repo/files` (no paging): a recursive listing of exactly
  `LISTING_CAP` entries was cut short by the hub, so the tree is walked as the SDK
  walks it (a shallow listing of the cut directory, then each child directory).
  Datasets are listed with `repo/tree`, page by page, until a short page.
* A branch or tag is pinned to its head commit with `commits?Ref=<rev>&PageSize=1`
  (the real hub's `revisions` names branches and tags but not their commits), then
  listed and read by that full commit id. A hub that offers no way to pin is read
  by the branch name, said once in the log.
* Credentials (`Authorization: Bearer`, cookie `m_session_id`, as the SDK sends them)
  go only to the hub's own origin (scheme, host, port), never to an address the hub
  names (region query address, redirects, CDN).
* Every request has a total deadline, retries included: a hub that trickles its
  answer cannot hold a caller longer than that.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import trio

from fusefs.data.location import valid_region
from fusefs.hub.http1 import HeadClient, ProbeError
from fusefs.hub.listing import RepoFile, parse_files
from fusefs.logs import escape

log = logging.getLogger(__name__)

REGION_HEADER = "x-aliyun-region-id"
# Sent with every probe: this client reads grpc:// locations. A store hands grpc://
# locations only to clients that send it; everyone else gets an http(s) location.
ACCEPT_HEADER = "x-modelfs-accept"
REPO_TYPES = ("model", "dataset")
DATASET_KEY_PREFIX = "_datasets"  # no owner starts with '_': see RepoId.key
_COMMIT = re.compile(r"[0-9a-f]{40}")
_OWNER_OR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_REDIRECTS = (301, 302, 303, 307, 308)
_RETRIED = (429, 500, 502, 503, 504)
_COOKIE_SAFE = re.compile(r"[!#-+\--:<-\[\]-~]+")

LISTING_CAP = 3000  # a recursive `repo/files` answer this long was cut short by the hub
PAGE_SIZE = 200  # `repo/tree` page size, as the SDK asks
MAX_LISTING_REQUESTS = 5000  # per repo: walk levels or pages (the SDK's budget too)
MAX_LISTING_ENTRIES = 2_000_000
MAX_ANSWER_BYTES = 64 << 20  # one JSON answer; a 3000-entry listing is ~1.5 MB
WALK_WORKERS = 8  # directory listings in flight during a walk
DEADLINE = 20.0  # seconds for one hub call, retries included
PROBE_TIMEOUT = 3.0
REGION_TIMEOUT = 0.5  # each of the two region-detection requests (the SDK: 0.2 s)
_ATTEMPTS = 3


class HubError(Exception):
    """The hub could not answer; the message is one line for a person."""


class RepoNotFound(HubError):
    pass


class HubTimeout(HubError):
    """The hub did not answer within the deadline."""


def valid_repo_part(part: str) -> bool:
    """Owner and repo names as the hub allows them; anything else is never asked for."""
    return _OWNER_OR_NAME.fullmatch(part) is not None


def is_commit(revision: str) -> bool:
    return _COMMIT.fullmatch(revision) is not None


@dataclass(frozen=True)
class RepoId:
    owner: str
    name: str
    repo_type: str = "model"  # one of REPO_TYPES

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def api(self) -> str:
        return f"/api/v1/{self.repo_type}s/{quote(self.owner, safe='')}/{quote(self.name, safe='')}"

    @property
    def key(self) -> str:
        """The repo's name in data-plane object names, CDN paths and cache keys:
        `owner/name` for a model, `_datasets/owner/name` for a dataset. Owners never
        start with '_', so a model and a dataset of the same name never meet."""
        if self.repo_type == "dataset":
            return f"{DATASET_KEY_PREFIX}/{self.owner}/{self.name}"
        return f"{self.owner}/{self.name}"


def split_key(text: str) -> tuple[RepoId, str] | None:
    """(repo, rest) of `<RepoId.key>/<rest>`; None when it names no valid repo."""
    repo_type = "model"
    if text.startswith(DATASET_KEY_PREFIX + "/"):
        repo_type, text = "dataset", text[len(DATASET_KEY_PREFIX) + 1 :]
    owner, _, rest = text.partition("/")
    name, _, rest = rest.partition("/")
    if not valid_repo_part(owner) or not valid_repo_part(name):
        return None
    return RepoId(owner, name, repo_type), rest


@dataclass(frozen=True)
class RepoSpec:
    repo: RepoId
    revision: str = "master"

    @classmethod
    def parse(cls, text: str, repo_type: str = "model") -> RepoSpec:
        """OWNER/NAME[@REVISION]"""
        name, _, revision = text.partition("@")
        owner, slash, repo = name.partition("/")
        if not slash or not valid_repo_part(owner) or not valid_repo_part(repo):
            raise ValueError(f"bad repo {text!r}: expected OWNER/NAME[@REVISION]")
        if "@" in text and not revision:
            raise ValueError(f"bad repo {text!r}: empty revision after '@'")
        if any(c.isspace() or not c.isprintable() for c in revision) or len(revision) > 256:
            raise ValueError(f"bad repo {text!r}: bad revision")
        return cls(RepoId(owner, repo, repo_type), revision or "master")


@dataclass(frozen=True)
class Snapshot:
    """One repo at one revision: what a mount shows."""

    repo: RepoId
    revision: str  # as asked (branch, tag or commit)
    commit: str  # the full commit id; the revision itself when the hub offers no pin
    files: list[RepoFile]

    @property
    def pinned(self) -> bool:
        return is_commit(self.commit)

    def content_id(self, f: RepoFile) -> str:
        """What names `f`'s content besides its digest: the object generation a bucket
        listing pinned, else the pinned commit, else the commit that last touched the
        file (a branch name would outlive the content)."""
        if f.generation:
            return f"generation {f.generation}"
        return self.commit if self.pinned else (f.revision or self.commit)


@dataclass(frozen=True)
class Answer:
    """What the hub said when asked where a file's bytes are."""

    status: int
    location: str | None  # set for redirects


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port made explicit."""
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), url.port or default


def _credentials(token: str | None) -> dict[str, str]:
    """The headers that carry the hub token, as the SDK sends it; only ever to the hub."""
    if not token:
        return {}
    headers = {"Authorization": f"Bearer {token}"}
    if _COOKIE_SAFE.fullmatch(token):
        headers["Cookie"] = f"m_session_id={token}"
    return headers


class _HubAuth(httpx.Auth):
    """Credentials on requests to the hub's own origin, and on nothing else."""

    def __init__(self, hub: httpx.URL, token: str):
        self.origin = origin(hub)
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if origin(request.url) == self.origin:
            request.headers.update(_credentials(self.token))
        yield request


def _message(body: object) -> str:
    """The error text a hub answer carries (the keys the SDK looks at), one safe line."""
    if isinstance(body, dict):
        for key in ("message", "Message", "msg", "Msg", "error", "Error", "detail", "Detail"):
            text = body.get(key)
            if isinstance(text, str) and text.strip():
                return escape(text.strip()[:200])
    return ""


class HubClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        repo_type: str = "model",
        deadline: float = DEADLINE,
        probe_timeout: float = PROBE_TIMEOUT,
        region_timeout: float = REGION_TIMEOUT,
        listing_cap: int = LISTING_CAP,
    ):
        if repo_type not in REPO_TYPES:
            raise ValueError(f"repo type must be one of {', '.join(REPO_TYPES)}")
        self.base_url = base_url.rstrip("/")
        self.repo_type = repo_type
        self.deadline = deadline
        self.probe_timeout = probe_timeout
        self.region_timeout = region_timeout
        self.listing_cap = listing_cap  # the hub's cut of a recursive `repo/files`
        auth = _HubAuth(httpx.URL(self.base_url), token) if token else None
        self._probes = HeadClient(self.base_url, {"user-agent": "modelfs", **_credentials(token)})
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"User-Agent": "modelfs"},
            auth=auth,
            timeout=httpx.Timeout(min(deadline, 10.0), connect=min(deadline, 5.0)),
            follow_redirects=False,
        )

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._probes.aclose()
        await self._http.aclose()

    def repo(self, owner: str, name: str) -> RepoId:
        """A repo of the kind this client serves."""
        return RepoId(owner, name, self.repo_type)

    # -- requests ----------------------------------------------------------------------

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> object:
        """The payload of a hub answer: `Data`, or the whole body when it has none."""
        with trio.move_on_after(self.deadline) as scope:
            body = await self._get_json_retrying(path, params)
        if scope.cancelled_caught:
            raise HubTimeout(
                f"hub {self.base_url} did not answer {path} within {self.deadline:g} s"
            )
        return body.get("Data", body) if isinstance(body, dict) else body

    async def _get_json_retrying(self, path: str, params: dict[str, str] | None) -> object:
        error = HubError(f"hub {self.base_url}: no attempt made")
        for attempt in range(_ATTEMPTS):
            if attempt:
                await trio.sleep(0.5 * 2 ** (attempt - 1))
            try:
                status, raw = await self._read(path, params)
            except httpx.HTTPError as e:
                error = HubError(f"hub {self.base_url} unreachable: {e.__class__.__name__}: {e}")
                continue
            body = _parse_json(raw)
            if 200 <= status < 300:
                if body is _MALFORMED:
                    raise HubError(f"hub sent malformed JSON for {path}")
                return body
            why = _message(body)
            detail = f": {why}" if why else ""
            if status == 404:
                raise RepoNotFound(f"not found on the hub: {path}{detail}")
            error = HubError(f"hub answered {status} for {path}{detail}")
            if status not in _RETRIED:
                raise error
        raise error

    async def _read(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        """Status and body of one GET, the body bounded by MAX_ANSWER_BYTES."""
        async with self._http.stream("GET", path, params=params) as response:
            if not 200 <= response.status_code < 300 and response.status_code != 404:
                # An error's message is worth a little; never a large body.
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > 4096:
                        break
                return response.status_code, body
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise HubError(f"hub answer for {path} is larger than {MAX_ANSWER_BYTES} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    # -- pinning -----------------------------------------------------------------------

    async def head_commit(self, repo: RepoId, revision: str) -> str | None:
        """The full commit id a branch or tag points at, or None when the hub does not
        say (no `commits` route, an empty answer, or no full id in it)."""
        try:
            data = await self._get_json(
                f"{repo.api}/commits", {"Ref": revision, "PageNumber": "1", "PageSize": "1"}
            )
        except RepoNotFound:
            return None  # an unknown ref, repo or route: the listing tells which
        commits = data.get("Commit") if isinstance(data, dict) else None
        first = commits[0] if isinstance(commits, list) and commits else None
        commit = first.get("Id") if isinstance(first, dict) else None
        return commit.lower() if isinstance(commit, str) and is_commit(commit.lower()) else None

    async def snapshot(self, repo: RepoId, revision: str = "master") -> Snapshot:
        """The repo pinned at the head commit of `revision`, and its files."""
        if is_commit(revision.lower()):
            commit: str | None = revision.lower()
        else:
            try:
                commit = await self.head_commit(repo, revision)
            except HubTimeout:
                raise  # a hub this slow would only be slower at listing
            except HubError as e:
                log.info("%s: cannot ask the head of %s: %s", repo, revision, e)
                commit = None
        entries, latest = await self._listing(repo, commit or revision)
        if commit is not None and latest is not None and latest != commit:
            log.warning(
                "%s@%s: the hub's commits say %s, its listing says %s; reading %s",
                repo,
                revision,
                commit[:12],
                latest[:12],
                commit[:12],
            )
        if commit is None and latest is not None:
            # Listed by name; the listing says which commit it is: read by that id,
            # which names exactly what was listed.
            commit = latest
        if commit is None:
            log.warning(
                "%s@%s: the hub offers no way to pin this revision to a commit; "
                "reading it by name (files may change under the mount; per-file "
                "revisions are kept)",
                repo,
                revision,
            )
        try:
            files = parse_files(str(repo), entries)
        except ValueError as e:
            raise HubError(str(e)) from None
        return Snapshot(repo, revision, commit or revision, files)

    # -- listings ----------------------------------------------------------------------

    async def _listing(self, repo: RepoId, revision: str) -> tuple[list[object], str | None]:
        """Every entry of the repo at `revision`, and the full commit id the hub's
        listing names (`LatestCommitter.Id`), if any."""
        if repo.repo_type == "dataset":
            return await self._pages(repo, revision)
        data = await self._list(repo, revision, "", recursive=True)
        entries = _entries(repo, data)
        if len(entries) >= self.listing_cap:
            entries = await self._walk(repo, revision, entries)
        return entries, _latest_commit(data)

    async def _list(self, repo: RepoId, revision: str, root: str, recursive: bool) -> object:
        params = {"Revision": revision, "Recursive": str(recursive)}
        if root:
            params["Root"] = root
        return await self._get_json(f"{repo.api}/repo/files", params)

    async def _walk(self, repo: RepoId, revision: str, first: list[object]) -> list[object]:
        """The whole tree behind a listing the hub cut at `listing_cap`, as the SDK walks it:
        each cut directory is listed shallowly and each of its child directories whole,
        level by level, until no listing comes back cut."""
        collected: dict[str, object] = {}
        requests, incomplete = 0, []

        def absorb(entries: list[object]) -> None:
            for entry in entries:
                path = _entry_path(entry)
                if path is not None and len(collected) < MAX_LISTING_ENTRIES:
                    collected.setdefault(path, entry)

        async def fetch(roots: list[str], recursive: bool) -> dict[str, list[object]]:
            nonlocal requests
            roots = roots[: max(0, MAX_LISTING_REQUESTS - requests)]
            requests += len(roots)
            out: dict[str, list[object]] = {}
            limiter = trio.CapacityLimiter(WALK_WORKERS)

            async def one(root: str) -> None:
                async with limiter:
                    out[root] = _entries(repo, await self._list(repo, revision, root, recursive))

            async with trio.open_nursery() as nursery:
                for root in roots:
                    nursery.start_soon(one, root)
            return out

        log.info(
            "%s: the listing came back at the hub's cap of %d; walking it", repo, self.listing_cap
        )
        frontier, known = [""], {"": first}
        while frontier:
            known.update(await fetch([r for r in frontier if r not in known], recursive=True))
            cut = []
            for root in frontier:
                subtree = known.pop(root, None)
                if subtree is not None:
                    absorb(subtree)
                    if len(subtree) >= self.listing_cap:
                        cut.append(root)
            shallow = await fetch(cut, recursive=False)
            frontier = []
            for root in cut:
                level = shallow.get(root)
                if level is None:
                    continue
                absorb(level)
                # Only directories strictly below this one: a walk always goes deeper.
                below = root + "/" if root else ""
                children = [
                    p
                    for e in level
                    if _is_tree(e) and (p := _entry_path(e)) and p.startswith(below) and p != root
                ]
                if len(level) == self.listing_cap:  # cut too, as far as can be told
                    incomplete.append(root or "/")
                frontier.extend(children)
            frontier = list(dict.fromkeys(frontier))
            if requests >= MAX_LISTING_REQUESTS and frontier:
                incomplete.append("(request budget spent)")
                break
        if incomplete:
            log.warning(
                "%s: %d director%s hold %d or more direct entries, more than the hub lists "
                "at once; files past that may be missing: %s",
                repo,
                len(incomplete),
                "y" if len(incomplete) == 1 else "ies",
                self.listing_cap,
                ", ".join(incomplete[:5]),
            )
        return list(collected.values())

    async def _pages(self, repo: RepoId, revision: str) -> tuple[list[object], str | None]:
        """A dataset's `repo/tree`, page by page until a short page (as the SDK pages)."""
        collected: dict[str, object] = {}
        latest: str | None = None
        for page in range(1, MAX_LISTING_REQUESTS + 1):
            data = await self._get_json(
                f"{repo.api}/repo/tree",
                {
                    "Revision": revision,
                    "Recursive": "True",
                    "PageNumber": str(page),
                    "PageSize": str(PAGE_SIZE),
                },
            )
            entries = _entries(repo, data)
            latest = latest or _latest_commit(data)
            new = 0
            for entry in entries:
                path = _entry_path(entry)
                if path is not None and path not in collected:
                    collected[path] = entry
                    new += 1
            if len(entries) < PAGE_SIZE:
                return list(collected.values()), latest
            if new == 0:
                raise HubError(f"{repo}: the hub sends page {page} again (PageNumber ignored?)")
            if len(collected) >= MAX_LISTING_ENTRIES:
                break
        raise HubError(f"{repo}: listing longer than {len(collected)} entries; not mounted")

    # -- where bytes are ---------------------------------------------------------------

    def download_url(self, repo: RepoId, commit: str, path: str) -> str:
        return self.base_url + self._download_target(repo, commit, path)

    @staticmethod
    def _download_target(repo: RepoId, commit: str, path: str) -> str:
        query = f"Revision={quote(commit, safe='')}&FilePath={quote(path, safe='')}"
        return f"{repo.api}/repo?{query}"

    async def ask_location(
        self, repo: RepoId, commit: str, path: str, region: str | None
    ) -> Answer:
        """One probe: HEAD of the file's download URL, redirects not followed."""
        headers = {ACCEPT_HEADER: "grpc"}
        if region:
            headers[REGION_HEADER] = region
        with trio.move_on_after(self.probe_timeout) as scope:
            try:
                status, location = await self._probes.head(
                    self._download_target(repo, commit, path), headers
                )
            except ProbeError as e:
                raise HubError(f"{repo}/{path}: probe failed: {e}") from None
        if scope.cancelled_caught:
            raise HubError(f"{repo}/{path}: probe timed out after {self.probe_timeout:g} s")
        return Answer(status, location if status in _REDIRECTS else None)

    async def detect_region(self) -> str | None:
        """The region the hub says this machine is in, or None; quiet when absent.

        As the SDK: `internalAccelerationInfo` names a query address, whose answer is
        the region id as text. The address is the hub's to name, so it is asked
        without credentials, by a client of its own, within `region_timeout`."""
        address: object = None
        try:
            with trio.move_on_after(self.region_timeout):
                status, raw = await self._read("/api/v1/repos/internalAccelerationInfo", None)
                body = _parse_json(raw) if 200 <= status < 300 else None
                data = body.get("Data") if isinstance(body, dict) else None
                address = data.get("InternalRegionQueryAddress") if isinstance(data, dict) else None
                if not isinstance(address, str) or not address.startswith(("http://", "https://")):
                    return None
            if not isinstance(address, str):
                return None
            with trio.move_on_after(self.region_timeout):
                return await _ask_region(address)
        except (HubError, httpx.HTTPError, ValueError) as e:
            log.debug("no region from the hub: %s", e)
        return None


async def _ask_region(address: str) -> str | None:
    async with (
        httpx.AsyncClient(follow_redirects=False) as bare,
        bare.stream("GET", address) as response,
    ):
        if response.status_code != 200:
            return None
        text = b""
        async for chunk in response.aiter_bytes():
            text += chunk
            if len(text) > 256:
                return None  # no region id is this long
    region = text.decode(errors="replace").strip()
    if valid_region(region):
        return region
    log.debug("the region query address answered no region name: %.64r", region)
    return None


_MALFORMED = object()
_LISTING_KEYS = {"Files", "files", "IsVisual", "LatestCommitter", "TotalCount"}


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return _MALFORMED


def _entries(repo: RepoId, data: object) -> list[object]:
    """The entry list of a listing payload: a list, or `Files`/`files` of an object."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        entries = data.get("Files") if "Files" in data else data.get("files")
        if isinstance(entries, list):
            return entries
        if entries is None and data.keys() & _LISTING_KEYS:
            return []  # an empty repo: `Files` null or absent beside the listing's own keys
    raise HubError(f"{repo}: malformed listing")


def _latest_commit(data: object) -> str | None:
    """`LatestCommitter.Id` of a listing, when it is a full commit id."""
    latest = data.get("LatestCommitter") if isinstance(data, dict) else None
    commit = latest.get("Id") if isinstance(latest, dict) else None
    return commit.lower() if isinstance(commit, str) and is_commit(commit.lower()) else None


def _entry_path(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return None
    for key in ("Path", "path", "Name"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return value.strip("/") if key != "Name" else value
    return None


def _is_tree(entry: object) -> bool:
    return isinstance(entry, dict) and entry.get("Type") == "tree"
