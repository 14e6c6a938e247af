"""Test doubles shared by the suite: a scripted hub for resolution rules, a hostile hub
and a listener that are real HTTP servers, and a range source that answers from memory.

They stand in only where the real thing cannot show the behaviour under test
(a scripted answer, a hostile one); everything else runs against `modelfs serve`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import trio

from fusefs.hub.client import Answer
from fusefs.testing import sample_bytes

CDN = "https://cdn.example.com/"
COMMIT = "c" * 40
CONTENT = sample_bytes(300_000, seed=5)


class ScriptedHub:
    """Answers probes from a table {(path, region): kind}; counts every probe."""

    def __init__(self, holders: dict[str, set[str]], delay: float = 0.0):
        self.holders = holders  # region -> paths it holds internally
        self.delay = delay
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail: dict[str | None, list[object]] = {}  # region -> queued failures
        self.inline: set[str] = set()

    def download_url(self, repo, commit, path):
        return f"http://hub/{repo}/{commit}/{path}"

    async def ask_location(self, repo, commit, path, region):
        self.calls.append((commit, path, region))
        await trio.sleep(self.delay)
        queued = self.fail.get(region)
        if queued:
            failure = queued.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return Answer(failure, None)
        if path in self.inline:
            return Answer(200, None)
        if region and path in self.holders.get(region, ()):
            return Answer(302, f"grpc://{region}.store:443/{region}/{repo}/{path}?generation=1")
        return Answer(302, CDN + path)


class HostileHub:
    """Answers in the real hub's shapes (revisions without commit ids; the head commit
    from `commits`), unless told otherwise; records every request."""

    def __init__(self):
        self.files: list[dict] = []
        self.listing_body: bytes | None = None  # overrides the JSON listing
        self.location: str | None = None  # overrides the probe's Location
        self.cdn_extra = b""  # bytes appended past what a Range asked for
        self.commits = True  # answer `commits?Ref=` with COMMIT (else 404, as a bare hub)
        self.latest_committer: dict | None = None  # the listing's Data.LatestCommitter
        self.accel: dict | None = None  # internalAccelerationInfo's Data (None: 404)
        self.trickle: float | None = None  # seconds between bytes of every JSON answer
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                trickle = hub.trickle
                if trickle is None or status >= 300:
                    self.wfile.write(body)
                    return
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        time.sleep(trickle)
                except OSError:
                    pass  # the client gave up on us: what a trickle is for

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                url = urlsplit(self.path)
                q = {k: v[-1] for k, v in parse_qs(url.query).items()}
                hub.requests.append((self.command, self.path, dict(self.headers.items())))
                if url.path == "/api/v1/repos/internalAccelerationInfo" and hub.accel is not None:
                    return self._send(200, json.dumps({"Code": 200, "Data": hub.accel}).encode())
                if url.path.endswith("/revisions"):
                    refs = {"Branches": [{"Revision": "master", "CreatedAt": 1760000000}]}
                    body = {"Code": 200, "Data": {"RevisionMap": {**refs, "Tags": []}}}
                    return self._send(200, json.dumps(body).encode())
                if url.path.endswith("/commits") and hub.commits:
                    body = {
                        "Code": 200,
                        "Data": {"Commit": [{"Id": COMMIT, "ShortId": COMMIT[:8]}]},
                    }
                    return self._send(200, json.dumps(body).encode())
                if url.path.endswith(("/repo/files", "/repo/tree")):  # no paging at all
                    data = {"Files": hub.files}
                    if hub.latest_committer is not None:
                        data["LatestCommitter"] = hub.latest_committer
                    body = hub.listing_body or json.dumps({"Code": 200, "Data": data}).encode()
                    return self._send(200, body)
                if url.path.endswith("/repo"):
                    loc = hub.location or f"{hub.url}/cdn/{quote(q.get('FilePath', ''))}"
                    return self._send(302, headers=[("Location", loc)])
                if url.path.startswith("/cdn/"):
                    first, last = map(int, self.headers["Range"][6:].split("-"))
                    body = CONTENT[first : last + 1] + hub.cdn_extra
                    return self._send(
                        206, body, [("Content-Range", f"bytes {first}-{last}/{len(CONTENT)}")]
                    )
                return self._send(404, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Listener:
    """A real HTTP server on another port that answers every GET with `body` and keeps
    each request's headers: where did a client send what?"""

    def __init__(self, body: bytes = b"cn-elsewhere\n"):
        self.headers: list[dict[str, str]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                listener.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class InstantSource:
    """Serves every range at once from memory: the reader's bookkeeping under test."""

    progress = 0

    def __init__(self, data: bytes):
        self.data = data
        self.submitted: list[tuple[int, int]] = []

    def submit(self, ranges):
        for rr in ranges:
            self.submitted.append((rr.offset, rr.length))
            rr.feed(rr.offset, self.data[rr.offset : rr.end])

    def abandon(self, rr):
        pass

    def close(self):
        pass
