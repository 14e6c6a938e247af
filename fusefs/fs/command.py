"""`modelfs mount` and `modelfs unmount`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile

import click

from fusefs.data.reader import ReadLimits
from fusefs.data.location import valid_region
from fusefs.fs.mount import MountError, MountSettings, RepoSpec, mount_source, run_mount

READY_FD_ENV = "MODELFS_READY_FD"
START_TIMEOUT = 120.0


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(t[-1:], 1)
    if t[-1:] in units:
        t = t[:-1]
    try:
        value = int(float(t) * scale)
    except ValueError:
        raise click.BadParameter(f"not a size: {text!r} (use e.g. 512M, 2G)") from None
    if value <= 0:
        raise click.BadParameter(f"size must be positive: {text!r}")
    return value


@click.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--hub", required=True, envvar="MODELFS_HUB", metavar="URL",
              help="Hub API base URL, e.g. http://127.0.0.1:8080 (env MODELFS_HUB).")
@click.option("--repo", "repos", multiple=True, metavar="OWNER/NAME[@REV]",
              help="Pin a repo at mount (repeatable). Others are found on first access.")
@click.option("--region", envvar=["MODELFS_REGION", "MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION"],
              metavar="NAME", help="This machine's region (env MODELFS_REGION or "
              "MODELSCOPE_DOWNLOAD_INTRA_CLOUD_REGION); asked of the hub when unset.")
@click.option("--inter-regions", "peers",
              envvar=["MODELFS_INTER_REGIONS", "MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS"],
              metavar="A,B", default="", help="Peer regions reachable over private links, "
              "in order of preference (env MODELFS_INTER_REGIONS or "
              "MODELSCOPE_DOWNLOAD_INTER_CLOUD_REGIONS).")
@click.option("--memory", "memory", default="512M", show_default=True, metavar="SIZE",
              help="Budget for buffered and prefetched bytes, all files together.")
@click.option("--read-timeout", default=30.0, show_default=True, metavar="SECONDS",
              help="A read not served within this fails with EIO.")
@click.option("--allow-other", is_flag=True, help="Let other users read the mount.")
@click.option("--foreground", "-f", is_flag=True, help="Stay attached and log to stderr.")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Where a background mount logs.")
@click.option("--debug", is_flag=True, help="Log every event.")
def mount(mountpoint, hub, repos, region, peers, memory, read_timeout, allow_other, foreground,
          log_file, debug):
    """Mount hub repos read-only at MOUNTPOINT as MOUNTPOINT/<owner>/<name>/<file>.

    \b
    Examples:
      modelfs mount /models --hub http://127.0.0.1:8080 --repo Qwen/Qwen3-8B
      modelfs mount /models --hub http://hub:8080 --repo acme/llm@v1.0 --foreground
    """
    try:
        specs = tuple(RepoSpec.parse(r) for r in repos)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    peer_list = tuple(p.strip() for p in peers.split(",") if p.strip())
    for name in ((region,) if region else ()) + peer_list:
        if not valid_region(name):
            raise click.UsageError(f"bad region name {name!r}: use lowercase letters, digits and '-'")
    if read_timeout <= 0:
        raise click.UsageError("--read-timeout must be positive")
    settings = MountSettings(
        mountpoint=mountpoint, hub=hub, repos=specs, region=region, peers=peer_list,
        memory_budget=_size(memory), read_limits=ReadLimits(deadline=read_timeout),
        allow_other=allow_other)
    if not foreground:
        sys.exit(_start_in_background(mountpoint, log_file))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
