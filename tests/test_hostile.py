"""Hostile hub answers: refused with a log line, the mount stays up, no wrong byte is served.

The hostile hub is a real HTTP server on loopback that answers what each test
scripts; where a data path is needed it hands out this test's own CDN route.
"""

from __future__ import annotations

import errno
import os
import re

import pytest

from fusefs.testing import is_mounted, mount_factory, run_cli

from support.doubles import COMMIT, CONTENT, HostileHub


@pytest.fixture
def hub():
    h = HostileHub()
    yield h
    h.stop()


@pytest.fixture
def mounted(hub, tmp_path):
    with mount_factory(
        tmp_path, hub.url, "--repo", "evil/repo", "--region", "r1", "--read-timeout", "5"
    ) as make:
        yield make


def blob(path, size=None):
    size = len(CONTENT) if size is None else size
    return {"Path": path, "Name": path.rsplit("/", 1)[-1], "Size": size, "Type": "blob"}


def test_bad_names_sizes_and_clashes_are_skipped_with_a_log_line(hub, mounted):
    hub.files = [
        blob("good.bin"),
        blob("dir/inner.bin"),
        blob("../escape"),
        blob("/etc/passwd"),
        blob("a//b"),
        blob("nul\u0000x"),
        blob(""),
        blob("good.bin"),
        blob("dir"),
        blob("neg", -5),
        blob("huge", 1 << 62),
        {"Path": 7},
        "junk",
    ]
    m = mounted()
    repo = m.path / "evil" / "repo"
    assert sorted(os.listdir(repo)) == ["dir", "good.bin"]
    assert os.listdir(repo / "dir") == ["inner.bin"]
    assert (repo / "good.bin").read_bytes() == CONTENT
    log = m.log_text()
    for words in [
        "'..'",
        "absolute path",
        "empty name",
        "NUL",
        "duplicate",
        "a directory of that name",
        "bad size",
        "not an object",
    ]:
        assert words in log, words


def test_malformed_listing_fails_the_mount_with_one_line(hub, tmp_path):
    hub.listing_body = b'{"Code": 200, "Data": {"Files": [tru'
    mp = tmp_path / "m"
    mp.mkdir()
    result = run_cli("mount", str(mp), "--hub", hub.url, "--repo", "evil/repo", "--region", "r1")
    assert result.returncode != 0
    assert "malformed JSON" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not is_mounted(mp)


def test_listing_that_lies_about_size_is_never_served(hub, mounted):
    hub.files = [blob("short.bin", len(CONTENT) + 10)]  # the data path has fewer bytes
    m = mounted()
    with pytest.raises(OSError) as e:
        (m.path / "evil" / "repo" / "short.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert "Content-Range" in m.log_text()


@pytest.mark.parametrize(
    "location",
    [
        "file:///etc/passwd",
        "ftp://x/y",
        "gopher://h/1",
        # http(s), but not to be sent as it is: refused where the probe's answer arrives
        "http://127.0.0.1:1/a b",
        "http://user:secret@127.0.0.1:1/f.bin",
        "http://127.0.0.1:99999/f.bin",
    ],
)
def test_location_that_cannot_be_followed_is_refused(hub, mounted, location):
    hub.files = [blob("f.bin")]
    hub.location = location
    m = mounted()
    with pytest.raises(OSError) as e:
        open(m.path / "evil" / "repo" / "f.bin", "rb")
    assert e.value.errno == errno.EIO
    assert "refusing Location" in m.log_text()
    assert os.listdir(m.path / "evil" / "repo") == ["f.bin"]  # the mount is still up


def test_redirect_loop_is_an_error_not_a_hang(hub, mounted):
    hub.files = [blob("f.bin")]
    m = mounted()
    # every data URL redirects back to the probe URL, forever
    hub.location = f"{hub.url}/api/v1/models/evil/repo/repo?Revision={COMMIT}&FilePath=f.bin"
    with pytest.raises(OSError) as e:
        (m.path / "evil" / "repo" / "f.bin").read_bytes()
    assert e.value.errno == errno.EIO


def test_data_past_what_was_asked_is_refused(hub, mounted):
    hub.files = [blob("f.bin")]
    hub.cdn_extra = b"EXTRA BYTES"
    m = mounted()
    with pytest.raises(OSError) as e:
        (m.path / "evil" / "repo" / "f.bin").read_bytes()
    assert e.value.errno == errno.EIO
    # Refused on its declared length, before a byte of the body is taken.
    assert re.search(r"Content-Length \['\d+'\] for \d+ bytes", m.log_text())
