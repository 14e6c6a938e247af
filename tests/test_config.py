"""Settings precedence, config-file errors, the fstab option translation, systemd bits."""

from __future__ import annotations

import socket

import pytest

from fusefs.cli.fstab import HelperError, translate
from fusefs.cli.mount import mount as mount_command
from fusefs.cli.systemd import unit_text
from fusefs.config import SETTINGS, ConfigError, merge
from fusefs.fs import systemd


def write(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_flag_beats_env_beats_file_beats_default(tmp_path):
    path = write(
        tmp_path, 'hub = "http://file:1"\nregion = "from-file"\nmemory = "1G"\nread_timeout = 12\n'
    )
    env = {"MODELFS_REGION": "from-env"}
    got = merge({"region": "from-flag"}, path, env)
    assert (got["region"].value, got["region"].origin) == ("from-flag", "flag")
    got = merge({}, path, env)
    assert (got["region"].value, got["region"].origin) == ("from-env", "env MODELFS_REGION")
    assert (got["hub"].value, got["hub"].origin) == ("http://file:1", f"file {path}")
    assert got["memory"].value == 1 << 30 and got["read_timeout"].value == 12.0
    assert (got["log_format"].value, got["log_format"].origin) == ("text", "default")


def test_modelscope_region_variables_are_honoured():
    got = merge(
        {},
        None,
        {
            "MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION": "cn-a",
            "MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS": "cn-b,cn-c",
        },
    )
    assert got["region"].value == "cn-a"
    assert got["inter_regions"].value == ("cn-b", "cn-c")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('hubb = "http://x:1"\n', "unknown key 'hubb'"),
        ('memory = "lots"\n', "memory"),
        ('region = "Bad Region"\n', "region"),
        ("read_timeout = -1\n", "read_timeout"),
        ('repos = ["noslash"]\n', "repos"),
        ("hub = \n", "config file"),
        ('hub = "gs://Not_A_Bucket/models"\n', "bad bucket name"),
        ('hub = "gs://bkt/../models"\n', "bad prefix"),
        ('hub = "s3://bkt"\n', "gs://BUCKET"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        merge({}, write(tmp_path, text), {})
    assert words in str(e.value)


def test_a_bucket_is_a_hub(tmp_path):
    got = merge({}, write(tmp_path, 'hub = "gs://bkt/models/zoo/"\n'), {})
    assert got["hub"].value == "gs://bkt/models/zoo"
    assert translate("gs://bkt/models", "/models", "repo=a/b") == [
        "mount",
        "/models",
        "--hub",
        "gs://bkt/models",
        "--repo",
        "a/b",
    ]


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError):
        merge({}, str(tmp_path / "nope.toml"), {})


def test_fstab_options_translate_to_a_mount_command():
    args = translate(
        "http://hub:8080",
        "/models",
        "repo=a/b,repo=c/d@v1,region=cn-a,inter_regions=cn-b:cn-c,_netdev,"
        "x-systemd.automount,allow_other,noauto",
    )
    assert args == [
        "mount",
        "/models",
        "--hub",
        "http://hub:8080",
        "--repo",
        "a/b",
        "--repo",
        "c/d@v1",
        "--region",
        "cn-a",
        "--inter-regions",
        "cn-b,cn-c",
        "--allow-other",
        "true",
    ]
    with pytest.raises(HelperError):
        translate("modelfs", "/m", "bogus=1")
    with pytest.raises(HelperError):
        translate("modelfs", "/m", "hub=")


# One fstab option per setting, as a user would write it: every setting must be here.
FSTAB_EXAMPLES = {
    "hub": ("hub=http://hub:8080", "http://hub:8080"),
    "repos": ("repo=a/b", ("a/b",)),
    "repo_type": ("repo_type=dataset", "dataset"),
    "region": ("region=cn-a", "cn-a"),
    "inter_regions": ("inter_regions=cn-b:cn-c", ("cn-b", "cn-c")),
    "token_file": ("token_file=/etc/modelfs/token", "/etc/modelfs/token"),
    "gcs_endpoint": ("gcs_endpoint=http://127.0.0.1:4443", "http://127.0.0.1:4443"),
    "gcs_grpc_endpoint": ("gcs_grpc_endpoint=127.0.0.1:4443", "grpc://127.0.0.1:4443"),
    "memory": ("memory=512M", 512 << 20),
    "cache_dir": ("cache_dir=/var/cache/modelfs", "/var/cache/modelfs"),
    "cache_size": ("cache_size=200G", 200 << 30),
    "cache_min_free": ("cache_min_free=10G", 10 << 30),
    "read_timeout": ("read_timeout=12", 12.0),
    "linger": ("linger=0", 0.0),
    "max_streams": ("max_streams=32", 32),
    "metrics": ("metrics=127.0.0.1:9464", "127.0.0.1:9464"),
    "log_format": ("log_format=json", "json"),
    "log_level": ("log_level=debug", "debug"),
    "allow_other": ("allow_other", True),
}


def test_every_setting_is_an_fstab_option_the_mount_command_takes():
    assert set(FSTAB_EXAMPLES) == {s.key for s in SETTINGS}, "an example for each setting"
    for key, (option, value) in FSTAB_EXAMPLES.items():
        args = translate("modelfs", "/models", option)
        ctx = mount_command.make_context("mount", args[1:])  # parses, runs nothing
        assert merge({key: ctx.params[key]}, None, {})[key].value == value, option


def test_notify_sends_to_a_real_datagram_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert systemd.notify("READY=1")
        assert sock.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")


def test_units_are_notify_type_with_unmount_on_stop():
    unit = unit_text(False, "/data/models", "/etc/modelfs/x.toml")
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert "mount /data/models --foreground --config /etc/modelfs/x.toml" in unit
    assert "unmount /data/models" in unit
    template = unit_text(True)
    assert "mount %f --foreground --config /etc/modelfs/%i.toml" in template
