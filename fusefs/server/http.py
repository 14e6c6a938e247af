"""The store's HTTP front: requests read from ASGI, checked, routed, answered; errors
never escape.

`StoreApp` is the ASGI application of each HTTP listener `modelfs serve` runs (on
hypercorn): the public one (Cloud Storage JSON API, hub API, CDN route) and, with
`--admin`, the admin one (counters, fault injection), never both on one listener.

Every request is read into a `Request` inside the guard, where whatever a client
sent is checked before any route sees it: headers and query must be UTF-8 (else
400), the head at most `max_header_bytes` (else 431; hypercorn's
`h11_max_incomplete_size` / `h2_max_header_list_size` stop one that never ends),
the body at most `max_request_bytes` (else 413), and the path
is split into segments that are percent-decoded exactly once (`%2F` stays inside
its segment, `%252e` becomes the name `%2e`, never `.`). A route answers with a
`Reply` (returned or raised) or streams its own body through `send`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, unquote_to_bytes

import trio
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

from fusefs.server.faults import FaultPlan
from fusefs.server.limits import Limits
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region

if TYPE_CHECKING:
    from fusefs.server.bearer import TokenChecker
    from fusefs.server.buckets import BucketRegions

log = logging.getLogger(__name__)

MAX_QUERY_FIELDS = 64
# What sending an answer raises once its connection is gone or taken over by hypercorn.
GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE | re.ASCII)
_MAX_DIGITS = 19  # every size and offset of a file fits: more means "past any end"


@dataclass
class Request:
    method: str
    path: str  # percent-decoded once; for choosing a route, never for names
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""  # as sent, still percent-encoded (ASCII)
    # the path's '/'-separated segments, each percent-decoded once ("" first)
    segments: list[str] = field(default_factory=list)


class Reply(Exception):
    """A complete non-streamed answer (raised or returned)."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ):
        self.status, self.body = status, body
        self.headers = {"content-type": content_type, **(headers or {})}


async def send_start(send: ASGISendCallable, status: int, headers: dict[str, str]) -> None:
    event: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": status,
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    await send(event)


async def send_body(send: ASGISendCallable, body: bytes, *, more: bool = False) -> None:
    event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": more}
    await send(event)


def ok(data: object) -> Reply:
    return Reply(
        200, json.dumps({"Code": 200, "Data": data, "Message": "", "Success": True}).encode()
    )


def error(status: int, message: str) -> Reply:
    return Reply(
        status, json.dumps({"Code": status, "Message": message, "Success": False}).encode()
    )


def parse_range(spec: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """(first, last) of one satisfiable byte range of a `size`-byte file; None to
    ignore the header (malformed, several ranges), as RFC 9110 allows; or
    'unsatisfiable' (416). Only ASCII digits count; a number longer than any size
    is read as "past the end" without being converted."""
    m = _RANGE.fullmatch(spec.strip(" \t"))  # the header's optional whitespace only
    if not m or (not m[1] and not m[2]):
        return None  # malformed or multi-range: answer with the whole file
    first, last = _number(m[1]), _number(m[2])
    if first is None:  # suffix: the last n bytes
        assert last is not None
        if last == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - last), size - 1
    if last is not None and last < first:
        return None  # invalid: ignored, as RFC 9110 allows
    if first >= size:
        return "unsatisfiable"
    return first, size - 1 if last is None else min(last, size - 1)


