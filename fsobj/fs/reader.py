"""Random access to one committed version's payload: chunk lookup, a small
cache of decrypted chunks, and read-ahead.

Owns: turning (offset, size) into chunk fetches. Each fetch (blob read,
AES-GCM, keyed-hash check against the chunk id named by the signed header)
runs on the store's payload thread pool (``PayloadIO.pool``); trio awaits the
future without blocking the event loop or parking a worker thread. When reads
are sequential, the next ``READ_AHEAD`` chunks are fetched before they are
asked for, and each fetch first hints the blob ``PREFETCH`` chunks further on
(``BlobStore.prefetch``); random reads hint nothing. The whole-payload
checksum is not re-checked here: every chunk is authenticated on its own, and
the chunk list comes from the verified header.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TypeVar

import trio

from fsobj.model.header import ChunkRef
from fsobj.store import PartitionView, Store, Version
from fsobj.store.payload import PREFETCH

CACHE_CHUNKS = 12
READ_AHEAD = 8
INLINE_CHUNK = 64 * 1024  # a single chunk up to this size is read on the trio thread

T = TypeVar("T")


async def wait_future(fut: Future[T]) -> T:
    """Await a ``concurrent.futures.Future`` from trio."""
    if not fut.done():
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        await done.wait()
    return fut.result()


class PayloadReader:
    """Reads one version's payload by offset (shared by every handle of a file)."""

    def __init__(self, store: Store, view: PartitionView, version: Version) -> None:
        self.store = store
        self.view = view
        self.version = version
        self.length = version.length
        self._refs: list[ChunkRef] | None = None
        self._offsets: list[int] = []
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._pending: dict[int, Future[bytes]] = {}
        self._waiting: collections.Counter[int] = collections.Counter()  # readers awaiting a pending chunk
        self._last = -2

    # ------------------------------------------------------------ chunk list
    def load_refs(self) -> None:
        """Blocking (may read chunk-list nodes): call in a worker thread."""
        if self._refs is not None:
            return
        keys = self.view.epoch_keys(self.version.header.epoch)
        refs = self.store.payloads.chunk_refs(self.version.header, keys)
        offsets, pos = [], 0
        for r in refs:
            offsets.append(pos)
            pos += r.length
        self._offsets, self._refs = offsets, refs

    def _submit(self, i: int, hint_until: int = -1) -> Future[bytes]:
        """Fetch chunk ``i`` in the pool; a sequential reader (``hint_until``: the last
        chunk it will want) also hints the blob ``PREFETCH`` chunks further on."""
        assert self._refs is not None
        keys = self.view.epoch_keys(self.version.header.epoch)
        j = i + PREFETCH
        ahead = self._refs[j] if j <= hint_until else None
        return self.store.payloads.pool.submit(self.store.payloads.read_chunk, self._refs[i], keys, self.view.id, ahead)

    # ------------------------------------------------------------ async reads
    async def read(self, off: int, n: int, limiter: trio.CapacityLimiter | None = None) -> bytes | memoryview:
        """Bytes [off, off+n) clipped to the payload; a view into a cached chunk when the
        range lies in one chunk (no copy)."""
        end = min(off + n, self.length)
        if off >= end:
            return b""
        data = self.version.header.data
        if data is not None:  # a small payload carried by the (verified) header
            return memoryview(data)[off:end]
        if self._refs is None:
            if self.version.header.chunks is not None:
                self.load_refs()  # an inline chunk list: no I/O
            else:
                await trio.to_thread.run_sync(self.load_refs, limiter=limiter)
        out = []
        pos = off
        while pos < end:
            i = bisect.bisect_right(self._offsets, pos) - 1
            chunk = await self._chunk(i)
            s = pos - self._offsets[i]
            piece = memoryview(chunk)[s : s + (end - pos)]
            out.append(piece)
            pos += len(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    async def _chunk(self, i: int) -> bytes:
        # the kernel's read-ahead keeps several reads in flight, answered out of order
        sequential = self._last - READ_AHEAD <= i <= self._last + 2
        self._last = max(i, self._last) if sequential else i
        if sequential:
            self._read_ahead(i)
        data = self._cache.get(i)
        if data is not None:
            self._cache.move_to_end(i)
            return data
        fut = self._pending.get(i)  # left in place while awaited: concurrent readers share it
        if fut is None and self._refs is not None and self._refs[i].length <= INLINE_CHUNK and len(self._refs) == 1:
            # a small file in one small chunk: decrypting it here costs less than a thread hop
            keys = self.view.epoch_keys(self.version.header.epoch)
            return self._keep(i, self.store.payloads.read_chunk(self._refs[i], keys, self.view.id))
        if fut is None:
            fut = self._pending[i] = self._submit(i, len(self._refs) - 1 if sequential and self._refs else -1)
        self._waiting[i] += 1
        try:
            data = await wait_future(fut)
        finally:
            self._waiting[i] -= 1
            if not self._waiting[i]:
                del self._waiting[i]
        if self._pending.get(i) is fut:
            del self._pending[i]
        return self._keep(i, data)

    def _keep(self, i: int, data: bytes) -> bytes:
        """Cache chunk ``i`` (the least recently used goes) and return it."""
        self._cache[i] = data
        while len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    def _read_ahead(self, i: int) -> None:
        assert self._refs is not None
        for j in range(i + 1, min(i + 1 + READ_AHEAD, len(self._refs))):
            if j not in self._cache and j not in self._pending:
                self._pending[j] = self._submit(j, len(self._refs) - 1)
        for j in [j for j in self._pending if j < i - READ_AHEAD and j not in self._waiting]:
            self._pending.pop(j).cancel()  # read-ahead nobody asked for: the reader jumped away

    def close(self) -> None:
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
        self._cache.clear()

    # ------------------------------------------------------------ blocking reads
    def iter_range(self, start: int, end: int, window: int = READ_AHEAD) -> Iterator[bytes]:
        """Blocking: yield the bytes of [start, end) in order (for commit streams)."""
        data = self.version.header.data
        if data is not None:
            if start < min(end, self.length):
                yield data[start:end]
            return
        self.load_refs()
        assert self._refs is not None
        end = min(end, self.length)
        if start >= end:
            return
        first = bisect.bisect_right(self._offsets, start) - 1
        last = bisect.bisect_right(self._offsets, end - 1) - 1
        futures: collections.deque[tuple[int, Future[bytes] | bytes]] = collections.deque()
        nxt = first
        try:
            while futures or nxt <= last:
                while nxt <= last and len(futures) < window:
                    cached = self._cache.get(nxt)
                    futures.append((nxt, cached if cached is not None else self._submit(nxt, last)))
                    nxt += 1
                i, item = futures.popleft()
                data = item if isinstance(item, bytes) else item.result()
                lo = max(start - self._offsets[i], 0)
                hi = min(end - self._offsets[i], len(data))
                yield data[lo:hi]
        finally:
            for _, item in futures:
                if isinstance(item, Future):
                    item.cancel()
