"""The mount's hub client against what it will meet: a hub in the real hub's shapes
(`modelfs serve`), and real HTTP servers that answer what a test scripts (a hub whose
`revisions` name no commits, a hub that trickles, an address the hub names)."""

from __future__ import annotations

import logging
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusefs.hub.client import (
    HubClient,
    HubError,
    HubTimeout,
    RepoId,
    RepoNotFound,
    RepoSpec,
    split_key,
    valid_repo_part,
)
from fusefs.hub.listing import parse_files
from fusefs.testing import mount_factory, start_server, write_file

from support.doubles import COMMIT, CONTENT, HostileHub, Listener

OTHER = "d" * 40


def blob(path, revision=None, size=None):
    entry = {"Path": path, "Name": path.rsplit("/", 1)[-1], "Type": "blob"}
    entry["Size"] = len(CONTENT) if size is None else size
    if revision:
        entry["Revision"] = revision
    return entry


@pytest.fixture
def hub():
    h = HostileHub()
    h.files = [blob("a.bin", "1" * 40), blob("sub/b.bin", "2" * 40)]
    yield h
    h.stop()


def paths_asked(hub, suffix):
    return [p for _, p, _ in hub.requests if p.split("?")[0].endswith(suffix)]


# -- names --------------------------------------------------------------------------


def test_repo_names_take_no_trailing_newline():
    assert valid_repo_part("acme") and valid_repo_part("Qwen2.5-7B_x")
    for bad in ("acme\n", "acme\r", "\nacme", "a/b", "..", ".hidden", "_datasets", ""):
        assert not valid_repo_part(bad), bad
    with pytest.raises(ValueError):
        RepoSpec.parse("acme/m\n")
    with pytest.raises(ValueError):
        RepoSpec.parse("acme/m@main\nx")


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    st.sampled_from(["model", "dataset"]),
    st.text(min_size=1, max_size=30),
)
def test_repo_keys_round_trip_and_never_collide(owner, name, repo_type, rest):
    repo = RepoId(owner, name, repo_type)
    assert split_key(f"{repo.key}/{rest}") == (repo, rest)
    other = RepoId(owner, name, "dataset" if repo_type == "model" else "model")
    assert repo.key != other.key and not other.key.startswith(repo.key + "/")


@given(st.text(max_size=40))
def test_valid_repo_parts_are_exactly_the_pattern(text):
    import re

    assert valid_repo_part(text) == bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", text))
    if valid_repo_part(text):
        assert "\n" not in text and "/" not in text and not text.startswith(".")


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(
                ["Path", "Name", "Size", "Type", "Sha256", "Revision", "CommittedDate"]
            ),
            st.one_of(st.text(max_size=12), st.integers(-3, 1 << 60), st.none(), st.booleans()),
        ),
        max_size=12,
    )
)
def test_any_listing_parses_to_safe_files(entries):
    for f in parse_files("o/r", entries):
        parts = f.path.split("/")
        assert all(p not in ("", ".", "..") and "\0" not in p for p in parts)
        assert f.size >= 0 and (f.revision is None or len(f.revision) <= 64)


# -- pinning ----------------------------------------------------------------------------


async def test_pins_through_commits_without_commit_ids_in_revisions(hub):
    async with HubClient(hub.url) as client:
        snap = await client.snapshot(RepoId("evil", "repo"), "master")
    assert snap.commit == COMMIT and snap.pinned
    assert [f.path for f in snap.files] == ["a.bin", "sub/b.bin"]
    assert paths_asked(hub, "/revisions") == []  # the real hub's revisions name no commit
    (commits,) = paths_asked(hub, "/commits")
    assert "Ref=master" in commits and "PageSize=1" in commits
    (listing,) = paths_asked(hub, "/repo/files")
    assert f"Revision={COMMIT}" in listing and "Recursive=True" in listing
    assert client.download_url(snap.repo, snap.commit, "a.bin").endswith(
        f"Revision={COMMIT}&FilePath=a.bin"
    )


