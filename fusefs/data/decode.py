"""`BidiReadObjectResponse` decoded by hand, with each chunk left where it arrived.

The generated code copies every chunk twice: into the parser's arena, then into a
new bytes object when `content` is read. Here the response stays the bytes gRPC
delivered, each chunk is a memoryview slice of it, and its CRC32C is computed in
place: no copy of the data between the socket buffers gRPC fills and the FUSE
reply. Only the data fields are decoded by hand; `metadata` and `read_handle`
(once per stream) go to the generated code.

Field numbers are the public API's (fusefs/proto/storage.proto). The decoder is
strict where protobuf is lenient with garbage: a truncated or over-long varint, a
length past the end of its message, field number 0, a known field with another
wire type or an unbalanced group raise ProtocolError rather than return bytes
that might be wrong. Unknown fields are skipped by wire type, as protobuf does, so
richer servers stay compatible. A field that occurs twice merges as in protobuf:
the last scalar wins, message fields merge field by field.
"""

from __future__ import annotations

from typing import TypeVar

import crc32c
from google.protobuf.message import Message

from fusefs.data.errors import ProtocolError
from fusefs.proto import storage_pb2 as pb

_M = TypeVar("_M", bound=Message)

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1
_SIGN64 = 1 << 63
_MAX_GROUP_DEPTH = 64

# BidiReadObjectResponse
_RESPONSE_METADATA, _RESPONSE_RANGES, _RESPONSE_HANDLE = 4, 6, 7
# ObjectRangeData
_DATA_CHECKSUMMED, _DATA_RANGE, _DATA_END = 1, 2, 3
# ChecksummedData
_CHECKED_CONTENT, _CHECKED_CRC = 1, 2
# ReadRange
_RANGE_OFFSET, _RANGE_LENGTH, _RANGE_ID = 1, 2, 3


class RangeData:
    """One `ObjectRangeData`: a chunk of one range, still inside its response."""

    __slots__ = (
        "_message",
        "_start",
        "_stop",
        "crc32c",
        "range_end",
        "read_id",
        "read_length",
        "read_offset",
    )

    def __init__(self, message: bytes):
        self.read_offset = 0
        self.read_length = 0
        self.read_id = 0
        self.range_end = False
        self.crc32c: int | None = None  # None: the field was absent
        self._message = message
        self._start = self._stop = 0

    @property
    def size(self) -> int:
        return self._stop - self._start

    @property
    def content(self) -> memoryview:
        """The chunk, without a copy; it keeps the whole response alive."""
        return memoryview(self._message)[self._start : self._stop]

    def content_crc32c(self) -> int:
        # The crc32c package reads any buffer where it lies and releases the GIL.
        return crc32c.crc32c(self.content)


class Response:
    """A decoded `BidiReadObjectResponse`."""

    __slots__ = ("metadata", "ranges", "read_handle")

    def __init__(self) -> None:
        self.ranges: list[RangeData] = []
        self.metadata: pb.Object | None = None  # None: the field was absent
        self.read_handle: pb.BidiReadHandle | None = None


def decode_response(message: bytes | memoryview) -> Response:
    """Decode one serialized `BidiReadObjectResponse`; ProtocolError if malformed."""
    if not isinstance(message, bytes):
        message = bytes(message)
    response = Response()
    metadata: list[bytes] = []
    handles: list[bytes] = []
    pos, end = 0, len(message)
    while pos < end:
        field, wire, pos = _tag(message, pos, end)
        if field == _RESPONSE_RANGES:
            start, pos = _length(message, pos, end, wire, field)
            response.ranges.append(_range_data(message, start, pos))
        elif field == _RESPONSE_METADATA:
            start, pos = _length(message, pos, end, wire, field)
            metadata.append(message[start:pos])
        elif field == _RESPONSE_HANDLE:
            start, pos = _length(message, pos, end, wire, field)
            handles.append(message[start:pos])
        else:
            pos = _skip(message, pos, end, field, wire)
    # Occurrences of one message field merge, and so do their concatenated bytes.
    if metadata:
        response.metadata = _parse(pb.Object, metadata)
    if handles:
        response.read_handle = _parse(pb.BidiReadHandle, handles)
    return response


