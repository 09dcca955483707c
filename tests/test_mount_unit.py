"""The mount's logic without FUSE: the virtual tree, write staging, the inode
table, and the Filesystem operations called directly on trio."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blobfiles
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from fsobj.crypto import Identity
from fsobj.errors import DeletedError, IntegrityError
from fsobj.fs import loop as fsloop
from fsobj.fs.filesystem import Filesystem, Options
from fsobj.fs.inodes import ROOT_INODE, InodeTable
from fsobj.fs.locks import QuickLock
from fsobj.fs.names import RENAME_EXCHANGE
from fsobj.fs.staging import Extents, Staging
from fsobj.fs.tree import (
    HistoryTree,
    PartitionTree,
    conflict_key,
    escape_key,
    place,
    unescape_name,
    version_names,
)
from fsobj.store import Store

# ---------------------------------------------------------------- tree


def test_sort_keys_become_paths_markers_and_escaped_names() -> None:
    assert (place("a/b/c").parent, place("a/b/c").name) == ("a/b", "c")
    assert place("a/b/").marker and place("a/b/").dir == "a/b"
    assert place("/").marker and place("/").dir == ""
    for bad in ("a//b", "../x", "a/./b", ".versions", ".objects/x", "x" * 256, "/lead", "a//"):
        p = place(bad)
        assert (p.parent, p.marker) == ("", False) and "/" not in p.name
        assert unescape_name(p.name) == bad
    assert escape_key("a//b") == "a%2F%2Fb" and escape_key("..") == "%2E."
    assert escape_key("100%") == "100%25"


def test_a_name_may_have_255_bytes_whatever_its_characters() -> None:
    """The 255-byte limit of a path segment counts UTF-8 bytes (a lone surrogate of a
    non-UTF-8 name is one byte), for short and long segments alike."""
    for ch, size in (("x", 1), ("é", 2), ("€", 3), ("😀", 4), ("\udcff", 1)):
        fits = ch * (255 // size)
        too_long = ch * (255 // size + 1)  # 256 bytes or more
        assert place(f"d/{fits}").name == fits, (ch, len(fits))
        assert place(f"d/{too_long}").parent == "", (ch, len(too_long))  # escaped at the top


def test_ties_and_file_directory_clashes_get_hash_suffixes() -> None:
    t = PartitionTree()
    b1, b2 = bytes([1]) * 32, bytes([2]) * 32
    t.add(b2, "same")
    t.add(b1, "same")
    names = dict(t.listing(""))
    assert names["same"].ref == b1 and names["same~" + b2.hex()[:8]].ref == b2
    t.add(bytes([3]) * 32, "d")
    t.add(bytes([4]) * 32, "d/child")
    names = dict(t.listing(""))
    assert names["d"].is_dir and not names["d~03030303"].is_dir


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 5), st.sampled_from(["a", "b", "a/x", "b/", "a/", "c/d", "a/b"])),
        max_size=40,
    )
)
def test_incremental_names_match_a_fresh_resolution(ops: list[tuple[bool, int, str]]) -> None:
    t = PartitionTree()
    for d in t.dirs.values():
        d.names()
    for add, n, key in ops:
        ref = bytes([n]) * 32
        if add:
            t.add(ref, key)
        else:
            t.remove(ref)
        for d in list(t.dirs.values()):
            d.names()  # keep the caches built, so that changes are incremental
    for d in t.dirs.values():
        incremental = dict(d.names())
        d._names = None
        assert d.names() == incremental


def test_directories_live_while_they_have_entries_or_a_marker() -> None:
    t = PartitionTree()
    t.add(b"f" * 32, "a/b/file")
    t.add(b"m" * 32, "a/")
    assert t.dir("a/b") is not None
    t.remove(b"f" * 32)
    assert t.dir("a/b") is None and t.dir("a") is not None  # a keeps its marker
    t.remove(b"m" * 32)
    assert t.dir("a") is None
    assert sorted(k for _, k in t.refs_under("")) == []


def test_entries_that_come_and_go_stamp_their_directory_once_the_clock_runs() -> None:
    now = iter(range(100, 1000))
    t = PartitionTree()
    t.add(b"f" * 32, "a/file")  # building from a listing: nothing is stamped
    assert t.entry_times == {} and t.unsaved == set()
    t.clock = lambda: next(now)
    t.add(b"f" * 32, "a/file")  # the key it has: no entry changes
    t.add(1, "a/new")
    assert t.entry_times == {"a": 100}
    t.swap(1, b"n" * 32)  # the new file's first version: the same entry
    assert t.entry_times == {"a": 100} and dict(t.listing("a"))["new"].ref == b"n" * 32
    t.add(b"f" * 32, "b/file")  # a move: both directories, and the root gains b
    assert t.entry_times == {"a": 101, "": 102, "b": 103}
    t.remove(b"f" * 32)  # b empties and goes: the root changes, b's time is dropped
    assert t.entry_times == {"a": 101, "": 105} and t.unsaved == {"a", "", "b"}
    t.add(b"m" * 32, "a/")  # a marker is not an entry of its directory
    assert t.entry_times == {"a": 101, "": 105}
    t2 = PartitionTree(t.entry_times, t.unsaved)  # a rebuild keeps them
    assert t2.entry_times is t.entry_times and t2.unsaved is t.unsaved
    # a rebuild during a new file's first commit places both its refs: the swap leaves one
    t2.add(7, "c/new")
    t2.add(b"c" * 32, "c/new")
    t2.clock = lambda: next(now)
    t2.swap(7, b"c" * 32)
    assert [(n, c.ref) for n, c in t2.listing("c")] == [("new", b"c" * 32)] and "c" not in t2.unsaved
    t2.remove(b"c" * 32)
    assert t2.listing("c") == [] and t2.dir("c") is None


def test_history_keeps_deleted_series_at_their_last_path() -> None:
    h = HistoryTree()
    h.set(b"s" * 32, "x/y")
    h.set(b"s" * 32, "z")  # renamed
    assert h.dir("x") is None and h.dir("z").series == {b"s" * 32}
    names = version_names([(b"\x02" * 32, 20, False), (b"\x01" * 32, 10, False), (b"\x03" * 32, 30, True)])
    assert [n.name[:5] for n in names] == ["0001_", "0002_"] and names[0].hash == b"\x01" * 32
    assert conflict_key("k", bytes.fromhex("ab" * 32)) == "k.conflict-abababab"


# ---------------------------------------------------------------- staging

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("w"), st.integers(0, 9000), st.binary(min_size=1, max_size=700)),
        st.tuples(st.just("t"), st.integers(0, 9000), st.just(b"")),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    base=st.binary(max_size=5000),
    ops=OPS,
    limit=st.sampled_from([64, 1 << 22]),
    budget=st.sampled_from([None, 0, 3000, 1 << 22]),
)
def test_staging_reads_like_a_bytearray(
    base: bytes, ops: list[tuple[str, int, bytes]], limit: int, budget: int | None
) -> None:
    """Whatever its memory limit and the mount's budget for stagings in memory, a staging
    reads like a bytearray given the same writes and truncates; the budget counts exactly
    the bytes it holds in memory, and gets them all back when it closes."""
    import fsobj.fs.staging as staging_mod
    from fsobj.fs.budget import ByteBudget

    old, staging_mod.MEMORY_LIMIT = staging_mod.MEMORY_LIMIT, limit
    shared = ByteBudget(budget) if budget is not None else None
    try:
        model = bytearray(base)
        s = Staging(len(base), None, shared)
        for op, off, data in ops:
            if op == "w":
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off : off + len(data)] = data
                s.write(off, data)
            else:
                del model[off:]
                model.extend(bytes(off - len(model)))
                s.truncate(off)
        out = bytearray()
        for p in s.pieces(0, s.size + 10):
            if p.kind == "dirty":
                out += s.read_dirty(p.start, p.end - p.start)
            elif p.kind == "base":
                out += base[p.start : p.end]
            else:
                out += bytes(p.end - p.start)
        assert s.size == len(model) and bytes(out) == bytes(model)
        if shared is not None:
            assert shared.used == (len(s._mem) if s._mem is not None else 0) <= shared.limit
        s.close()
        assert shared is None or shared.used == 0
    finally:
        staging_mod.MEMORY_LIMIT = old


def test_extents_merge_and_cut() -> None:
    e = Extents()
    for a, b in [(10, 20), (30, 40), (20, 30), (50, 60)]:
        e.add(a, b)
    assert list(e) == [(10, 40), (50, 60)]
    e.cut(55)
    assert list(e) == [(10, 40), (50, 55)]
    assert list(e.pieces(0, 60)) == [(0, 10, False), (10, 40, True), (40, 50, False), (50, 55, True), (55, 60, False)]


# ---------------------------------------------------------------- inodes


def test_inode_lifetime_follows_lookups_and_pins() -> None:
    t = InodeTable()
    ino = t.get(("obj", b"p", b"x"))
    t.remember(ino, 2)
    t.pin(ino)
    t.forget(ino, 2)
    assert t.key(ino) is not None  # an open handle keeps it
    t.unpin(ino)
    assert t.key(ino) is None
    assert t.get(("obj", b"p", b"x")) != ino  # numbers are never reused
    t.forget(ROOT_INODE, 10)
    assert t.key(ROOT_INODE) == ("root",)


# ---------------------------------------------------------------- locks


class _Session:
    """A model of pyfuse3's request loop (its ``_session_loop`` and ``_wait_fuse_readable``,
    with ``main``'s defaults min_tasks=1, max_tasks=99), with a memory channel for
    ``/dev/fuse``: under the read lock a reader waits for a request; it starts a new
    reader when none is left waiting, then runs the handler through ``watched`` as
    fsobj's handlers do. ``terminate`` is ``pyfuse3.terminate`` (exit flag, then the fd
    is closed under the waiting reader); ``unmount`` is ``fusermount3 -u`` (exit flag,
    then the read returns nothing)."""

    def __init__(self, lock: fsloop.ReaderLock) -> None:
        self.lock = lock
        self.send, self.recv = trio.open_memory_channel[object](1000)
        self.exited = False
        self.waiting = 0  # pyfuse3's active_readers
        self.tasks = 0
        self.started = 0
        self.answered: dict[object, str] = {}

    async def handle(self, req: object) -> str:
        if isinstance(req, trio.Event):
            await req.wait()  # a handler that waits (a thread, the helper, a lock)
        return trio.lowlevel.current_task().name

    async def reader(self, nursery: trio.Nursery) -> None:
        self.tasks += 1
        try:
            while not self.exited:
                if self.waiting > 1:
                    return  # too many idle readers
                self.waiting += 1
                try:
                    async with self.lock:
                        if self.exited:
                            return
                        req = await self.recv.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self.waiting -= 1
                if req is None:
                    return
                if not self.waiting:
                    self.started += 1
                    nursery.start_soon(self.reader, nursery, name=f"reader-{self.started}")
                self.answered[req] = await fsloop.watched(self.handle(req))
        finally:
            self.tasks -= 1


@pytest.mark.parametrize("end", ["terminate", "unmount"])
def test_one_reader_answers_requests_until_a_handler_waits_then_a_spare_reads_on(end: str) -> None:
    """``ReaderLock`` in pyfuse3's request loop (``fsobj/fs/loop.py``): requests whose
    handlers do not wait are all read and answered by one task; a handler that waits
    hands ``/dev/fuse`` to a spare, so the requests behind it are answered while it
    waits; when the session ends every reader task ends (no spare is left parked)."""

    async def main() -> None:
        lock = fsloop.install()  # watched() tells the installed lock
        s = _Session(lock)
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(s.reader, n, name="reader-0")
                quick = [f"q{i}" for i in range(50)]
                for q in quick:
                    await s.send.send(q)
                    await trio.testing.wait_all_tasks_blocked()
                assert len({s.answered[q] for q in quick[1:]}) == 1  # one reader did them all
                assert lock.spares == 1 and lock.handovers == 0 and s.tasks == 2

                slow = trio.Event()
                await s.send.send(slow)
                behind = [f"b{i}" for i in range(20)]
                for b in behind:
                    await s.send.send(b)
                await trio.testing.wait_all_tasks_blocked()
                assert slow not in s.answered and all(b in s.answered for b in behind)
                assert lock.handovers == 1
                assert s.answered["b0"] != s.answered[quick[-1]]  # the spare read on
                slow.set()
                await trio.testing.wait_all_tasks_blocked()
                assert s.answered[slow] == s.answered[quick[-1]]
                assert lock.spares == 1  # the waiting handler's task is the spare now

                s.exited = True
                if end == "terminate":
                    s.send.close()  # the reader's wait ends in an error: spares wake at once
                else:
                    await s.send.send(None)  # the reader sees the end; a spare finds out by its nap
            assert s.tasks == 0 and not lock.locked()

    try:
        trio.run(main)
    finally:
        fsloop.uninstall()


def test_watched_passes_results_errors_and_cancellation_through() -> None:
    """``watched`` runs a handler's coroutine unchanged: its result, its exception, a
    value trio sends in and a cancellation all pass through; only a handler that yields
    wakes a spare reader."""

    async def main() -> None:
        lock = fsloop.install()
        try:

            async def quick() -> int:
                return 7

            async def waits_then_fails() -> None:
                await trio.sleep(0)
                raise ValueError("boom")

            async def sleeps() -> None:
                await trio.sleep(10)

            async def spare() -> None:
                async with lock:
                    pass

            await lock.__aenter__()  # a reader watches /dev/fuse
            async with trio.open_nursery() as n:
                n.start_soon(spare)
                await trio.testing.wait_all_tasks_blocked()
                assert lock.spares == 1
                await lock.__aexit__(None, None, None)  # it reads a request: the lock is free
                assert await fsloop.watched(quick()) == 7
                assert lock.handovers == 0 and lock.spares == 1  # it did not wait: no hand-over
                with pytest.raises(ValueError, match="boom"):
                    await fsloop.watched(waits_then_fails())
                assert lock.handovers == 1  # the spare took the lock and left it
            assert lock.spares == 0 and not lock.locked()
            with trio.move_on_after(0.01) as scope:
                await fsloop.watched(sleeps())
            assert scope.cancelled_caught
        finally:
            fsloop.uninstall()

    trio.run(main)


def test_a_free_quick_lock_is_taken_without_yielding_and_a_held_one_is_handed_over_in_order() -> None:
    """``QuickLock`` (the namespace and open-file locks): a free lock is taken with no
    schedule point (a task started before does not run in between, as it does with
    ``trio.Lock``); a held one is handed to its waiters in the order they came, and
    each holds it alone; a waiter can be cancelled; only the owner may release it."""

    class Steps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.tasks: list[trio.lowlevel.Task] = []

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.tasks.append(task)

    async def main() -> None:
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        me = trio.lowlevel.current_task()
        for make, yields in ((trio.Lock, 1), (QuickLock, 0)):
            lock = make()
            steps.tasks.clear()
            async with lock:
                pass
            assert steps.tasks.count(me) == yields, make  # a step of its own = it was descheduled
        trio.lowlevel.remove_instrument(steps)

        lock = QuickLock()
        order: list[tuple[str, str]] = []
        inside = 0

        async def worker(name: str) -> None:
            nonlocal inside
            async with lock:
                inside += 1
                assert inside == 1
                order.append((name, "in"))
                await trio.sleep(0.01)
                order.append((name, "out"))
                inside -= 1

        await lock.acquire()
        async with trio.open_nursery() as n:
            for name in "abc":
                n.start_soon(worker, name)
                await trio.testing.wait_all_tasks_blocked()
            assert order == []
            lock.release()
            await trio.testing.wait_all_tasks_blocked()
            assert lock.locked()  # handed to "a": a newcomer must wait behind b and c
            n.start_soon(worker, "d")
        assert [x for x, what in order if what == "in"] == ["a", "b", "c", "d"]
        assert not lock.locked()

        await lock.acquire()
        with trio.move_on_after(0.05) as scope:
            async with trio.open_nursery() as n:
                n.start_soon(lock.acquire)
        assert scope.cancelled_caught
        lock.release()
        async with lock:  # the cancelled waiter does not hold it
            pass

        async def release_it() -> None:
            with pytest.raises(RuntimeError, match="don't own"):
                lock.release()

        await lock.acquire()
        async with trio.open_nursery() as n:
            n.start_soon(release_it)
        assert lock.locked()
        lock.release()
        assert not lock.locked()

    trio.run(main)


# ---------------------------------------------------------------- the operations, without a mount


@pytest.fixture
def fs_store(tmp_path: Path) -> Store:
    Store.init(tmp_path / "s")
    store = Store.open(tmp_path / "s", Identity.generate("unit"))
    store.create_partition("p")
    yield store
    store.close()


def run(fs_store: Store, tmp_path: Path, fn: object, commit_window: float = 0.0, helper: bool = False) -> None:
    """Run ``fn(fs)`` on a started filesystem; with a ``commit_window`` the group committer
    runs beside it (and stops when ``fn`` returns)."""

    async def main() -> None:
        opts = Options(spill_dir=str(tmp_path), commit_window=commit_window, commit_helper=helper)
        fs = Filesystem(fs_store, opts)
        await fs.start()
        async with trio.open_nursery() as nursery:
            if commit_window:
                await nursery.start(fs.committer.run)
            await fn(fs)  # type: ignore[operator]
            nursery.cancel_scope.cancel()
        await fs.shutdown()

    trio.run(main)


def test_write_commit_rename_unlink_without_fuse(fs_store: Store, tmp_path: Path) -> None:
    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        d = await fs.mkdir(part, "dir", 0o755, 0, 0)
        fh, _ = await fs.create(d.ino, "f", 0o644, os.O_RDWR, 0, 0)
        assert await fs.write(fh, 0, b"hello") == 5
        assert await fs.read(fh, 0, 100) == b"hello"  # before any commit
        await fs.flush(fh)
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "dir/f")) == b"hello"
        await fs.rename(d.ino, "f", part, "g", 0)
        assert fs_store.get("p", "g").header.seq == 2
        assert [n for n, _ in await fs.readdir(await fs.opendir(d.ino), 0)] == [".", ".."]  # dir kept
        with pytest.raises(OSError) as e:
            await fs.rmdir(part, "nope")
        assert e.value.errno == errno.ENOENT
        await fs.unlink(part, "g")
        assert fs_store.log("p", "g")[-1].tombstone

    run(fs_store, tmp_path, scenario)


def test_the_history_tree_is_built_only_when_a_removed_series_is_needed(fs_store: Store, tmp_path: Path) -> None:
    """The live tree of a partition comes from its live series only: the heads of removed
    series are neither read nor decrypted for it. The history tree is built apart: on
    first use of ``.versions`` (or of a version of a removed series), or in the
    background after the partition's first use (``prepare_histories``, which the daemon
    runs). A removed file's versions keep its last owner and mode."""
    import sqlite3

    gone_hash: list[bytes] = []
    gone_base: list[bytes] = []

    async def write_and_remove(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name, mode in (("live.txt", 0o644), ("gone.txt", 0o600)):
            fh, _ = await fs.create(part, name, mode, os.O_RDWR, 0, 0)
            await fs.write(fh, 0, name.encode())
            await fs.release(fh)
        gone_hash.append(fs_store.get("p", "gone.txt").hash)
        gone_base.append(fs_store.get("p", "gone.txt").base_hash)
        await fs.unlink(part, "gone.txt")

    run(fs_store, tmp_path, write_and_remove)
    # the removed series' head gets a sort key that does not open: only a listing of
    # removed series reads it
    idx = sqlite3.connect(fs_store.root / "index.sqlite", isolation_level=None)
    saved = idx.execute("SELECT base_hash, sort_key_ct FROM heads WHERE tombstone = 1").fetchall()
    assert len(saved) == 1
    idx.execute("UPDATE heads SET sort_key_ct = ? WHERE tombstone = 1", [b"\0" * len(saved[0][1])])

    async def browse(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        ps = fs.parts[fs_store.partition("p").id]
        assert [n for n, _ in await fs.readdir(await fs.opendir(part), 0)] == [".", "..", "live.txt"]
        assert ps.tree is not None and ps.history is None
        with pytest.raises(IntegrityError):  # the first use of the history reads the removed head
            await fs.lookup((await fs.lookup(part, ".versions")).ino, "gone.txt")

    fs_store._listing.clear()
    run(fs_store, tmp_path, browse)
    idx.execute("UPDATE heads SET sort_key_ct = ? WHERE base_hash = ?", [saved[0][1], saved[0][0]])
    fs_store._listing.clear()

    async def versions(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        ps = fs.parts[fs_store.partition("p").id]
        objects = (await fs.lookup(part, ".objects")).ino
        attr = await fs.lookup(objects, gone_hash[0].hex() + "@exact")  # a removed series' version
        assert ps.history is not None
        assert attr.mode & 0o777 == 0o400 and attr.size == len(b"gone.txt")
        vdir = (await fs.lookup((await fs.lookup(part, ".versions")).ino, "gone.txt")).ino
        names = [n for n, _ in await fs.readdir(await fs.opendir(vdir), 0)][2:]
        assert len(names) == 1 and names[0].startswith("0001_")
        assert (await fs.lookup(vdir, names[0])).mode & 0o777 == 0o400

    run(fs_store, tmp_path, versions)
    idx.close()

    async def background(fs: Filesystem) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.prepare_histories)
            part = (await fs.lookup(ROOT_INODE, "p")).ino
            ps = fs.parts[fs_store.partition("p").id]
            await fs.readdir(await fs.opendir(part), 0)
            with trio.fail_after(30):
                while ps.history is None:
                    await trio.sleep(0.01)
            assert ps.history.dir("gone.txt") is not None and ps.heads[gone_base[0]].tombstone
            nursery.cancel_scope.cancel()

    run(fs_store, tmp_path, background)


def test_a_big_sparse_file_spills_to_an_unnamed_file(fs_store: Store, tmp_path: Path) -> None:
    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, _ = await fs.create(part, "sparse", 0o644, os.O_RDWR, 0, 0)
        await fs.write(fh, 10_000_000, b"end")
        assert os.listdir(tmp_path) == ["s"]  # staging has no name in the spill directory
        assert await fs.read(fh, 9_999_998, 10) == b"\0\0end"
        await fs.fsync(fh)
        await fs.release(fh)
        v = fs_store.get("p", "sparse")
        assert v.length == 10_000_003 and fs_store.read_bytes(v)[-3:] == b"end"

    run(fs_store, tmp_path, scenario)


def _spy_streamed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per commit that had a stream, whether it used the stream's payload."""
    from fsobj.fs import work

    streamed: list[bool] = []
    real = work._streamed

    def spy(store: Store, job: work.DataJob) -> object:
        out = real(store, job)
        streamed.append(out is not None)
        return out

    monkeypatch.setattr(work, "_streamed", spy)
    return streamed


def test_sequential_writes_stream_the_payload_and_others_fall_back(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    data = os.urandom(6 * 1024 * 1024 + 5)
    piece = 128 * 1024
    streamed = _spy_streamed(monkeypatch)

    async def write_all(fs: Filesystem, fh: int, blob: bytes) -> None:
        for off in range(0, len(blob), piece):
            await fs.write(fh, off, blob[off : off + piece])

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "seq", 0o644, os.O_RDWR, 0, 0)
        await write_all(fs, fh, data)
        of = fs.files[attr.ino]
        assert of.stream is not None and of.stream.started and of.stream.pos == len(data)
        assert await fs.read(fh, 5_000_000, 10) == data[5_000_000:5_000_010]  # reads see the staging
        await fs.flush(fh)
        await fs.release(fh)
        v = fs_store.get("p", "seq")
        assert v.length == len(data) and fs_store.read_bytes(v) == data
        assert streamed == [True]  # committed from the stream, not re-read from the staging

        # O_TRUNC then sequential: streams again; a write back in the file stops the stream
        fh = (await fs.open(attr.ino, os.O_RDWR | os.O_TRUNC))[0]
        of = fs.files[attr.ino]
        await write_all(fs, fh, data[: 2 * 1024 * 1024])
        assert of.stream is not None and of.stream.started
        await fs.write(fh, 10, b"patched")
        assert of.stream is None
        await fs.write(fh, 2 * 1024 * 1024, b"tail")
        await fs.release(fh)
        want = data[:10] + b"patched" + data[17 : 2 * 1024 * 1024] + b"tail"
        assert fs_store.read_bytes(fs_store.get("p", "seq")) == want

        # a truncate stops it too
        fh = (await fs.open(attr.ino, os.O_RDWR | os.O_TRUNC))[0]
        of = fs.files[attr.ino]
        await write_all(fs, fh, data[: 3 * 1024 * 1024])
        assert of.stream is not None and of.stream.started
        await fs._truncate_of(of, 1000)
        assert of.stream is None
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "seq")) == data[:1000]
        assert [x.header.seq for x in fs_store.log("p", "seq")] == [1, 2, 3]
        assert streamed == [True, False, False]

    run(fs_store, tmp_path, scenario)