async def test_a_listing_that_names_its_commit_pins_too(hub):
    hub.commits = False
    hub.latest_committer = {"Id": OTHER.upper(), "ShortId": OTHER[:8]}
    async with HubClient(hub.url) as client:
        snap = await client.snapshot(RepoId("evil", "repo"))
    assert snap.commit == OTHER


async def test_no_way_to_pin_reads_the_branch_and_keeps_file_revisions(hub, caplog):
    hub.commits = False
    hub.latest_committer = {"Id": "", "ShortId": "abc12345"}  # as the real hub often sends
    caplog.set_level(logging.INFO)
    async with HubClient(hub.url) as client:
        snap = await client.snapshot(RepoId("evil", "repo"), "main")
    assert snap.commit == "main" and not snap.pinned
    assert [f.revision for f in snap.files] == ["1" * 40, "2" * 40]
    assert snap.content_id(snap.files[0]) == "1" * 40  # the cache never keys on "main"
    lines = [r for r in caplog.records if "no way to pin" in r.getMessage()]
    assert len(lines) == 1 and "evil/repo@main" in lines[0].getMessage()


async def test_commits_and_listing_disagreeing_is_said_and_commits_win(hub, caplog):
    hub.latest_committer = {"Id": OTHER}
    async with HubClient(hub.url) as client:
        snap = await client.snapshot(RepoId("evil", "repo"))
    assert snap.commit == COMMIT
    assert any("listing says" in r.getMessage() for r in caplog.records)


async def test_pins_against_the_store_and_walks_a_cut_listing(tmp_path, caplog):
    root = tmp_path / "s"
    paths = ["top.txt", *(f"a/f{i}.txt" for i in range(6)), *(f"b/c/g{i}.txt" for i in range(9))]
    paths += [".gitattributes", "b/h.txt"]
    for p in paths:
        write_file(root / "acme" / "m" / p, p.encode())
    server = start_server(root, "--listing-limit", "5")
    try:
        async with HubClient(server.hub, listing_cap=5) as client:
            snap = await client.snapshot(RepoId("acme", "m"))
            with pytest.raises(RepoNotFound):
                await client.snapshot(RepoId("acme", "nope"))
            with pytest.raises(RepoNotFound):
                await client.snapshot(RepoId("acme", "m"), "no-such-branch")
    finally:
        server.stop()
    assert snap.pinned and all(f.revision == snap.commit for f in snap.files)
    assert sorted(f.path for f in snap.files) == sorted(paths)
    # b/c holds 9 files and no directory: its own listing is whole, nothing is missing
    assert "may be missing" not in caplog.text


async def test_a_dataset_is_listed_page_by_page(tmp_path):
    datasets = tmp_path / "d"
    for i in range(450):
        write_file(datasets / "acme" / "ds" / "shard" / f"{i:04d}.txt", f"{i}\n".encode())
    (tmp_path / "m").mkdir()
    server = start_server(tmp_path / "m", "--datasets", str(datasets))
    try:
        async with HubClient(server.hub, repo_type="dataset") as client:
            snap = await client.snapshot(client.repo("acme", "ds"))
        hub_requests = server.stats()["hub_requests"]
    finally:
        server.stop()
    assert snap.repo == RepoId("acme", "ds", "dataset") and snap.pinned
    assert len(snap.files) == 450
    assert hub_requests == 1 + 3  # commits, then pages of 200, 200 and 51 entries


async def test_a_hub_that_repeats_its_first_page_is_refused(hub):
    hub.files = [blob(f"f{i}.bin") for i in range(200)]  # every page is this full page
    async with HubClient(hub.url, repo_type="dataset") as client:
        with pytest.raises(HubError, match="page 2 again"):
            await client.snapshot(client.repo("evil", "repo"))


# -- deadlines ---------------------------------------------------------------------------


async def test_a_trickling_hub_gives_a_clean_error_within_the_deadline(hub):
    hub.trickle = 0.2  # one byte every 0.2 s: each read is quick, the answer never ends
    start = time.monotonic()
    async with HubClient(hub.url, deadline=1.0) as client:
        with pytest.raises(HubTimeout, match=r"did not answer .* within 1 s"):
            await client.snapshot(RepoId("evil", "repo"))
    # per-read timeouts alone would have waited for all ~60 bytes of the first answer
    assert time.monotonic() - start < 8


