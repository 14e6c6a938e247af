"""The store's HTTP front: requests read from ASGI, routed, answered; errors never escape.

`StoreApp` is the one ASGI application `modelfs serve` runs (on hypercorn). It
reads a request into a `Request`, hands it to the first route module that claims
its path (admin, the hub API, the CDN route) and sends what comes back. A route
answers with a `Reply` (returned or raised) or streams its own body through `send`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Scope,
)

from fusefs.server.faults import FaultPlan
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region

if TYPE_CHECKING:
    from fusefs.server.bearer import TokenChecker

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    raw_path: str = ""  # as sent, still percent-encoded (GCS object names hold %2F)


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


@dataclass
class StoreContext:
    """What every route of the store shares."""

    store: Store
    regions: dict[str, Region]
    grpc_addrs: dict[str, str]  # region -> HOST:PORT of its gRPC listener
    stats: Stats
    faults: FaultPlan | None
    client_region: str | None = None
    listing_limit: int = 3000
    base: str = ""  # http://HOST:PORT, set once listening
    # set by the command: stops one region's gRPC listener
    stop_listener: Callable[[str], bool] = field(default=lambda region: False)
    bearer: TokenChecker | None = None  # --require-token: checked on the GCS routes


class StoreApp:
    def __init__(self, ctx: StoreContext) -> None:
        from fusefs.server import admin, cdn, gcs_api, hub_api  # they use this module's types

        self.ctx = ctx
        self._admin = admin.Admin(ctx)
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
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message["body"]
            if not message["more_body"]:
                break
        req = Request(
            scope["method"],
            scope["path"],
            {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()},
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body,
            (scope.get("raw_path") or b"").decode("utf-8", "replace"),
        )
        try:
            reply = await self.route(req, send)
        except Reply as r:
            reply = r
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            reply = error(500, "internal error")
        if reply is not None:
            headers = {**reply.headers, "content-length": str(len(reply.body))}
            await send_start(send, reply.status, headers)
            await send_body(send, b"" if req.method == "HEAD" else reply.body)

    async def route(self, req: Request, send: ASGISendCallable) -> Reply | None:
        path = req.path
        if path.startswith("/admin/"):
            return self._admin.route(req)
        if path.startswith(("/storage/v1/", "/download/storage/v1/")):  # Cloud Storage JSON API
            return await self._gcs.route(req, send)
        if "authorization" in req.headers:  # lets tests see where credentials went
            self.ctx.stats.add("counts", "auth_cdn" if path.startswith("/cdn/") else "auth_api")
        if path.startswith(("/api/", "/openapi/")):
            return await self._hub.route(req)
        if path.startswith("/cdn/"):
            return await self._cdn.route(req, send)
        return error(404, "no such route")
