"""The hand decoder of BidiReadObjectResponse agrees with the generated code, or refuses."""

from __future__ import annotations

import random

import crc32c
import grpc
import pytest

from fusefs.data import decode
from fusefs.data.bidi import BidiStream
from fusefs.data.decode import decode_response
from fusefs.data.errors import ChecksumError, ProtocolError
from fusefs.data.location import parse_grpc_url
from fusefs.data.ranges import RangeRead
from fusefs.proto import storage_pb2 as pb
from fusefs.server.wire import data_response


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, 2) + _varint(len(payload)) + payload


# One unknown field of every wire type, field numbers the schema does not use.
UNKNOWN = (
    _tag(15, 0)
    + _varint(1 << 63)
    + _tag(16, 1)
    + b"\x01" * 8
    + _len_field(17, b"\x0a\x03abc")
    + _tag(18, 5)
    + b"\xff" * 4
    + _tag(19, 3)
    + _tag(1, 0)
    + b"\x05"
    + _tag(2, 3)
    + _tag(2, 4)
    + _tag(19, 4)
    + _tag(1000, 0)
    + b"\x00"
)


def _same(decoded: decode.Response, expected: pb.BidiReadObjectResponse) -> None:
    assert len(decoded.ranges) == len(expected.object_data_ranges)
    for got, want in zip(decoded.ranges, expected.object_data_ranges, strict=False):
        assert bytes(got.content) == want.checksummed_data.content
        assert got.size == len(want.checksummed_data.content)
        want_crc = (
            want.checksummed_data.crc32c if want.checksummed_data.HasField("crc32c") else None
        )
        assert got.crc32c == want_crc
        assert got.read_offset == want.read_range.read_offset
        assert got.read_length == want.read_range.read_length
        assert got.read_id == want.read_range.read_id
        assert got.range_end == want.range_end
    if expected.HasField("metadata"):
        assert decoded.metadata == expected.metadata
    else:
        assert decoded.metadata is None
    if expected.HasField("read_handle"):
        assert decoded.read_handle == expected.read_handle
    else:
        assert decoded.read_handle is None


def _chunk(
    content: bytes,
    offset: int,
    read_id: int,
    *,
    crc: bool = True,
    end: bool = False,
    length: int | None = None,
) -> pb.ObjectRangeData:
    checked = pb.ChecksummedData(content=content)
    if crc:
        checked.crc32c = crc32c.crc32c(content)
    return pb.ObjectRangeData(
        checksummed_data=checked,
        range_end=end,
        read_range=pb.ReadRange(
            read_offset=offset,
            read_id=read_id,
            read_length=len(content) if length is None else length,
        ),
    )


MESSAGES = [
    pb.BidiReadObjectResponse(),
    pb.BidiReadObjectResponse(
        metadata=pb.Object(
            name="acme/m/model.bin",
            bucket="projects/_/buckets/home",
            generation=1234567890123,
            metageneration=1,
            size=5 << 30,
            checksums=pb.ObjectChecksums(crc32c=7, md5_hash=b"\x01" * 16),
        ),
        read_handle=pb.BidiReadHandle(handle=b"model.bin@1"),
    ),
    pb.BidiReadObjectResponse(object_data_ranges=[_chunk(b"hello", 0, 1, end=True)]),
    pb.BidiReadObjectResponse(  # the first response of a stream may carry everything at once
        metadata=pb.Object(name="o", size=10, generation=3),
        read_handle=pb.BidiReadHandle(handle=b"h"),
        object_data_ranges=[
            _chunk(bytes(range(256)) * 300, (1 << 40) + 3, 1 << 62),
            _chunk(b"", 10, 2, end=True),  # trailing empty chunk closing a range
            _chunk(b"no crc", 7, 3, crc=False),
            _chunk(b"x" * 200, -5, -1, length=-7),  # int64 negatives: 10-byte varints
            _chunk(b"\x00", (1 << 63) - 1, 0),
        ],
    ),
    pb.BidiReadObjectResponse(object_data_ranges=[pb.ObjectRangeData()]),  # all fields absent
    pb.BidiReadObjectResponse(
        object_data_ranges=[pb.ObjectRangeData(checksummed_data=pb.ChecksummedData(crc32c=0))]
    ),  # a zero CRC is still present
]


@pytest.mark.parametrize("expected", MESSAGES)
def test_decodes_what_the_generated_code_encodes(expected):
    raw = expected.SerializeToString()
    _same(decode_response(raw), expected)


