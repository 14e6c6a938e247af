"""A bucket as a catalog (listing pages, pinned generations and hashes) and ranged media
reads of pinned objects, against `modelfs serve`'s Cloud Storage JSON API; hostile
listings against a scripted server."""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import crc32c
import google.auth.credentials
import pytest
import trio

from fusefs.data.bidi import StreamLimits
from fusefs.data.client import DataClient
from fusefs.data.errors import AuthError, ChecksumError, DataError, GoneError
from fusefs.data.gcs_auth import (
    GcsAuth,
    GcsEndpoints,
    TokenSource,
    application_default,
    refresh_transport,
)
from fusefs.data.gcs_media import GcsMediaSource, bidi_refused
from fusefs.data.location import GrpcObject, parse_grpc_url
from fusefs.hub.client import HubError, RepoId, RepoNotFound
from fusefs.hub.gcs import BucketUrl, GcsCatalog, snapshot_id
from fusefs.testing import MiB, sample_bytes, start_server, write_file

from support.gcs import TokenServer, sa_environment

BIG = RepoId("acme", "many")
BLOB = sample_bytes(2 * MiB + 333, seed=4)
N = 5000


def small(i: int) -> bytes:
    return f"object {i}\n".encode() * (1 + i % 7)


def many_path(i: int) -> str:
    return f"shard-{i % 50:02d}/part-{i:05d}.bin"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket") / "root"
    for i in range(N):
        write_file(root / "acme" / "many" / many_path(i), small(i))
    write_file(root / "acme" / "model" / "weights.bin", BLOB)
    write_file(root / "acme" / "model" / "config.json", b'{"layers": 2}')
    write_file(root / "acme" / "many-more" / "x.bin", b"a neighbour, not a part of acme/many")
    handle = start_server(root)
    yield handle, root
    handle.stop()


def anonymous(hub: str) -> GcsAuth:
    endpoints = GcsEndpoints.resolve(environ={"STORAGE_EMULATOR_HOST": hub})
    return GcsAuth(endpoints, TokenSource(google.auth.credentials.AnonymousCredentials()))


@asynccontextmanager
async def media(auth: GcsAuth):
    """Yields open(object, size, **pins) -> reader over a GcsMediaSource."""
    async with DataClient() as data:
        readers = []

        def open_reader(obj: GrpcObject, size: int, limits=StreamLimits(), **pins):
            source = GcsMediaSource(
                auth, obj, size, data.http_workers, data.http_pool, limits, **pins
            )
            readers.append(data.reader(source, size, obj.object))
            return readers[-1]

        try:
            yield open_reader
        finally:
            for reader in readers:
                reader.close()


class _EveryToken:
    def __contains__(self, token: object) -> bool:
        return True


EVERY_TOKEN = _EveryToken()


