"""The disk cache's own logic, on a real directory: format, claims, sealing, eviction."""

from __future__ import annotations

import hashlib
import itertools
import os

import crc32c
import pytest

from fusefs.cache.digest import Digest
from fusefs.cache.entry import Entry, Layout, is_sealed, try_evict
from fusefs.cache.source import segments
from fusefs.cache.store import CacheLimits, DiskCache, cache_key

BLOCK = 64 << 10


def entry_at(tmp_path, data: bytes, digest: Digest | None = None, name: str = "e") -> Entry:
    return Entry.open(str(tmp_path / name), len(data), BLOCK, digest)


def fill(entry: Entry, data: bytes) -> None:
    entry.write([data], range(entry.layout.blocks))


def test_layout_blocks_and_spans():
    lay = Layout(size=3 * BLOCK + 5, block_size=BLOCK)
    assert lay.blocks == 4
    assert lay.block_span(3) == (3 * BLOCK, 3 * BLOCK + 5)
    assert lay.block_range(BLOCK - 1, BLOCK + 1) == range(2)
    assert lay.data_offset % 4096 == 0 and lay.data_offset >= 64 + 8 * 4


def test_segments_split_runs_in_order():
    lay = Layout(size=5 * BLOCK, block_size=BLOCK)
    parts = segments(lay, range(5), [True, True, False, True, False])
    assert [(p.blocks, p.on_disk) for p in parts] == [
        (range(2), True),
        (range(2, 3), False),
        (range(3, 4), True),
        (range(4, 5), False),
    ]
    assert parts[1].start == 2 * BLOCK and parts[1].end == 3 * BLOCK


def test_write_then_read_round_trip_only_present_blocks(tmp_path):
    data = os.urandom(3 * BLOCK + 100)
    e = entry_at(tmp_path, data)
    assert e.created and e.present(range(4)) == [False] * 4
    e.write([data[BLOCK : 2 * BLOCK], data[2 * BLOCK : 3 * BLOCK]], range(1, 3))
    assert e.present(range(4)) == [False, True, True, False]
    assert e.read(BLOCK, 3 * BLOCK) == data[BLOCK : 3 * BLOCK]
    assert e.read(0, 2 * BLOCK) is None  # block 0 is not there
    e.write([data[3 * BLOCK :]], range(3, 4))
    assert e.read(3 * BLOCK, len(data)) == data[3 * BLOCK :]
    e.close()
    again = entry_at(tmp_path, data)  # another process's view: same bytes, nothing created
    assert not again.created and again.read(BLOCK, len(data)) == data[BLOCK:]
    again.close()


def test_damaged_block_is_never_served_and_is_forgotten(tmp_path):
    data = os.urandom(4 * BLOCK)
    e = entry_at(tmp_path, data)
    fill(e, data)
    e.close()
    with open(tmp_path / "e", "r+b") as f:  # flip one byte in block 2, as a bad disk would
        pos = Layout(len(data), BLOCK).data_offset + 2 * BLOCK + 17
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))
    e = entry_at(tmp_path, data)
    assert e.read(0, 2 * BLOCK) == data[: 2 * BLOCK]
    assert e.read(0, 4 * BLOCK) is None
    assert e.present(range(4)) == [True, True, False, True]
    e.close()


def test_write_takes_pieces_that_straddle_blocks(tmp_path):
    data = os.urandom(3 * BLOCK + 11)
    e = entry_at(tmp_path, data)
    view = memoryview(data)
    cuts = [0, 1, BLOCK + 5, BLOCK + 6, 3 * BLOCK + 2, len(data)]  # as received: odd sizes
    e.write([view[a:b] for a, b in itertools.pairwise(cuts)], range(4))
    e.close()
    fresh = entry_at(tmp_path, data)  # its CRCs are checked on this first read
    assert fresh.read(0, len(data)) == data
    with pytest.raises(ValueError):
        fresh.write([view[:BLOCK]], range(2))
    fresh.close()


def test_claims_exclude_other_open_files_all_or_nothing(tmp_path):
    data = bytes(8 * BLOCK)
    a, b = entry_at(tmp_path, data), entry_at(tmp_path, data)
    assert a.claim(range(4))
    assert not b.claim(range(3, 6))
    assert b.claim(range(4, 8))
    a.release(range(4))
    assert b.claim(range(4))
    a.close()
    b.close()


