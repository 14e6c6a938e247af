"""The store's repo index and digest cache (fusefs.server.store) on real files: what a
request for one file costs, when a repo is walked again, what memory is bounded, and
that a file which changes while it is hashed is never cached under its old key."""

from __future__ import annotations

import hashlib
import os
import threading

import crc32c
import grpc
import httpx
import pytest

from fusefs.hub.client import RepoId
from fusefs.proto import storage_pb2 as pb
from fusefs.server.limits import Limits
from fusefs.server.store import Store
from fusefs.testing import start_server, wait_for, write_file

REPO = RepoId("acme", "m")


def make_repo(root, files: int = 30) -> None:
    for i in range(files):
        write_file(root / "acme" / "m" / f"d{i % 3}" / f"f{i:02d}.txt", f"file {i}\n".encode())


def test_a_request_for_one_file_walks_nothing_until_the_file_changes(tmp_path):
    make_repo(tmp_path)
    store = Store(str(tmp_path), limits=Limits(rescan_interval=3600))
    state = store.state(REPO)
    assert store.scans == 1 and len(state.files) == 30
    for _ in range(50):
        found = store.current(REPO, "d1/f01.txt")
        assert found is not None and found[0] is state
    assert store.scans == 1  # fifty requests, one lstat each, no walk
    path = tmp_path / "acme" / "m" / "d1" / "f01.txt"
    path.write_bytes(b"changed, and longer\n")
    found = store.current(REPO, "d1/f01.txt")
    assert found is not None and store.scans == 2  # the disk said otherwise: one rescan
    new_state, f = found
    assert new_state.commit != state.commit and f.size == len(b"changed, and longer\n")
    assert new_state.holds("d2/f02.txt", state.commit)  # unchanged since that commit
    assert not new_state.holds("d1/f01.txt", state.commit)  # its content then is gone
    assert store.current(REPO, "d1/nope.txt") is None and store.scans == 2


def test_repo_wide_requests_rescan_only_after_the_interval(tmp_path):
    make_repo(tmp_path)
    store = Store(str(tmp_path), limits=Limits(rescan_interval=3600))
    first = store.state(REPO)
    write_file(tmp_path / "acme" / "m" / "new.txt", b"new\n")
    assert store.state(REPO) is first and store.scans == 1  # within the interval
    eager = Store(str(tmp_path), limits=Limits(rescan_interval=0))
    eager.state(REPO)
    assert "new.txt" in eager.state(REPO).files and eager.scans == 2


def test_listings_come_from_the_directory_index(tmp_path):
    make_repo(tmp_path)
    state = Store(str(tmp_path)).state(REPO)
    files, dirs = state.children[""]
    assert files == [] and dirs == ["d0", "d1", "d2"]
    assert state.children["d1"][0] == [f"d1/f{i:02d}.txt" for i in range(1, 30, 3)]
    assert state.blobs == sorted(state.files)


def test_digests_are_bounded_and_one_pass(tmp_path):
    make_repo(tmp_path, files=12)
    store = Store(str(tmp_path), limits=Limits(hash_cache=5))
    state = store.state(REPO)
    assert store.gauges()["cached_digests"] == 5
    got = state.sums["d0/f00.txt"]
    data = b"file 0\n"
    assert (got.sha256, got.crc32c, got.md5) == (
        hashlib.sha256(data).hexdigest(),
        crc32c.crc32c(data),
        hashlib.md5(data).digest(),
    )


def test_a_file_changed_while_hashed_is_not_cached_under_its_old_key(tmp_path):
    write_file(tmp_path / "acme" / "m" / "f.bin", b"first version\n")
    store = Store(str(tmp_path))
    opened = store.open_file(REPO, "f.bin")
    assert opened is not None
    fd, f = opened
    try:
        # the file changes between the stat that named this version and the read
        with open(tmp_path / "acme" / "m" / "f.bin", "ab") as w:
            w.write(b"appended while being hashed\n")
        store.sums(fd, f)
        assert store.cached_sums(f.key) is None
        again = store.open_file(REPO, "f.bin")
        assert again is not None
        store.sums(again[0], again[1])
        assert store.cached_sums(again[1].key) is not None  # held still: cached
        os.close(again[0])
    finally:
        os.close(fd)


def test_indexes_are_bounded_least_recently_used_first(tmp_path):
    for name in ("a", "b", "c"):
        write_file(tmp_path / "acme" / name / "x.txt", b"x")
        write_file(tmp_path / "acme" / name / "y.txt", b"y")
    store = Store(str(tmp_path), limits=Limits(index_files=4))
    for name in ("a", "b", "c"):
        store.state(RepoId("acme", name))
    gauges = store.gauges()
    assert gauges["indexed_files"] <= 4 and gauges["indexed_repos"] == 2
    store.state(RepoId("acme", "a"))  # dropped: built again
    assert store.scans == 4


def test_one_directory_listings_are_cut_and_streams_refused_only_past_the_cap(tmp_path):
    for i in range(8):
        write_file(tmp_path / "s" / "acme" / "m" / "wide" / f"{i}.txt", b"w")
    server = start_server(tmp_path / "s", "--directory-limit", "5", "--max-streams", "3")
    channels = []
    try:
        shallow = httpx.get(
            f"{server.hub}/api/v1/models/acme/m/repo/files",
            params={"Root": "wide", "Recursive": "false"},
        ).json()["Data"]
        assert len(shallow["Files"]) == 5 and shallow["TotalCount"] == 8
        paged = httpx.get(
            f"{server.hub}/api/v1/models/acme/m/repo/tree",
            params={"Root": "wide", "PageNumber": 2, "PageSize": 5},
        ).json()["Data"]
        assert len(paged["Files"]) == 3  # pages reach the rest

        done = threading.Event()

        def requests():
            yield pb.BidiReadObjectRequest(
                read_object_spec=pb.BidiReadObjectSpec(
                    bucket="projects/_/buckets/local", object="acme/m/wide/0.txt"
                )
            ).SerializeToString()
            done.wait(30)  # the stream stays open, idle, until the test ends

        def open_stream():
            channel = grpc.insecure_channel(server.grpc[""])
            channels.append(channel)
            method = channel.stream_stream("/google.storage.v2.Storage/BidiReadObject")
            return method(requests(), timeout=30)

        held = []
        for _ in range(3):
            call = open_stream()
            next(call)  # metadata: the stream is open, and stays open (requests pending)
            held.append(call)
        with pytest.raises(grpc.RpcError) as refused:
            next(open_stream())
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.stats()["streams_refused"] == 1
        held.pop().cancel()
        wait_for(lambda: server.stats()["streams_active"].get("local", 0) == 2, 10, "a slot")
        again = open_stream()
        next(again)
        again.cancel()
        for call in held:
            call.cancel()
    finally:
        done.set()
        for channel in channels:
            channel.close()
        server.stop()
