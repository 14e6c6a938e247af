"""A region that lives in a bucket: the hub's probes for it name the bucket's objects
(listed by the store with its own credentials, trusted only where they are the store's
very files), the mount reads them with its own; ⚡/⇄ and fallback to peers as ever."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fusefs.hub.gcs import BucketUrl
from fusefs.server.topology import RegionBucket, TopologyError, load
from fusefs.testing import MiB, run_cli, sample_bytes, start_mount, start_server, write_file

from support.gcs import TokenServer, sa_environment


def test_a_region_in_a_bucket_and_a_region_behind_a_listener(tmp_path, monkeypatch):
    tokens = TokenServer()
    sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "key.json"))
    root, replica = tmp_path / "root", tmp_path / "replica"
    files = {
        "acme/a/weights.bin": sample_bytes(3 * MiB + 1, seed=41),
        "acme/a/config.json": b'{"a": 1}\n',
        "acme/a/stale.bin": sample_bytes(100_000, seed=42),  # the replica has older bytes
        "other/b/x.bin": sample_bytes(200_000, seed=43),  # the bucket's region does not hold it
    }
    for name, data in files.items():
        write_file(root / name, data)
    shutil.copytree(root / "acme", replica / "acme")
    write_file(replica / "acme" / "a" / "stale.bin", sample_bytes(100_000, seed=44))
    # The bucket: a second store, in its Cloud Storage role (bucket = its region's name).
    bucket = start_server(replica, "--region", "bkt", "--require-token", f"{tokens.url}/introspect")
    hub = None
    try:
        topology = tmp_path / "topology.toml"
        topology.write_text(
            f'[regions.near]\ngcs = "gs://bkt"\ngcs_endpoint = "{bucket.hub}"\n'
            f'gcs_grpc_endpoint = "{bucket.grpc[""]}"\nrepos = ["acme/*"]\n'
            '[regions.far]\ngrpc = "127.0.0.1:0"\nrepos = ["*/*"]\n'
        )
        hub = start_server(root, "--topology", str(topology))
        m = start_mount(
            tmp_path / "mnt",
            hub.hub,
            "--region",
            "near",
            "--inter-regions",
            "far",
            "--gcs-endpoint",
            bucket.hub,
            "--gcs-grpc-endpoint",
            bucket.grpc[""],
        )
        try:
            where = {}
            for name, data in files.items():
                assert (m.path / name).read_bytes() == data
                source = os.getxattr(m.path / name, "user.modelfs.source").decode()
                region = os.getxattr(m.path / name, "user.modelfs.region").decode()
                where[name] = (source, region)
            assert where == {
                "acme/a/weights.bin": ("local", "near"),
                "acme/a/config.json": ("local", "near"),
                "acme/a/stale.bin": ("peer", "far"),
                "other/b/x.bin": ("peer", "far"),
            }
            endpoint = os.getxattr(m.path / "acme/a/weights.bin", "user.modelfs.endpoint")
            generation = os.stat(replica / "acme/a/weights.bin").st_mtime_ns // 1000
            assert endpoint.decode() == (
                f"grpc://{bucket.grpc['']}/bkt/acme/a/weights.bin?generation={generation}"
            )
            markers = {f["path"]: f["marker"] for f in m.status()["files"]}
            assert markers["acme/a/weights.bin"] == "⚡" and markers["other/b/x.bin"] == "⇄"
            near = bucket.stats()
            assert near["streams_unauthenticated"] == 0
            assert near["grpc_bytes"]["bkt"] >= len(files["acme/a/weights.bin"])
            assert near["gcs"]["refused"] == 0 and near["gcs"]["requests"] >= 1  # the listing
            assert near["gcs"]["bytes"] == 0  # the store only lists; the mount reads
            assert sum(hub.stats()["grpc_bytes"].values()) >= len(files["other/b/x.bin"])
            # Two processes, two sets of tokens from the same key: each asked for its own,
            # and sent it to the bucket alone, never to the hub.
            assert tokens.calls["token"] == 2 and tokens.calls["bad_assertion"] == 0
            assert set(hub.stats()["requests_with_credentials"].values()) == {0}
        finally:
            m.unmount()
    finally:
        if hub is not None:
            hub.stop()
        bucket.stop()
        tokens.stop()
    logs = [tmp_path / "mnt.log", tmp_path / "root-serve.log", tmp_path / "replica-serve.log"]
    text = "".join(p.read_text() for p in logs)
    assert tokens.issued and not any(token in text for token in tokens.issued)


def test_topology_regions_in_buckets(tmp_path):
    path = tmp_path / "t.toml"

    def parsed(text: str):
        path.write_text(text)
        return load(str(path))

    (region,) = parsed(
        '[regions.us]\ngcs = "gs://b/p/q/"\ngcs_grpc_endpoint = "h.example:443"\nrepos = ["*/*"]\n'
    )
    assert region.grpc is None
    assert region.bucket == RegionBucket(BucketUrl("b", "p/q/"), None, "grpc://h.example:443")
    for bad, why in (
        ('[regions.us]\ngrpc = "127.0.0.1:0"\ngcs = "gs://b"\n', "both"),
        ("[regions.us]\nrepos = []\n", "missing key 'grpc'"),
        ('[regions.us]\ngcs = "s3://b"\n', "gcs"),
        ('[regions.us]\ngcs = "gs://B"\n', "bucket"),
        ('[regions.us]\ngcs = "gs://b"\ngcs_endpoint = "ftp://x"\n', "gcs_endpoint"),
        ('[regions.us]\ngrpc = "127.0.0.1:0"\ngcs_endpoint = "http://x"\n', "without"),
    ):
        with pytest.raises(TopologyError, match=why):
            parsed(bad)


def test_a_bucket_region_reached_without_tls_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    topology = Path(tmp_path / "t.toml")
    topology.write_text('[regions.us]\ngcs = "gs://b"\ngcs_endpoint = "http://storage.example"\n')
    done = run_cli(
        "serve", str(tmp_path / "root"), "--http", "127.0.0.1:0", "--topology", str(topology)
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "Error: gcs endpoint http://storage.example is plain HTTP to another host: credentials "
        "go only over https (or to a loopback address)"
    ]
