"""Attributes and headers: setattr (chmod, chown, utime, truncate) and xattrs.

Owns: metadata versions (same payload, no new chunks). A change to a file
that has staged writes waiting is folded into the version that commit will
make; otherwise it is committed at once on the series' current head.
Directories keep their attributes in a directory marker object, made on
first use.
"""

from __future__ import annotations

import errno
import os
from dataclasses import replace

from fsobj.fs import work, xattrs
from fsobj.fs.files import FileOps
from fsobj.fs.inodes import NodeKey
from fsobj.fs.state import (
    FACTS_CACHE,
    Attr,
    PartState,
    oserror,
)
from fsobj.fs.tree import (
    Ref,
    marker_key,
)
from fsobj.model.header import Posix
from fsobj.store import PartitionView, Version


class MetaOps(FileOps):
    """Operations on attributes and extended attributes."""

    async def setattr(
        self,
        ino: int,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
        fh: int | None = None,
    ) -> Attr:
        key = self._key(ino)
        if size is not None:
            if fh is not None and fh in self.handles:
                self.handles[fh].flushed = False  # ftruncate, O_TRUNC: commits at this handle's close
            await self._truncate(ino, key, size)
        if mode is not None or uid is not None or gid is not None or mtime_ns is not None:

            def change(p: Posix, headers: tuple[tuple[str, str], ...]) -> tuple[Posix, tuple[tuple[str, str], ...]]:
                return (
                    replace(
                        p,
                        mode=p.mode if mode is None else mode & 0o7777,
                        uid=p.uid if uid is None else uid,
                        gid=p.gid if gid is None else gid,
                        mtime_ns=p.mtime_ns if mtime_ns is None else mtime_ns,
                    ),
                    headers,
                )

            await self._change_meta(ino, key, change)
        return await self._attr(self._key(ino), ino)

    async def _change_meta(self, ino: int, key: NodeKey, change: work.Change) -> None:
        """A metadata version of an object or directory (folded into a pending commit if one waits)."""
        if key[0] == "obj":
            ps = self._part(key[1])
            self._writable(ps)
            if await self._fold_meta(ino, change):
                return
            ref = self._key(ino)[2]  # settling may have given it a baseHash
            if not isinstance(ref, bytes):  # a new file removed before its first commit, and closed
                raise oserror(errno.ENOENT)
            await self._meta_version(ps, ref, change)
        elif key[0] == "dir":
            ps = self._part(key[1])
            self._writable(ps)
            await self._dir_meta(ps, key[2], change)
        elif key[0] == "ver":
            raise oserror(errno.EROFS, "versions are read-only")
        else:
            raise oserror(errno.EPERM)

    async def _fold_meta(self, ino: int, change: work.Change) -> bool:
        """Fold a metadata change into the inode's open file if that has staged changes or
        no version yet (the change then commits with them); False if there is none such.

        A file with a version whose closed writes wait in the group commit commits them
        first (every close is its own version). A new file (no version yet) takes the
        change into its first version instead, and while a writable handle of it is
        open, its commit waits for that handle's release: rsync ``fchmod``s its
        temporary file before writing it and sets the mtime and mode after closing it,
        which made three versions and three commits at once per file.

        The open file is looked up again once its lock is held: a group commit holding
        the lock may have committed and closed it meanwhile (no handle pins a file whose
        writer released it), and a change folded into a closed file would commit later,
        on a stale base, as a conflict copy."""
        while (of := self.files.get(ino)) is not None:
            if not isinstance(of.ref, int):
                await self._settle(of)
            if not (of.dirty or isinstance(of.ref, int)):
                return False
            async with of.lock:
                if self.files.get(ino) is of:
                    of.posix, of.headers = change(of.posix, of.headers)
                    of.dirty = True
                    break
        else:
            return False
        if not (isinstance(of.ref, int) and of.writers(self.handles)):
            await self._maybe_commit(of)
        return True

    async def _meta_version(self, ps: PartState, ref: Ref, change: work.Change, always: bool = False) -> None:
        assert isinstance(ref, bytes)
        done = await self._work(work.update_meta, ps.view, ref, change, always)
        v = done.value
        if v is None:
            return
        self._apply(ps, [v], done.gen_after)
        ino = self.inodes.find(("obj", ps.pid, ref))
        of = self.files.get(ino) if ino is not None else None
        if of is None or of.base is None or of.base.hash != v.header.prev:
            return
        if of.dirty:  # written while the version was made: its commit builds on it, change kept
            of.posix, of.headers = change(of.posix, of.headers)
        of.follow(v)

    async def _dir_meta(self, ps: PartState, path: str, change: work.Change) -> None:
        async with ps.lock:
            tree = await self._tree(ps)
            d = tree.dir(path)
            if d is None:
                raise oserror(errno.ENOENT)
            # the mtime shown now (entries made or removed since the marker's version
            # count) is what the new version keeps, unless the change sets one
            shown = (await self._partdir_attr(0, ps, path)).mtime_ns

            def keeping_mtime(p: Posix, h: tuple[tuple[str, str], ...]) -> tuple[Posix, tuple[tuple[str, str], ...]]:
                return change(replace(p, mtime_ns=shown), h)

            if isinstance(d.marker, bytes):
                v = await self._marker_version(ps, d)
                stored = v.header.posix.mtime_ns if v is not None else None
                # entries changed since the marker's version: even a change to what is stored
                # (rsync sets a directory's mtime when it makes it, and again after filling it)
                # needs a version, whose time then comes after theirs
                await self._meta_version(ps, d.marker, keeping_mtime, always=shown != stored)
                return
            posix, headers = keeping_mtime(self._default_dir_posix(), ())
            done = await self._work(work.create, ps.view, marker_key(path), b"", posix, headers)
            self._apply(ps, [done.value], done.gen_after)

    async def getxattr(self, ino: int, name: str, caller: tuple[int, set[int]] | None = None) -> bytes:
        """``caller`` (uid, groups): for ``system.fsobj.*`` names, which the kernel lets
        through unchecked, the caller must be allowed to read the node (EACCES)."""
        if name.startswith(xattrs.NS):
            if caller is not None:
                a = await self._attr(self._key(ino), ino)
                if not xattrs.may_read_facts(a.mode, a.uid, a.gid, *caller):
                    raise oserror(errno.EACCES, f"{name}: no read permission")
        elif not name.startswith(xattrs.USER):
            raise oserror(errno.ENODATA)
        value = (await self._xattrs(ino)).get(name)
        if value is None:
            raise oserror(errno.ENODATA)
        return value

    async def listxattr(self, ino: int) -> list[str]:
        of = self.files.get(ino)
        if of is not None and of.dirty and self._key(ino)[0] == "obj":
            # the names do not depend on what is written: no commit for them (rsync -X
            # lists the attributes of its temporary file before it sets any; a commit
            # here made that file's first version, and each later change one more)
            return xattrs.version_xattr_names(of.headers)
        return list(await self._xattrs(ino))

    async def setxattr(self, ino: int, name: str, value: bytes) -> None:
        header = xattrs.header_name(name)
        text = xattrs.header_value(value)
        await self._change_meta(ino, self._key(ino), lambda p, h: (p, xattrs.with_header(h, header, text)))

    async def removexattr(self, ino: int, name: str) -> None:
        header = xattrs.header_name(name)
        key = self._key(ino)
        if name not in await self._xattrs(ino):
            raise oserror(errno.ENODATA)
        await self._change_meta(ino, key, lambda p, h: (p, xattrs.without_header(h, header)))

    async def _xattrs(self, ino: int) -> dict[str, bytes]:
        key = self._key(ino)
        kind = key[0]
        if kind == "root":
            return {xattrs.NS + "daemon_pid": str(os.getpid()).encode(), xattrs.NS + "store": bytes(self.store.root)}
        if kind == "ver":
            v = await self._version(key[1])
            return await self._version_xattrs(v, self._part(v.header.partition).view)
        ps = self._part(key[1])
        if kind == "obj":
            return await self._object_xattrs(ino, ps, key[2])
        out = xattrs.partition_xattrs(ps.view)
        if kind == "dir":
            d = (await self._tree(ps)).dir(key[2])
            v = await self._marker_version(ps, d) if d is not None else None
            if v is not None:
                out.update(await self._version_xattrs(v, ps.view))
        return out

    async def _object_xattrs(self, ino: int, ps: PartState, ref: Ref) -> dict[str, bytes]:
        of = self.files.get(ino)
        if of is not None and of.dirty:
            # the hashes name a committed version: what was written becomes one first, as on
            # fsync (close(2) does not wait for the kernel's RELEASE, so it may not have come yet)
            await self._commit(of)
        if of is not None and of.base is None:
            return {xattrs.USER + k: v.encode() for k, v in of.headers}
        if of is not None:
            v = of.base
        else:
            await self._tree(ps)
            e = ps.heads.get(ref) if isinstance(ref, bytes) else None
            if e is None or e.tombstone:
                raise oserror(errno.ENOENT)
            v = await self._version(e.head_hash, ps.view)
        assert v is not None
        out = await self._version_xattrs(v, ps.view)
        if of is not None and of.headers != v.header.headers:  # headers set since, not committed yet
            out = {k: val for k, val in out.items() if k.startswith(xattrs.NS)}
            out.update({xattrs.USER + k: val.encode() for k, val in of.headers})
        return out

    async def _version_xattrs(self, v: Version, view: PartitionView) -> dict[str, bytes]:
        """A fresh dict (callers change it) of the version's attributes, computed once
        while it is among the last ``FACTS_CACHE`` versions asked for: ``cp -a`` and
        ``getfattr -d`` ask for every attribute of a file one by one (twice, with the
        size first), and each answer used to compute all of them."""
        cached = self.facts.get(v.hash)
        if cached is not None:
            self.facts.move_to_end(v.hash)
            return dict(cached)
        if v.header.chunks is not None:
            count = len(v.header.chunks)
        else:
            keys = view.epoch_keys(v.header.epoch)
            count = len(await self._thread(self.store.payloads.chunk_refs, v.header, keys))
        out = xattrs.version_xattrs(v, view, count)
        self.facts[v.hash] = out
        if len(self.facts) > FACTS_CACHE:
            self.facts.popitem(last=False)
        return dict(out)
