"""What a running mount reports about itself: `modelfs status` and Prometheus.

Both read the live objects (open files, streams, resolver, budget) when asked,
so the read path pays nothing for them except the latency histograms. The
objects belong to the trio thread; the Prometheus thread asks that thread for a
snapshot rather than reading them while they change.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fusefs.cache.source import FileCache
from fusefs.data.source import SourceCounters
from fusefs.vfs.filesystem import Filesystem

STATUS_XATTR = b"user.modelfs.status"
STATUS_MAX_BYTES = 60_000  # the JSON must fit one xattr value (64 KiB at most)


def snapshot(fs: Filesystem, settings_view: dict[str, object]) -> dict[str, Any]:
    """The mount's state as plain data; call on the trio thread."""
    files: list[dict[str, Any]] = []
    moved = SourceCounters()
    moved.add(fs.counters.retired)
    for inode, path in fs.files.items():
        mine = path.counters
        moved.add(mine)
        files.append(
            {
                "path": path.file.path,
                "marker": path.resolution.marker,
                "source": path.resolution.source,
                "region": path.resolution.region,
                "endpoint": path.resolution.location,
                "handles": fs.handles(inode),
                "bytes_read": path.bytes_read,
                "stream_opens": mine.opens,
                "stream_reopens": mine.reopens,
                "http_retries": mine.retries,
                "buffered": path.reader.buffered,
            }
        )
    files.sort(key=lambda f: f["path"])
    resolver, data, served = fs.services.resolver, fs.services.data, fs.counters
    budget, slots = data.budget, data.slots
    state: dict[str, Any] = {
        "mountpoint": settings_view.get("mountpoint"),
        "settings": settings_view,
        "uptime_seconds": round(time.monotonic() - fs.started, 1),
        "region": resolver.region,
        "peers": list(resolver.peers),
        "repos": [f"{s.repo}@{s.revision} ({s.commit[:12]})" for s in fs.tree.snapshots()],
        "files_open": fs.files.with_handles,  # with a handle open right now
        "data_paths": len(fs.files),  # open files, and closed ones still lingering
        "data_paths_closed": fs.files.closed,
        "streams": {
            "open": slots.open,
            "limit": slots.limit,
            "peak": slots.peak,
            "waiting": slots.waiting,
            "waited": slots.waits,
            "closed_idle": slots.closed_idle,
        },
        "descriptors": descriptors(),
        "bytes_read": dict(served.bytes_by_source),
        "stream_opens": moved.opens,
        "stream_reopens": moved.reopens,
        "stream_refusals": moved.refusals,
        "retries": moved.reopens + moved.retries,
        "probes": dict(resolver.probes),
        "media_buckets": sorted(data.media_buckets),  # refused bidi reads: media GETs
        "memory": {"in_use": budget.in_use, "limit": budget.limit, "evictions": budget.evictions},
        "errors": dict(served.errors),
        "read_sizes": dict(served.read_sizes.most_common(5)),
        "cache": _cache_state(fs.services.cache),
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


def descriptors() -> dict[str, int]:
    """File descriptors this process has open, and its (soft) limit."""
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # less the one listing them
    except OSError:
        used = -1
    return {"open": used, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


def _cache_state(cache: FileCache | None) -> dict[str, Any] | None:
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
    def __init__(
        self, fs: Filesystem, settings_view: dict[str, object], token: trio.lowlevel.TrioToken
    ) -> None:
        self.fs = fs
        self.settings_view = settings_view
        self.token = token

    def collect(self) -> Iterator[Metric]:
        # On the exporter's thread: the snapshot itself is taken on the trio thread.
        state = trio.from_thread.run_sync(
            snapshot, self.fs, self.settings_view, trio_token=self.token
        )
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
            "modelfs_open_files", "Files with a handle open", value=state["files_open"]
        )
        yield GaugeMetricFamily(
            "modelfs_data_paths",
            "Files with a data path (open, or closed and lingering)",
            value=state["data_paths"],
        )
        streams = GaugeMetricFamily("modelfs_streams", "Data streams", labels=["state"])
        for key in ("open", "limit", "peak", "waiting"):
            streams.add_metric([key], state["streams"][key])
        yield streams
        yield CounterMetricFamily(
            "modelfs_stream_refusals",
            "Streams refused by a full store (RESOURCE_EXHAUSTED), then asked again",
            value=state["stream_refusals"],
        )
        fds = GaugeMetricFamily(
            "modelfs_descriptors", "File descriptors of the mount process", labels=["state"]
        )
        fds.add_metric(["open"], state["descriptors"]["open"])
        fds.add_metric(["limit"], state["descriptors"]["limit"])
        yield fds


def serve_metrics(fs: Filesystem, settings_view: dict[str, object], address: str) -> None:
    """Prometheus text endpoint on HOST:PORT, in a background thread; call on the trio
    thread."""
    registry: CollectorRegistry = fs.registry
    registry.register(_Collector(fs, settings_view, trio.lowlevel.current_trio_token()))
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host, registry=registry)
