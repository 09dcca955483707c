"""The state of one mount and the reads every operation shares.

Owns: the partitions shown in the mount root and their trees (``fsobj.fs.tree``),
the inode table, open files and handles, the cache of verified versions, and
how a node's attributes are computed. Keeps the trees current: our own commits
are applied in place (:meth:`MountState._apply`); changes made by others
(another mount, the CLI) are noticed through the index generation counter
(by requests and by a background task, :meth:`MountState.watch`), rebuild the
trees (:meth:`MountState.refresh`), and what the kernel cached of the changed
nodes and names is invalidated (``notify``, set by the daemon). The operations
themselves live in ``lookup``, ``files``, ``meta`` and ``names``; the
concurrency rules are in ``fsobj.fs.filesystem``.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import trio

from fsobj.fs import work
from fsobj.fs.budget import READ_BUDGET, STAGING_BUDGET, ByteBudget
from fsobj.fs.committer import Committer, QueuedRemoval
from fsobj.fs.helper import CommitHelper, HelperError, NotPortable
from fsobj.fs.inodes import ROOT_INODE, InodeTable, NodeKey
from fsobj.fs.locks import QuickLock
from fsobj.fs.openfile import Handle, OpenFile
from fsobj.fs.stream import MAX_STREAMS
from fsobj.fs.tree import (
    Dir,
    HistoryTree,
    PartitionTree,
    Ref,
    changed_names,
)
from fsobj.model.header import Posix
from fsobj.store import ListEntry, PartitionView, Store, Version

log = logging.getLogger("fsobj.fs")

T = TypeVar("T")
Stale = tuple[int, str | None]  # (inode, None): its attributes and data; (directory inode, name): that name

TYPE_BITS = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}
TYPE_OF_BITS = {bits: name for name, bits in TYPE_BITS.items()}
HISTORY_DELAY = 2.0  # s after a partition's first use until its .versions tree is built in the background
EXACT_SUFFIX = "@exact"  # .objects/<hash>@exact: that very version, even if it is a baseHash
VERSION_CACHE = 16384
FACTS_CACHE = 256  # versions whose xattrs are kept computed (meta._version_xattrs)
SETTLED_REFS = 65536  # new files' int refs remembered after their first commit (_resolve)


@dataclass
class Attr:
    """What ``stat`` shows; ``timeout`` is how long the kernel may cache it."""

    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    timeout: float = 1.0


@dataclass
class Options:
    read_only: bool = False
    spill_dir: str | None = None  # where staging spills to disk (0700, outside the store)
    uid: int = field(default_factory=os.getuid)  # owner shown for directories without a marker
    gid: int = field(default_factory=os.getgid)
    attr_timeout: float = 30.0  # kernel cache of attributes and names (others' changes invalidate them)
    refresh_interval: float = 1.0  # how often the index generation is checked for others' changes
    threads: int = 8
    commit_window: float = 0.0  # group commit: closed files wait up to this long to commit together
    commit_helper: bool = False  # run the group commit's store work in a helper process (fsobj.fs.helper)


@dataclass
class PartState:
    """One partition as the mount shows it; ``tree`` None means "rebuild before use"."""

    view: PartitionView
    name: str
    lock: QuickLock = field(default_factory=QuickLock)  # namespace lock
    build_lock: trio.Lock = field(default_factory=trio.Lock)
    history_lock: trio.Lock = field(default_factory=trio.Lock)  # apart: a long history build never holds up the tree
    warmed: bool = False  # its history was queued for the background build once (prepare_histories)
    tree: PartitionTree | None = None
    history: HistoryTree | None = None
    heads: dict[bytes, ListEntry] = field(default_factory=dict)  # baseHash -> head, deleted ones too
    entry_times: dict[str, int] = field(default_factory=dict)  # directory -> last entry change seen here (ns)
    unsaved_dirs: set[str] = field(default_factory=set)  # directories whose entry_times are not written yet
    dir_times_saved: float = -math.inf  # trio time of the last write of directory times

    @property
    def pid(self) -> bytes:
        return self.view.id

    @property
    def writable(self) -> bool:
        return self.view.role in ("owner", "write")


class VersionCache:
    """Verified versions by absoluteHash (immutable, so never stale). Thread-safe."""

    def __init__(self, size: int = VERSION_CACHE) -> None:
        self._d: collections.OrderedDict[bytes, Version] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, h: bytes) -> Version | None:
        with self._lock:
            v = self._d.get(h)
            if v is not None:
                self._d.move_to_end(h)
            return v

    def put(self, v: Version) -> None:
        with self._lock:
            self._d[v.hash] = v
            while len(self._d) > self._size:
                self._d.popitem(last=False)


def entry_of(v: Version) -> ListEntry:
    return ListEntry(v.sort_key, v.base_hash, v.hash, v.header.seq, v.length, v.header.created_us, v.tombstone)


def oserror(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code) + (f": {what}" if what else ""))


class MountState:
    """Everything a mount knows; the base of the operation mixins."""

    def __init__(self, store: Store, options: Options | None = None) -> None:
        self.store = store
        self.opts = options or Options()
        self.inodes = InodeTable()
        self.parts: dict[bytes, PartState] = {}
        self.names: dict[str, bytes] = {}  # name in the mount root -> partition id
        self.files: dict[int, OpenFile] = {}  # inode -> open file
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, tuple[NodeKey, list[tuple[str, NodeKey]] | None]] = {}
        self.versions = VersionCache()
        self.read_budget = ByteBudget(READ_BUDGET)  # the read arenas and cached chunks of all open files
        self.staging_budget = ByteBudget(STAGING_BUDGET)  # the stagings held in memory, together
        self.stream_slots = threading.BoundedSemaphore(MAX_STREAMS)  # streaming writes at once
        # absoluteHash -> (pid, length, created_us, baseHash): version files' attributes from index rows
        self.ver_info: dict[bytes, tuple[bytes, int, int, bytes]] = {}
        # the system.fsobj.* facts of recent versions: `cp -a` asks for each of them twice
        self.facts: collections.OrderedDict[bytes, dict[str, bytes]] = collections.OrderedDict()
        self.page_cache: dict[int, bytes] = {}  # inode -> version the kernel's page cache holds
        self.limiter = trio.CapacityLimiter(self.opts.threads)
        self.committer = Committer(
            self._commit_many, self._remove_many, window=self.opts.commit_window, after=self._save_dir_times
        )
        self.helper: CommitHelper | None = None  # started by start() when opts.commit_helper
        self.started_ns = time.time_ns()
        self._gen = -1
        self._next_check = 0.0
        self._next_fh = 1
        self._next_ref = 1
        # int ref -> baseHash of files created here and committed since: an operation that
        # looked a file up, then waited (a lock, a queue), names it by a ref that went stale
        self._settled: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._recent: collections.deque[tuple[int, bytes, ListEntry]] = collections.deque(maxlen=4096)
        # set by the daemon: tells the kernel to drop cached nodes and names (blocking; in a thread)
        self.notify: Callable[[list[Stale]], None] | None = None
        self._stale: list[Stale] = []
        self._stale_wake = trio.Event()
        # (partition, when) whose .versions tree prepare_histories builds in the background
        self._to_prepare: tuple[
            trio.MemorySendChannel[tuple[PartState, float]], trio.MemoryReceiveChannel[tuple[PartState, float]]
        ] = trio.open_memory_channel(float("inf"))

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)

    async def _work(self, fn: Callable[..., T], *args: Any) -> work.Done[T]:
        """Run one logical store operation in a worker thread."""
        return await self._thread(work.run, self.store, fn, *args)

    async def _far(self, fn: Callable[..., T], *args: Any) -> work.Done[T]:
        """:meth:`_work` in the commit helper process when there is one and the arguments
        can cross; here otherwise (and from then on, if the helper died)."""
        if self.helper is None:
            return await self._work(fn, *args)
        return await self._thread(self._far_call, self.helper, fn, args)

    def _far_call(self, helper: CommitHelper, fn: Callable[..., T], args: tuple[Any, ...]) -> work.Done[T]:
        try:
            return helper.call(fn, *args)
        except NotPortable as e:
            log.debug("%s", e)
        except HelperError as e:
            log.warning("%s; the daemon commits by itself from now on", e)
            self.helper = None
        return work.run(self.store, fn, *args)

    async def start_helper(self) -> None:
        if not self.opts.commit_helper or self.opts.read_only:
            return
        try:
            self.helper = await self._thread(
                CommitHelper, self.store.root, self.store.identity, self.store.index.note_own
            )
        except HelperError as e:
            log.warning("%s; the daemon commits by itself", e)
        else:
            log.info("commit helper started (pid %d)", self.helper.pid)

    async def stop_helper(self) -> None:
        helper, self.helper = self.helper, None
        if helper is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(helper.close)

    async def _version(self, h: bytes, view: PartitionView | None = None) -> Version:
        v = self.versions.get(h)
        if v is None:
            v = await self._thread(self.store.load_version, h, view)
            self.versions.put(v)
        return v

    async def _preload(self, pairs: Iterable[tuple[bytes, PartitionView]]) -> None:
        """Fetch many headers in one thread call (a listing that needs every entry's attributes)."""
        todo = [(h, view) for h, view in pairs if self.versions.get(h) is None]

        def load() -> None:
            for h, view in todo:
                try:
                    self.versions.put(self.store.load_version(h, view))
                except Exception as e:  # reported when the entry itself is asked for
                    log.debug("preload of %s failed: %s", h.hex(), e)

        if todo:
            await self._thread(load)

    def _key(self, ino: int) -> NodeKey:
        key = self.inodes.key(ino)
        if key is None or key[0] == "gone":
            raise oserror(errno.ENOENT, f"inode {ino}")
        return key

    def _part(self, pid: bytes) -> PartState:
        ps = self.parts.get(pid)
        if ps is None:
            raise oserror(errno.ENOENT, "partition is gone")
        return ps

    def _writable(self, ps: PartState | None = None) -> None:
        if self.opts.read_only:
            raise oserror(errno.EROFS)
        if ps is not None and not ps.writable:
            raise oserror(errno.EROFS, f"partition {ps.name} is read-only for this identity")

    async def refresh(self, force: bool = False) -> None:
        """Notice changes made by others (another mount, the CLI) at most every ``refresh_interval``."""
        now = trio.current_time()
        if not force and now < self._next_check:
            return
        self._next_check = now + self.opts.refresh_interval
        if force:
            await self._reload()
            return
        gen = self.store.generation()
        if gen == self._gen:
            return
        if self.helper is not None and self.helper.in_flight:
            return  # its generations are not counted as ours yet: look again next time
        if self.store.only_own_commits(self._gen, gen):
            self._gen = gen  # our own transactions: each applies its versions to the trees itself
        else:
            await self._reload()

    async def _reload(self) -> None:
        def load() -> tuple[int, list[PartitionView]]:
            return self.store.generation(), self.store.partitions()

        gen, views = await self._thread(load)
        old, old_names, self.parts, self.names = self.parts, self.names, {}, {}
        before = {pid: (ps.tree, dict(ps.heads)) for pid, ps in old.items() if ps.tree is not None}
        for view in views:
            ps = old.get(view.id) or PartState(view, "")
            ps.view, ps.name, ps.tree, ps.history = view, self._display_name(view), None, None
            self.parts[view.id] = ps
            self.names[ps.name] = view.id
        self._gen = gen
        if self.notify is None:
            return
        stale: list[Stale] = [(ROOT_INODE, None)]
        stale += [(ROOT_INODE, name) for name, pid in old_names.items() if self.names.get(name) != pid]
        for pid, (old_tree, old_heads) in before.items():
            ps = self.parts.get(pid)
            if ps is not None:
                stale += self._stale_in(ps, old_tree, old_heads, await self._tree(ps))
        self._stale.extend(stale)
        self._stale_wake.set()

    def _stale_in(
        self, ps: PartState, old: PartitionTree, old_heads: dict[bytes, ListEntry], new: PartitionTree
    ) -> list[Stale]:
        """What the kernel may cache of one partition that others' commits changed: the
        attributes and data of changed objects, and names that are gone or mean another node."""
        changed = [b for b in old_heads.keys() | ps.heads.keys() if _seen_change(old_heads.get(b), ps.heads.get(b))]
        if not changed:
            return []
        out: list[Stale] = []
        for b in changed:
            ino = self.inodes.find(("obj", ps.pid, b))
            if ino is not None:
                out.append((ino, None))
        for path, name in changed_names(old, new, changed):
            ino = self.inodes.find(("dir", ps.pid, path))
            if ino is not None:
                out += [(ino, None), (ino, name)]
        return out

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background task: check for others' changes every ``refresh_interval`` even when the
        kernel asks nothing (its caches answer), and tell the kernel what went stale."""
        task_status.started()
        while True:
            with trio.move_on_after(self.opts.refresh_interval):
                await self._stale_wake.wait()
            self._stale_wake = trio.Event()
            try:
                await self.refresh()
            except Exception:
                log.exception("checking the store for changes failed")
            if self._stale and self.notify is not None:
                batch, self._stale = self._stale, []
                # in a thread: the kernel may hold an invalidation until a request in progress
                # on that node is answered, which needs this event loop
                await trio.to_thread.run_sync(self.notify, batch, abandon_on_cancel=True)

    def _display_name(self, view: PartitionView) -> str:
        name = view.name or view.id.hex()[:16]
        if view.role == "owner":
            return name
        return f"{name}@{view.record.owner.user_id.hex()[:8]}"

    async def _tree(self, ps: PartState) -> PartitionTree:
        if ps.tree is None:
            async with ps.build_lock:
                if ps.tree is None:
                    await self._build(ps)
                    if not ps.warmed:  # the first use since the mount: .versions gets ready soon after
                        ps.warmed = True
                        self._to_prepare[0].send_nowait((ps, trio.current_time() + HISTORY_DELAY))
        assert ps.tree is not None
        return ps.tree

    async def _history(self, ps: PartState) -> HistoryTree:
        """The partition's ``.versions`` tree. It lists every series ever written, removed
        ones too, so the live tree never waits for it: built in the background after the
        partition's first use (:meth:`prepare_histories`), else on demand."""
        while ps.history is None:
            tree = await self._tree(ps)
            async with ps.history_lock:
                if ps.tree is tree and ps.history is None:
                    await self._build_history(ps, tree)
        return ps.history

    async def prepare_histories(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background task: build the ``.versions`` tree of each partition ``HISTORY_DELAY``
        after its first use since the mount, so that the first listing of ``.versions``
        does not wait for a listing of the partition's whole history, and the first
        commands after a mount do not share the interpreter with it. After a reload
        (another process changed the partition) it is built again only when used."""
        task_status.started()
        async for ps, when in self._to_prepare[1]:
            await trio.sleep_until(when)
            try:
                if self.parts.get(ps.pid) is ps:
                    await self._history(ps)
            except Exception:
                log.exception("preparing the history of partition %s failed", ps.name)

    async def _build(self, ps: PartState) -> None:
        """The live tree and heads, from the live series only (their count, not the
        partition's history, sets the cost of the first access after a mount)."""

        def listing() -> tuple[int, list[ListEntry]]:
            return self.store.generation(), self.store.list(ps.pid)

        gen, entries = await self._thread(listing)
        tree: PartitionTree = PartitionTree(ps.entry_times, ps.unsaved_dirs)
        heads: dict[bytes, ListEntry] = {}
        for e in entries:
            _place(tree, None, heads, e)
        for g, pid, e in self._recent:  # own commits the listing may predate
            if pid == ps.pid and g > gen:
                _place(tree, None, heads, e)
        for of in self.files.values():  # files created here and not committed yet
            if of.pid == ps.pid and isinstance(of.ref, int) and not of.unlinked:
                tree.add(of.ref, of.sort_key)
        for base_hash in self.committer.removals_of(ps.pid):  # unlinked here, tombstone not written yet
            tree.remove(base_hash)
        tree.clock = self._entry_clock  # entries that come and go from now on set their directory's times
        ps.tree, ps.history, ps.heads = tree, None, heads

    async def _build_history(self, ps: PartState, tree: PartitionTree) -> None:
        """Every series at its latest path, removed ones too (history_lock held), for the
        live ``tree``; dropped if a reload replaced it meanwhile. The heads of removed
        series join ``heads`` (their last owner and mode guard their history)."""

        def listing() -> tuple[int, HistoryTree, list[ListEntry]]:
            gen = self.store.generation()
            history, removed = HistoryTree(), []
            for e in self.store.list(ps.pid, include_deleted=True):
                history.set(e.base_hash, e.sort_key)
                if e.tombstone:
                    removed.append(e)
            return gen, history, removed

        gen, history, removed = await self._thread(listing)  # the tree is built there too: off the loop
        if ps.tree is not tree:
            return
        for e in removed:
            ps.heads.setdefault(e.base_hash, e)
        for g, pid, e in self._recent:  # own commits the listing may predate
            if pid == ps.pid and g > gen:
                history.set(e.base_hash, e.sort_key)
        ps.history = history

    def _apply(self, ps: PartState, versions: Iterable[Version], gen_after: int) -> None:
        """Our own committed versions, into the trees. Tombstones stay out of the version
        cache: nothing reads their attributes, and an ``rm -r`` of thousands of files
        would push the live versions out."""
        for v in versions:
            if not v.tombstone:
                self.versions.put(v)
            e = entry_of(v)
            self._recent.append((gen_after, ps.pid, e))
            if ps.tree is not None:
                _place(ps.tree, ps.history, ps.heads, e)
            else:
                ps.heads[e.base_hash] = e  # the rebuild replaces it; meanwhile never older than ours

    async def getattr(self, ino: int) -> Attr:
        await self.refresh()
        return await self._attr(self._key(ino), ino)

    async def _attr(self, key: NodeKey, ino: int) -> Attr:
        kind = key[0]
        if kind == "root":
            return self._dir_attr(ino, 0o755, nlink=2 + len(self.parts), mtime_ns=self.started_ns)
        if kind == "dir":
            return await self._partdir_attr(ino, self._part(key[1]), key[2])
        if kind == "obj":
            return await self._obj_attr(ino, self._part(key[1]), key[2])
        if kind == "ver":
            return await self._ver_attr(ino, key[1])
        ps = self._part(key[1])  # vdir, objects: read-only directories
        return self._dir_attr(ino, 0o555, mtime_ns=ps.view.record.created_us * 1000)

    def _dir_attr(
        self,
        ino: int,
        mode: int,
        nlink: int = 2,
        mtime_ns: int = 0,
        uid: int | None = None,
        gid: int | None = None,
        ctime_ns: int | None = None,
    ) -> Attr:
        return Attr(
            ino,
            stat.S_IFDIR | mode,
            nlink=nlink,
            uid=self.opts.uid if uid is None else uid,
            gid=self.opts.gid if gid is None else gid,
            size=4096,
            mtime_ns=mtime_ns,
            ctime_ns=mtime_ns if ctime_ns is None else ctime_ns,
            timeout=self.opts.attr_timeout,
        )

    async def _partdir_attr(self, ino: int, ps: PartState, path: str) -> Attr:
        tree = await self._tree(ps)
        d = tree.dir(path)
        if d is None:
            raise oserror(errno.ENOENT)
        nlink = 2 + len(d.subdirs) + (1 if not path else 0)  # the partition root also holds .versions
        changed = tree.entry_times.get(path, 0)
        v = await self._marker_version(ps, d)
        if v is not None:
            p = v.header.posix
            mode = p.mode if ps.writable else p.mode & ~0o222
            made = v.header.created_us * 1000
            return self._dir_attr(
                ino,
                mode,
                nlink=nlink,
                mtime_ns=dir_mtime(p.mtime_ns, made, changed),
                uid=p.uid,
                gid=p.gid,
                ctime_ns=max(made, changed),
            )
        mode = 0o755 if ps.writable else 0o555
        return self._dir_attr(ino, mode, nlink=nlink, mtime_ns=max(ps.view.record.created_us * 1000, changed))

    async def _marker_version(self, ps: PartState, d: Dir) -> Version | None:
        """The current version of directory ``d``'s marker (None: it has none)."""
        e = ps.heads.get(d.marker) if isinstance(d.marker, bytes) else None
        return await self._version(e.head_hash, ps.view) if e is not None else None

    async def _obj_attr(self, ino: int, ps: PartState, ref: Ref) -> Attr:
        of = self.files.get(ino)
        if of is not None:
            created = of.base.header.created_us * 1000 if of.base is not None else of.posix.mtime_ns
            return self._posix_attr(ino, ps, of.posix, of.size, created)
        await self._tree(ps)
        e = ps.heads.get(ref) if isinstance(ref, bytes) else None
        if e is None or e.tombstone:
            raise oserror(errno.ENOENT)
        v = await self._version(e.head_hash, ps.view)
        return self._posix_attr(ino, ps, v.header.posix, v.length, v.header.created_us * 1000)

    def _posix_attr(self, ino: int, ps: PartState, p: Posix, size: int, ctime_ns: int) -> Attr:
        mode = p.mode if ps.writable or p.type == "symlink" else p.mode & ~0o222
        return Attr(
            ino,
            TYPE_BITS[p.type] | (mode & 0o7777),
            nlink=1,
            uid=p.uid,
            gid=p.gid,
            rdev=p.rdev,
            size=size,
            mtime_ns=p.mtime_ns,
            ctime_ns=ctime_ns,
            timeout=self.opts.attr_timeout,
        )

    async def _ver_attr(self, ino: int, h: bytes) -> Attr:
        """A version file: read-only, with the read bits and owner of its file as it is now
        (so the history of a file is readable by whoever may read the file)."""
        info = self.ver_info.get(h)
        if info is None:
            v = await self._version(h)
            info = (v.header.partition, v.length, v.header.created_us, v.base_hash)
            self.ver_info[h] = info
        pid, length, created_us, base_hash = info
        p = await self._series_posix(pid, base_hash)
        return Attr(
            ino,
            stat.S_IFREG | (p.mode & 0o444 if p else 0o444),
            uid=p.uid if p else self.opts.uid,
            gid=p.gid if p else self.opts.gid,
            size=length,
            mtime_ns=created_us * 1000,
            ctime_ns=created_us * 1000,
            timeout=self.opts.attr_timeout,  # the name never changes, the owner may
        )

    async def _series_posix(self, pid: bytes, base_hash: bytes) -> Posix | None:
        ps = self.parts.get(pid)
        if ps is None:
            return None
        await self._tree(ps)
        e = ps.heads.get(base_hash)
        if e is None and ps.history is None:  # a removed series: its head is known with the history
            await self._history(ps)
            e = ps.heads.get(base_hash)
        if e is None:
            return None
        return (await self._version(e.head_hash, ps.view)).header.posix

    async def _entry(self, key: NodeKey) -> Attr:
        """Attributes of ``key`` for a reply that counts as a kernel lookup."""
        ino = self.inodes.get(key)
        try:
            attr = await self._attr(key, ino)
        except BaseException:
            self.inodes.forget(ino, 0)
            raise
        self.inodes.remember(ino)
        return attr

    def _track(self, of: OpenFile) -> OpenFile:
        self.files[of.ino] = of
        self.inodes.pin(of.ino)
        return of

    def _closed_writes(self, of: OpenFile) -> bool:
        """``of`` has staged changes and no writer with unflushed writes: all of it was closed."""
        return of.dirty and all(w.flushed for w in of.writers(self.handles))

    def _add_handle(self, of: OpenFile, writable: bool) -> int:
        fh = self._new_fh()
        self.handles[fh] = Handle(fh, of.ino, writable)
        of.handles.add(fh)
        return fh

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _file(self, fh: int) -> tuple[Handle, OpenFile]:
        h = self.handles.get(fh)
        if h is None:
            raise oserror(errno.EBADF)
        return h, self.files[h.ino]

    def _view(self, of: OpenFile) -> PartitionView:
        return self._part(of.pid).view

    def _resolve(self, ref: Ref) -> Ref:
        """``ref``, or the baseHash that a file created here got since it was looked up."""
        return self._settled.get(ref, ref) if isinstance(ref, int) else ref

    def _settled_ref(self, old: int, base_hash: bytes) -> None:
        self._settled[old] = base_hash
        while len(self._settled) > SETTLED_REFS:
            self._settled.popitem(last=False)

    def _open_of(self, ps: PartState, ref: Ref) -> OpenFile | None:
        ino = self.inodes.find(("obj", ps.pid, ref))
        return self.files.get(ino) if ino is not None else None

    def _known_heads(self, ps: PartState, bases: list[bytes]) -> dict[bytes, Version]:
        """The heads of these series as this mount knows them, where their versions are cached."""
        out = {}
        for b in bases:
            e = ps.heads.get(b)
            v = self.versions.get(e.head_hash) if e is not None else None
            if v is not None:
                out[b] = v
        return out

    async def _commit_many(self, ofs: list[OpenFile]) -> None:
        raise NotImplementedError  # FileOps

    async def _commit(self, of: OpenFile) -> None:
        raise NotImplementedError  # FileOps

    async def _remove_many(self, items: list[QueuedRemoval]) -> None:
        raise NotImplementedError  # NameOps

    async def _save_dir_times(self, force: bool) -> float | None:
        raise NotImplementedError  # NameOps

    def _entry_clock(self) -> int:
        """The time of an entry change in a directory; the change is written with the
        next batch of the group commit (:meth:`_save_dir_times`)."""
        self.committer.poke()
        return time.time_ns()

    def _default_dir_posix(self) -> Posix:
        return Posix("dir", 0o755, self.opts.uid, self.opts.gid, time.time_ns())


def _seen_change(old: ListEntry | None, new: ListEntry | None) -> bool:
    """Whether a series changed in a way the kernel may have cached: a removed series
    that is simply not listed (the live listing leaves it out) did not."""
    if old is None or old.tombstone:
        return new is not None and not new.tombstone
    return new is None or new.head_hash != old.head_hash


def dir_mtime(marker_mtime_ns: int, marker_made_ns: int, entries_changed_ns: int) -> int:
    """A directory's mtime: whichever came last, the version of its marker (which holds
    the mtime set by ``utime`` or kept by ``chmod``) or the last entry made, removed or
    renamed in it through this mount (0: none)."""
    return entries_changed_ns if entries_changed_ns > marker_made_ns else marker_mtime_ns


def _place(tree: PartitionTree, history: HistoryTree | None, heads: dict[bytes, ListEntry], e: ListEntry) -> None:
    heads[e.base_hash] = e
    if history is not None:
        history.set(e.base_hash, e.sort_key)
    if e.tombstone:
        tree.remove(e.base_hash)
    else:
        tree.add(e.base_hash, e.sort_key)
