"""The one message the store sends millions of: a data chunk, encoded by hand.

Building a `BidiReadObjectResponse` copies the chunk into the message and again
into the serialized bytes; writing the wire format around the chunk copies it
once. The bytes are exactly what protobuf would produce for the same fields
(tests/test_proto.py decodes them with the generated code).
"""

from __future__ import annotations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def data_response(content: bytes, crc32c: int, offset: int, read_id: int, last: bool) -> bytes:
    """BidiReadObjectResponse{object_data_ranges=[ObjectRangeData{checksummed_data{content,
    crc32c}, read_range{read_offset, read_length, read_id}, range_end}]} as wire bytes."""
    checked_head = b"\x0a" + _varint(len(content))  # ChecksummedData.content = 1
    checked_tail = b"\x15" + crc32c.to_bytes(4, "little")  # ChecksummedData.crc32c = 2, fixed32
    checked_len = len(checked_head) + len(content) + len(checked_tail)
    read_range = (
        b"\x08" + _varint(offset) + b"\x10" + _varint(len(content)) + b"\x18" + _varint(read_id)
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
