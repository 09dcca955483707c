"""Names: create, mkdir, mknod, symlink, link, unlink, rmdir, rename.

Owns: the rules for changing names. Every change runs under the partition's
namespace lock from its checks to the update of the tree, and all versions
of one change (a rename of a whole directory, a rename over an existing file
with its tombstone, the marker that keeps an emptied directory) commit in one
transaction. Files created here have no version until their first commit; a
rename or unlink of such a file changes memory only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial

import trio

from fsobj.fs import work
from fsobj.fs.committer import QueuedRemoval
from fsobj.fs.inodes import NodeKey
from fsobj.fs.openfile import OpenFile
from fsobj.fs.state import (
    TYPE_OF_BITS,
    Attr,
    MountState,
    PartState,
    log,
    oserror,
)
from fsobj.fs.tree import (
    RESERVED,
    Child,
    PartitionTree,
    Ref,
    is_under,
    join,
    key_for,
    marker_key,
    moved_key,
)
from fsobj.model.header import MAX_SORT_KEY_BYTES, Posix, check_sort_key
from fsobj.store import Version

DIR_TIMES_EVERY = 30.0  # seconds between two writes of a partition's directory times (docs/mount.md)
RENAME_NOREPLACE = 1  # linux/fs.h values, as pyfuse3 passes them
RENAME_EXCHANGE = 2


class NameOps(MountState):
    """Operations that make, remove and move names."""

    def _dir_of(self, ino: int) -> tuple[PartState, str]:
        """The partition and path of a directory where names can be made."""
        key = self._key(ino)
        if key[0] == "root":
            raise oserror(errno.EPERM, "the mount root holds only partitions (mkdir makes one)")
        if key[0] != "dir":
            raise oserror(errno.EROFS if key[0] in ("vdir", "objects", "ver") else errno.ENOTDIR)
        return self._part(key[1]), key[2]

    def _new_key(self, path: str, name: str) -> str:
        if not path and name in RESERVED:
            raise oserror(errno.EEXIST, f"{name} is reserved")
        key = key_for(path, name)
        if len(key.encode("utf-8", "surrogateescape")) > MAX_SORT_KEY_BYTES:
            raise oserror(errno.ENAMETOOLONG)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise oserror(errno.EILSEQ, "names must be UTF-8") from None
        check_sort_key(key)
        return key

    async def _parent_gid(self, ps: PartState, path: str, uid_gid: tuple[int, int]) -> tuple[int, bool]:
        """(gid for a new entry, whether the parent is set-group-ID)."""
        attr = await self._partdir_attr(0, ps, path)
        if attr.mode & stat.S_ISGID:
            return attr.gid, True
        return uid_gid[1], False

    async def create(self, parent: int, name: str, mode: int, flags: int, uid: int, gid: int) -> tuple[int, Attr]:
        ps, path = self._dir_of(parent)
        self._writable(ps)
        async with ps.lock:
            tree = await self._tree(ps)
            if tree.lookup(path, name) is not None:
                raise oserror(errno.EEXIST)
            key = self._new_key(path, name)
            gid, _ = await self._parent_gid(ps, path, (uid, gid))
            ref = self._next_ref
            self._next_ref += 1
            tree.add(ref, key)
        ino = self.inodes.get(("obj", ps.pid, ref))
        posix = Posix("file", mode & 0o7777, uid, gid, time.time_ns())
        of = self._track(OpenFile(ino, ps.pid, ref, key, None, posix, dirty=True))
        fh = self._add_handle(of, flags & os.O_ACCMODE != os.O_RDONLY)
        return fh, await self._entry(("obj", ps.pid, ref))

    async def mkdir(self, parent: int, name: str, mode: int, uid: int, gid: int) -> Attr:
        if self._key(parent)[0] == "root":
            return await self._mkpartition(name)
        ps, path = self._dir_of(parent)
        gid, sgid = await self._parent_gid(ps, path, (uid, gid))
        posix = Posix("dir", (mode & 0o7777) | (stat.S_ISGID if sgid else 0), uid, gid, time.time_ns())
        new_path = join(path, name)
        await self._make(ps, path, name, marker_key(new_path), posix, b"")
        return await self._entry(("dir", ps.pid, new_path))

    async def _mkpartition(self, name: str) -> Attr:
        self._writable()
        view = await self._thread(self.store.create_partition, name)
        await self.refresh(force=True)
        return await self._entry(("dir", view.id, ""))

    async def symlink(self, parent: int, name: str, target: bytes, uid: int, gid: int) -> Attr:
        ps, path = self._dir_of(parent)
        gid, _ = await self._parent_gid(ps, path, (uid, gid))
        v = await self._make(ps, path, name, None, Posix("symlink", 0o777, uid, gid, time.time_ns()), target)
        return await self._entry(("obj", ps.pid, v.base_hash))

    async def mknod(self, parent: int, name: str, mode: int, rdev: int, uid: int, gid: int) -> Attr:
        kind = TYPE_OF_BITS.get(stat.S_IFMT(mode))
        if kind is None or kind in ("dir", "symlink"):
            raise oserror(errno.EINVAL)
        ps, path = self._dir_of(parent)
        gid, _ = await self._parent_gid(ps, path, (uid, gid))
        posix = Posix(kind, mode & 0o7777, uid, gid, time.time_ns(), rdev if kind in ("chardev", "blockdev") else 0)
        v = await self._make(ps, path, name, None, posix, b"")
        return await self._entry(("obj", ps.pid, v.base_hash))

    async def _make(
        self, ps: PartState, path: str, name: str, key: str | None, posix: Posix, payload: bytes
    ) -> Version:
        """Commit a new object (file, symlink, special file or directory marker) named ``name``."""
        self._writable(ps)
        async with ps.lock:
            tree = await self._tree(ps)
            if tree.lookup(path, name) is not None:
                raise oserror(errno.EEXIST)
            self._new_key(path, name)
            await self.committer.drain_removals()  # the name may be one whose tombstone waits
            done = await self._work(work.create, ps.view, key or key_for(path, name), payload, posix, ())
            self._apply(ps, [done.value], done.gen_after)
            return done.value

    def link(self) -> None:
        raise oserror(errno.EPERM, "hard links are not supported")

    async def unlink(self, parent: int, name: str) -> None:
        ps, path = self._dir_of(parent)
        self._writable(ps)
        async with ps.lock:
            c = await self._lookup_settled(ps, path, name)
            if c is None:
                raise oserror(errno.ENOENT)
            if c.is_dir:
                raise oserror(errno.EISDIR)
            keep = [(path, {c.ref}, set[str]())]
            tree = await self._tree(ps)
            if self.committer.enabled and isinstance(c.ref, bytes) and not _empties(tree, *keep[0]):
                self._unlink_later(ps, tree, c.ref)
            else:
                await self._change_names(ps, [], [c.ref], keep=keep)

    def _unlink_later(self, ps: PartState, tree: PartitionTree, ref: bytes) -> None:
        """The name goes now; its tombstone joins the group commit."""
        hint = self._known_heads(ps, [ref]).get(ref)  # taken now: the version is cached now
        tree.remove(ref)
        self._settle_pending(ps, [], [ref])
        self.committer.submit_removal(ps.pid, ref, hint)

    async def _remove_many(self, items: list[QueuedRemoval]) -> None:
        """Write queued tombstones, one transaction per partition."""
        by_part: dict[bytes, dict[bytes, Version | None]] = {}
        for pid, base_hash, hint in items:
            by_part.setdefault(pid, {})[base_hash] = hint
        for pid, hinted in by_part.items():
            bases = list(hinted)
            ps = self.parts.get(pid)
            if ps is None:
                log.error("partition %s vanished: %d tombstones not written", pid.hex()[:16], len(bases))
                continue
            # the heads as the mount knows them now, else as it knew them at unlink
            hints = {b: h for b, h in hinted.items() if h is not None} | self._known_heads(ps, bases)
            ns = work.Namespace(ps.view, [], bases, [], hints)
            done = await self._far(work.change_names, ns)
            self._apply(ps, done.value, done.gen_after)

    async def _save_dir_times(self, force: bool) -> float | None:
        """Write the times of directories whose entries changed here: each directory's
        marker gets a version with that mtime, the partition root a marker if it has none
        (one transaction per partition). A partition's are written with the first batch
        after a change, then at most every ``DIR_TIMES_EVERY`` seconds, so that a directory
        that gains a file a second does not get a marker version a second; ``force``
        (fsyncdir, unmount) writes them all now. Returns the seconds until the next ones
        are due (None: nothing waits). A directory that exists only because sort keys run
        through it (no marker) keeps its times in memory only."""
        now = trio.current_time()
        wait: float | None = None
        for ps in list(self.parts.values()):
            if not ps.unsaved_dirs or ps.tree is None or not ps.writable:
                continue
            due = ps.dir_times_saved + DIR_TIMES_EVERY
            if not force and now < due:
                wait = due - now if wait is None else min(wait, due - now)
                continue
            ps.dir_times_saved = now
            async with ps.lock:
                tree = ps.tree
                if tree is None:
                    continue
                paths = set(ps.unsaved_dirs)
                ps.unsaved_dirs.clear()
                times = {p: t for p in paths if (t := ps.entry_times.get(p)) is not None}
                mtimes: list[tuple[bytes, int]] = []
                markers: list[tuple[str, Posix]] = []
                for path, t in times.items():
                    d = tree.dir(path)
                    marker = d.marker if d is not None else None
                    e = ps.heads.get(marker) if isinstance(marker, bytes) else None
                    if e is not None and not e.tombstone and t > e.created_us * 1000:
                        mtimes.append((e.base_hash, t))
                    elif d is not None and marker is None and not path:
                        markers.append((marker_key(path), replace(self._default_dir_posix(), mtime_ns=t)))
                if not mtimes and not markers:
                    continue
                hints = self._known_heads(ps, [b for b, _ in mtimes])
                ns = work.Namespace(ps.view, [], [], markers, hints, mtimes=mtimes)
                try:
                    done = await self._far(work.change_names, ns)
                except Exception as e:
                    log.warning("partition %s: directory times not written (tried again later): %s", ps.name, e)
                    ps.unsaved_dirs.update(times)
                    continue
                self._apply(ps, done.value, done.gen_after)

    async def _lookup_settled(self, ps: PartState, path: str, name: str, new_files: bool = True) -> Child | None:
        """Look ``name`` up; if it is a file with closed writes not committed yet (waiting
        in the group commit, or in a batch committing now), commit them first, so that
        what was closed stays in the history even if it is removed now. Without waiting
        for the batch, an ``unlink`` during it wrote its tombstone first, and the batch's
        data then came back as a conflict copy of the removed file. ``new_files=False``
        (the source of a rename that replaces nothing committed): a file with no version
        yet moves in memory, and its first version is made under the new name."""
        c = (await self._tree(ps)).lookup(path, name)
        of = self._open_of(ps, c.ref) if c is not None and not c.is_dir else None
        if of is not None and not new_files and isinstance(of.ref, int):
            return c
        if of is not None and self._closed_writes(of):
            await self._commit(of)  # waits for a batch that holds its lock; commits what is left
            c = (await self._tree(ps)).lookup(path, name)
        return c

    async def rmdir(self, parent: int, name: str) -> None:
        if self._key(parent)[0] == "root":
            await self._rmpartition(name)
            return
        ps, path = self._dir_of(parent)
        self._writable(ps)
        async with ps.lock:
            tree = await self._tree(ps)
            c = tree.lookup(path, name)
            if c is None:
                raise oserror(errno.ENOENT)
            if not c.is_dir:
                raise oserror(errno.ENOTDIR)
            d = tree.dir(c.path)
            assert d is not None
            if not d.empty():
                raise oserror(errno.ENOTEMPTY)
            await self._change_names(ps, [], list(d.markers), keep=[(path, set(), {name})])

    async def _rmpartition(self, name: str) -> None:
        """``rmdir`` of a partition in the mount root: owner only, and only when it is empty
        (its root marker, if any, is tombstoned first; ``ENOTEMPTY`` otherwise)."""
        self._writable()
        await self.refresh()
        pid = self.names.get(name)
        if pid is None:
            raise oserror(errno.ENOENT)
        ps = self._part(pid)
        if ps.view.role != "owner":
            raise oserror(errno.EPERM, f"only the owner can remove partition {ps.name}")
        await self.committer.drain()  # queued tombstones and files first: the store decides on them
        async with ps.lock:
            tree = await self._tree(ps)
            root = tree.dir("")
            if root is not None and not root.empty():
                raise oserror(errno.ENOTEMPTY)
            if any(of.pid == pid and not of.unlinked for of in self.files.values() if isinstance(of.ref, int)):
                raise oserror(errno.ENOTEMPTY)
            if root is not None and root.markers:
                await self._change_names(ps, [], list(root.markers), keep=[])
            await self._thread(self.store.remove_partition, pid)
        await self.refresh(force=True)

    async def rename(self, parent_old: int, name_old: str, parent_new: int, name_new: str, flags: int) -> None:
        if flags & RENAME_EXCHANGE and flags & RENAME_NOREPLACE:
            raise oserror(errno.EINVAL)
        ps, src_dir = self._dir_of(parent_old)
        ps_new, dst_dir = self._dir_of(parent_new)
        if ps_new is not ps:
            raise oserror(errno.EXDEV)
        self._writable(ps)
        async with ps.lock:
            dst = await self._lookup_settled(ps, dst_dir, name_new)
            replaces = dst is not None and not dst.is_dir and isinstance(dst.ref, bytes)
            # Closed data goes first. A new file moves in memory, except when the rename
            # replaces (or swaps with) a committed object: that is one transaction in the
            # store, as on a local filesystem, so the new file commits first, under its old
            # name. Moved in memory, the replaced object's tombstone committed at once and
            # the new file up to a commit window later: other mounts saw no file, and after
            # a crash in between the name was gone.
            settle_new = bool(flags & RENAME_EXCHANGE) or replaces
            src = await self._lookup_settled(ps, src_dir, name_old, new_files=settle_new)
            tree = await self._tree(ps)
            if src is None:
                raise oserror(errno.ENOENT)
            if flags & RENAME_EXCHANGE:
                await self._exchange(ps, tree, src, dst, (src_dir, name_old), (dst_dir, name_new))
                return
            if dst is not None and flags & RENAME_NOREPLACE:
                raise oserror(errno.EEXIST)
            if dst == src:
                return
            new_key = self._new_key(dst_dir, name_new)
            origin = (src_dir, name_old) if src_dir != dst_dir else None
            if src.is_dir:
                await self._rename_dir(ps, tree, src.path, join(dst_dir, name_new), dst, origin)
            else:
                await self._rename_file(ps, src.ref, new_key, dst, origin)

    async def _exchange(
        self,
        ps: PartState,
        tree: PartitionTree,
        a: Child,
        b: Child | None,
        where_a: tuple[str, str],
        where_b: tuple[str, str],
    ) -> None:
        """``renameat2(RENAME_EXCHANGE)``: the two names swap what they stand for, in one
        transaction; each object keeps its baseHash (a directory: everything under it)."""
        if b is None:
            raise oserror(errno.ENOENT)
        if a == b:
            return
        path_a = a.path if a.is_dir else join(*where_a)
        path_b = b.path if b.is_dir else join(*where_b)
        if (a.is_dir and is_under(path_b, path_a)) or (b.is_dir and is_under(path_a, path_b)):
            raise oserror(errno.EINVAL, "cannot exchange a directory with something inside it")
        moves: list[tuple[Ref, str]] = []
        for child, here, there in ((a, path_a, where_b), (b, path_b, where_a)):
            if child.is_dir:
                moves += [(ref, moved_key(key, here, join(*there))) for ref, key in tree.refs_under(here)]
            else:
                moves.append((child.ref, self._new_key(*there)))
        await self._change_names(ps, moves, [], keep=[])
        if a.is_dir or b.is_dir:
            self.inodes.rekey_where(partial(_exchanged_dir_key, ps.pid, path_a, path_b), together=True)

    async def _rename_file(
        self, ps: PartState, ref: Ref, new_key: str, dst: Child | None, origin: tuple[str, str] | None
    ) -> None:
        if dst is not None and dst.is_dir:
            raise oserror(errno.EISDIR)
        removals = [dst.ref] if dst is not None else []
        keep = [(origin[0], {ref}, set[str]())] if origin else []
        await self._change_names(ps, [(ref, new_key)], removals, keep=keep)

    async def _rename_dir(
        self,
        ps: PartState,
        tree: PartitionTree,
        old: str,
        new: str,
        dst: Child | None,
        origin: tuple[str, str] | None,
    ) -> None:
        if is_under(new, old):
            raise oserror(errno.EINVAL, "cannot move a directory into itself")
        removals: list[Ref] = []
        if dst is not None:
            if not dst.is_dir:
                raise oserror(errno.ENOTDIR)
            d = tree.dir(dst.path)
            assert d is not None
            if not d.empty():
                raise oserror(errno.ENOTEMPTY)
            removals = list(d.markers)
        moves = [(ref, moved_key(key, old, new)) for ref, key in tree.refs_under(old)]
        keep = [(origin[0], set[Ref](), {origin[1]})] if origin else []
        await self._change_names(ps, moves, removals, keep=keep)
        self.inodes.rekey_where(partial(_moved_dir_key, ps.pid, old, new))

    async def _change_names(
        self,
        ps: PartState,
        moves: list[tuple[Ref, str]],
        removals: list[Ref],
        keep: list[tuple[str, set[Ref], set[str]]],
    ) -> None:
        """Move and remove objects in one transaction; keep emptied parent directories.

        ``keep`` lists (directory, refs leaving it, subdirectory names leaving it):
        a directory without a marker that would become empty gets one, as a
        directory on a local filesystem stays when its last entry goes.
        """
        await self.committer.drain_removals()  # names freed earlier go first
        tree = await self._tree(ps)
        # the refs were looked up before these awaits: a file created here may have been
        # committed meanwhile, and be known by its baseHash now (no await from here to
        # ``files``: a ref still an int is an open file, which _current follows from then on)
        moves = [(self._resolve(r), k) for r, k in moves]
        removals = [self._resolve(r) for r in removals]
        keep = [(p, {self._resolve(r) for r in refs}, subs) for p, refs, subs in keep]
        markers = [
            (marker_key(p), self._default_dir_posix()) for p, refs, subs in keep if _empties(tree, p, refs, subs)
        ]
        files = {r: of for r in [r for r, _ in moves] + removals if (of := self._open_of(ps, r)) is not None}
        async with self._locked_files(list(files.values())):
            # a commit that ran while we waited for a lock may have given a new file its baseHash
            moves = [(_current(files, r), k) for r, k in moves]
            removals = [_current(files, r) for r in removals]
            committed_moves = [(r, k) for r, k in moves if isinstance(r, bytes)]
            committed_removals = [r for r in removals if isinstance(r, bytes)]
            versions: list[Version] = []
            if committed_moves or committed_removals or markers:
                hints = self._known_heads(ps, [r for r, _ in committed_moves] + committed_removals)  # type: ignore[misc]
                ns = work.Namespace(ps.view, committed_moves, committed_removals, markers, hints)  # type: ignore[arg-type]
                done = await self._work(work.change_names, ns)
                versions = done.value
                self._apply(ps, versions, done.gen_after)
            self._settle_pending(ps, moves, removals)
            self._follow_moves(ps, versions)

    def _settle_pending(self, ps: PartState, moves: list[tuple[Ref, str]], removals: list[Ref]) -> None:
        """Files created here and not committed yet move or vanish in memory only; open ones notice."""
        tree = ps.tree  # None: it is rebuilt on next use, from the open files' sort keys
        for ref, key in moves:
            if isinstance(ref, int) and tree is not None:
                tree.add(ref, key)
            of = self._open_of(ps, ref)
            if of is not None:
                of.sort_key = key
        for ref in removals:
            if isinstance(ref, int) and tree is not None:
                tree.remove(ref)
            of = self._open_of(ps, ref)
            if of is not None:
                of.unlinked = True

    def _follow_moves(self, ps: PartState, versions: list[Version]) -> None:
        """Open files whose object got a metadata version here keep it as their base (same payload)."""
        for v in versions:
            of = self._open_of(ps, v.base_hash)
            if of is None or v.tombstone:
                continue
            if of.base is not None and of.base.hash == v.header.prev:
                of.follow(v)

    @contextlib.asynccontextmanager
    async def _locked_files(self, files: list[OpenFile]) -> AsyncIterator[None]:
        """Hold the locks of these open files (no commit of theirs runs meanwhile), in inode order."""
        async with contextlib.AsyncExitStack() as stack:
            for of in sorted(files, key=_ino):
                await stack.enter_async_context(of.lock)
            yield


def _current(files: dict[Ref, OpenFile], ref: Ref) -> Ref:
    of = files.get(ref)
    return of.ref if of is not None and of.ref is not None else ref


def _ino(of: OpenFile) -> int:
    return of.ino


def _empties(tree: PartitionTree, path: str, refs: set[Ref], subdirs: set[str]) -> bool:
    """True if directory ``path`` has no marker and loses its last entries."""
    if not path:
        return False
    d = tree.dir(path)
    if d is None or d.markers:
        return False
    left_files = any(r not in refs for rs in d.files.values() for r in rs)
    left_dirs = any(n not in subdirs for n in d.subdirs)
    return not left_files and not left_dirs


def _exchanged_dir_key(pid: bytes, a: str, b: str, key: NodeKey) -> NodeKey | None:
    """The directory node keys of two exchanged paths (and what is under them), swapped."""
    if key[0] != "dir" or key[1] != pid or not key[2]:
        return None
    for here, there in ((a, b), (b, a)):
        if is_under(key[2], here):
            return ("dir", pid, there + key[2][len(here) :])
    return None


def _moved_dir_key(pid: bytes, old: str, new: str, key: NodeKey) -> NodeKey | None:
    if key[0] == "dir" and key[1] == pid and is_under(key[2], old) and key[2]:
        return ("dir", pid, new + key[2][len(old) :])
    return None