@pytest.mark.parametrize("kind", ["sha256", "md5", "crc32c"])
def test_seal_checks_the_listing_digest(tmp_path, kind):
    def digest(data: bytes) -> Digest:
        if kind == "crc32c":
            return Digest("crc32c", crc32c.crc32c(data).to_bytes(4, "big"))
        return Digest(kind, hashlib.new(kind, data).digest())

    data = os.urandom(2 * BLOCK + 3)
    good = digest(data)
    e = entry_at(tmp_path, data, good, "good")
    e.write([data[:BLOCK]], range(1))
    assert e.verify_and_seal() is None  # not all here yet
    fill(e, data)
    assert e.verify_and_seal() is True and e.complete()
    assert is_sealed(e.path, e.layout, good)
    assert not is_sealed(e.path, e.layout, digest(b"other"))
    e.close()
    e = entry_at(tmp_path, data, digest(b"something else"), "bad")
    fill(e, data)
    assert e.verify_and_seal() is False
    assert not e.complete() and e.present(range(3)) == [False] * 3
    e.close()


def test_entry_in_use_is_not_evicted_until_paused(tmp_path):
    data = os.urandom(2 * BLOCK)
    e = entry_at(tmp_path, data)
    fill(e, data)
    assert try_evict(e.path) is None
    e.pause()
    assert try_evict(e.path) >= 2 * BLOCK
    assert not os.path.exists(e.path)
    assert e.resume() is False  # evicted meanwhile: the caller opens a fresh one
    e.close()


def test_unusable_file_is_discarded_and_made_anew(tmp_path):
    (tmp_path / "e").write_bytes(b"not a cache entry at all" * 10)
    e = entry_at(tmp_path, bytes(BLOCK))
    assert e.present(range(1)) == [False]
    e.close()
    other_size = entry_at(tmp_path, bytes(3 * BLOCK))  # same key, other size: replaced
    assert other_size.layout.blocks == 3
    other_size.close()


def test_keys_are_content_addresses():
    sha = Digest.sha256("AB" * 32)
    assert (
        cache_key(sha, 5, "a/b", "c1", "x")
        == cache_key(sha, 6, "z/y", "c2", "w")
        == "sha256-" + "ab" * 32
    )
    assert cache_key(None, 5, "a/b", "c1", "x") != cache_key(None, 5, "a/b", "c2", "x")
    md5 = Digest("md5", bytes(range(16)))  # an object's MD5 and size address its content
    assert cache_key(md5, 5, "a/b", "generation 1", "x") == cache_key(md5, 5, "z/y", "c", "w")
    assert cache_key(md5, 5, "a/b", "c", "x") != cache_key(md5, 6, "a/b", "c", "x")
    crc = Digest("crc32c", b"\x01\x02\x03\x04")  # too weak to: named by the object
    assert cache_key(crc, 5, "a/b", "generation 1", "x") != cache_key(crc, 5, "z/y", "c", "w")
    assert cache_key(crc, 5, "a/b", "generation 1", "x") == cache_key(
        None, 5, "a/b", "generation 1", "x"
    )


def disk(tmp_path, size: int) -> DiskCache:
    cache = DiskCache(tmp_path / "cache", CacheLimits(size=size, min_free=1, block_size=BLOCK))
    cache.open()
    return cache


def test_reserve_evicts_least_recently_used_and_never_open_entries(tmp_path):
    cache = disk(tmp_path, 40 * BLOCK)
    entries = []
    for i in range(3):
        e = cache.open_entry(f"path-{i:02d}", 12 * BLOCK, None)
        assert cache.reserve(12 * BLOCK)
        fill(e, os.urandom(12 * BLOCK))
        os.utime(e.fd, (1000 + i, 1000 + i))  # entry 0 is the least recently used
        entries.append(e)
    entries[0].pause()
    entries[2].pause()
    # 36 blocks used plus metadata: 10 more need room; entry 1 is open, so 0 goes
    assert cache.reserve(10 * BLOCK)
    assert not os.path.exists(entries[0].path)
    assert os.path.exists(entries[1].path) and os.path.exists(entries[2].path)
    assert cache.stats.evictions == 1
    # more than the limit can ever hold while entry 1 is open: refused, nothing lost
    assert not cache.reserve(30 * BLOCK)
    assert os.path.exists(entries[1].path)
    assert cache.stats.skipped_bytes >= 30 * BLOCK
    for e in entries:
        e.close()
    cache.close()


