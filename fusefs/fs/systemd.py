"""systemd integration: readiness notification and the unit files we ship."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys

log = logging.getLogger(__name__)

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

def unit_text(template: bool, mountpoint: str = "/models",
              config: str = "/etc/modelfs/config.toml") -> str:
    modelfs = shutil.which("modelfs") or os.path.join(os.path.dirname(sys.executable), "modelfs")
    if template:
        # modelfs@data-models.service mounts /data/models with /etc/modelfs/data-models.toml
        mountpoint, config = "%f", "/etc/modelfs/%i.toml"
    return UNIT.format(modelfs=modelfs, mountpoint=mountpoint, config=config)


def notify(state: str) -> bool:
    """Send `state` (e.g. READY=1) to systemd's notify socket; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError as e:
        # Like sd_notify(3): a supervisor that is gone must not take the mount down.
        log.warning("could not notify %s (%s): %s", path.lstrip("\0"), state.split("\n")[0],
                    e.strerror or e)
        return False
    return True
