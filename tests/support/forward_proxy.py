"""An HTTP forward proxy on loopback, answering as squid or a site's proxy does.

`CONNECT host:port` opens a tunnel: `200`, then bytes are relayed both ways until one
side hangs up. A request in absolute form (`GET http://host:port/path`) is sent on to
that origin in origin form, without the `Proxy-*` and hop-by-hop headers, and its answer
relayed; the client connection is kept alive. With `credentials` ("user:password"), a
request without the matching `Proxy-Authorization` is answered `407`.

Everything is recorded, so a test can tell what went this way: the tunnels asked for
(`connects`), the forwarded requests (`requests`: method and absolute target), and the
`Proxy-Authorization` of each (`authorizations`).
"""

from __future__ import annotations

import base64
import http.client
import socket
import threading
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


class ForwardProxy:
    def __init__(self, credentials: str | None = None) -> None:
        self.expected = (
            "Basic " + base64.b64encode(credentials.encode()).decode() if credentials else None
        )
        self.connects: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        upstreams: dict[str, http.client.HTTPConnection] = {}
        try:
            with conn, conn.makefile("rb") as client:
                while True:
                    line = client.readline(65536).decode("latin-1").strip()
                    if not line:
                        return
                    method, target, _ = line.split(" ", 2)
                    headers: list[tuple[str, str]] = []
                    while (field := client.readline(65536)) not in (b"\r\n", b"\n", b""):
                        name, _, value = field.decode("latin-1").partition(":")
                        headers.append((name.strip(), value.strip()))
                    auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
                    with self._lock:
                        self.authorizations.append(auth)
                    if self.expected is not None and auth != self.expected:
                        conn.sendall(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                            b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                        )
                        if method == "CONNECT":
                            return
                        continue
                    if method == "CONNECT":
                        with self._lock:
                            self.connects.append(target)
                        self._tunnel(conn, target)
                        return
                    with self._lock:
                        self.requests.append((method, target))
                    self._forward(conn, upstreams, method, target, headers)
        except OSError:
            pass
        finally:
            for upstream in upstreams.values():
                upstream.close()
            with self._lock:
                self._open.discard(conn)

    def _forward(
        self,
        conn: socket.socket,
        upstreams: dict[str, http.client.HTTPConnection],
        method: str,
        target: str,
        headers: list[tuple[str, str]],
    ) -> None:
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname:
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        upstream = upstreams.get(parts.netloc)
        if upstream is None:
            upstream = upstreams[parts.netloc] = http.client.HTTPConnection(
                parts.hostname, parts.port or 80, timeout=30
            )
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {
            k: v
            for k, v in headers
            if k.lower() not in HOP_BY_HOP and not k.lower().startswith("proxy-")
        }
        upstream.request(method, path, headers=sent)
        answer = upstream.getresponse()
        body = answer.read()
        lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        for k, v in answer.getheaders():
            if k.lower() not in HOP_BY_HOP | {"transfer-encoding", "content-length"}:
                lines.append(f"{k}: {v}")
        length = answer.getheader("Content-Length") if method == "HEAD" else str(len(body))
        if length is not None:
            lines.append(f"Content-Length: {length}")
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _tunnel(self, conn: socket.socket, authority: str) -> None:
        host, _, port = authority.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except (OSError, ValueError):
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=_relay, args=(upstream, conn), daemon=True)
            back.start()
            _relay(conn, upstream)
            back.join(timeout=5)


def _relay(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass
    try:
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass
