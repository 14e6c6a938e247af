"""The store's admin routes: counters for tests and operators, fault injection.

GET  /admin/stats, POST /admin/stats/reset              counters
GET|POST|DELETE /admin/faults                           fault injection (with --faults only)
"""

from __future__ import annotations

import json

from fusefs.server.http import Reply, Request, StoreContext, error


class Admin:
    def __init__(self, ctx: StoreContext) -> None:
        self.ctx = ctx

    def route(self, req: Request) -> Reply:
        if req.path == "/admin/stats" and req.method == "GET":
            return Reply(
                200,
                json.dumps(
                    self.ctx.stats.view(self.ctx.faults.injected if self.ctx.faults else {})
                ).encode(),
            )
        if req.path == "/admin/stats/reset" and req.method == "POST":
            self.ctx.stats.reset()
            if self.ctx.faults:
                self.ctx.faults.injected.clear()
            return Reply(200, b"{}")
        if req.path == "/admin/faults" and self.ctx.faults is not None:
            if req.method == "GET":
                return Reply(200, json.dumps(self.ctx.faults.listing()).encode())
            if req.method == "DELETE":
                self.ctx.faults.clear()
                return Reply(200, b"{}")
            if req.method == "POST":
                try:
                    spec = json.loads(req.body)
                    if spec.get("kind") == "stop_listener":  # a region's data plane dies
                        if not self.ctx.stop_listener(spec.get("region")):
                            return error(404, f"no region {spec.get('region')!r}")
                        return Reply(200, b"{}")
                    self.ctx.faults.add(spec)
                except (ValueError, AttributeError) as e:
                    return error(400, str(e))
                return Reply(200, b"{}")
        return error(404, "no such route")
