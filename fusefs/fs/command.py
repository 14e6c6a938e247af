"""`modelfs mount`, `modelfs unmount` and `modelfs config show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import click

from fusefs import logs
from fusefs.cache.store import CacheLimits
from fusefs.config import SETTINGS, ConfigError, Value, merge
from fusefs.data.reader import ReadLimits
from fusefs.fs.prefetch import prefetch as run_prefetch
from fusefs.fs.status import STATUS_XATTR
from fusefs.fs.systemd import unit_text
from fusefs.fs.mount import MountError, MountSettings, mount_source, run_mount
from fusefs.hub.client import RepoSpec

READY_FD_ENV = "MODELFS_READY_FD"
START_TIMEOUT = 120.0


def setting_options(command):
    """One option per setting, no defaults: absence lets env, file and default speak."""
    for s in reversed(SETTINGS):
        env = f" [env {' or '.join(s.envvars)}]" if s.envvars else ""
        command = click.option(s.flag, s.key, metavar=s.metavar, multiple=s.repeatable,
                               default=None, help=s.help + env)(command)
    return click.option("--config", "config", metavar="PATH", type=click.Path(dir_okay=False),
                        help="TOML config file [default: /etc/modelfs/config.toml if present; "
                             "env MODELFS_CONFIG].")(command)


def effective_settings(config: str | None, flags: dict) -> dict[str, Value]:
    try:
        return merge(flags, config)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def read_token(values: dict[str, Value]) -> str | None:
    path = values["token_file"].value
    if path:
        try:
            with open(path) as f:
                return f.read().strip() or None
        except OSError as e:
            raise click.ClickException(f"token file {path}: {e.strerror}") from None
    return os.environ.get("MODELSCOPE_API_TOKEN") or None


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@setting_options
@click.option("--foreground", "-f", is_flag=True, help="Stay attached and log to stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Where a background mount logs.")
def mount(mountpoint, config, foreground, log_file, **flags):
    """Mount hub repos read-only at MOUNTPOINT as MOUNTPOINT/<owner>/<name>/<file>.

    Settings come from flags, then environment variables, then the config file,
    then defaults (see `modelfs config show`).

    \b
    Examples:
      modelfs mount /models --hub http://127.0.0.1:8080 --repo Qwen/Qwen3-8B
      modelfs mount /models --hub http://hub:8080 --repo acme/llm@v1.0 --region cn-hangzhou \\
          --inter-regions cn-beijing,cn-shanghai --foreground
    """
    values = effective_settings(config, flags)
    if values["hub"].value is None:
        raise click.ClickException("no hub: give --hub URL, MODELFS_HUB, or hub = \"URL\" in the config file")
    token = read_token(values)
    settings = MountSettings(
        mountpoint=mountpoint,
        hub=values["hub"].value,
        repos=tuple(RepoSpec.parse(r) for r in values["repos"].value),
        region=values["region"].value,
        peers=values["inter_regions"].value,
        token=token,
        memory_budget=values["memory"].value,
        read_limits=ReadLimits(deadline=values["read_timeout"].value),
        allow_other=values["allow_other"].value,
        metrics=values["metrics"].value,
        cache_dir=values["cache_dir"].value,
        cache_limits=CacheLimits(size=values["cache_size"].value,
                                 min_free=values["cache_min_free"].value),
    )
    if not foreground:
        sys.exit(_start_in_background(mountpoint, log_file))
    logs.setup(values["log_level"].value, values["log_format"].value, secrets=(token or "",))
    ready_fd = os.environ.pop(READY_FD_ENV, None)  # set when a background start waits on us
    try:
        run_mount(settings, on_ready=lambda: _tell_starter(ready_fd, "ok"))
    except MountError as e:
        _tell_starter(ready_fd, f"error: {e}")
        raise click.ClickException(str(e)) from None


def _tell_starter(fd: str | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(int(fd), line.encode() + b"\n")
        os.close(int(fd))
    except OSError:
        pass  # the starter is gone; nothing to tell


def _start_in_background(mountpoint: str, log_file: str | None) -> int:
    """Run the mount as a detached child; return once it is live (0) or has failed."""
    if log_file is None:
        tag = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
        log_file = os.path.join(tempfile.gettempdir(), f"modelfs-{os.getuid()}-{tag}.log")
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "fusefs", *sys.argv[1:], "--foreground"]
    with open(log_file, "ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(write_end,),
            env={**os.environ, READY_FD_ENV: str(write_end)}, start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        answer = ready.readline().strip()
    if answer == "ok":
        click.echo(f"mounted {os.path.abspath(mountpoint)} (pid {child.pid}, logs: {log_file})")
        return 0
    try:
        code = child.wait(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        code = 1
    message = answer.removeprefix("error: ") or f"mount process exited with {code}; see {log_file}"
    click.echo(f"Error: {message}", err=True)
    return code or 1


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy/--no-lazy", default=True, show_default=True,
              help="Detach even while files are open (readers then get errors).")
def unmount(mountpoint, lazy):
    """Unmount a modelfs mount.

    \b
    Example:
      modelfs unmount /models
    """
    path = os.path.abspath(mountpoint)
    source = mount_source(path)
    if source is None:
        raise click.ClickException(f"{path} is not mounted")
    if source[1] != "fuse.modelfs":
        raise click.ClickException(f"{path} is a {source[1]} mount, not modelfs")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", path] if tool else ["umount", path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 and lazy:
        result = subprocess.run(cmd[:-1] + (["-z"] if tool else ["-l"]) + [path],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(f"could not unmount {path}: {result.stderr.strip()}")


@click.group()
def config():
    """Inspect settings.

    \b
    Example:
      modelfs config show --config /etc/modelfs/config.toml
    """


@config.command("show")
@setting_options
def config_show(config, **flags):
    """Print the effective mount settings and where each came from.

    \b
    Example:
      MODELFS_REGION=cn-hangzhou modelfs config show --config /etc/modelfs/config.toml
    """
    for key, v in effective_settings(config, flags).items():
        shown = ",".join(v.value) if isinstance(v.value, tuple) else v.value
        click.echo(f"{key:14} = {'' if shown is None else shown}    ({v.origin})")


@click.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(mountpoint, as_json):
    """Show a running mount: settings, open files and where each came from.

    Markers: ⚡ local region, ⇄ peer region, ● whole in the disk cache, blank: public CDN.

    \b
    Example:
      modelfs status /models
    """
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as e:
        raise click.ClickException(f"{mountpoint} is not a modelfs mount ({e.strerror})") from None
    state = json.loads(raw)
    if as_json:
        click.echo(json.dumps(state, indent=2, ensure_ascii=False))
        return
    mem = state["memory"]
    click.echo(f"mount    {state['mountpoint']}  (up {state['uptime_seconds']:.0f}s)")
    click.echo(f"hub      {state['settings'].get('hub')}")
    click.echo(f"region   {state['region'] or '-'}   peers: {', '.join(state['peers']) or '-'}")
    click.echo(f"repos    {', '.join(state['repos']) or '-'}")
    click.echo("read     " + (", ".join(f"{_human(n)} {src}" for src, n in state["bytes_read"].items())
                              or "nothing yet"))
    click.echo(f"memory   {_human(mem['in_use'])} of {_human(mem['limit'])} "
               f"({mem['evictions']} evictions)")
    click.echo(f"streams  {state['stream_reopens']} reopens   probes: "
               + (", ".join(f"{k} {v}" for k, v in sorted(state["probes"].items())) or "0"))
    if cache := state.get("cache"):
        click.echo(f"cache    {_human(cache['used'])} of {_human(cache['limit'])} in "
                   f"{cache['dir']}   hits {_human(cache['hit_bytes'])}, "
                   f"misses {_human(cache['miss_bytes'])}, {cache['evictions']} evictions, "
                   f"{cache['sealed']} files verified")
    if state["errors"]:
        click.echo("errors   " + ", ".join(f"{k} {v}" for k, v in sorted(state["errors"].items())))
    click.echo(f"files    {state['files_open']} with a data path")
    for f in state["files"]:
        where = f"{f['source']} {f['region']}".strip()
        click.echo(f"  {f['marker']} {f['path']}  {_human(f['bytes_read'])} read  [{where}]"
                   f"  reopens {f['stream_reopens']}")
    if state["files_not_listed"]:
        click.echo(f"  … and {state['files_not_listed']} more")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--jobs", "-j", default=4, show_default=True, help="Files read at once.")
def prefetch(paths, jobs):
    """Warm files, or whole repos, into the page cache through the mount.

    One progress bar per file (⚡ local, ⇄ peer, blank CDN); quiet when not a terminal.
    Exits non-zero if any file failed.

    \b
    Example:
      modelfs prefetch /models/Qwen/Qwen3-8B
    """
    outcomes = run_prefetch(list(paths), jobs)
    failed = [o for o in outcomes if o.error]
    total = sum(o.bytes for o in outcomes)
    click.echo(f"prefetched {len(outcomes) - len(failed)} of {len(outcomes)} files, {_human(total)}",
               err=True)
    if failed:
        sys.exit(1)


@click.command("systemd-unit")
@click.option("--template", is_flag=True, help="The modelfs@.service template (instance = mountpoint).")
@click.option("--mountpoint", default="/models", show_default=True)
@click.option("--config", "config_path", default="/etc/modelfs/config.toml", show_default=True)
@click.option("--install", is_flag=True, help="Write it to /etc/systemd/system instead of printing.")
def systemd_unit(template, mountpoint, config_path, install):
    """Print (or install) the systemd unit for a modelfs mount.

    \b
    Examples:
      modelfs systemd-unit --install && systemctl enable --now modelfs
      modelfs systemd-unit --template --install && systemctl start modelfs@data-models
        (mounts /data/models with /etc/modelfs/data-models.toml)
    """
    text = unit_text(template, mountpoint, config_path)
    if not install:
        click.echo(text, nl=False)
        return
    name = "modelfs@.service" if template else "modelfs.service"
    path = os.path.join("/etc/systemd/system", name)
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise click.ClickException(f"could not write {path}: {e.strerror}") from None
    click.echo(f"wrote {path}; run: systemctl daemon-reload")
