"""`modelfs mount` and `modelfs unmount`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import click

from fusefs import logs
from fusefs.cache.store import CacheLimits
from fusefs.cli.config import effective_settings, setting_options
from fusefs.config import Settings
from fusefs.data.reader import ReadLimits
from fusefs.fs.mount import MountError, MountSettings, mount_source, run_mount
from fusefs.hub.client import RepoSpec

READY_FD_ENV = "MODELFS_READY_FD"
START_TIMEOUT = 120.0


def read_token(path: str | None) -> str | None:
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
def mount(
    mountpoint: str, config: str | None, foreground: bool, log_file: str | None, **flags: Any
) -> None:
    """Mount hub repos read-only at MOUNTPOINT as MOUNTPOINT/<owner>/<name>/<file>.

    Settings come from flags, then environment variables, then the config file,
    then defaults (see `modelfs config show`).

    \b
    Examples:
      modelfs mount /models --hub http://127.0.0.1:8080 --repo Qwen/Qwen3-8B
      modelfs mount /datasets --hub http://127.0.0.1:8080 --repo-type dataset
      modelfs mount /models --hub gs://my-bucket/models --repo acme/llm
      modelfs mount /models --hub http://hub:8080 --repo acme/llm@v1.0 --region cn-hangzhou \\
          --inter-regions cn-beijing,cn-shanghai --foreground
    """
    given = Settings.from_values(effective_settings(config, flags))
    if given.hub is None:
        raise click.ClickException(
            'no hub: give --hub URL, MODELFS_HUB, or hub = "URL" in the config file'
        )
    token = read_token(given.token_file)
    settings = MountSettings(
        mountpoint=mountpoint,
        hub=given.hub,
        repos=tuple(RepoSpec.parse(r, given.repo_type) for r in given.repos),
        repo_type=given.repo_type,
        region=given.region,
        peers=given.inter_regions,
        token=token,
        memory_budget=given.memory,
        read_limits=ReadLimits(deadline=given.read_timeout),
        allow_other=given.allow_other,
        metrics=given.metrics,
        cache_dir=given.cache_dir,
        cache_limits=CacheLimits(size=given.cache_size, min_free=given.cache_min_free),
        linger=given.linger,
        max_streams=given.max_streams,
        gcs_endpoint=given.gcs_endpoint,
        gcs_grpc_endpoint=given.gcs_grpc_endpoint,
    )
    if not foreground:
        sys.exit(_start_in_background(mountpoint, log_file))
    logs.setup(given.log_level, given.log_format, secrets=(token or "",))
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
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_end,),
            env={**os.environ, READY_FD_ENV: str(write_end)},
            start_new_session=True,
        )
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
@click.option(
    "--lazy/--no-lazy",
    default=True,
    show_default=True,
    help="Detach even while files are open (readers then get errors).",
)
def unmount(mountpoint: str, lazy: bool) -> None:
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
        result = subprocess.run(
            cmd[:-1] + (["-z"] if tool else ["-l"]) + [path], capture_output=True, text=True
        )
    if result.returncode != 0:
        raise click.ClickException(f"could not unmount {path}: {result.stderr.strip()}")
