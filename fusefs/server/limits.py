"""What one client, and all clients together, can make `modelfs serve` hold.

`Limits` is the tunable part (each field is a `modelfs serve` option, listed in the
README's limits table); the constants below are rules of the APIs the store speaks
or sizes no deployment needs to change.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB, MiB = 1 << 10, 1 << 20

MAX_RANGES_PER_MESSAGE = 100  # BidiReadObject: ranges in one request message
SMALL_CHUNK = 64 * KiB  # a stream's first chunk, and every chunk while memory is short
FIRST_MESSAGE_TIMEOUT = 30.0  # seconds from a stream's start to its read_object_spec
MAX_NAME_BYTES = 4096  # a requested object name (owner/name/path)
MAX_FIELD_BYTES = 1024  # a bucket, a routing token, a read handle


@dataclass(frozen=True)
class Limits:
    # gRPC data plane
    max_streams: int = 4096  # BidiReadObject streams open at once, all regions
    max_ranges: int = 1000  # outstanding ranges of one stream
    stream_buffer: int = 2 * MiB  # largest chunk: what one stream may have queued
    send_memory: int = 128 * MiB  # queued bytes of all streams before chunks shrink
    # requests (HTTP and gRPC)
    max_header_bytes: int = 16 * KiB  # request line and headers; gRPC metadata
    max_request_bytes: int = 64 * KiB  # an HTTP request body; one gRPC request message
    # listings and repo state
    listing_limit: int = 3000  # entries of a recursive listing answer, or of a page
    directory_limit: int = 50_000  # entries of a one-directory listing answer
    rescan_interval: float = 2.0  # seconds a repo's index answers repo-wide requests unchecked
    index_files: int = 500_000  # files in all repo indexes together (~750 bytes each)
    hash_cache: int = 100_000  # file versions whose digests are kept

    def queued_bound(self) -> int:
        """The most response bytes all streams can have queued at once (each is held
        twice while it waits: by Python and by grpc core)."""
        return self.send_memory + self.stream_buffer + self.max_streams * SMALL_CHUNK
