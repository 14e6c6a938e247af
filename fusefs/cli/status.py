"""`modelfs status`: what a running mount reports about itself, for a person."""

from __future__ import annotations

import json
import os

import click

from fusefs.fs.status import STATUS_XATTR


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(mountpoint: str, as_json: bool) -> None:
    """Show a running mount: settings, open files and where each came from.

    Markers: ⚡ local region, ⇄ peer region, ● whole in the disk cache, blank: public CDN.

    \b
    Example:
      modelfs status /models
    """
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as e:
        raise click.ClickException(f"{mountpoint} is not a modelfs mount ({e.strerror})") from None
    state = json.loads(raw)
    if as_json:
        click.echo(json.dumps(state, indent=2, ensure_ascii=False))
        return
    mem = state["memory"]
    click.echo(f"mount    {state['mountpoint']}  (up {state['uptime_seconds']:.0f}s)")
    click.echo(f"hub      {state['settings'].get('hub')}")
    click.echo(f"region   {state['region'] or '-'}   peers: {', '.join(state['peers']) or '-'}")
    click.echo(f"repos    {', '.join(state['repos']) or '-'}")
    click.echo(
        "read     "
        + (
            ", ".join(f"{human_bytes(n)} {src}" for src, n in state["bytes_read"].items())
            or "nothing yet"
        )
    )
    click.echo(
        f"memory   {human_bytes(mem['in_use'])} of {human_bytes(mem['limit'])} "
        f"({mem['evictions']} evictions)"
    )
    streams, fds = state["streams"], state["descriptors"]
    click.echo(
        f"streams  {streams['open']} open of {streams['limit']} (peak {streams['peak']}, "
        f"{streams['waiting']} waiting)   {state['stream_reopens']} reopens, "
        f"{state['stream_refusals']} refused   probes: "
        + (", ".join(f"{k} {v}" for k, v in sorted(state["probes"].items())) or "0")
    )
    click.echo(f"fds      {fds['open']} open of {fds['limit']}")
    if cache := state.get("cache"):
        click.echo(
            f"cache    {human_bytes(cache['used'])} of {human_bytes(cache['limit'])} in "
            f"{cache['dir']}   hits {human_bytes(cache['hit_bytes'])}, "
            f"misses {human_bytes(cache['miss_bytes'])}, {cache['evictions']} evictions, "
            f"{cache['sealed']} files verified"
        )
    if state["errors"]:
        click.echo("errors   " + ", ".join(f"{k} {v}" for k, v in sorted(state["errors"].items())))
    click.echo(
        f"files    {state['files_open']} open, {state['data_paths']} with a data path "
        "(closed ones linger a moment)"
    )
    for f in state["files"]:
        where = f"{f['source']} {f['region']}".strip()
        click.echo(
            f"  {f['marker']} {f['path']}  {human_bytes(f['bytes_read'])} read  [{where}]"
            f"  handles {f['handles']}  reopens {f['stream_reopens']}"
        )
    if state["files_not_listed"]:
        click.echo(f"  … and {state['files_not_listed']} more")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
