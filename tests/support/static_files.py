"""A static file server with single-range support, as nginx serves a store's ROOT: the
external server `modelfs serve --cdn-base` points clients at, for machines without nginx.

HTTP/1.1 with keep-alive, one thread per connection. `GET`/`HEAD` of `/<path>` under the
root; `Range: bytes=a-b`, `bytes=a-` and `bytes=-n` are answered `206` with
`Content-Range`, an unsatisfiable range `416`, anything else the whole file. Every request
is counted (`requests`, `ranges`, `bytes`) so a test can tell that reads came this way,
and the names of its headers kept (`header_names`). Over TLS when given a context (its
URL then names `localhost`, the name a test certificate is made for).
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class StaticFiles:
    def __init__(self, root: Path, tls: ssl.SSLContext | None = None) -> None:
        self.root = root.resolve()
        self.header_names: list[frozenset[str]] = []
        self.requests = 0
        self.ranges = 0
        self.bytes = 0
        self._lock = threading.Lock()
        files = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                with files._lock:  # counted before answering: a client may look at once
                    files.requests += 1
                    files.header_names.append(frozenset(k.lower() for k in self.headers))
                path = files.resolve(urlsplit(self.path).path)
                if path is None:
                    return self._empty(404)
                size = path.stat().st_size
                first, last = 0, size - 1
                wanted = self.headers.get("Range")
                match = _RANGE.match(wanted.strip()) if wanted else None
                if match and (match[1] or match[2]):
                    if match[1]:
                        first = int(match[1])
                        last = min(int(match[2]), size - 1) if match[2] else size - 1
                    else:  # a suffix: the last n bytes
                        first = max(size - int(match[2]), 0)
                    if first >= size or first > last:
                        return self._empty(416, {"Content-Range": f"bytes */{size}"})
                length = last - first + 1 if size else 0
                files.count(bool(match), length if body else 0)
                self.send_response(206 if match else 200)
                if match:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if body and length:
                    with open(path, "rb") as f:
                        f.seek(first)
                        self._copy(f, length)

            def _copy(self, f: BinaryIO, length: int) -> None:
                left = length
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise OSError("file shrank while being served")
                    self.wfile.write(chunk)
                    left -= len(chunk)

            def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def resolve(self, url_path: str) -> Path | None:
        """The regular file under root a URL path names, or None (no escaping root)."""
        parts = [unquote(p) for p in url_path.split("/") if p]
        if not parts or any(p in (".", "..") or "/" in p or "\0" in p for p in parts):
            return None
        path = self.root.joinpath(*parts)
        if not path.is_file() or not os.path.realpath(path).startswith(f"{self.root}{os.sep}"):
            return None
        return path

    def count(self, ranged: bool, n: int) -> None:
        with self._lock:
            self.ranges += ranged
            self.bytes += n

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
