"""Logging: one line per event, as text or JSON, and never a secret."""

from __future__ import annotations

import json
import logging
import sys
import time


class _Redact(logging.Filter):
    """Replaces any registered secret that slips into a message."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact(secrets))
    handler.setFormatter(
        _Json()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Transport libraries log requests at debug level: headers, and for google-auth
    # token responses; never at ours.
    for noisy in ("httpx", "httpcore", "hpack", "h2", "google", "urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
