"""Pinned listings kept beside the cached bytes, so a node can mount with the hub down.

When a mount pins `owner/name@revision`, the listing it got is saved here; when the
hub (or the bucket) cannot be reached at the next mount, the saved listing is used
instead (with a warning), and every sealed file in it reads from disk with no network
at all. A bucket's listings keep what it pinned of each object (generation, CRC32C,
MD5), and are kept apart from any hub's and any other bucket's:

    DIR/v1/listings/<owner>/<name>@<revision>.json                   (models)
    DIR/v1/listings/_datasets/<owner>/<name>@<revision>.json         (datasets)
    DIR/v1/listings/_gs/<bucket>/<prefix…>/<repo key>@<revision>.json  (gs://BUCKET/PREFIX)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from fusefs.hub.client import RepoSpec, Snapshot
from fusefs.hub.gcs import BucketUrl
from fusefs.hub.listing import RepoFile, parse_files

_MD5 = re.compile(r"[0-9a-f]{32}")


def _path(directory: str | os.PathLike[str], spec: RepoSpec, bucket: BucketUrl | None) -> Path:
    # Revisions may hold '/' (branch names): keep the file name one component.
    revision = spec.revision.replace("/", "%2F")
    owner, _, name = spec.repo.key.rpartition("/")  # a model and a dataset never share one
    base = Path(directory) / "v1" / "listings"
    if bucket is not None:  # '_' starts no owner: never a hub's listing
        base = base / "_gs" / bucket.bucket / bucket.prefix
    return base / owner / f"{name}@{revision}.json"


def save_listing(
    directory: str | os.PathLike[str], snap: Snapshot, bucket: BucketUrl | None = None
) -> None:
    path = _path(directory, RepoSpec(snap.repo, snap.revision), bucket)
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
                "Generation": f.generation,
                "Crc32c": f.crc32c,
                "Md5": f.md5,
            }
            for f in snap.files
        ],
    }
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{os.urandom(4).hex()}")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)  # readers see the old listing or the new one, never half of one


def load_listing(
    directory: str | os.PathLike[str], spec: RepoSpec, bucket: BucketUrl | None = None
) -> Snapshot | None:
    """The saved listing for this repo and revision, or None when there is none usable."""
    try:
        body = json.loads(_path(directory, spec, bucket).read_text())
        entries = body["files"]
        files = parse_files(str(spec.repo), entries)
        pins = {e.get("Path"): e for e in entries if isinstance(e, dict)}
        files = [_pinned(f, pins.get(f.path)) for f in files]
        if bucket is not None and not all(f.generation for f in files):
            return None  # a bucket's files are read by generation: none, no listing
        return Snapshot(spec.repo, spec.revision, str(body["commit"]), files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _pinned(f: RepoFile, entry: dict[str, object] | None) -> RepoFile:
    """`f` with the generation and hashes its kept entry names, each only when valid."""
    if entry is None:
        return f
    generation, crc, md5 = entry.get("Generation"), entry.get("Crc32c"), entry.get("Md5")
    return dataclasses.replace(
        f,
        generation=_whole(generation, 1, 1 << 63),
        crc32c=_whole(crc, 0, 1 << 32),
        md5=md5 if isinstance(md5, str) and _MD5.fullmatch(md5) else None,
    )


def _whole(value: object, low: int, high: int) -> int | None:
    """`value` when it is a whole number in [low, high), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value < high:
        return value
    return None
