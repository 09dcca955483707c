"""Streaming writes: a file written sequentially from offset 0 is chunked and
encrypted while the writes arrive, so that only the header waits for close.

Owns: one background thread per stream running ``store.payloads.write_pieces``
over a queue of the written bytes, and the bytes the stream owes the staging.

A stream is an early copy of what the staging (``fsobj.fs.staging``) records
as written. It is used by the commit only while every write since offset 0
was an append and its length equals the staged size; anything else (a write
elsewhere, a truncate, a read of the bytes it holds, a failure) ends it, and
the staging is authoritative again.

Small files never start a thread: the first ``START_AT`` bytes are only
buffered, and a file closed before it reaches them commits from the staging.
Until the staging spills to its file, every write goes to the staging too.

Once the staging has spilled (``spill_to``), the appends are **not** copied
into the spill file at all: the staging records them as written
(``Staging.write_elsewhere``) and the stream *owes* them to the spill file.
A commit that uses the stream's payload never needs them there. Every other
ending pays the debt before the staging is used again
(:meth:`PayloadStream.abort`, or :meth:`PayloadStream.finish` of a stream that
failed, or :meth:`PayloadStream.give_back` of a payload the commit cannot
use): the owed bytes are the chunks the thread has stored (read back and
verified, like any blob) followed by the pieces it still holds. The thread
holds every owed piece until a stored chunk covers it, so nothing written is
only in the chunker's buffer when the stream ends; that is at most the queue
plus ``WINDOW`` chunks in flight plus one chunk being cut (about 40 MiB).

A mount runs at most ``MAX_STREAMS`` stream threads at once (``slots``): a file
that reaches ``START_AT`` while they are all taken does not stream, and commits
from its staging like any file written out of order. Without that bound every
file written at once held its own window: 16 files of 64 MiB copied in
parallel took the daemon's peak RSS to 1,453 MiB.
"""

from __future__ import annotations

import collections
import errno
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

from fsobj import crypto
from fsobj.fs.staging import pwrite_all
from fsobj.model.header import ChunkRef
from fsobj.store import PartitionView, Store
from fsobj.store.payload import WrittenPayload

START_AT = 1024 * 1024  # bytes buffered before the thread starts
QUEUE_ITEMS = 16  # writes in flight to the thread (FUSE writes are up to 1 MiB: ~16 MiB)
MAX_STREAMS = 2  # stream threads of a mount at once (each holds up to a queue and a window)


class _Aborted(Exception):
    pass


class _Gap(Exception):
    """No stored chunk or piece holds the byte at ``pos``."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


_EOF = object()
_ABORT = object()
_NO_QUEUE: queue.Queue[object] = queue.Queue(0)  # shared placeholder: always empty, never put to


class _Piece:
    """Written bytes at ``off``; ``owed``: the staging's spill file does not have them."""

    __slots__ = ("data", "off", "owed")

    def __init__(self, off: int, data: bytes, owed: bool) -> None:
        self.off, self.data, self.owed = off, data, owed


