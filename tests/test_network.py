"""The environment's network settings, one policy for every client of a mount: the
proxy variables (HTTP(S)_PROXY / ALL_PROXY / NO_PROXY), honoured by the probes, the
ranged GETs and the gRPC channels as by the hub client; and the CAs (SSL_CERT_FILE).
Real clients, a real forward proxy (tests.support.forward_proxy), real origins on
loopback."""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor

import certifi
import grpc
import pytest
import trio

from fusefs.data.bidi import StreamLimits
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError
from fusefs.hub.client import HubClient, RepoId
from fusefs.hub.http1 import HeadClient, ProbeError
from fusefs.network import (
    NetworkSettingError,
    ProxyError,
    check_environment,
    describe_proxies,
    grpc_channel_options,
    proxy_for,
)
from fusefs.testing import (
    MiB,
    clean_env,
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_server,
    write_file,
)

from support.forward_proxy import ForwardProxy
from support.readers import read_all
from support.static_files import StaticFiles
from support.tls import self_signed

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
FAST = StreamLimits(backoff_initial=0.01, backoff_max=0.05, max_attempts=2)
DATA = sample_bytes(20 * MiB + 7, seed=71)
CREDENTIALS = "alice:p@ss:word"  # quoted in the URL; the proxy sees it as it is
QUOTED = "alice:p%40ss%3Aword"


