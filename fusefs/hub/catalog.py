"""What a mount asks of the place its repos come from.

Two kinds of catalog answer it: a model hub (`fusefs.hub.client.HubClient`: the
ModelScope API, per-file location probes) and a Cloud Storage bucket
(`fusefs.hub.gcs.GcsCatalog`: `PREFIX/<repo key>/<files…>`, every object's
generation pinned). The filesystem finds repos through `repo` and `snapshot`; where
a file's bytes are is the resolver's business (`fusefs.hub.resolve.FileResolver`).
"""

from __future__ import annotations

from typing import Protocol

from fusefs.hub.client import RepoId, Snapshot


class Catalog(Protocol):
    def repo(self, owner: str, name: str) -> RepoId:
        """A repo of the kind this catalog serves."""
        ...

    async def snapshot(self, repo: RepoId, revision: str = "master") -> Snapshot:
        """The repo pinned at `revision` and its files; RepoNotFound when there is no
        such repo (or revision), HubError when the catalog cannot say."""
        ...
