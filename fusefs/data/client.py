"""The data plane as one object: channels, the memory budget, the stream slots and the
reaper that closes idle streams, the HTTP range workers and their warm connections,
readers by location.

This is also the library API for tools that read without a mount:

    async with DataClient() as data:
        reader = data.open_reader(location, size)
        head = await reader.read(0, 1 << 20)

With Cloud Storage credentials (`gcs`), the channel to the storage gRPC endpoint
carries them (and only that channel). An object there whose bucket refuses
BidiReadObject (`refuse_bidi`, told by the data path that saw the refusal) is read,
from then on, with ranged JSON-API media GETs (`GcsMediaSource`), as is every
object of that bucket opened later.
"""

from __future__ import annotations

import logging
import weakref
from contextlib import AsyncExitStack
from types import TracebackType

import grpc
import trio

from fusefs.data.bidi import BidiStream, StreamLimits
from fusefs.data.gcs_auth import GcsAuth
from fusefs.data.gcs_media import BIDI_REFUSED, GcsMediaSource
from fusefs.data.http import HttpRangeSource
from fusefs.data.http_conn import ConnectionPool
from fusefs.data.http_workers import RangeWorkers
from fusefs.data.location import BadLocation, GrpcObject, location_kind, parse_grpc_url
from fusefs.data.memory_budget import MemoryBudget
from fusefs.data.ranges import trio_waker
from fusefs.data.reader import FileReader, ReadLimits
from fusefs.data.reaper import Reaper
from fusefs.data.receivers import Receivers
from fusefs.data.slots import StreamSlots
from fusefs.data.source import GuessedSource, RangeSource, Waker
from fusefs.network import grpc_channel_options, grpc_root_certificates

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MEMORY_BUDGET = 256 * MiB  # holds several 64 MiB prefetch windows
# As many streams as FUSE requests in flight (fs.mount.FUSE_WORKERS): demand reads never
# wait for a stream; a quarter of what one store served at once (256), so that several
# mounts share a store without a refusal.
DEFAULT_MAX_STREAMS = 64
# Ranged HTTP GETs in flight, all files together: enough for the whole memory budget in
# 8 MiB ranges, so a sequential reader's prefetch window and random reads from several
# threads all run at once; each is a worker thread and a warm connection.
DEFAULT_HTTP_WORKERS = 32

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
        http_workers: int = DEFAULT_HTTP_WORKERS,
        gcs: GcsAuth | None = None,
    ):
        self.gcs = gcs
        self.media_buckets: set[str] = set()  # refused BidiReadObject: read with media GETs
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
        self.http_workers = RangeWorkers(http_workers)
        self.http_pool = ConnectionPool()
        self._stack = AsyncExitStack()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> DataClient:
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
            options = _CHANNEL_OPTIONS + grpc_channel_options(endpoint, tls)  # the proxy
            if self._cloud_storage(endpoint, tls):
                assert self.gcs is not None
                self._channels[key] = self.gcs.grpc_channel(options)
            elif tls:
                creds = grpc.ssl_channel_credentials(grpc_root_certificates())
                self._channels[key] = grpc.secure_channel(endpoint, creds, options)
            else:
                self._channels[key] = grpc.insecure_channel(endpoint, options)
        return self._channels[key]

    def _cloud_storage(self, endpoint: str, tls: bool) -> bool:
        """Whether HOST:PORT is the Cloud Storage gRPC endpoint our credentials are for."""
        return self.gcs is not None and self.gcs.owns_grpc(endpoint, tls)

    def open_source(
        self, location: str, size: int, *, crc32c: int | None = None, md5: str | None = None
    ) -> RangeSource:
        """The network source for the object at `location` (a bidi stream or HTTP ranges;
        media GETs for a Cloud Storage bucket that refuses bidi reads). `crc32c` and `md5`
        (hex): the object's hashes as pinned by a listing, checked where the transport
        learns them."""
        if location_kind(location) == "http":
            try:
                return HttpRangeSource(
                    location, size, self.http_workers, self.http_pool, self.stream_limits
                )
            except ValueError as e:
                raise BadLocation(str(e)) from None
        if self._wake is None:
            raise RuntimeError("DataClient used outside `async with`")
        target = parse_grpc_url(location)
        cloud_storage = self._cloud_storage(target.endpoint, target.tls)
        if cloud_storage and target.bucket in self.media_buckets:
            return self._media_source(target, size, crc32c, md5)
        return BidiStream(
            self.channel(target.endpoint, target.tls),
            target,
            size,
            self.stream_limits,
            slots=self.slots,
            wake=self._wake,
            receivers=self.receivers,
            cloud_storage=cloud_storage,
            refused=BIDI_REFUSED,
            crc32c=crc32c,
        )

    def _media_source(
        self, target: GrpcObject, size: int, crc32c: int | None, md5: str | None
    ) -> RangeSource:
        if self.gcs is None:
            raise RuntimeError("media GETs need Cloud Storage credentials")
        return GcsMediaSource(
            self.gcs,
            target,
            size,
            self.http_workers,
            self.http_pool,
            self.stream_limits,
            crc32c=crc32c,
            md5=md5,
        )

    def refuse_bidi(self, location: str) -> bool:
        """The storage service refused BidiReadObject for `location`'s object: True when
        its bucket is now read with media GETs (`open_source` gives such a source); False
        when `location` is not on Cloud Storage, which has no other way."""
        try:
            target = parse_grpc_url(location)
        except BadLocation:
            return False
        if not self._cloud_storage(target.endpoint, target.tls):
            return False
        if target.bucket not in self.media_buckets:
            self.media_buckets.add(target.bucket)
            log.warning(
                "gs://%s refuses bidi reads; reading its objects with ranged media GETs",
                target.bucket,
            )
        return True

    def open_guess(self, location: str, size: int) -> GuessedSource | None:
        """A stream to a predicted grpc location (generation 0: whichever the store has),
        to be confirmed against the probe before a byte of it is used; None when the
        object would not be read over a stream (a bucket read with media GETs)."""
        stream = self.open_source(location, size)
        if not isinstance(stream, BidiStream):
            stream.close()
            return None
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
        self.http_workers.close()
        self.http_pool.close()
