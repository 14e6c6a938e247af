"""`modelfs serve` driven directly: a real HTTP client on the hub API and CDN route, a real
gRPC client on BidiReadObject."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import crc32c
import grpc
import httpx
import pytest
from google.rpc import status_pb2

from fusefs.data.location import parse_grpc_url
from fusefs.proto import storage_pb2 as pb
from fusefs.proto import storage_pb2_grpc
from fusefs.testing import (
    MiB,
    run_cli,
    sample_bytes,
    start_regions,
    start_server,
    wait_for,
    write_file,
)

BIG = 256 * MiB


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    write_file(root / "acme" / "m" / "a.bin", sample_bytes(5 * MiB + 321, seed=1))
    write_file(root / "acme" / "m" / "sub" / "b.txt", b"hello\n")
    write_file(root / "acme" / "m" / "big.bin", sample_bytes(BIG, seed=2))
    write_file(root / "other" / "x" / "c.bin", sample_bytes(1000, seed=3))
    server = start_regions(root, {"east": ["acme/*"], "west": ["other/*"]}, "--faults")
    http = httpx.Client(base_url=server.hub, follow_redirects=False, timeout=30)
    yield root, server, http
    http.close()
    server.stop()


@pytest.fixture
def fresh(store):
    root, server, http = store
    server.clear_faults()
    server.reset_stats()
    return root, server, http


def commit_of(http, repo="acme/m") -> str:
    data = http.get(f"/api/v1/models/{repo}/commits", params={"Ref": "master"}).json()["Data"]
    return data["Commit"][0]["Id"]


def probe(http, path, region=None, revision="master", repo="acme/m", method="HEAD"):
    headers = {"x-aliyun-region-id": region, "x-modelfs-accept": "grpc"} if region else {}
    return http.request(
        method,
        f"/api/v1/models/{repo}/repo",
        params={"Revision": revision, "FilePath": path},
        headers=headers,
    )


def stream(server, region: str, requests, metadata=()):
    channel = grpc.insecure_channel(
        server.grpc[region], [("grpc.max_receive_message_length", 32 * MiB)]
    )
    call = storage_pb2_grpc.StorageStub(channel).BidiReadObject(iter(requests), metadata=metadata)
    return channel, call


def spec(obj="acme/m/a.bin", bucket="east", generation=0):
    return pb.BidiReadObjectSpec(
        bucket=f"projects/_/buckets/{bucket}", object=obj, generation=generation
    )


def read_all(server, requests, region="east"):
    """(metadata response, {read_id: bytes}, chunks) for a stream that ends OK."""
    channel, call = stream(server, region, requests)
    try:
        responses = list(call)
    finally:
        channel.close()
    data: dict[int, bytearray] = {}
    chunks = []
    for r in responses[1:]:
        for d in r.object_data_ranges:
            chunks.append(d)
            data.setdefault(d.read_range.read_id, bytearray()).extend(d.checksummed_data.content)
    return responses[0], data, chunks


def failing(server, requests, region="east"):
    channel, call = stream(server, region, requests)
    try:
        with pytest.raises(grpc.RpcError) as e:
            for _ in call:
                pass
        return e.value
    finally:
        channel.close()


def details(error: grpc.RpcError) -> status_pb2.Status:
    raw = dict(error.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status()
    status.ParseFromString(raw)
    return status


# -- hub API ---------------------------------------------------------------------


def test_repo_info_listing_and_revisions(fresh):
    root, _, http = fresh
    assert http.get("/api/v1/models/acme/m").json()["Data"]["Name"] == "m"
    assert http.get("/api/v1/models/acme/nope").status_code == 404
    commit = commit_of(http)
    files = http.get(
        "/api/v1/models/acme/m/repo/files", params={"Revision": commit, "Recursive": "true"}
    ).json()["Data"]["Files"]
    blobs = {f["Path"]: f for f in files if f["Type"] == "blob"}
    assert set(blobs) == {"a.bin", "big.bin", "sub/b.txt"}
    assert {f["Path"] for f in files if f["Type"] == "tree"} == {"sub"}
    a = blobs["a.bin"]
    assert a["Size"] == 5 * MiB + 321
    assert a["Sha256"] == hashlib.sha256((root / "acme/m/a.bin").read_bytes()).hexdigest()
    top = http.get("/api/v1/models/acme/m/repo/files", params={"Revision": "master"}).json()
    assert {f["Path"] for f in top["Data"]["Files"]} == {"a.bin", "big.bin", "sub"}
    sub = http.get(
        "/api/v1/models/acme/m/repo/files", params={"Recursive": "true", "Root": "sub"}
    ).json()["Data"]["Files"]
    assert [f["Path"] for f in sub] == ["sub/b.txt"]


def test_commit_changes_with_content_and_old_revisions_are_refused(fresh, tmp_path):
    root, _server, http = fresh
    path = root / "other" / "x" / "c.bin"
    old = commit_of(http, "other/x")
    original = path.read_bytes()
    try:
        path.write_bytes(b"changed")
        # a request for the changed file sees it at once (one lstat of it)
        assert probe(http, "c.bin", revision=old, repo="other/x").status_code == 404
        new = commit_of(http, "other/x")
        assert new != old
        assert (
            http.get("/api/v1/models/other/x/repo/files", params={"Revision": old}).status_code
            == 404
        )
        assert probe(http, "c.bin", revision=old, repo="other/x").status_code == 404
        assert probe(http, "c.bin", revision=new, repo="other/x").status_code == 302
    finally:
        path.write_bytes(original)
        wait_for(lambda: commit_of(http, "other/x") == old, 10, "the first commit again")


def test_probe_answers_per_region(fresh):
    _, server, http = fresh
    commit = commit_of(http)
    east = probe(http, "a.bin", "east", commit)
    assert east.status_code == 302
    target = parse_grpc_url(east.headers["location"])
    assert (target.endpoint, target.bucket, target.object) == (
        server.grpc["east"],
        "east",
        "acme/m/a.bin",
    )
    assert target.generation > 0
    for region in ("west", "nowhere", None):
        r = probe(http, "a.bin", region, method="GET")
        assert r.status_code == 302 and f"/cdn/acme/m/{commit}/a.bin" in r.headers["location"]
    assert probe(http, "missing.bin", "east").status_code == 404
    assert server.stats()["probes"] == {"east": 2, "west": 1, "nowhere": 1, "": 1}


def test_cdn_ranges(fresh):
    root, _, http = fresh
    data = (root / "acme/m/a.bin").read_bytes()
    size = len(data)
    url = probe(http, "a.bin").headers["location"]
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    cases = {
        "bytes=0-99": (0, 99),
        "bytes=100-": (100, size - 1),
        "bytes=-10": (size - 10, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
        f"bytes=5-{size + 100}": (5, size - 1),
    }
    for header, (first, last) in cases.items():
        r = httpx.get(url, headers={"Range": header})
        assert r.status_code == 206, header
        assert r.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert int(r.headers["content-length"]) == last - first + 1
        assert r.headers["etag"] == etag
        assert r.content == data[first : last + 1]
    whole = httpx.get(url)
    assert whole.status_code == 200 and whole.content == data
    r = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}"
    assert httpx.head(url).headers["content-length"] == str(size)
    stale = url.replace(commit_of(http), "0" * 40)
    assert httpx.get(stale).status_code == 404


def test_client_region_endpoint(fresh):
    _, _, http = fresh
    info = http.get("/api/v1/repos/internalAccelerationInfo").json()["Data"]
    assert info == {}  # a topology without --client-region has no region to tell
    assert http.get("/api/v1/repos/regionId").status_code == 404


# -- BidiReadObject ----------------------------------------------------------------


def test_first_response_has_metadata_and_handle_without_ranges(fresh):
    _root, server, _ = fresh
    first, data, _ = read_all(server, [pb.BidiReadObjectRequest(read_object_spec=spec())])
    assert first.metadata.size == 5 * MiB + 321
    assert first.metadata.name == "acme/m/a.bin"
    assert first.metadata.bucket == "projects/_/buckets/east"
    assert first.metadata.generation > 0 and first.read_handle.handle
    assert data == {}


def test_many_concurrent_ranges_interleave_byte_exact(fresh):
    root, server, _ = fresh
    content = (root / "acme/m/big.bin").read_bytes()
    ranges = [
        pb.ReadRange(
            read_offset=i * 3 * MiB + i, read_length=(i % 5) * MiB + 1000 + i, read_id=100 + i
        )
        for i in range(50)
    ]
    requests = [
        pb.BidiReadObjectRequest(read_object_spec=spec("acme/m/big.bin"), read_ranges=ranges[:30]),
        pb.BidiReadObjectRequest(read_ranges=ranges[30:]),
    ]
    _, data, chunks = read_all(server, requests)
    for r in ranges:
        assert bytes(data[r.read_id]) == content[r.read_offset : r.read_offset + r.read_length]
    expected_offset = {r.read_id: r.read_offset for r in ranges}
    for c in chunks:
        assert len(c.checksummed_data.content) <= 2 * MiB
        assert crc32c.crc32c(c.checksummed_data.content) == c.checksummed_data.crc32c
        assert c.read_range.read_offset == expected_offset[c.read_range.read_id]
        expected_offset[c.read_range.read_id] += len(c.checksummed_data.content)
    ends = [c.read_range.read_id for c in chunks if c.range_end]
    assert sorted(ends) == sorted(r.read_id for r in ranges)
    order = [c.read_range.read_id for c in chunks]
    spans = {rid: (order.index(rid), len(order) - 1 - order[::-1].index(rid)) for rid in set(order)}
    interleaved = [rid for rid, (a, b) in spans.items() if len(set(order[a : b + 1])) > 1]
    assert len(interleaved) >= 10  # ranges progress side by side, not one after another


def test_length_zero_negative_offsets_and_empty_tail(fresh):
    root, server, _ = fresh
    content = (root / "acme/m/a.bin").read_bytes()
    size = len(content)
    ranges = [
        pb.ReadRange(read_offset=size - 1000, read_length=0, read_id=1),
        pb.ReadRange(read_offset=-500, read_length=0, read_id=2),
        pb.ReadRange(read_offset=-500, read_length=100, read_id=3),
        pb.ReadRange(read_offset=size, read_length=0, read_id=4),
    ]
    _, data, chunks = read_all(
        server, [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=ranges)]
    )
    assert bytes(data[1]) == content[-1000:]
    assert bytes(data[2]) == content[-500:]
    assert bytes(data[3]) == content[-500:-400]
    assert bytes(data.get(4, b"")) == b"" and any(
        c.read_range.read_id == 4 and c.range_end for c in chunks
    )


def test_256_mib_over_one_stream(fresh):
    root, server, _ = fresh
    _, data, chunks = read_all(
        server,
        [
            pb.BidiReadObjectRequest(
                read_object_spec=spec("acme/m/big.bin"),
                read_ranges=[pb.ReadRange(read_offset=0, read_length=0, read_id=7)],
            )
        ],
    )
    # slow start: a few smaller chunks first, then the largest (2 MiB) ones
    assert all(len(c.checksummed_data.content) <= 2 * MiB for c in chunks)
    assert BIG // (2 * MiB) <= len(chunks) <= BIG // (2 * MiB) + 8
    assert (
        hashlib.sha256(data[7]).digest()
        == hashlib.sha256((root / "acme/m/big.bin").read_bytes()).digest()
    )


@pytest.mark.parametrize(
    "bad",
    [
        pb.ReadRange(read_offset=6 * MiB, read_length=1, read_id=9),
        pb.ReadRange(read_offset=0, read_length=-1, read_id=9),
        pb.ReadRange(read_offset=5 * MiB, read_length=MiB, read_id=9),
        pb.ReadRange(read_offset=-(6 * MiB), read_length=0, read_id=9),
    ],
)
def test_out_of_range_names_the_read_id(fresh, bad):
    _, server, _ = fresh
    e = failing(server, [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=[bad])])
    assert e.code() == grpc.StatusCode.OUT_OF_RANGE
    status = details(e)
    err = pb.BidiReadObjectError()
    assert status.details[0].Unpack(err)
    assert [x.read_id for x in err.read_range_errors] == [9]


@pytest.mark.parametrize(
    ("request_spec", "code"),
    [
        (spec("acme/m/nope.bin"), grpc.StatusCode.NOT_FOUND),
        (spec(bucket="west"), grpc.StatusCode.NOT_FOUND),  # west does not hold acme/*
        (spec(bucket="nosuch"), grpc.StatusCode.NOT_FOUND),
        (spec(generation=12345), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_unknown_objects_and_generations(fresh, request_spec, code):
    _, server, _ = fresh
    region = "west" if request_spec.bucket.endswith("west") else "east"
    e = failing(server, [pb.BidiReadObjectRequest(read_object_spec=request_spec)], region)
    assert e.code() == code


def test_request_limits(fresh):
    _, server, _ = fresh
    many = [pb.ReadRange(read_offset=i, read_length=1, read_id=i) for i in range(101)]
    e = failing(server, [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=many)])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    dup = [pb.ReadRange(read_offset=0, read_length=MiB, read_id=1)] * 2
    e = failing(server, [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=dup)])
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "read_id 1" in e.details()


def test_routing_header_is_accepted(fresh):
    _, server, _ = fresh
    channel, call = stream(
        server,
        "east",
        [
            pb.BidiReadObjectRequest(
                read_object_spec=spec(),
                read_ranges=[pb.ReadRange(read_offset=0, read_length=10, read_id=1)],
            )
        ],
        metadata=[
            ("x-goog-request-params", "bucket=projects%2F_%2Fbuckets%2Feast&routing_token=abc")
        ],
    )
    try:
        assert len(list(call)) == 2
    finally:
        channel.close()


# -- faults --------------------------------------------------------------------------


def one_range(length=4 * MiB):
    return [
        pb.BidiReadObjectRequest(
            read_object_spec=spec(),
            read_ranges=[pb.ReadRange(read_offset=0, read_length=length, read_id=1)],
        )
    ]


def test_fault_break_after_exactly_n_bytes(fresh):
    _, server, _ = fresh
    server.add_fault("break", after_bytes=MiB + 7)
    channel, call = stream(server, "east", one_range())
    got = 0
    with pytest.raises(grpc.RpcError) as e:
        for r in call:
            got += sum(len(d.checksummed_data.content) for d in r.object_data_ranges)
    channel.close()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and got == MiB + 7


def test_fault_unavailable_redirect_corrupt_delay(fresh):
    _, server, _ = fresh
    server.add_fault("unavailable")
    assert failing(server, one_range()).code() == grpc.StatusCode.UNAVAILABLE
    server.add_fault("redirect", routing_token="go-there")
    e = failing(server, one_range())
    assert e.code() == grpc.StatusCode.ABORTED
    redirected = pb.BidiReadObjectRedirectedError()
    assert details(e).details[0].Unpack(redirected)
    assert redirected.routing_token == "go-there"
    server.add_fault("corrupt")
    _, _, chunks = read_all(server, one_range())
    bad = [
        c for c in chunks if crc32c.crc32c(c.checksummed_data.content) != c.checksummed_data.crc32c
    ]
    assert len(bad) == 1
    server.add_fault("delay", ms=300, count=2)
    start = time.monotonic()
    read_all(server, one_range())
    assert time.monotonic() - start >= 0.6
    assert server.stats()["faults_injected"] == {
        "unavailable": 1,
        "redirect": 1,
        "corrupt": 1,
        "delay": 2,
    }


def test_fault_hub_error(fresh):
    _, server, http = fresh
    server.add_fault("hub_error", status=503, count=1)
    assert http.get("/api/v1/models/acme/m").status_code == 503
    assert http.get("/api/v1/models/acme/m").status_code == 200


def test_faults_are_off_unless_asked(tmp_path):
    write_file(tmp_path / "s" / "a" / "b" / "f", b"x")
    server = start_server(tmp_path / "s")
    try:
        r = httpx.post(f"{server.hub}/admin/faults", json={"kind": "break"})
        assert r.status_code == 404
    finally:
        server.stop()


# -- the process -----------------------------------------------------------------------


def test_sigterm_exits_cleanly_with_an_open_stream(tmp_path):
    write_file(tmp_path / "s" / "a" / "b" / "f", sample_bytes(4 * MiB, seed=1))
    server = start_server(tmp_path / "s")
    channel = grpc.insecure_channel(server.grpc[""])
    queue_open = iter(
        [
            pb.BidiReadObjectRequest(
                read_object_spec=pb.BidiReadObjectSpec(
                    bucket="projects/_/buckets/local", object="a/b/f"
                )
            ),
            None,
        ]
    )
    call = storage_pb2_grpc.StorageStub(channel).BidiReadObject(
        m for m in queue_open if m is not None
    )
    next(call)  # the stream is open
    start = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0
    assert time.monotonic() - start < 5
    channel.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["/nonexistent-root"], "does not exist"),
        (["{root}", "--http", "nohost"], "--http"),
        (["{root}", "--region", "Bad_Region"], "bad region name"),
        (["{root}", "--topology", "{bad_key}"], "unknown key 'grcp'"),
        (["{root}", "--topology", "{no_grpc}"], "missing key 'grpc'"),
        (["{root}", "--topology", "{bad_name}"], "bad region name"),
        (["{root}", "--stream-buffer", "1K"], "between"),
        (["{root}", "--send-memory", "lots"], "not a size"),
        (["{root}", "--max-ranges", "10"], "--max-ranges"),
        (["{root}", "--admin", "nohost"], "--admin"),
        (["{root}", "--faults"], "--faults needs --admin"),
    ],
)
def test_bad_command_lines(tmp_path, args, words):
    files = {
        "bad_key": '[regions.a]\ngrcp = "127.0.0.1:0"\n',
        "no_grpc": '[regions.a]\nrepos = ["*/*"]\n',
        "bad_name": '[regions.BAD]\ngrpc = "127.0.0.1:0"\n',
    }
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.toml"
        paths[name].write_text(text)
    (tmp_path / "root").mkdir()
    argv = [a.format(root=tmp_path / "root", **paths) for a in args]
    if "--http" not in argv:
        argv += ["--http", "127.0.0.1:0"]
    result = run_cli("serve", *argv, timeout=30)
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert words in result.stderr and len(lines) <= 3, result.stderr
