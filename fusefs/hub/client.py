"""The control plane: the hub's HTTP API (ModelScope shape), over httpx.

It answers which repos exist, pins a revision to a commit, lists a commit's
files and says, per file and region, where the bytes live (a `Location`). It
never reads file content.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from fusefs.hub.listing import RepoFile, parse_files

log = logging.getLogger(__name__)

REGION_HEADER = "x-aliyun-region-id"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_OWNER_OR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REDIRECTS = (301, 302, 303, 307, 308)
LISTING_CAP = 3000  # a recursive listing this long may have been cut short by the hub
MAX_DIRECTORIES = 100_000


class HubError(Exception):
    """The hub could not answer; the message is one line for a person."""


class RepoNotFound(HubError):
    pass


@dataclass(frozen=True)
class RepoId:
    owner: str
    name: str

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def api(self) -> str:
        return f"/api/v1/models/{quote(self.owner, safe='')}/{quote(self.name, safe='')}"


def valid_repo_part(part: str) -> bool:
    """Owner and repo names as the hub allows them; anything else is never asked for."""
    return bool(_OWNER_OR_NAME.match(part))


@dataclass(frozen=True)
class RepoSpec:
    repo: RepoId
    revision: str = "master"

    @classmethod
    def parse(cls, text: str) -> RepoSpec:
        """OWNER/NAME[@REVISION]"""
        name, _, revision = text.partition("@")
        owner, slash, repo = name.partition("/")
        if not slash or not valid_repo_part(owner) or not valid_repo_part(repo):
            raise ValueError(f"bad repo {text!r}: expected OWNER/NAME[@REVISION]")
        if "@" in text and not revision:
            raise ValueError(f"bad repo {text!r}: empty revision after '@'")
        return cls(RepoId(owner, repo), revision or "master")


@dataclass(frozen=True)
class Snapshot:
    """One repo pinned at one commit: what a mount shows."""

    repo: RepoId
    revision: str  # as asked (branch, tag or commit)
    commit: str
    files: list[RepoFile]


@dataclass(frozen=True)
class Answer:
    """What the hub said when asked where a file's bytes are."""

    status: int
    location: str | None  # set for redirects


class HubClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        probe_timeout: float = 3.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.probe_timeout = probe_timeout
        headers = {"User-Agent": "modelfs"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, follow_redirects=False
        )

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> object:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as e:
            raise HubError(
                f"hub {self.base_url} unreachable: {e.__class__.__name__}: {e}"
            ) from None
        if response.status_code == 404:
            raise RepoNotFound(f"not found on the hub: {path}")
        if response.status_code != 200:
            raise HubError(f"hub answered {response.status_code} for {path}")
        try:
            body = response.json()
        except ValueError:
            raise HubError(f"hub sent malformed JSON for {path}") from None
        if not isinstance(body, dict) or "Data" not in body:
            raise HubError(f"hub sent an unexpected answer for {path}")
        return body["Data"]

    async def resolve_revision(self, repo: RepoId, revision: str = "master") -> str:
        """The commit id a branch or tag points at (a commit id stands for itself)."""
        data = await self._get_json(f"{repo.api}/revisions")
        revmap = data.get("RevisionMap", {}) if isinstance(data, dict) else {}
        for kind in ("Branches", "Tags"):
            for ref in revmap.get(kind) or ():
                if isinstance(ref, dict) and ref.get("Revision") == revision:
                    commit = ref.get("CommitId")
                    if isinstance(commit, str) and commit:
                        return commit
        if _COMMIT.match(revision):
            return revision
        raise RepoNotFound(f"{repo}: no branch or tag {revision!r}")

    async def _list(self, repo: RepoId, commit: str, root: str, recursive: bool) -> list[object]:
        data = await self._get_json(
            f"{repo.api}/repo/files",
            {"Revision": commit, "Recursive": "true" if recursive else "false", "Root": root},
        )
        entries = data.get("Files") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise HubError(f"{repo}: malformed listing")
        return entries

    async def snapshot(self, repo: RepoId, revision: str = "master") -> Snapshot:
        commit = await self.resolve_revision(repo, revision)
        entries = await self._list(repo, commit, "", recursive=True)
        if len(entries) >= LISTING_CAP:
            # The hub caps recursive listings; one directory at a time is complete.
            entries = await self._walk(repo, commit)
        try:
            files = parse_files(str(repo), entries)
        except ValueError as e:
            raise HubError(str(e)) from None
        return Snapshot(repo, revision, commit, files)

    async def _walk(self, repo: RepoId, commit: str) -> list[object]:
        entries: list[object] = []
        pending, seen = [""], set[str]()
        while pending:
            root = pending.pop()
            if root in seen or len(seen) > MAX_DIRECTORIES:
                continue  # a listing that loops or explodes is not followed forever
            seen.add(root)
            for entry in await self._list(repo, commit, root, recursive=False):
                if isinstance(entry, dict) and entry.get("Type") == "tree":
                    path = entry.get("Path")
                    if isinstance(path, str) and path and not path.startswith("/"):
                        pending.append(path)
                else:
                    entries.append(entry)
        return entries

    def download_url(self, repo: RepoId, commit: str, path: str) -> str:
        query = f"Revision={quote(commit, safe='')}&FilePath={quote(path, safe='')}"
        return f"{self.base_url}{repo.api}/repo?{query}"

    async def ask_location(
        self, repo: RepoId, commit: str, path: str, region: str | None
    ) -> Answer:
        """One probe: HEAD of the file's download URL, redirects not followed."""
        headers = {REGION_HEADER: region} if region else {}
        try:
            response = await self._http.head(
                self.download_url(repo, commit, path), headers=headers, timeout=self.probe_timeout
            )
        except httpx.HTTPError as e:
            raise HubError(f"{repo}/{path}: probe failed: {e.__class__.__name__}") from None
        location = response.headers.get("location") if response.status_code in _REDIRECTS else None
        return Answer(response.status_code, location)

    async def detect_region(self) -> str | None:
        """The region the hub says this machine is in, or None. Quiet when absent."""
        try:
            data = await self._get_json("/api/v1/repos/internalAccelerationInfo")
            address = data.get("RegionQueryAddress") if isinstance(data, dict) else None
            if not isinstance(address, str) or not address:
                return None
            response = await self._http.get(address, timeout=self.probe_timeout)
        except (HubError, httpx.HTTPError):
            return None
        region = response.text.strip()
        return region if response.status_code == 200 and region else None
