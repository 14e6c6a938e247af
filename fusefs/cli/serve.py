"""`modelfs serve`: the command line of the regional store (fusefs.server)."""

from __future__ import annotations

import click

from fusefs import logs
from fusefs.data.location import valid_region
from fusefs.server.run import ServeError, ServeSettings, run_store
from fusefs.server.topology import Region, TopologyError, load, parse_host_port


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
    "--listing-limit",
    default=3000,
    show_default=True,
    type=click.IntRange(1),
    help="Most entries a recursive listing returns (clients walk subtrees for more).",
)
@click.option(
    "--require-token",
    metavar="FILE|URL",
    help="Cloud Storage JSON API routes (/storage/v1, /download/storage/v1) want a bearer "
    "token: one listed in FILE (one per line), or one an RFC 7662 introspection URL calls "
    "active. Not applied to the hub API, the CDN route or gRPC.",
)
@click.option(
    "--faults", is_flag=True, help="Enable fault injection on /admin/faults (tests only)."
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
    listing_limit: int,
    require_token: str | None,
    faults: bool,
    log_level: str,
) -> None:
    """Serve ROOT/<owner>/<name>/<files…> as hub repos (models; datasets from
    --datasets DIR, laid out the same way), over the hub HTTP API, BidiReadObject
    gRPC, a CDN-style range route and the Cloud Storage JSON API (bucket = region
    name, objects `<owner>/<name>/<path>`).

    Prints `hub: http://HOST:PORT` and `grpc: HOST:PORT` (or one `grpc <region>:
    HOST:PORT` line per topology region) once listening.

    \b
    Examples:
      modelfs serve ./models --http 127.0.0.1:8080
      modelfs serve ./models --datasets ./datasets --http 127.0.0.1:8080
      modelfs serve ./models --http 0.0.0.0:8080 --topology regions.toml
    """
    logs.setup(log_level)
    try:
        parse_host_port(http_addr, "--http")
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
    settings = ServeSettings(
        root=root,
        http=http_addr,
        regions=tuple(regions),
        topology=bool(topology),
        client_region=client_region,
        listing_limit=listing_limit,
        faults=faults,
        datasets=datasets,
        require_token=require_token,
    )
    try:
        run_store(settings)
    except ServeError as e:
        raise click.ClickException(str(e)) from None