@pytest.mark.parametrize(
    ("content", "crc", "offset", "read_id", "last"),
    [
        (b"", 0, 0, 0, False),
        (b"x" * 300, 0xFFFFFFFF, 5, 1, True),
        (bytes(range(256)) * 8192, 0x12345678, (1 << 40) + 3, 1 << 62, False),
    ],
)
def test_decodes_the_store_hand_encoded_chunks(content, crc, offset, read_id, last):
    raw = data_response(content, crc, offset, read_id, last)
    _same(decode_response(raw), pb.BidiReadObjectResponse.FromString(raw))


def test_content_is_a_view_of_the_received_message_not_a_copy():
    raw = data_response(b"abc" * 1000, 0, 0, 1, True)
    content = decode_response(raw).ranges[0].content
    assert isinstance(content, memoryview) and content.readonly
    assert content.obj is raw
    assert content.tobytes() == b"abc" * 1000


def test_unknown_fields_are_skipped_at_every_level():
    def padded(msg) -> bytes:  # every field of msg, with unknown fields around each
        return UNKNOWN + msg + UNKNOWN

    checked = padded(_len_field(1, b"payload")) + padded(_tag(2, 5) + (1234).to_bytes(4, "little"))
    read_range = (
        padded(_tag(1, 0) + _varint(100))
        + padded(_tag(2, 0) + _varint(7))
        + padded(_tag(3, 0) + _varint(9))
    )
    range_data = (
        padded(_len_field(1, checked))
        + padded(_len_field(2, read_range))
        + padded(_tag(3, 0) + b"\x01")
    )
    handle = padded(_len_field(1, b"h"))
    raw = (
        padded(_len_field(6, range_data))
        + padded(_len_field(7, handle))
        + padded(_len_field(4, _tag(6, 0) + _varint(42) + UNKNOWN))
    )
    expected = pb.BidiReadObjectResponse.FromString(raw)  # protobuf skips them too
    assert expected.object_data_ranges[0].checksummed_data.content == b"payload"
    assert expected.metadata.size == 42
    _same(decode_response(raw), expected)


def test_repeated_fields_merge_as_protobuf_merges():
    first = pb.BidiReadObjectResponse(
        metadata=pb.Object(name="a", size=10),
        read_handle=pb.BidiReadHandle(handle=b"h1"),
        object_data_ranges=[_chunk(b"one", 0, 1)],
    ).SerializeToString()
    second = pb.BidiReadObjectResponse(
        metadata=pb.Object(generation=5),
        read_handle=pb.BidiReadHandle(handle=b"h2"),
        object_data_ranges=[_chunk(b"two", 3, 1, end=True)],
    ).SerializeToString()
    _same(decode_response(first + second), pb.BidiReadObjectResponse.FromString(first + second))
    # inside one ObjectRangeData: the last content and CRC win, read_range merges field by field
    checked = _len_field(1, b"old") + _tag(2, 5) + b"\x01\x00\x00\x00" + _len_field(1, b"new")
    range_data = (
        _len_field(1, checked)
        + _len_field(2, _tag(1, 0) + _varint(5))
        + _len_field(1, _tag(2, 5) + b"\x02\x00\x00\x00")
        + _len_field(2, _tag(3, 0) + _varint(9))
    )
    raw = _len_field(6, range_data)
    expected = pb.BidiReadObjectResponse.FromString(raw)
    assert expected.object_data_ranges[0].checksummed_data.content == b"new"
    assert expected.object_data_ranges[0].read_range.read_offset == 5
    _same(decode_response(raw), expected)


def test_random_messages_round_trip():
    rng = random.Random(7)
    for _ in range(200):
        message = pb.BidiReadObjectResponse()
        for _ in range(rng.randrange(4)):
            content = rng.randbytes(rng.randrange(0, 3000))
            message.object_data_ranges.append(
                _chunk(
                    content,
                    rng.randrange(-(1 << 63), 1 << 63),
                    rng.randrange(1 << 63),
                    crc=rng.random() < 0.8,
                    end=rng.random() < 0.5,
                    length=rng.choice([None, 0, rng.randrange(1 << 40)]),
                )
            )
        if rng.random() < 0.3:
            message.metadata.size = rng.randrange(1 << 50)
        if rng.random() < 0.3:
            message.read_handle.handle = rng.randbytes(rng.randrange(40))
        _same(decode_response(message.SerializeToString()), message)


def test_every_truncation_is_refused():
    raw = pb.BidiReadObjectResponse(
        object_data_ranges=[_chunk(b"x" * 200, 1 << 35, 1 << 40, end=True)]
    ).SerializeToString()
    for n in range(1, len(raw)):
        with pytest.raises(ProtocolError):
            decode_response(raw[:n])


