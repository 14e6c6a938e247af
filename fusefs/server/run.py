"""Running `modelfs serve`: the gRPC listeners of each region and the HTTP side, until a signal."""

from __future__ import annotations

import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_http

from fusefs.server.bearer import TokenChecker, TokenSpecError
from fusefs.server.bidi_service import BidiReadService, method_handlers
from fusefs.server.faults import FaultPlan
from fusefs.server.http import StoreApp, StoreContext
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region, parse_host_port

log = logging.getLogger(__name__)

GRPC_WORKERS = 256  # one thread per open stream
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.so_reuseport", 0),
    # clients ping every ~20 s to notice dead peers; let them
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ServeError(Exception):
    """The store could not start; the message is one line for a person."""


@dataclass(frozen=True)
class ServeSettings:
    root: str
    http: str  # HOST:PORT
    regions: tuple[Region, ...]
    topology: bool  # several regions: name each gRPC address when announcing them
    client_region: str | None = None
    listing_limit: int = 3000
    faults: bool = False
    datasets: str | None = None  # DIR/<owner>/<name>/<files…> served as dataset repos
    require_token: str | None = None  # a token file or an introspection URL (bearer.py)


def start_grpc(
    region: Region, store: Store, stats: Stats, faults: FaultPlan | None
) -> tuple[grpc.Server, str]:
    server = grpc.server(
        ThreadPoolExecutor(GRPC_WORKERS, thread_name_prefix=f"grpc-{region.name}"),
        options=_GRPC_OPTIONS,
        maximum_concurrent_rpcs=GRPC_WORKERS,
    )
    server.add_generic_rpc_handlers(
        (method_handlers(BidiReadService(region, store, stats, faults)),)
    )
    host, port = parse_host_port(region.grpc, f"grpc address of region {region.name}")
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ServeError(f"cannot listen on {region.grpc} (region {region.name})")
    server.start()
    return server, f"{host}:{bound}"


def run_store(settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; ServeError if a listener cannot start."""
    http_host, http_port = parse_host_port(settings.http, "--http")
    try:
        bearer = TokenChecker(settings.require_token) if settings.require_token else None
    except TokenSpecError as e:
        raise ServeError(str(e)) from None
    store = Store(settings.root, settings.datasets)
    stats = Stats()
    plan = FaultPlan() if settings.faults else None
    servers: list[grpc.Server] = []
    addrs: dict[str, str] = {}
    try:
        for r in settings.regions:
            server, addrs[r.name] = start_grpc(r, store, stats, plan)
            servers.append(server)
        ctx = StoreContext(
            store,
            {r.name: r for r in settings.regions},
            addrs,
            stats,
            plan,
            settings.client_region,
            settings.listing_limit,
        )
        by_region = dict(zip(addrs, servers, strict=True))

        def stop_listener(name: str) -> bool:
            server = by_region.get(name)
            if server is not None:
                server.stop(grace=0)
            return server is not None

        ctx.stop_listener = stop_listener
        ctx.bearer = bearer
        trio.run(_serve_http, StoreApp(ctx), http_host, http_port, settings.topology)
    finally:
        for server in servers:
            server.stop(grace=0.5).wait(2)
        if bearer is not None:
            bearer.close()


async def _serve_http(app: StoreApp, host: str, port: int, topology: bool) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_wait_for_signal, stop)
        binds = await nursery.start(
            lambda task_status: serve_http(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        ctx = app.ctx
        ctx.base = binds[0].rstrip("/")
        lines = [f"hub: {ctx.base}"]
        if topology:
            lines += [f"grpc {name}: {addr}" for name, addr in ctx.grpc_addrs.items()]
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
