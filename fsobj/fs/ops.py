"""The pyfuse3 adapter: translates FUSE requests to ``Filesystem`` calls.

Owns: only translation — bytes names to str (UTF-8, surrogateescape), our
``Attr`` to ``pyfuse3.EntryAttributes``, ``setattr`` fields to keyword
arguments, and every exception to ``pyfuse3.FUSEError`` through
``fsobj.errors.errno_for`` (handlers may raise nothing else). No filesystem
logic lives here.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3

from fsobj.errors import FsobjError, errno_for
from fsobj.fs import xattrs
from fsobj.fs.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE, Attr, Filesystem
from fsobj.fs.loop import watched

log = logging.getLogger("fsobj.fs")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

assert (pyfuse3.RENAME_NOREPLACE, pyfuse3.RENAME_EXCHANGE) == (RENAME_NOREPLACE, RENAME_EXCHANGE)

READDIR_BATCH = 32  # entries whose attributes are computed together (doubling while the kernel takes them)
USER_PREFIX = xattrs.USER.encode()
FACTS_PREFIX = xattrs.NS.encode()
QUIET = {errno.ENOENT, errno.ENODATA, errno.EEXIST, errno.ENOTEMPTY}  # expected in normal use


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def translated(fn: F) -> F:
    """Map every exception of a handler to FUSEError (and log what is not routine)."""

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        if self.on_first_request is not None:
            hook, self.on_first_request = self.on_first_request, None
            hook()
        try:
            return await watched(fn(self, *args))  # a handler that waits lets another task read
        except pyfuse3.FUSEError:
            raise
        except (OSError, FsobjError) as e:
            code = errno_for(e)
            if code not in QUIET:
                level = logging.DEBUG if isinstance(e, OSError) else logging.WARNING
                log.log(level, "%s%r: %s", fn.__name__, _short(args), e)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, _short(args))
            raise pyfuse3.FUSEError(errno.EIO) from None

    return cast(F, wrapper)


def _caller(ctx: pyfuse3.RequestContext) -> tuple[int, set[int]]:
    """The uid and the groups of the process behind a request. FUSE passes only the
    primary gid; the supplementary groups come from ``/proc/<pid>/status`` (only the
    primary one if the process is gone)."""
    groups = {ctx.gid}
    if ctx.uid != 0:  # root may read anything: no need to look
        try:
            with open(f"/proc/{ctx.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Groups:"):
                        groups.update(int(g) for g in line.split()[1:])
                        break
        except (OSError, ValueError):
            pass
    return ctx.uid, groups


def _short(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a if not isinstance(a, bytes) or len(a) < 64 else a[:64] for a in args if _loggable(a))


def _loggable(a: Any) -> bool:
    return isinstance(a, (int, str, bytes))


def notify_kernel(stale: list[tuple[int, str | None]]) -> None:
    """Blocking (run it in a thread): drop the kernel's cached attributes and data of
    ``(inode, None)`` and its cached names ``(directory inode, name)``."""
    for ino, name in stale:
        try:
            if name is None:
                pyfuse3.invalidate_inode(ino)
            else:
                pyfuse3.invalidate_entry(ino, os.fsencode(name))
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the kernel did not have it
                log.debug("invalidating %s %r: %s", ino, name, e)


def entry(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.generation = 0
    e.entry_timeout = attr.timeout
    e.attr_timeout = attr.timeout
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = 1024 * 1024  # cp and cat move 1 MiB per system call, so 1 MiB per FUSE request
    e.st_blocks = (attr.size + 511) // 512
    e.st_atime_ns = attr.mtime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, on_first_request: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.fs = fs
        # Runs before the first request after FUSE_INIT is answered, so before any file
        # can be opened: the kernel has applied its INIT settings (the mount's read-ahead).
        self.on_first_request = on_first_request

    # ------------------------------------------------------------ names and attributes
    @translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.lookup(parent_inode, _name(name)))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        self.fs.forget(inode_list)

    @translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.getattr(inode))

    @translated
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        mtime = None
        if fields.update_mtime:
            mtime = attr.st_mtime_ns
        result = await self.fs.setattr(
            inode,
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mtime_ns=mtime,
            fh=fh,
        )
        return entry(result)

    @translated
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return await self.fs.readlink(inode)

    @translated
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        for k, v in self.fs.statfs().items():
            setattr(out, k, v)
        return out

    # ------------------------------------------------------------ directories
    @translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return await self.fs.opendir(inode)

    @translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self.fs.readdir(fh, start_id)
        pos, size = 0, READDIR_BATCH
        while pos < len(entries):
            batch = entries[pos : pos + size]
            attrs = await self.fs.entry_attrs([key for _, key in batch])
            for j, ((name, _), attr) in enumerate(zip(batch, attrs, strict=True)):
                if attr is None:
                    continue
                accepted = pyfuse3.readdir_reply(token, os.fsencode(name), entry(attr), start_id + pos + j + 1)
                if accepted and name not in (".", ".."):  # the kernel counts a lookup, except for dots
                    self.fs.remember(attr.ino)
                if not accepted or name in (".", ".."):
                    self.fs.forget([(attr.ino, 0)])  # an inode allocated only for this reply
                if not accepted:
                    self.fs.forget([(a.ino, 0) for a in attrs[j + 1 :] if a is not None])
                    return
            pos += size
            size = min(size * 2, 1024)  # the kernel's buffer may hold a few dozen entries or many hundreds

    @translated
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    @translated
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.mkdir(parent_inode, _name(name), mode, ctx.uid, ctx.gid))

    @translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.rmdir(parent_inode, _name(name))

    # ------------------------------------------------------------ names
    @translated
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.mknod(parent_inode, _name(name), mode, rdev, ctx.uid, ctx.gid))

    @translated
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return entry(await self.fs.symlink(parent_inode, _name(name), target, ctx.uid, ctx.gid))

    @translated
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.fs.link()
        raise AssertionError("unreachable")

    @translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.unlink(parent_inode, _name(name))

    @translated
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.fs.rename(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new), flags)

    # ------------------------------------------------------------ files
    @translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh, keep = await self.fs.open(inode, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @translated
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = await self.fs.create(parent_inode, _name(name), mode, flags, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fh), entry(attr)

    @translated
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        return await self.fs.read(fh, off, size)

    @translated
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return await self.fs.write(fh, off, buf)

    @translated
    async def flush(self, fh: int) -> None:
        await self.fs.flush(fh)
        if self.fs.committer.enabled:
            # With group commit a close only queues its version, which release does as well;
            # ENOSYS (taken by the kernel as success) stops FLUSH requests on this mount:
            # one request less per close(2). Dirty mmap pages are still written back first.
            raise pyfuse3.FUSEError(errno.ENOSYS)

    @translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.fs.fsync(fh)

    @translated
    async def release(self, fh: int) -> None:
        await self.fs.release(fh)

    @translated
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await self.fs.fsyncdir(fh)  # name changes are durable when they return; this drains the group commit

    # ------------------------------------------------------------ extended attributes
    @translated
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(USER_PREFIX):
            return await self.fs.getxattr(inode, _name(name))
        if name.startswith(FACTS_PREFIX):  # the kernel checks no permission for system.*
            return await self.fs.getxattr(inode, _name(name), _caller(ctx))
        # security.capability before every write, security.selinux and POSIX ACLs for
        # every `ls -l` entry: answered without touching the node
        raise pyfuse3.FUSEError(errno.ENODATA)

    @translated
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(n) for n in await self.fs.listxattr(inode)]

    @translated
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.setxattr(inode, _name(name), value)

    @translated
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self.fs.removexattr(inode, _name(name))
