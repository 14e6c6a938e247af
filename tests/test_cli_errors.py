"""Bad command lines and unsafe situations: one clear line, non-zero exit, nothing mounted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fusefs.testing import (
    clean_env,
    is_mounted,
    run_cli,
    sample_bytes,
    sha256_file,
    start_mount,
    start_server,
    write_file,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    write_file(root / "acme" / "m" / "w.bin", sample_bytes(2 << 20, seed=1))
    handle = start_server(root)
    yield handle
    handle.stop()


def one_line_error(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_already_mounted_mountpoint(server, tmp_path):
    m = start_mount(tmp_path / "m", server.hub, "--repo", "acme/m", "--region", "local")
    try:
        one_line_error(
            run_cli("mount", str(m.path), "--hub", server.hub, "--region", "local"),
            "already a mountpoint",
        )
    finally:
        m.unmount()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--region", "Bad Region"], "bad region name"),
        (["--inter-regions", "ok,NOT_OK"], "bad region name"),
        (["--memory", "lots"], "--memory"),
        (["--read-timeout", "-3"], "--read-timeout"),
        (["--metrics", "nowhere"], "--metrics"),
        (["--cache-size", "0"], "--cache-size"),
        (["--cache-min-free", "much"], "--cache-min-free"),
        (["--cache-dir", "/proc/version/cache"], "cache directory /proc/version/cache"),
        (["--gcs-endpoint", "ftp://storage"], "--gcs-endpoint"),
        (["--gcs-grpc-endpoint", "storage.googleapis.com"], "--gcs-grpc-endpoint"),
    ],
)
def test_bad_settings(server, tmp_path, args, words):
    one_line_error(run_cli("mount", str(tmp_path), "--hub", server.hub, *args), words)
    assert not is_mounted(tmp_path)


def test_a_bucket_mount_without_credentials(tmp_path):
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    env = clean_env(
        GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "missing-key.json"),
        CLOUDSDK_CONFIG=str(gcloud),
        NO_GCE_CHECK="true",
        STORAGE_EMULATOR_HOST="",
    )
    (tmp_path / "m").mkdir()
    result = run_cli("mount", str(tmp_path / "m"), "--hub", "gs://bkt/models", env=env)
    one_line_error(result, "no usable Google credentials")
    assert not is_mounted(tmp_path / "m")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--require-token", "/nonexistent/tokens"], "token file /nonexistent/tokens"),
        (["--require-token", "http://user@host/introspect"], "bad introspection URL"),
    ],
)
def test_bad_serve_settings(tmp_path, args, words):
    one_line_error(run_cli("serve", str(tmp_path), "--http", "127.0.0.1:0", *args), words)


def test_bad_config_file(server, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('hub = "http://x:1"\nregoin = "typo"\n')
    mp = tmp_path / "mp"
    mp.mkdir()
    one_line_error(run_cli("mount", str(mp), "--config", str(config)), "unknown key 'regoin'")
    one_line_error(
        run_cli("mount", str(mp), "--config", str(tmp_path / "none.toml")), "does not exist"
    )
    one_line_error(run_cli("mount", str(mp)), "no hub")
    assert not is_mounted(mp)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_no_fuse_device(server, tmp_path):
    mp = tmp_path / "mp"
    mp.mkdir()
    fake = tmp_path / "not-a-device"
    fake.write_text("")
    # In a private mount namespace, hide the FUSE device behind a plain file.
    script = (
        f"mount --bind {fake} /dev/fuse && exec {sys.executable} -m fusefs mount {mp} "
        f"--hub {server.hub} --region local --foreground"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    one_line_error(result, "/dev/fuse")
    assert not is_mounted(mp)


def test_token_goes_only_to_the_hub_and_never_into_logs(server, tmp_path):
    token = "tok-" + "s3cr3t" * 4
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    server.reset_stats()
    # a region the store does not play: the bytes come over the CDN route
    m = start_mount(
        tmp_path / "m",
        server.hub,
        "--repo",
        "acme/m",
        "--token-file",
        str(token_file),
        "--log-level",
        "debug",
        "--log-format",
        "json",
        "--region",
        "elsewhere",
    )
    try:
        assert sha256_file(m.path / "acme" / "m" / "w.bin")
        assert os.getxattr(m.path / "acme" / "m" / "w.bin", "user.modelfs.source") == b"cdn"
        stats = server.stats()
        assert stats["cdn_bytes"] > 0
        creds = stats["requests_with_credentials"]
        assert creds["api"] > 0 and creds["cdn"] == 0
    finally:
        m.unmount()
    log = m.log_text()
    assert token not in log
    events = [json.loads(line) for line in log.splitlines() if line.strip()]  # one JSON per line
    assert any("via cdn" in e["message"] for e in events)
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in events)
    assert "allow_other" not in open("/proc/mounts").read()
