"""`modelfs mount --hub gs://BUCKET[/PREFIX]` against `modelfs serve`'s Cloud Storage side:
google-auth's service-account flow with tokens the store checks (expired mid-read and
refreshed, refused with a clean EACCES and one log line, never sent elsewhere or
logged); 5,000 objects listed through pages with their generations pinned (a changed
object never served to the pinned snapshot, the disk cache keyed and sealed by MD5);
and a store that refuses bidi reads, read with media GETs instead."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

import pytest

from fusefs.testing import (
    MiB,
    free_port,
    mount_factory,
    sample_bytes,
    start_server,
    wait_for,
    write_file,
)

from support.gcs import TokenServer, sa_environment

BIG = sample_bytes(32 * MiB + 123, seed=21)  # larger than read-ahead: read in pieces
N = 5000


def warnings_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if " WARNING " in line]


def read_range(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_bucket_mount_with_checked_tokens(tmp_path, monkeypatch):
    tokens = TokenServer()
    root = tmp_path / "root"
    files = {
        "big.bin": BIG,
        "config.json": b'{"layers": 2}\n',
        "refused-a.bin": sample_bytes(300_000, seed=22),
        "refused-b.bin": sample_bytes(200_000, seed=23),
    }
    for name, data in files.items():
        write_file(root / "acme" / "m" / name, data)
    serve_log = tmp_path / "serve.log"
    server = start_server(
        root, "--require-token", f"{tokens.url}/introspect", "--faults", log=serve_log
    )
    try:
        sa_environment(monkeypatch, tmp_path, tokens.key_file(tmp_path / "key.json"))
        tokens.lifetime = 3.0  # what the store accepts; the client is told an hour
        endpoints = ("--gcs-endpoint", server.hub, "--gcs-grpc-endpoint", server.grpc[""])
        with mount_factory(tmp_path, "gs://local", *endpoints) as mount:
            m = mount("--repo", "acme/m")
            repo = m.path / "acme" / "m"
            assert sorted(os.listdir(repo)) == sorted(files)
            st = os.stat(repo / "big.bin")
            on_disk = os.stat(root / "acme" / "m" / "big.bin")
            assert (st.st_size, int(st.st_mtime)) == (len(BIG), int(on_disk.st_mtime))
            assert (repo / "config.json").read_bytes() == files["config.json"]
            source = os.getxattr(repo / "config.json", "user.modelfs.source")
            endpoint = os.getxattr(repo / "config.json", "user.modelfs.endpoint").decode()
            generation = on_disk_generation(root / "acme" / "m" / "config.json")
            assert source == b"bucket"
            assert (
                endpoint
                == f"grpc://{server.grpc['']}/local/acme/m/config.json?generation={generation}"
            )
            assert tokens.calls["token"] == 1  # the listing and the streams: one token

            # The store stops accepting the token mid-read: the stream that reopens
            # after a break is refused once, gets a new token, and reads on.
            assert read_range(repo / "big.bin", 0, 65536) == BIG[:65536]
            time.sleep(tokens.lifetime + 0.5)
            assert not tokens.valid(tokens.issued[0])
            server.add_fault("break", after_bytes=0)
            far = len(BIG) - 4 * MiB - 5
            assert read_range(repo / "big.bin", far, MiB) == BIG[far : far + MiB]
            assert (repo / "big.bin").read_bytes() == BIG
            assert tokens.calls["token"] == 2
            assert server.stats()["streams_unauthenticated"] == 1

            # Tokens the store refuses, however fresh: EACCES at once, one log line, and
            # no storm of calls or token requests.
            tokens.lifetime = 0.0  # born expired
            time.sleep(3.2)  # and the token in hand has expired by now
            before_log = len(warnings_in(m.log_text()))
            refused, asked = server.stats()["streams_unauthenticated"], tokens.calls["token"]
            for _ in range(5):
                for name in ("refused-a.bin", "refused-b.bin"):
                    with pytest.raises(PermissionError) as failed:
                        (repo / name).read_bytes()
                    assert failed.value.errno == errno.EACCES
            new = warnings_in(m.log_text())[before_log:]
            assert len(new) == 1 and "EACCES" in new[0], new
            assert server.stats()["streams_unauthenticated"] - refused == 2
            assert tokens.calls["token"] - asked == 1
        stats = server.stats()
        assert stats["requests_with_credentials"]["api"] == 0  # never to the hub API
        assert stats["requests_with_credentials"]["cdn"] == 0  # nor to the CDN route
        assert stats["gcs"]["refused"] == 0
        logs = m.log_text() + serve_log.read_text()
        assert tokens.issued and not any(token in logs for token in tokens.issued)
        assert tokens.calls["bad_assertion"] == 0
    finally:
        server.stop()
        tokens.stop()


def on_disk_generation(path: Path) -> int:
    return max(1, os.stat(path).st_mtime_ns // 1000)


def part(i: int) -> str:
    return f"shard-{i % 50:02d}/part-{i:05d}.bin"


def part_bytes(i: int) -> bytes:
    return f"object {i}\n".encode() * (1 + i % 7)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A bucket (the store's region `local`) holding 5,000 objects of acme/many, and a
    few larger ones, under the prefix `models/zoo/`."""
    root = tmp_path_factory.mktemp("zoo") / "root"
    repo = root / "models" / "zoo" / "acme" / "many"
    for i in range(N):
        write_file(repo / part(i), part_bytes(i))
    for i in range(4):
        write_file(repo / f"big-{i}.bin", sample_bytes(3 * MiB + i, seed=30 + i))
    server = start_server(root, "--faults")
    yield server, repo
    server.stop()


