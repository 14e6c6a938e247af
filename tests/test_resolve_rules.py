"""Region resolution rules, one test each, on a scripted hub (pure logic, no network)."""

from __future__ import annotations

import pytest
import trio

from fusefs.hub.client import Answer, HubError, RepoId
from fusefs.hub.resolve import ResolveError, Resolver

from support.doubles import CDN, ScriptedHub

REPO = RepoId("acme", "llm")


async def test_order_is_local_then_peers_in_order_then_cdn():
    hub = ScriptedHub({"b": {"f"}, "c": {"f"}})
    r = Resolver(hub, "a", ("b", "c"))
    res = await r.resolve(REPO, "c1", "f")
    assert (res.source, res.region) == ("peer", "b")
    assert [c[2] for c in hub.calls] == ["a", "b"]
    hub2 = ScriptedHub({"a": {"f"}, "b": {"f"}})
    res2 = await Resolver(hub2, "a", ("b",)).resolve(REPO, "c1", "f")
    assert (res2.source, res2.region) == ("local", "a") and len(hub2.calls) == 1
    hub3 = ScriptedHub({})
    res3 = await Resolver(hub3, "a", ("b", "c")).resolve(REPO, "c1", "f")
    assert res3.source == "cdn" and res3.location == CDN + "f"


async def test_single_flight_for_identical_concurrent_probes():
    hub = ScriptedHub({"a": {"f"}}, delay=0.05)
    r = Resolver(hub, "a")
    results = []

    async def probe():
        results.append(await r._probe(REPO, "c1", "f", "a"))

    async with trio.open_nursery() as n:
        for _ in range(10):
            n.start_soon(probe)
    assert len(hub.calls) == 1
    assert len(results) == 10 and all(a is results[0] for a in results)


async def test_followers_of_a_probe_that_found_nothing_get_its_404():
    hub = ScriptedHub({"a": {"f"}}, delay=0.05)
    hub.missing.add("gone")
    r = Resolver(hub, "a", ("b",))
    await r.resolve(REPO, "c1", "f")  # the repo's winner is known: opens go straight to it
    outcomes: list[object] = []

    async def open_gone():
        try:
            outcomes.append(await r.resolve(REPO, "c1", "gone"))
        except ResolveError as e:
            outcomes.append(e)

    async with trio.open_nursery() as n:
        for _ in range(5):
            n.start_soon(open_gone)
    assert len(outcomes) == 5
    assert all(isinstance(o, ResolveError) and "not found" in str(o) for o in outcomes)
    assert [c for c in hub.calls if c[1] == "gone"] == [("c1", "gone", "a")]  # one probe


async def test_repo_winner_tried_first_and_n_plus_p_probes_from_many_tasks():
    files = [f"shard-{i}" for i in range(200)]
    hub = ScriptedHub({"p3": set(files)}, delay=0.001)
    r = Resolver(hub, "local", ("p1", "p2", "p3"))
    limiter = trio.CapacityLimiter(8)

    async def open_one(path):
        async with limiter:
            res = await r.resolve(REPO, "c1", path)
            assert (res.source, res.region) == ("peer", "p3")

    async with trio.open_nursery() as n:
        for f in files:
            n.start_soon(open_one, f)
    assert len(hub.calls) <= len(files) + 3  # N + P
    # versus N*(1+P) when each file walks every region
    assert len(hub.calls) < len(files) * 4


async def test_files_in_different_regions_never_share_a_result():
    hub = ScriptedHub({"b": {"f1"}, "c": {"f2"}})
    r = Resolver(hub, "a", ("b", "c"))
    first = await r.resolve(REPO, "c1", "f1")
    second = await r.resolve(REPO, "c1", "f2")
    assert first.region == "b" and second.region == "c"
    assert "f2" in second.location and "/c/" in second.location
    assert [c[2] for c in hub.calls if c[1] == "f2"] == ["b", "a", "c"]  # winner first, then order


async def test_revision_is_part_of_every_key():
    hub = ScriptedHub({"b": {"f"}})
    r = Resolver(hub, "a", ("b",))
    await r.resolve(REPO, "commit-1", "f")
    hub.holders = {"a": {"f"}}
    res = await r.resolve(REPO, "commit-2", "f")
    assert res.region == "a"  # commit-1's winner was not used for commit-2
    assert [c[2] for c in hub.calls if c[0] == "commit-2"] == ["a"]


async def test_transient_failures_are_not_cached():
    hub = ScriptedHub({"b": {"f", "g"}})
    hub.fail["b"] = [HubError("refused")] * 3  # every attempt of the first walk fails
    r = Resolver(hub, "a", ("b",))
    first = await r.resolve(REPO, "c1", "f")
    assert first.source == "cdn"
    second = await r.resolve(REPO, "c1", "g")
    assert (second.source, second.region) == ("peer", "b")  # the failure was not remembered
    hub.fail["b"] = [503]
    third = await r.resolve(REPO, "c2", "f")  # a 5xx is retried within the probe
    assert third.region == "b"


async def test_all_miss_is_cached_briefly_only(autojump_clock):
    hub = ScriptedHub({})
    r = Resolver(hub, "a", ("b", "c"), miss_ttl=10)
    await r.resolve(REPO, "c1", "f1")
    assert len(hub.calls) == 3
    await r.resolve(REPO, "c1", "f2")
    assert len(hub.calls) == 4  # remembered: one probe for the public location
    hub.holders = {"c": {"f3"}}
    await trio.sleep(11)  # the miss expired
    res = await r.resolve(REPO, "c1", "f3")
    assert res.region == "c"


async def test_inline_answer_does_not_decide_routing():
    hub = ScriptedHub({"b": {"big.safetensors"}})
    hub.inline.add("config.json")
    r = Resolver(hub, "a", ("b",))
    small = await r.resolve(REPO, "c1", "config.json")
    assert small.source == "cdn" and small.location == "http://hub/acme/llm/c1/config.json"
    big = await r.resolve(REPO, "c1", "big.safetensors")
    assert (big.source, big.region) == ("peer", "b")


async def test_excluded_region_falls_back_to_the_next_candidate():
    hub = ScriptedHub({"b": {"f"}, "c": {"f"}})
    r = Resolver(hub, "a", ("b", "c"))
    assert (await r.resolve(REPO, "c1", "f")).region == "b"
    fallback = await r.resolve(REPO, "c1", "f", exclude=frozenset({"b"}))
    assert fallback.region == "c"


async def test_missing_file_is_an_error():
    class Missing(ScriptedHub):
        async def ask_location(self, *a):
            self.calls.append(a)
            return Answer(404, None)

    with pytest.raises(ResolveError):
        await Resolver(Missing({}), "a").resolve(REPO, "c1", "f")


async def test_the_winners_naming_predicts_the_repos_other_files_never_the_cdn():
    hub = ScriptedHub({"b": {"f", "d/g"}})
    r = Resolver(hub, "a", ("b",))
    assert r.predict(REPO, "c1", "f") is None  # nothing learned yet
    await r.resolve(REPO, "c1", "f")
    guess = r.predict(REPO, "c1", "d/g")
    assert (guess.source, guess.region) == ("peer", "b")
    assert guess.location == "grpc://b.store:443/b/acme/llm/d/g?generation=0"
    assert r.predict(REPO, "c2", "d/g") is None  # another commit: nothing known
    cdn = Resolver(ScriptedHub({}), "a", ("b",))
    await cdn.resolve(REPO, "c1", "f")
    assert cdn.predict(REPO, "c1", "g") is None
