"""The data plane as one object: channels, the memory budget, the stream slots and the
reaper that closes idle streams, readers by location.

This is also the library API for tools that read without a mount:

    async with DataClient() as data:
        reader = data.open_reader(location, size)
        head = await reader.read(0, 1 << 20)
"""

from __future__ import annotations

import weakref
from contextlib import AsyncExitStack
from types import TracebackType

import grpc
import httpx
import trio

from fusefs.data.bidi import BidiStream, StreamLimits
from fusefs.data.http import HttpRangeSource
from fusefs.data.location import BadLocation, location_kind, parse_grpc_url
from fusefs.data.memory_budget import MemoryBudget
from fusefs.data.ranges import trio_waker
from fusefs.data.reader import FileReader, ReadLimits
from fusefs.data.reaper import Reaper
from fusefs.data.receivers import Receivers
from fusefs.data.slots import StreamSlots
from fusefs.data.source import GuessedSource, RangeSource, Waker

MiB = 1 << 20
DEFAULT_MEMORY_BUDGET = 256 * MiB  # holds several 64 MiB prefetch windows
# As many streams as FUSE requests in flight (fs.mount.FUSE_WORKERS): demand reads never
# wait for a stream; a quarter of what one store served at once (256), so that several
# mounts share a store without a refusal.
DEFAULT_MAX_STREAMS = 64

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 32 * MiB),
    ("grpc.max_send_message_length", 32 * MiB),
    # A dead peer (host gone, no FIN) is noticed in ~30 s instead of never.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


class DataClient:
    def __init__(
        self,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        read_limits: ReadLimits = ReadLimits(),
        stream_limits: StreamLimits = StreamLimits(),
        max_streams: int = DEFAULT_MAX_STREAMS,
    ):
        self.budget = MemoryBudget(memory_budget)
        self.read_limits = read_limits
        self.stream_limits = stream_limits
        self.reaper = Reaper()  # runs while the client is entered; others may add parts
        self.slots = StreamSlots(max_streams, stream_limits.idle_timeout, self.reaper)
        self.receivers = Receivers(keep=max_streams)
        self.reaper.add(self.slots)
        self._wake: Waker | None = None
        self._channels: dict[tuple[str, bool], grpc.Channel] = {}
        self._readers: weakref.WeakSet[FileReader] = weakref.WeakSet()
        self._stack = AsyncExitStack()
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> DataClient:
        self._http = await self._stack.enter_async_context(
            httpx.AsyncClient(
                http2=True,
                follow_redirects=False,
                timeout=httpx.Timeout(30.0, connect=5.0),
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            )
        )
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._stack.callback(self.close)
        self._wake = trio_waker()
        self._nursery.start_soon(self.reaper.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # range fetches end with the client
        await self._stack.__aexit__(exc_type, exc, tb)

    def channel(self, endpoint: str, tls: bool) -> grpc.Channel:
        key = (endpoint, tls)
        if key not in self._channels:
            if tls:
                creds = grpc.ssl_channel_credentials()  # verified against the system roots
                self._channels[key] = grpc.secure_channel(endpoint, creds, _CHANNEL_OPTIONS)
            else:
                self._channels[key] = grpc.insecure_channel(endpoint, _CHANNEL_OPTIONS)
        return self._channels[key]

    def open_source(self, location: str, size: int) -> RangeSource:
        """The network source for the object at `location` (a bidi stream or HTTP ranges)."""
        if location_kind(location) == "http":
            if self._http is None or self._nursery is None:
                raise RuntimeError("DataClient used outside `async with`")
            return HttpRangeSource(self._http, location, size, self._nursery, self.stream_limits)
        if self._wake is None:
            raise RuntimeError("DataClient used outside `async with`")
        target = parse_grpc_url(location)
        return BidiStream(
            self.channel(target.endpoint, target.tls),
            target,
            size,
            self.stream_limits,
            slots=self.slots,
            wake=self._wake,
            receivers=self.receivers,
        )

    def open_guess(self, location: str, size: int) -> GuessedSource:
        """A stream to a predicted grpc location (generation 0: whichever the store has),
        to be confirmed against the probe before a byte of it is used."""
        stream = self.open_source(location, size)
        if not isinstance(stream, BidiStream):
            raise BadLocation(f"only a grpc location can be guessed: {location!r}")
        return stream

    def reader(self, source: RangeSource, size: int, name: str, *, align: int = 1) -> FileReader:
        """A reader over `source`, charged to this client's budget; call from inside trio."""
        reader = FileReader(
            source, size, self.budget, self.read_limits, trio_waker(), name, align=align
        )
        self._readers.add(reader)
        return reader

    def open_reader(self, location: str, size: int, name: str = "") -> FileReader:
        """A reader for the object at `location`; call from inside trio."""
        return self.reader(self.open_source(location, size), size, name or location)

    def close(self) -> None:
        for reader in list(self._readers):
            reader.close()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
