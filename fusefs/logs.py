"""Logging: one line per event, as text or JSON, and never a secret.

Messages carry names that come from outside (hub listings, requests to the store),
so every control character in a message is written escaped (`\\n`, `\\x1b`, …): a
hostile name can neither start a line of its own nor drive the reader's terminal.
Tracebacks keep their lines, each indented and escaped the same way, so every line
that starts at the left margin is an event.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

# C0 and C1 controls, DEL, the line and paragraph separators, and the bidirectional
# overrides that make text read differently from what it is.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape(text: str) -> str:
    """`text` with every control character written as an escape: one safe line."""
    return _CONTROL.sub(_escaped, text)


def _escape_lines(text: str) -> str:
    return "\n".join("    " + escape(line) for line in text.splitlines())


class _Clean(logging.Filter):
    """Removes registered secrets, then escapes control characters, in every message."""

    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self.secrets:
            message = message.replace(secret, "***")
        record.msg, record.args = escape(message), None
        return True


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return _escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(stack_info)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape(record.getMessage()),
        }
        if record.exc_info:
            text = self.formatException(record.exc_info)
            entry["exception"] = "\n".join(escape(line) for line in text.splitlines())
        return json.dumps(entry, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Clean(secrets))
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Transport libraries log requests at debug level: headers, and for google-auth
    # token responses; never at ours.
    for noisy in ("httpx", "httpcore", "hpack", "h2", "google", "urllib3", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