def generation(path) -> int:
    return max(1, os.stat(path).st_mtime_ns // 1000)


async def test_5000_objects_list_through_pages_and_pin_generations(store):
    handle, root = store
    auth = anonymous(handle.hub)
    async with GcsCatalog(BucketUrl.parse("gs://local"), auth) as catalog:
        snap = await catalog.snapshot(BIG)
        assert catalog.requests == 5  # 1000 a page
        assert [f.path for f in snap.files] == sorted(many_path(i) for i in range(N))
        for i in (0, 1, 2345, N - 1):
            f = next(x for x in snap.files if x.path == many_path(i))
            data = small(i)
            assert (f.size, f.crc32c, f.md5) == (
                len(data),
                crc32c.crc32c(data),
                hashlib.md5(data).hexdigest(),
            )
            assert f.generation == generation(root / "acme" / "many" / many_path(i))
            assert f.mtime > 0 and f.sha256 is None
        again = await catalog.snapshot(BIG)
        assert again.commit == snap.commit and len(snap.commit) == 40

        # An object overwritten: a new generation, a new snapshot id; the old pin stays.
        target = root / "acme" / "many" / many_path(7)
        old = next(f for f in snap.files if f.path == many_path(7))
        target.write_bytes(b"new bytes!")
        stamp = old.generation * 1000 + 5_000_000
        os.utime(target, ns=(stamp, stamp))
        changed = await catalog.snapshot(BIG)
        deadline = trio.current_time() + 10
        while changed.commit == snap.commit:  # listings follow the disk within seconds
            assert trio.current_time() < deadline, "the overwritten object was never listed"
            await trio.sleep(0.2)
            changed = await catalog.snapshot(BIG)
        new = next(f for f in changed.files if f.path == many_path(7))
        assert changed.commit != snap.commit and new.generation != old.generation
        assert {f.path: f.generation for f in changed.files if f.path != new.path} == {
            f.path: f.generation for f in snap.files if f.path != new.path
        }
        assert (await catalog.stat(f"acme/many/{new.path}")).generation == new.generation
        with pytest.raises(RepoNotFound):
            await catalog.stat(f"acme/many/{old.path}", old.generation)

        async with media(auth) as open_reader:
            for pinned, expected in ((old, None), (new, b"new bytes!")):
                obj = GrpcObject("unused:1", "local", f"acme/many/{pinned.path}", pinned.generation)
                reader = open_reader(obj, pinned.size, crc32c=pinned.crc32c)
                if expected is None:
                    with pytest.raises(GoneError):  # never the new bytes
                        await reader.read(0, pinned.size)
                else:
                    assert await reader.read(0, pinned.size) == expected

        with pytest.raises(RepoNotFound):
            await catalog.snapshot(RepoId("acme", "absent"))
        with pytest.raises(RepoNotFound):
            await catalog.snapshot(BIG, "v1.0")  # a bucket has no revisions
        loc = parse_grpc_url(catalog.location(BIG, new))
        assert (loc.bucket, loc.object, loc.generation, loc.tls) == (
            "local",
            f"acme/many/{new.path}",
            new.generation,
            True,
        )


async def test_media_reads_are_byte_exact_and_check_what_they_get(store):
    handle, _ = store
    auth = anonymous(handle.hub)
    async with GcsCatalog(BucketUrl.parse("gs://local"), auth) as catalog:
        snap = await catalog.snapshot(RepoId("acme", "model"))
    files = {f.path: f for f in snap.files}
    weights, config = files["weights.bin"], files["config.json"]
    limits = StreamLimits(backoff_initial=0.01, max_attempts=2)
    async with media(auth) as open_reader:

        def reader_for(f, **pins):
            obj = GrpcObject("unused:1", "local", f"acme/model/{f.path}", f.generation)
            pins.setdefault("crc32c", f.crc32c)
            pins.setdefault("md5", f.md5)
            return open_reader(obj, f.size, limits, **pins)

        reader = reader_for(weights)
        rng = random.Random(3)
        spans = [(rng.randrange(weights.size), rng.randrange(1, 300_000)) for _ in range(40)]
        spans += [(0, 10), (weights.size - 7, 7), (MiB - 3, 6)]

        async def one(off, n):
            got = await reader.read(off, n)
            assert got == BLOB[off : off + n]

        async with trio.open_nursery() as nursery:
            for off, n in spans:
                nursery.start_soon(one, off, n)
        # however the reads interleave (trio starts them in any order, and a read at 0
        # prefetches the head), ranges never overlap: no byte is fetched twice
        assert reader.source.counters.requests >= 1
        assert reader.source.counters.bytes <= weights.size

        whole = reader_for(config)
        assert await whole.read(0, config.size) == b'{"layers": 2}'

        for pins in ({"crc32c": crc32c.crc32c(b"other bytes")}, {"md5": "00" * 16}):
            wrong = reader_for(config, **pins)  # the listing pinned other hashes
            with pytest.raises(GoneError, match="not the pinned one"):
                await wrong.read(0, config.size)

        gone = open_reader(GrpcObject("unused:1", "local", "acme/model/absent.bin", 5), 10, limits)
        with pytest.raises(GoneError):
            await gone.read(0, 10)

        short = open_reader(GrpcObject("unused:1", "local", "acme/model/config.json", 0), 5, limits)
        with pytest.raises(DataError):  # the object has 13 bytes: Content-Range says so
            await short.read(0, 5)
    stats = handle.stats()
    assert stats["requests_with_credentials"]["gcs"] == 0  # anonymous sends none


def test_bidi_refusals_that_mean_media_reads():
    import grpc

    assert bidi_refused(grpc.StatusCode.UNIMPLEMENTED)
    assert bidi_refused(grpc.StatusCode.FAILED_PRECONDITION)
    for code in (
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    ):
        assert not bidi_refused(code)


# -- hostile listings --------------------------------------------------------------


class ScriptedBucket:
    """A JSON API that answers list requests from a script of pages (by pageToken)."""

    def __init__(self):
        self.pages: dict[str | None, object] = {}
        self.raw: bytes | None = None
        self.requests: list[str] = []
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                from urllib.parse import parse_qs, urlsplit

                bucket.requests.append(self.path)
                bucket.auth.append(self.headers.get("Authorization"))
                if self.path.startswith("/download/"):
                    return self.media()
                query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
                page = bucket.pages.get(query.get("pageToken"), {"kind": "storage#objects"})
                body = bucket.raw if bucket.raw is not None else json.dumps(page).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def media(self):
                spec = bucket.media
                if spec.get("redirect"):
                    self.send_response(302)
                    self.send_header("Location", spec["redirect"] + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if token in spec.get("refuse", ()):
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                first, last = map(int, self.headers["Range"][6:].split("-"))
                body = spec["body"][first : last + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(spec['body'])}")
                for key in ("x-goog-generation", "x-goog-hash", "content-encoding"):
                    if spec.get(key) is not None:
                        self.send_header(key, spec[key])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.media: dict[str, object] = {}
        self.auth: list[str | None] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def item(name, **over):
    base = {
        "name": name,
        "bucket": "b",
        "size": "3",
        "generation": "17",
        "crc32c": "AAAAAA==",
        "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==",
        "updated": "2026-01-02T03:04:05.678Z",
    }
    return {**base, **over}


async def test_hostile_listings_are_checked_entry_by_entry(caplog):
    bucket = ScriptedBucket()
    try:
        auth = anonymous(bucket.url)
        p = "m/o/r/"
        bucket.pages[None] = {
            "items": [
                item(p + "good.bin"),
                item(p + "dir/ok.bin", md5Hash=None),
                item(p + "../escape"),
                item(p + "a//b"),
                item(p + "nul\x00"),
                item(p + "neg", size="-1"),
                item(p + "huge", size=str(1 << 62)),
                item(p + "float", size="3.0"),
                item(p + "gen", generation="12a"),
                item(p + "gen0", generation="0"),
                item(p + "crc", crc32c="!!!"),
                item(p + "crclen", crc32c="AAAAAAAA"),
                item(p + "other", bucket="elsewhere"),
                item("m/o/elsewhere.bin"),
                item(p + "good.bin", generation="99"),
                item(p + "dir"),
                item(p + "folder/", size="0"),
                "junk",
                {"name": 5},
            ],
            "nextPageToken": "t1",
        }
        bucket.pages["t1"] = {"items": [item(p + "page2.bin", generation="5")]}
        async with GcsCatalog(BucketUrl.parse("gs://b/m"), auth) as catalog:
            snap = await catalog.snapshot(RepoId("o", "r"))
            assert [(f.path, f.generation) for f in snap.files] == [
                ("dir/ok.bin", 17),
                ("good.bin", 17),
                ("page2.bin", 5),
            ]
            assert snap.files[0].md5 is None and snap.files[1].crc32c == 0
            assert snap.files[1].mtime == 1767323045
            assert snap.commit == snapshot_id(
                "b", [(p + "dir/ok.bin", 17), (p + "good.bin", 17), (p + "page2.bin", 5)]
            )
            assert len(bucket.requests) == 2 and "pageToken=t1" in bucket.requests[1]
            assert "prefix=m%2Fo%2Fr%2F" in bucket.requests[0]

            bucket.pages["t1"] = {"items": [], "nextPageToken": "t1"}  # a loop
            with pytest.raises(HubError, match="repeated page token"):
                await catalog.snapshot(RepoId("o", "r"))
            bucket.raw = b"[1, 2"
            with pytest.raises(HubError, match="malformed"):
                await catalog.snapshot(RepoId("o", "r"))
            bucket.raw = json.dumps({"items": "nope"}).encode()
            with pytest.raises(HubError):
                await catalog.snapshot(RepoId("o", "r"))
        log = caplog.text
        for why in ("bad size", "bad generation", "crc32c", "another bucket", "not under"):
            assert why in log
    finally:
        bucket.stop()


def test_bucket_urls():
    assert BucketUrl.parse("gs://my-bucket") == BucketUrl("my-bucket", "")
    assert BucketUrl.parse("gs://b.example/models/v1/") == BucketUrl("b.example", "models/v1/")
    assert str(BucketUrl.parse("gs://b/p")) == "gs://b/p"
    for bad in ("s3://b", "gs://", "gs://Upper", "gs://-b", "gs://b/../x", "gs://b/a//c"):
        with pytest.raises(ValueError):
            BucketUrl.parse(bad)


async def test_media_answers_that_are_not_the_pinned_object(tmp_path, monkeypatch):
    tokens = TokenServer()
    bucket, elsewhere = ScriptedBucket(), ScriptedBucket()
    try:
        sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "key.json"))
        clock = [0.0]
        source = TokenSource(application_default(refresh_transport()), clock=lambda: clock[0])
        auth = GcsAuth(GcsEndpoints.resolve(bucket.url, None, {}), source)
        data = b"0123456789abcdef"
        good = {"body": data, "x-goog-generation": "8"}
        obj = GrpcObject("unused:1", "b", "o/r/f.bin", 8)
        limits = StreamLimits(backoff_initial=0.01, max_attempts=1)
        async with media(auth) as open_reader:

            async def read(spec, **pins):
                bucket.media = {**good, **spec}
                return await open_reader(obj, len(data), limits, **pins).read(0, len(data))

            assert await read({}) == data
            first = tokens.issued[0]
            assert bucket.auth[-1] == f"Bearer {first}"
            assert await read({"refuse": {first}}) == data  # 401: one new token, then read
            assert tokens.calls["token"] == 2 and bucket.auth[-1] == f"Bearer {tokens.issued[1]}"
            # The token in use refused (it was taken before: revoked, say): one new token;
            # that one refused too is a permission problem, not a stale token.
            with pytest.raises(AuthError, match="401"):
                await read({"refuse": EVERY_TOKEN})
            assert tokens.calls["token"] == 3
            sent = len(bucket.auth)
            with pytest.raises(AuthError, match="refused"):  # then no request for a while
                await read({})
            assert tokens.calls["token"] == 3 and len(bucket.auth) == sent
            clock[0] += 60  # a while later: a new token, and reads again
            assert await read({}) == data
            assert tokens.calls["token"] == 4
            with pytest.raises(GoneError, match="generation 9 served"):
                await read({"x-goog-generation": "9"})
            with pytest.raises(DataError, match="without x-goog-generation"):
                await read({"x-goog-generation": None})
            with pytest.raises(DataError, match="content encoding"):
                await read({"content-encoding": "gzip"})
            with pytest.raises(DataError, match="x-goog-hash"):
                await read({"x-goog-hash": "crc32c=???"})
            with pytest.raises(ChecksumError):  # no hash header: the body itself is checked
                await read({"body": b"0123456789abcdeX"}, crc32c=crc32c.crc32c(data))

            # Another host named by the storage service: a redirect, links in a listing.
            with pytest.raises(DataError, match="HTTP 302"):
                await read({"redirect": elsewhere.url})
            link = f"{elsewhere.url}/download/storage/v1/b/b/o/o%2Fr%2Ff.bin?alt=media"
            bucket.pages[None] = {"items": [item("o/r/f.bin", mediaLink=link, selfLink=link)]}
            async with GcsCatalog(BucketUrl.parse("gs://b"), auth) as catalog:
                snap = await catalog.snapshot(RepoId("o", "r"))
            bucket.media = good
            assert await open_reader(obj, len(data), limits).read(0, 3) == b"012"
        assert [f.path for f in snap.files] == ["f.bin"]
        assert elsewhere.requests == []
        assert all(a == f"Bearer {tokens.issued[3]}" for a in bucket.auth[-4:])
    finally:
        bucket.stop()
        elsewhere.stop()
        tokens.stop()
