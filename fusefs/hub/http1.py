"""A lean HTTP/1.1 client for the one request made per file: the location probe.

Every file open asks the hub where the file's bytes are (a HEAD with no body in
either direction), so the probe is the control plane's hot path. httpx spends
about 0.6 ms of CPU on one such request on this kind of machine (pool checks,
auth flow, URL objects); this client spends about 0.1 ms: it keeps a few
keep-alive connections to the hub's one origin and speaks HTTP/1.1 through h11
(the parser httpx itself uses), nothing more. Listings and the other, rarer
calls stay on httpx.

Through a proxy (`fusefs.network`), an HTTPS hub is reached over a `CONNECT` tunnel
and a plain-HTTP one by requests in absolute form, as httpx does for the listings.

Hostile answers are bounded by h11 (a head larger than `MAX_HEAD` is an error)
and by the caller's deadline; a connection that answered with an error, closed,
or was interrupted is never reused.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from urllib.parse import urlsplit

import h11
import trio

from fusefs.network import Proxy, Route, host_port, trusted_context

MAX_HEAD = 64 * 1024  # status line and headers of one answer
MAX_IDLE = 16  # keep-alive connections kept between probes


class ProbeError(Exception):
    """The request could not be made or its answer could not be read."""


class _Connection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    async def head(self, target: str, headers: list[tuple[str, str]]) -> h11.Response:
        request = h11.Request(method="HEAD", target=target, headers=headers)
        await self.stream.send_all(self.h11.send(request) + self.h11.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(16384)
                if not data and self.h11.their_state is h11.SEND_RESPONSE and response is None:
                    raise ProbeError("the hub closed the connection before answering")
                self.h11.receive_data(bytes(data))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None  # h11 yields a Response before its end
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise ProbeError("the hub closed the connection before answering")
            # InformationalResponse (1xx) and Data (none for HEAD) are passed over

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class HeadClient:
    """HEAD requests to one origin (`http(s)://host[:port]`) over kept-alive connections."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.base_path = parts.path.rstrip("/")
        host_header = parts.netloc.rsplit("@", 1)[-1]
        self._headers = [("host", host_header), *(headers or {}).items()]
        self._idle: list[_Connection] = []
        self._ssl = trusted_context() if self.tls else None
        self._route = Route.to(parts.scheme, self.host, host_header)  # ProxyError: unusable
        self._headers += self._route.headers

    async def head(self, target: str, headers: Mapping[str, str]) -> tuple[int, str | None]:
        """(status, Location header or None) for HEAD base_path + target.

        Cancel with the caller's deadline; ProbeError when the hub cannot be read."""
        fields = self._headers + list(headers.items())
        for attempt in range(2):
            fresh = not self._idle
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                response = await conn.head(self._route.prefix + self.base_path + target, fields)
            except (ProbeError, h11.ProtocolError, OSError, trio.BrokenResourceError) as e:
                await trio.aclose_forcefully(conn.stream)
                if fresh or attempt:
                    raise ProbeError(f"{e.__class__.__name__}: {e}") from None
                await self.aclose()  # the hub dropped kept-alive connections: all are stale
                continue
            except BaseException:
                await trio.aclose_forcefully(conn.stream)  # cancelled mid-answer
                raise
            if conn.reusable() and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            location = next(
                (v.decode("latin-1") for k, v in response.headers if k == b"location"), None
            )
            return response.status_code, location
        raise AssertionError("unreachable")

    async def _connect(self) -> _Connection:
        proxy = self._route.proxy
        via = f" through the proxy {proxy.authority}" if proxy else ""
        host, port = (proxy.host, proxy.port) if proxy else (self.host, self.port)
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as e:
            raise ProbeError(f"cannot connect to {self.host}:{self.port}{via}: {e}") from None
        try:
            if proxy is not None and self._route.tunnel:
                await _open_tunnel(stream, self.host, self.port, proxy)
            if self._ssl is not None:
                tls = trio.SSLStream(stream, self._ssl, server_hostname=self.host)
                await tls.do_handshake()
                stream = tls
        except BaseException as e:
            await trio.aclose_forcefully(stream)
            if isinstance(e, (OSError, trio.BrokenResourceError, ssl.SSLError, h11.ProtocolError)):
                raise ProbeError(f"cannot connect to {self.host}:{self.port}{via}: {e}") from None
            raise
        return _Connection(stream)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)


async def _open_tunnel(stream: trio.abc.Stream, host: str, port: int, proxy: Proxy) -> None:
    """Ask the proxy on `stream` for a tunnel to host:port; ProbeError if refused."""
    authority = host_port(host, port)
    headers = [("host", authority)]
    if proxy.authorization:
        headers.append(("proxy-authorization", proxy.authorization))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    request = h11.Request(method="CONNECT", target=authority, headers=headers)
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            if not data:
                raise ProbeError(f"the proxy {proxy.authority} closed the connection")
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Response):
            if not 200 <= event.status_code < 300:
                raise ProbeError(
                    f"the proxy {proxy.authority} refused a tunnel to {authority}: "
                    f"{event.status_code} {event.reason.decode('latin-1')}"
                )
            if conn.trailing_data[0]:
                raise ProbeError(f"the proxy {proxy.authority} sent bytes before the TLS hello")
            return
        elif isinstance(event, h11.ConnectionClosed):
            raise ProbeError(f"the proxy {proxy.authority} closed the connection")
