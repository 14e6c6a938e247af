"""The data-plane client library against a real `modelfs serve`, without FUSE."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio

from fusefs.data.bidi import StreamLimits
from fusefs.data.client import DataClient
from fusefs.data.errors import DataError, OverloadedError
from fusefs.data.reader import ReadLimits
from fusefs.hub.client import HubClient, RepoId
from fusefs.testing import MiB, sample_bytes, start_server, write_file

from support.doubles import RefusingStore
from support.readers import read_all

REPO = RepoId("acme", "data")
SIZE = 24 * MiB + 777


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    data = sample_bytes(SIZE, seed=11)
    write_file(root / "acme" / "data" / "blob.bin", data)
    handle = start_server(root, "--faults")
    yield handle, data
    handle.stop()


@pytest.fixture
def server(store):
    handle, data = store
    handle.clear_faults()
    handle.reset_stats()
    return handle, data


async def locate(hub_url: str, path: str, region: str | None = "local") -> str:
    async with HubClient(hub_url) as hub:
        snap = await hub.snapshot(REPO)
        answer = await hub.ask_location(REPO, snap.commit, path, region)
        assert answer.status == 302
        return answer.location


def fast_limits(**kw) -> dict:
    return {"stream_limits": StreamLimits(backoff_initial=0.01, **kw)}


async def test_sequential_read_is_byte_exact_over_one_stream(server):
    handle, data = server
    location = await locate(handle.hub, "blob.bin")
    async with DataClient() as client:
        reader = client.open_reader(location, SIZE)
        got = await read_all(reader)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert reader.source.counters.opens == 1 and reader.source.counters.reopens == 0
    assert sum(handle.stats()["streams_opened"].values()) == 1


async def test_many_concurrent_random_reads_share_the_stream(server):
    handle, data = server
    location = await locate(handle.hub, "blob.bin")
    rng = random.Random(5)
    async with DataClient() as client:
        reader = client.open_reader(location, SIZE)

        async def one(off, n):
            assert await reader.read(off, n) == data[off : off + n]

        async with trio.open_nursery() as nursery:
            for _ in range(64):
                off = rng.randrange(SIZE)
                nursery.start_soon(one, off, rng.choice([4096, 100_000, 3 * MiB]))
    assert sum(handle.stats()["streams_opened"].values()) == 1


async def test_broken_stream_reopens_once_per_break_and_stays_exact(server):
    handle, data = server
    handle.add_fault("break", after_bytes=5 * MiB + 3)
    location = await locate(handle.hub, "blob.bin")
    async with DataClient(**fast_limits()) as client:
        reader = client.open_reader(location, SIZE)
        assert await read_all(reader) == data
        # One break, one more generation, counted as a reopen whether the receive thread
        # starts it after its backoff or a read submitted meanwhile does.
        assert reader.source.counters.opens == 2
        assert reader.source.counters.reopens == 1
    assert handle.stats()["faults_injected"]["break"] == 1
    assert sum(handle.stats()["streams_opened"].values()) == 2


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("corrupt", {"count": 3}),
        ("unavailable", {"count": 3}),
        ("redirect", {"routing_token": "tok-1"}),
    ],
)
async def test_faults_never_reach_the_reader(server, kind, params):
    handle, data = server
    location = await locate(handle.hub, "blob.bin")
    handle.add_fault(kind, **params)
    async with DataClient(**fast_limits()) as client:
        reader = client.open_reader(location, SIZE)
        assert await read_all(reader) == data
        counters = reader.source.counters
    assert handle.stats()["faults_injected"][kind] >= 1
    if kind == "corrupt":
        assert counters.bad_chunks >= 1
    if kind == "redirect":
        assert counters.redirects == 1


async def test_persistent_failure_fails_the_read_within_bounds(server):
    handle, _ = server
    location = await locate(handle.hub, "blob.bin")
    handle.add_fault("unavailable", count=1000)
    async with DataClient(
        read_limits=ReadLimits(deadline=5), **fast_limits(max_attempts=3)
    ) as client:
        reader = client.open_reader(location, SIZE)
        with trio.fail_after(5):
            with pytest.raises(DataError):
                await reader.read(0, MiB)
        handle.clear_faults()
        # A failed stream stays retryable: the next read opens it afresh.
        assert len(await reader.read(0, MiB)) == MiB


async def test_a_file_that_changed_under_the_pin_is_refused(server):
    handle, _ = server
    location = await locate(handle.hub, "blob.bin")
    async with DataClient(**fast_limits()) as client:
        reader = client.open_reader(location, SIZE - 1)  # the listing said otherwise
        with pytest.raises(DataError):
            await reader.read(0, 10)


# -- a store that is full ---------------------------------------------------------------

BUSY = StreamLimits(
    max_attempts=3,
    backoff_initial=0.001,
    backoff_max=0.002,
    busy_backoff_initial=0.001,
    busy_backoff_max=0.005,
)


async def test_a_full_store_is_asked_again_on_the_same_stream_past_the_break_limit():
    data = sample_bytes(100_000, seed=12)
    store = RefusingStore(data, refusals=12)  # more than max_attempts breaks would allow
    try:
        async with DataClient(stream_limits=BUSY) as client:
            reader = client.open_reader(store.location, len(data))
            with trio.fail_after(20):
                assert await read_all(reader) == data
            assert reader.source.counters.refusals == 12 == store.refused
            assert reader.source.counters.reopens == 12
    finally:
        store.stop()


async def test_a_store_that_stays_full_fails_the_read_after_the_busy_window():
    data = sample_bytes(1000, seed=13)
    store = RefusingStore(data, refusals=10**9)
    limits = StreamLimits(busy_window=0.3, busy_backoff_initial=0.01, busy_backoff_max=0.05)
    try:
        async with DataClient(stream_limits=limits) as client:
            reader = client.open_reader(store.location, len(data))
            with trio.fail_after(20), pytest.raises(OverloadedError):
                await reader.read(0, len(data))
    finally:
        store.stop()
