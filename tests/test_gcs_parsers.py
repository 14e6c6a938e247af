"""Property tests for what is parsed from the wire in the Cloud Storage paths: anything at
all is either a checked value or a ValueError, never another exception."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from fusefs.data.gcs_auth import GrpcEndpoint, JsonEndpoint
from fusefs.data.gcs_media import parse_hashes
from fusefs.hub.gcs import BucketUrl, parse_object
from fusefs.hub.listing import MAX_FILE_SIZE, bad_path
from fusefs.server.bearer import bearer_token
from fusefs.server.gcs_api import _decode_token, _encode_token

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
digits = st.integers(min_value=0, max_value=(1 << 64)).map(str)
b64 = st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode())
object_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=40),
        "bucket": st.sampled_from(["b", "c", 7]),
        "size": digits | json_values,
        "generation": digits | json_values,
        "crc32c": b64 | json_values,
        "md5Hash": b64 | json_values,
        "updated": st.text(max_size=30) | json_values,
    },
)


@given(object_like | json_values)
def test_object_resources_are_checked_or_refused(item):
    try:
        obj = parse_object(item, "b")
    except ValueError:
        return
    assert 0 <= obj.size <= MAX_FILE_SIZE and 0 < obj.generation < 1 << 63
    assert obj.crc32c is None or 0 <= obj.crc32c < 1 << 32
    assert obj.md5 is None or len(obj.md5) == 32
    assert obj.updated >= 0 and obj.name == item["name"]


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16), st.booleans())
def test_hash_headers_round_trip(crc, md5, split):
    parts = [f"crc32c={base64.b64encode(crc).decode()}", f"md5={base64.b64encode(md5).decode()}"]
    values = parts if split else [", ".join(parts)]
    assert parse_hashes(values) == {"crc32c": crc, "md5": md5}


@given(st.lists(st.text(max_size=40), max_size=3))
def test_hash_headers_never_crash(values):
    try:
        hashes = parse_hashes(values)
    except ValueError:
        return
    assert all(len(v) == {"crc32c": 4, "md5": 16}[k] for k, v in hashes.items())


@given(st.text(max_size=60))
def test_endpoints_and_bucket_urls_parse_or_refuse(text):
    for parse in (JsonEndpoint.parse, GrpcEndpoint.parse):
        try:
            parse(text)
        except ValueError:
            pass
    try:
        url = BucketUrl.parse("gs://" + text)
    except ValueError:
        return
    assert url.prefix == "" or (url.prefix.endswith("/") and bad_path(url.prefix[:-1]) is None)


@given(st.text(min_size=1, max_size=200))
def test_page_tokens_round_trip(key):
    assert _decode_token(_encode_token(key)) == key


@given(st.text(max_size=100))
def test_page_tokens_from_clients_decode_or_refuse(token):
    try:
        assert _decode_token(token)
    except ValueError:
        pass


@given(st.text(max_size=60) | st.binary(max_size=60))
def test_bearer_headers(value):
    token = bearer_token([("authorization", value)])
    assert token is None or (token and " " not in token and len(token) <= len(value))