def _range_data(message: bytes, pos: int, end: int) -> RangeData:
    data = RangeData(message)
    while pos < end:
        field, wire, pos = _tag(message, pos, end)
        if field == _DATA_CHECKSUMMED:
            start, pos = _length(message, pos, end, wire, field)
            _checksummed(message, start, pos, data)
        elif field == _DATA_RANGE:
            start, pos = _length(message, pos, end, wire, field)
            _read_range(message, start, pos, data)
        elif field == _DATA_END:
            _expect(wire, _VARINT, field)
            value, pos = _varint(message, pos, end)
            data.range_end = value != 0
        else:
            pos = _skip(message, pos, end, field, wire)
    return data


def _checksummed(message: bytes, pos: int, end: int, data: RangeData) -> None:
    while pos < end:
        field, wire, pos = _tag(message, pos, end)
        if field == _CHECKED_CONTENT:
            data._start, pos = _length(message, pos, end, wire, field)
            data._stop = pos
        elif field == _CHECKED_CRC:
            _expect(wire, _I32, field)
            if pos + 4 > end:
                raise ProtocolError("truncated crc32c")
            data.crc32c = int.from_bytes(message[pos : pos + 4], "little")
            pos += 4
        else:
            pos = _skip(message, pos, end, field, wire)


def _read_range(message: bytes, pos: int, end: int, data: RangeData) -> None:
    while pos < end:
        field, wire, pos = _tag(message, pos, end)
        if _RANGE_OFFSET <= field <= _RANGE_ID:
            _expect(wire, _VARINT, field)
            value, pos = _varint(message, pos, end)
            if value >= _SIGN64:  # int64 on the wire: two's complement in 64 bits
                value -= 1 << 64
            if field == _RANGE_OFFSET:
                data.read_offset = value
            elif field == _RANGE_LENGTH:
                data.read_length = value
            else:
                data.read_id = value
        else:
            pos = _skip(message, pos, end, field, wire)


# -- wire primitives -----------------------------------------------------------


def _varint(message: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = message[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError("varint longer than 10 bytes")


def _tag(message: bytes, pos: int, end: int) -> tuple[int, int, int]:
    byte = message[pos]
    if byte < 0x80:  # field numbers below 16: one byte
        tag, pos = byte, pos + 1
    else:
        tag, pos = _varint(message, pos, end)
        if tag > 0xFFFFFFFF:
            raise ProtocolError(f"tag {tag} out of range")
    field = tag >> 3
    if field == 0:
        raise ProtocolError("field number 0")
    return field, tag & 7, pos


def _length(message: bytes, pos: int, end: int, wire: int, field: int) -> tuple[int, int]:
    """(start, stop) of a length-delimited field's payload."""
    _expect(wire, _LEN, field)
    size, pos = _varint(message, pos, end)
    stop = pos + size
    if stop > end:
        raise ProtocolError(f"field {field}: length {size} runs past the end of its message")
    return pos, stop


def _expect(wire: int, expected: int, field: int) -> None:
    if wire != expected:
        raise ProtocolError(f"field {field}: wire type {wire}, expected {expected}")


def _skip(message: bytes, pos: int, end: int, field: int, wire: int, depth: int = 0) -> int:
    """Past an unknown field's value."""
    if wire == _VARINT:
        return _varint(message, pos, end)[1]
    if wire == _LEN:
        return _length(message, pos, end, wire, field)[1]
    if wire in (_I64, _I32):
        pos += 8 if wire == _I64 else 4
        if pos > end:
            raise ProtocolError(f"field {field}: truncated fixed-width value")
        return pos
    if wire == _SGROUP:
        if depth >= _MAX_GROUP_DEPTH:
            raise ProtocolError("groups nested too deep")
        while pos < end:
            inner, inner_wire, pos = _tag(message, pos, end)
            if inner_wire == _EGROUP:
                if inner != field:
                    raise ProtocolError(f"group {field} ended by {inner}")
                return pos
            pos = _skip(message, pos, end, inner, inner_wire, depth + 1)
        raise ProtocolError(f"group {field} not ended")
    if wire == _EGROUP:
        raise ProtocolError(f"field {field}: end of a group that was not started")
    raise ProtocolError(f"field {field}: wire type {wire}")


def _parse(cls: type[_M], parts: list[bytes]) -> _M:
    try:
        return cls.FromString(b"".join(parts))
    except Exception as e:  # protobuf's DecodeError, or whatever a garbled message raises
        raise ProtocolError(f"bad {cls.DESCRIPTOR.name}: {e}") from None
