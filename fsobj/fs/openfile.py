"""Open files: what one inode has while handles are open on it.

Owns: the state shared by every handle of one open inode — the committed
version it started from (``base``), the attributes and headers the next
version will carry, the write staging, the payload reader — and the byte
stream a commit reads (base payload overlaid with the staging). One
``OpenFile`` per inode, so reads through any handle see the writes of every
other handle before they are committed.

A commit that uses a finished payload stream keeps that payload in
``streamed`` and releases the staging's spill file (``Staging.release``): the
payload's blobs hold the same bytes, and the commit's ``syncfs`` then writes
them to disk once instead of twice. Until the commit succeeds, ``source``
returns that payload (retries and conflict copies use it); if the commit
fails, the caller refills the staging from it (``restore_staging``) before
letting go of the lock.

Concurrency: an ``OpenFile`` belongs to the trio thread. Its ``lock`` is held
by a commit for its whole duration (the worker thread reads the staging then)
and by every write, truncate and staged read, so no handle changes or frees
the staging under a commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from fsobj.fs.budget import ByteBudget
from fsobj.fs.locks import QuickLock
from fsobj.fs.reader import PayloadReader
from fsobj.fs.staging import BASE, DIRTY, Staging
from fsobj.fs.stream import PayloadStream
from fsobj.fs.tree import Ref
from fsobj.model.header import Posix
from fsobj.store import PartitionView, Store, Version
from fsobj.store.payload import IterStream, Splice, WrittenPayload

Source = Callable[[], BinaryIO | bytes | WrittenPayload | Splice]


@dataclass
class Handle:
    fh: int
    ino: int
    writable: bool
    flushed: bool = True  # no write since this handle's last flush (close)


@dataclass
class OpenFile:
    ino: int
    pid: bytes
    ref: Ref | None  # None: a version file (read-only)
    sort_key: str
    base: Version | None  # None: a new file with no committed version yet
    posix: Posix
    headers: tuple[tuple[str, str], ...] = ()
    read_only: bool = False
    staging: Staging | None = None
    dirty: bool = False
    unlinked: bool = False
    handles: set[int] = field(default_factory=set)
    lock: QuickLock = field(default_factory=QuickLock)
    stream: PayloadStream | None = None  # the payload being written while sequential writes arrive
    streamed: WrittenPayload | None = None  # the finished stream's payload, while a commit of it is pending
    _reader: PayloadReader | None = None

    # ------------------------------------------------------------ state
    @property
    def size(self) -> int:
        if self.staging is not None:
            return self.staging.size
        return self.base.length if self.base is not None else 0

    def reader(self, store: Store, view: PartitionView, budget: ByteBudget | None) -> PayloadReader | None:
        """The reader of the base version (made on first use; ``budget``: the mount's)."""
        if self.base is None:
            return None
        if self._reader is None or self._reader.version.hash != self.base.hash:
            if self._reader is not None:
                self._reader.retire()  # reads of the old version still in flight finish
            self._reader = PayloadReader(store, view, self.base, budget)
        return self._reader

    def close_reader(self) -> None:
        """The last handle is gone: stop its read-ahead and free its buffers."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def ensure_staging(self, spill_dir: str | None, budget: ByteBudget | None) -> Staging:
        """The staging (made on the first change; ``budget``: the mount's for memory)."""
        if self.staging is None:
            self.staging = Staging(self.base.length if self.base is not None else 0, spill_dir, budget)
        return self.staging

    def touch(self, mtime_ns: int | None = None) -> None:
        """A change to the content: the next version gets a new mtime."""
        self.dirty = True
        self.posix = replace(self.posix, mtime_ns=mtime_ns if mtime_ns is not None else time.time_ns())

    def committed(self, version: Version) -> None:
        """``version`` now holds everything staged: drop the plaintext."""
        self.base = version
        self.posix = version.header.posix
        self.headers = version.header.headers
        self.sort_key = version.sort_key
        self.dirty = False
        self.drop_staging()

    def follow(self, version: Version) -> None:
        """A metadata version this mount made on top of the base (same payload) becomes
        the base; what is staged stays staged and commits on top of it."""
        if self.dirty:
            self.base, self.sort_key = version, version.sort_key
        else:
            self.rebase(version)

    def rebase(self, version: Version) -> None:
        """Follow a version committed by someone else (only when nothing is staged)."""
        assert not self.dirty
        self.base = version
        self.posix = version.header.posix
        self.headers = version.header.headers
        self.sort_key = version.sort_key

    def discard_stream(self) -> None:
        """Stop the stream without taking its bytes (the staging is being dropped)."""
        if self.stream is not None:
            self.stream.discard()
            self.stream = None

    def take_stream(self) -> PayloadStream | None:
        """The stream, for the commit, if it holds exactly the staged content (else it is aborted)."""
        s, self.stream = self.stream, None
        st = self.staging
        if s is None:
            return None
        if s.started and not s.aborted and st is not None and s.pos == st.size and st.extents.covers(0, st.size):
            return s
        s.abort()  # owes nothing here: every other write and truncate ended it (FileOps.end_stream)
        return None

    def keep_streamed(self, written: WrittenPayload) -> None:
        """Worker thread, under ``lock``: ``written`` holds the whole staged content; the
        spill file is emptied so that the commit does not write its bytes to disk."""
        self.streamed = written
        if self.staging is not None:
            self.staging.release()

    def restore_staging(self, store: Store, view: PartitionView) -> None:
        """Worker thread, under ``lock``, after a failed commit: refill a released staging
        from the kept payload (the blobs are readable: written, just not yet synced)."""
        w = self.streamed
        if w is None:
            return
        if self.staging is not None and self.staging.released:
            self.staging.restore(store.payloads.iter_written(w, view.epoch_keys(w.epoch), view.id))
        self.streamed = None

    def drop_staging(self) -> None:
        self.discard_stream()
        self.streamed = None
        if self.staging is not None:
            self.staging.close()
            self.staging = None

    def writers(self, handles: dict[int, Handle]) -> list[Handle]:
        return [handles[fh] for fh in self.handles if fh in handles and handles[fh].writable]

    # ------------------------------------------------------------ commit source
    @property
    def payload_changed(self) -> bool:
        return self.staging is not None or self.base is None

    def source(self, store: Store, view: PartitionView, budget: ByteBudget | None) -> Source:
        """A factory of the byte stream of the next version (called in a worker thread).

        A factory, because a conflict copy reads the same bytes a second time.
        """
        staging = self.staging
        reader = self.reader(store, view, budget)
        if staging is None:
            # the payload is the base's (commits pass source=... then; a conflict copy reads it)
            return lambda: IterStream(reader.iter_range(0, reader.length)) if reader else b""
        small = staging.memory_bytes()
        if small is not None:
            return lambda: small
        # a commit may keep its stream's payload (keep_streamed): retries and conflict copies use it
        return lambda: self.streamed or staging.whole_file() or _edited(staging, reader)


def _edited(staging: Staging, reader: PayloadReader | None) -> Splice | IterStream:
    """The content of a file that keeps bytes of its base: a splice of the base's payload,
    so that the commit cuts and stores again only the chunks around the changes."""
    if reader is None:
        return IterStream(_compose(staging, None, 0))
    changed = [p for p in staging.pieces(0, staging.size) if p.kind != BASE]
    span = (changed[0].start, changed[-1].end) if changed else None
    return Splice(reader.version.header, staging.size, span, lambda start: _compose(staging, reader, start))


def _compose(staging: Staging, reader: PayloadReader | None, start: int) -> Iterator[bytes]:
    """The logical content from ``start``: dirty pieces from the staging, base pieces from
    the reader, zeros for holes."""
    step = 1024 * 1024
    for piece in staging.pieces(start, staging.size - start):
        if piece.kind == BASE:
            assert reader is not None
            yield from reader.iter_range(piece.start, piece.end)
            continue
        for pos in range(piece.start, piece.end, step):
            n = min(step, piece.end - pos)
            yield staging.read_dirty(pos, n) if piece.kind == DIRTY else bytes(n)
