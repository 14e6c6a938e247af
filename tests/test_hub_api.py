"""The store's hub API in the real hub's shapes: a real `modelfs serve` (models and
datasets, two regions), asked with a plain HTTP client and a real gRPC client."""

from __future__ import annotations

import hashlib

import grpc
import httpx
import pytest

from fusefs.data.location import parse_grpc_url
from fusefs.proto import storage_pb2 as pb
from fusefs.proto import storage_pb2_grpc
from fusefs.testing import (
    run_cli,
    sample_bytes,
    start_regions,
    start_server,
    wait_for,
    write_file,
)

GRPC = {"x-modelfs-accept": "grpc"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hubapi")
    models, datasets = base / "models", base / "datasets"
    repo = models / "acme" / "m"
    write_file(repo / "config.json", b'{"a": 1}\n')
    write_file(repo / ".gitattributes", b"*.bin filter=lfs diff=lfs merge=lfs -text\n")
    write_file(repo / "sub" / ".keep", b"")
    write_file(repo / "sub" / "w.bin", sample_bytes(70_000, seed=1))
    write_file(repo / ".git" / "config", b"[core]\n")  # version-control internals
    write_file(repo / "sub" / ".svn" / "entries", b"x")
    write_file(repo / "%41.bin", b"the file named percent-four-one\n")
    write_file(repo / "A.bin", b"the file named A\n")
    (repo / "outside.txt").symlink_to(base / "models" / "acme" / "m" / "config.json")
    # a dataset with the same owner/name as the model: never confused with it
    ds = datasets / "acme" / "m"
    for i in range(230):
        write_file(ds / "data" / f"part-{i:04d}.csv", f"row,{i}\n".encode())
    write_file(ds / "config.json", b'{"dataset": true}\n')
    write_file(models / "other" / "x" / "f.bin", b"other")
    server = start_regions(
        models, {"east": ["acme/*"], "west": ["other/*"]}, "--datasets", str(datasets)
    )
    http = httpx.Client(base_url=server.hub, follow_redirects=False, timeout=30)
    yield models, datasets, server, http
    http.close()
    server.stop()


def data(response: httpx.Response) -> object:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["Code"] == 200 and body["Success"] is True and body["Message"] == "success"
    assert body["RequestId"]
    return body["Data"]


def head_commit(http, api="/api/v1/models/acme/m") -> str:
    return data(http.get(f"{api}/commits", params={"Ref": "master", "PageSize": 1}))["Commit"][0][
        "Id"
    ]


def listing(http, api="/api/v1/models/acme/m", **params) -> list[dict]:
    return data(http.get(f"{api}/repo/files", params={"Revision": "master", **params}))["Files"]


def test_revisions_carry_only_revision_and_created_at(world):
    *_, http = world
    revmap = data(http.get("/api/v1/models/acme/m/revisions"))["RevisionMap"]
    assert [set(b) for b in revmap["Branches"]] == [{"Revision", "CreatedAt"}]
    assert revmap["Branches"][0]["Revision"] == "master" and revmap["Tags"] == []


def test_commits_name_the_head_and_unknown_refs_are_404(world):
    *_, http = world
    page = data(http.get("/api/v1/models/acme/m/commits", params={"Ref": "master", "PageSize": 1}))
    (commit,) = page["Commit"]
    assert len(commit["Id"]) == 40 and commit["ShortId"] == commit["Id"][:8]
    for key in ("Title", "Message", "AuthorName", "CommittedDate"):
        assert key in commit
    by_id = http.get("/api/v1/models/acme/m/commits", params={"Ref": commit["Id"]})
    assert data(by_id)["Commit"][0]["Id"] == commit["Id"]
    assert http.get("/api/v1/models/acme/m/commits", params={"Ref": "nope"}).status_code == 404
    bad = http.get("/api/v1/models/acme/m/commits", params={"PageSize": "-1"})
    assert bad.status_code == 400 and bad.json()["Success"] is False


def test_listing_shape_dotfiles_and_what_is_left_out(world):
    models, _, _, http = world
    commit = head_commit(http)
    body = data(
        http.get(
            "/api/v1/models/acme/m/repo/files", params={"Revision": commit, "Recursive": "True"}
        )
    )
    assert body["LatestCommitter"]["Id"] == commit
    blobs = {f["Path"]: f for f in body["Files"] if f["Type"] == "blob"}
    # every file, dotfiles included; no VCS internals, no links
    assert set(blobs) == {
        ".gitattributes",
        "%41.bin",
        "A.bin",
        "config.json",
        "sub/.keep",
        "sub/w.bin",
    }
    assert {f["Path"] for f in body["Files"] if f["Type"] == "tree"} == {"sub"}
    w = blobs["sub/w.bin"]
    assert w["Name"] == "w.bin" and w["Size"] == 70_000
    assert w["Sha256"] == hashlib.sha256((models / "acme/m/sub/w.bin").read_bytes()).hexdigest()
    assert w["Revision"] == commit and w["CommittedDate"] > 0


def test_a_file_keeps_its_revision_until_it_changes(world):
    models, _, _, http = world
    before = head_commit(http)
    path = models / "acme" / "m" / "config.json"
    original = path.read_bytes()
    try:
        path.write_bytes(b'{"a": 2}\n')
        # the repo's index is compared with the disk at most every --rescan-interval
        wait_for(lambda: head_commit(http) != before, 10, "the new commit")
        after = head_commit(http)
        files = {f["Path"]: f for f in listing(http, Recursive="True")}
        assert files["config.json"]["Revision"] == after
        assert files["sub/w.bin"]["Revision"] == before  # untouched: last changed earlier
        # a file may be read at its own revision; the repo at an old commit is not held
        ok = http.head(
            "/api/v1/models/acme/m/repo", params={"Revision": before, "FilePath": "sub/w.bin"}
        )
        assert ok.status_code == 302
        gone = http.get(
            "/api/v1/models/acme/m/repo", params={"Revision": before, "FilePath": "config.json"}
        )
        assert gone.status_code == 404
        old_listing = http.get("/api/v1/models/acme/m/repo/files", params={"Revision": before})
        assert old_listing.status_code == 404
    finally:
        path.write_bytes(original)
        wait_for(lambda: head_commit(http) == before, 10, "the first commit again")


def test_repo_info_openapi_and_legacy(world):
    *_, http = world
    info = http.get("/openapi/v1/models/acme/m").json()
    assert info["success"] is True and info["data"]["id"] == "acme/m"
    missing = http.get("/openapi/v1/models/acme/nope")
    assert missing.status_code == 404
    assert missing.json()["code"] == "ResourceNotFound" and missing.json()["success"] is False
    assert http.get("/openapi/v1/datasets/acme/m").json()["data"]["name"] == "m"
    legacy = data(http.get("/api/v1/models/acme/m"))
    assert (legacy["Path"], legacy["Name"]) == ("acme", "m")
    assert http.get("/api/v1/models/acme/nope").status_code == 404
    assert http.post("/api/v1/models/acme/m").status_code == 405


def test_dataset_tree_pages_and_roots(world):
    _, _datasets, _, http = world
    api = "/api/v1/datasets/acme/m"
    pages, page = [], 1
    while True:
        got = data(
            http.get(
                f"{api}/repo/tree",
                params={
                    "Revision": "master",
                    "Recursive": "True",
                    "PageNumber": page,
                    "PageSize": 100,
                },
            )
        )["Files"]
        pages.append(got)
        if len(got) < 100:
            break
        page += 1
    assert [len(p) for p in pages] == [100, 100, 32]  # 231 files and the directory 'data'
    paths = [e["Path"] for p in pages for e in p]
    assert len(set(paths)) == len(paths) == 232
    assert {e["Path"] for p in pages for e in p if e["Type"] == "tree"} == {"data"}
    rooted = data(
        http.get(f"{api}/repo/tree", params={"Root": "data", "Recursive": "True", "PageSize": 500})
    )
    assert http.get(f"{api}/repo/tree", params={"PageSize": 5000}).status_code == 400
    assert all(e["Path"].startswith("data/") for e in rooted["Files"])
    assert len(rooted["Files"]) == 230
    assert rooted["Files"][0]["Sha256"] == hashlib.sha256(b"row,0\n").hexdigest()


def test_grpc_only_for_clients_that_say_so(world):
    _, _, server, http = world
    commit = head_commit(http)
    params = {"Revision": commit, "FilePath": "sub/w.bin"}
    mount_probe = http.head(
        "/api/v1/models/acme/m/repo", params=params, headers={"x-aliyun-region-id": "east", **GRPC}
    )
    target = parse_grpc_url(mount_probe.headers["location"])
    assert (target.endpoint, target.object) == (server.grpc["east"], "acme/m/sub/w.bin")
    sdk = http.get(
        "/api/v1/models/acme/m/repo", params=params, headers={"x-aliyun-region-id": "east"}
    )
    assert sdk.status_code == 302
    location = sdk.headers["location"]
    assert location == f"{server.hub}/cdn/acme/m/{commit}/sub/w.bin?region=east"
    # a region that does not hold the repo, or none: the public path
    for headers in ({"x-aliyun-region-id": "west", **GRPC}, {}):
        r = http.get("/api/v1/models/acme/m/repo", params=params, headers=headers)
        assert r.headers["location"] == f"{server.hub}/cdn/acme/m/{commit}/sub/w.bin"


def test_region_route_serves_ranges_counted_as_internal(world):
    models, _, server, http = world
    server.reset_stats()
    content = (models / "acme/m/sub/w.bin").read_bytes()
    commit = head_commit(http)
    url = f"{server.hub}/cdn/acme/m/{commit}/sub/w.bin?region=east"
    whole = httpx.get(url)
    assert whole.content == content
    assert whole.headers["x-linked-etag"] == hashlib.sha256(content).hexdigest()
    part = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert httpx.get(url.replace("east", "west")).status_code == 404  # west holds no acme/*
    stats = server.stats()
    assert stats["internal_http"] == {
        "requests": {"east": 2},
        "bytes": {"east": len(content) + 100},
    }
    assert stats["cdn_bytes"] == 0


def test_models_and_datasets_of_one_name_never_meet(world):
    models, datasets, _server, http = world
    for kind, root in (("models", models), ("datasets", datasets)):
        api = f"/api/v1/{kind}/acme/m"
        commit = head_commit(http, api)
        params = {"Revision": commit, "FilePath": "config.json"}
        headers = {"x-aliyun-region-id": "east", **GRPC}
        grpc_url = http.head(f"{api}/repo", params=params, headers=headers).headers["location"]
        cdn_url = http.head(f"{api}/repo", params=params).headers["location"]
        expected = (root / "acme/m/config.json").read_bytes()
        assert httpx.get(cdn_url).content == expected
        target = parse_grpc_url(grpc_url)
        assert target.object == ("_datasets/" if kind == "datasets" else "") + "acme/m/config.json"
        channel = grpc.insecure_channel(target.endpoint)
        try:
            call = storage_pb2_grpc.StorageStub(channel).BidiReadObject(
                iter(
                    [
                        pb.BidiReadObjectRequest(
                            read_object_spec=pb.BidiReadObjectSpec(
                                bucket=target.bucket_path, object=target.object
                            ),
                            read_ranges=[pb.ReadRange(read_offset=0, read_length=0, read_id=1)],
                        )
                    ]
                )
            )
            got = b"".join(d.checksummed_data.content for r in call for d in r.object_data_ranges)
        finally:
            channel.close()
        assert got == expected


def test_no_link_and_no_vcs_internals_on_any_plane(world):
    _, _, server, http = world
    commit = head_commit(http)
    for path in (".git/config", "sub/.svn/entries", "outside.txt"):
        r = http.head("/api/v1/models/acme/m/repo", params={"Revision": commit, "FilePath": path})
        assert r.status_code == 404, path
        assert httpx.get(f"{server.hub}/cdn/acme/m/{commit}/{path}").status_code == 404
    channel = grpc.insecure_channel(server.grpc["east"])
    try:
        call = storage_pb2_grpc.StorageStub(channel).BidiReadObject(
            iter(
                [
                    pb.BidiReadObjectRequest(
                        read_object_spec=pb.BidiReadObjectSpec(
                            bucket="projects/_/buckets/east", object="acme/m/.git/config"
                        )
                    )
                ]
            )
        )
        with pytest.raises(grpc.RpcError) as e:
            list(call)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()


def test_paths_are_decoded_once(world):
    _, _, _server, http = world
    commit = head_commit(http)
    # '%41.bin' is a name of its own, not 'A.bin'
    r = http.get("/api/v1/models/acme/m/repo", params={"Revision": commit, "FilePath": "%41.bin"})
    assert httpx.get(r.headers["location"]).content == b"the file named percent-four-one\n"
    # '%252e%252e' reaches the API as the name '%2e%2e', never as '..'
    assert http.get("/api/v1/models/acme/%252e%252e/repo/files").status_code == 404
    assert http.get("/api/v1/models/acme/%252e%252e").json()["Message"].endswith("not found")


def test_datasets_only_with_a_datasets_directory(tmp_path):
    write_file(tmp_path / "s" / "acme" / "m" / "f.bin", b"x")
    result = run_cli("serve", str(tmp_path / "s"), "--datasets", str(tmp_path / "missing"))
    assert result.returncode != 0 and "missing" in result.stderr
    server = start_server(tmp_path / "s")
    try:
        assert httpx.get(f"{server.hub}/api/v1/models/acme/m").status_code == 200
        assert httpx.get(f"{server.hub}/api/v1/datasets/acme/m").status_code == 404
        assert httpx.get(f"{server.hub}/api/v1/datasets/acme/m/repo/tree").status_code == 404
    finally:
        server.stop()
