"""`modelfs serve`: one process playing one or several regional stores."""

from __future__ import annotations

import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import click
import grpc
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as serve_http

from fusefs import logs
from fusefs.data.location import valid_region
from fusefs.server.bidi_service import BidiReadService, method_handlers
from fusefs.server.faults import FaultPlan
from fusefs.server.hub_app import HubApp
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region, TopologyError, load, parse_host_port

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


def start_grpc(region: Region, store: Store, stats: Stats, faults: FaultPlan | None) -> tuple[grpc.Server, str]:
    server = grpc.server(ThreadPoolExecutor(GRPC_WORKERS, thread_name_prefix=f"grpc-{region.name}"),
                         options=_GRPC_OPTIONS, maximum_concurrent_rpcs=GRPC_WORKERS)
    server.add_generic_rpc_handlers((method_handlers(BidiReadService(region, store, stats, faults)),))
    host, port = parse_host_port(region.grpc, f"grpc address of region {region.name}")
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise click.ClickException(f"cannot listen on {region.grpc} (region {region.name})")
    server.start()
    return server, f"{host}:{bound}"


@click.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option("--http", "http_addr", default="127.0.0.1:8080", show_default=True,
              metavar="HOST:PORT", help="Hub API and CDN route; port 0 picks a free port.")
@click.option("--grpc", "grpc_addr", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="BidiReadObject data plane (without --topology).")
@click.option("--region", default="local", show_default=True,
              help="The region this store plays (without --topology).")
@click.option("--topology", type=click.Path(dir_okay=False), metavar="FILE",
              help="TOML file: [regions.<name>] grpc = \"HOST:PORT\", repos = [\"owner/*\"].")
@click.option("--client-region", metavar="NAME",
              help="Region to tell clients they are in (internalAccelerationInfo).")
@click.option("--listing-limit", default=3000, show_default=True, type=click.IntRange(1),
              help="Most entries a recursive listing returns (clients walk subtrees for more).")
@click.option("--faults", is_flag=True, help="Enable fault injection on /admin/faults (tests only).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(root, http_addr, grpc_addr, region, topology, client_region, listing_limit, faults,
          log_level):
    """Serve ROOT/<owner>/<name>/<files…> as hub repos, over the hub HTTP API,
    BidiReadObject gRPC and a CDN-style range route.

    Prints `hub: http://HOST:PORT` and `grpc: HOST:PORT` (or one `grpc <region>:
    HOST:PORT` line per topology region) once listening.

    \b
    Examples:
      modelfs serve ./models --http 127.0.0.1:8080
      modelfs serve ./models --http 0.0.0.0:8080 --topology regions.toml
    """
    logs.setup(log_level)
    try:
        http_host, http_port = parse_host_port(http_addr, "--http")
        if topology:
            regions = load(topology)
        else:
            parse_host_port(grpc_addr, "--grpc")
            if not valid_region(region):
                raise TopologyError(f"--region: bad region name {region!r}")
            regions = [Region(region, grpc_addr, ("*/*",))]
    except TopologyError as e:
        raise click.ClickException(str(e)) from None
    if client_region is not None and not valid_region(client_region):
        raise click.ClickException(f"--client-region: bad region name {client_region!r}")
    store = Store(root)
    stats = Stats()
    plan = FaultPlan() if faults else None
    servers, addrs = [], {}
    try:
        for r in regions:
            server, addrs[r.name] = start_grpc(r, store, stats, plan)
            servers.append(server)
        app = HubApp(store, regions, addrs, stats, plan, client_region, listing_limit)
        by_region = dict(zip(addrs, servers))

        def stop_listener(name: str) -> bool:
            server = by_region.get(name)
            if server is not None:
                server.stop(grace=0)
            return server is not None

        app.stop_listener = stop_listener
        trio.run(_serve_http, app, http_host, http_port, bool(topology))
    finally:
        for server in servers:
            server.stop(grace=0.5).wait(2)


async def _serve_http(app: HubApp, host: str, port: int, topology: bool) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_wait_for_signal, stop)
        binds = await nursery.start(lambda task_status: serve_http(
            app, config, shutdown_trigger=stop.wait, task_status=task_status))
        app.base = binds[0].rstrip("/")
        lines = [f"hub: {app.base}"]
        if topology:
            lines += [f"grpc {name}: {addr}" for name, addr in app.grpc_addrs.items()]
        else:
            lines += [f"grpc: {addr}" for addr in app.grpc_addrs.values()]
        print("\n".join(lines), flush=True)
        log.info("serving %s (pid %d)", app.store.root, os.getpid())
    log.info("stopped")


async def _wait_for_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return