# -- region detection and credentials ------------------------------------------------------


async def test_region_detected_as_the_sdk_does_and_no_token_leaves_the_hub(hub):
    listener = Listener(b"cn-elsewhere\n")
    hub.accel = {"InternalRegionQueryAddress": f"{listener.url}/region"}
    try:
        async with HubClient(hub.url, token="tok-secret") as client:
            assert await client.detect_region() == "cn-elsewhere"
            await client.snapshot(RepoId("evil", "repo"))
            await client.ask_location(RepoId("evil", "repo"), COMMIT, "a.bin", "cn-elsewhere")
    finally:
        listener.stop()
    assert len(listener.headers) == 1
    assert "authorization" not in listener.headers[0] and "cookie" not in listener.headers[0]
    for _, path, headers in hub.requests:
        assert headers.get("Authorization") == "Bearer tok-secret", path
        assert headers.get("Cookie") == "m_session_id=tok-secret", path


async def test_no_region_from_a_hub_without_the_route_or_with_junk(hub):
    async with HubClient(hub.url) as client:
        assert await client.detect_region() is None  # 404: one request, no retry
        assert len(hub.requests) == 1
        for accel in ({}, {"InternalRegionQueryAddress": "file:///etc/passwd"}, []):
            hub.accel = accel
            assert await client.detect_region() is None
    listener = Listener(b"../../not a region\n")
    hub.accel = {"InternalRegionQueryAddress": listener.url}
    try:
        async with HubClient(hub.url) as client:
            assert await client.detect_region() is None
    finally:
        listener.stop()


def test_the_mount_detects_its_region_and_keeps_the_token_at_the_hub(hub, tmp_path):
    listener = Listener(b"cn-elsewhere\n")
    hub.accel = {"InternalRegionQueryAddress": f"{listener.url}/region"}
    (tmp_path / "token").write_text("tok-secret\n")
    try:
        with mount_factory(tmp_path, hub.url, "--token-file", str(tmp_path / "token")) as make:
            m = make("--repo", "evil/repo")
            assert (m.path / "evil" / "repo" / "a.bin").read_bytes() == CONTENT
            assert m.status()["region"] == "cn-elsewhere"
            # pinned through `commits`: this hub's revisions name no commit
            assert m.status()["repos"] == [f"evil/repo@master ({COMMIT[:12]})"]
    finally:
        listener.stop()
    assert (
        len(listener.headers) == 1 and not {"authorization", "cookie"} & listener.headers[0].keys()
    )
    probes = [h for method, _, h in hub.requests if method == "HEAD"]
    assert probes and all(h.get("x-aliyun-region-id") == "cn-elsewhere" for h in probes)
    assert all(h.get("x-modelfs-accept") == "grpc" for h in probes)
    api = [h for _, path, h in hub.requests if path.startswith("/api/")]
    assert api and all(h.get("Authorization") == "Bearer tok-secret" for h in api)
    # the data plane reads the CDN route of the same host without any credentials
    cdn = [h for _, path, h in hub.requests if path.startswith("/cdn/")]
    assert cdn and not any({"Authorization", "Cookie"} & h.keys() for h in cdn)
    assert "tok-secret" not in m.log_text()


def test_a_hostile_name_cannot_forge_a_log_line(hub, tmp_path):
    name = "x\n2099-01-01 00:00:00,000 ERROR fusefs: forged\x1b[2J.bin"
    hub.files = [blob(name)]
    with mount_factory(tmp_path, hub.url, "--region", "r1") as make:
        m = make("--repo", "evil/repo")
        assert os.listdir(m.path / "evil" / "repo") == [name]
        assert (m.path / "evil" / "repo" / name).read_bytes() == CONTENT  # logs its path
    log = m.log_text()
    assert "x\\n2099-01-01 00:00:00,000 ERROR fusefs: forged\\x1b[2J.bin" in log
    assert not any(line.startswith("2099") for line in log.splitlines())
    assert "\x1b" not in log