class PayloadStream:
    """The payload of an open file, written by a thread while the file is being written."""

    def __init__(self, store: Store, view: PartitionView, slots: threading.Semaphore | None = None) -> None:
        self.store = store
        self.view = view
        self._slots = slots  # the mount's stream threads (None: no bound); the thread holds one
        self.pos = 0  # bytes fed so far (the next append must start here)
        self.aborted = False
        self._buffered: list[bytes] = []
        self._q: queue.Queue[object] = _NO_QUEUE  # made when the thread starts: most files are small
        self._future: Future[WrittenPayload] | None = None
        self._keys: crypto.EpochKeys | None = None  # what the thread writes with
        self._spill_fd = -1  # our own descriptor of the staging's spill file (spill_to)
        self._owed_from = -1  # the spill file lacks every fed byte from here on
        # Written by the thread under _lock; read by others under _lock (read_owed) or once
        # it has ended (_future done):
        self._lock = threading.Lock()
        self._held: collections.deque[_Piece] = collections.deque()  # owed pieces no stored chunk covers yet
        self._stored: list[tuple[int, ChunkRef]] = []  # (offset, chunk) of each chunk stored
        self._stored_end = 0
        self._late: list[_Piece] = []  # owed pieces taken back from the queue, or fed after the thread ended

    @property
    def started(self) -> bool:
        return self._future is not None

    @property
    def spilling(self) -> bool:
        """Whether appends fed now are owed to the spill file by this stream."""
        return self._spill_fd >= 0 and not self.aborted

    @property
    def failed(self) -> bool:
        """The thread ended before the end of the file (an error): end the stream."""
        return self._future is not None and self._future.done() and not self.aborted

    @property
    def owed_from(self) -> int:
        """Fed bytes from here on are owed to the spill file (while ``spilling``)."""
        return self._owed_from

    @property
    def stored_end(self) -> int:
        """The chunks the thread has stored so far hold the fed bytes below this."""
        with self._lock:
            return self._stored_end

    def owes(self, start: int, end: int) -> bool:
        """Whether bytes of [start, end) are owed to the spill file (a read must end the stream)."""
        return self.spilling and end > self._owed_from and start < self.pos

    def spill_to(self, fd: int) -> None:
        """The staging has just spilled to the file ``fd`` and holds every byte fed so far:
        from now on the caller does not write appends there (see the module docstring).
        Only once the thread runs."""
        assert self.started and self._spill_fd < 0
        self._spill_fd = os.dup(fd)
        self._owed_from = self.pos

    # ------------------------------------------------------------ feeding (trio thread)
    def feed(self, data: bytes) -> bool:
        """Hand over the next bytes without blocking; False if the queue is full
        (then call :meth:`feed_blocking` in a worker thread)."""
        if self._future is None:
            self.pos += len(data)
            self._buffered.append(bytes(data))
            if self.pos >= START_AT:
                if self._slots is None or self._slots.acquire(blocking=False):
                    self._start()
                else:  # every slot is taken: this file commits from its staging, which has it all
                    self._stop()
            return True
        try:
            self._q.put_nowait(_Piece(self.pos, bytes(data), self._spill_fd >= 0))
        except queue.Full:
            return False
        self.pos += len(data)
        return True

    def feed_blocking(self, data: bytes) -> None:
        """Blocking :meth:`feed` (worker thread). If the stream was aborted or its thread
        ended meanwhile, the piece is kept here for the spill file instead."""
        piece = _Piece(self.pos, bytes(data), self._spill_fd >= 0)
        assert self._future is not None
        while not self.aborted and not self._future.done():
            try:
                self._q.put(piece, timeout=0.1)
            except queue.Full:
                continue
            self.pos += len(data)
            return
        self._late.append(piece)
        self.pos += len(data)

    def _start(self) -> None:
        self._future = Future()
        self._q = queue.Queue(QUEUE_ITEMS)
        self._q.put_nowait(_Piece(0, b"".join(self._buffered), False))
        self._buffered = []
        threading.Thread(target=self._run, name="fsobj-stream", daemon=True).start()

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        fut = self._future
        assert fut is not None
        try:
            keys = self._keys = self.view.current_keys()
            written = self.store.payloads.write_pieces(self._pieces(), keys, self.view.id, stored=self._chunk_stored)
            fut.set_result(written)
        except BaseException as e:  # _Aborted, or a real failure: the commit then reads the staging
            fut.set_exception(e)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _pieces(self) -> Iterator[bytes]:
        """The written bytes from the queue; each owed piece is held until it is stored."""
        while True:
            item = self._q.get()
            if item is _ABORT or self.aborted:
                if isinstance(item, _Piece) and item.owed:
                    self._held.append(item)
                raise _Aborted()
            if item is _EOF:
                return
            assert isinstance(item, _Piece)
            if item.owed:
                with self._lock:
                    self._held.append(item)
            yield item.data

    def _chunk_stored(self, ref: ChunkRef) -> None:
        with self._lock:
            self._stored.append((self._stored_end, ref))
            self._stored_end += ref.length
            held = self._held
            while held and held[0].off + len(held[0].data) <= self._stored_end:
                held.popleft()

    # ------------------------------------------------------------ reading (worker thread)
    def read_owed(self, start: int, end: int) -> bytes:
        """Blocking: the bytes of [start, end) (within what was fed since ``spill_to``)
        from the stream itself, without ending it: from the pieces it holds or still has
        queued, or read back from the chunks it stored."""
        assert self._owed_from <= start <= end <= self.pos
        for _ in range(1000):
            with self._q.mutex:  # first the queue: a piece the thread takes meanwhile is in it
                queued = [p for p in self._q.queue if isinstance(p, _Piece)]
            with self._lock:
                stored = [(off, ref) for off, ref in self._stored if off < end and off + ref.length > start]
                pieces = [*self._held, *queued, *self._late]
            for use in ([], stored):  # the pieces alone first: then no chunk is read back
                try:
                    return b"".join(view for _, view in self._segments(start, end, use, pieces))
                except _Gap:
                    continue
            time.sleep(0.001)  # the thread had taken a piece off the queue but not yet held it
        raise OSError(errno.EIO, f"the staged bytes from {start} to {end} are not in the stream")

    def _segments(
        self, start: int, end: int, stored: list[tuple[int, ChunkRef]], pieces: list[_Piece]
    ) -> Iterator[tuple[int, memoryview]]:
        """The bytes of [start, end) in order, as (offset, view): from the stored chunks
        (read back and verified) as far as they reach, then from the pieces (in any order,
        overlapping). Raises :class:`_Gap` where neither has the next byte."""
        pos = start
        for off, ref in stored:
            if off + ref.length <= pos:
                continue
            if off > pos or pos >= end:
                break
            assert self._keys is not None
            stop = min(end, off + ref.length)
            yield pos, memoryview(self.store.payloads.read_chunk(ref, self._keys, self.view.id))[pos - off : stop - off]
            pos = stop
        for p in sorted(pieces, key=lambda p: p.off):
            if p.off + len(p.data) <= pos:
                continue
            if p.off > pos or pos >= end:
                break
            stop = min(end, p.off + len(p.data))
            yield pos, memoryview(p.data)[pos - p.off : stop - p.off]
            pos = stop
        if pos < end:
            raise _Gap(pos)

    # ------------------------------------------------------------ ending
    def finish(self) -> WrittenPayload | None:
        """Blocking (worker thread): end the stream and wait for its payload. None if it
        failed: then the owed bytes are in the spill file first (OSError if they cannot
        be), and the commit reads the staging. A payload returned must be passed on
        with :meth:`close` or refused with :meth:`give_back`."""
        if self._future is None or self.aborted:
            return None
        while not self._future.done():  # a thread that died does not read the queue any more
            try:
                self._q.put(_EOF, timeout=0.1)
                break
            except queue.Full:
                continue
        try:
            return self._future.result()
        except BaseException:
            self._pay()
            return None

    def close(self) -> None:
        """The payload of :meth:`finish` is used: nothing is owed any more."""
        if self._spill_fd >= 0:
            os.close(self._spill_fd)
            self._spill_fd = -1

    def give_back(self) -> None:
        """Blocking: the payload of :meth:`finish` is not used (the key rotated): the
        owed bytes go to the spill file (OSError if they cannot)."""
        self._pay()

    def abort(self) -> None:
        """Blocking (a worker thread, when the stream owes bytes): stop the thread; when it
        has ended, write the owed bytes to the spill file (OSError if they cannot be).
        The staging is authoritative again when this returns."""
        if self.aborted:
            return
        self._stop()
        if self._future is not None:
            self._pay()

    def discard(self) -> None:
        """Stop the thread without waiting for it: the staging is being dropped."""
        if self.aborted:
            return
        self._stop()
        self.close()

    def _stop(self) -> None:
        self.aborted = True
        self._buffered = []
        if self._future is None:
            return
        self._late.extend(self._drain())
        try:
            self._q.put_nowait(_ABORT)
        except queue.Full:
            pass  # a blocked feeder refilled it: the reader sees ``aborted`` on its next item

    def _drain(self) -> list[_Piece]:
        out = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, _Piece):
                out.append(item)

    def _pay(self) -> None:
        """Write every owed byte to the spill file, then let go of it: the stored chunks
        from ``_owed_from`` on, then the pieces held, taken back or fed late."""
        if self._spill_fd < 0:
            return
        assert self._future is not None
        try:
            self._future.exception()  # waits for the thread; the outcome does not matter here
        except BaseException:
            pass
        pieces = [*self._held, *self._late, *(p for p in self._drain() if p.owed)]
        self._held.clear()
        self._late = []
        try:
            self._write_owed(pieces)
        except OSError:
            raise
        except Exception as e:  # a stored chunk that does not read back (IntegrityError, ...)
            raise OSError(errno.EIO, f"the staged bytes could not be read back: {e}") from e
        finally:
            self.close()

    def _write_owed(self, pieces: list[_Piece]) -> None:
        try:
            for off, view in self._segments(self._owed_from, self.pos, self._stored, pieces):
                pwrite_all(self._spill_fd, view, off)
        except _Gap as gap:
            raise OSError(errno.EIO, f"the staged bytes from {gap.pos} to {self.pos} were lost") from None
