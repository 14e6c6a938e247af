"""systemd integration at run time: readiness and stopping notifications (sd_notify)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


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
        log.warning(
            "could not notify %s (%s): %s", path.lstrip("\0"), state.split("\n")[0], e.strerror or e
        )
        return False
    return True
