"""Range bookkeeping: in-order feeding, waiting, views, gaps and sequential runs."""

import random

import pytest
import trio

from fusefs.data.errors import ProtocolError, TransientError
from fusefs.data.memory_budget import MemoryBudget
from fusefs.data.ranges import Gap, RangeMap, RangeRead, SequentialTracker, aligned_pieces

from support.doubles import InstantSource


def immediate(fn):
    fn()


def test_feed_in_order_and_view_across_chunks():
    rr = RangeRead(100, 10, immediate)
    assert not rr.feed(100, b"abcd")
    assert rr.next_offset == 104
    assert rr.feed(104, b"efghij")
    assert rr.done
    assert b"".join(rr.view(102, 108)) == b"cdefgh"
    assert b"".join(rr.view(100, 110)) == b"abcdefghij"


@pytest.mark.parametrize(("offset", "data"), [(101, b"x"), (99, b"x"), (100, b"x" * 11)])
def test_feed_rejects_unexpected_offsets_and_overruns(offset, data):
    rr = RangeRead(100, 10, immediate)
    with pytest.raises(ProtocolError):
        rr.feed(offset, data)
    assert rr.next_offset == 100


def test_view_of_bytes_not_received_is_refused():
    rr = RangeRead(0, 10, immediate)
    rr.feed(0, b"abc")
    with pytest.raises(ValueError):
        rr.view(0, 4)


async def test_waiters_wake_when_their_prefix_arrives():
    rr = RangeRead(0, 8, immediate)
    woke = []

    async def waiter(end):
        await rr.wait_until(end)
        woke.append(end)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, 4)
        nursery.start_soon(waiter, 8)
        await trio.testing.wait_all_tasks_blocked()
        rr.feed(0, b"abcd")
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [4]
        rr.feed(4, b"efgh")
    assert sorted(woke) == [4, 8]


async def test_failure_reaches_every_waiter():
    rr = RangeRead(0, 8, immediate)
    errors = []

    async def waiter():
        try:
            await rr.wait_until(8)
        except TransientError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        rr.fail(TransientError("broken"))
    assert len(errors) == 3


def test_range_map_gaps_and_overlap_refusal():
    m = RangeMap()
    m.add(RangeRead(10, 10, immediate))
    m.add(RangeRead(30, 5, immediate))
    assert m.gaps(0, 40) == [Gap(0, 10), Gap(20, 30), Gap(35, 40)]
    assert m.gaps(12, 18) == []
    assert [r.offset for r in m.overlapping(15, 31)] == [10, 30]
    with pytest.raises(ValueError):
        m.add(RangeRead(19, 2, immediate))


def test_aligned_pieces():
    assert list(aligned_pieces(Gap(5, 25), 10)) == [Gap(5, 10), Gap(10, 20), Gap(20, 25)]


def test_sequential_run_window_grows_and_random_reads_get_none():
    t = SequentialTracker(initial=4, maximum=32)
    assert t.observe(0, 4) == (4, 8)  # a read at 0 starts a run
    assert t.observe(4, 4) == (8, 16)
    assert t.observe(8, 4) == (12, 28)
    assert t.observe(12, 4) == (16, 48)
    start, end = t.observe(1000, 4)  # far away: a new run, no prefetch
    assert end == start


def test_interleaved_sequential_readers_keep_their_windows():
    t = SequentialTracker(initial=4, maximum=64)
    a, b = 0, 10_000
    for _ in range(4):  # two readers, strictly alternating
        t.observe(a, 4)
        t.observe(b, 4)
        a += 4
        b += 4
    sa, ea = t.observe(a, 4)
    sb, eb = t.observe(b, 4)
    assert ea - sa >= 32 and eb - sb >= 32


def test_kernel_reordering_within_the_window_stays_sequential():
    t = SequentialTracker(initial=4, maximum=64)
    t.observe(0, 4)
    t.observe(8, 4)  # the request for [4, 8) arrives later
    s, e = t.observe(4, 4)
    assert e - s >= 16


def test_random_reads_near_a_run_by_chance_start_no_prefetch():
    t = SequentialTracker(initial=4 << 20, maximum=64 << 20)
    rng = random.Random(3)
    ahead = 0
    for _ in range(10_000):
        start, end = t.observe(rng.randrange(4096, 1 << 30, 4096), 4096)
        ahead += end - start
    # 10,000 random 4 KiB reads of a 1 GiB file: a few may land right after another
    assert ahead <= 4 * (4 << 20)


def test_budget_evicts_settled_ranges_lru_and_never_arriving_ones():
    budget = MemoryBudget(100)
    detached = []
    a, b, c = (RangeRead(i * 40, 40, immediate) for i in range(3))
    assert budget.charge(a, detached.append, force=False)
    assert budget.charge(b, detached.append, force=False)
    # Nothing settled yet: a non-forced request does not fit and evicts nothing.
    assert not budget.charge(c, detached.append, force=False)
    assert budget.in_use == 80 and detached == []
    a.feed(0, b"x" * 40)
    b.feed(40, b"x" * 40)
    budget.touch(a)  # b is now least recently used
    assert budget.charge(c, detached.append, force=False)
    assert detached == [b] and budget.in_use == 80 and budget.evictions == 1


def test_budget_forced_charge_goes_over_when_nothing_can_go():
    budget = MemoryBudget(10)
    a = RangeRead(0, 8, immediate)
    b = RangeRead(8, 8, immediate)
    assert budget.charge(a, lambda rr: None, force=True)
    assert budget.charge(b, lambda rr: None, force=True)
    assert budget.in_use == 16
    budget.drop(a)
    assert budget.in_use == 8


async def test_reader_never_loses_a_range_it_is_assembling_to_eviction():
    from fusefs.data.reader import FileReader, ReadLimits

    data = bytes(range(256)) * 4
    budget = MemoryBudget(16)
    source = InstantSource(data)
    reader = FileReader(
        source,
        len(data),
        budget,
        ReadLimits(range_unit=64, prefetch_initial=0, prefetch_max=0),
        immediate,
    )
    assert bytes(await reader.read(100, 8)) == data[100:108]
    # [104, 130) is half cached; charging the new part must not evict the cached half.
    assert bytes(await reader.read(104, 26)) == data[104:130]
    assert source.submitted == [(100, 8), (108, 20), (128, 2)]
    for off, n in [(0, 40), (500, 300), (90, 200), (1000, 24)]:
        assert bytes(await reader.read(off, n)) == data[off : off + n]
