"""Datasets through a real mount: `modelfs serve --datasets`, `modelfs mount --repo-type
dataset`, the region asked of the hub as the SDK asks it; and a model of the same
name beside it, never confused with the dataset."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from fusefs.testing import MiB, mount_factory, sample_bytes, sha256_file, start_regions, write_file


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("datasets")
    models, datasets = base / "models", base / "datasets"
    corpus = datasets / "acme" / "corpus"
    write_file(corpus / ".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    write_file(corpus / "README.md", b"# corpus\n")
    # 233 files: more than a page of the listing, fewer than the store's 256 streams
    # (every file read keeps its stream open until it idles out)
    for split, n in (("train", 210), ("test", 20)):
        for i in range(n):
            write_file(corpus / "data" / split / f"{i:04d}.jsonl", f'{{"i": {i}}}\n'.encode() * 40)
    write_file(corpus / "big.parquet", sample_bytes(2 * MiB + 5, seed=31))
    # a model of the same owner/name, with different content
    write_file(models / "acme" / "corpus" / "README.md", b"# the model, not the dataset\n")
    write_file(models / "acme" / "corpus" / ".gitattributes", b"*.bin binary\n")
    server = start_regions(
        models, {"home": ["*/*"]}, "--datasets", str(datasets), "--client-region", "home"
    )
    yield models, datasets, server
    server.stop()


@pytest.fixture
def mount(world, tmp_path):
    with mount_factory(tmp_path, world[2].hub) as make:  # no --region: asked of the hub
        yield make


def tree(root, threads: int = 1) -> dict[str, str]:
    """{relative path: sha256} of every file under root, read by `threads` readers."""
    paths = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
    with ThreadPoolExecutor(threads) as pool:
        digests = pool.map(sha256_file, paths)
    return {os.path.relpath(p, root): h for p, h in zip(paths, digests, strict=True)}


def test_a_dataset_of_hundreds_of_files_mounts_and_reads_byte_exact(world, mount):
    _, datasets, server = world
    server.reset_stats()
    m = mount("--repo-type", "dataset", "--repo", "acme/corpus")
    mounted, source = m.path / "acme" / "corpus", datasets / "acme" / "corpus"
    assert len(os.listdir(mounted / "data" / "train")) == 210  # more than one page of 200
    got = tree(mounted, threads=8)
    assert got == tree(source) and len(got) == 233
    assert ".gitattributes" in got
    status = m.status()
    assert status["region"] == "home"  # internalAccelerationInfo → regionId
    assert status["settings"]["repo_type"] == "dataset"
    assert os.getxattr(mounted / "big.parquet", "user.modelfs.source") == b"local"
    endpoint = os.getxattr(mounted / "big.parquet", "user.modelfs.endpoint").decode()
    assert "/home/_datasets/acme/corpus/big.parquet?generation=" in endpoint
    stats = server.stats()
    assert stats["grpc_bytes"]["home"] > 0 and stats["cdn_bytes"] == 0


def test_a_model_of_the_same_name_is_its_own_repo(world, mount):
    models, datasets, _ = world
    model = mount()  # models: the default kind
    readme = model.path / "acme" / "corpus" / "README.md"  # found on lookup, not pinned
    assert readme.read_bytes() == b"# the model, not the dataset\n"
    assert sorted(os.listdir(model.path / "acme" / "corpus")) == [".gitattributes", "README.md"]
    dataset = mount("--repo-type", "dataset")
    assert (dataset.path / "acme" / "corpus" / "README.md").read_bytes() == (
        datasets / "acme" / "corpus" / "README.md"
    ).read_bytes()
    assert not (dataset.path / "acme" / "nope").exists()
    assert (models / "acme" / "corpus" / ".gitattributes").read_bytes() == (
        model.path / "acme" / "corpus" / ".gitattributes"
    ).read_bytes()
