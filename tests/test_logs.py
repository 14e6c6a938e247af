"""Log lines: a hostile name is one escaped line in text and in JSON, never two."""

from __future__ import annotations

import json
import logging
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusefs import logs

HOSTILE = "w.bin\n2099-01-01 00:00:00,000 ERROR fusefs: forged\x1b[31m\u202e\x85\r"


@pytest.fixture
def emit(capsys):
    """Log one message through logs.setup(fmt) and return what reached stderr."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level

    def emit(fmt: str, *args: object, exc: bool = False) -> str:
        logs.setup("info", fmt, secrets=("s3cret",))
        log = logging.getLogger("fusefs.test")
        if exc:
            try:
                raise ValueError(HOSTILE)
            except ValueError:
                log.exception(*args)
        else:
            log.warning(*args)
        return capsys.readouterr().err

    yield emit
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_text_one_line_escaped(emit):
    out = emit("text", "open %s with token %s", HOSTILE, "s3cret")
    assert out.count("\n") == 1 and out.endswith("\n")
    assert "w.bin\\n2099-01-01 00:00:00,000 ERROR fusefs: forged\\x1b[31m\\u202e\\x85\\r" in out
    assert "s3cret" not in out and "***" in out


def test_json_one_line_escaped(emit):
    out = emit("json", "open %s", HOSTILE)
    assert out.count("\n") == 1
    message = json.loads(out)["message"]
    assert (
        message
        == "open w.bin\\n2099-01-01 00:00:00,000 ERROR fusefs: forged\\x1b[31m\\u202e\\x85\\r"
    )


def test_tracebacks_are_indented_and_escaped(emit):
    out = emit("text", "failed: %s", "x", exc=True)
    first, *rest = out.rstrip("\n").split("\n")
    assert first.endswith("ERROR fusefs.test: failed: x")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "\x1b" not in out and not any(line.startswith("2099") for line in rest)
    event = json.loads(emit("json", "failed", exc=True))
    assert "\x1b" not in event["exception"] and "ValueError" in event["exception"]


@given(st.text())
def test_escaped_text_has_no_control_characters_and_keeps_the_rest(text):
    out = logs.escape(text)
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in out)
    assert not any(c in out for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    if all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp") for c in text):
        assert out == text
