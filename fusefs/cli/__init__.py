"""The `modelfs` command: one subcommand per job, each a thin shell over a package."""

from __future__ import annotations

import click

from fusefs import __version__
from fusefs.cli.config import config
from fusefs.cli.mount import mount, unmount
from fusefs.cli.prefetch import prefetch
from fusefs.cli.serve import serve
from fusefs.cli.status import status
from fusefs.cli.systemd import systemd_unit
from fusefs.data.malloc_tuning import tune_malloc


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


for command in (serve, mount, unmount, config, status, prefetch, systemd_unit):
    main.add_command(command)
