"""Running `modelfs serve` until a signal.

Threads: the main thread runs trio with the HTTP listeners (hypercorn: the public
one, and the admin one with `--admin`) and owns the signals; `grpc-aio` runs every
region's gRPC listener (grpc_loop.py). On SIGINT/SIGTERM the HTTP side drains
first, then the gRPC side (running streams get a short grace, then are cancelled).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_http

from fusefs.data.gcs_auth import GcsSetupError
from fusefs.network import host_port
from fusefs.server.bearer import TokenChecker, TokenSpecError
from fusefs.server.buckets import BucketRegions
from fusefs.server.faults import FaultPlan
from fusefs.server.grpc_loop import GrpcLoop
from fusefs.server.http import StoreApp, StoreContext
from fusefs.server.limits import Limits
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region, parse_host_port

log = logging.getLogger(__name__)


class ServeError(Exception):
    """The store could not start; the message is one line for a person."""


@dataclass(frozen=True)
class ServeSettings:
    root: str
    http: str  # HOST:PORT
    regions: tuple[Region, ...]
    topology: bool  # several regions: name each gRPC address when announcing them
    client_region: str | None = None
    cdn_base: str | None = None  # http(s) URL of a static server of ROOT: the public path
    faults: bool = False
    datasets: str | None = None  # DIR/<owner>/<name>/<files…> served as dataset repos
    require_token: str | None = None  # a token file or an introspection URL (bearer.py)
    admin: str | None = None  # HOST:PORT of the admin listener; None: no admin routes
    limits: Limits = field(default_factory=Limits)


def run_store(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; ServeError if a listener cannot start."""
    http_addr = parse_host_port(settings.http, "--http")
    admin_addr = parse_host_port(settings.admin, "--admin") if settings.admin else None
    if admin_addr is not None and admin_addr[0] not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the admin routes answer anyone who reaches %s: no credentials", settings.admin)
    try:
        bearer = TokenChecker(settings.require_token) if settings.require_token else None
    except TokenSpecError as e:
        raise ServeError(str(e)) from None
    try:
        buckets = BucketRegions(settings.regions, settings.limits)
    except GcsSetupError as e:
        raise ServeError(str(e)) from None
    store = Store(settings.root, settings.datasets, settings.limits)
    stats = Stats()
    plan = FaultPlan() if settings.faults else None
    grpc = GrpcLoop(settings.regions, store, stats, settings.limits, plan, bearer)
    try:
        try:
            addrs = grpc.start()
        except ValueError as e:
            raise ServeError(str(e)) from None
        ctx = StoreContext(
            store,
            {r.name: r for r in settings.regions},
            addrs,
            stats,
            plan,
            settings.client_region,
            settings.limits,
            cdn_base=settings.cdn_base,
        )
        ctx.stop_listener = grpc.stop_listener
        ctx.grpc_gauges = lambda: {
            "streams_open": grpc.plane.open_streams,
            "queued_bytes": grpc.plane.budget.in_flight,
            "queued_bytes_peak": grpc.plane.budget.peak,
        }
        ctx.bearer = bearer
        ctx.buckets = buckets if buckets else None
        try:
            trio.run(_serve_http, ctx, http_addr, admin_addr, settings.topology)
        except* OSError as failed:  # a listener that cannot bind; requests never get here
            raise ServeError(f"cannot listen: {failed.exceptions[0]}") from None
    finally:
        grpc.stop()
        if bearer is not None:
            bearer.close()


def _config(host: str, port: int, limits: Limits) -> Config:
    config = Config()
    config.bind = [host_port(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.h2_max_header_list_size = limits.max_header_bytes
    return config


async def _serve_http(
    ctx: StoreContext,
    public: tuple[str, int],
    admin: tuple[str, int] | None,
    topology: bool,
) -> None:
    stop = trio.Event()
    async with ctx.buckets or contextlib.nullcontext(), trio.open_nursery() as nursery:
        nursery.start_soon(_wait_for_signal, stop)

        async def listen(app: StoreApp, host: str, port: int) -> str:
            config = _config(host, port, ctx.limits)
            binds: list[str] = await nursery.start(
                lambda task_status: serve_http(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            return binds[0].rstrip("/")

        ctx.base = await listen(StoreApp(ctx), *public)
        lines = [f"hub: {ctx.base}"]
        if admin is not None:
            lines.append(f"admin: {await listen(StoreApp(ctx, admin=True), *admin)}")
        if topology:
            lines += [f"grpc {name}: {addr}" for name, addr in ctx.grpc_addrs.items()]
            lines += [
                f"gcs {r.name}: {r.bucket.url}"
                for r in ctx.regions.values()
                if r.bucket is not None
            ]
        else:
            lines += [f"grpc: {addr}" for addr in ctx.grpc_addrs.values()]
        print("\n".join(lines), flush=True)
        datasets = f" and datasets {ctx.store.datasets}" if ctx.store.datasets else ""
        log.info("serving %s%s (pid %d)", ctx.store.root, datasets, os.getpid())
    log.info("stopped")


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return
