"""The `grpc-aio` thread: one asyncio loop serving the BidiReadObject listener of every
region, next to the HTTP side's trio loop in the main thread.

grpc.aio binds its completion-queue poller to the loop that first touches it, so
every grpc.aio object is made on this thread. asyncio outside the main thread cannot
take signals: trio owns them and calls `stop`. Other threads reach the loop only
through `call_soon_threadsafe` / `run_coroutine_threadsafe` (`stop`, `stop_listener`);
counters (`DataPlane.open_streams`, the send budget) are plain ints they may read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import grpc.aio

from fusefs.data.malloc_tuning import release_free_memory
from fusefs.server.bearer import TokenChecker
from fusefs.server.bidi_service import BidiReadService, DataPlane, method_handlers
from fusefs.server.faults import FaultPlan
from fusefs.server.limits import Limits, MiB
from fusefs.server.stats import Stats
from fusefs.server.store import Store
from fusefs.server.topology import Region, parse_host_port

log = logging.getLogger(__name__)

STOP_GRACE = 0.5  # seconds running streams get to finish when the store stops
TRIM_EVERY = 5.0  # seconds between checks whether freed chunk memory should go back
TRIM_AFTER = 64 * MiB  # released since the last trim (or any, once no stream is open)


def server_options(limits: Limits) -> list[tuple[str, int]]:
    pending = max(8192, 2 * limits.max_streams)
    return [
        ("grpc.max_send_message_length", limits.stream_buffer + MiB),
        ("grpc.max_receive_message_length", limits.max_request_bytes),
        ("grpc.max_metadata_size", limits.max_header_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
        ("grpc.so_reuseport", 0),
        # clients ping every ~20 s to notice dead peers; let them
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Calls that arrived but that the loop has not picked up yet wait in grpc core's
        # backlog, which drops calls at random (CANCELLED, not RESOURCE_EXHAUSTED) past
        # 1,000 by default; grpc.aio picks them up one at a time, so a burst of streams
        # would overflow it long before `max_streams`.
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", 2 * pending),
    ]


class GrpcLoop:
    def __init__(
        self,
        regions: tuple[Region, ...],
        store: Store,
        stats: Stats,
        limits: Limits,
        faults: FaultPlan | None = None,
        bearer: TokenChecker | None = None,
    ):
        self.regions = regions
        self.plane = DataPlane(store, stats, limits, faults, bearer)
        self.addrs: dict[str, str] = {}  # region -> HOST:PORT, once started
        self._servers: dict[str, grpc.aio.Server] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-aio", daemon=True)

    # -- from other threads ------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> dict[str, str]:
        """Listen on every region's address; {region: HOST:PORT}. ValueError with one
        line for a person when a listener cannot start."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ValueError("the gRPC listeners did not start")
        if self._error is not None:
            self._thread.join(timeout)
            raise ValueError(self._error)
        return dict(self.addrs)

    def stop_listener(self, region: str) -> bool:
        """Stop one region's listener at once (its streams end); False: no such region."""
        server, loop = self._servers.get(region), self._loop
        if server is None or loop is None:
            return False
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the loop's thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:
            log.exception("the gRPC loop failed")
            self._error = self._error or f"gRPC listeners: {e}"
        finally:
            self._ready.set()
            self.plane.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        limits = self.plane.limits
        for region in self.regions:
            if region.grpc is None:
                continue  # it lives in a bucket: clients read it there
            # The handler refuses past max_streams (all regions, counted); grpc's own cap
            # is a backstop against a flood of calls each of which would cost a task.
            server = grpc.aio.server(
                options=server_options(limits), maximum_concurrent_rpcs=2 * limits.max_streams
            )
            server.add_generic_rpc_handlers((method_handlers(BidiReadService(region, self.plane)),))
            host, port = parse_host_port(region.grpc, f"grpc address of region {region.name}")
            try:
                bound = server.add_insecure_port(f"{host}:{port}")
            except RuntimeError:
                bound = 0
            if bound == 0:
                self._error = f"cannot listen on {region.grpc} (region {region.name})"
                await self._stop_all(0)
                return
            await server.start()
            self._servers[region.name] = server
            self.addrs[region.name] = f"{host}:{bound}"
        trimmer = asyncio.create_task(self._trim())
        self._ready.set()
        await self._stopping.wait()
        trimmer.cancel()
        await self._stop_all(STOP_GRACE)

    async def _stop_all(self, grace: float) -> None:
        # Running streams get `grace` seconds, then every call is cancelled.
        await asyncio.gather(*(s.stop(grace) for s in self._servers.values()))
        # stop() returns once grpc core holds no call; handlers may still be unwinding.
        if self.plane.open_streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.plane.idle.wait(), 1.0)

    async def _trim(self) -> None:
        """Give freed chunk memory back to the system: the allocator keeps it otherwise
        (tuned to reuse MiB-sized buffers, fusefs/data/malloc_tuning.py)."""
        budget = self.plane.budget
        while True:
            await asyncio.sleep(TRIM_EVERY)
            if budget.released > TRIM_AFTER or (budget.released and not self.plane.open_streams):
                budget.released = 0
                release_free_memory()