def test_files_written_at_once_beyond_the_stream_slots_commit_from_their_staging(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one stream slot: the first of two files written side by side streams, the
    second (declined when it reaches START_AT) commits from its staging; both are right,
    and once the first stream's thread has ended a third file streams again."""
    import threading

    from fsobj.fs.stream import MAX_STREAMS, START_AT

    assert MAX_STREAMS >= 1
    mib = 1024 * 1024
    data = [os.urandom(5 * mib + k) for k in range(3)]
    piece = 128 * 1024
    streamed = _spy_streamed(monkeypatch)

    async def scenario(fs: Filesystem) -> None:
        fs.stream_slots = threading.BoundedSemaphore(1)
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        handles = [await fs.create(part, f"f{k}", 0o644, os.O_RDWR, 0, 0) for k in range(2)]
        for off in range(0, 5 * mib + 2, piece):  # side by side, as two cp would
            for k, (fh, _) in enumerate(handles):
                if off < len(data[k]):
                    await fs.write(fh, off, data[k][off : off + piece])
        ofs = [fs.files[attr.ino] for _, attr in handles]
        assert ofs[0].stream is not None and ofs[0].stream.started
        assert ofs[1].stream is None, "the second file streamed without a slot"
        assert START_AT < 5 * mib
        for fh, _ in handles:
            await fs.flush(fh)
            await fs.release(fh)
        assert streamed == [True, False]  # the first commit used its stream, the second read the staging
        for k in range(2):
            assert fs_store.read_bytes(fs_store.get("p", f"f{k}")) == data[k]
        assert fs.stream_slots.acquire(timeout=10), "the ended stream kept its slot"
        fs.stream_slots.release()
        fh, attr = await fs.create(part, "f2", 0o644, os.O_RDWR, 0, 0)
        for off in range(0, len(data[2]), piece):
            await fs.write(fh, off, data[2][off : off + piece])
        assert fs.files[attr.ino].stream is not None and fs.files[attr.ino].stream.started
        await fs.flush(fh)
        await fs.release(fh)
        assert streamed == [True, False, True]
        assert fs_store.read_bytes(fs_store.get("p", "f2")) == data[2]

    run(fs_store, tmp_path, scenario)


def test_a_streamed_commit_empties_the_spill_file_first_and_a_conflict_copy_uses_its_payload(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spill file of a finished stream is emptied before the commit makes the blobs
    durable (so its bytes are not written to disk twice); a conflict copy still gets them."""
    data = os.urandom(6 * 1024 * 1024 + 7)
    spill_sizes: list[int] = []
    real_commit = Store.commit

    def watch(self: Store, *args: object, **kw: object) -> object:
        for of in fs.files.values():
            if of.staging is not None and of.staging.spill_fd is not None:
                spill_sizes.append(os.fstat(of.staging.spill_fd).st_size)
        return real_commit(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "commit", watch)
    fs: Filesystem

    async def scenario(fs_: Filesystem) -> None:
        nonlocal fs
        fs = fs_
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "big", 0o644, os.O_RDWR, 0, 0)
        for off in range(0, len(data), 1024 * 1024):
            await fs.write(fh, off, data[off : off + 1024 * 1024])
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "big")) == data
        assert spill_sizes == [0]  # emptied before the commit, not after

        # the same, losing an optimistic-lock race: the conflict copy has every byte
        fh = (await fs.open(attr.ino, os.O_WRONLY | os.O_TRUNC))[0]
        for off in range(0, len(data), 1024 * 1024):
            await fs.write(fh, off, data[::-1][off : off + 1024 * 1024])
        fs_store.put("p", "big", b"someone else")
        spill_sizes.clear()
        await fs.release(fh)
        copies = [e.sort_key for e in fs_store.list("p") if e.sort_key.startswith("big.conflict-")]
        assert len(copies) == 1
        assert fs_store.read_bytes(fs_store.get("p", copies[0])) == data[::-1]
        assert fs_store.read_bytes(fs_store.get("p", "big")) == b"someone else"
        assert spill_sizes == [0, 0]  # the losing commit and the conflict copy

    run(fs_store, tmp_path, scenario)


def test_a_failed_streamed_commit_gives_the_staging_its_bytes_back(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a disk that fills up has no stand-in here): the commit fails
    after the spill file was emptied; the open file still reads every byte, and the
    next commit stores them."""
    data = os.urandom(5 * 1024 * 1024 + 3)
    real_commit = Store.commit
    fail = [True]

    def full_disk(self: Store, *args: object, **kw: object) -> object:
        if fail:
            fail.clear()
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return real_commit(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "commit", full_disk)

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "big", 0o644, os.O_RDWR, 0, 0)
        for off in range(0, len(data), 1024 * 1024):
            await fs.write(fh, off, data[off : off + 1024 * 1024])
        with pytest.raises(OSError) as e:
            await fs.fsync(fh)
        assert e.value.errno == errno.ENOSPC
        of = fs.files[attr.ino]
        assert of.dirty and of.staging is not None and not of.staging.released and of.streamed is None
        assert os.fstat(of.staging.spill_fd).st_size == len(data)  # type: ignore[arg-type]
        assert await fs.read(fh, 4_000_000, 16) == data[4_000_000:4_000_016]
        await fs.write(fh, len(data), b"more")
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "big")) == data + b"more"

    run(fs_store, tmp_path, scenario)


