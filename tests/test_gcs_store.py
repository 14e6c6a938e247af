"""`modelfs serve` speaks the Cloud Storage JSON API: Google's own client lists and reads it,
with and without bearer-token checking (the token minted by google-auth's real
service-account flow against a loopback token endpoint)."""

from __future__ import annotations

import base64
import hashlib
import os
import time

import crc32c
import httpx
import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from fusefs.testing import MiB, sample_bytes, start_server, write_file

from support.gcs import TokenServer, sa_environment

BLOB = sample_bytes(3 * MiB + 123, seed=21)
SMALL = {
    "config.json": b'{"a": 1}',
    "sub/a b+c.txt": b"spaces and plus",
    "sub/deep/x.json": b"[]",
    "tokenizer.json": sample_bytes(5000, seed=3),
}


def b64_crc(data: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def b64_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs") / "root"
    write_file(root / "acme" / "data" / "blob.bin", BLOB)
    for path, data in SMALL.items():
        write_file(root / "acme" / "data" / path, data)
    write_file(root / "acme" / "data" / ".git" / "config", b"never served")
    os.symlink("/etc/hostname", root / "acme" / "data" / "escape")
    write_file(root / "zed" / "other" / "w.bin", b"other repo")
    handle = start_server(root)
    yield handle
    handle.stop()


def gcs_client(url: str, credentials=None) -> storage.Client:
    return storage.Client(
        project="test-project",
        credentials=credentials,
        client_options={"api_endpoint": url},
    )


def test_google_client_lists_pages_and_reads_ranges(store):
    client = gcs_client(store.hub, AnonymousCredentials())
    bucket = client.bucket("local")
    pages = list(client.list_blobs("local", prefix="acme/data/", page_size=2).pages)
    blobs = [b for page in pages for b in page]
    files = {"blob.bin": BLOB, **SMALL}
    assert [b.name for b in blobs] == [f"acme/data/{p}" for p in sorted(files)]
    assert len(pages) == 3  # 5 objects, 2 a page, the last page has no nextPageToken
    for blob in blobs:
        data = files[blob.name.removeprefix("acme/data/")]
        assert blob.size == len(data)
        assert blob.crc32c == b64_crc(data) and blob.md5_hash == b64_md5(data)
        assert blob.generation > 0 and blob.media_link.startswith(store.hub + "/download/")

    listing = client.list_blobs("local", prefix="acme/data/", delimiter="/")
    assert sorted(b.name for b in listing) == [
        "acme/data/blob.bin",
        "acme/data/config.json",
        "acme/data/tokenizer.json",
    ]
    assert listing.prefixes == {"acme/data/sub/"}
    top = client.list_blobs("local", delimiter="/")
    assert list(top) == [] and top.prefixes == {"acme/", "zed/"}

    blob = bucket.blob("acme/data/blob.bin")
    assert blob.download_as_bytes(start=100, end=199) == BLOB[100:200]
    assert blob.download_as_bytes(start=len(BLOB) - 40) == BLOB[-40:]
    assert blob.download_as_bytes(checksum="crc32c") == BLOB
    assert (
        bucket.blob("acme/data/tokenizer.json").download_as_bytes(checksum="md5")
        == (SMALL["tokenizer.json"])
    )
    with pytest.raises(gexc.RequestRangeNotSatisfiable):
        blob.download_as_bytes(start=len(BLOB) + 10)

    odd = bucket.get_blob("acme/data/sub/a b+c.txt")  # downloads through its mediaLink
    assert odd is not None and odd.download_as_bytes() == SMALL["sub/a b+c.txt"]
    for hidden in ("acme/data/nope", "acme/data/.git/config", "acme/data/escape", "acme/data"):
        assert bucket.get_blob(hidden) is None
    with pytest.raises(gexc.NotFound):
        bucket.blob("acme/data/escape").download_as_bytes()
    with pytest.raises(gexc.NotFound):
        client.bucket("elsewhere").blob("acme/data/blob.bin").download_as_bytes()


def test_json_shapes_and_clean_errors(store):
    base = f"{store.hub}/storage/v1/b/local/o"
    with httpx.Client() as http:
        page = http.get(base, params={"prefix": "acme/data/", "maxResults": "4"}).json()
        item = page["items"][0]
        assert isinstance(item["size"], str) and isinstance(item["generation"], str)
        assert item["id"] == f"local/{item['name']}/{item['generation']}"
        last = http.get(
            base,
            params={"prefix": "acme/data/", "maxResults": "4", "pageToken": page["nextPageToken"]},
        ).json()
        assert [i["name"] for i in last["items"]] == ["acme/data/tokenizer.json"]
        assert "nextPageToken" not in last
        assert http.get(base, params={"prefix": "nothing/"}).json() == {"kind": "storage#objects"}

        one = http.get(f"{base}/acme%2Fdata%2Fblob.bin").json()
        assert one["size"] == str(len(BLOB)) and one["crc32c"] == b64_crc(BLOB)
        gen = one["generation"]
        media = http.get(
            f"{store.hub}/download/storage/v1/b/local/o/acme%2Fdata%2Fblob.bin",
            params={"alt": "media", "generation": gen},
            headers={"Range": "bytes=10-19"},
        )
        assert media.status_code == 206 and media.content == BLOB[10:20]
        assert media.headers["content-range"] == f"bytes 10-19/{len(BLOB)}"
        assert media.headers["x-goog-generation"] == gen
        assert f"crc32c={b64_crc(BLOB)}" in media.headers["x-goog-hash"]

        def error(response, code, reason):
            assert response.status_code == code
            body = response.json()["error"]
            assert body["code"] == code and body["errors"][0]["reason"] == reason

        stale = http.get(
            f"{base}/acme%2Fdata%2Fblob.bin", params={"alt": "media", "generation": "1"}
        )
        error(stale, 404, "notFound")
        error(http.get(base, params={"maxResults": "x"}), 400, "invalid")
        error(http.get(base, params={"pageToken": "%%%"}), 400, "invalid")
        error(http.get(base, params={"delimiter": "-"}), 400, "invalid")
        error(http.get(base, params={"matchGlob": "**"}), 400, "invalid")
        error(http.post(base, content=b"{}"), 405, "methodNotAllowed")
        error(http.get(f"{store.hub}/storage/v1/b/nope/o"), 404, "notFound")
        error(
            http.get(
                f"{base}/acme%2Fdata%2Fblob.bin",
                params={"alt": "media"},
                headers={"Range": f"bytes={len(BLOB)}-"},
            ),
            416,
            "requestedRangeNotSatisfiable",
        )
        for evil in (
            "..%2F..%2Fetc%2Fpasswd",
            "acme%2F..%2Facme%2Fdata%2Fblob.bin",
            "acme%2Fdata%2F%00",
            "acme%2Fdata%2Fsub%2F..%2Fconfig.json",
        ):
            error(http.get(f"{base}/{evil}"), 404, "notFound")


def test_required_tokens_through_the_service_account_flow(tmp_path, monkeypatch):
    tokens = TokenServer()
    root = tmp_path / "root"
    write_file(root / "acme" / "data" / "blob.bin", BLOB)
    log = tmp_path / "serve.log"
    handle = start_server(root, "--require-token", f"{tokens.url}/introspect", log=log)
    try:
        sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "key.json"))
        client = gcs_client(handle.hub)  # Application Default Credentials: the key file
        blobs = list(client.list_blobs("local", prefix="acme/"))
        assert [b.name for b in blobs] == ["acme/data/blob.bin"]
        assert blobs[0].download_as_bytes(start=5, end=1004) == BLOB[5:1005]
        assert tokens.issued and tokens.calls["bad_assertion"] == 0
        stats = handle.stats()
        assert stats["gcs"]["refused"] == 0
        assert stats["requests_with_credentials"]["gcs"] == stats["gcs"]["requests"] >= 2

        with httpx.Client() as http:
            bare = http.get(f"{handle.hub}/storage/v1/b/local/o")
        assert bare.status_code == 401
        assert bare.json()["error"]["errors"][0] == {
            "domain": "global",
            "reason": "required",
            "message": "Login Required",
            "locationType": "header",
            "location": "Authorization",
        }

        used = next(t for t in tokens.issued if tokens.introspected[t])
        asked = tokens.calls["introspect"]
        tokens.revoke(used)
        with httpx.Client() as http:

            def status(token):
                response = http.get(
                    f"{handle.hub}/storage/v1/b/local/o",
                    headers={"Authorization": f"Bearer {token}"},
                )
                return response.status_code, response.json()

            # an accepted token is trusted for up to a minute without asking again
            assert status(used)[0] == 200
            assert tokens.calls["introspect"] == asked
            code, body = status("ya29.never-issued")
            assert code == 401 and body["error"]["errors"][0]["reason"] == "authError"
            assert tokens.calls["introspect"] == asked + 1
    finally:
        handle.stop()
        tokens.stop()
    text = log.read_text()
    assert not any(token in text for token in tokens.issued)


def test_required_tokens_from_a_file_rotate_without_restart(tmp_path):
    root = tmp_path / "root"
    write_file(root / "acme" / "data" / "a.txt", b"hello")
    token_file = tmp_path / "tokens"
    token_file.write_text("# readers\nfirst-token\n\n")
    handle = start_server(root, "--require-token", str(token_file))
    url = f"{handle.hub}/download/storage/v1/b/local/o/acme%2Fdata%2Fa.txt?alt=media"
    try:
        with httpx.Client() as http:

            def status(token):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return http.get(url, headers=headers).status_code

            assert (status("first-token"), status("other"), status(None)) == (200, 401, 401)
            assert http.get(f"{handle.hub}/api/v1/models/acme/data").status_code == 200
            token_file.write_text("second-token\n")
            deadline = time.monotonic() + 10
            while status("second-token") != 200:
                assert time.monotonic() < deadline, "rotated token never accepted"
                time.sleep(0.2)
            assert status("first-token") == 401
    finally:
        handle.stop()
