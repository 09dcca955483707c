"""The mount daemon: options, logging, daemonizing, the trio main loop, signals.

Owns: the lifetime of one mount. ``mount()`` checks the mount point, forks
into the background unless told not to (the parent returns once the
filesystem is mounted, or prints why it could not be), opens the store *in
the child* (no SQLite connection or thread crosses a fork), mounts with
pyfuse3 and serves requests on trio until the filesystem is unmounted or a
signal arrives. SIGTERM, SIGINT and SIGHUP commit every open file, then
unmount; an external ``fusermount3 -u`` ends the loop and the same final
commit runs before the process exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from fsobj import crypto
from fsobj.errors import UsageError
from fsobj.fs import loop
from fsobj.fs.filesystem import Filesystem, Options
from fsobj.fs.helper import tune_gc
from fsobj.fs.ops import Operations, notify_kernel
from fsobj.store import Store, check_store

log = logging.getLogger("fsobj.fs")

#: FUSE and kernel mount options passed through to libfuse (``max_read`` is not: libfuse 3.14 rejects it).
FUSE_OPTIONS = frozenset(
    {"allow_other", "allow_root", "auto_unmount", "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec"}
    | {"noatime", "atime", "relatime", "norelatime", "strictatime", "nodiratime", "dirsync", "sync", "async"}
)
FUSE_VALUE_OPTIONS = ("fsname=", "subtype=")
#: mount(8) and fstab options that mean nothing to the daemon
IGNORED_OPTIONS = frozenset(
    {
        "defaults",
        "auto",
        "noauto",
        "user",
        "users",
        "nouser",
        "owner",
        "group",
        "_netdev",
        "nofail",
        "default_permissions",
    }
)
DEFAULT_COMMIT_WINDOW = 1.0  # seconds a closed file may wait to commit with others
DEFAULT_READ_AHEAD_KB = 1024  # kernel read-ahead on the mount: one FUSE request per 1 MiB read


@dataclass
class MountConfig:
    store: Path
    mountpoint: Path
    foreground: bool = False
    debug: bool = False
    fuse: set[str] = field(default_factory=set)
    fs: Options = field(default_factory=lambda: Options(commit_window=DEFAULT_COMMIT_WINDOW, commit_helper=True))
    cache_dir: Path | None = None
    log_file: Path | None = None
    identity: str | None = None
    passphrase_file: str | None = None
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB  # 0: the kernel's default


def parse_options(config: MountConfig, option_args: tuple[str, ...]) -> MountConfig:
    """Split ``-o a,b=c`` arguments into FUSE options, fsobj options and ignored fstab words."""
    for arg in option_args:
        for opt in filter(None, (o.strip() for o in arg.split(","))):
            _apply_option(config, opt)
    config.fuse.add("default_permissions")
    return config


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(value)
    return n


def _flag(value: str) -> bool:
    """A yes/no option value: 1/0, yes/no, true/false, on/off."""
    v = value.lower()
    if v in ("1", "yes", "true", "on"):
        return True
    if v in ("0", "no", "false", "off"):
        return False
    raise ValueError(value)


def _apply_option(config: MountConfig, opt: str) -> None:
    name, _, value = opt.partition("=")
    own: dict[str, Callable[[str], None]] = {
        "identity": lambda v: setattr(config, "identity", v),
        "passphrase_file": lambda v: setattr(config, "passphrase_file", v),
        "cache_dir": lambda v: setattr(config, "cache_dir", Path(v)),
        "log": lambda v: setattr(config, "log_file", Path(v)),
        "uid": lambda v: setattr(config.fs, "uid", int(v)),
        "gid": lambda v: setattr(config.fs, "gid", int(v)),
        "attr_timeout": lambda v: setattr(config.fs, "attr_timeout", float(v)),
        "refresh": lambda v: setattr(config.fs, "refresh_interval", float(v)),
        "threads": lambda v: setattr(config.fs, "threads", int(v)),
        "commit_window": lambda v: setattr(config.fs, "commit_window", float(v)),
        "commit_helper": lambda v: setattr(config.fs, "commit_helper", _flag(v)),
        "read_ahead_kb": lambda v: setattr(config, "read_ahead_kb", _count(v)),
    }
    if name in own:
        try:
            own[name](value)
        except ValueError:
            raise UsageError(f"bad value for mount option {name}: {value!r}") from None
    elif opt in FUSE_OPTIONS or opt.startswith(FUSE_VALUE_OPTIONS):
        config.fuse.add(opt)
        if opt == "ro":
            config.fs.read_only = True
    elif opt in IGNORED_OPTIONS or opt.startswith(("x-", "comment=")):
        pass
    elif name == "max_read":
        log.warning("ignoring max_read (libfuse 3.14 refuses it as a mount option)")
    else:
        raise UsageError(f"unknown mount option {opt!r} (see docs/mount.md)")


# ---------------------------------------------------------------- places


def default_cache_dir(store: Path) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    store_id = str(check_store(store).get("store_id") or hashlib.sha256(bytes(store)).hexdigest()[:32])
    return Path(base) / "fsobj" / store_id


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) and make sure nobody else can read it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def is_mounted(path: Path | str) -> bool:
    """True if ``path`` is a mount point (also when its daemon is dead, unlike ``os.path.ismount``)."""
    return mount_device(path) is not None


def mount_device(path: Path | str) -> str | None:
    """``major:minor`` of the filesystem mounted on ``path`` (the topmost), from
    mountinfo: it asks the mounted filesystem nothing, so the daemon may call it."""
    target = os.path.abspath(path)
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and _unescape(parts[4]) == target:
                device = parts[2]
    return device


def set_read_ahead(mountpoint: Path, kb: int) -> None:
    """Let the kernel read ahead ``kb`` KiB on the mount (its per-device setting, which
    only root may change): 1 MiB read requests instead of 128 KiB (docs/mount.md)."""
    device = mount_device(mountpoint)
    if device is None:
        return
    path = f"/sys/class/bdi/{device}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(f"{kb}\n")
    except OSError as e:
        log.info("kernel read-ahead left as it was (%s: %s)", path, e.strerror or e)
        return
    log.info("kernel read-ahead set to %d KiB", kb)


def _unescape(field_: str) -> str:
    return field_.encode().decode("unicode_escape") if "\\" in field_ else field_


# ---------------------------------------------------------------- logging


def setup_logging(log_file: Path, foreground: bool, debug: bool) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("fsobj")
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.handlers.clear()
    handler: logging.Handler = logging.FileHandler(log_file)
    handler.setFormatter(fmt)
    root.addHandler(handler)
    if foreground:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(fmt)
        root.addHandler(err)
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if debug else logging.WARNING)
    logging.getLogger("pyfuse3").handlers = root.handlers


# ---------------------------------------------------------------- mounting


def prepare(config: MountConfig) -> None:
    """Checks that need no store key, so errors show before the passphrase or the fork."""
    config.store = Path(os.path.abspath(config.store))
    config.mountpoint = Path(os.path.abspath(config.mountpoint))
    check_store(config.store)
    if not config.mountpoint.is_dir():
        raise UsageError(f"mount point {config.mountpoint} is not a directory")
    if is_mounted(config.mountpoint):
        raise UsageError(f"{config.mountpoint} is already a mount point")
    if config.cache_dir is None:
        config.cache_dir = default_cache_dir(config.store)
    config.cache_dir = private_dir(Path(os.path.abspath(config.cache_dir)))
    if config.log_file is None:
        config.log_file = config.cache_dir / "mount.log"
    config.log_file = Path(os.path.abspath(config.log_file))
    config.fs.spill_dir = str(private_dir(config.cache_dir / "staging"))
    if not any(o.startswith("fsname=") for o in config.fuse):
        name = str(config.store) if str(config.store).isascii() else "fsobj"  # pyfuse3 passes options as ASCII
        config.fuse.add("fsname=" + name.replace("\\", "\\\\").replace(",", "\\,"))
    if not any(o.startswith("subtype=") for o in config.fuse):
        config.fuse.add("subtype=fsobj")


def mount(config: MountConfig, identity: crypto.Identity) -> int:
    """Mount and serve; in the background unless ``config.foreground``. Returns an exit code."""
    if config.foreground:
        return serve(config, identity, None)
    return _daemonize(config, identity)


def _daemonize(config: MountConfig, identity: crypto.Identity) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode(errors="replace")
        if msg.startswith("ok"):
            return 0
        sys.stderr.write(f"fsobj: mount failed: {msg.strip() or 'the daemon exited (see the log)'}\n")
        return 1
    os.close(r)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

    def ready() -> None:
        os.write(w, b"ok\n")
        os.close(w)

    code = 1
    try:
        code = serve(config, identity, ready)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.write(w, f"{e}\n".encode())
    finally:
        os._exit(code)


def serve(config: MountConfig, identity: crypto.Identity, ready: Callable[[], None] | None) -> int:
    assert config.log_file is not None
    setup_logging(config.log_file, config.foreground, config.debug)
    tune_gc()
    store = Store.open(config.store, identity)
    fs = Filesystem(store, config.fs)
    kb = config.read_ahead_kb
    ops = Operations(fs, on_first_request=(lambda: set_read_ahead(config.mountpoint, kb)) if kb else None)
    log.info("mounting %s on %s (options %s)", config.store, config.mountpoint, ",".join(sorted(config.fuse)))
    try:
        pyfuse3.init(ops, str(config.mountpoint), config.fuse)
    except RuntimeError as e:
        store.close()
        raise UsageError(f"cannot mount on {config.mountpoint}: {e} (see {config.log_file})") from e
    code = 0
    try:
        trio.run(_main, fs, ready, config)
    except BaseException:
        log.exception("the daemon stopped on an error")
        code = 1
    finally:
        pyfuse3.close(unmount=True)
        store.close()
        log.info("unmounted %s", config.mountpoint)
    return code


async def _main(fs: Filesystem, ready: Callable[[], None] | None, config: MountConfig) -> None:
    await fs.start()
    fs.notify = notify_kernel
    async with trio.open_nursery() as nursery:
        await nursery.start(fs.committer.run)
        await nursery.start(fs.watch)
        await nursery.start(fs.prepare_histories)
        nursery.start_soon(_on_signals, fs)
        if ready is not None:
            ready()
        loop.install()
        await pyfuse3.main()
        await fs.shutdown()  # the committer still runs: a batch in flight finishes first
        nursery.cancel_scope.cancel()


async def _on_signals(fs: Filesystem) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: committing open files, then unmounting", signal.Signals(signum).name)
            await fs.flush_all()
            pyfuse3.terminate()
            return
