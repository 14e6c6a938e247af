"""`modelfs systemd-unit`: the unit files a mount runs under."""

from __future__ import annotations

import os
import shutil
import sys

import click

UNIT = """\
[Unit]
Description=modelfs: model-hub repositories mounted read-only at {mountpoint}
After=network-online.target
Wants=network-online.target

[Service]
# Ready is sent only once the mount is live (FUSE INIT done).
Type=notify
NotifyAccess=main
ExecStartPre=/bin/mkdir -p {mountpoint}
ExecStart={modelfs} mount {mountpoint} --foreground --config {config}
ExecStop={modelfs} unmount {mountpoint}
Restart=on-failure
RestartSec=2
TimeoutStopSec=30

[Install]
WantedBy=multi-user.target
"""


def unit_text(
    template: bool, mountpoint: str = "/models", config: str = "/etc/modelfs/config.toml"
) -> str:
    modelfs = shutil.which("modelfs") or os.path.join(os.path.dirname(sys.executable), "modelfs")
    if template:
        # modelfs@data-models.service mounts /data/models with /etc/modelfs/data-models.toml
        mountpoint, config = "%f", "/etc/modelfs/%i.toml"
    return UNIT.format(modelfs=modelfs, mountpoint=mountpoint, config=config)


@click.command("systemd-unit")
@click.option(
    "--template", is_flag=True, help="The modelfs@.service template (instance = mountpoint)."
)
@click.option("--mountpoint", default="/models", show_default=True)
@click.option("--config", "config_path", default="/etc/modelfs/config.toml", show_default=True)
@click.option(
    "--install", is_flag=True, help="Write it to /etc/systemd/system instead of printing."
)
def systemd_unit(template: bool, mountpoint: str, config_path: str, install: bool) -> None:
    """Print (or install) the systemd unit for a modelfs mount.

    \b
    Examples:
      modelfs systemd-unit --install && systemctl enable --now modelfs
      modelfs systemd-unit --template --install && systemctl start modelfs@data-models
        (mounts /data/models with /etc/modelfs/data-models.toml)
    """
    text = unit_text(template, mountpoint, config_path)
    if not install:
        click.echo(text, nl=False)
        return
    name = "modelfs@.service" if template else "modelfs.service"
    path = os.path.join("/etc/systemd/system", name)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise click.ClickException(f"could not write {path}: {e.strerror}") from None
    click.echo(f"wrote {path}; run: systemctl daemon-reload")
