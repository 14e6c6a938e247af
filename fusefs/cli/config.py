"""`modelfs config show`, and the one way every mount setting becomes a command-line option."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from fusefs.config import SETTINGS, ConfigError, Value, merge

F = TypeVar("F", bound=Callable[..., Any])


def setting_options(command: F) -> F:
    """One option per setting, no defaults: absence lets env, file and default speak."""
    for s in reversed(SETTINGS):
        env = f" [env {' or '.join(s.envvars)}]" if s.envvars else ""
        command = click.option(
            s.flag, s.key, metavar=s.metavar, multiple=s.repeatable, default=None, help=s.help + env
        )(command)
    return click.option(
        "--config",
        "config",
        metavar="PATH",
        type=click.Path(dir_okay=False),
        help="TOML config file [default: /etc/modelfs/config.toml if present; env MODELFS_CONFIG].",
    )(command)


def effective_settings(config: str | None, flags: dict[str, Any]) -> dict[str, Value]:
    try:
        return merge(flags, config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@click.group()
def config() -> None:
    """Inspect settings.

    \b
    Example:
      modelfs config show --config /etc/modelfs/config.toml
    """


@config.command("show")
@setting_options
def config_show(config: str | None, **flags: Any) -> None:
    """Print the effective mount settings and where each came from.

    \b
    Example:
      MODELFS_REGION=cn-hangzhou modelfs config show --config /etc/modelfs/config.toml
    """
    for key, v in effective_settings(config, flags).items():
        shown = ",".join(v.value) if isinstance(v.value, tuple) else v.value
        click.echo(f"{key:14} = {'' if shown is None else shown}    ({v.origin})")
