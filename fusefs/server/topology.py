"""Which regions the store plays, where each listens, and which repos each holds.

[regions.cn-hangzhou]
grpc = "127.0.0.1:0"
repos = ["Qwen/*", "acme/model-a"]
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass

from fusefs.data.location import valid_region


class TopologyError(ValueError):
    pass


@dataclass(frozen=True)
class Region:
    name: str
    grpc: str  # HOST:PORT to listen on (port 0: any free port)
    repos: tuple[str, ...]  # globs over "owner/name"

    def holds(self, repo: str) -> bool:
        return any(fnmatch.fnmatchcase(repo, pattern) for pattern in self.repos)


def parse_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise TopologyError(f"{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def load(path: str) -> list[Region]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TopologyError(f"topology {path}: {e}") from None
    unknown = set(doc) - {"regions"}
    if unknown:
        raise TopologyError(f"topology {path}: unknown key {sorted(unknown)[0]!r}")
    table = doc.get("regions")
    if not isinstance(table, dict) or not table:
        raise TopologyError(f"topology {path}: no [regions.<name>] tables")
    regions = []
    for name, spec in table.items():
        where = f"topology {path}: regions.{name}"
        if not valid_region(name):
            raise TopologyError(f"{where}: bad region name")
        if not isinstance(spec, dict):
            raise TopologyError(f"{where}: expected a table")
        extra = set(spec) - {"grpc", "repos"}
        if extra:
            raise TopologyError(f"{where}: unknown key {sorted(extra)[0]!r}")
        if "grpc" not in spec:
            raise TopologyError(f"{where}: missing key 'grpc'")
        parse_host_port(spec["grpc"], f"{where}.grpc")
        repos = spec.get("repos", [])
        if not isinstance(repos, list) or not all(isinstance(r, str) and "/" in r for r in repos):
            raise TopologyError(f'{where}.repos: expected a list of "owner/name" globs')
        regions.append(Region(name, spec["grpc"], tuple(repos)))
    return regions
