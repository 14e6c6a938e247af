"""`modelfs serve`: the command line of the regional store (fusefs.server)."""

from __future__ import annotations

from typing import Any

import click

from fusefs import logs
from fusefs.config import parse_size
from fusefs.data.location import valid_region
from fusefs.server.limits import KiB, Limits, MiB
from fusefs.server.run import ServeError, ServeSettings, run_store
from fusefs.server.topology import (
    Region,
    TopologyError,
    load,
    parse_cdn_base,
    parse_host_port,
)

DEFAULTS = Limits()


class Size(click.ParamType[int]):
    """A byte count: 512K, 2M, 1G, or plain bytes, within [low, high]."""

    name = "size"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            n = value
        else:
            try:
                n = parse_size(value)
            except ValueError as e:
                self.fail(str(e), param, ctx)
        if not self.low <= n <= self.high:
            self.fail(f"{value} is not between {self.low} and {self.high} bytes", param, ctx)
        return n


def _admin_address(text: str) -> str:
    """[HOST:]PORT; a bare port is on loopback."""
    return f"127.0.0.1:{text}" if text.isdigit() else text


@click.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--datasets",
    type=click.Path(exists=True, file_okay=False),
    metavar="DIR",
    help="Also serve DIR/<owner>/<name>/<files…> as dataset repos.",
)
@click.option(
    "--http",
    "http_addr",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Hub API and CDN route; port 0 picks a free port.",
)
@click.option(
    "--grpc",
    "grpc_addr",
    default="127.0.0.1:0",
    show_default=True,
    metavar="HOST:PORT",
    help="BidiReadObject data plane (without --topology).",
)
@click.option(
    "--region",
    default="local",
    show_default=True,
    help="The region this store plays (without --topology).",
)
@click.option(
    "--topology",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help='TOML file: [regions.<name>] grpc = "HOST:PORT", repos = ["owner/*"].',
)
@click.option(
    "--client-region",
    metavar="NAME",
    help="Region to tell clients they are in (internalAccelerationInfo).",
)
@click.option(
    "--cdn-base",
    metavar="URL",
    help="The public path: a probe no region answers is sent to URL/<owner>/<name>/<path> "
    "(datasets: URL/_datasets/<owner>/<name>/<path>) instead of this store's /cdn route. "
    "URL (http or https) is a static server of ROOT that answers Range requests (nginx, a "
    "CDN). Region paths and gRPC locations are unchanged.",
)
@click.option(
    "--require-token",
    metavar="FILE|URL",
    help="Cloud Storage JSON API routes (/storage/v1, /download/storage/v1) and the gRPC "
    "listeners want a bearer token: one listed in FILE (one per line), or one an RFC 7662 "
    "introspection URL calls active. Not applied to the hub API or the CDN route.",
)
@click.option(
    "--admin",
    metavar="[HOST:]PORT",
    help="Serve the admin routes (/admin/stats, /admin/faults) on their own listener; a bare "
    "PORT listens on 127.0.0.1, port 0 picks a free one. Without it there are none; they "
    "are never on --http. They answer anyone who reaches them: keep them on loopback.",
)
@click.option(
    "--faults",
    is_flag=True,
    help="Enable fault injection on the admin listener's /admin/faults (tests only; needs "
    "--admin).",
)
@click.option(
    "--max-streams",
    default=DEFAULTS.max_streams,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="BidiReadObject streams open at once, all regions; past it a stream is refused "
    "with RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-ranges",
    default=DEFAULTS.max_ranges,
    show_default=True,
    type=click.IntRange(100, 1 << 20),
    help="Outstanding ranges of one stream; while it has that many, its further requests "
    "are not read (they wait in HTTP/2 flow control).",
)
@click.option(
    "--stream-buffer",
    default="2M",
    show_default=True,
    type=Size(64 * KiB, 16 * MiB),
    help="Largest chunk a stream sends, and so what one stream whose client does not read "
    "can leave queued.",
)
@click.option(
    "--send-memory",
    default="128M",
    show_default=True,
    type=Size(1 * MiB, 1 << 40),
    help="Bytes queued on all streams together before every stream's chunks shrink to 64 KiB.",
)
@click.option(
    "--max-header-bytes",
    default="16K",
    show_default=True,
    type=Size(1 * KiB, 1 * MiB),
    help="Largest HTTP request head (request line and headers) and gRPC metadata.",
)
@click.option(
    "--max-request-bytes",
    default="64K",
    show_default=True,
    type=Size(16 * KiB, 16 * MiB),
    help="Largest HTTP request body (413 past it) and gRPC request message.",
)
@click.option(
    "--listing-limit",
    default=DEFAULTS.listing_limit,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Most entries a recursive listing answer or a listing page holds (clients walk "
    "subtrees for more).",
)
@click.option(
    "--directory-limit",
    default=DEFAULTS.directory_limit,
    show_default=True,
    type=click.IntRange(1, 10_000_000),
    help="Most entries a listing of one directory (not recursive, not paged) returns.",
)
@click.option(
    "--rescan-interval",
    default=DEFAULTS.rescan_interval,
    show_default=True,
    type=click.FloatRange(0, 3600),
    metavar="SECONDS",
    help="How long a repo's index answers repo-wide requests (info, commits, listings) "
    "before it is compared with the disk again. A request for one file always checks that "
    "file.",
)
@click.option(
    "--index-files",
    default=DEFAULTS.index_files,
    show_default=True,
    type=click.IntRange(1),
    help="Files kept in repo indexes (about 750 bytes each), all repos together; least "
    "recently used repos are dropped first (a larger repo is still indexed, alone).",
)
@click.option(
    "--hash-cache",
    default=DEFAULTS.hash_cache,
    show_default=True,
    type=click.IntRange(1),
    help="File versions whose SHA-256, CRC32C and MD5 are kept in memory.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    root: str,
    datasets: str | None,
    http_addr: str,
    grpc_addr: str,
    region: str,
    topology: str | None,
    client_region: str | None,
    cdn_base: str | None,
    require_token: str | None,
    admin: str | None,
    faults: bool,
    max_streams: int,
    max_ranges: int,
    stream_buffer: int,
    send_memory: int,
    max_header_bytes: int,
    max_request_bytes: int,
    listing_limit: int,
    directory_limit: int,
    rescan_interval: float,
    index_files: int,
    hash_cache: int,
    log_level: str,
) -> None:
    """Serve ROOT/<owner>/<name>/<files…> as hub repos (models; datasets from
    --datasets DIR, laid out the same way), over the hub HTTP API, BidiReadObject
    gRPC, a CDN-style range route and the Cloud Storage JSON API (bucket = region
    name, objects `<owner>/<name>/<path>`).

    Prints `hub: http://HOST:PORT`, `admin: http://HOST:PORT` (with --admin) and
    `grpc: HOST:PORT` (or one `grpc <region>: HOST:PORT` line per topology region)
    once listening. Every limit below is per store process; the README's limits table
    says what each bounds.

    \b
    Examples:
      modelfs serve ./models --http 127.0.0.1:8080
      modelfs serve ./models --datasets ./datasets --http 127.0.0.1:8080
      modelfs serve ./models --http 0.0.0.0:8080 --topology regions.toml
      modelfs serve ./models --admin 9090 --max-streams 8192
      modelfs serve ./models --cdn-base https://cdn.example.com/models
    """
    logs.setup(log_level)
    if admin is not None:
        admin = _admin_address(admin)
    if faults and admin is None:
        raise click.ClickException("--faults needs --admin: faults are set on the admin listener")
    try:
        parse_host_port(http_addr, "--http")
        if admin is not None:
            parse_host_port(admin, "--admin")
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
    if cdn_base is not None:
        try:
            cdn_base = parse_cdn_base(cdn_base)
        except TopologyError as e:
            raise click.ClickException(str(e)) from None
    settings = ServeSettings(
        root=root,
        http=http_addr,
        regions=tuple(regions),
        topology=bool(topology),
        client_region=client_region,
        cdn_base=cdn_base,
        faults=faults,
        datasets=datasets,
        require_token=require_token,
        admin=admin,
        limits=Limits(
            max_streams=max_streams,
            max_ranges=max_ranges,
            stream_buffer=stream_buffer,
            send_memory=send_memory,
            max_header_bytes=max_header_bytes,
            max_request_bytes=max_request_bytes,
            listing_limit=listing_limit,
            directory_limit=directory_limit,
            rescan_interval=rescan_interval,
            index_files=index_files,
            hash_cache=hash_cache,
        ),
    )
    try:
        run_store(settings)
    except ServeError as e:
        raise click.ClickException(str(e)) from None
