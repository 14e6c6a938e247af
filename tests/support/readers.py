"""Helpers for tests that read through a `FileReader` without FUSE."""

from __future__ import annotations

from fusefs.data.reader import FileReader
from fusefs.testing import MiB


async def read_all(reader: FileReader, block: int = MiB) -> bytes:
    """The whole file, read front to back in `block`-sized reads (a sequential reader)."""
    out = bytearray()
    off = 0
    while chunk := await reader.read(off, block):
        out += chunk
        off += len(chunk)
    return bytes(out)
