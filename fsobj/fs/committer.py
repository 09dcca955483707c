"""Group commit: files closed, and files unlinked, within a short window commit together.

Owns: the queue of open files whose last writer has closed, the queue of
tombstones of files unlinked through the mount, and when both are committed.
A batch goes when nothing has joined it for ``idle`` seconds (looked at every
``idle`` seconds, so after ``idle`` to twice that), when it is ``window``
seconds old, or when it holds ``max_files`` entries or ``max_bytes`` staged
bytes; entries that join while a batch commits go as the next batch as soon as
it is done (``drain`` loops until the queue is empty), so under a steady stream
a batch is what came during the one before. All of a batch's versions commit in
one store transaction
(``Store.batch()``: one ``syncfs``, one SQLite commit), which is what makes
many small files fast. Tombstones go before files, so a name freed and taken
again commits in that order. ``fsync`` of a file commits it at once;
``fsyncdir``, unmount and SIGTERM drain both queues (the last two, and ``fsync``
of the mount root, commit the files still open too).

What this means for readers (docs/mount.md, "Durability"): a closed file is
visible at once through this mount (its open-file state stays until it is
committed) and to other mounts and the CLI within ``window`` seconds; after
``kill -9`` or a power cut a closed file that was not yet committed is wholly
absent, never partial. With ``window`` 0 every close commits before it
returns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from fsobj.fs.openfile import OpenFile
from fsobj.store import Version

log = logging.getLogger("fsobj.fs")

CommitMany = Callable[[list[OpenFile]], Awaitable[None]]
Removal = tuple[bytes, Version | None]  # (partition id, the head the mount knew at unlink: the commit's hint)
QueuedRemoval = tuple[bytes, bytes, Version | None]  # (partition id, baseHash, hint)
RemoveMany = Callable[[list[QueuedRemoval]], Awaitable[None]]
# Runs after every drain, for what a batch changes besides files (directory times):
# ``force`` (fsyncdir, unmount) writes everything; returns the seconds after which it
# wants to run again for what it left (None: nothing left).
After = Callable[[bool], Awaitable[float | None]]


class Committer:
    def __init__(
        self,
        commit_many: CommitMany,
        remove_many: RemoveMany,
        window: float = 1.0,
        idle: float = 0.02,
        max_files: int = 1000,
        max_bytes: int = 64 * 1024 * 1024,
        after: After | None = None,
    ) -> None:
        self.commit_many = commit_many
        self.remove_many = remove_many
        self.after = after
        self._after_due = math.inf  # trio time when ``after`` wants to run again
        self.window = window
        self.idle = idle
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.running = False
        self._queue: dict[int, OpenFile] = {}
        self._queued_bytes = 0  # staged bytes at submit time (an estimate: writes may follow)
        self._removals: dict[bytes, Removal] = {}  # baseHash -> (partition id, hint): tombstones to write
        self._writing: dict[bytes, Removal] = {}  # the same, for tombstones being written now
        self._files_lock = trio.Lock()  # held while a batch of files commits (drain waits for it)
        self._removals_lock = trio.Lock()  # the same for tombstones
        self._wake = trio.Event()  # set for the first entry of a batch, and when a batch is full
        self._arrivals = 0  # entries queued so far (a gathering batch polls it)
        self._gathering = False
        self._batch_done = trio.Event()

    @property
    def enabled(self) -> bool:
        return self.running and self.window > 0

    def queued(self, of: OpenFile) -> bool:
        return of.ino in self._queue

    def discard(self, of: OpenFile) -> None:
        """``of`` was committed by other means (fsync, a change that must not merge into it)."""
        self._queue.pop(of.ino, None)

    def removing(self, base_hash: bytes) -> bool:
        return base_hash in self._removals or base_hash in self._writing

    def removals_of(self, pid: bytes) -> list[bytes]:
        """Unlinked here, tombstone not committed yet (queued or being written): a listing
        of the index taken meanwhile still shows these."""
        return [b for pending in (self._removals, self._writing) for b, (p, _) in pending.items() if p == pid]

    def poke(self) -> None:
        """Something besides files waits to be written (``after``): run a batch."""
        self._arrived()

    def submit_removal(self, pid: bytes, base_hash: bytes, head: Version | None = None) -> None:
        """Queue the tombstone of an object already gone from the mount's tree. ``head``:
        its current version as the mount knew it at unlink time, kept with the entry so
        that the commit need not load it again (by the time the batch goes, an ``rm -r``
        has pushed thousands of versions through the mount's version cache)."""
        self._removals[base_hash] = (pid, head)
        self._arrived()

    async def submit(self, of: OpenFile) -> None:
        """Queue ``of``; waits only when the queue is over its byte limit (backpressure)."""
        if of.ino not in self._queue:
            self._queue[of.ino] = of
            self._queued_bytes += of.size if of.staging is not None else 0
        self._arrived()
        if self._queued_bytes > self.max_bytes:
            await self._batch_done.wait()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background task: one batch after another, for as long as the mount lives."""
        self.running = True
        task_status.started()
        try:
            while True:
                with trio.move_on_at(self._after_due):  # also when ``after`` asked to be called again
                    await self._wake.wait()
                    self._wake = trio.Event()
                    await self._gather()
                await self.drain()
        finally:
            self.running = False

    def _full(self) -> bool:
        return len(self._queue) + len(self._removals) >= self.max_files or self._queued_bytes >= self.max_bytes

    def _arrived(self) -> None:
        """An entry joined: wake the committer if it sleeps, or if the batch is full.
        A gathering batch is not woken by every entry (an ``rm -r`` queues thousands
        a second, and each wake-up cost the request loop a task switch and a timer)."""
        self._arrivals += 1
        if not self._gathering or self._full():
            self._wake.set()

    async def _gather(self) -> None:
        """Let a batch fill: until idle (nothing joined for ``idle`` seconds, checked
        every ``idle`` seconds), full, or as old as the window."""
        self._gathering = True
        try:
            with trio.move_on_after(self.window):
                while not self._full():
                    seen = self._arrivals
                    with trio.move_on_after(self.idle):
                        await self._wake.wait()  # full
                    self._wake = trio.Event()
                    if self._arrivals == seen:
                        return
        finally:
            self._gathering = False

    async def drain_removals(self) -> None:
        """Write every queued tombstone now (and wait for those being written)."""
        async with self._removals_lock:
            while self._removals:
                batch = [(pid, base, head) for base, (pid, head) in self._removals.items()]
                self._writing, self._removals = self._removals, {}
                try:
                    with trio.CancelScope(shield=True):
                        await self.remove_many(batch)
                except Exception:
                    log.exception("group commit of %d tombstones failed", len(batch))
                finally:
                    self._writing = {}

    async def drain(self, force: bool = False) -> None:
        """Commit everything queued now (and wait for batches already committing):
        tombstones first, so that a name freed and taken again commits in that order.
        ``force``: ``after`` writes all it holds too (fsyncdir, unmount)."""
        await self.drain_removals()
        async with self._files_lock:
            while self._queue or self._removals:
                await self.drain_removals()
                batch = list(self._queue.values())
                self._queue.clear()
                self._queued_bytes = 0
                try:
                    with trio.CancelScope(shield=True):  # a batch that started finishes, even at shutdown
                        await self.commit_many(batch)
                except Exception:
                    log.exception("group commit of %d files failed", len(batch))
                finally:
                    done, self._batch_done = self._batch_done, trio.Event()
                    done.set()
        if self.after is not None:  # holding none of the batch locks
            again = None
            try:
                with trio.CancelScope(shield=True):
                    again = await self.after(force)
            except Exception:
                log.exception("group commit: writing directory times failed")
            self._after_due = math.inf if again is None else trio.current_time() + again
