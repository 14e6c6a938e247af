"""Property tests (Hypothesis) for what parses or encodes input from the other side: the
store's hand encoder against protobuf's decoder, the client's hand decoder on arbitrary
bytes, range bookkeeping, the store's name rules and its `Range` header parser."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fusefs.data.decode import decode_response
from fusefs.data.errors import ProtocolError
from fusefs.data.ranges import Gap, RangeMap, RangeRead, aligned_pieces
from fusefs.hub.listing import bad_path
from fusefs.proto import storage_pb2 as pb
from fusefs.server.bidi_service import _Abort, new_ranges, parse_request
from fusefs.server.http import parse_range
from fusefs.server.names import VCS_NAMES, path_error, unserved
from fusefs.server.wire import _int64, _varint, data_response

INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
UINT32 = st.integers(0, (1 << 32) - 1)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the store's wire encoder -------------------------------------------------------------


@FAST
@given(st.binary(max_size=5000), UINT32, INT64, INT64, st.booleans())
@example(b"x", 0, 0, -1, True)  # read_id = -1 once made the encoder loop forever
@example(b"", 0xFFFFFFFF, -(1 << 63), (1 << 63) - 1, False)
def test_hand_encoded_chunks_are_what_protobuf_and_the_client_decode(
    content, crc, offset, read_id, last
):
    raw = data_response(content, crc, offset, read_id, last)
    expected = pb.BidiReadObjectResponse(
        object_data_ranges=[
            pb.ObjectRangeData(
                checksummed_data=pb.ChecksummedData(content=content, crc32c=crc),
                read_range=pb.ReadRange(
                    read_offset=offset, read_length=len(content), read_id=read_id
                ),
                range_end=last,
            )
        ]
    )
    assert pb.BidiReadObjectResponse.FromString(raw) == expected
    (got,) = decode_response(raw).ranges
    assert (got.read_offset, got.read_id, got.read_length, got.range_end, got.crc32c) == (
        offset,
        read_id,
        len(content),
        last,
        crc,
    )
    assert bytes(got.content) == content


@FAST
@given(st.integers())
@example(-1)
@example(-(1 << 63))
@example(1 << 64)
def test_varints_end_for_every_integer_or_are_refused(n):
    if -(1 << 63) <= n < (1 << 63):
        encoded = _int64(n)
        assert 1 <= len(encoded) <= 10
        assert pb.ReadRange.FromString(b"\x18" + encoded).read_id == n
    else:
        with pytest.raises(ValueError):
            _int64(n)
    if 0 <= n < (1 << 64):
        assert len(_varint(n)) <= 10
    else:
        with pytest.raises(ValueError):
            _varint(n)


@FAST
@given(st.one_of(st.integers(max_value=-(1 << 63) - 1), st.integers(min_value=1 << 63)))
def test_chunks_with_ids_or_offsets_outside_int64_are_refused(n):
    with pytest.raises(ValueError):
        data_response(b"x", 0, 0, n, False)
    with pytest.raises(ValueError):
        data_response(b"x", 0, n, 0, False)


# -- the client's decoder -----------------------------------------------------------------

VALID = [
    data_response(b"abc" * 100, 7, 12, 3, True),
    pb.BidiReadObjectResponse(
        metadata=pb.Object(name="a/b/c", size=10, generation=5),
        read_handle=pb.BidiReadHandle(handle=b"h"),
    ).SerializeToString(),
]


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_decode_or_raise_protocol_error_only(raw):
    try:
        decode_response(raw)
    except ProtocolError:
        pass


@FAST
@given(st.sampled_from(VALID), st.data())
def test_damaged_responses_decode_consistently_or_raise_protocol_error(raw, data):
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(damaged) - 1))
        damaged[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    damaged = bytes(damaged[:cut])
    try:
        got = decode_response(damaged)
    except ProtocolError:
        return
    # whatever the strict decoder accepts, protobuf reads the same way
    expected = pb.BidiReadObjectResponse.FromString(damaged)
    assert [(r.read_offset, r.read_id, bytes(r.content)) for r in got.ranges] == [
        (
            r.read_range.read_offset,
            r.read_range.read_id,
            r.checksummed_data.content,
        )
        for r in expected.object_data_ranges
    ]


# -- range bookkeeping --------------------------------------------------------------------


def _no_wake(fn):
    fn()


@FAST
@given(
    st.integers(0, 1 << 40),
    st.binary(min_size=1, max_size=3000),
    st.lists(st.integers(0, 3000), max_size=8),
    st.integers(0, 1 << 41),
    st.data(),
)
def test_a_range_fed_in_pieces_holds_exactly_its_bytes(offset, payload, cuts, wrong, data):
    rr = RangeRead(offset, len(payload), _no_wake)
    bounds = sorted({0, len(payload), *(c for c in cuts if c < len(payload))})
    for lo, hi in itertools.pairwise(bounds):
        if wrong != offset + lo:  # a chunk at another offset is refused, never taken
            with pytest.raises(ProtocolError):
                rr.feed(wrong, payload[lo:hi])
        assert rr.feed(offset + lo, payload[lo:hi]) == (hi == len(payload))
    assert rr.done
    with pytest.raises(ProtocolError):
        rr.feed(offset + len(payload), b"x")  # past its end
    lo = data.draw(st.integers(offset, offset + len(payload)))
    hi = data.draw(st.integers(lo, offset + len(payload)))
    assert b"".join(bytes(v) for v in rr.view(lo, hi)) == payload[lo - offset : hi - offset]


@FAST
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), max_size=30),
    st.integers(0, 10_000),
    st.integers(0, 12_000),
)
def test_gaps_and_ranges_cover_a_span_exactly_once(spans, start, end):
    rmap = RangeMap()
    for offset, length in spans:
        rr = RangeRead(offset, length, _no_wake)
        if rmap.overlapping(offset, offset + length):
            with pytest.raises(ValueError):
                rmap.add(rr)
        else:
            rmap.add(rr)
    covered = [0] * 12_600
    for gap in rmap.gaps(start, end):
        assert start <= gap.start < gap.end <= end
        for i in range(gap.start, gap.end):
            covered[i] += 1
    for rr in rmap:
        for i in range(max(rr.offset, start), min(rr.end, end)):
            covered[i] += 1
    assert all(covered[i] == 1 for i in range(start, end))


@FAST
@given(st.integers(0, 1 << 40), st.integers(1, 1 << 22), st.integers(1, 1 << 20))
def test_aligned_pieces_tile_the_gap(start, length, unit):
    assume(length // unit <= 2000)
    pieces = list(aligned_pieces(Gap(start, start + length), unit))
    assert pieces[0].start == start and pieces[-1].end == start + length
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    assert all(p.end % unit == 0 for p in pieces[:-1])


# -- the store's name rules ---------------------------------------------------------------

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@FAST
@given(st.text(max_size=300))
@example("a/b\n")
@example("ok/.git/x")
@example("a\udcff")
def test_a_path_is_served_only_when_every_rule_holds(path):
    why = unserved(path)
    parts = path.split("/")
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        raw = None
    served = (
        raw is not None
        and bad_path(path) is None
        and len(raw) <= 4096
        and not _CONTROL.search(path)
        and not any(p in VCS_NAMES for p in parts)
    )
    assert (why is None) == served, (path, why)
    # a name that is merely not served (VCS internals) is still a well-formed name
    assert (path_error(path) is None) == (served or (why == "version-control internals"))


@FAST
@given(st.text(max_size=80), st.integers(0, 1 << 40))
def test_object_names_in_requests_never_crash_the_check(name, generation):
    request = pb.BidiReadObjectRequest(
        read_object_spec=pb.BidiReadObjectSpec(
            bucket="projects/_/buckets/x", object=name, generation=generation
        )
    )
    try:
        parsed = parse_request(request.SerializeToString())
    except _Abort:  # a name protobuf will not carry (e.g. lone surrogates)
        return
    assert parsed.read_object_spec.object == name


@FAST
@given(st.binary(max_size=200))
def test_random_request_bytes_parse_or_are_invalid_argument(raw):
    code = "OK"
    try:
        parse_request(raw)
    except _Abort as e:
        code = e.code.name
    assert code in ("OK", "INVALID_ARGUMENT")


@FAST
@given(
    st.lists(st.tuples(INT64, INT64, INT64), max_size=120),
    st.integers(0, 1 << 40),
    st.sets(INT64, max_size=5),
)
def test_new_ranges_are_inside_the_object_or_refused(triples, size, outstanding):
    ranges = [pb.ReadRange(read_offset=o, read_length=n, read_id=i) for o, n, i in triples]
    try:
        got = new_ranges(ranges, size, outstanding)
    except _Abort as e:
        refused = e.code.name
    else:
        refused = ""
    if refused:
        assert refused in ("INVALID_ARGUMENT", "OUT_OF_RANGE")
        return
    assert len(got) == len(ranges) <= 100
    ids = [r.read_id for r in got]
    assert len(set(ids)) == len(ids) and not set(ids) & outstanding
    assert all(0 <= r.offset <= r.end <= size for r in got)


# -- the Range header ---------------------------------------------------------------------


def _reference(spec: str, size: int):
    """RFC 9110 for one range with small ASCII numbers, the plain way."""
    m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", spec.strip(" \t"), re.IGNORECASE)
    if not m or (not m[1] and not m[2]):
        return None
    if not m[1]:
        n = int(m[2])
        return "unsatisfiable" if n == 0 or size == 0 else (max(0, size - n), size - 1)
    first = int(m[1])
    if m[2] and int(m[2]) < first:
        return None
    if first >= size:
        return "unsatisfiable"
    return first, min(int(m[2]), size - 1) if m[2] else size - 1


DIGITS = st.text(alphabet="0123456789", max_size=25)


@FAST
@given(
    st.one_of(
        st.builds(lambda a, b: f"bytes={a}-{b}", DIGITS, DIGITS),
        st.builds(lambda a, b: f"BYTES={a}-{b}", DIGITS, DIGITS),
        st.text(max_size=40),
        st.builds(lambda a: f"bytes={a}", st.text(max_size=30)),
    ),
    st.integers(0, 1 << 45),
)
@example("bytes=١-٣", 100)  # Arabic-Indic digits: not digits here
@example("bytes=" + "9" * 5000 + "-", 100)  # once a 500 (Python's int-from-string limit)
@example("bytes=-" + "9" * 5000, 100)
def test_range_header_parses_as_rfc_9110_says_and_never_raises(spec, size):
    got = parse_range(spec, size)
    if got not in (None, "unsatisfiable"):
        first, last = got
        assert 0 <= first <= last < size
    if not spec.isascii():  # only ASCII digits are digits
        assert got is None
    small = r"bytes=([0-9]{0,18})-([0-9]{0,18})"
    m = re.fullmatch(small, spec.strip(" \t"), re.IGNORECASE | re.ASCII)
    if m:
        assert got == _reference(spec, size)


@FAST
@given(st.text(alphabet="٠١٢٣٤٥٦٧٨٩０１２３", min_size=1, max_size=5), st.integers(1, 1000))
def test_unicode_digits_are_never_honoured(digits, size):
    assume(not digits.isascii())
    assert parse_range(f"bytes={digits}-", size) is None
    assert parse_range(f"bytes=0-{digits}", size) is None
