"""Running a mount: check the mountpoint, pin repos, serve FUSE until told to stop."""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
import re
import resource
import signal
import stat
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pyfuse3
import trio

from fusefs.cache.listings import load_listing, save_listing
from fusefs.cache.source import FileCache, serving
from fusefs.cache.store import DEFAULT_CACHE_SIZE, CacheLimits, DiskCache
from fusefs.data.client import DEFAULT_MAX_STREAMS, DEFAULT_MEMORY_BUDGET, DataClient
from fusefs.data.gcs_auth import GcsAuth, GcsSetupError
from fusefs.data.reader import ReadLimits
from fusefs.fs import systemd
from fusefs.fs.ops import ModelFS
from fusefs.fs.status import serve_metrics
from fusefs.hub.catalog import Catalog
from fusefs.hub.client import HubClient, HubError, RepoNotFound, RepoSpec, Snapshot
from fusefs.hub.gcs import BucketResolver, BucketUrl, GcsCatalog
from fusefs.hub.resolve import FileResolver, Resolver
from fusefs.network import NetworkSettingError, check_environment, describe_proxies
from fusefs.vfs.datapath import Services
from fusefs.vfs.filesystem import Filesystem
from fusefs.vfs.openfiles import DEFAULT_LINGER, Lifetimes
from fusefs.vfs.tree import Tree

log = logging.getLogger(__name__)

FUSE_WORKERS = 64  # concurrent FUSE requests: readahead, threads and processes in flight
READ_AHEAD_KB = 16 * 1024
MAX_BACKGROUND = 64  # FUSE requests the kernel keeps in flight for read-ahead
FUSECTL = "/sys/fs/fuse/connections"
# Descriptors kept for everything but cache entries: the FUSE device, logs, the hub's
# and the data client's HTTP connections (at most FUSE_WORKERS of each in use), one gRPC
# channel per endpoint, the cache's lock, the metrics socket, transient opens.
FD_RESERVE = 256


class MountError(Exception):
    """The mount could not start; the message is one line for a person."""


@dataclass(frozen=True)
class MountSettings:
    mountpoint: str
    hub: str  # a hub's URL, or gs://BUCKET[/PREFIX]
    repos: tuple[RepoSpec, ...] = ()
    repo_type: str = "model"  # every repo of the mount is of this kind
    region: str | None = None
    peers: tuple[str, ...] = ()
    token: str | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    read_limits: ReadLimits = field(default_factory=ReadLimits)
    allow_other: bool = False
    read_ahead_kb: int = READ_AHEAD_KB
    metrics: str | None = None  # HOST:PORT for the Prometheus endpoint
    cache_dir: str | None = None  # persistent block cache shared by mounts on this node
    cache_limits: CacheLimits | None = None
    linger: float = DEFAULT_LINGER  # seconds a closed file keeps its data path
    max_streams: int = DEFAULT_MAX_STREAMS
    gcs_endpoint: str | None = None  # Cloud Storage JSON API (default: Google's)
    gcs_grpc_endpoint: str | None = None  # Cloud Storage gRPC (default: Google's)

    @property
    def bucket(self) -> BucketUrl | None:
        """The bucket a `gs://` mount reads (None: a hub); ValueError when malformed."""
        return BucketUrl.parse(self.hub) if self.hub.startswith("gs://") else None


def check_mountpoint(path: str) -> str:
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise MountError(f"mountpoint {path} does not exist")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if mount_source(path) is not None:
        raise MountError(f"{path} is already a mountpoint")
    if os.listdir(path):
        raise MountError(f"mountpoint {path} is not empty")
    try:
        is_fuse = stat.S_ISCHR(os.stat("/dev/fuse").st_mode)
    except OSError:
        is_fuse = False
    if not is_fuse:
        raise MountError(
            "/dev/fuse is missing or not the FUSE device: load the fuse module "
            "(containers: --device /dev/fuse)"
        )
    return path


def mount_table() -> dict[str, tuple[str, str]]:
    """{mount point: (device major:minor, fs type)} for this mount namespace.

    Unlike os.path.ismount, this sees a FUSE mount whose process died (ENOTCONN)."""
    table = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                # mountinfo escapes space, tab, newline and backslash as \ooo; the rest is raw
                mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
                sep = fields.index("-")
                table[mnt] = (fields[2], fields[sep + 1])
    except OSError:
        pass
    return table


def mount_source(path: str) -> tuple[str, str] | None:
    """(device major:minor, fs type) of the mount at exactly `path`, or None."""
    return mount_table().get(path)


