"""One cached file on disk: a header, a block table and the file's bytes, in one sparse file.

Layout (all little-endian):

    header  64 bytes   magic, version, block size, file size, complete flag, digest
                       (the listing's SHA-256, MD5 or CRC32C, zero-padded: `digest.py`)
    table   8 bytes per block: CRC32C of the block, a "present" flag
    data    from a 4 KiB-aligned offset, the file's bytes at their own offsets

A block is written data first, table entry second. A process killed between the
two leaves the block absent; a power cut that keeps the entry but not the data
leaves a CRC that does not match, and a block whose CRC does not match is never
served: it is marked absent and fetched again. So an entry is always either
usable or discarded, block by block, without fsync on the read path.

Coordination between processes sharing a cache directory uses open-file-description
locks (`F_OFD_SETLK`) on byte ranges past the end of any real data, so they never
interact with I/O:

* a shared lock on IN_USE while a process has the entry open: eviction takes it
  exclusively, so a file being read is never evicted;
* an exclusive lock per block while a process fetches it: others wait for the
  bytes instead of fetching them a second time;
* an exclusive lock on VERIFY while a process checks the whole file's digest.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import crc32c

from fusefs.cache.digest import HEADER_BYTES, Digest

log = logging.getLogger(__name__)

MAGIC = b"MFSCACH1"
VERSION = 1
HEADER = struct.Struct("<8sIIQB3x32s4x")  # 64 bytes
ENTRY = struct.Struct("<IB3x")  # 8 bytes per block
PRESENT = 1
DATA_ALIGN = 4096

# Lock offsets: far beyond any file this cache holds (sizes are capped at 1 PiB).
IN_USE = 1 << 60
VERIFY = IN_USE + 1
BLOCK_LOCKS = 1 << 61

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux


class EntryError(Exception):
    """The file is not a cache entry this version can use."""


def _lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Non-blocking OFD lock; False when another open file holds a conflicting one."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


@dataclass(frozen=True)
class Layout:
    size: int
    block_size: int

    @property
    def blocks(self) -> int:
        return -(-self.size // self.block_size)

    @property
    def data_offset(self) -> int:
        table_end = HEADER.size + ENTRY.size * self.blocks
        return -(-table_end // DATA_ALIGN) * DATA_ALIGN

    def block_range(self, start: int, end: int) -> range:
        """Indices of the blocks [start, end) touches."""
        return range(start // self.block_size, -(-end // self.block_size))

    def span(self, blocks: range) -> tuple[int, int]:
        """Bytes [start, end) of a run of blocks."""
        return self.block_span(blocks.start)[0], self.block_span(blocks.stop - 1)[1]

    def block_span(self, index: int) -> tuple[int, int]:
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)


class Entry:
    """An open cache entry. Methods do blocking file I/O: call them from a worker thread,
    except the cheap table/lock calls, which touch only a few bytes."""

    def __init__(
        self, path: str, fd: int, layout: Layout, digest: Digest | None, created: bool = False
    ):
        self.path = path
        self.created = created  # this call made the file: its metadata is new on disk
        self.fd = fd
        self.layout = layout
        self.digest = digest
        self._verified = bytearray(layout.blocks)  # blocks whose CRC this process checked

    @classmethod
    def open(cls, path: str, size: int, block_size: int, digest: Digest | None) -> Entry:
        """Open the entry at `path`, creating it when missing; holds IN_USE until close().

        An entry that cannot be used (another version, damaged header) is discarded
        and made anew."""
        layout = Layout(size, block_size)
        created = False
        for _ in range(8):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                created = _create(path, layout, digest)
                continue
            usable = False
            try:
                if not _lock(fd, fcntl.F_RDLCK, IN_USE, 1) or os.fstat(fd).st_nlink == 0:
                    continue  # evicted under us: open the next one
                try:
                    _check_header(fd, layout, digest)
                except EntryError as e:
                    log.warning("cache entry %s discarded: %s", path, e)
                else:
                    usable = True
                    return cls(path, fd, layout, digest, created)
            finally:
                if not usable:
                    os.close(fd)
            try_evict(path)
        raise EntryError(f"{path}: could not be opened (evicted or replaced repeatedly)")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # drops every lock this entry held
            self.fd = -1

    def pause(self) -> None:
        """Let eviction take this entry: no handle of it is open in this process."""
        _lock(self.fd, fcntl.F_UNLCK, IN_USE, 1)

    def resume(self) -> bool:
        """In use again; False when it was evicted meanwhile (open a fresh one)."""
        return _lock(self.fd, fcntl.F_RDLCK, IN_USE, 1) and os.fstat(self.fd).st_nlink > 0

    # -- the table -------------------------------------------------------------

    def complete(self) -> bool:
        return bool(_read_header(self.fd)[4] == 1)

    def present(self, blocks: range) -> list[bool]:
        if not blocks:
            return []
        raw = os.pread(self.fd, ENTRY.size * len(blocks), HEADER.size + ENTRY.size * blocks.start)
        return [raw[i * ENTRY.size + 4] == PRESENT for i in range(len(blocks))]

    def all_present(self) -> bool:
        n = self.layout.blocks
        raw = os.pread(self.fd, ENTRY.size * n, HEADER.size)
        return raw[4 :: ENTRY.size].count(PRESENT) == n  # C speed: this runs after every write

    def _forget(self, index: int) -> None:
        os.pwrite(self.fd, ENTRY.pack(0, 0), HEADER.size + ENTRY.size * index)
        os.pwrite(self.fd, b"\x00", _COMPLETE_OFFSET)  # no longer whole: not sealed either
        self._verified[index] = 0

    # -- claims ----------------------------------------------------------------

    def claim(self, blocks: range) -> bool:
        """Exclusively claim blocks to fetch them; all or nothing."""
        return _lock(self.fd, fcntl.F_WRLCK, BLOCK_LOCKS + blocks.start, len(blocks))

    def release(self, blocks: range) -> None:
        _lock(self.fd, fcntl.F_UNLCK, BLOCK_LOCKS + blocks.start, len(blocks))

    # -- data ------------------------------------------------------------------

    def read(self, start: int, end: int) -> bytes | None:
        """Bytes [start, end) (whole blocks) if every block is present and intact.

        A block that fails its CRC is marked absent (so it is fetched again) and
        None is returned: a damaged entry is never served.
        """
        lay = self.layout
        blocks = lay.block_range(start, end)
        raw = os.pread(self.fd, ENTRY.size * len(blocks), HEADER.size + ENTRY.size * blocks.start)
        data = os.pread(self.fd, end - start, lay.data_offset + start)
        if len(data) != end - start:
            raise OSError(errno.EIO, f"{self.path}: short read")
        view = memoryview(data)
        intact = True
        for i, index in enumerate(blocks):
            crc, flag = ENTRY.unpack_from(raw, i * ENTRY.size)
            if flag != PRESENT:
                return None
            if self._verified[index]:
                continue
            b_start, b_end = lay.block_span(index)
            if crc32c.crc32c(view[b_start - start : b_end - start]) != crc:
                self._forget(index)
                intact = False
            else:
                self._verified[index] = 1
        return data if intact else None

    def write(self, pieces: Sequence[bytes | memoryview], blocks: range) -> int:
        """Store `blocks`, whose bytes are `pieces` in order (as received: no join, no
        copy); returns the bytes written."""
        lay = self.layout
        first, last = lay.span(blocks)
        if sum(len(p) for p in pieces) != last - first:
            raise ValueError(f"pieces do not cover blocks {blocks}")
        pos = lay.data_offset + first
        for i in range(0, len(pieces), _IOV_MAX):
            batch = pieces[i : i + _IOV_MAX]
            want = sum(len(p) for p in batch)
            if os.pwritev(self.fd, batch, pos) != want:
                raise OSError(errno.ENOSPC, "short write to the cache")
            pos += want
        table = bytearray()
        for index, crc in zip(blocks, _block_crcs(pieces, lay, blocks), strict=True):
            table += ENTRY.pack(crc, PRESENT)
            self._verified[index] = 1
        os.pwrite(self.fd, table, HEADER.size + ENTRY.size * blocks.start)
        return last - first

    def verify_and_seal(self) -> bool | None:
        """When every block is present, check the whole file and mark it complete.

        True: sealed (or already). False: the bytes do not match the listing's
        digest; every block is forgotten. None: not every block is here, or another
        process is checking it right now.
        """
        if self.complete():
            return True
        if not self.all_present() or not _lock(self.fd, fcntl.F_WRLCK, VERIFY, 1):
            return None
        try:
            if self.complete():
                return True
            if self.digest is not None:
                digest = self.digest.hasher()
                lay = self.layout
                step = 16 * lay.block_size
                for pos in range(0, lay.size, step):
                    n = min(step, lay.size - pos)
                    chunk = self.read(pos, pos + n)
                    if chunk is None:
                        return None  # a damaged block was just forgotten
                    digest.update(chunk)
                if digest.digest() != self.digest.value:
                    for index in range(lay.blocks):
                        self._forget(index)
                    return False
            # A sealed entry is read with no network at all: its bytes reach the disk
            # before the flag that says so.
            os.fsync(self.fd)
            os.pwrite(self.fd, b"\x01", _COMPLETE_OFFSET)
            os.fdatasync(self.fd)
            return True
        finally:
            _lock(self.fd, fcntl.F_UNLCK, VERIFY, 1)


_COMPLETE_OFFSET = 8 + 4 + 4 + 8
_IOV_MAX = 1024


def _block_crcs(
    pieces: Sequence[bytes | memoryview], layout: Layout, blocks: range
) -> Iterator[int]:
    """CRC32C of each block, carried across piece boundaries."""
    lengths = (layout.block_span(i)[1] - layout.block_span(i)[0] for i in blocks)
    left = next(lengths)
    crc = 0
    for piece in pieces:
        view = memoryview(piece)
        pos = 0
        while pos < len(view):
            n = min(left, len(view) - pos)
            crc = crc32c.crc32c(view[pos : pos + n], crc)
            pos += n
            left -= n
            if left == 0:
                yield crc
                crc = 0
                left = next(lengths, 0)


def _read_header(fd: int) -> tuple[bytes, int, int, int, int, bytes]:
    raw = os.pread(fd, HEADER.size, 0)
    if len(raw) != HEADER.size:
        raise EntryError("short header")
    return HEADER.unpack(raw)


def _check_header(fd: int, layout: Layout, expected: Digest | None) -> None:
    magic, version, block_size, size, _complete, digest = _read_header(fd)
    if magic != MAGIC or version != VERSION:
        raise EntryError("not a cache entry of this version")
    if block_size != layout.block_size or size != layout.size:
        raise EntryError(f"entry is for {size} bytes in {block_size}-byte blocks")
    if expected is not None and digest != expected.header():
        raise EntryError(f"entry is for another {expected.kind}")


def _create(path: str, layout: Layout, expected: Digest | None) -> bool:
    """Make a fresh entry appear atomically: built under a temporary name, then linked.
    False when another process made it first."""
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        digest = expected.header() if expected is not None else bytes(HEADER_BYTES)
        os.pwrite(fd, HEADER.pack(MAGIC, VERSION, layout.block_size, layout.size, 0, digest), 0)
        os.ftruncate(fd, layout.data_offset + layout.size)  # sparse: no space until written
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # another process made it first: use theirs
        return True
    finally:
        os.close(fd)
        os.unlink(tmp)


def is_sealed(path: str, layout: Layout, digest: Digest | None) -> bool:
    """Whether the entry at `path` is complete and verified (only its header is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        _check_header(fd, layout, digest)
        return bool(_read_header(fd)[4] == 1)
    except (OSError, EntryError):
        return False
    finally:
        os.close(fd)


def tmp_owner(name: str) -> int | None:
    """The pid that is building a temporary entry file, from its name."""
    parts = name.split(".tmp.")
    if len(parts) != 2:
        return None
    pid = parts[1].split(".")[0]
    return int(pid) if pid.isdigit() else None


def try_evict(path: str) -> int | None:
    """Remove the entry at `path` unless a process has it open; the bytes it held, or None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        if not _lock(fd, fcntl.F_WRLCK, IN_USE, 1):
            return None
        st = os.fstat(fd)
        if st.st_nlink == 0:
            return 0
        os.unlink(path)
        return st.st_blocks * 512
    finally:
        os.close(fd)
