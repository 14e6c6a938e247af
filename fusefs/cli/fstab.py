"""`mount.fuse.modelfs`: lets mount(8) and /etc/fstab start a modelfs mount.

mount(8) runs `mount.fuse.modelfs SOURCE MOUNTPOINT -o OPTIONS`. SOURCE may be
the hub URL (or gs://BUCKET[/PREFIX]); OPTIONS carry settings as key=value, one for
every setting of `modelfs mount` under the name of its flag with '_' for '-' (`hub=`,
`repo=` repeatable, `repo_type=`, `region=`, `inter_regions=a:b`, `cache_dir=`, ...: see
`fusefs.config.SETTINGS`), plus `config=` and `log_file=`. A boolean setting may be
given bare (`allow_other`). Lists take ':' between items, since ',' separates
mount options. Generic mount options (noauto, _netdev, x-systemd.…) are for
mount(8) and systemd and are ignored here. Example fstab line:

    http://hub:8080  /models  fuse.modelfs  repo=Qwen/Qwen3-8B,region=cn-hangzhou,_netdev  0 0
    gs://my-bucket/models  /models  fuse.modelfs  repo=acme/llm,_netdev  0 0
"""

from __future__ import annotations

import os
import sys

from fusefs.config import SETTINGS, Setting, is_boolean, is_list


def _option(s: Setting) -> str:
    return s.flag.removeprefix("--").replace("-", "_")


# Built from the settings table, so that every setting is an option and none can drift.
_SETTINGS: dict[str, Setting] = {_option(s): s for s in SETTINGS}
_OTHER = {"config": "--config", "log_file": "--log-file"}  # options of the command itself
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
    if source.startswith(("http://", "https://", "gs://")):
        args += ["--hub", source]
    for opt in filter(None, options.split(",")):
        key, eq, value = opt.partition("=")
        setting = _SETTINGS.get(key)
        if setting is not None and is_boolean(setting) and not eq:
            args += [setting.flag, "true"]
        elif setting is not None or key in _OTHER:
            if not eq or not value:
                raise HelperError(f"option {key} needs a value ({key}=…)")
            if setting is not None and is_list(setting) and not setting.repeatable:
                value = value.replace(":", ",")  # commas already separate mount options
            args += [setting.flag if setting is not None else _OTHER[key], value]
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
