"""The store's admin routes: counters for tests and operators, fault injection.

Served only on the admin listener (`modelfs serve --admin [HOST:]PORT`, loopback
unless a host is named), never on the public one:

GET  /admin/stats, POST /admin/stats/reset              counters
GET|POST|DELETE /admin/faults                           fault injection (with --faults only)
"""

from __future__ import annotations

import json
import os

import trio

from fusefs.server.http import Reply, Request, StoreContext, error


class Admin:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    async def route(self, req: Request) -> Reply:
        ctx = self.ctx
        if req.path == "/admin/stats" and req.method == "GET":
            view = ctx.stats.view(ctx.faults.injected if ctx.faults else {})
            view["store"] = ctx.store.gauges()
            view["process"] = {**ctx.grpc_gauges(), "threads": len(os.listdir("/proc/self/task"))}
            return Reply(200, json.dumps(view).encode())
        if req.path == "/admin/stats/reset" and req.method == "POST":
            ctx.stats.reset()
            if ctx.faults:
                ctx.faults.injected.clear()
            return Reply(200, b"{}")
        if req.path == "/admin/faults" and ctx.faults is not None:
            if req.method == "GET":
                return Reply(200, json.dumps(ctx.faults.listing()).encode())
            if req.method == "DELETE":
                ctx.faults.clear()
                return Reply(200, b"{}")
            if req.method == "POST":
                try:
                    spec = json.loads(req.body)
                    if not isinstance(spec, dict):
                        raise ValueError("a fault is a JSON object")
                    if spec.get("kind") == "stop_listener":  # a region's data plane dies
                        region = str(spec.get("region"))
                        if not await trio.to_thread.run_sync(ctx.stop_listener, region):
                            return error(404, f"no region {region!r}")
                        return Reply(200, b"{}")
                    ctx.faults.add(spec)
                except ValueError as e:
                    return error(400, str(e))
                return Reply(200, b"{}")
        return error(404, "no such route")
