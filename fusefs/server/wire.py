"""The one message the store sends millions of: a data chunk, encoded by hand.

Building a `BidiReadObjectResponse` copies the chunk into the message and again
into the serialized bytes; writing the wire format around the chunk copies it
once. Protobuf reads the bytes as exactly the message the generated code would
build from the same fields, for every int64 value (negative ones as ten-byte two's
complement varints, as protobuf writes them): tests/test_fuzz_properties.py.
"""

from __future__ import annotations

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_LIMIT = 1 << 64


def _varint(n: int) -> bytes:
    """An unsigned varint; n must fit in 64 bits (anything else would not end on the
    wire as protobuf reads it)."""
    if not 0 <= n < _UINT64_LIMIT:
        raise ValueError(f"{n} does not fit in an unsigned 64-bit varint")
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64(n: int) -> bytes:
    """An int64 field's varint: a negative number as its 64-bit two's complement (ten
    bytes), as protobuf encodes it."""
    if not INT64_MIN <= n <= INT64_MAX:
        raise ValueError(f"{n} is not an int64")
    return _varint(n & (_UINT64_LIMIT - 1))


def data_response(content: bytes, crc32c: int, offset: int, read_id: int, last: bool) -> bytes:
    """BidiReadObjectResponse{object_data_ranges=[ObjectRangeData{checksummed_data{content,
    crc32c}, read_range{read_offset, read_length, read_id}, range_end}]} as wire bytes.
    ValueError for an offset or read_id that is not an int64 or a CRC that is not 32 bits."""
    if not 0 <= crc32c < 1 << 32:
        raise ValueError(f"{crc32c} is not a CRC32C")
    checked_head = b"\x0a" + _varint(len(content))  # ChecksummedData.content = 1
    checked_tail = b"\x15" + crc32c.to_bytes(4, "little")  # ChecksummedData.crc32c = 2, fixed32
    checked_len = len(checked_head) + len(content) + len(checked_tail)
    read_range = (
        b"\x08" + _int64(offset) + b"\x10" + _int64(len(content)) + b"\x18" + _int64(read_id)
    )
    range_head = b"\x0a" + _varint(checked_len)  # ObjectRangeData.checksummed_data = 1
    range_tail = b"\x12" + _varint(len(read_range)) + read_range + (b"\x18\x01" if last else b"")
    range_len = len(range_head) + checked_len + len(range_tail)
    return b"".join(
        (
            b"\x32",
            _varint(range_len),  # BidiReadObjectResponse.object_data_ranges = 6
            range_head,
            checked_head,
            content,
            checked_tail,
            range_tail,
        )
    )
