"""`mount.fuse.modelfs`: lets mount(8) and /etc/fstab start a modelfs mount.

mount(8) runs `mount.fuse.modelfs SOURCE MOUNTPOINT -o OPTIONS`. SOURCE may be
the hub URL; OPTIONS carry settings as key=value (`hub=`, `repo=` repeatable,
`repo_type=`, `region=`, `inter_regions=a:b`, `config=`, `memory=`, `read_timeout=`,
`allow_other`, `log_file=`). Generic mount options (noauto, _netdev, x-systemd.…)
are for mount(8) and systemd and are ignored here. Example fstab line:

    http://hub:8080  /models  fuse.modelfs  repo=Qwen/Qwen3-8B,region=cn-hangzhou,_netdev  0 0
"""

from __future__ import annotations

import os
import sys

_VALUED = {
    "hub": "--hub",
    "repo": "--repo",
    "repo_type": "--repo-type",
    "region": "--region",
    "config": "--config",
    "inter_regions": "--inter-regions",
    "memory": "--memory",
    "read_timeout": "--read-timeout",
    "log_file": "--log-file",
    "metrics": "--metrics",
}
_FLAGS = {"allow_other": "--allow-other"}
_IGNORED = {
    "ro",
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "nofail",
    "_netdev",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "noatime",
    "atime",
    "relatime",
    "nodiratime",
    "sync",
    "async",
}


class HelperError(ValueError):
    pass


def translate(source: str, mountpoint: str, options: str) -> list[str]:
    """The `modelfs mount` command line for one mount(8) call."""
    args = ["mount", mountpoint]
    if source.startswith(("http://", "https://")):
        args += ["--hub", source]
    for opt in filter(None, options.split(",")):
        key, eq, value = opt.partition("=")
        if key in _VALUED:
            if not eq or not value:
                raise HelperError(f"option {key} needs a value ({key}=…)")
            if key == "inter_regions":
                value = value.replace(":", ",")  # commas already separate mount options
            args += [_VALUED[key], value]
        elif key in _FLAGS and not eq:
            args.append(_FLAGS[key])
        elif key in _IGNORED or key.startswith(("x-", "comment=")):
            continue
        else:
            raise HelperError(f"unknown option {opt!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    positional, options = [], []
    while argv:
        arg = argv.pop(0)
        if arg == "-o" and argv:
            options.append(argv.pop(0))
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg in ("-t", "-N") and argv:
            argv.pop(0)
        elif arg.startswith("-"):
            continue  # -s, -f, -n, -v: sloppy, fake, no-mtab, verbose
        else:
            positional.append(arg)
    if len(positional) != 2:
        print("usage: mount.fuse.modelfs SOURCE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 2
    try:
        args = translate(positional[0], positional[1], ",".join(options))
    except HelperError as e:
        print(f"mount.fuse.modelfs: {e}", file=sys.stderr)
        return 2
    modelfs = os.path.join(os.path.dirname(os.path.realpath(sys.argv[0])), "modelfs")
    if not os.access(modelfs, os.X_OK):
        os.execv(sys.executable, [sys.executable, "-m", "fusefs", *args])
    os.execv(modelfs, [modelfs, *args])


if __name__ == "__main__":
    sys.exit(main())
