"""Streaming writes: a file written sequentially from offset 0 is chunked and
encrypted while the writes arrive, so that only the header waits for close.

Owns: one background thread per stream running ``store.payloads.write`` over a
queue of the written bytes. The staging (``fsobj.fs.staging``) holds every
written byte as well, so reads, conflict copies and the fallback need nothing
from here: a stream is only an early copy of what the staging holds. It is
used by the commit only while every write since offset 0 was an append and its
length equals the staged size; anything else (a write elsewhere, a truncate)
aborts it, and the commit reads the staging as before. The blobs of an aborted
stream are unreferenced and left to gc.

Once the staging has spilled to its file (``spill_to``), the appends are not
written to the spill file by the event loop: each queued piece carries its
offset and the stream thread writes it there before chunking it, off the event
loop; a read of the open file waits until the bytes it reads are there
(:meth:`PayloadStream.wait_spilled`). Whatever the thread has not taken when
the stream is aborted, or when it failed, is written by
:meth:`PayloadStream.abort` (under a lock, so every piece lands exactly once);
after ``abort`` returns the spill file is complete.

Small files never start a thread: the first ``START_AT`` bytes are only
buffered, and a file closed before it reaches them commits from the staging.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future

from fsobj.store import PartitionView, Store
from fsobj.store.payload import WrittenPayload

START_AT = 1024 * 1024  # bytes buffered before the thread starts
QUEUE_ITEMS = 16  # writes in flight to the thread (FUSE writes are up to 1 MiB: ~16 MiB)


class _Aborted(Exception):
    pass


_EOF = object()
_ABORT = object()
_NO_QUEUE: queue.Queue[object] = queue.Queue(0)  # shared placeholder: always empty, never put to


def _queued_pieces(q: queue.Queue[object], stream: PayloadStream) -> Iterator[bytes]:
    """The written bytes from the queue, each written to the spill file first (if it goes there)."""
    while True:
        item = q.get()
        if item is _ABORT or stream.aborted:
            if isinstance(item, _Piece):
                stream.spill([item])  # abort drains the rest
            raise _Aborted()
        if item is _EOF:
            return
        assert isinstance(item, _Piece)
        stream.spill([item])
        yield item.data


class _Piece:
    """Written bytes at ``off``; ``spill``: the staging's file does not have them yet."""

    __slots__ = ("data", "off", "spill")

    def __init__(self, off: int, data: bytes, spill: bool) -> None:
        self.off, self.data, self.spill = off, data, spill


