"""What a cached file's bytes must hash to, as its listing says.

A hub lists a file's SHA-256; a Cloud Storage bucket lists an object's MD5 (absent for
composite objects) and always its CRC32C. The strongest one given names the cache
entry and is checked when the entry is sealed:

* SHA-256 and MD5 address content: the same bytes under two names are stored once;
* CRC32C alone is too weak to address content (32 bits), so such an entry is named
  by the object itself (repo, generation and path, see `cache_key`) and the CRC32C
  only checks it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

import crc32c

from fusefs.hub.listing import RepoFile

Kind = Literal["sha256", "md5", "crc32c"]
_LENGTH = {"sha256": 32, "md5": 16, "crc32c": 4}
HEADER_BYTES = 32  # room for a digest in an entry's header


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32c:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = crc32c.crc32c(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


@dataclass(frozen=True)
class Digest:
    kind: Kind
    value: bytes

    def __post_init__(self) -> None:
        if len(self.value) != _LENGTH[self.kind]:
            raise ValueError(f"a {self.kind} digest is {_LENGTH[self.kind]} bytes")

    @classmethod
    def sha256(cls, hexdigest: str) -> Digest:
        return cls("sha256", bytes.fromhex(hexdigest))

    @classmethod
    def of(cls, f: RepoFile) -> Digest | None:
        """The strongest digest `f`'s listing gives, or None."""
        if f.sha256:
            return cls.sha256(f.sha256)
        if f.md5:
            return cls("md5", bytes.fromhex(f.md5))
        if f.crc32c is not None:
            return cls("crc32c", f.crc32c.to_bytes(4, "big"))
        return None

    @property
    def addresses_content(self) -> bool:
        """Whether equal digests (and sizes) may be taken for equal bytes."""
        return self.kind != "crc32c"

    def header(self) -> bytes:
        """The digest as an entry's header keeps it (padded)."""
        return self.value.ljust(HEADER_BYTES, b"\0")

    def hasher(self) -> Hasher:
        if self.kind == "crc32c":
            return _Crc32c()
        return hashlib.new(self.kind)

    def __str__(self) -> str:
        return f"{self.kind} {self.value.hex()}"