def _number(digits: str) -> int | None:
    """ASCII digits as a number, capped at 10**_MAX_DIGITS; None when empty."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


class BadRequest(Exception):
    """What a client sent cannot be read as a request (400 / 413)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def read_request(scope: Scope, body: bytes, max_head: int) -> Request:
    """The request a client sent, checked; BadRequest when it cannot be one."""
    assert scope["type"] == "http"
    head = len(scope.get("raw_path") or b"") + len(scope["query_string"])
    head += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
    if head > max_head:
        # hypercorn caps a head that arrives in pieces; one that arrives whole, here
        raise BadRequest(431, f"request head larger than {max_head} bytes")
    try:
        headers = {k.decode("ascii").lower(): v.decode("utf-8") for k, v in scope["headers"]}
    except UnicodeDecodeError:
        raise BadRequest(400, "a header is not UTF-8") from None
    try:
        raw_path = bytes(scope.get("raw_path") or scope["path"].encode()).decode("ascii")
        segments = [unquote_to_bytes(s).decode("utf-8") for s in raw_path.split("/")]
        fields = parse_qs(
            scope["query_string"].decode("ascii"),
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except UnicodeError:
        raise BadRequest(400, "the path or query is not percent-encoded UTF-8") from None
    except ValueError:
        raise BadRequest(400, f"more than {MAX_QUERY_FIELDS} query fields") from None
    return Request(
        scope["method"],
        scope["path"],
        {k: v[-1] for k, v in fields.items()},
        headers,
        body,
        raw_path,
        segments,
    )


@dataclass
class StoreContext:
    """What every route of the store shares."""

    store: Store
    regions: dict[str, Region]
    grpc_addrs: dict[str, str]  # region -> HOST:PORT of its gRPC listener
    stats: Stats
    faults: FaultPlan | None
    client_region: str | None = None
    limits: Limits = field(default_factory=Limits)
    base: str = ""  # http://HOST:PORT of the public listener, set once listening
    cdn_base: str | None = None  # --cdn-base: the public path is URL/<repo key>/<path>
    # set by the command: stops one region's gRPC listener (blocking; from a thread)
    stop_listener: Callable[[str], bool] = field(default=lambda region: False)
    # set by the command: the gRPC side's gauges (open streams, queued bytes)
    grpc_gauges: Callable[[], dict[str, int]] = field(default=dict)
    bearer: TokenChecker | None = None  # --require-token: checked on the GCS routes
    buckets: BucketRegions | None = None  # the regions that live in Cloud Storage buckets

    @property
    def listing_limit(self) -> int:
        return self.limits.listing_limit


class StoreApp:
    """One HTTP listener: the public routes, or (`admin=True`) only the admin routes."""

    def __init__(self, ctx: StoreContext, *, admin: bool = False) -> None:
        from fusefs.server import admin as admin_routes  # they use this module's types
        from fusefs.server import cdn, gcs_api, hub_api

        self.ctx = ctx
        self.admin = admin
        self._admin = admin_routes.Admin(ctx)
        self._hub = hub_api.HubApi(ctx)
        self._cdn = cdn.Cdn(ctx)
        self._gcs = gcs_api.GcsApi(ctx)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        started = False

        async def sending(event: ASGISendEvent) -> None:
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        reply: Reply | None
        try:
            try:
                body = await self._body(receive)
                if body is None:
                    return  # the client went away
                req = read_request(scope, body, self.ctx.limits.max_header_bytes)
                reply = await self.route(req, sending)
            except BadRequest as e:
                reply = error(e.status, e.message)
            except Reply as r:
                reply = r
            except GONE:
                raise
            except Exception:
                log.exception("%s %s failed", method, scope.get("path", "?"))
                if started:
                    return  # too late for a status: the connection just ends
                reply = error(500, "internal error")
            if reply is not None:
                headers = {**reply.headers, "content-length": str(len(reply.body))}
                if reply.status in (400, 413, 431):
                    headers["connection"] = "close"  # what follows it cannot be trusted
                await send_start(send, reply.status, headers)
                await send_body(send, b"" if method == "HEAD" else reply.body)
        except GONE:
            # The client went away, or hypercorn is already answering on this connection
            # (a malformed request after this one): nobody is left to tell.
            log.debug("%s %s: the connection ended under the answer", method, scope.get("path"))

    async def _body(self, receive: ASGIReceiveCallable) -> bytes | None:
        """The whole body, at most `max_request_bytes` (else 413)."""
        limit = self.ctx.limits.max_request_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            size += len(message["body"])
            if size > limit:
                raise BadRequest(413, f"request body larger than {limit} bytes")
            chunks.append(message["body"])
            if not message["more_body"]:
                return b"".join(chunks)

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        path = req.path
        if self.admin:
            return await self._admin.route(req)
        if path.startswith(("/storage/v1/", "/download/storage/v1/")):  # Cloud Storage JSON API
            return await self._gcs.route(req, send)
        if "authorization" in req.headers:  # lets tests see where credentials went
            self.ctx.stats.add("counts", "auth_cdn" if path.startswith("/cdn/") else "auth_api")
        if path.startswith(("/api/", "/openapi/")):
            return await self._hub.route(req)
        if path.startswith("/cdn/"):
            return await self._cdn.route(req, send)
        return error(404, "no such route")