class PayloadStream:
    """The payload of an open file, written by a thread while the file is being written."""

    def __init__(self, store: Store, view: PartitionView) -> None:
        self.store = store
        self.view = view
        self.pos = 0  # bytes fed so far (the next append must start here)
        self.aborted = False
        self._buffered: list[bytes] = []
        self._q: queue.Queue[object] = _NO_QUEUE  # made when the thread starts: most files are small
        self._future: Future[WrittenPayload] | None = None
        self._spill_fd = -1  # our own descriptor of the staging's spill file (spill_to)
        self._spilled = threading.Condition()  # guards the spill file's writes and the two below
        self._unwritten: list[_Piece] = []  # pieces whose spill write failed: abort retries them
        self._spilled_end = 0  # the spill file holds every fed byte below this

    @property
    def started(self) -> bool:
        return self._future is not None

    @property
    def spilling(self) -> bool:
        """Whether appends fed now are written to the spill file by this stream."""
        return self._spill_fd >= 0 and not self.aborted

    def spill_to(self, fd: int) -> None:
        """From now on the caller does not write fed bytes to the staging file ``fd``:
        the stream does (see the module docstring). Only once the thread runs."""
        assert self.started and self._spill_fd < 0
        self._spill_fd = os.dup(fd)
        self._spilled_end = self.pos

    def wait_spilled(self, end: int) -> None:
        """Blocking (worker thread): until the spill file holds every fed byte below ``end``
        (the thread takes pieces in order) or the stream ended."""
        with self._spilled:
            while self._spilled_end < min(end, self.pos) and not self._future_done():
                self._spilled.wait(0.1)
        if self._future_done():
            self.spill(self._drain())  # a thread that failed left pieces in the queue
        if self._unwritten:
            raise OSError(errno.EIO, "staged writes could not reach the spill file")

    def _future_done(self) -> bool:
        return self._future is None or self._future.done()

    def spill(self, pieces: list[_Piece]) -> None:
        """Write pieces to the spill file (each exactly once). A failure keeps them for
        :meth:`abort` to retry."""
        with self._spilled:
            for p in pieces:
                if not p.spill:
                    continue
                if self._spill_fd < 0:  # let go already: cannot happen while callers hold the file's lock
                    self._unwritten.append(p)
                    p.spill = False
                    continue
                try:
                    view, off = memoryview(p.data), p.off
                    while view:
                        n = os.pwrite(self._spill_fd, view, off)
                        view, off = view[n:], off + n
                except OSError:
                    self._unwritten.append(p)
                p.spill = False
                self._spilled_end = max(self._spilled_end, p.off + len(p.data))
                self._spilled.notify_all()

    def feed(self, data: bytes) -> bool:
        """Hand over the next bytes without blocking; False if the queue is full
        (then call :meth:`feed_blocking` in a worker thread)."""
        if self._future is None:
            self.pos += len(data)
            self._buffered.append(bytes(data))
            if self.pos >= START_AT:
                self._start()
            return True
        try:
            self._q.put_nowait(_Piece(self.pos, bytes(data), self._spill_fd >= 0))
        except queue.Full:
            return False
        self.pos += len(data)
        return True

    def feed_blocking(self, data: bytes) -> None:
        """Blocking :meth:`feed` (worker thread); gives up if the stream is aborted
        (then writes the bytes to the spill file itself, if they were to go there)."""
        piece = _Piece(self.pos, bytes(data), self._spill_fd >= 0)
        while not self.aborted:
            try:
                self._q.put(piece, timeout=0.1)
            except queue.Full:
                continue
            self.pos += len(data)
            return
        self.spill([piece])
        self.pos += len(data)

    def _start(self) -> None:
        self._future = Future()
        self._q = queue.Queue(QUEUE_ITEMS)
        self._q.put_nowait(_Piece(0, b"".join(self._buffered), False))
        self._buffered = []
        threading.Thread(target=self._run, name="fsobj-stream", daemon=True).start()

    def _run(self) -> None:
        fut = self._future
        assert fut is not None
        try:
            keys = self.view.current_keys()
            fut.set_result(self.store.payloads.write_pieces(_queued_pieces(self._q, self), keys, self.view.id))
        except BaseException as e:  # _Aborted, or a real failure: the commit then reads the staging
            fut.set_exception(e)

    def finish(self) -> WrittenPayload | None:
        """Blocking (worker thread): end the stream and wait for its payload; None if it
        failed (then the spill file is made complete first: the commit reads the staging)."""
        if self._future is None or self.aborted:
            return None
        while not self._future.done():  # a thread that died does not read the queue any more
            try:
                self._q.put(_EOF, timeout=0.1)
                break
            except queue.Full:
                continue
        try:
            written = self._future.result()
        except BaseException:
            self._settle()
            return None
        self._settle()  # the thread took every piece: only closes our descriptor
        return written

    def abort(self) -> None:
        """Stop the thread (it exits at its next read); the staging stays authoritative.
        When the stream writes the spill file, this waits for the thread and writes what
        it did not take, so the spill file is complete when it returns (OSError if not)."""
        if self.aborted:
            return
        self.aborted = True
        self._buffered = []
        if self._future is None:
            return
        self.spill(self._drain())
        try:
            self._q.put_nowait(_ABORT)
        except queue.Full:
            pass  # a blocked feeder refilled it: the reader sees ``aborted`` on its next item
        self._settle()

    def _drain(self) -> list[_Piece]:
        out = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, _Piece):
                out.append(item)

    def _settle(self) -> None:
        """Make the spill file complete and let go of it: wait for the thread to end, write
        the pieces it left in the queue, retry failed writes."""
        if self._spill_fd < 0:
            return
        assert self._future is not None
        try:
            self._future.exception()  # waits; the outcome does not matter here
        except BaseException:
            pass
        self.spill(self._drain())
        with self._spilled:
            failed, self._unwritten = self._unwritten, []
        for p in failed:
            p.spill = True
        self.spill(failed)
        if self._unwritten:
            raise OSError(errno.EIO, f"{len(self._unwritten)} staged writes could not reach the spill file")
        os.close(self._spill_fd)
        self._spill_fd = -1
