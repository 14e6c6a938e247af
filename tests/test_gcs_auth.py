"""Storage credentials: google-auth's real service-account flow against a loopback token
endpoint, tokens on gRPC calls (refreshed before expiry and once after a refusal), a
failing token endpoint as one clean error, and credentials only for the storage origin."""

from __future__ import annotations

import datetime
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import google.auth
import pytest
import trio
from google.oauth2.credentials import Credentials

from fusefs.data.bidi import BidiStream, StreamLimits
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError, GoneError
from fusefs.data.gcs_auth import (
    READ_ONLY_SCOPE,
    GcsAuth,
    GcsEndpoints,
    GcsSetupError,
    GrpcEndpoint,
    JsonEndpoint,
    TokenSource,
    _Plugin,
    load_credentials,
)
from fusefs.data.location import GrpcObject
from fusefs.server.bearer import TokenChecker
from fusefs.testing import MiB, sample_bytes

from support.gcs import BidiBlobServer, TokenServer, sa_environment

BLOB = sample_bytes(3 * MiB + 5, seed=8)
NAME = "models/acme/llm/model.safetensors"
GENERATION = 1700000000000001


@pytest.fixture
def tokens():
    server = TokenServer()
    yield server
    server.stop()


@pytest.fixture
def adc(tokens, tmp_path, monkeypatch):
    """Application Default Credentials that find the test's service-account key file."""
    sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "key.json"))


@pytest.fixture
def bidi(tokens):
    server = BidiBlobServer({NAME: (GENERATION, BLOB)}, tokens.valid)
    yield server
    server.stop()


def auth_for(grpc_target: str, source: TokenSource) -> GcsAuth:
    endpoints = GcsEndpoints(
        JsonEndpoint.parse("http://127.0.0.1:9"), GrpcEndpoint.parse(grpc_target), anonymous=False
    )
    return GcsAuth(endpoints, source)


@asynccontextmanager
async def reading(auth: GcsAuth):
    """Yields read(): one new stream (as each newly opened file gets), read whole."""
    channel = auth.grpc_channel()
    target = GrpcObject(auth.endpoints.grpc.target, "bkt", NAME, GENERATION)
    try:
        async with DataClient() as data:

            async def read() -> bytes:
                limits = StreamLimits(backoff_initial=0.01)
                source = BidiStream(channel, target, len(BLOB), limits)
                reader = data.reader(source, len(BLOB), NAME)
                try:
                    return bytes(await reader.read(0, len(BLOB)))
                finally:
                    reader.close()

            yield read
    finally:
        channel.close()


def auth_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fusefs.data.gcs_auth" and r.levelno >= logging.WARNING
    ]


async def test_calls_carry_the_token_refreshed_before_expiry_and_after_a_refusal(
    tokens, adc, bidi, caplog
):
    tokens.expires_in = 226  # google-auth refreshes 225 s before expiry: stale after ~1 s
    source = load_credentials()
    auth = auth_for(bidi.target, source)
    async with reading(auth) as read_once:
        assert await read_once() == BLOB
        assert bidi.seen == [f"Bearer {tokens.issued[0]}"]
        assert await read_once() == BLOB  # still fresh: no new token
        assert tokens.calls["token"] == 1

        await trio.sleep(1.2)
        assert await read_once() == BLOB
        assert bidi.seen[-1] == f"Bearer {tokens.issued[1]}" and tokens.calls["token"] == 2

        tokens.expires_in = 3599
        tokens.revoke(tokens.issued[1])  # the service stops accepting it before its expiry
        with pytest.raises(GoneError, match="UNAUTHENTICATED"):
            await read_once()
        assert await read_once() == BLOB  # a new token, asked for once
        assert bidi.seen[-1] == f"Bearer {tokens.issued[2]}" and tokens.calls["token"] == 3

        tokens.revoke(tokens.issued[2])  # a token that was taken, then refused: once more
        with pytest.raises(GoneError, match="UNAUTHENTICATED"):
            await read_once()
        bidi.accept = lambda token: False  # and the new one refused before it was ever taken:
        calls = len(bidi.seen)
        for _ in range(4):  # a permission problem, not asked again (no call even leaves)
            with pytest.raises(GoneError, match="UNAUTHENTICATED"):
                await read_once()
        assert len(bidi.seen) == calls + 1
        assert tokens.calls["token"] == 4 and tokens.calls["bad_assertion"] == 0
    assert bidi.served == 4
    assert not auth_warnings(caplog)
    assert not any(t in caplog.text for t in tokens.issued)


async def test_a_failing_token_endpoint_is_one_clean_error_not_a_retry_storm(
    tokens, adc, bidi, caplog
):
    tokens.refuse = True
    auth = auth_for(bidi.target, load_credentials())
    async with reading(auth) as read_once:
        for _ in range(4):
            with pytest.raises(GoneError, match="cannot get a token") as failed:
                await read_once()
            assert "UNAUTHENTICATED" in str(failed.value)
    assert tokens.calls["token"] == 1  # the failure is remembered, not asked again per read
    assert bidi.seen == []  # no call left without a token
    assert len(auth_warnings(caplog)) == 1
    assert "invalid_grant" in auth_warnings(caplog)[0]


async def test_a_key_the_token_endpoint_does_not_trust(tokens, tmp_path, monkeypatch, bidi):
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "k.json", key=other))
    source = load_credentials()
    with pytest.raises(DataError, match="invalid_grant"):
        source.token()
    assert tokens.calls["bad_assertion"] == 1 and not tokens.issued


def service_account() -> google.auth.credentials.Credentials:
    credentials, _ = google.auth.default(scopes=[READ_ONLY_SCOPE])
    return credentials