def test_5000_objects_pinned_and_a_changed_object_never_served(zoo, tmp_path, monkeypatch):
    server, repo = zoo
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.hub)  # anonymous, as Google's clients
    cache = tmp_path / "cache"
    args = ("--gcs-grpc-endpoint", server.grpc[""], "--cache-dir", str(cache))
    with mount_factory(tmp_path, "gs://local/models/zoo", *args) as mount:
        before = server.stats()["gcs"]["requests"]
        m = mount("--repo", "acme/many")
        assert server.stats()["gcs"]["requests"] - before == 6  # 5,004 objects, 1,000 a page
        view = m.path / "acme" / "many"
        assert len(os.listdir(view / "shard-07")) == N // 50
        assert (view / part(4321)).read_bytes() == part_bytes(4321)
        assert (view / "big-0.bin").read_bytes() == (repo / "big-0.bin").read_bytes()
        wait_for(lambda: m.status()["cache"]["sealed"] >= 2, what="files sealed by MD5")
        assert m.status()["cache"]["rejected"] == 0
        entries = [p.name for p in (cache / "v1" / "entries").glob("*/*") if ".tmp." not in p.name]
        assert entries and all(re.fullmatch(r"md5-[0-9a-f]{32}-\d+", e) for e in entries)

        # Objects overwritten in the bucket: new generations, never the pinned snapshot's.
        old = {name: (repo / name).read_bytes() for name in ("big-0.bin", "big-1.bin")}
        for name, data in old.items():
            changed = bytes(255 - b for b in data)  # same size, other bytes
            write_file(repo / name, changed)
            stamp = time.time_ns() + 10_000_000
            os.utime(repo / name, ns=(stamp, stamp))
        assert (view / "big-0.bin").read_bytes() == old["big-0.bin"]  # sealed: from disk
        with pytest.raises(OSError) as failed:
            (view / "big-1.bin").read_bytes()
        assert failed.value.errno == errno.EIO
        assert "generation" in m.log_text()

        # A store that refuses bidi reads: the same files with media GETs, one log line.
        server.reset_stats()
        server.add_fault("bidi_refused", count=100)
        before_log = len(warnings_in(m.log_text()))
        for name in ("big-2.bin", "big-3.bin", part(17)):
            assert (view / name).read_bytes() == (repo / name).read_bytes()
        stats = server.stats()
        assert stats["faults_injected"]["bidi_refused"] == 1  # then media GETs alone
        assert stats["gcs"]["bytes"] >= 2 * 3 * MiB
        new = warnings_in(m.log_text())[before_log:]
        assert len(new) == 1 and "refuses bidi reads" in new[0], new
        assert m.status()["media_buckets"] == ["local"]
        server.clear_faults()
    # With the bucket out of reach, a node still mounts from the listing the cache kept
    # (its generations and hashes with it), and reads its sealed files.
    away = ("--gcs-endpoint", f"http://127.0.0.1:{free_port()}", "--read-timeout", "3")
    with mount_factory(tmp_path / "away", "gs://local/models/zoo", *args, *away) as mount:
        m = mount("--repo", "acme/many")
        assert "using the listing kept in the cache" in m.log_text()
        assert (m.path / "acme/many" / part(4321)).read_bytes() == part_bytes(4321)
        assert m.status()["cache"]["hit_bytes"] == len(part_bytes(4321))
