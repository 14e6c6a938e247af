"""The cache directory: where entries live, how much room they take, what goes first.

    DIR/v1/entries/<k[-2:]>/<k>   one `Entry` per distinct file content
    DIR/v1/lock                  holds the bytes the entries take, shared by every
                                 process; flocked while that number is read and changed

Keys are content addresses: `sha256-<hex>` when the listing gives the file's
SHA-256, `md5-<hex>-<size>` when it gives an object's MD5 (the same file in two
repos or two mounts is stored once), else a digest of repo, commit (or object
generation) and path (a pinned commit never changes its files; a generation names
one content of its object). A changed file has another key, so it can never be
served from a stale entry.

Room is reserved before a block is written; when the limit or the free-space
reserve would be crossed, whole entries are evicted, least recently used first,
skipping any that a process has open, down to a low-water mark below the limit, so
that the reservations that follow fit without another look at the directory. When
nothing can go, the block is simply not cached (the read is still served from
memory), and the next reservations are refused without looking again for a moment,
or until this process lets go of an entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fusefs.cache.digest import Digest
from fusefs.cache.entry import Entry, tmp_owner, try_evict

log = logging.getLogger(__name__)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
DEFAULT_CACHE_SIZE = 20 * GiB
DEFAULT_MIN_FREE = GiB
STALE_TEMP_AGE = 600.0  # seconds
LOW_WATER = 0.9  # eviction makes room down to this share of the limit (and as much more free)
FULL_BACKOFF = 1.0  # seconds a cache that could not make room refuses without scanning


@dataclass(frozen=True)
class CacheLimits:
    size: int  # bytes of disk the entries may take
    min_free: int = DEFAULT_MIN_FREE  # free space to leave on the cache's filesystem
    block_size: int = 64 * KiB  # granularity of what is cached (and fetched) for random reads
    claim_wait: float = 10.0  # wait this long for a block another process fetches, then fetch


@dataclass
class CacheStats:
    hit_bytes: int = 0  # served from disk
    miss_bytes: int = 0  # fetched from the network through the cache
    written_bytes: int = 0
    skipped_bytes: int = 0  # not cached: no room left that could be freed
    evictions: int = 0  # whole entries removed
    evicted_bytes: int = 0
    damaged_blocks: int = 0  # failed their CRC: discarded and fetched again
    waits: int = 0  # times a block was awaited from another process
    sealed: int = 0  # files verified whole against their digest
    rejected: int = 0  # files whose bytes did not match their digest
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:  # worker threads and the trio thread both count
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def view(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def cache_key(digest: Digest | None, size: int, repo: str, commit: str, path: str) -> str:
    """The entry's name: the content's address when `digest` addresses content, else
    the file's own name (repo, the commit or generation that fixes its content, path)."""
    if digest is not None and digest.kind == "sha256":
        return f"sha256-{digest.value.hex()}"
    if digest is not None and digest.addresses_content:
        return f"{digest.kind}-{digest.value.hex()}-{size}"
    named = hashlib.sha256(f"{repo}\0{commit}\0{path}".encode()).hexdigest()
    return f"path-{named}"


class DiskCache:
    """One cache directory. Blocking methods are meant for worker threads."""

    def __init__(self, directory: str | os.PathLike[str], limits: CacheLimits):
        self.limits = limits
        self.root = Path(directory) / "v1"
        self.entries = self.root / "entries"
        self.stats = CacheStats()
        self._mutex = threading.Lock()  # flock does not exclude threads of one process
        self._lock_fd = -1
        self._full_until = 0.0  # monotonic time: no room could be made; refuse until then

    def open(self) -> None:
        """Create or recover the directory; raises OSError when it cannot be used."""
        self.entries.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with self._locked():
            self._remove_stale_temps()
            used = self._scan_and_evict(0)  # also brings a shrunk --cache-size into force
            self._write_usage(used)
        log.info(
            "cache %s: %d MiB used of %d MiB",
            self.root.parent,
            used // MiB,
            self.limits.size // MiB,
        )

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def path_of(self, key: str) -> str:
        return str(self.entries / key[-2:] / key)

    def open_entry(self, key: str, size: int, digest: Digest | None) -> Entry:
        path = self.path_of(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        entry = Entry.open(path, size, self.limits.block_size, digest)
        if entry.created:
            self.reserve(entry.layout.data_offset)  # header and table take room too
        try:
            os.utime(entry.fd)  # its age for LRU eviction is the last time it was opened
        except OSError:
            pass
        return entry

    def released(self) -> None:
        """An entry of this process became evictable: room may be made again."""
        self._full_until = 0.0

    @property
    def used(self) -> int:
        with self._mutex:
            return self._read_usage()

    def reserve(self, nbytes: int) -> bool:
        """Room for `nbytes` more, evicting if needed; False when it cannot be made."""
        nbytes = -(-nbytes // 4096) * 4096  # what the filesystem allocates for it
        with self._locked():
            used = self._read_usage()
            if not self._fits(used, nbytes):
                if time.monotonic() < self._full_until:
                    self.stats.add(skipped_bytes=nbytes)
                    return False
                used = self._scan_and_evict(nbytes, low_water=True)
                if not self._fits(used, nbytes):
                    self._write_usage(used)
                    self._full_until = time.monotonic() + FULL_BACKOFF
                    self.stats.add(skipped_bytes=nbytes)
                    return False
            self._write_usage(used + nbytes)
            return True

    # -- inside the lock -----------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _fits(self, used: int, nbytes: int, slack: int = 0) -> bool:
        """Whether `nbytes` more fit, with `slack` bytes to spare on both limits."""
        # 1% of the limit stays free for what the filesystem itself allocates to
        # sparse files (extent blocks, a partial last page), which no count here sees.
        if used + nbytes + slack > self.limits.size - self.limits.size // 100:
            return False
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - nbytes - slack >= self.limits.min_free

    def _scan_and_evict(self, nbytes: int, *, low_water: bool = False) -> int:
        """Measure every entry; evict least recently used ones until `nbytes` fit (with
        `low_water`: until they fit below the low-water mark, when that can be done)."""
        slack = int(self.limits.size * (1 - LOW_WATER)) if low_water else 0
        found = []
        for path in self.entries.glob("*/*"):
            if ".tmp." in path.name:
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            found.append((st.st_mtime, str(path), st.st_blocks * 512))
        used = sum(size for _, _, size in found)
        found.sort()
        for _, victim, _size in found:
            if self._fits(used, nbytes, slack):
                break
            freed = try_evict(victim)
            if freed is None:
                continue  # open in some process: never evicted under a reader
            used -= freed
            self.stats.add(evictions=1, evicted_bytes=freed)
            log.info("cache: evicted %s (%d KiB)", os.path.basename(victim), freed // KiB)
        return used

    def _remove_stale_temps(self) -> None:
        # A temp file lives for milliseconds; its pid may be another container's
        # (another PID namespace), so only old ones of dead-looking owners go.
        old = time.time() - STALE_TEMP_AGE
        for path in self.entries.glob("*/*.tmp.*"):
            pid = tmp_owner(path.name)
            try:
                stale = path.stat().st_mtime < old
            except FileNotFoundError:
                continue
            if pid is not None and stale and not _alive(pid):
                path.unlink(missing_ok=True)

    def _read_usage(self) -> int:
        raw = os.pread(self._lock_fd, 8, 0)
        return int.from_bytes(raw, "little") if len(raw) == 8 else 0

    def _write_usage(self, used: int) -> None:
        os.pwrite(self._lock_fd, max(used, 0).to_bytes(8, "little"), 0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
