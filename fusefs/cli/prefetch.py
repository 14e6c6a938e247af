"""`modelfs prefetch`: read files through the mount so the page cache holds them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from fusefs.cli.status import human_bytes
from fusefs.hub.resolve import MARKERS

BLOCK = 4 << 20


@dataclass
class Outcome:
    path: str
    bytes: int = 0
    error: str | None = None


def expand(paths: list[str]) -> list[str]:
    """Files named, and every file below the directories named, in a stable order."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for base, dirs, names in os.walk(p):
                dirs.sort()
                files.extend(os.path.join(base, n) for n in sorted(names))
        else:
            files.append(p)
    return files


def marker(path: str) -> str:
    try:
        source = os.getxattr(path, "user.modelfs.source").decode()
    except OSError:
        return " "
    return MARKERS.get(source, " ")


def warm(path: str, on_progress: Callable[[int, str | None], None]) -> Outcome:
    out = Outcome(path)
    try:
        with open(path, "rb", buffering=0) as f:
            on_progress(0, marker(path))
            while chunk := f.read(BLOCK):
                out.bytes += len(chunk)
                on_progress(len(chunk), None)
    except OSError as e:
        out.error = e.strerror or str(e)
    return out


def warm_all(paths: list[str], jobs: int, console: Console | None = None) -> list[Outcome]:
    files = expand(paths)
    console = console or Console(stderr=True)
    show = console.is_terminal
    progress = Progress(
        TextColumn("{task.fields[marker]} {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    with progress:

        def run(path: str) -> Outcome:
            size = os.path.getsize(path) if os.path.exists(path) else None
            task = progress.add_task(os.path.basename(path), total=size, marker=" ")

            def update(n: int, mark: str | None) -> None:
                if mark is not None:
                    progress.update(task, marker=mark)
                progress.advance(task, n)

            return warm(path, update)

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            outcomes = list(pool.map(run, files))
    for o in outcomes:
        if o.error:
            print(f"modelfs prefetch: {o.path}: {o.error}", file=sys.stderr)
    return outcomes


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--jobs", "-j", default=4, show_default=True, help="Files read at once.")
def prefetch(paths: tuple[str, ...], jobs: int) -> None:
    """Warm files, or whole repos, into the page cache through the mount.

    One progress bar per file (⚡ local, ⇄ peer, blank CDN); quiet when not a terminal.
    Exits non-zero if any file failed.

    \b
    Example:
      modelfs prefetch /models/Qwen/Qwen3-8B
    """
    outcomes = warm_all(list(paths), jobs)
    failed = [o for o in outcomes if o.error]
    total = sum(o.bytes for o in outcomes)
    click.echo(
        f"prefetched {len(outcomes) - len(failed)} of {len(outcomes)} files, {human_bytes(total)}",
        err=True,
    )
    if failed:
        sys.exit(1)
