"""Mount settings: one table of every setting, merged flag > env > config file > default.

Each setting is declared once, as a field of `Settings`; the `mount` command's
options, the config file's keys, the environment variables, the fstab options and
`modelfs config show` all come from it, so they cannot drift apart, and code that
reads a setting gets it typed.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fusefs.cache.store import DEFAULT_CACHE_SIZE, DEFAULT_MIN_FREE
from fusefs.data.client import DEFAULT_MAX_STREAMS, DEFAULT_MEMORY_BUDGET
from fusefs.data.gcs_auth import GrpcEndpoint, JsonEndpoint
from fusefs.data.location import valid_region
from fusefs.hub.client import RepoSpec
from fusefs.hub.gcs import BucketUrl
from fusefs.vfs.openfiles import DEFAULT_LINGER

DEFAULT_CONFIG = "/etc/modelfs/config.toml"


class ConfigError(ValueError):
    """A bad setting; the message names the key."""


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def _hub(value: object) -> str:
    """A hub's http(s) URL, or gs://BUCKET[/PREFIX] (a bucket read as a catalog)."""
    text = _text(value)
    if text.startswith("gs://"):
        return str(BucketUrl.parse(text))  # ValueError names what is wrong
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"expected an http(s) URL or gs://BUCKET[/PREFIX], got {text!r}")
    return text.rstrip("/")


def _region(value: object) -> str:
    text = _text(value)
    if not valid_region(text):
        raise ValueError(f"bad region name {text!r}: use lowercase letters, digits and '-'")
    return text


def _list(item: Callable[[object], str]) -> Callable[[object], tuple[str, ...]]:
    def parse(value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError("expected a list")
        return tuple(item(v) for v in value)

    return parse


def parse_size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        text = _text(value).lower().removesuffix("ib").removesuffix("b")
        units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
        scale = units.get(text[-1:], 1)
        try:
            n = int(float(text[:-1] if text[-1:] in units else text) * scale)
        except ValueError:
            raise ValueError(f"not a size: {value!r} (use e.g. 512M, 2G)") from None
    if n <= 0:
        raise ValueError(f"size must be positive: {value!r}")
    return n


def _seconds(value: object) -> float:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"not a number of seconds: {value!r}") from None
    if not 0 < n <= 86400:
        raise ValueError(f"seconds out of range: {value!r}")
    return n


def _linger(value: object) -> float:
    try:
        n = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"not a number of seconds: {value!r}") from None
    if not 0 <= n <= 3600:
        raise ValueError(f"seconds out of range (0 to 3600): {value!r}")
    return n


def _count(value: object) -> int:
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else -1
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None
    if not 1 <= n <= 100_000:
        raise ValueError(f"out of range (1 to 100000): {value!r}")
    return n


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _host_port(value: object) -> str:
    text = _text(value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return text


def _gcs_endpoint(value: object) -> str:
    return JsonEndpoint.parse(_text(value)).base


def _gcs_grpc_endpoint(value: object) -> str:
    return str(GrpcEndpoint.parse(_text(value)))


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value).lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return text

    return parse


def _path(value: object) -> str:
    return os.path.abspath(os.path.expanduser(_text(value)))


def _repo(value: object) -> str:
    text = _text(value)
    RepoSpec.parse(text)  # ValueError names what is wrong
    return text


@dataclass(frozen=True)
class Setting:
    """How one setting is given: its key, parser, environment variables and help."""

    key: str  # config-file key; the flag is --key with '_' as '-'
    parse: Callable[[object], object]
    default: object
    envvars: tuple[str, ...]
    help: str
    metavar: str = ""
    flag_name: str = ""  # when the flag is not --key
    repeatable: bool = False  # the flag may be given several times

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.key.replace("_", "-")


def _setting(
    parse: Callable[[object], Any],
    default: Any,
    envvars: tuple[str, ...],
    help: str,
    metavar: str = "",
    *,
    flag_name: str = "",
    repeatable: bool = False,
) -> Any:
    """A field of `Settings`, carrying how it is given (the key is the field's name)."""
    spec = {
        "parse": parse,
        "envvars": envvars,
        "help": help,
        "metavar": metavar,
        "flag_name": flag_name,
        "repeatable": repeatable,
    }
    return field(default=default, metadata={"setting": spec})


