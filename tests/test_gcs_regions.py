"""A region that lives in a bucket: the hub's probes for it name the bucket's objects
(listed by the store with its own credentials, trusted only where they are the store's
very files), the mount reads them with its own; ⚡/⇄ and fallback to peers as ever."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import crc32c
import pytest
import trio

from fusefs.hub.client import RepoId
from fusefs.hub.gcs import BucketUrl
from fusefs.server import buckets as buckets_module
from fusefs.server.buckets import BucketRegions, Unavailable
from fusefs.server.limits import Limits
from fusefs.server.store import FileSums, StoredFile
from fusefs.server.topology import Region, RegionBucket, TopologyError, load
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


class ListingServer:
    """A JSON API whose listing of `gs://b` is `objects`, answered after `delay` seconds."""

    def __init__(self, objects: list[dict[str, str]]) -> None:
        self.objects, self.delay, self.requests = objects, 0.0, 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests += 1
                time.sleep(owner.delay)
                prefix = parse_qs(urlsplit(self.path).query).get("prefix", [""])[0]
                items = [o for o in owner.objects if o["name"].startswith(prefix)]
                body = json.dumps({"kind": "storage#objects", "items": items}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


async def test_bucket_regions_list_once_trust_only_the_same_file_and_never_hold_probes(
    monkeypatch,
):
    data = b"weights"
    md5, crc = hashlib.md5(data).digest(), crc32c.crc32c(data)

    def obj(name: str, **over: str) -> dict[str, str]:
        return {
            "name": f"p/{name}",
            "bucket": "b",
            "size": str(len(data)),
            "generation": "17",
            "md5Hash": base64.b64encode(md5).decode(),
            "crc32c": base64.b64encode(crc.to_bytes(4, "big")).decode(),
            **over,
        }

    listing = ListingServer(
        [obj("acme/a/w.bin"), obj("acme/a/x.bin", size="3"), obj("slow/r/w.bin")]
    )
    monkeypatch.setattr(buckets_module, "WAIT", 0.3)
    region = Region(
        "us", None, ("*/*",), RegionBucket(BucketUrl.parse("gs://b/p"), listing.url, "127.0.0.1:9")
    )
    stored = StoredFile("w.bin", len(data), 0, 1, (0, 0, 0, 0))
    same, other = FileSums("", crc, md5), FileSums("", crc, hashlib.md5(b"other").digest())
    environ = {"STORAGE_EMULATOR_HOST": listing.url}
    try:
        async with BucketRegions([region], Limits(rescan_interval=60), environ) as buckets:

            async def locate(repo: str, path: str, sums: FileSums = same) -> str | None:
                owner, name = repo.split("/")
                return await buckets.locate(region, RepoId(owner, name), path, stored, sums)

            assert (
                await locate("acme/a", "w.bin")
                == "grpc://127.0.0.1:9/b/p/acme/a/w.bin?generation=17"
            )
            assert await locate("acme/a", "w.bin", other) is None  # another file of that name
            assert await locate("acme/a", "x.bin") is None  # another size
            assert await locate("acme/a", "absent.bin") is None
            assert listing.requests == 1  # one listing for the repo, used while fresh

            listing.delay = 1.0  # a slow listing holds up its first probe briefly,
            with pytest.raises(Unavailable):
                await locate("slow/r", "w.bin")
            with trio.fail_after(0.1):  # and the next ones not at all
                with pytest.raises(Unavailable):
                    await locate("slow/r", "w.bin")
            await trio.sleep(1.0)
            assert await locate("slow/r", "w.bin") is not None  # once listed
            assert listing.requests == 2

            listing.stop()  # a bucket out of reach: said, and not asked again at once
            with pytest.raises(Unavailable):
                await locate("other/r", "w.bin")
            await trio.sleep(1.0)  # its listing has given up (3 tries)
            assert (buckets.listings, buckets.failures) == (3, 1)
            with trio.fail_after(0.1), pytest.raises(Unavailable, match="ConnectError"):
                await locate("other/r", "w.bin")
            assert buckets.listings == 3
    finally:
        listing.stop()