async def _stream_until_stored(fs: Filesystem, fh: int, data: bytes, piece: int = 128 * 1024) -> None:
    """Write ``data`` sequentially through ``fh``, then wait until the stream's thread has
    stored chunks past the spill file's end (the last ``WINDOW`` chunks stay in flight)."""
    for off in range(0, len(data), piece):
        await fs.write(fh, off, data[off : off + piece])
    s = fs.files[fs.handles[fh].ino].stream
    assert s is not None and s.spilling
    with trio.fail_after(30):
        while s.stored_end < s.owed_from + 2 * 1024 * 1024 and not s.failed:
            await trio.sleep(0.01)


def test_streamed_appends_are_not_copied_to_the_spill_file_and_reads_see_them(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the in-memory staging, a stream's appends never reach the spill file when the
    commit uses its payload; a read of the open file gets them from the stream (held
    pieces, queued pieces or stored chunks read back) and does not end it."""
    from fsobj.fs.staging import MEMORY_LIMIT

    data = os.urandom(48 * 1024 * 1024 + 11)
    streamed = _spy_streamed(monkeypatch)

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "big", 0o644, os.O_RDWR, 0, 0)
        await _stream_until_stored(fs, fh, data)
        of = fs.files[attr.ino]
        s = of.stream
        assert s is not None and s.spilling and of.staging is not None
        spill = os.fstat(of.staging.spill_fd).st_size  # type: ignore[arg-type]
        assert spill <= MEMORY_LIMIT + 128 * 1024 < len(data) // 4
        assert MEMORY_LIMIT < s.stored_end < len(data)  # some owed bytes are in stored chunks
        reads = [(0, 100), (MEMORY_LIMIT - 50, 100), (s.owed_from + 5, 300_000), (s.stored_end - 70_000, 140_000)]
        reads += [(len(data) - 200_000, 131072), (len(data) - 5, 100), (9_000_000, 4_000_000)]
        for off, n in reads:
            assert await fs.read(fh, off, n) == data[off : off + n], (off, n)
        assert of.stream is s and not s.aborted  # the reads did not end it
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "big")) == data
        assert streamed == [True]

    run(fs_store, tmp_path, scenario)


@pytest.mark.parametrize("how", ["seek back", "truncate"])
def test_an_ended_stream_gives_the_spill_file_its_bytes_from_its_chunks(
    fs_store: Store, tmp_path: Path, how: str
) -> None:
    """A write elsewhere or a truncate after a long stream: the spill file gets the bytes
    the stream owed it (read back from the chunks it stored, and the pieces it held),
    and the version committed from the staging has every byte."""
    data = bytearray(os.urandom(40 * 1024 * 1024 + 3))

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "big", 0o644, os.O_RDWR, 0, 0)
        await _stream_until_stored(fs, fh, bytes(data))
        of = fs.files[attr.ino]
        assert of.stream is not None and of.stream.stored_end > of.stream.owed_from
        if how == "seek back":
            await fs.write(fh, 10, b"patched")
            data[10:17] = b"patched"
        else:
            await fs._truncate_of(of, len(data) - 1000)
            del data[-1000:]
        assert of.stream is None and of.staging is not None
        assert os.fstat(of.staging.spill_fd).st_size == len(data)  # type: ignore[arg-type]
        assert await fs.read(fh, 15 * 1024 * 1024, 1 << 20) == data[15 * 1024 * 1024 : 16 * 1024 * 1024]
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "big")) == data

    run(fs_store, tmp_path, scenario)


def test_a_stream_that_fails_gives_back_every_byte_it_took(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection (a blob write failing mid-stream; a full disk has no stand-in here):
    the stream's thread stops with bytes in its chunker and window, and later appends
    queue up or wait; the next write ends the stream, the spill file gets the stored
    chunks and every piece the thread held or never took, and the version committed from
    the staging has every byte."""
    from fsobj.fs.staging import MEMORY_LIMIT
    from fsobj.store.payload import PayloadIO

    data = os.urandom(56 * 1024 * 1024 + 5)
    real_store = PayloadIO._store
    handed = [0]

    def failing(self: PayloadIO, kind: int, keys: object, pid: bytes, chunk: bytes) -> object:
        handed[0] += len(chunk)
        if handed[0] > 14 * 1024 * 1024:
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return real_store(self, kind, keys, pid, chunk)  # type: ignore[arg-type]

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, attr = await fs.create(part, "big", 0o644, os.O_RDWR, 0, 0)
        monkeypatch.setattr(PayloadIO, "_store", failing)
        split = 48 * 1024 * 1024
        of = fs.files[attr.ino]
        await fs.write(fh, 0, data[: 1 << 20])
        s = of.stream
        assert s is not None and s.started
        for off in range(1 << 20, split, 128 * 1024):  # the stream may end in here (s.failed)
            await fs.write(fh, off, data[off : off + 128 * 1024])
        failure = await trio.to_thread.run_sync(s._future.exception, 30)  # type: ignore[union-attr]
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
        assert MEMORY_LIMIT < s.stored_end <= 14 * 1024 * 1024
        monkeypatch.setattr(PayloadIO, "_store", real_store)
        for off in range(split, len(data), 1 << 20):
            await fs.write(fh, off, data[off : off + (1 << 20)])
        assert of.stream is None
        await fs.release(fh)
        assert fs_store.read_bytes(fs_store.get("p", "big")) == data

    run(fs_store, tmp_path, scenario)


def test_a_stored_chunk_that_does_not_read_back_fails_the_file_with_eio(fs_store: Store, tmp_path: Path) -> None:
    """A chunk blob damaged between the stream storing it and a seek back that needs its
    bytes: the write fails with EIO, later reads and the commit fail with EIO (never
    zeros), and the file's committed version stays as it was."""
    old = os.urandom(300_000)
    fs_store.put("p", "big", old)
    data = os.urandom(40 * 1024 * 1024)

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        ino = (await fs.lookup(part, "big")).ino
        fh = (await fs.open(ino, os.O_RDWR | os.O_TRUNC))[0]
        await _stream_until_stored(fs, fh, data)
        of = fs.files[ino]
        s = of.stream
        assert s is not None and s.stored_end > s.owed_from + 2 * 1024 * 1024
        with s._lock:
            victim = next(ref for off, ref in s._stored if off >= s.owed_from)
        blobfiles.flip(fs_store.root, victim.id, 100)
        with pytest.raises(OSError) as e:
            await fs.write(fh, 0, b"x")
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            await fs.read(fh, 0, 10)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            await fs.fsync(fh)
        assert e.value.errno == errno.EIO
        with pytest.raises(OSError) as e:
            await fs.release(fh)  # close(2) reports it too; the open file is let go
        assert e.value.errno == errno.EIO
        assert ino not in fs.files

    run(fs_store, tmp_path, scenario)
    v = fs_store.get("p", "big")
    assert v.header.seq == 1 and fs_store.read_bytes(v) == old


def test_a_released_staging_refuses_reads_until_it_is_restored(tmp_path: Path) -> None:
    st = Staging(0, str(tmp_path))
    blob = os.urandom(5 * 1024 * 1024)
    st.write(0, blob)
    assert st.release() and st.released
    for attempt in (lambda: st.read_dirty(0, 10), lambda: st.write(0, b"x"), lambda: st.truncate(3)):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EIO
    st.restore([blob[:100], blob[100:]])
    assert st.read_dirty(len(blob) - 10, 10) == blob[-10:]
    small = Staging(0, str(tmp_path))
    small.write(0, b"in memory")
    assert not small.release()  # nothing on disk to spare


def test_group_commit_puts_many_closed_files_in_one_transaction(fs_store: Store, tmp_path: Path) -> None:
    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        before = fs_store.index.generation()
        for i in range(20):
            fh, _ = await fs.create(part, f"f{i}", 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"x" * i)
            await fs.flush(fh)
            await fs.release(fh)
        fh, _ = await fs.create(part, "again", 0o644, os.O_WRONLY, 0, 0)
        await fs.write(fh, 0, b"one")
        await fs.release(fh)
        fh, _ = await fs.open((await fs.lookup(part, "again")).ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(fh, 3, b" two")  # changing a waiting file commits the waiting version first
        await fs.release(fh)
        await fs.fsyncdir()
        assert fs_store.index.generation() - before <= 4
        assert [fs_store.read_bytes(v) for v in fs_store.log("p", "again")] == [b"one", b"one two"]
        assert fs_store.read_bytes(fs_store.get("p", "f19")) == b"x" * 19

    run(fs_store, tmp_path, scenario, commit_window=5.0)


async def _new_file(fs: Filesystem, part: int, name: str, data: bytes) -> int:
    """Create ``name`` (mode 0644) through a read-write handle and write ``data`` at 0:
    the handle, still open (the test says whether it is fsynced or released)."""
    fh, _ = await fs.create(part, name, 0o644, os.O_RDWR, 0, 0)
    await fs.write(fh, 0, data)
    return fh


def _no_conflict_copies(fs_store: Store) -> None:
    names = [e.sort_key for e in fs_store.list("p")]
    assert not [n for n in names if ".conflict-" in n], names


def test_a_change_waiting_for_a_file_that_a_group_commit_closes_lands_on_the_file(
    fs_store: Store, tmp_path: Path
) -> None:
    """rsync's sequence: write a temporary file, close it (the kernel's RELEASE queues it
    in the group commit), set its mtime, chmod it through a new descriptor, rename it.
    Here the batch holds the file's lock when the mtime arrives, then commits and closes
    the file: the mtime must land on the file, not on the closed one (where it became a
    conflict copy, one rsync'd file in about 2,000, and the file lost its mtime)."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, _ = await fs.create(part, ".f.tmp", 0o600, os.O_RDWR, 0, 0)
        ino = (await fs.lookup(part, ".f.tmp")).ino
        await fs.write(fh, 0, b"payload")
        await fs.release(fh)  # queued
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.committer.drain)
            await trio.testing.wait_all_tasks_blocked()  # the batch holds the lock, committing
            assert not fs.committer.queued(fs.files[ino])
            await fs.setattr(ino, mtime_ns=1_700_000_000_123_456_789)  # waits for the lock
        fh, _ = await fs.open(ino, os.O_RDONLY)
        await fs.setattr(ino, mode=0o644, fh=fh)
        await fs.release(fh)
        await fs.rename(part, ".f.tmp", part, "f", 0)
        await fs.fsyncdir()
        _no_conflict_copies(fs_store)
        v = fs_store.get("p", "f")
        assert fs_store.read_bytes(v) == b"payload"
        assert (v.header.posix.mtime_ns, v.header.posix.mode & 0o7777) == (1_700_000_000_123_456_789, 0o644)

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_a_new_file_takes_changes_before_its_first_commit_into_its_first_version(
    fs_store: Store, tmp_path: Path
) -> None:
    """rsync's sequence on a new file: create, fchmod before writing, write, close, set the
    mtime, chmod through a new descriptor, rename. Nothing of it commits on its own (the
    store is untouched until the group commit goes); then one version holds the data,
    the mode, the mtime and the final name. Before, it made four versions, each
    committed at once (34 ms per rsync'd file). A file that has a version still keeps
    its closed writes and each metadata change as versions of their own."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        generation = fs_store.index.generation()
        fh, _ = await fs.create(part, ".f.XXXX", 0o600, os.O_RDWR, 0, 0)
        ino = (await fs.lookup(part, ".f.XXXX")).ino
        await fs.setattr(ino, mode=0o600, fh=fh)
        await fs.write(fh, 0, b"payload")
        await fs.flush(fh)
        await fs.release(fh)
        await fs.setattr(ino, mtime_ns=1_700_000_000_000_000_007)
        fh, _ = await fs.open(ino, os.O_RDONLY)
        await fs.setattr(ino, mode=0o644, fh=fh)
        await fs.release(fh)
        await fs.rename(part, ".f.XXXX", part, "f", 0)
        assert fs_store.index.generation() == generation  # nothing committed yet
        assert fs.committer.queued(fs.files[ino])
        await fs.fsyncdir()
        (v,) = fs_store.log("p", "f")
        assert fs_store.read_bytes(v) == b"payload"
        assert (v.header.posix.mtime_ns, v.header.posix.mode & 0o7777) == (1_700_000_000_000_000_007, 0o644)
        assert _files(fs_store) == ["f"]

        fh, _ = await fs.open(ino, os.O_WRONLY)
        await fs.write(fh, 7, b" more")
        await fs.release(fh)  # queued: a second close
        await fs.setattr(ino, mtime_ns=1_700_000_000_000_000_008)
        await fs.fsyncdir()
        history = fs_store.log("p", "f")
        assert [fs_store.read_bytes(x) for x in history] == [b"payload", b"payload more", b"payload more"]
        assert history[-1].header.posix.mtime_ns == 1_700_000_000_000_000_008

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_a_new_file_renamed_over_a_committed_one_replaces_it_in_one_transaction(
    fs_store: Store, tmp_path: Path
) -> None:
    """Write a temporary file, close it, rename it over the file it replaces (editors,
    ``sed -i``, rsync's updates): the store goes from the old content to the new in one
    step, as a local filesystem does, although the temporary file waited in the group
    commit. Moved in memory, the old file's tombstone committed at once and the new file
    a commit window later: other mounts and the CLI saw no file, and a crash in between
    lost the name. ``RENAME_EXCHANGE`` with a committed file is one transaction too."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name, data in (("t", b"old"), ("u", b"u")):
            fh = await _new_file(fs, part, name, data)
            await fs.fsync(fh)
            await fs.release(fh)
        for name, data in ((".t.tmp", b"new"), (".u.tmp", b"swapped")):
            fh = await _new_file(fs, part, name, data)
            await fs.release(fh)  # queued in the group commit
        await fs.rename(part, ".t.tmp", part, "t", 0)
        assert fs_store.read_bytes(fs_store.get("p", "t")) == b"new"  # no drain: the rename did it
        assert [v.header.sort_key for v in fs_store.log("p", "t")] == [".t.tmp", "t"]  # committed, then moved
        await fs.rename(part, ".u.tmp", part, "u", RENAME_EXCHANGE)
        assert fs_store.read_bytes(fs_store.get("p", "u")) == b"swapped"
        assert fs_store.read_bytes(fs_store.get("p", ".u.tmp")) == b"u"

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_a_metadata_change_reaching_a_file_removed_meanwhile_does_not_bring_it_back(
    fs_store: Store, tmp_path: Path
) -> None:
    """The kernel looked a name up, then another process (here the CLI) removed the file,
    then a ``chmod``, ``touch`` or ``setfattr`` reached it: ENOENT, and the file stays
    deleted. Before, the metadata version was made on the tombstone and the file was live
    again; a file created under that name next became a conflict copy."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh = await _new_file(fs, part, "f", b"one")
        await fs.release(fh)
        ino = (await fs.lookup(part, "f")).ino
        fs_store.delete("p", "f")
        for change in (
            lambda: fs.setattr(ino, mode=0o600),
            lambda: fs.setattr(ino, mtime_ns=1_700_000_000_000_000_000),
            lambda: fs.setxattr(ino, "user.k", b"v"),
        ):
            with pytest.raises(DeletedError):
                await change()
        assert fs_store.log("p", "f")[-1].tombstone
        assert [e.sort_key for e in fs_store.list("p")] == []

        # a new file removed before its first commit (renamed over while still being
        # written), then closed: a change through an inode looked up before is ENOENT
        fh = await _new_file(fs, part, "g", b"being written")
        g = (await fs.lookup(part, "g")).ino
        fh2 = await _new_file(fs, part, ".h.tmp", b"replacement")
        await fs.release(fh2)
        await fs.rename(part, ".h.tmp", part, "g", 0)
        await fs.release(fh)  # the replaced file's writes are dropped with it
        with pytest.raises(OSError) as err:
            await fs.setattr(g, mode=0o600)
        assert err.value.errno == errno.ENOENT
        await fs.fsyncdir()
        assert fs_store.read_bytes(fs_store.get("p", "g")) == b"replacement"

    run(fs_store, tmp_path, scenario)


def test_a_write_made_while_a_metadata_version_commits_builds_on_it(fs_store: Store, tmp_path: Path) -> None:
    """``chmod`` of a clean open file makes a metadata version; a write through an open
    descriptor meanwhile must commit on top of it (not as a conflict copy) and keep the mode."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh = await _new_file(fs, part, "f", b"one")
        await fs.fsync(fh)
        ino = (await fs.lookup(part, "f")).ino
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: fs.setattr(ino, mode=0o600))
            await trio.testing.wait_all_tasks_blocked()  # the metadata version is being made
            await fs.write(fh, 3, b" two")
        await fs.release(fh)
        _no_conflict_copies(fs_store)
        v = fs_store.get("p", "f")
        assert fs_store.read_bytes(v) == b"one two"
        assert v.header.posix.mode & 0o7777 == 0o600
        assert [x.header.posix.mode & 0o7777 for x in fs_store.log("p", "f")] == [0o644, 0o600, 0o600]

    run(fs_store, tmp_path, scenario)


def test_an_unlink_during_a_batch_that_fails_keeps_the_closed_data_in_the_history(
    fs_store: Store, tmp_path: Path
) -> None:
    """A closed file is in a batch when it is unlinked, and the batch fails (another file
    of it changed underneath) so each file commits alone afterwards. The unlink waits
    for the batch and commits the closed data first: the history holds it, then the
    tombstone (before, the tombstone went first and the data was dropped or came back
    as a conflict copy of the removed file)."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name in ("f", "g"):
            fh = await _new_file(fs, part, name, b"one")
            await fs.fsync(fh)
            await fs.write(fh, 3, b" closed")
            await fs.release(fh)  # queued
        fs_store.put("p", "g", b"changed by another mount")  # the batch will conflict on g
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.committer.drain)
            await trio.testing.wait_all_tasks_blocked()  # the batch holds both files' locks
            await fs.unlink(part, "f")
        await fs.fsyncdir()
        history = fs_store.log("p", "f")
        assert [fs_store.read_bytes(v) for v in history[:-1]] == [b"one", b"one closed"]
        assert history[-1].tombstone
        names = _files(fs_store)
        assert names == ["g", f"g.conflict-{fs_store.log('p', 'g')[-1].hash.hex()[:8]}"], names

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_a_file_opened_after_its_unlink_was_queued_is_an_unlinked_file(fs_store: Store, tmp_path: Path) -> None:
    """The kernel looked ``f`` up, another process unlinked it (its tombstone waits in the
    group commit), then the open arrives: the file opens as an unlinked file does on a
    local filesystem. It reads its content, and what is written to it is dropped at
    close (before, its commit met the tombstone and came back as a conflict copy)."""

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name in ("f", "g"):
            fh, _ = await fs.create(part, name, 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"old " + name.encode())
            await fs.fsync(fh)
            await fs.release(fh)
        ino = (await fs.lookup(part, "f")).ino
        await fs.unlink(part, "f")  # queued: "g" keeps the directory
        fh, _ = await fs.open(ino, os.O_RDWR)
        assert await fs.read(fh, 0, 100) == b"old f"
        await fs.write(fh, 0, b"written after the unlink")
        await fs.release(fh)
        await fs.fsyncdir()
        assert _files(fs_store) == ["g"]
        assert [v.tombstone for v in fs_store.log("p", "f")] == [False, True]

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_the_group_commit_runs_in_the_helper_process_and_its_errors_cross_back(fs_store: Store, tmp_path: Path) -> None:
    from fsobj.errors import ConflictError
    from fsobj.fs import work

    pids: list[int] = []

    async def scenario(fs: Filesystem) -> None:
        assert fs.helper is not None
        pids.append(fs.helper.pid)
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        gen = fs_store.generation()
        for i in range(20):
            fh, _ = await fs.create(part, f"f{i}", 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"y" * (i + 1))
            await fs.release(fh)
        await fs.unlink(part, "f0")
        await fs.fsyncdir()
        assert _files(fs_store) == sorted(f"f{i}" for i in range(1, 20))
        assert fs_store.read_bytes(fs_store.get("p", "f19")) == b"y" * 20
        # the helper's transactions count as the mount's own: nothing looks changed by others
        assert fs_store.only_own_commits(gen, fs_store.generation())

        # an error in the helper comes back as itself, with its attributes
        stale = fs_store.log("p", "f5")[0]
        fs_store.put("p", "f5", b"moved on")
        ps = fs.parts[stale.header.partition]
        job = work.DataJob(ps.view, stale, "f5", stale.header.posix, (), work.Given(b"late"), True)
        with pytest.raises(ConflictError) as e:
            await trio.to_thread.run_sync(fs.helper.call, work.commit_batch, [job])
        assert e.value.current == fs_store.get("p", "f5").hash

    run(fs_store, tmp_path, scenario, commit_window=5.0, helper=True)
    assert not os.path.exists(f"/proc/{pids[0]}")  # stopped with the mount


def test_a_name_freed_by_unlink_can_be_taken_again_within_the_window(fs_store: Store, tmp_path: Path) -> None:
    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name in ("f", "g"):
            fh, _ = await fs.create(part, name, 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"old")
            await fs.release(fh)
            await fs.unlink(part, name)  # commits the waiting file, queues its tombstone
        fh, _ = await fs.create(part, "f", 0o644, os.O_WRONLY, 0, 0)
        await fs.write(fh, 0, b"new")
        await fs.fsync(fh)  # the tombstone of the old "f" goes first: no conflict
        await fs.release(fh)
        await fs.symlink(part, "g", b"target", 0, 0)
        await fs.fsyncdir()
        assert set(_files(fs_store)) == {"f", "g"}
        assert fs_store.read_bytes(fs_store.get("p", "f")) == b"new"
        deleted = [e for e in fs_store.list("p", include_deleted=True) if e.tombstone]
        assert sorted(e.sort_key for e in deleted) == ["f", "g"]

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def _files(fs_store: Store) -> list[str]:
    """The sort keys of partition ``p``'s live objects, sorted, without directory markers
    (the root gets one when the mount writes its times)."""
    return sorted(e.sort_key for e in fs_store.list("p") if not e.sort_key.endswith("/"))


def _count_loads(fs_store: Store, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, every version ``fs_store`` loads (decrypts and verifies) is listed,
    except directory markers' (whose versions carry directory times, written by the
    mount after a batch that changed the directory's entries)."""
    loads: list[bytes] = []
    load_version = fs_store.load_version

    def counted(h: bytes, view: object = None) -> object:
        v = load_version(h, view)  # type: ignore[arg-type]
        if not v.sort_key.endswith("/"):
            loads.append(h)
        return v

    monkeypatch.setattr(fs_store, "load_version", counted)
    return loads


def test_directory_times_that_could_not_be_written_are_written_next_time(fs_store: Store, tmp_path: Path) -> None:
    from fsobj.fs import work

    async def scenario(fs: Filesystem) -> None:
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        fh, _ = await fs.create(part, "f", 0o644, os.O_WRONLY, 0, 0)
        await fs.release(fh)
        far, failed = fs._far, []

        async def failing_once(fn: object, *args: object) -> object:
            if fn is work.change_names and not failed and args[0].markers:  # type: ignore[attr-defined]
                failed.append(fn)
                raise OSError(errno.EIO, "disk gone")
            return await far(fn, *args)  # type: ignore[arg-type]

        fs._far = failing_once  # type: ignore[method-assign]
        await fs.fsyncdir()  # the root's marker (its mtime) fails; the file commits
        assert failed and [e.sort_key for e in fs_store.list("p")] == ["f"]
        shown = (await fs.getattr(part)).mtime_ns
        await fs.fsyncdir()
        (marker,) = [e for e in fs_store.list("p") if e.sort_key == "/"]
        assert fs_store.get_hash(marker.head_hash).header.posix.mtime_ns == shown

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_queued_tombstones_keep_the_head_the_mount_knew_at_unlink(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``rm -r`` pushes thousands of versions through the mount's version cache before
    its tombstones commit; the commit uses the heads known at unlink, never loading one."""
    from fsobj.fs.state import VersionCache

    async def scenario(fs: Filesystem) -> None:
        fs.versions = VersionCache(8)
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for i in range(40):
            fh, _ = await fs.create(part, f"f{i}", 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, b"z" * i)
            await fs.release(fh)
        await fs.fsyncdir()
        loads = _count_loads(fs_store, monkeypatch)
        for i in range(40):
            await fs.lookup(part, f"f{i}")  # as the kernel does before each unlink
            await fs.unlink(part, f"f{i}")
        looked_up = len(loads)
        await fs.fsyncdir()
        assert len(loads) == looked_up, f"{len(loads) - looked_up} heads loaded again to write tombstones"
        assert _files(fs_store) == []
        assert len([e for e in fs_store.list("p", include_deleted=True) if e.tombstone]) == 40

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_tombstones_do_not_push_live_versions_out_of_the_cache(
    fs_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsobj.fs.state import VersionCache

    async def scenario(fs: Filesystem) -> None:
        # room for the 8 files and the two versions of the root's marker that the mount
        # writes for the root's mtime (after the files, after the tombstones), no more
        fs.versions = VersionCache(10)
        part = (await fs.lookup(ROOT_INODE, "p")).ino
        for name in ["keep0", "keep1", "keep2", "keep3", "gone0", "gone1", "gone2", "gone3"]:
            fh, _ = await fs.create(part, name, 0o644, os.O_WRONLY, 0, 0)
            await fs.write(fh, 0, name.encode())
            await fs.release(fh)
        await fs.fsyncdir()  # the 8 versions and the root's marker fill the cache
        loads = _count_loads(fs_store, monkeypatch)
        for i in range(4):
            await fs.unlink(part, f"gone{i}")
        await fs.fsyncdir()
        kept = [await fs.lookup(part, f"keep{i}") for i in range(4)]
        assert [a.size for a in kept] == [5, 5, 5, 5]
        assert loads == [], f"{len(loads)} live versions loaded again after 4 tombstones"

    run(fs_store, tmp_path, scenario, commit_window=5.0)


def test_the_reader_hints_blobs_ahead_only_for_sequential_reads(
    fs_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random read fetches its own chunk and hints nothing; a sequential one also
    has the kernel read the blobs ``PREFETCH`` chunks beyond its read-ahead. (The arena
    is made big enough that its half-arena cap on read-ahead, 8 MiB by default, does
    not stop the ``READ_AHEAD`` chunks short: that cap is the arena test's subject.)"""
    import random

    from pagecache import evict, resident

    from fsobj.fs import reader as reader_mod
    from fsobj.fs.reader import READ_AHEAD, PayloadReader
    from fsobj.store.payload import PREFETCH

    monkeypatch.setattr(reader_mod, "ARENA", 64 * 1024 * 1024)

    data = random.Random(5).randbytes(80 * 1024 * 1024)
    version = fs_store.put("p", "big", data)
    view = fs_store.partition(version.header.partition)
    refs = fs_store.payloads.chunk_refs(version.header, view.epoch_keys(version.header.epoch))
    paths = blobfiles.file_paths(fs_store.root, [r.id for r in refs])  # only the last chunk can be a row
    assert len(paths) > 30 + READ_AHEAD + PREFETCH
    for p in paths:
        evict(p)
    if resident(paths[-1]):
        pytest.skip("this file system keeps the blobs in memory (no page cache to test)")
    reader = PayloadReader(fs_store, view, version)
    offsets = [sum(r.length for r in refs[:i]) for i in range(len(refs))]

    async def read_at(i: int) -> bytes:
        return bytes(await reader.read(offsets[i], 4096))

    async def wait_resident(path: Path) -> bool:
        for _ in range(200):
            if resident(path):
                return True
            await trio.sleep(0.01)
        return False

    async def main() -> None:
        assert await read_at(30) == data[offsets[30] : offsets[30] + 4096]  # a jump: random
        await trio.sleep(0.3)
        assert resident(paths[30])
        assert not any(resident(p) for p in paths[31:]), "a random read read ahead"
        for i in range(3):  # 0, 1, 2: sequential
            assert await read_at(i) == data[offsets[i] : offsets[i] + 4096]
        assert await wait_resident(paths[2 + READ_AHEAD + PREFETCH])
        assert not resident(paths[2 + READ_AHEAD + PREFETCH + 1])
        reader.close()

    trio.run(main)


def _big_version(fs_store: Store, size: int, seed: int) -> tuple[bytes, object, object, list[int]]:
    import random

    data = random.Random(seed).randbytes(size)
    version = fs_store.put("p", f"big{seed}", data)
    view = fs_store.partition(version.header.partition)
    refs = fs_store.payloads.chunk_refs(version.header, view.epoch_keys(version.header.epoch))
    return data, version, view, [r.id for r in refs]


def test_a_sequential_reader_answers_reads_across_chunks_with_slices_of_its_arena(
    fs_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file four times the arena, read twice. One read at a time: each answer
    crossing no wrap of the arena is one slice of it (no join). Then reads in
    flight together and answered out of order, as the kernel's read-ahead sends
    them, with a random read among them: each answer is right when it is given,
    and an answer asked to be kept stays right while the arena is reused."""
    from fsobj.fs import reader as reader_mod

    monkeypatch.setattr(reader_mod, "ARENA", 16 * 1024 * 1024)
    data, version, view, _ = _big_version(fs_store, 64 * 1024 * 1024, 6)
    reader = reader_mod.PayloadReader(fs_store, view, version)
    mib = 1024 * 1024
    slices = []

    async def read_checked(off: int) -> None:
        out = await reader.read(off, mib)
        assert bytes(out) == data[off : off + mib], f"read at {off} is wrong"  # before any other task runs
        slices.append(isinstance(out, memoryview) and out.obj is reader._arena)

    async def main() -> None:
        for i in range(64):
            await read_checked(i * mib)
        assert sum(slices) >= 64 - 3, slices  # the wraps at 16, 32 and 48 MiB may need a join
        kept = await reader.read(3 * mib + 5, 2 * mib, keep=True)
        # a jump back: its own buffers; a view of one chunk's bytes when the 2 MiB lie in
        # one chunk (chunks reach 4 MiB), never a view of the arena
        assert isinstance(kept, bytes) or (isinstance(kept, memoryview) and isinstance(kept.obj, bytes))
        for group in range(0, 64, 4):
            async with trio.open_nursery() as n:
                for k in (3, 1, 0, 2):
                    n.start_soon(read_checked, (group + k) * mib)
            if group == 8:
                assert bytes(await reader.read(17 * mib + 77, 1000)) == data[17 * mib + 77 : 17 * mib + 1077]
        assert kept == data[3 * mib + 5 : 5 * mib + 5]
        reader.close()

    trio.run(main)


def test_a_damaged_chunk_read_into_the_arena_fails_and_its_bytes_are_never_answered(fs_store: Store) -> None:
    """A chunk blob with one flipped bit, read ahead into the arena: the read that
    needs it raises IntegrityError, every read before it is right, and asking again
    raises again (its place in the arena is not taken for data)."""
    data, version, view, ids = _big_version(fs_store, 12 * 1024 * 1024, 7)
    from fsobj.fs.reader import PayloadReader

    refs = fs_store.payloads.chunk_refs(version.header, view.epoch_keys(version.header.epoch))
    bad = 5
    blobfiles.flip(fs_store.root, ids[bad], 100)
    start = sum(r.length for r in refs[:bad])
    reader = PayloadReader(fs_store, view, version)

    async def main() -> None:
        pos = 0
        while pos + 256 * 1024 <= start:
            assert bytes(await reader.read(pos, 256 * 1024)) == data[pos : pos + 256 * 1024]
            pos += 256 * 1024
        for _ in range(2):
            with pytest.raises(IntegrityError):
                await reader.read(start + 10, 4096)
        after = start + refs[bad].length
        assert bytes(await reader.read(after, 4096)) == data[after : after + 4096]
        reader.close()

    trio.run(main)


def test_readers_share_an_arena_budget_and_read_lean_beyond_it(fs_store: Store) -> None:
    """Two files read sequentially side by side with room for one arena: the first
    gets it, the second reads lean (own buffers, LEAN_AHEAD chunks ahead, LEAN_CACHE
    kept) and right. When the first closes, the second takes the arena at its next
    fetch; retiring it gives the room back, and it still answers."""
    from fsobj import chunking
    from fsobj.fs.budget import ByteBudget
    from fsobj.fs.reader import ARENA, LEAN_AHEAD, LEAN_CACHE, PayloadReader

    mib = 1024 * 1024
    one = ARENA + chunking.LARGEST  # the arena of a file bigger than ARENA
    budget = ByteBudget(one + mib)
    files = [_big_version(fs_store, 24 * mib, seed) for seed in (9, 10)]
    readers = [PayloadReader(fs_store, view, version, budget) for _, version, view, _ in files]

    async def check(k: int, off: int) -> None:
        data = files[k][0]
        assert bytes(await readers[k].read(off, mib)) == data[off : off + mib], f"file {k} at {off}"

    def held(r: PayloadReader) -> int:
        """What ``r`` counts in the budget: its arena, and (beyond LEAN_CACHE cached
        chunks) the chunks it caches in their own buffers. A sequential reader gets one
        of those when its chunk's place in the arena is still held, e.g. by a fetch that
        a slow machine has not finished."""
        own = sum(map(r._own_len, r._cache.values())) if len(r._cache) > LEAN_CACHE else 0
        assert r._cache_share.held == own
        return r._share.held + r._cache_share.held

    async def main() -> None:
        for i in range(12):
            for k in (0, 1):
                await check(k, i * mib)
            assert len(readers[1]._pending) <= LEAN_AHEAD + 1
            assert len(readers[1]._cache) <= LEAN_CACHE
        assert readers[0]._arena is not None and readers[0]._share.held == one
        assert readers[1]._arena is None and readers[1]._lean and held(readers[1]) == 0
        assert budget.used == held(readers[0])
        readers[0].close()
        assert budget.used == 0
        await check(1, 12 * mib)
        assert readers[1]._arena is not None and not readers[1]._lean and readers[1]._share.held == one
        assert budget.used == held(readers[1])
        for i in range(13, 24):
            await check(1, i * mib)
        readers[1].retire()
        assert budget.used == 0
        await check(1, 3 * mib)
        readers[1].close()
        assert budget.used == 0

    trio.run(main)


def test_random_readers_cache_beyond_two_chunks_only_within_the_budget(fs_store: Store) -> None:
    """Files read at random keep their chunks in their own buffers. Each reader keeps
    ``LEAN_CACHE`` of them; more only while the mount's read budget has room, where
    they are counted: with room for about 4 chunks, a first reader keeps more than 2
    and counts exactly their bytes, a second one meanwhile keeps 2, and takes the
    room once the first closes. Every answer is right."""
    from fsobj.fs.budget import ByteBudget
    from fsobj.fs.reader import CACHE_CHUNKS, LEAN_CACHE, READ_AHEAD, PayloadReader

    mib = 1024 * 1024
    budget = ByteBudget(6 * mib)
    files = [_big_version(fs_store, 48 * mib, seed) for seed in (11, 12)]
    readers = [PayloadReader(fs_store, view, version, budget) for _, version, view, _ in files]
    for r in readers:
        r.load_refs()
    n = min(len(r._offsets) for r in readers)
    half = n // 2
    assert half > READ_AHEAD + 1, n
    # every jump is more than READ_AHEAD chunks, the first one too (a read at offset 0 looks sequential)
    order = [k for i in range(half) for k in (i + half, i)]

    def cached_bytes(r: PayloadReader) -> int:
        return sum(len(d) for d in r._cache.values())

    def small_pairs(r: PayloadReader) -> list[int]:
        """Up to 4 pairs of chunks ``j`` and ``j + half`` of at most 1.5 MiB each (any 3 fit
        in the room: the chunker's seed is random), each read more than READ_AHEAD chunks
        away from the one before, after ``order`` (whose last chunk is half - 1)."""
        refs = r._refs
        assert refs is not None
        out, prev = [], half - 1
        for j in range(half):
            if max(refs[j].length, refs[j + half].length) > mib * 3 // 2:
                continue
            pair = next((p for p in ((j, j + half), (j + half, j)) if abs(p[0] - prev) > READ_AHEAD), None)
            if pair is not None:
                out += pair
                prev = pair[1]
            if len(out) == 8:
                break
        assert len(out) >= 4, "chunks average 1 MiB"
        return out

    async def check(k: int, i: int) -> None:
        data, r = files[k][0], readers[k]
        off = r._offsets[i] + 5
        assert bytes(await r.read(off, 4096)) == data[off : off + 4096], f"file {k} chunk {i}"
        assert r._arena is None  # random reads: own buffers, no arena
        assert len(r._cache) <= CACHE_CHUNKS

    async def main() -> None:
        most = 0
        for i in order + small_pairs(readers[0]):  # ending on small chunks: the room is then full
            await check(0, i)
            most = max(most, len(readers[0]._cache))
            if len(readers[0]._cache) > LEAN_CACHE:
                assert budget.used == cached_bytes(readers[0]) <= budget.limit
        assert most > LEAN_CACHE, "the reader used the room it had"
        first = cached_bytes(readers[0])
        assert budget.limit - first < 4 * mib, "the first reader keeps what fits"
        for i in order:
            await check(1, i)
            counted = cached_bytes(readers[1]) if len(readers[1]._cache) > LEAN_CACHE else 0
            assert budget.used == first + counted <= budget.limit
        readers[0].close()
        assert budget.used == (cached_bytes(readers[1]) if len(readers[1]._cache) > LEAN_CACHE else 0)
        for i in small_pairs(readers[1]):
            await check(1, i)
        assert len(readers[1]._cache) > LEAN_CACHE, "the room the first one gave back"
        assert budget.used == cached_bytes(readers[1]) <= budget.limit
        readers[1].close()
        assert budget.used == 0

    trio.run(main)


def test_a_replaced_reader_stops_its_read_ahead_and_finishes_reads_in_flight(fs_store: Store) -> None:
    """A commit gives an open file a new version and so a new reader: the old one's
    read-ahead that nobody waits for is cancelled before it starts, it reads no further
    ahead, and a read still waiting for one of its chunks gets the right bytes. The
    payload threads are held busy so that the read-ahead is still queued when the
    replacement comes."""
    import threading

    from fsobj.fs.openfile import OpenFile
    from fsobj.fs.reader import ARENA, READ_AHEAD, PayloadReader
    from fsobj.store import WORKERS

    data, version, view, _ = _big_version(fs_store, 24 * 1024 * 1024, 8)
    newer = fs_store.put("p", "big8", b"the file is rewritten")
    refs = fs_store.payloads.chunk_refs(version.header, view.epoch_keys(version.header.epoch))
    offsets = [sum(r.length for r in refs[:i]) for i in range(len(refs))]
    assert len(refs) > 2 + READ_AHEAD
    of = OpenFile(99, view.id, version.header.base_hash, version.sort_key, version, version.header.posix)
    reader = of.reader(fs_store, view, None)
    assert isinstance(reader, PayloadReader)
    reader.load_refs()
    gate = threading.Event()
    held = [fs_store.payloads.pool.submit(gate.wait, 30) for _ in range(WORKERS)]
    got: list[bytes] = []

    async def read_chunk_2() -> None:
        got.append(bytes(await reader.read(offsets[2] + 7, 4096)))

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_chunk_2)
                await trio.sleep(0.2)  # it waits for chunk 2; chunks 3.. are queued behind it
                queued = dict(reader._pending)
                # up to READ_AHEAD chunks ahead, within half the arena: how many fit depends
                # on the store's random chunker seed (3 in one run); chunks are at most
                # 4 MiB, so chunk 3 always does
                window = offsets[2] + ARENA // 2
                assert 2 in queued and 3 in queued, sorted(queued)
                assert all(j <= 2 + READ_AHEAD and offsets[j] + refs[j].length <= window for j in queued)
                of.base = newer
                assert of.reader(fs_store, view, None) is not reader  # the old reader is retired
                assert set(reader._pending) == {2}, "read-ahead nobody waits for is still queued"
                assert all(fut.cancelled() for i, fut in queued.items() if i != 2)
                gate.set()
        finally:
            gate.set()
        assert got == [data[offsets[2] + 7 : offsets[2] + 7 + 4096]]
        assert not reader._pending or all(f.done() for f in reader._pending.values())
        # a retired reader still answers, without reading ahead
        assert bytes(await reader.read(offsets[5], 100)) == data[offsets[5] : offsets[5] + 100]
        assert set(reader._pending) <= {5}
        reader.close()
        of.close_reader()

    trio.run(main)
    for f in held:
        f.result(timeout=5)


def test_a_partition_view_crosses_to_the_helper_as_its_id(fs_store: Store) -> None:
    """A message to the helper carries a view as its partition id: the helper's
    store opens its own view (one per partition per message); a process without
    a store refuses it. The versions in the message cross whole."""
    import io
    import pickle

    from fsobj.fs import helper

    versions = [fs_store.put("p", f"f{i}", b"x" * i) for i in range(3)]
    view = fs_store.partition("p")
    message = helper._frame((view, versions, [view]))
    body = io.BytesIO(bytes(message[8:]))
    assert int.from_bytes(message[:8], "big") == len(message) - 8
    assert b"fsobj.store" in body.getvalue() and view.keys[view.record.current_epoch].blob_key not in body.getvalue()
    got_view, got_versions, (again,) = helper._Unpickler(body, fs_store).load()
    assert got_view.id == view.id and again is got_view
    assert got_versions == versions
    with pytest.raises(pickle.UnpicklingError, match="without a store"):
        helper._Unpickler(io.BytesIO(bytes(message[8:])), None).load()


def test_the_group_commit_goes_when_idle_full_or_old_on_a_virtual_clock() -> None:
    """The committer's batching rules on trio's virtual clock (no real waiting):
    entries 5 ms apart join one batch, which goes 20-40 ms after the last; 1,000
    entries at once go at once; a steady stream goes at the 1 s window; and entries
    that come while a batch commits go as soon as it is done, not a window later."""
    from trio.testing import MockClock

    from fsobj.fs.committer import Committer

    batches: list[tuple[float, int]] = []
    commit_takes = 0.0

    async def remove_many(items: list[tuple[bytes, bytes, object]]) -> None:
        batches.append((trio.current_time(), len(items)))
        await trio.sleep(commit_takes)

    async def commit_many(files: list[object]) -> None:
        raise AssertionError("no files were queued")

    async def main() -> None:
        c = Committer(commit_many, remove_many, window=1.0, idle=0.02, max_files=1000)  # type: ignore[arg-type]
        async with trio.open_nursery() as n:
            await n.start(c.run)
            t0 = trio.current_time()
            for i in range(10):  # 0 .. 45 ms
                c.submit_removal(b"p", b"a%d" % i)
                await trio.sleep(0.005)
            await trio.sleep(0.1)
            assert len(batches) == 1 and batches[0][1] == 10
            assert 0.045 + 0.02 <= batches[0][0] - t0 <= 0.045 + 0.04 + 1e-9, batches

            t1 = trio.current_time()
            for i in range(1000):
                c.submit_removal(b"p", b"b%d" % i)
            await trio.sleep(0.001)
            assert batches[1] == (t1, 1000), batches

            t2 = trio.current_time()
            for i in range(300):  # one every 10 ms for 3 s: never idle, never full
                c.submit_removal(b"p", b"c%d" % i)
                await trio.sleep(0.01)
            await trio.sleep(0.1)
            stream = batches[2:]
            assert sum(k for _, k in stream) == 300
            assert [round(t - t2, 2) for t, _ in stream[:2]] == [1.0, 2.0], stream

            nonlocal commit_takes
            commit_takes = 0.05  # each batch now takes 50 ms to commit
            del batches[:]
            t3 = trio.current_time()
            for i in range(200):  # one every 10 ms for 2 s
                c.submit_removal(b"p", b"d%d" % i)
                await trio.sleep(0.01)
            await trio.sleep(0.2)
            n.cancel_scope.cancel()
        # the first gathers for the window; each later one holds what came while the one
        # before committed, and goes when it is done
        assert sum(k for _, k in batches) == 200
        assert round(batches[0][0] - t3, 2) == 1.0 and 100 <= batches[0][1] <= 101, batches
        later = batches[1:]
        assert all(round(b[0] - a[0], 3) == 0.05 for a, b in zip(batches, later, strict=False)), batches
        assert max(k for _, k in later) <= 6, batches

    trio.run(main, clock=MockClock(autojump_threshold=0))
