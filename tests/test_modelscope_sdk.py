"""Conformance: the official `modelscope` SDK (1.40, modelscope-hub 0.5) against `modelfs
serve`, as a user would point it there (MODELSCOPE_ENDPOINT). Every download is compared
byte for byte (sha256) with the store's files; the SDK itself checks sizes and sha256.

The SDK keeps process-wide state (a config singleton, constants read at import): each
test sets its environment, then resets the singleton; its cache and home are per test.
Its logger (`modelscope_hub`) does not propagate, so a handler is attached to it to
see every warning it logs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from fusefs.testing import MiB, sample_bytes, start_regions, write_file

REGIONS = {"cn-test": ["acme/*"], "cn-far": ["far/*"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (dotfiles included)."""
    return {
        p.relative_to(root).as_posix(): sha(p)
        for p in root.rglob("*")
        if p.is_file() and ".git/" not in p.relative_to(root).as_posix() + "/"
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("sdk")
    models, datasets = base / "models", base / "datasets"
    model = models / "acme" / "tiny"
    write_file(model / ".gitattributes", b"*.bin filter=lfs diff=lfs merge=lfs -text\n")
    write_file(model / "README.md", b"# tiny\n")
    write_file(model / "config.json", b'{"hidden_size": 8}\n')
    write_file(model / "sub" / "dir" / "weights.bin", sample_bytes(3 * MiB + 7, seed=11))
    write_file(model / ".git" / "HEAD", b"ref: refs/heads/master\n")  # never served
    ds = datasets / "acme" / "corpus"
    write_file(ds / ".gitattributes", b"*.csv text\n")
    for i in range(260):  # more than one 200-entry page
        write_file(ds / "data" / f"train-{i:04d}.csv", f"id,text\n{i},row {i}\n".encode())
    write_file(ds / "big.bin", sample_bytes(MiB + 3, seed=12))
    server = start_regions(
        models, REGIONS, "--datasets", str(datasets), "--client-region", "cn-test"
    )
    yield models, datasets, server
    server.stop()


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture
def sdk(world, tmp_path, monkeypatch):
    """The SDK pointed at the store; yields (its download functions, the warnings it logs)."""
    _, _, server = world
    for key in [k for k in os.environ if k.startswith("MODELSCOPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", server.hub)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "")
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "false")
    import modelscope_hub.config
    from modelscope import model_file_download, snapshot_download
    from modelscope.hub.file_download import dataset_file_download
    from modelscope.hub.snapshot_download import dataset_snapshot_download

    modelscope_hub.config.set_default_config(None)
    handler = Warnings()
    logger = logging.getLogger("modelscope_hub")
    logger.addHandler(handler)
    server.reset_stats()
    try:
        yield (
            SimpleNamespace(
                snapshot_download=snapshot_download,
                model_file_download=model_file_download,
                dataset_snapshot_download=dataset_snapshot_download,
                dataset_file_download=dataset_file_download,
            ),
            handler.records,
        )
    finally:
        logger.removeHandler(handler)
        modelscope_hub.config.set_default_config(None)


def test_snapshot_of_a_model_byte_exact_with_dotfiles(world, sdk, tmp_path):
    models, _, server = world
    ms, warnings = sdk
    got = Path(ms.snapshot_download("acme/tiny", revision="master", cache_dir=str(tmp_path / "c")))
    assert got == tmp_path / "c" / "models" / "acme--tiny" / "snapshots" / "master"
    expected = files_of(models / "acme" / "tiny")
    assert ".gitattributes" in expected and "sub/dir/weights.bin" in expected
    assert files_of(got) == expected  # .gitattributes included, .git/ never
    assert warnings == []
    stats = server.stats()
    assert stats["cdn_bytes"] == sum(
        (models / "acme" / "tiny" / p).stat().st_size for p in expected
    )


def test_snapshot_of_a_dataset_through_pages(world, sdk, tmp_path):
    _, datasets, _ = world
    ms, warnings = sdk
    got = Path(
        ms.dataset_snapshot_download("acme/corpus", revision="master", cache_dir=str(tmp_path))
    )
    assert got == tmp_path / "datasets" / "acme--corpus" / "snapshots" / "master"
    expected = files_of(datasets / "acme" / "corpus")
    assert len(expected) == 262
    assert files_of(got) == expected
    assert warnings == []


