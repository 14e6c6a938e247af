"""Hub listings and names: every hostile entry is dropped, the rest kept."""

import pytest

from fusefs.data.location import BadLocation, GrpcObject, is_internal, location_kind, parse_grpc_url
from fusefs.hub.client import RepoSpec
from fusefs.hub.listing import parse_files


def entry(path, size=1, **kw):
    return {"Path": path, "Size": size, "Type": "blob", **kw}


def test_hostile_entries_are_skipped_and_logged(caplog):
    files = parse_files(
        "o/r",
        [
            entry("ok.bin"),
            entry("dir/ok2.bin", 5, Sha256="ab" * 32, CommittedDate=7),
            entry("../escape"),
            entry("/abs"),
            entry("a//b"),
            entry("nul\0name"),
            entry("lone\udcffsurrogate"),
            entry(""),
            entry("neg", -1),
            entry("huge", 1 << 60),
            entry("str", "12"),
            entry("ok.bin"),
            entry("dir"),
            "not a dict",
            {"Path": "t", "Type": "tree"},
        ],
    )
    assert [f.path for f in files] == ["dir/ok2.bin", "ok.bin"]
    assert files[0].sha256 == "ab" * 32 and files[0].mtime == 7
    text = caplog.text
    for word in [
        "'..'",
        "absolute",
        "empty name",
        "NUL",
        "not valid Unicode",
        "bad size",
        "duplicate",
        "a directory of that name",
        "not an object",
    ]:
        assert word in text, word


def test_listing_that_is_not_a_list_is_an_error():
    with pytest.raises(ValueError):
        parse_files("o/r", {"Path": "x"})


def test_grpc_location_round_trip_and_refusals():
    obj = GrpcObject("127.0.0.1:9", "cn-x", "Qwen/Qwen3 8B/model.bin", 42, routing_token="a&b")
    assert parse_grpc_url(obj.url()) == obj
    for bad in ["grpc://host/b/o", "grpc://h:1/bucket-only", "grpc://h:1/b/o?generation=x"]:
        with pytest.raises(BadLocation):
            parse_grpc_url(bad)
    with pytest.raises(BadLocation):
        location_kind("file:///etc/passwd")
    assert location_kind("grpcs://h:1/b/o") == "grpc"
    assert location_kind("https://cdn/x") == "http"


def test_internal_locations():
    assert is_internal("grpc://h:1/b/o")
    assert is_internal("https://bucket.oss-cn-hangzhou-internal.aliyuncs.com/x")
    assert not is_internal("https://bucket.oss-cn-hangzhou.aliyuncs.com/x")
    assert not is_internal("https://cdn.example.com/x")


def test_repo_spec_parsing():
    assert RepoSpec.parse("Qwen/Qwen3-8B").revision == "master"
    spec = RepoSpec.parse("acme/m@v1.0")
    assert (str(spec.repo), spec.revision) == ("acme/m", "v1.0")
    for bad in ["noslash", "a/b/c", "../x", "a/", "a/b@"]:
        with pytest.raises(ValueError):
            RepoSpec.parse(bad)


def test_sha256_is_normalised_or_dropped():
    good = "AB" * 32
    files = parse_files(
        "o/n",
        [
            {"Path": "a", "Size": 1, "Sha256": good},
            {"Path": "b", "Size": 1, "Sha256": "not-a-digest"},
            {"Path": "c", "Size": 1, "Sha256": "ab" * 31},
        ],
    )
    assert [f.sha256 for f in files] == ["ab" * 32, None, None]
