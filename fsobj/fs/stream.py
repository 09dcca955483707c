"""Streaming writes: a file written sequentially from offset 0 is chunked and
encrypted while the writes arrive, so that only the header waits for close.

Owns: one background thread per stream running ``store.payloads.write`` over a
queue of the written bytes. The staging (``fsobj.fs.staging``) still receives
every write, so reads, conflict copies and the fallback need nothing from here:
a stream is only an early copy of what the staging holds. It is used by the
commit only while every write since offset 0 was an append and its length
equals the staged size; anything else (a write elsewhere, a truncate) aborts
it, and the commit reads the staging as before. The blobs of an aborted stream
are unreferenced and left to gc.

Small files never start a thread: the first ``START_AT`` bytes are only
buffered, and a file closed before it reaches them commits from the staging.
"""

from __future__ import annotations

import io
import queue
import threading
from concurrent.futures import Future

from fsobj.store import PartitionView, Store
from fsobj.store.payload import WrittenPayload

START_AT = 1024 * 1024  # bytes buffered before the thread starts
QUEUE_ITEMS = 64  # writes in flight to the thread (FUSE writes are up to 128 KiB: ~8 MiB)


class _Aborted(Exception):
    pass


_EOF = object()
_ABORT = object()


class _QueueReader(io.RawIOBase):
    """A readable stream over the queue of written byte strings."""

    def __init__(self, q: queue.Queue[object], stream: PayloadStream) -> None:
        self._q = q
        self._stream = stream
        self._buf = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            if self._eof:
                return 0
            item = self._q.get()
            if item is _ABORT or self._stream.aborted:
                raise _Aborted()
            if item is _EOF:
                self._eof = True
                return 0
            self._buf = memoryview(item)  # type: ignore[arg-type]
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class PayloadStream:
    """The payload of an open file, written by a thread while the file is being written."""

    def __init__(self, store: Store, view: PartitionView) -> None:
        self.store = store
        self.view = view
        self.pos = 0  # bytes fed so far (the next append must start here)
        self.aborted = False
        self._buffered: list[bytes] = []
        self._q: queue.Queue[object] = queue.Queue(QUEUE_ITEMS)
        self._future: Future[WrittenPayload] | None = None

    @property
    def started(self) -> bool:
        return self._future is not None

    def feed(self, data: bytes) -> bool:
        """Hand over the next bytes without blocking; False if the queue is full
        (then call :meth:`feed_blocking` in a worker thread)."""
        self.pos += len(data)
        if self._future is None:
            self._buffered.append(bytes(data))
            if self.pos >= START_AT:
                self._start()
            return True
        try:
            self._q.put_nowait(bytes(data))
        except queue.Full:
            self.pos -= len(data)
            return False
        return True

    def feed_blocking(self, data: bytes) -> None:
        """Blocking :meth:`feed` (worker thread); gives up if the stream is aborted."""
        data = bytes(data)
        while not self.aborted:
            try:
                self._q.put(data, timeout=0.1)
            except queue.Full:
                continue
            self.pos += len(data)
            return

    def _start(self) -> None:
        self._future = Future()
        self._q.put_nowait(b"".join(self._buffered))
        self._buffered = []
        threading.Thread(target=self._run, name="fsobj-stream", daemon=True).start()

    def _run(self) -> None:
        fut = self._future
        assert fut is not None
        try:
            keys = self.view.current_keys()
            fut.set_result(self.store.payloads.write(_QueueReader(self._q, self), keys, self.view.id))
        except BaseException as e:  # _Aborted, or a real failure: the commit then reads the staging
            fut.set_exception(e)

    def finish(self) -> WrittenPayload | None:
        """Blocking (worker thread): end the stream and wait for its payload; None if it failed."""
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
            return None

    def abort(self) -> None:
        """Stop the thread (it exits at its next read); the staging stays authoritative."""
        if self.aborted:
            return
        self.aborted = True
        self._buffered = []
        if self._future is None:
            return
        while True:
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        try:
            self._q.put_nowait(_ABORT)
        except queue.Full:
            pass  # a blocked feeder refilled it: the reader sees ``aborted`` on its next item
