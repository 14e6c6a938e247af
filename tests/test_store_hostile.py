"""`modelfs serve` against hostile clients: every request field checked at the edge, links
never followed on any plane, bad headers and ranges answered cleanly, bounded memory from
one stream, admin routes only on their own listener, bearer tokens on gRPC too.

Each test reproduces an attack that once did harm (a spinning store, a 500, a followed
link, memory that grew with what a client sent) and shows it now fails to."""

from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import httpx
import pytest
from google.rpc import status_pb2

from fusefs.hub.client import valid_repo_part
from fusefs.proto import storage_pb2 as pb
from fusefs.testing import (
    MiB,
    free_port,
    run_cli,
    sample_bytes,
    start_server,
    wait_for,
    write_file,
)

from support.gcs import TokenServer

BUCKET = "projects/_/buckets/local"
METHOD = "/google.storage.v2.Storage/BidiReadObject"
DATA = sample_bytes(3 * MiB + 17, seed=7)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    write_file(root / "acme" / "m" / "a.bin", DATA)
    write_file(root / "acme" / "m" / "sub" / "s.txt", b"inside\n")
    write_file(root / "acme" / "shared" / "x.txt", b"a repo of its own\n")
    write_file(outside / "secret" / "key.txt", b"never served\n")
    write_file(outside / "owner" / "repo" / "key.txt", b"never served either\n")
    # links of every kind, at every depth: owner, repo, directory, file
    (root / "evilowner").symlink_to(outside / "owner")
    (root / "acme" / "evil").symlink_to(outside / "secret")
    (root / "acme" / "alias").symlink_to(root / "acme" / "shared")  # inside ROOT, still a link
    (root / "acme" / "m" / "linkdir").symlink_to(outside / "secret")
    (root / "acme" / "m" / "link.txt").symlink_to(outside / "secret" / "key.txt")
    log = base / "serve.log"
    server = start_server(root, "--faults", "--max-ranges", "200", log=log)
    http = httpx.Client(base_url=server.hub, follow_redirects=False, timeout=30)
    yield root, server, http, log
    http.close()
    server.stop()


def channel_to(server, **options):
    opts = [("grpc.max_receive_message_length", 32 * MiB), *options.items()]
    return grpc.insecure_channel(server.grpc[""], opts)


def spec(obj="acme/m/a.bin", **fields):
    return pb.BidiReadObjectSpec(bucket=BUCKET, object=obj, **fields)


def call(server, requests, metadata=(), timeout=20):
    """(responses, error) of one stream whose requests are `requests` (protobuf messages
    or raw bytes), read to the end."""
    channel = channel_to(server)
    raw = channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
    encoded = [r if isinstance(r, bytes) else r.SerializeToString() for r in requests]
    got = []
    try:
        for message in raw(iter(encoded), metadata=metadata, timeout=timeout):
            got.append(pb.BidiReadObjectResponse.FromString(message))
        return got, None
    except grpc.RpcError as e:
        return got, e
    finally:
        channel.close()


def status_details(error) -> status_pb2.Status:
    status = status_pb2.Status()
    status.ParseFromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
    return status


def a_normal_read_works(server):
    got, error = call(
        server,
        [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=[rr(0, 100, 1)])],
    )
    assert error is None, error
    assert (
        b"".join(d.checksummed_data.content for r in got for d in r.object_data_ranges)
        == (DATA[:100])
    )


def rr(offset, length, read_id):
    return pb.ReadRange(read_offset=offset, read_length=length, read_id=read_id)


# -- gRPC: every field of every request -------------------------------------------------


def test_a_negative_read_id_is_served_and_the_store_does_not_spin(world):
    """read_id = -1 once sent the store's varint encoder into an endless loop."""
    _, server, _, _ = world
    got, error = call(
        server,
        [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=[rr(5, 10, -1)])],
        timeout=10,
    )
    assert error is None, error
    chunks = [d for r in got for d in r.object_data_ranges]
    assert [c.read_range.read_id for c in chunks] == [-1]
    assert chunks[0].checksummed_data.content == DATA[5:15] and chunks[0].range_end
    a_normal_read_works(server)