def test_token_source_rules(tokens, adc):
    clock = [0.0]
    source = TokenSource(service_account(), failure_backoff=5.0, clock=lambda: clock[0])
    first = source.token()
    assert source.token() == first and source.token_now() == first
    assert source.reject("some-older-token")  # already replaced: retrying is fine
    assert source.token() == first
    assert source.reject(first) and source.token_now() is None
    second = source.token()
    assert second != first and tokens.calls["token"] == 2
    assert not source.reject(second)  # refused right after a forced refresh: give up,
    with pytest.raises(DataError, match="refused"):  # and fail at once for a while
        source.token()
    assert tokens.calls["token"] == 2
    clock[0] += 6.0  # then a new token is asked for
    third = source.token()
    assert third not in (first, second) and tokens.calls["token"] == 3
    assert source.reject(since=source.epoch - 1)  # a call from before that token: retry

    source._credentials.expiry = datetime.datetime(2000, 1, 1)  # expired: every caller waits
    with ThreadPoolExecutor(8) as pool:  # for one refresh
        got = set(pool.map(lambda _: source.token(), range(16)))
    assert got == {tokens.issued[3]} and tokens.calls["token"] == 4

    tokens.refuse = True
    source2 = TokenSource(service_account(), failure_backoff=5.0, clock=lambda: clock[0])
    for _ in range(3):
        with pytest.raises(DataError):
            source2.token()
    assert tokens.calls["token"] == 5 and source2.failure is not None
    clock[0] += 6.0  # the backoff is over: asked again
    tokens.refuse = False
    assert source2.token() in tokens.issued and source2.failure is None


def test_the_token_goes_only_to_the_storage_origin():
    ep = JsonEndpoint.parse("https://storage.example.com/base/")
    assert ep.base == "https://storage.example.com/base"
    assert ep.owns("https://storage.example.com/base/storage/v1/b/x/o")
    assert ep.owns("https://STORAGE.example.com:443/base/download/x")
    for foreign in (
        "http://storage.example.com/base/storage/v1",
        "https://storage.example.com:8443/base/storage/v1",
        "https://storage.example.com/basement/x",
        "https://storage.example.com.evil.net/base/x",
        "https://storage.example.com@evil.net/base/x",
        "https://evil.net/base/storage.example.com",
        "gs://storage.example.com/base/x",
    ):
        assert not ep.owns(foreign), foreign

    class Context:
        method_name = "BidiReadObject"

        def __init__(self, url):
            self.service_url = url

    handed: list[tuple[object, object]] = []
    source = TokenSource(Credentials(token="ya29.static"))
    plugin = _Plugin(source, GrpcEndpoint.parse("grpcs://storage.example.com:443"))
    for url in (
        "https://evil.net/google.storage.v2.Storage",
        "https://storage.example.com:8443/google.storage.v2.Storage",
        "https://storage.example.com/google.storage.v2.Storage",
    ):
        plugin(Context(url), lambda md, err: handed.append((md, err)))
    assert [md for md, _ in handed] == [(), (), (("authorization", "Bearer ya29.static"),)]
    assert all("refusing" in str(err) for _, err in handed[:2]) and handed[2][1] is None


def test_endpoints_and_where_credentials_may_go():
    default = GcsEndpoints.resolve(environ={})
    assert default.json.base == "https://storage.googleapis.com"
    assert (default.grpc.target, default.grpc.tls, default.anonymous) == (
        "storage.googleapis.com:443",
        True,
        False,
    )
    emulator = GcsEndpoints.resolve(environ={"STORAGE_EMULATOR_HOST": "localhost:9023"})
    assert emulator.json.base == "http://localhost:9023" and emulator.anonymous
    given = GcsEndpoints.resolve("https://private.example:8443", "grpc://[::1]:7000", {})
    assert given.json.base == "https://private.example:8443"
    assert (given.grpc.host, given.grpc.target, given.grpc.tls) == ("::1", "[::1]:7000", False)
    assert str(GrpcEndpoint.parse("https://h.example")) == "grpcs://h.example:443"
    for bad in ("h.example", "grpc://h:x", "ftp://h:1", "grpcs://h:1/path"):
        with pytest.raises(ValueError):
            GrpcEndpoint.parse(bad)
    with pytest.raises(GcsSetupError):
        GcsEndpoints.resolve("ftp://x", None, {})

    source = TokenSource(Credentials(token="ya29.static"))
    for json_url, grpc_target in (
        ("http://storage.example", "grpcs://storage.example:443"),  # clear text to a host
        ("https://storage.example", "storage.example:443"),  # no TLS to a host
    ):
        ends = GcsEndpoints(JsonEndpoint.parse(json_url), GrpcEndpoint.parse(grpc_target), False)
        with pytest.raises(GcsSetupError, match="credentials go only over"):
            GcsAuth(ends, source)
    local = GcsEndpoints(
        JsonEndpoint.parse("127.0.0.1:1"), GrpcEndpoint.parse("localhost:2"), False
    )
    assert GcsAuth(local, source).owns_grpc("localhost:2", tls=False)
    assert not GcsAuth(local, source).owns_grpc("localhost:2", tls=True)


def test_check_bearer_reads_grpc_metadata_and_http_headers(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("secret-a\n# comment\n")
    checker = TokenChecker(str(path))
    assert checker.check_bearer(
        (("x-goog-request-params", "b"), ("authorization", "Bearer secret-a"))
    )
    assert checker.check_bearer({"authorization": "bearer secret-a"})
    assert not checker.check_bearer({"authorization": "Bearer secret-b"})
    assert not checker.check_bearer({"authorization": "Basic secret-a"})
    assert not checker.check_bearer({"authorization": "Bearer # comment"})
    assert not checker.check_bearer([])