def test_single_files_of_a_model_and_a_dataset(world, sdk, tmp_path):
    models, datasets, _ = world
    ms, warnings = sdk
    # no revision: the SDK asks `revisions` for tags, finds none, reads master
    path = Path(ms.model_file_download("acme/tiny", "sub/dir/weights.bin", cache_dir=str(tmp_path)))
    assert sha(path) == sha(models / "acme/tiny/sub/dir/weights.bin")
    path = Path(ms.dataset_file_download("acme/corpus", "big.bin", cache_dir=str(tmp_path)))
    assert sha(path) == sha(datasets / "acme/corpus/big.bin")
    assert warnings == []


def test_pinned_commit(world, sdk, tmp_path):
    models, _, server = world
    ms, warnings = sdk
    commits = requests.get(
        f"{server.hub}/api/v1/models/acme/tiny/commits", params={"Ref": "master"}, timeout=10
    ).json()
    commit = commits["Data"]["Commit"][0]["Id"]
    got = Path(ms.snapshot_download("acme/tiny", revision=commit, cache_dir=str(tmp_path)))
    assert got.name == commit
    assert files_of(got) == files_of(models / "acme" / "tiny")
    single = ms.model_file_download(
        "acme/tiny", "config.json", revision=commit, cache_dir=str(tmp_path / "one")
    )
    assert Path(single).read_bytes() == b'{"hidden_size": 8}\n'
    assert warnings == []


def test_unknown_repo_file_and_revision_are_clean_errors(sdk, tmp_path):
    ms, _ = sdk
    cache = str(tmp_path)
    with pytest.raises(requests.HTTPError, match="404"):
        ms.snapshot_download("acme/nope", revision="master", cache_dir=cache)
    with pytest.raises(requests.HTTPError, match="404"):
        ms.dataset_snapshot_download("acme/nope", revision="master", cache_dir=cache)
    with pytest.raises(requests.HTTPError, match="404"):
        ms.model_file_download("acme/tiny", "missing.bin", revision="master", cache_dir=cache)
    with pytest.raises(requests.HTTPError, match="404"):
        ms.dataset_file_download("acme/corpus", "missing.csv", revision="master", cache_dir=cache)
    with pytest.raises(requests.HTTPError, match="404"):
        ms.snapshot_download("acme/tiny", revision="no-such-branch", cache_dir=cache)


def test_region_detected_through_internal_acceleration_info(world, sdk, tmp_path, monkeypatch):
    models, _, server = world
    ms, warnings = sdk
    monkeypatch.delenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD")
    got = Path(ms.snapshot_download("acme/tiny", revision="master", cache_dir=str(tmp_path)))
    assert files_of(got) == files_of(models / "acme" / "tiny")
    stats = server.stats()
    total = sum(p.stat().st_size for p in got.rglob("*") if p.is_file())
    # the SDK asked internalAccelerationInfo, then the region query address ("cn-test"),
    # and sent that region with every download: all bytes came from cn-test's path
    assert stats["probes"] == {"cn-test": 4}
    assert stats["internal_http"]["bytes"] == {"cn-test": total}
    assert stats["cdn_bytes"] == 0
    assert warnings == []


@pytest.mark.parametrize("kind", ["model", "dataset"])
def test_intra_cloud_download_served_by_the_regions_store(world, sdk, tmp_path, monkeypatch, kind):
    models, datasets, server = world
    ms, warnings = sdk
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "true")
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION", "cn-test")
    if kind == "model":
        got = ms.snapshot_download("acme/tiny", revision="master", cache_dir=str(tmp_path))
        source = models / "acme" / "tiny"
    else:
        got = ms.dataset_snapshot_download(
            "acme/corpus", revision="master", cache_dir=str(tmp_path)
        )
        source = datasets / "acme" / "corpus"
    expected = files_of(source)
    assert files_of(Path(got)) == expected
    stats = server.stats()
    total = sum((source / p).stat().st_size for p in expected)
    assert stats["probes"] == {"cn-test": len(expected)}  # one GET per file, none failed
    assert stats["internal_http"] == {
        "requests": {"cn-test": len(expected)},
        "bytes": {"cn-test": total},
    }
    assert stats["cdn_requests"] == 0
    assert warnings == []


def test_region_that_does_not_hold_the_repo_reads_the_public_path(
    world, sdk, tmp_path, monkeypatch
):
    models, _, server = world
    ms, warnings = sdk
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD", "true")
    monkeypatch.setenv("MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION", "cn-far")
    got = ms.snapshot_download("acme/tiny", revision="master", cache_dir=str(tmp_path))
    assert files_of(Path(got)) == files_of(models / "acme" / "tiny")
    stats = server.stats()
    assert stats["internal_http"]["bytes"] == {} and stats["cdn_bytes"] > 0
    assert warnings == []
