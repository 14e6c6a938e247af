"""Pinned listings kept beside the cached bytes, so a node can mount with the hub down.

When a mount pins `owner/name@revision`, the listing it got is saved here; when the
hub cannot be reached at the next mount, the saved listing is used instead (with a
warning), and every sealed file in it reads from disk with no network at all.

    DIR/v1/listings/<owner>/<name>@<revision>.json          (models)
    DIR/v1/listings/_datasets/<owner>/<name>@<revision>.json  (datasets)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fusefs.hub.client import RepoSpec, Snapshot
from fusefs.hub.listing import parse_files


def _path(directory: str | os.PathLike[str], spec: RepoSpec) -> Path:
    # Revisions may hold '/' (branch names): keep the file name one component.
    revision = spec.revision.replace("/", "%2F")
    owner, _, name = spec.repo.key.rpartition("/")  # a model and a dataset never share one
    return Path(directory) / "v1" / "listings" / owner / f"{name}@{revision}.json"


def save_listing(directory: str | os.PathLike[str], snap: Snapshot) -> None:
    path = _path(directory, RepoSpec(snap.repo, snap.revision))
    path.parent.mkdir(parents=True, exist_ok=True)
    # The hub's own shape, so loading checks it exactly as a fresh listing is checked.
    body = {
        "commit": snap.commit,
        "files": [
            {
                "Path": f.path,
                "Size": f.size,
                "Sha256": f.sha256,
                "CommittedDate": f.mtime,
                "Revision": f.revision,
            }
            for f in snap.files
        ],
    }
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)  # readers see the old listing or the new one, never half of one


def load_listing(directory: str | os.PathLike[str], spec: RepoSpec) -> Snapshot | None:
    """The saved listing for this repo and revision, or None when there is none usable."""
    try:
        body = json.loads(_path(directory, spec).read_text())
        files = parse_files(str(spec.repo), body["files"])
        return Snapshot(spec.repo, spec.revision, str(body["commit"]), files)
    except (OSError, ValueError, KeyError, TypeError):
        return None
