"""Region resolution through a real mount over a multi-region `modelfs serve`."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from fusefs.testing import (
    MiB,
    mount_factory,
    sample_bytes,
    sha256_file,
    start_mount,
    start_regions,
    write_file,
)

REGIONS = {
    "home": ["local/*"],
    "peer-b": ["acme/*"],
    "peer-c": ["acme/*", "wide/*"],
    "peer-d": ["wide/*"],
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    write_file(root / "acme" / "llm" / "model.bin", sample_bytes(48 * MiB + 3, seed=21))
    write_file(root / "acme" / "llm" / "config.json", b'{"a": 1}\n')
    write_file(root / "local" / "small" / "w.bin", sample_bytes(3 * MiB, seed=22))
    write_file(root / "public" / "only" / "w.bin", sample_bytes(5 * MiB + 17, seed=23))
    for i in range(200):
        write_file(root / "wide" / "shards" / f"s{i:03d}.bin", f"shard {i}\n".encode())
    server = start_regions(root, REGIONS, "--faults")
    yield root, server
    server.stop()


@pytest.fixture
def mount(world, tmp_path):
    """Mounts in region `home`, which holds none of acme/public/wide."""
    with mount_factory(tmp_path, world[1].hub, "--region", "home") as make:
        yield make


def xattrs(path) -> tuple[str, str, str]:
    return tuple(
        os.getxattr(path, f"user.modelfs.{a}").decode() for a in ("source", "region", "endpoint")
    )


def test_peer_in_configured_order_serves_byte_exact(world, mount):
    root, server = world
    m = mount("--inter-regions", "peer-c,peer-b")  # both hold acme: the first listed wins
    path = m.path / "acme" / "llm" / "model.bin"
    assert sha256_file(path) == sha256_file(root / "acme" / "llm" / "model.bin")
    source, region, endpoint = xattrs(path)
    assert (source, region) == ("peer", "peer-c")
    assert endpoint.startswith(f"grpc://{server.grpc['peer-c']}/peer-c/")
    assert "⇄ acme/llm/model.bin via peer (peer-c)" in m.log_text()


def test_repo_held_nowhere_internal_reads_via_cdn(world, mount):
    root, _ = world
    m = mount("--inter-regions", "peer-b,peer-c")
    path = m.path / "public" / "only" / "w.bin"
    assert sha256_file(path) == sha256_file(root / "public" / "only" / "w.bin")
    source, region, endpoint = xattrs(path)
    assert (source, region) == ("cdn", "")
    assert "/cdn/public/only/" in endpoint


def test_local_region_wins_when_it_holds_the_repo(world, mount):
    root, _ = world
    m = mount("--inter-regions", "peer-b")
    path = m.path / "local" / "small" / "w.bin"
    assert sha256_file(path) == sha256_file(root / "local" / "small" / "w.bin")
    assert xattrs(path)[:2] == ("local", "home")


def test_opening_a_200_file_repo_from_8_threads_costs_n_plus_p_probes(world, mount):
    _root, server = world
    peers = ("peer-b", "peer-c", "peer-d")  # only peer-c and peer-d hold wide/*
    m = mount("--inter-regions", ",".join(peers))
    files = sorted((m.path / "wide" / "shards").iterdir())
    assert len(files) == 200
    server.reset_stats()

    def open_and_read(path):
        with open(path, "rb") as f:
            return f.read()

    with ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(open_and_read, files))
    assert contents == [f"shard {i}\n".encode() for i in range(200)]
    probes = sum(server.stats()["probes"].values())
    n, p = len(files), len(peers)
    assert probes <= n + p, probes
    assert probes < n * (1 + p)
    assert {xattrs(f)[1] for f in files} == {"peer-c"}


def test_killing_the_chosen_peer_mid_read_falls_back_to_the_next(world, tmp_path):
    root, _ = world
    server = start_regions(root, REGIONS, "--faults")  # ours to break
    m = start_mount(
        tmp_path / "m",
        server.hub,
        "--region",
        "home",
        "--inter-regions",
        "peer-b,peer-c",
        "--read-timeout",
        "20",
    )
    try:
        path = m.path / "acme" / "llm" / "model.bin"
        expected = (root / "acme" / "llm" / "model.bin").read_bytes()
        got = bytearray()
        # slow peer-b down so most of the file is still to come when it dies
        server.add_fault("delay", region="peer-b", ms=40, count=1000)
        with open(path, "rb", buffering=0) as f:
            got += f.read(8 * MiB)
            assert xattrs(path)[1] == "peer-b"
            server._call("POST", "/admin/faults", {"kind": "stop_listener", "region": "peer-b"})
            while chunk := f.read(MiB):
                got += chunk
        assert bytes(got) == expected
        assert xattrs(path)[1] == "peer-c"
        assert "now ⇄ via peer peer-c" in m.log_text()
    finally:
        m.unmount()
        server.stop()


def test_expired_data_url_is_resolved_again_once(world, mount):
    root, server = world
    m = mount()
    path = m.path / "public" / "only" / "w.bin"
    server.reset_stats()
    server.add_fault("cdn_forbidden", count=1)
    assert sha256_file(path) == sha256_file(root / "public" / "only" / "w.bin")
    stats = server.stats()
    assert stats["faults_injected"]["cdn_forbidden"] == 1
    assert sum(stats["probes"].values()) == 2  # the open, and one re-resolution
    assert "HTTP 403" in m.log_text()


def test_gone_twice_is_an_error_not_a_loop(world, mount):
    _, server = world
    m = mount()
    path = m.path / "public" / "only" / "w.bin"
    server.add_fault("cdn_forbidden", count=10)
    with pytest.raises(OSError), open(path, "rb") as f:
        f.read()
    server.clear_faults()
    log = m.log_text()
    assert log.count("failed (") == 1  # resolved again exactly once, then EIO
    assert "HTTP 403" in log
