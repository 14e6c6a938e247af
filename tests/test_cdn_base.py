"""`modelfs serve --cdn-base URL`: the public path is an external static server of ROOT
(here tests.support.static_files, as nginx would serve it), while region paths and gRPC
locations stay the store's own. Real store, real mount, real HTTP server."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from fusefs.data.location import parse_grpc_url
from fusefs.testing import (
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_regions,
    write_file,
)

from support.static_files import StaticFiles

GRPC = {"x-modelfs-accept": "grpc"}
ODD = "sub dir/%41 ü#1.bin"  # every segment needs quoting, and '%41' is not 'A'


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("cdnbase")
    models, datasets = base / "models", base / "datasets"
    repo = models / "acme" / "m"
    write_file(repo / "w.bin", sample_bytes(5 << 20, seed=11))
    write_file(repo / ODD, sample_bytes(70_000, seed=12))
    write_file(repo / "config.json", b'{"a": 1}\n')
    write_file(datasets / "acme" / "m" / "part.csv", b"row,1\n")
    static = StaticFiles(models)
    # a trailing slash is dropped, not doubled
    server = start_regions(
        models,
        {"home": ["acme/*"]},
        "--cdn-base",
        static.url + "/",
        "--datasets",
        str(datasets),
    )
    http = httpx.Client(base_url=server.hub, follow_redirects=False, timeout=30)
    yield models, static, server, http
    http.close()
    server.stop()
    static.stop()


def head_commit(http, kind="models") -> str:
    r = http.get(f"/api/v1/{kind}/acme/m/commits", params={"Ref": "master", "PageSize": 1})
    assert r.status_code == 200, r.text
    return r.json()["Data"]["Commit"][0]["Id"]


def probe(http, path: str, headers: dict[str, str], kind: str = "models") -> str:
    params = {"Revision": head_commit(http, kind), "FilePath": path}
    r = http.head(f"/api/v1/{kind}/acme/m/repo", params=params, headers=headers)
    assert r.status_code == 302, r.text
    return r.headers["location"]


def test_the_public_path_is_the_static_server(world):
    models, static, _server, http = world
    quoted = "sub%20dir/%2541%20%C3%BC%231.bin"
    for headers in ({}, {"x-aliyun-region-id": "away", **GRPC}, {"x-aliyun-region-id": "away"}):
        assert probe(http, ODD, headers) == f"{static.url}/acme/m/{quoted}"
    location = probe(http, "w.bin", {})
    assert location == f"{static.url}/acme/m/w.bin"
    # the location reads the store's very bytes, ranges included
    content = (models / "acme/m/w.bin").read_bytes()
    part = httpx.get(location, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    odd = httpx.get(probe(http, ODD, {}))
    assert odd.content == (models / "acme/m" / ODD).read_bytes()
    # a dataset is named by its repo key, as on every other plane
    assert probe(http, "part.csv", {}, kind="datasets") == f"{static.url}/_datasets/acme/m/part.csv"


def test_region_paths_and_grpc_stay_the_stores(world):
    _models, _static, server, http = world
    commit = head_commit(http)
    grpc = parse_grpc_url(probe(http, "w.bin", {"x-aliyun-region-id": "home", **GRPC}))
    assert (grpc.endpoint, grpc.object) == (server.grpc["home"], "acme/m/w.bin")
    sdk = probe(http, "w.bin", {"x-aliyun-region-id": "home"})
    assert sdk == f"{server.hub}/cdn/acme/m/{commit}/w.bin?region=home"


def test_without_the_option_the_public_path_is_the_cdn_route(tmp_path):
    write_file(tmp_path / "s" / "acme" / "m" / "w.bin", b"x" * 10)
    server = start_regions(tmp_path / "s", {"home": ["acme/*"]})
    try:
        http = httpx.Client(base_url=server.hub, follow_redirects=False, timeout=30)
        with http:
            commit = head_commit(http)
            assert probe(http, "w.bin", {}) == f"{server.hub}/cdn/acme/m/{commit}/w.bin"
    finally:
        server.stop()


@pytest.mark.parametrize(
    "value",
    [
        "ftp://cdn.example.com",
        "cdn.example.com",
        "http://",
        "http://cdn.example.com:99999",
        "https://user:secret@cdn.example.com",
        "https://cdn.example.com/models?sig=1",
        "https://cdn.example.com/#top",
        "https://cdn.example.com/a b",
    ],
)
def test_a_bad_cdn_base_is_refused(tmp_path, value):
    result: subprocess.CompletedProcess[str] = run_cli("serve", str(tmp_path), "--cdn-base", value)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--cdn-base" in lines[0], result.stderr
    assert "secret" not in result.stderr  # a URL's credentials are never echoed


def test_the_option_is_in_the_help():
    result = run_cli("serve", "--help")
    assert result.returncode == 0 and "--cdn-base URL" in result.stdout


def test_a_mount_reads_through_the_static_server(world, tmp_path):
    models, static, server, _http = world
    server.reset_stats()
    before = static.ranges
    # a region that holds nothing, and no peers: every file takes the public path
    m = start_mount(tmp_path / "m", server.hub, "--repo", "acme/m", "--region", "away")
    try:
        repo = m.path / "acme" / "m"
        for name in ("w.bin", ODD):
            assert sha256_file(repo / name) == sha256_file(models / "acme/m" / name)
        with open(repo / "w.bin", "rb") as f:
            f.seek(3 << 20)
            assert (
                f.read(4096) == (models / "acme/m/w.bin").read_bytes()[3 << 20 : (3 << 20) + 4096]
            )
        assert os.getxattr(repo / "w.bin", "user.modelfs.source") == b"cdn"
        endpoint = os.getxattr(repo / "w.bin", "user.modelfs.endpoint").decode()
        assert endpoint == f"{static.url}/acme/m/w.bin"
        assert m.status()["bytes_read"].get("cdn", 0) > 0
    finally:
        m.unmount()
    assert static.ranges > before
    stats = server.stats()
    assert stats["cdn_bytes"] == 0 and sum(stats["grpc_bytes"].values()) == 0