@dataclass(frozen=True)
class Settings:
    """Every mount setting, typed; see `SETTINGS` for how each is given."""

    hub: str | None = _setting(
        _hub,
        None,
        ("MODELFS_HUB",),
        "Hub API base URL, or a Cloud Storage bucket laid out as PREFIX/<owner>/<name>/<files…>.",
        "URL|gs://BUCKET[/PREFIX]",
    )
    repos: tuple[str, ...] = _setting(
        _list(_repo),
        (),
        ("MODELFS_REPOS",),
        "Pin a repo at mount (repeatable); others are found on first access.",
        "OWNER/NAME[@REV]",
        flag_name="--repo",
        repeatable=True,
    )
    repo_type: str = _setting(
        _choice("model", "dataset"),
        "model",
        ("MODELFS_REPO_TYPE",),
        "Kind of repos this mount shows (one kind per mount, like the SDK's repo_type).",
        "model|dataset",
    )
    region: str | None = _setting(
        _region,
        None,
        ("MODELFS_REGION", "MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION"),
        "This machine's region; asked of the hub when unset.",
        "NAME",
    )
    inter_regions: tuple[str, ...] = _setting(
        _list(_region),
        (),
        ("MODELFS_INTER_REGIONS", "MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS"),
        "Peer regions reachable over private links, in order of preference.",
        "A,B",
    )
    token_file: str | None = _setting(
        _path,
        None,
        ("MODELFS_TOKEN_FILE",),
        "File holding the hub token (MODELSCOPE_API_TOKEN is read too).",
        "PATH",
    )
    gcs_endpoint: str | None = _setting(
        _gcs_endpoint,
        None,
        ("MODELFS_GCS_ENDPOINT",),
        "Cloud Storage JSON API base URL [default: STORAGE_EMULATOR_HOST (then no "
        "credentials are sent), else https://storage.googleapis.com]; HOST:PORT means http.",
        "URL",
    )
    gcs_grpc_endpoint: str | None = _setting(
        _gcs_grpc_endpoint,
        None,
        ("MODELFS_GCS_GRPC_ENDPOINT",),
        "Cloud Storage gRPC endpoint [default: grpcs://storage.googleapis.com:443]; "
        "grpcs:// means TLS, a bare HOST:PORT or grpc:// means none.",
        "[grpcs://]HOST:PORT",
    )
    memory: int = _setting(
        parse_size,
        DEFAULT_MEMORY_BUDGET,
        ("MODELFS_MEMORY",),
        "Budget for buffered and prefetched bytes, all files together.",
        "SIZE",
    )
    cache_dir: str | None = _setting(
        _path,
        None,
        ("MODELFS_CACHE_DIR",),
        "Keep fetched blocks on local disk here, across mounts and restarts (off when unset).",
        "DIR",
    )
    cache_size: int = _setting(
        parse_size,
        DEFAULT_CACHE_SIZE,
        ("MODELFS_CACHE_SIZE",),
        "Most disk the cache may take; least recently used files go first.",
        "SIZE",
    )
    cache_min_free: int = _setting(
        parse_size,
        DEFAULT_MIN_FREE,
        ("MODELFS_CACHE_MIN_FREE",),
        "Free space the cache always leaves on its filesystem.",
        "SIZE",
    )
    read_timeout: float = _setting(
        _seconds,
        30.0,
        ("MODELFS_READ_TIMEOUT",),
        "A read not served within this many seconds fails with EIO.",
        "SECONDS",
    )
    linger: float = _setting(
        _linger,
        DEFAULT_LINGER,
        ("MODELFS_LINGER",),
        "Keep a closed file's stream and cache entry this long for a quick reopen (0: none).",
        "SECONDS",
    )
    max_streams: int = _setting(
        _count,
        DEFAULT_MAX_STREAMS,
        ("MODELFS_MAX_STREAMS",),
        "Most data streams open at once (idle ones close first; beyond, reads wait their "
        "turn); also the most closed files kept for a quick reopen.",
        "N",
    )
    metrics: str | None = _setting(
        _host_port,
        None,
        ("MODELFS_METRICS",),
        "Serve Prometheus metrics on this address (loopback advised).",
        "HOST:PORT",
    )
    log_format: str = _setting(
        _choice("text", "json"),
        "text",
        ("MODELFS_LOG_FORMAT",),
        "Log lines as text or JSON.",
        "text|json",
    )
    log_level: str = _setting(
        _choice("debug", "info", "warning", "error"),
        "info",
        ("MODELFS_LOG_LEVEL",),
        "Least severe level logged.",
        "LEVEL",
    )
    allow_other: bool = _setting(
        _bool,
        False,
        ("MODELFS_ALLOW_OTHER",),
        "Let users other than the mounting one read the mount.",
        "BOOL",
    )

    @classmethod
    def from_values(cls, values: Mapping[str, Value]) -> Settings:
        return cls(**{key: v.value for key, v in values.items()})


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, default=f.default, **f.metadata["setting"]) for f in fields(Settings)
)
BY_KEY = {s.key: s for s in SETTINGS}


def is_boolean(s: Setting) -> bool:
    """A yes/no setting (may be given as a bare word where that reads naturally)."""
    return s.parse is _bool


def is_list(s: Setting) -> bool:
    return isinstance(s.default, tuple)


@dataclass(frozen=True)
class Value:
    value: Any  # of the type of the `Settings` field with the same key
    origin: str  # "flag", "env NAME", "file PATH", "default"


def load_file(path: str | None, environ: Mapping[str, str]) -> tuple[dict[str, Any], str | None]:
    """The config file's table and its path; {} when no file applies."""
    explicit = path is not None or bool(environ.get("MODELFS_CONFIG"))
    path = path or environ.get("MODELFS_CONFIG") or DEFAULT_CONFIG
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"config file {path} does not exist")
        return {}, None
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    for key in table:
        if key not in BY_KEY:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
    return table, path


def merge(
    flags: Mapping[str, object],
    config_path: str | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Value]:
    """Every setting's effective value and where it came from."""
    env_now: Mapping[str, str] = os.environ if environ is None else environ
    table, path = load_file(config_path, env_now)
    out: dict[str, Value] = {}
    for s in SETTINGS:
        raw, origin = s.default, "default"
        env = next((e for e in s.envvars if env_now.get(e)), None)
        if flags.get(s.key) not in (None, ()):
            raw, origin = flags[s.key], "flag"
        elif env is not None:
            raw, origin = env_now[env], f"env {env}"
        elif s.key in table:
            raw, origin = table[s.key], f"file {path}"
        if origin == "default":
            out[s.key] = Value(raw, origin)
            continue
        try:
            out[s.key] = Value(s.parse(raw), origin)
        except ValueError as e:
            where = {"flag": s.flag}.get(origin, f"{s.key} ({origin})")
            raise ConfigError(f"{where}: {e}") from None
    return out