@pytest.fixture
def env(monkeypatch):
    """This process's proxy settings: none, unless the test sets them."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


@pytest.fixture
def proxy():
    p = ForwardProxy(CREDENTIALS)
    yield p
    p.close()


@pytest.fixture
def origin(tmp_path):
    write_file(tmp_path / "files" / "blob.bin", DATA)
    files = StaticFiles(tmp_path / "files")
    yield files
    files.stop()


@pytest.fixture
def tls_origin(tmp_path, monkeypatch):
    context, ca_file = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    write_file(tmp_path / "tls-files" / "blob.bin", DATA)
    files = StaticFiles(tmp_path / "tls-files", tls=context)
    yield files
    files.stop()


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


# --- the policy -------------------------------------------------------------------------


def test_the_variable_for_the_scheme_applies_and_lower_case_wins(env):
    env(HTTP_PROXY="http://upper:1", http_proxy="http://lower:2", HTTPS_PROXY="tls-proxy:3")
    http = proxy_for("http", "hub.example.com")
    assert http is not None and (http.host, http.port) == ("lower", 2)
    https = proxy_for("https", "hub.example.com")  # no scheme: an http:// proxy, as curl reads
    assert https is not None and (https.host, https.port) == ("tls-proxy", 3)


def test_all_proxy_is_the_fallback(env):
    env(ALL_PROXY="http://everything:8080", HTTPS_PROXY="http://tls:3128")
    assert proxy_for("http", "a.example").host == "everything"  # type: ignore[union-attr]
    assert proxy_for("https", "a.example").host == "tls"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("no_proxy", "host", "direct"),
    [
        ("example.com", "example.com", True),
        ("example.com", "cdn.example.com", True),
        (".example.com", "cdn.example.com", True),
        ("example.com", "badexample.com", False),
        ("other.org, example.com", "EXAMPLE.com", True),
        ("*", "anything.at.all", True),
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.2", False),
        ("::1", "::1", True),
        ("[::1]", "0:0:0:0:0:0:0:1", True),
        ("::1", "::2", False),
        ("", "example.com", False),
    ],
)
def test_no_proxy_sends_matching_hosts_direct(env, no_proxy, host, direct):
    env(HTTPS_PROXY="http://proxy:3128", NO_PROXY=no_proxy)
    assert (proxy_for("https", host) is None) == direct


def test_credentials_become_a_proxy_authorization_and_are_never_shown(env):
    env(HTTPS_PROXY=f"http://{QUOTED}@proxy:3128")
    found = proxy_for("https", "hub.example.com")
    assert found is not None and found.authorization == basic(CREDENTIALS)
    assert "alice" not in repr(found) and "p@ss" not in repr(found)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://127.0.0.1:1080", "socks5:// proxies are not supported"),
        ("https://proxy:3128", "https:// proxies are not supported"),
        ("http://proxy:99999", "not a proxy URL"),
        ("http://:3128", "no proxy host"),
    ],
)
def test_a_proxy_that_cannot_be_used_is_an_error_naming_the_variable(env, value, message):
    env(https_proxy=value)
    with pytest.raises(ProxyError, match=message) as caught:
        check_environment()
    assert str(caught.value).startswith("https_proxy: ")


def test_no_proxy_variable_means_direct(env):
    check_environment()
    assert proxy_for("https", "hub.example.com") is None
    assert describe_proxies() is None


def test_the_log_line_names_each_proxy_without_its_credentials(env):
    env(HTTPS_PROXY=f"http://{QUOTED}@proxy:3128", no_proxy="127.0.0.1,.internal")
    assert describe_proxies() == "proxy: https via proxy:3128; direct: 127.0.0.1,.internal"


def test_grpc_channels_get_the_same_proxy_unless_grpc_variables_are_set(env, monkeypatch):
    env(HTTPS_PROXY=f"http://{QUOTED}@proxy:3128", NO_PROXY="store.internal")
    assert grpc_channel_options("storage.example:443", tls=True) == [
        ("grpc.http_proxy", f"http://{QUOTED}@proxy:3128")
    ]
    assert grpc_channel_options("store.internal:9000", tls=True) == [("grpc.enable_http_proxy", 0)]
    assert grpc_channel_options("[::1]:9000", tls=False) == [("grpc.enable_http_proxy", 0)]
    monkeypatch.setenv("grpc_proxy", "http://grpc-only:3128")
    assert grpc_channel_options("storage.example:443", tls=True) == []  # grpcio decides


# --- ranged GETs ------------------------------------------------------------------------


async def read_whole(url: str) -> tuple[int, int]:
    """Read the object at `url` with a data client, checking every byte: (requests made,
    connections opened)."""
    async with DataClient(stream_limits=FAST) as client:
        reader = client.open_reader(url, len(DATA))
        got = await read_all(reader)
        requests, opened = reader.source.counters.requests, client.http_pool.opened
    assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
    return requests, opened


async def test_ranged_gets_to_an_http_origin_go_through_the_proxy_in_absolute_form(
    env, proxy, origin
):
    env(HTTP_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
    url = f"{origin.url}/blob.bin"
    requests, opened = await read_whole(url)
    assert proxy.requests == [("GET", url)] * requests  # every range, none direct
    assert origin.ranges == requests
    assert set(proxy.authorizations) == {basic(CREDENTIALS)}
    assert proxy.connections == opened < requests  # kept warm through the proxy
    assert all("proxy-authorization" not in names for names in origin.header_names)


async def test_ranged_gets_to_an_https_origin_go_through_a_tunnel(env, proxy, tls_origin):
    env(HTTPS_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
    requests, opened = await read_whole(f"{tls_origin.url}/blob.bin")
    authority = tls_origin.url.removeprefix("https://")
    assert proxy.connects == [authority] * opened and opened < requests
    assert proxy.requests == []  # the proxy saw host names only: no request, no byte
    assert set(proxy.authorizations) == {basic(CREDENTIALS)}
    assert tls_origin.ranges == requests
    assert all("proxy-authorization" not in names for names in tls_origin.header_names)


async def test_no_proxy_reaches_the_origin_directly(env, proxy, origin):
    env(HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    async with DataClient(stream_limits=FAST) as client:
        reader = client.open_reader(f"{origin.url}/blob.bin", len(DATA))
        assert bytes(await reader.read(MiB, 4096)) == DATA[MiB : MiB + 4096]
    assert proxy.connections == 0 and origin.ranges > 0


async def test_a_tunnel_the_proxy_refuses_fails_the_read_with_its_answer(env, proxy, tls_origin):
    env(HTTPS_PROXY=f"http://alice:wrong@127.0.0.1:{proxy.port}")
    async with DataClient(stream_limits=FAST) as client:
        reader = client.open_reader(f"{tls_origin.url}/blob.bin", len(DATA))
        with trio.fail_after(20), pytest.raises(DataError, match="407"):
            await reader.read(0, 4096)
    assert proxy.connects == [] and tls_origin.requests == 0


# --- probes -----------------------------------------------------------------------------


async def test_probes_to_an_https_hub_go_through_a_tunnel(env, proxy, tls_origin):
    env(HTTPS_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
    client = HeadClient(tls_origin.url, {"authorization": "Bearer hub-token"})
    try:
        for _ in range(3):
            assert await client.head("/blob.bin", {}) == (200, None)
    finally:
        await client.aclose()
    assert proxy.connects == [tls_origin.url.removeprefix("https://")]  # kept alive
    assert proxy.authorizations == [basic(CREDENTIALS)]  # the CONNECT's, not the token
    assert tls_origin.requests == 3
    assert all("proxy-authorization" not in names for names in tls_origin.header_names)


async def test_a_refused_tunnel_is_a_probe_error_naming_the_proxy(env, proxy, tls_origin):
    env(HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}")  # no credentials: 407
    client = HeadClient(tls_origin.url)
    with pytest.raises(ProbeError, match=r"refused a tunnel .* 407"):
        await client.head("/blob.bin", {})
    assert tls_origin.requests == 0


async def test_probes_and_listings_to_an_http_hub_go_through_the_proxy(env, proxy, tmp_path):
    write_file(tmp_path / "store" / "acme" / "m" / "w.bin", DATA[:1000])
    server = start_server(tmp_path / "store")
    try:
        env(HTTP_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
        async with HubClient(server.hub, token="hub-token") as hub:
            snap = await hub.snapshot(RepoId("acme", "m"))
            answer = await hub.ask_location(RepoId("acme", "m"), snap.commit, "w.bin", None)
        assert answer.status == 302
        methods = {method for method, _ in proxy.requests}
        assert methods == {"GET", "HEAD"}  # listings (httpx) and the probe (h11)
        assert all(target.startswith(server.hub + "/") for _, target in proxy.requests)
        assert set(proxy.authorizations) == {basic(CREDENTIALS)}
    finally:
        server.stop()


# --- a mount ----------------------------------------------------------------------------


def mount_with_loopback_direct(proxy, hub: str, mountpoint, args: tuple[str, ...]) -> None:
    """A mount told NO_PROXY=127.0.0.1 reads without one connection to the proxy."""
    before = proxy.connections
    direct = clean_env(HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    m = start_mount(mountpoint, hub, *args, env=direct)
    try:
        assert (m.path / "acme" / "m" / "w.bin").read_bytes()[:4096] == DATA[:4096]
    finally:
        m.unmount()
    assert proxy.connections == before


def test_a_mount_behind_a_proxy_lists_probes_and_reads_through_it(proxy, tmp_path):
    root = tmp_path / "store"
    write_file(root / "acme" / "m" / "w.bin", DATA)
    static = StaticFiles(root)
    server = start_server(root, "--cdn-base", static.url)
    try:
        settings = clean_env(HTTP_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
        # a region that holds nothing: the file is read from the static server over HTTP
        args = ("--repo", "acme/m", "--region", "away")
        m = start_mount(tmp_path / "m", server.hub, *args, env=settings)
        try:
            assert sha256_file(m.path / "acme" / "m" / "w.bin") == sha256_file(
                root / "acme" / "m" / "w.bin"
            )
        finally:
            m.unmount()
        through = {(method, target.split("/", 3)[2]) for method, target in proxy.requests}
        hub, cdn = server.hub.split("/")[2], static.url.split("/")[2]
        assert {("GET", hub), ("HEAD", hub), ("GET", cdn)} <= through
        assert static.ranges > 0 and all(
            "proxy-authorization" not in h for h in static.header_names
        )

        log = m.log_text()
        assert f"proxy: http via 127.0.0.1:{proxy.port}" in log and "alice" not in log

        mount_with_loopback_direct(proxy, server.hub, tmp_path / "m2", args)
    finally:
        server.stop()
        static.stop()


def test_a_mount_reads_its_streams_through_a_tunnel(proxy, tmp_path):
    root = tmp_path / "store"
    write_file(root / "acme" / "m" / "w.bin", DATA)
    server = start_server(root)
    try:
        settings = clean_env(HTTP_PROXY=f"http://{QUOTED}@127.0.0.1:{proxy.port}")
        args = ("--repo", "acme/m", "--region", "local")
        m = start_mount(tmp_path / "m", server.hub, *args, env=settings)
        try:
            got = (m.path / "acme" / "m" / "w.bin").read_bytes()
            assert set(m.status()["bytes_read"]) == {"local"}  # over the gRPC stream
        finally:
            m.unmount()
        assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
        grpc_authority = server.grpc[""]  # the store's one region
        assert grpc_authority in proxy.connects  # the stream's channel, with credentials
        assert set(proxy.authorizations) == {basic(CREDENTIALS)}
        mount_with_loopback_direct(proxy, server.hub, tmp_path / "m2", args)
    finally:
        server.stop()


def test_a_mount_with_a_proxy_it_cannot_use_fails_with_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    result = run_cli(
        "mount",
        str(tmp_path / "m"),
        "--hub",
        "http://127.0.0.1:9",
        env=clean_env(HTTPS_PROXY="socks5://127.0.0.1:1080"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "https_proxy: socks5:// proxies are not supported" in lines[0]


# --- the CAs ----------------------------------------------------------------------------


@pytest.fixture
def tls_grpc(tmp_path):
    """A TLS gRPC server on loopback, with a self-signed certificate for `localhost` and
    no service: a call that gets through the handshake is answered UNIMPLEMENTED."""
    self_signed(tmp_path)
    pair = ((tmp_path / "key.pem").read_bytes(), (tmp_path / "cert.pem").read_bytes())
    server = grpc.server(ThreadPoolExecutor(2))
    port = server.add_secure_port("localhost:0", grpc.ssl_server_credentials([pair]))
    server.start()
    yield f"localhost:{port}", str(tmp_path / "cert.pem")
    server.stop(None)


def grpc_call_code(client: DataClient, endpoint: str) -> grpc.StatusCode:
    call = client.channel(endpoint, tls=True).unary_unary("/modelfs.test.None/Call")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"", timeout=10)
    return caught.value.code()  # type: ignore[attr-defined]


async def test_grpc_channels_trust_the_ca_file_the_hub_client_trusts(env, monkeypatch, tls_grpc):
    endpoint, ca_file = tls_grpc
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        monkeypatch.delenv(name, raising=False)
    async with DataClient() as client:
        assert grpc_call_code(client, endpoint) == grpc.StatusCode.UNAVAILABLE  # not trusted
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    async with DataClient() as client:
        assert grpc_call_code(client, endpoint) == grpc.StatusCode.UNIMPLEMENTED  # through
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", certifi.where())  # gRPC's own wins
    async with DataClient() as client:
        assert grpc_call_code(client, endpoint) == grpc.StatusCode.UNAVAILABLE


def test_a_ca_file_that_cannot_be_read_is_an_error_naming_the_variable(env, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(NetworkSettingError, match=r"^SSL_CERT_FILE: no certificates"):
        check_environment()
    (tmp_path / "m").mkdir()
    result = run_cli(
        "mount",
        str(tmp_path / "m"),
        "--hub",
        "http://127.0.0.1:9",
        env=clean_env(SSL_CERT_FILE=str(tmp_path / "missing.pem")),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SSL_CERT_FILE: no certificates" in lines[0], result.stderr
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "missing"))
    with pytest.raises(NetworkSettingError, match=r"^SSL_CERT_DIR: .* is not a directory"):
        check_environment()