def test_open_removes_temp_files_of_dead_processes_and_recounts(tmp_path):
    cache = disk(tmp_path, 1 << 30)
    e = cache.open_entry("path-aa", 4 * BLOCK, None)
    fill(e, os.urandom(4 * BLOCK))
    e.close()
    cache.close()
    stale = cache.entries / "aa" / "path-aa.tmp.999999999.0000"
    stale.write_bytes(b"half made")
    os.utime(stale, (1000, 1000))  # long ago: its maker is gone
    young = cache.entries / "aa" / "path-cc.tmp.999999999.0000"
    young.write_bytes(b"maybe another container's, being made now")
    mine = cache.entries / "aa" / f"path-bb.tmp.{os.getpid()}.0000"
    mine.write_bytes(b"being made")
    again = disk(tmp_path, 1 << 30)
    assert not stale.exists() and mine.exists() and young.exists()
    assert 4 * BLOCK <= again.used <= 4 * BLOCK + 16 * 4096
    again.close()


def test_shrunk_limit_takes_effect_at_open(tmp_path):
    cache = disk(tmp_path, 1 << 30)
    for i in range(4):
        e = cache.open_entry(f"path-{i:02d}", 8 * BLOCK, None)
        fill(e, os.urandom(8 * BLOCK))
        e.close()
    cache.close()
    small = disk(tmp_path, 20 * BLOCK)
    assert small.used <= 20 * BLOCK
    assert small.stats.evictions >= 2
    small.close()


@pytest.mark.parametrize("size", [1, BLOCK - 1, BLOCK, BLOCK + 1])
def test_small_and_edge_sizes(tmp_path, size):
    data = os.urandom(size)
    e = entry_at(tmp_path, data, Digest.sha256(hashlib.sha256(data).hexdigest()))
    fill(e, data)
    assert e.read(0, size) == data
    assert e.verify_and_seal() is True
    e.close()


def count_scans(cache: DiskCache, monkeypatch) -> list[int]:
    """A list that grows by one for every directory scan the cache makes."""
    scans: list[int] = []
    scan = cache._scan_and_evict

    def counted(*args, **kwargs):
        scans.append(1)
        return scan(*args, **kwargs)

    monkeypatch.setattr(cache, "_scan_and_evict", counted)
    return scans


def test_a_full_cache_evicts_to_a_low_water_mark_not_one_scan_per_block(tmp_path, monkeypatch):
    cache = disk(tmp_path, 100 * BLOCK)
    for i in range(150):  # far more than fits: the cache is full, of closed entries
        e = cache.open_entry(f"path-{i:03d}", BLOCK, None)
        if cache.reserve(BLOCK):
            fill(e, os.urandom(BLOCK))
        os.utime(e.fd, (1000 + i, 1000 + i))
        e.close()
    scans, reservations = count_scans(cache, monkeypatch), 60
    for _ in range(reservations):
        assert cache.reserve(BLOCK)
    assert cache.used <= 100 * BLOCK
    # each scan frees a tenth of the limit (10 blocks): at most one per 10 reservations
    assert len(scans) <= reservations // 10 + 1, len(scans)
    cache.close()


def test_a_cache_that_cannot_make_room_refuses_without_rescanning(tmp_path, monkeypatch):
    cache = disk(tmp_path, 20 * BLOCK)
    held = cache.open_entry("path-held", 16 * BLOCK, None)  # open: never evicted
    assert cache.reserve(16 * BLOCK)
    fill(held, os.urandom(16 * BLOCK))
    scans = count_scans(cache, monkeypatch)
    for _ in range(20):
        assert not cache.reserve(4 * BLOCK)
    assert len(scans) == 1
    held.close()
    cache.close()
