"""Data-plane failures, classified by what the caller should do about them."""

from __future__ import annotations


class DataError(Exception):
    """A read that could not be served. Every subclass maps to EIO at the mount."""


class TransientError(DataError):
    """The path may work again: stream break, UNAVAILABLE, timeout, bad chunk."""


class OverloadedError(TransientError):
    """The server refused for want of capacity (RESOURCE_EXHAUSTED): ask it again later."""


class ProtocolError(TransientError):
    """The server sent something we must not accept (offset, size, checksum)."""


class ChecksumError(ProtocolError):
    """A chunk's CRC32C did not match its content."""


class GoneError(DataError):
    """The object is gone or no longer ours to read (NOT_FOUND, 403/404): re-resolve."""


class RangeError(DataError):
    """The server refused this one range (OUT_OF_RANGE and the like)."""


class DeadlineError(TransientError):
    """The read did not complete within its deadline."""


class AuthError(DataError):
    """No credentials for the storage service, or it refused them: asking again at once
    cannot help, so the data path never retries it."""


class BidiRefusedError(DataError):
    """The storage service does not serve BidiReadObject for this object's bucket
    (`gcs_media.bidi_refused`): the same object is to be read with media GETs."""
