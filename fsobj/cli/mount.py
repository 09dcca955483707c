"""CLI commands that mount a store as a filesystem, sync it and unmount it: mount, sync, umount.

Thin: option parsing and messages; the daemon lives in ``fsobj.fs.daemon``.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import click

from fsobj.cli.common import Context, pass_ctx
from fsobj.errors import FsobjError, NoSpaceError, UsageError
from fsobj.fs import xattrs

UMOUNT_TIMEOUT_S = 120.0


@click.command("mount")
@click.argument("store", type=click.Path(file_okay=False))
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground and log to stderr too.")
@click.option("-d", "--debug", is_flag=True, help="Log every failed request and the daemon's decisions.")
@click.option(
    "-o",
    "options",
    multiple=True,
    metavar="OPT[,OPT...]",
    help="Mount options: allow_other, ro, identity=PATH, passphrase_file=PATH, cache_dir=DIR, log=FILE, "
    "uid=N, gid=N, attr_timeout=S, refresh=S, threads=N (docs/mount.md).",
)
@click.option("--log", "log_file", type=click.Path(dir_okay=False), help="Log file [default: in the cache dir].")
@pass_ctx
def mount(
    ctx: Context, store: str, mountpoint: str, foreground: bool, debug: bool, options: tuple[str, ...], log_file: str
) -> None:
    """Mount STORE on MOUNTPOINT: partitions are directories, objects are files.

    Daemonizes once the filesystem is mounted (unless --foreground). Every
    file's history is under <partition>/.versions/; unmount with
    'fsobj umount MOUNTPOINT', which commits open files first.
    """
    from fsobj.fs import daemon

    config = daemon.MountConfig(Path(store), Path(mountpoint), foreground=foreground, debug=debug)
    daemon.parse_options(config, options)
    if log_file:
        config.log_file = Path(log_file)
    if config.identity:
        ctx.identity_path = config.identity
    if config.passphrase_file:
        ctx.passphrase_file = config.passphrase_file
    daemon.prepare(config)
    code = daemon.mount(config, ctx.identity())
    if code:
        raise click.exceptions.Exit(code)


@click.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Detach at once (fusermount3 -u -z); open files are not waited for.")
@click.option("--timeout", default=UMOUNT_TIMEOUT_S, show_default=True, help="Seconds to wait for the daemon.")
def umount(mountpoint: str, lazy: bool, timeout: float) -> None:
    """Commit every open file, then unmount MOUNTPOINT (as SIGTERM to the daemon does)."""
    from fsobj.fs.daemon import is_mounted

    mp = os.path.abspath(mountpoint)
    if not is_mounted(mp):
        raise UsageError(f"{mp} is not mounted")
    pid = _daemon_pid(mp)
    if pid is None or lazy:
        _fusermount(mp)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_mounted(mp) and not _alive(pid):
            return
        time.sleep(0.05)
    raise UsageError(f"the daemon (pid {pid}) did not unmount {mp} within {timeout:.0f} s; see its log")


@click.command("sync")
@click.argument("mountpoints", nargs=-1, required=True, type=click.Path(file_okay=False))
def sync(mountpoints: tuple[str, ...]) -> None:
    """Make everything written through each MOUNTPOINT durable, and return when it is.

    Files still open commit what has been written to them (a version each), closed
    files waiting in the group commit commit, and directory times are written:
    what plain sync(1) does for a local filesystem. The kernel passes sync(2) and
    syncfs(2) to no FUSE daemon; `sync MOUNTPOINT` (fsync of the mount root) does
    the same as this command."""
    from fsobj.fs.daemon import is_mounted

    for given in mountpoints:
        mp = os.path.abspath(given)
        if not is_mounted(mp) or _daemon_pid(mp) is None:
            raise UsageError(f"{mp} is not the root of an fsobj mount")
        fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)  # the daemon's fsyncdir of its root: commit every open and waiting file
        except OSError as e:
            cls = NoSpaceError if e.errno == errno.ENOSPC else FsobjError
            raise cls(f"sync of {mp} failed: {e.strerror}; see the daemon's log") from None
        finally:
            os.close(fd)


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        return int(os.getxattr(mountpoint, xattrs.NS + "daemon_pid"))
    except (OSError, ValueError):
        return None  # not an fsobj mount, or its daemon is gone


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _fusermount(mountpoint: str) -> None:
    result = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"fusermount3 -u -z {mountpoint} failed: {result.stderr.strip()}")


COMMANDS = [mount, sync, umount]