def _in_range_data(payload: bytes) -> bytes:
    return _len_field(6, payload)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x32" + b"\xff" * 10 + b"\x01",  # a length varint of 11 bytes
        b"\x32\x80",  # varint cut short
        b"\x00\x00",  # field number 0
        _tag(6, 0) + b"\x01",  # object_data_ranges as a varint
        _tag(4, 5) + b"\x00" * 4,  # metadata as a fixed32
        _in_range_data(_tag(1, 0) + b"\x01"),  # checksummed_data as a varint
        _in_range_data(_tag(3, 2) + b"\x00"),  # range_end as bytes
        _in_range_data(_len_field(1, _tag(1, 5) + b"abcd")),  # content as a fixed32
        _in_range_data(_len_field(1, _tag(2, 0) + b"\x01")),  # crc32c as a varint
        _in_range_data(_len_field(1, _tag(2, 5) + b"\x01\x02\x03")),  # crc32c cut short
        _in_range_data(_len_field(2, _tag(1, 2) + b"\x00")),  # read_offset as bytes
        # content claims more than its ChecksummedData holds, though the response has the bytes
        _in_range_data(_len_field(1, _tag(1, 2) + b"\x05abc") + b"de"),
        _len_field(6, b"\x0a\x05abc") + b"de",
        _tag(9, 4),  # end of a group never started
        _tag(9, 3) + _tag(1, 0) + b"\x01",  # group never ended
        _tag(9, 3) + _tag(8, 4),  # group ended by another field's end
        _tag(9, 6),
        _tag(9, 7),  # wire types that do not exist
        _tag(9, 1) + b"\x00" * 7,  # fixed64 cut short
        _tag(9, 2) + _varint(1 << 62),  # a huge length
        b"\xff\xff\xff\xff\xff\x01",  # a tag past 32 bits
        _len_field(4, b"\x08"),  # metadata the generated code refuses
    ],
)
def test_malformed_input_is_refused(raw):
    with pytest.raises(ProtocolError):
        decode_response(raw)


def test_deep_groups_are_refused_not_recursed_forever():
    raw = _tag(9, 3) * 10_000
    with pytest.raises(ProtocolError):
        decode_response(raw)


@pytest.mark.parametrize("size", [0, 1, 7, 4096, (2 << 20) + 5])
def test_crc32c_in_place_matches_the_whole_chunk(size):
    content = random.Random(size).randbytes(size)
    raw = data_response(content, 0, 0, 1, True)
    data = decode_response(raw).ranges[0]
    assert data.content_crc32c() == crc32c.crc32c(content)


def test_crc32c_is_castagnoli():
    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the standard check value


# -- the stream applies the decoded chunks -------------------------------------


@pytest.fixture
def stream():
    channel = grpc.insecure_channel("127.0.0.1:9")  # never connected: no call is made
    target = parse_grpc_url("grpc://127.0.0.1:9/home/acme/m/model.bin?generation=1")
    s = BidiStream(channel, target, size=1 << 20)
    yield s
    channel.close()


def _pending(stream, read_id: int, rr: RangeRead) -> RangeRead:
    stream._pending[read_id] = rr
    return rr


def test_stream_feeds_views_of_good_chunks(stream):
    rr = _pending(stream, 4, RangeRead(100, 10, lambda fn: fn()))
    stream._on_response(data_response(b"abcde", crc32c.crc32c(b"abcde"), 100, 4, False))
    stream._on_response(data_response(b"fghij", crc32c.crc32c(b"fghij"), 105, 4, True))
    assert rr.done and 4 not in stream._pending
    assert stream.counters.bytes == 10
    pieces = rr.view(102, 108)
    assert [bytes(p) for p in pieces] == [b"cde", b"fgh"]


def test_stream_refuses_a_corrupt_chunk(stream):
    rr = _pending(stream, 1, RangeRead(0, 5, lambda fn: fn()))
    with pytest.raises(ChecksumError):
        stream._on_response(data_response(b"abcde", crc32c.crc32c(b"abcdf"), 0, 1, True))
    assert rr.next_offset == 0


def test_stream_refuses_a_chunk_without_crc(stream):
    _pending(stream, 1, RangeRead(0, 5, lambda fn: fn()))
    raw = pb.BidiReadObjectResponse(
        object_data_ranges=[_chunk(b"abcde", 0, 1, crc=False)]
    ).SerializeToString()
    with pytest.raises(ProtocolError):
        stream._on_response(raw)


def test_stream_ignores_chunks_nobody_waits_for(stream):
    stream._on_response(data_response(b"abc", 0, 0, 99, True))  # bad CRC, but unknown read_id
    assert stream.counters.bytes == 3


def test_stream_takes_metadata_and_handle(stream):
    stream._on_response(
        pb.BidiReadObjectResponse(
            metadata=pb.Object(size=1 << 20, generation=1),
            read_handle=pb.BidiReadHandle(handle=b"hh"),
        ).SerializeToString()
    )
    assert stream._read_handle == b"hh"
