"""What a running mount reports about itself: `modelfs status` and Prometheus.

Both read the live objects (open files, streams, resolver, budget) when asked,
so the read path pays nothing for them except the latency histograms.
"""

from __future__ import annotations

import json
import time

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STATUS_XATTR = b"user.modelfs.status"
STATUS_MAX_BYTES = 60_000  # the JSON must fit one xattr value (64 KiB at most)


class ReadTimings:
    """Latency histograms, fed by the read path."""

    def __init__(self, registry: CollectorRegistry):
        buckets = (
            0.0005,
            0.001,
            0.0025,
            0.005,
            0.01,
            0.025,
            0.05,
            0.1,
            0.25,
            0.5,
            1,
            2.5,
            5,
            10,
            30,
        )
        self.read = Histogram(
            "modelfs_read_seconds",
            "Time to serve one FUSE read",
            registry=registry,
            buckets=buckets,
        )
        self.first_byte = Histogram(
            "modelfs_first_byte_seconds",
            "From open of a cold file to its first byte served",
            registry=registry,
            buckets=buckets,
        )


def snapshot(fs) -> dict:
    """The mount's state as plain data (fs is a ModelFS)."""
    files = []
    for opened in list(fs.files.values()):  # a copy: the metrics thread reads it too
        src = opened.reader.source
        counters = getattr(src, "counters", None)
        files.append(
            {
                "path": opened.reader.name,
                "marker": opened.resolution.marker,
                "source": opened.resolution.source,
                "region": opened.resolution.region,
                "endpoint": opened.resolution.location,
                "handles": opened.handles,
                "bytes_read": opened.bytes_read,
                "stream_opens": counters.opens if counters else 0,
                "stream_reopens": counters.reopens if counters else 0,
                "http_retries": getattr(src, "retries", 0),
                "buffered": opened.reader.buffered,
            }
        )
    files.sort(key=lambda f: f["path"])
    state = {
        "mountpoint": fs.settings_view.get("mountpoint"),
        "settings": fs.settings_view,
        "uptime_seconds": round(time.monotonic() - fs.started, 1),
        "region": fs.resolver.region,
        "peers": list(fs.resolver.peers),
        "repos": [f"{s.repo}@{s.revision} ({s.commit[:12]})" for s in fs.tree.snapshots()],
        "files_open": len(files),
        "bytes_read": dict(fs.bytes_by_source),
        "stream_opens": sum(f["stream_opens"] for f in files),
        "stream_reopens": sum(f["stream_reopens"] for f in files),
        "retries": sum(f["stream_reopens"] + f["http_retries"] for f in files),
        "probes": dict(fs.resolver.probes),
        "memory": {
            "in_use": fs.data.budget.in_use,
            "limit": fs.data.budget.limit,
            "evictions": fs.data.budget.evictions,
        },
        "errors": dict(fs.errors),
        "read_sizes": dict(fs.read_sizes.most_common(5)),
        "cache": _cache_state(fs.cache),
        "files": [],
        "files_not_listed": len(files),
    }
    # List files in path order while the whole JSON still fits one xattr value.
    room = STATUS_MAX_BYTES - len(json.dumps(state, ensure_ascii=False).encode())
    for f in files:
        room -= len(json.dumps(f, ensure_ascii=False).encode()) + 2
        if room < 0:
            break
        state["files"].append(f)
    state["files_not_listed"] = len(files) - len(state["files"])
    return state


def _cache_state(cache) -> dict | None:
    if cache is None:
        return None
    disk = cache.disk
    return {
        "dir": str(disk.root.parent),
        "limit": disk.limits.size,
        "min_free": disk.limits.min_free,
        "used": disk.used,
        **disk.stats.view(),
    }


class _Collector:
    def __init__(self, fs):
        self.fs = fs

    def collect(self):
        state = snapshot(self.fs)
        read = CounterMetricFamily(
            "modelfs_read_bytes", "Bytes served to readers, by source", labels=["source"]
        )
        for source, n in state["bytes_read"].items():
            read.add_metric([source], n)
        yield read
        probes = CounterMetricFamily(
            "modelfs_probes", "Region probes sent to the hub, by outcome", labels=["outcome"]
        )
        for outcome, n in state["probes"].items():
            probes.add_metric([outcome], n)
        yield probes
        yield CounterMetricFamily(
            "modelfs_stream_opens", "Data streams opened", value=state["stream_opens"]
        )
        yield CounterMetricFamily(
            "modelfs_stream_reopens",
            "Data streams reopened after a break",
            value=state["stream_reopens"],
        )
        yield CounterMetricFamily(
            "modelfs_retries", "Stream reopens and HTTP range retries", value=state["retries"]
        )
        errors = CounterMetricFamily(
            "modelfs_errors", "Errors returned to readers, by kind", labels=["kind"]
        )
        for kind, n in state["errors"].items():
            errors.add_metric([kind], n)
        yield errors
        memory = GaugeMetricFamily("modelfs_memory_bytes", "Memory budget", labels=["state"])
        memory.add_metric(["in_use"], state["memory"]["in_use"])
        memory.add_metric(["limit"], state["memory"]["limit"])
        yield memory
        if cache := state["cache"]:
            moved = CounterMetricFamily(
                "modelfs_cache_bytes",
                "Disk cache traffic: hit (served from disk), miss "
                "(fetched through it), written, evicted",
                labels=["kind"],
            )
            for kind in ("hit", "miss", "written", "evicted"):
                moved.add_metric([kind], cache[f"{kind}_bytes"])
            yield moved
            yield CounterMetricFamily(
                "modelfs_cache_evictions",
                "Files evicted from the disk cache",
                value=cache["evictions"],
            )
            yield CounterMetricFamily(
                "modelfs_cache_damaged_blocks",
                "Cached blocks that failed their checksum (refetched)",
                value=cache["damaged_blocks"],
            )
            used = GaugeMetricFamily(
                "modelfs_cache_disk_bytes", "Disk cache size", labels=["state"]
            )
            used.add_metric(["used"], cache["used"])
            used.add_metric(["limit"], cache["limit"])
            yield used
        yield GaugeMetricFamily(
            "modelfs_open_files", "Files with a data path", value=state["files_open"]
        )


def serve_metrics(fs, registry: CollectorRegistry, address: str) -> None:
    """Prometheus text endpoint on HOST:PORT, in a background thread."""
    registry.register(_Collector(fs))
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host, registry=registry)
