"""The `modelfs` command: one subcommand per job, each a thin shell over a package."""

from __future__ import annotations

import click

from fusefs import __version__
from fusefs.data.memory import tune_malloc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelfs")
def main() -> None:
    """modelfs: model-hub repositories as a read-only filesystem.

    \b
    Examples:
      modelfs serve ./models --http 127.0.0.1:8080 --grpc 127.0.0.1:0
      modelfs mount /models --hub http://127.0.0.1:8080 --repo Qwen/Qwen3-8B
      modelfs unmount /models
    """
    tune_malloc()  # every subcommand moves MiB-sized buffers


from fusefs.server.command import serve  # noqa: E402

main.add_command(serve)

from fusefs.fs.command import (  # noqa: E402
    config, mount, prefetch, status, systemd_unit, unmount)

main.add_command(mount)
main.add_command(unmount)
main.add_command(config)
main.add_command(status)
main.add_command(prefetch)
main.add_command(systemd_unit)