def raise_kernel_limits(path: str, read_ahead_kb: int, max_background: int) -> None:
    """Ask the kernel for large, many-in-flight reads on this mount (needs root).

    Read-ahead makes sequential reads arrive as 1 MiB requests well ahead of the
    reader; FUSE's own cap on requests in flight (12 by default) would otherwise
    hold them back: 64 gave 11% more cold sequential throughput here.
    """
    source = mount_source(path)
    if source is None:
        return
    writes = [(f"/sys/class/bdi/{source[0]}/read_ahead_kb", read_ahead_kb)]
    connection = f"{FUSECTL}/{source[0].split(':')[1]}"
    if _fusectl_mounted() and os.path.isdir(connection):
        writes += [
            (f"{connection}/max_background", max_background),
            (f"{connection}/congestion_threshold", max_background * 3 // 4),
        ]
    for knob, value in writes:
        try:
            with open(knob, "w") as f:
                f.write(str(value))
            log.debug("%s=%d", knob, value)
        except OSError as e:
            log.info(
                "could not set %s (%s); reads will be smaller or fewer in flight", knob, e.strerror
            )


def _fusectl_mounted() -> bool:
    """The FUSE control filesystem, mounted here if it is not (systemd usually does)."""
    if os.path.isdir(FUSECTL) and os.listdir(FUSECTL):
        return True
    try:
        subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", FUSECTL],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(os.listdir(FUSECTL))


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # what Linux allows by default (fs.nr_open)
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.info("could not raise the descriptor limit from %d to %d: %s", soft, hard, e)
    return soft if soft != resource.RLIM_INFINITY else hard


def cache_descriptors(limit: int) -> int:
    """How many cache entries (one descriptor each) may be open under `limit`."""
    return max(limit // 4, limit - FD_RESERVE)


def run_mount(settings: MountSettings, on_ready: Callable[[], None] = lambda: None) -> None:
    """Serve the mount until unmounted or signalled; MountError if it cannot start."""
    mountpoint = check_mountpoint(settings.mountpoint)
    try:
        trio.run(_serve, settings, mountpoint, on_ready)
    except BaseExceptionGroup as group:
        # Nurseries wrap what they raise; a MountError is still one line for a person.
        found: BaseException | None = group.subgroup(MountError)
        if found is None:
            raise
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        raise found from None


async def _serve(settings: MountSettings, mountpoint: str, on_ready: Callable[[], None]) -> None:
    fd_limit = raise_descriptor_limit()
    try:
        bucket = settings.bucket
    except ValueError as e:
        raise MountError(f"hub {settings.hub}: {e}") from None
    try:
        check_environment()
    except NetworkSettingError as e:
        raise MountError(str(e)) from None
    if (proxies := describe_proxies()) is not None:
        log.info("%s", proxies)
    gcs = await _storage_credentials(settings, bucket)
    tree = Tree()
    async with AsyncExitStack() as stack:
        catalog: Catalog
        resolver: FileResolver
        if bucket is not None:
            gcs_catalog = GcsCatalog(bucket, gcs, repo_type=settings.repo_type)
            catalog = await stack.enter_async_context(gcs_catalog)
            if settings.region or settings.peers:
                log.info("a bucket mount reads every object where it is: no regions")
            region = None
            resolver = BucketResolver(gcs_catalog, tree.pinned_file)
        else:
            hub = await stack.enter_async_context(
                HubClient(settings.hub, token=settings.token, repo_type=settings.repo_type)
            )
            catalog = hub
            region = settings.region or await hub.detect_region()
            resolver = Resolver(hub, region, settings.peers)
        data = await stack.enter_async_context(
            DataClient(
                memory_budget=settings.memory_budget,
                read_limits=settings.read_limits,
                max_streams=settings.max_streams,
                gcs=gcs,
            )
        )
        cache = await stack.enter_async_context(_open_cache(settings))
        for spec in settings.repos:
            snap = await _pin(catalog, spec, settings.cache_dir, bucket)
            tree.add_snapshot(snap)
            log.info(
                "pinned %s@%s at %s (%d files)",
                spec.repo,
                spec.revision,
                snap.commit[:12],
                len(snap.files),
            )
        view: dict[str, object] = {
            "mountpoint": mountpoint,
            "hub": settings.hub,
            "repo_type": settings.repo_type,
            "region": region,
            "inter_regions": list(settings.peers),
            "memory_budget": settings.memory_budget,
            "read_timeout": settings.read_limits.deadline,
            "metrics": settings.metrics,
            "cache_dir": settings.cache_dir,
            "linger": settings.linger,
            "max_streams": settings.max_streams,
            "gcs_endpoint": gcs.endpoints.json.base,
            "gcs_grpc_endpoint": str(gcs.endpoints.grpc),
        }
        lifetimes = Lifetimes(
            settings.linger, keep=settings.max_streams, cached=cache_descriptors(fd_limit)
        )
        log.info(
            "descriptors: limit %d, at most %d cache entries open; at most %d streams",
            fd_limit,
            lifetimes.cached,
            settings.max_streams,
        )
        fs = Filesystem(tree, catalog, Services(resolver, data, cache), lifetimes)
        ops = ModelFS(fs, view)
        if settings.metrics:
            try:
                serve_metrics(fs, view, settings.metrics)
            except OSError as e:
                raise MountError(f"metrics address {settings.metrics}: {e.strerror}") from None
        options = set(pyfuse3.default_options) | {
            "fsname=modelfs",
            "subtype=modelfs",
            "ro",
            "noatime",
            "auto_unmount",
        }
        if settings.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(ops, mountpoint, options)
        except RuntimeError as e:
            raise MountError(f"could not mount {mountpoint}: {e}") from None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal)
                nursery.start_soon(_announce, mountpoint, settings, region, on_ready)
                await pyfuse3.main(min_tasks=4, max_tasks=FUSE_WORKERS)
                nursery.cancel_scope.cancel()
        finally:
            fs.close()
            try:
                pyfuse3.close(unmount=True)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
            log.info("unmounted %s", mountpoint)


async def _storage_credentials(settings: MountSettings, bucket: BucketUrl | None) -> GcsAuth:
    """The Cloud Storage endpoints and credentials of this mount. A bucket mount needs
    them: they are looked for now (a missing one fails the mount); a hub mount needs them
    only if a region of the hub lives in Cloud Storage: looked for on first use."""
    try:
        if bucket is not None:
            return await trio.to_thread.run_sync(
                GcsAuth.load, settings.gcs_endpoint, settings.gcs_grpc_endpoint
            )
        return GcsAuth.load(settings.gcs_endpoint, settings.gcs_grpc_endpoint, deferred=True)
    except GcsSetupError as e:
        raise MountError(str(e)) from None


async def _pin(
    catalog: Catalog, spec: RepoSpec, cache_dir: str | None, bucket: BucketUrl | None
) -> Snapshot:
    """The repo's listing from the hub (or bucket); when it cannot answer, the one the
    cache kept."""
    try:
        snap = await catalog.snapshot(spec.repo, spec.revision)
    except HubError as e:
        kept = (
            load_listing(cache_dir, spec, bucket)
            if cache_dir and not isinstance(e, RepoNotFound)
            else None
        )
        if kept is None:
            raise MountError(str(e)) from None
        log.warning("%s; using the listing kept in the cache (commit %s)", e, kept.commit[:12])
        return kept
    if cache_dir is not None:
        try:
            save_listing(cache_dir, snap, bucket)
        except OSError as e:
            log.warning("could not keep the listing of %s in the cache: %s", spec.repo, e)
    return snap


@asynccontextmanager
async def _open_cache(settings: MountSettings) -> AsyncIterator[FileCache | None]:
    if settings.cache_dir is None:
        yield None
        return
    disk = DiskCache(settings.cache_dir, settings.cache_limits or CacheLimits(DEFAULT_CACHE_SIZE))
    try:
        await trio.to_thread.run_sync(disk.open)
    except OSError as e:
        raise MountError(f"cache directory {settings.cache_dir}: {e.strerror or e}") from None
    try:
        async with serving(disk) as cache:
            yield cache
    finally:
        disk.close()


async def _announce(
    mountpoint: str, settings: MountSettings, region: str | None, on_ready: Callable[[], None]
) -> None:
    """Declare the mount ready once the kernel has completed FUSE INIT with us."""
    # statfs is answered by our own main loop, so it returns only after INIT; the
    # kernel resets read-ahead during INIT, so raising it must come after that too.
    await trio.to_thread.run_sync(os.statvfs, mountpoint)
    await trio.to_thread.run_sync(
        raise_kernel_limits, mountpoint, settings.read_ahead_kb, MAX_BACKGROUND
    )
    log.info(
        "mounted %s (hub %s, region %s; pyfuse3 %s)",
        mountpoint,
        settings.hub,
        region or "-",
        _pyfuse3_build(),
    )
    on_ready()
    systemd.notify(f"READY=1\nSTATUS=mounted {mountpoint}")


def _pyfuse3_build() -> str:
    """The pyfuse3 in use: scripts/setup builds one that replies to reads without the
    GIL and labels its version `+nogil`; a plain version replies holding it."""
    try:
        version = importlib.metadata.version("pyfuse3")
    except importlib.metadata.PackageNotFoundError:
        return "of unknown version"
    return f"{version}, read replies without the GIL" if version.endswith("+nogil") else version


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            systemd.notify("STOPPING=1")
            pyfuse3.terminate()
            return
