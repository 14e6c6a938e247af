"""scripts/pyfuse3_reply_nogil.py: the build-time patch that lets pyfuse3 write read
replies without the GIL applies exactly once, or refuses and leaves the source alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pyfuse3_reply_nogil.py"
sys.path.insert(0, str(SCRIPT.parent))
import pyfuse3_reply_nogil as patch  # noqa: E402


def tree(tmp_path: Path, handlers: str) -> Path:
    src = tmp_path / "pyfuse3-x" / "src" / "pyfuse3"
    src.mkdir(parents=True)
    (src / "handlers.pxi").write_text(handlers)
    (src / "__init__.c").write_text("/* generated */")
    return tmp_path / "pyfuse3-x"


def run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False
    )


def test_the_read_reply_is_written_without_the_gil(tmp_path):
    root = tree(tmp_path, "before\n" + patch.STOCK + "after\n")
    assert run(root).returncode == 0
    text = (root / "src/pyfuse3/handlers.pxi").read_text()
    assert text == "before\n" + patch.PATCHED + "after\n"
    assert "with nogil:\n                ret = fuse_reply_buf(req," in text
    assert not (root / "src/pyfuse3/__init__.c").exists()  # rebuilt from the patched .pyx


@pytest.mark.parametrize("handlers", ["", patch.PATCHED, patch.STOCK * 2])
def test_a_source_it_does_not_know_is_left_alone(tmp_path, handlers):
    root = tree(tmp_path, handlers)
    result = run(root)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert (root / "src/pyfuse3/handlers.pxi").read_text() == handlers
    assert (root / "src/pyfuse3/__init__.c").exists()