@pytest.mark.parametrize(
    ("requests", "code", "words"),
    [
        ([spec(obj="acme/m/a\0.bin")], grpc.StatusCode.INVALID_ARGUMENT, "control character"),
        ([spec(obj="acme/m/a\n.bin")], grpc.StatusCode.INVALID_ARGUMENT, "control character"),
        ([spec(obj="acme/m/\x1b[2Ja.bin")], grpc.StatusCode.INVALID_ARGUMENT, "control"),
        ([spec(obj="acme/m/" + "x" * 5000)], grpc.StatusCode.INVALID_ARGUMENT, "longer"),
        ([spec(obj="")], grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        ([spec(obj="acme/m/../m/a.bin")], grpc.StatusCode.INVALID_ARGUMENT, "'..'"),
        ([spec(generation=-5)], grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        ([spec(if_generation_match=-1)], grpc.StatusCode.INVALID_ARGUMENT, "negative"),
        ([spec(if_generation_match=1)], grpc.StatusCode.FAILED_PRECONDITION, "match"),
        ([spec(routing_token="a\0b")], grpc.StatusCode.INVALID_ARGUMENT, "routing_token"),
        (
            [spec(read_handle=pb.BidiReadHandle(handle=b"h" * 5000))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "read_handle",
        ),
        ([spec(obj="acme/m\n/a.bin")], grpc.StatusCode.INVALID_ARGUMENT, "control"),
    ],
)
def test_bad_object_specs_are_invalid_argument_not_unknown(world, requests, code, words):
    _, server, _, log = world
    _got, error = call(server, [pb.BidiReadObjectRequest(read_object_spec=s) for s in requests])
    assert error is not None and error.code() == code, error
    assert words in error.details()
    assert "Traceback" not in log.read_text()


def test_the_repo_name_part_refuses_a_trailing_newline(world):
    """`valid_repo_part` once matched 'm\\n' ($ matches before a final newline)."""
    _, _, http, _ = world
    assert not valid_repo_part("m\n") and valid_repo_part("m")
    assert http.get("/api/v1/models/acme/m%0A").status_code == 404
    assert http.get("/api/v1/models/acme%0A/m/repo/files").status_code == 404
    assert http.get("/storage/v1/b/local/o/acme%2Fm%0A%2Fa.bin").status_code == 404


def test_malformed_messages_and_later_specs_are_invalid_argument(world):
    _, server, _, log = world
    good = pb.BidiReadObjectRequest(read_object_spec=spec()).SerializeToString()
    for first in (b"\xff\xff\xff", b"\x0a\x05abc", b"\x42\x02\x08"):
        _, error = call(server, [first])
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, first
    _, error = call(server, [pb.BidiReadObjectRequest(read_ranges=[rr(0, 1, 1)])])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # one object per stream: a second spec ends the stream
    _got, error = call(server, [good, pb.BidiReadObjectRequest(read_object_spec=spec())])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "one object" in error.details()
    _, error = call(server, [good, b"\x42\x03\x08\x01"])  # a range cut short
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Traceback" not in log.read_text()


def test_oversized_messages_and_metadata_are_refused_by_their_caps(world):
    _, server, _, log = world
    good = pb.BidiReadObjectRequest(read_object_spec=spec()).SerializeToString()
    huge = b"\x42\x80\x80\x08" + b"\x08\x01" * (64 << 10)  # 128 KiB of ranges, cap 64 KiB
    for requests in ([huge], [good, huge]):
        _, error = call(server, requests)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _, error = call(server, [good], metadata=(("x-big", "v" * (20 << 10)),))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    a_normal_read_works(server)
    assert "Traceback" not in log.read_text()


def test_ranges_are_checked_against_the_object_and_each_other(world):
    _, server, _, _ = world
    size = len(DATA)
    cases = [
        ([rr(size + 1, 0, 4)], grpc.StatusCode.OUT_OF_RANGE),
        ([rr(-(size + 1), 0, 4)], grpc.StatusCode.OUT_OF_RANGE),
        ([rr(0, -1, 4)], grpc.StatusCode.OUT_OF_RANGE),
        ([rr(size - 1, 2, 4)], grpc.StatusCode.OUT_OF_RANGE),
        ([rr(0, 1, 4), rr(5, 1, 4)], grpc.StatusCode.INVALID_ARGUMENT),
        ([rr(i, 1, i) for i in range(101)], grpc.StatusCode.INVALID_ARGUMENT),
        ([rr((1 << 63) - 1, 1, 4)], grpc.StatusCode.OUT_OF_RANGE),
        ([rr(-(1 << 63), 1, 4)], grpc.StatusCode.OUT_OF_RANGE),
    ]
    for ranges, code in cases:
        _, error = call(
            server, [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=ranges)]
        )
        assert error is not None and error.code() == code, ranges
        if code == grpc.StatusCode.OUT_OF_RANGE:
            err = pb.BidiReadObjectError()
            assert status_details(error).details[0].Unpack(err)
            assert [e.read_id for e in err.read_range_errors] == [4]
    # the largest and smallest ids are fine, and encoded as protobuf encodes them
    ids = [(1 << 63) - 1, -(1 << 63), 0]
    got, error = call(
        server,
        [
            pb.BidiReadObjectRequest(
                read_object_spec=spec(), read_ranges=[rr(i, 1, rid) for i, rid in enumerate(ids)]
            )
        ],
    )
    assert error is None
    assert sorted(d.read_range.read_id for r in got for d in r.object_data_ranges) == sorted(ids)


def test_a_stream_that_floods_ranges_and_never_reads_is_held_back(world):
    """One stream once queued every range it was sent (~180 MB per million): now, past
    --max-ranges outstanding, the store stops reading the stream (HTTP/2 flow control)."""
    _, server, _, _ = world
    before = server.stats()["ranges"].get("local", 0)
    rss_before = rss_mib(server.pid)
    # a real stall: the client's window does not grow while it does not read
    channel = channel_to(server, **{"grpc.http2.bdp_probe": 0})
    stop = threading.Event()
    sent = 0

    def requests():
        nonlocal sent
        yield pb.BidiReadObjectRequest(read_object_spec=spec(obj="acme/m/a.bin"))
        read_id = 0
        while not stop.is_set():
            batch = [rr(0, 0, read_id + i) for i in range(100)]  # each: the whole object
            read_id += 100
            sent += 100
            yield pb.BidiReadObjectRequest(read_ranges=batch)

    raw = channel.stream_stream(METHOD)
    stream = raw(
        (r.SerializeToString() for r in requests()), timeout=60
    )  # responses never read past the first
    try:
        next(stream)
        time.sleep(5)
        stats = server.stats()
        accepted = stats["ranges"].get("local", 0) - before
        growth = rss_mib(server.pid) - rss_before
        print(f"\nflood: {sent} ranges sent, {accepted} taken, RSS +{growth:.1f} MiB")
        assert accepted <= 200 + 100, accepted  # --max-ranges 200, one message more
        assert sent > 10 * accepted  # the client did try to send far more
        assert growth < 100
    finally:
        stop.set()
        stream.cancel()
        channel.close()
    wait_for(lambda: not server.stats()["streams_active"].get("local"), 10, "the stream to end")
    a_normal_read_works(server)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


# -- links: never followed, on any plane ------------------------------------------------


def test_no_link_of_any_kind_is_listed_or_served_on_any_plane(world):
    _, server, http, _ = world
    # hub listings and info: linked owners and repos do not exist
    for repo in ("acme/evil", "acme/alias", "evilowner/repo"):
        assert http.get(f"/api/v1/models/{repo}").status_code == 404, repo
        assert http.get(f"/api/v1/models/{repo}/repo/files").status_code == 404, repo
    files = http.get("/api/v1/models/acme/m/repo/files", params={"Recursive": "true"}).json()[
        "Data"
    ]["Files"]
    assert sorted(f["Path"] for f in files) == ["a.bin", "sub", "sub/s.txt"]
    commit = files[0]["Revision"]
    # probes and the CDN route
    for repo, path in [
        ("acme/evil", "key.txt"),
        ("evilowner/repo", "key.txt"),
        ("acme/m", "linkdir/key.txt"),
        ("acme/m", "link.txt"),
        ("acme/alias", "x.txt"),
    ]:
        probe = http.head(
            f"/api/v1/models/{repo}/repo", params={"Revision": "master", "FilePath": path}
        )
        assert probe.status_code == 404, (repo, path)
        assert http.get(f"/cdn/{repo}/{commit}/{path}").status_code == 404, (repo, path)
        # gRPC
        _, error = call(server, [pb.BidiReadObjectRequest(read_object_spec=spec(f"{repo}/{path}"))])
        assert error.code() == grpc.StatusCode.NOT_FOUND, (repo, path)
        # the Cloud Storage JSON API: metadata and media
        name = f"{repo}/{path}".replace("/", "%2F")
        assert http.get(f"/storage/v1/b/local/o/{name}").status_code == 404
        assert http.get(f"/download/storage/v1/b/local/o/{name}?alt=media").status_code == 404
    listed = http.get("/storage/v1/b/local/o").json()
    names = [i["name"] for i in listed["items"]]
    assert names == ["acme/m/a.bin", "acme/m/sub/s.txt", "acme/shared/x.txt"]
    owners = http.get("/storage/v1/b/local/o", params={"delimiter": "/"}).json()["prefixes"]
    assert owners == ["acme/"]
    repos = http.get("/storage/v1/b/local/o", params={"delimiter": "/", "prefix": "acme/"}).json()[
        "prefixes"
    ]
    assert repos == ["acme/m/", "acme/shared/"]


def test_a_directory_swapped_for_a_link_is_not_followed(world, tmp_path):
    """Once indexed, a directory replaced by a link to elsewhere is not served either."""
    root, server, http, _ = world
    repo = root / "acme" / "swap"
    write_file(repo / "d" / "f.txt", b"before\n")
    elsewhere = tmp_path / "elsewhere"
    write_file(elsewhere / "f.txt", b"SECRET\n")
    assert http.get("/api/v1/models/acme/swap/repo/files").status_code == 200
    os.rename(repo / "d", tmp_path / "moved")
    (repo / "d").symlink_to(elsewhere)
    probe = http.get(
        "/api/v1/models/acme/swap/repo", params={"Revision": "master", "FilePath": "d/f.txt"}
    )
    assert probe.status_code == 404
    _, error = call(server, [pb.BidiReadObjectRequest(read_object_spec=spec("acme/swap/d/f.txt"))])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert http.get("/storage/v1/b/local/o/acme%2Fswap%2Fd%2Ff.txt?alt=media").status_code == 404


# -- HTTP: headers, ranges, paths, sizes ------------------------------------------------


def raw_http(server_url: str, request: bytes) -> bytes:
    host, port = server_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, body = out.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
        return out


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/acme/m",
        "/api/v1/models/acme/m/repo?Revision=master&FilePath=a.bin",
        "/storage/v1/b/local/o",
        "/cdn/acme/m/" + "0" * 40 + "/a.bin",
        "/nowhere",
    ],
)
def test_a_header_that_is_not_utf8_is_a_400_not_a_500(world, path):
    _, server, _, log = world
    answer = raw_http(
        server.hub,
        f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Evil: \xff\xfe\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    answer = raw_http(
        server.admin, b"GET /admin/stats HTTP/1.1\r\nHost: x\r\nX-Evil: \xc3\x28\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert "Traceback" not in log.read_text()


def cdn_url(http) -> str:
    probe = http.head(
        "/api/v1/models/acme/m/repo", params={"Revision": "master", "FilePath": "a.bin"}
    )
    return probe.headers["location"]


def test_range_headers_digits_only_ascii_and_never_a_500(world):
    _, server, http, log = world
    size = len(DATA)
    urls = [cdn_url(http), f"{server.hub}/download/storage/v1/b/local/o/acme%2Fm%2Fa.bin"]
    for url in urls:
        # 5,000 digits once overflowed Python's int-from-string limit: a 500
        huge = "9" * 5000
        assert httpx.get(url, headers={"Range": f"bytes={huge}-"}).status_code == 416
        whole = httpx.get(url, headers={"Range": f"bytes=0-{huge}"})
        assert whole.status_code == 206 and whole.content == DATA
        tail = httpx.get(url, headers={"Range": f"bytes=-{huge}"})
        assert tail.status_code == 206 and tail.content == DATA
        zeros = httpx.get(url, headers={"Range": "bytes=" + "0" * 3000 + "1-2"})
        assert zeros.status_code == 206 and zeros.content == DATA[1:3]
        # Arabic-Indic digits are not digits here: the header is ignored (200, all bytes)
        arabic = httpx.get(url, headers={"Range": "bytes=١-٣".encode()})
        assert arabic.status_code == 200 and len(arabic.content) == size
        for ignored in ("bytes=5-1", "bytes=1-2,4-5", "items=0-1", "bytes=--1", "bytes=1"):
            r = httpx.get(url, headers={"Range": ignored})
            assert r.status_code == 200 and len(r.content) == size, ignored
        assert httpx.get(url, headers={"Range": "BYTES=2-3"}).content == DATA[2:4]
    assert "Traceback" not in log.read_text()


def test_paths_are_decoded_exactly_once_on_every_route(world):
    _, _server, http, _ = world
    commit = http.get("/api/v1/models/acme/m/commits").json()["Data"]["Commit"][0]["Id"]
    assert http.get(f"/cdn/acme/m/{commit}/sub/s.txt").content == b"inside\n"
    # %2F is part of a segment, never a separator; %252e is the name '%2e', never '.'
    assert http.get(f"/cdn/acme/m/{commit}/sub%2Fs.txt").status_code == 404
    assert http.get(f"/cdn/acme/m/{commit}/%252e%252e/m/a.bin").status_code == 404
    assert http.get(f"/cdn/acme%2Fm/{commit}/a.bin").status_code == 404
    assert http.get("/api/v1/models/acme%2Fm/repo/files").status_code == 404
    assert http.get("/api/v1/models/acme/%252e%252e/repo/files").status_code == 404
    # percent-escapes that are not UTF-8 are a 400, not a name of replacement characters
    assert http.get(f"/cdn/acme/m/{commit}/%ff.bin").status_code == 400
    assert http.get("/api/v1/models/acme/m/repo?FilePath=%ff").status_code == 400


def test_request_head_and_body_sizes_are_capped(world):
    _, server, http, log = world
    r = http.post("/api/v1/models/acme/m", content=b"x" * (65 << 10))
    assert r.status_code == 413
    answer = raw_http(
        server.hub,
        b"GET /api/v1/models/acme/m HTTP/1.1\r\nHost: x\r\nX-Big: "
        + b"a" * (20 << 10)
        + b"\r\n\r\n",
    )
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:100]
    assert httpx.post(f"{server.admin}/admin/faults", content=b"[" * (70 << 10)).status_code == 413
    a_normal_read_works(server)
    assert "Traceback" not in log.read_text()


# -- admin routes: only on their own listener --------------------------------------------


def test_admin_routes_are_not_on_the_public_listener(world):
    _, server, http, _ = world
    for method, path in [
        ("GET", "/admin/stats"),
        ("POST", "/admin/stats/reset"),
        ("GET", "/admin/faults"),
        ("POST", "/admin/faults"),
    ]:
        assert http.request(method, path, json={"kind": "unavailable"}).status_code == 404
    assert server.admin != server.hub
    assert httpx.get(f"{server.admin}/admin/stats").status_code == 200
    assert httpx.get(f"{server.admin}/api/v1/models/acme/m").status_code == 404


def test_admin_listener_only_when_asked_and_on_loopback_by_default(tmp_path):
    write_file(tmp_path / "s" / "a" / "b" / "f", b"x")
    err = run_cli("serve", str(tmp_path / "s"), "--http", "127.0.0.1:0", "--faults", timeout=30)
    assert err.returncode != 0 and "--faults needs --admin" in err.stderr
    assert len(err.stderr.strip().splitlines()) == 1
    port = free_port()
    server = start_server(tmp_path / "s", "--admin", str(port))
    try:
        assert server.admin == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{server.admin}/admin/stats").status_code == 200
    finally:
        server.stop()


# -- bearer tokens on the gRPC listener --------------------------------------------------


def test_require_token_applies_to_grpc(tmp_path):
    write_file(tmp_path / "s" / "acme" / "m" / "a.bin", DATA)
    tokens = tmp_path / "tokens"
    tokens.write_text("good-token\n")
    server = start_server(tmp_path / "s", "--require-token", str(tokens))
    request = [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=[rr(0, 10, 1)])]
    try:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "x"),)):
            _, error = call(server, request, metadata)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        got, error = call(server, request, (("authorization", "Bearer good-token"),))
        assert error is None and got[1].object_data_ranges[0].checksummed_data.content == DATA[:10]
        assert server.stats()["streams_unauthenticated"] == 3
    finally:
        server.stop()


def test_require_token_by_introspection_applies_to_grpc(tmp_path):
    tokens = TokenServer()
    tokens.grant("live-token")
    write_file(tmp_path / "s" / "acme" / "m" / "a.bin", DATA)
    server = start_server(tmp_path / "s", "--require-token", f"{tokens.url}/introspect")
    request = [pb.BidiReadObjectRequest(read_object_spec=spec(), read_ranges=[rr(0, 10, 1)])]
    try:
        _, error = call(server, request, (("authorization", "Bearer never-issued"),))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        got, error = call(server, request, (("authorization", "Bearer live-token"),))
        assert error is None and got[1].object_data_ranges[0].checksummed_data.content == DATA[:10]
        assert tokens.calls["introspect"] == 2
        tokens.stop()  # the endpoint gone: UNAVAILABLE, not a refusal
        _, error = call(server, request, (("authorization", "Bearer another"),))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()
