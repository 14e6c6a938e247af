"""Warm HTTP/1.1 connections for ranged GETs, kept per origin.

A range is one request on one connection; a connection that delivered its whole
answer goes back to the pool and serves the next range to the same origin without a
new TCP (and TLS) handshake. Idle connections are closed past `idle_timeout` (servers
drop theirs after a while too: nginx after 75 s) and beyond `keep_per_origin` or
`keep_total`, the oldest first.

Through a proxy (`fusefs.network`): an HTTPS origin over a `CONNECT` tunnel, the
connection kept warm as any other; a plain-HTTP origin by requests in absolute form.

The connections are `http.client` ones: the standard library's parser for the status
line and headers, and `readinto` of a body straight into the caller's buffer. A
connection is used by one thread at a time; the pool itself is shared by all.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from fusefs.network import Route, trusted_context


@dataclass(frozen=True)
class Origin:
    scheme: str  # "http" or "https"
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> tuple[Origin, str]:
        """The origin of an absolute http(s) URL and its request target (path?query);
        ValueError for anything else. The URL comes from a hub's answer: one that could
        not be sent as it is (spaces, control characters) is refused here, at open."""
        if not url.isascii() or not url.isprintable() or " " in url:
            raise ValueError(f"not a URL that can be requested: {url[:80]!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url[:80]!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in a data URL are not accepted")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port), target

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


MAX_ROUTES = 256


@dataclass(frozen=True)
class ConnectionLimits:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # between two reads of one answer: a silent server
    idle_timeout: float = 30.0
    keep_per_origin: int = 32
    keep_total: int = 64  # idle connections to all origins together (descriptors)


class ConnectionPool:
    def __init__(self, limits: ConnectionLimits = ConnectionLimits()):
        self.limits = limits
        self.opened = 0  # connections made so far (a warm pool keeps this low)
        self._lock = threading.Lock()
        self._idle: dict[Origin, deque[tuple[float, http.client.HTTPConnection]]] = {}
        self._idle_count = 0
        self._tls: ssl.SSLContext | None = None
        self._routes: dict[Origin, Route] = {}
        self._closed = False

    def route(self, origin: Origin) -> Route:
        """How requests to `origin` go (looked up once per origin: the environment does
        not change under a running process); ProxyError for a proxy that cannot be used."""
        with self._lock:
            route = self._routes.get(origin)
        if route is None:
            route = Route.to(origin.scheme, origin.host, origin.host_header)
            with self._lock:
                if len(self._routes) >= MAX_ROUTES:
                    self._routes.clear()  # origins come from hub answers: keep few
                self._routes[origin] = route
        return route

    def take(self, origin: Origin) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to `origin` and whether it was warm (used before: it may have
        been closed by the server meanwhile). Connects a new one when none is idle;
        OSError when that fails."""
        now = time.monotonic()
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                last_used, conn = idle.pop()  # the most recent: least likely closed
                self._idle_count -= 1
                if not idle:
                    del self._idle[origin]
                if now - last_used < self.limits.idle_timeout:
                    return conn, True
                conn.close()
        return self.connect(origin), False

    def give_back(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        """Return a connection whose last answer was read to its end."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._idle.setdefault(origin, deque()).append((now, conn))
            self._idle_count += 1
            for key in list(self._idle):  # few origins: a CDN, an OSS endpoint or two
                idle = self._idle[key]
                while idle and (
                    len(idle) > self.limits.keep_per_origin
                    or now - idle[0][0] >= self.limits.idle_timeout
                ):
                    idle.popleft()[1].close()
                    self._idle_count -= 1
                if not idle:
                    del self._idle[key]
            while self._idle_count > self.limits.keep_total:
                key = min(self._idle, key=lambda k: self._idle[k][0][0])  # the oldest
                self._idle[key].popleft()[1].close()
                self._idle_count -= 1
                if not self._idle[key]:
                    del self._idle[key]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
            self._idle_count = 0
        for conns in idle.values():
            for _, conn in conns:
                conn.close()

    def connect(self, origin: Origin) -> http.client.HTTPConnection:
        """A new connection to `origin` (OSError when it cannot be made)."""
        limits = self.limits
        proxy = self.route(origin).proxy
        host, port = (proxy.host, proxy.port) if proxy else (origin.host, origin.port)
        conn: http.client.HTTPConnection
        if origin.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, port, timeout=limits.connect_timeout, context=self._context()
            )
            if proxy is not None:
                auth = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else {}
                conn.set_tunnel(origin.host, origin.port, headers=auth)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=limits.connect_timeout)
        # Sets TCP_NODELAY; opens the tunnel (an OSError if the proxy refuses it); TLS
        # verified for the origin's name (`trusted_context`).
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(limits.read_timeout)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        with self._lock:
            self.opened += 1
        return conn

    def _context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = trusted_context()
                # ALPN says HTTP/1.1 only: this reader speaks nothing else.
                self._tls.set_alpn_protocols(["http/1.1"])
            return self._tls
