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

A sequential reader decrypts into its *arena*: one buffer in which each chunk
sits at its payload offset modulo the arena's size, so neighbouring chunks lie
side by side and a read across them is answered with one slice, neither joined
nor freshly allocated. Rules that keep a slice valid (all on the trio thread):
a chunk's region is given to another chunk only when nothing holds the chunk
(no fetch in flight, no reader waiting for it or pinning it); a read pins its
chunks until it returns; pyfuse3 copies the reply before any other task runs.
Callers that keep bytes across an ``await`` ask for a copy (``keep=True``).
The arenas of a mount share one budget (``fsobj.fs.budget``): without one, every
file being read sequentially held 20 MiB, and 32 files read at once took the
daemon to 710 MiB. Chunks cached in their own buffers beyond ``LEAN_CACHE`` per
reader (a file read at random) are counted in the same budget. A sequential
reader that finds the budget spent reads *lean*
(each chunk in its own buffer, ``LEAN_AHEAD`` chunks ahead, ``LEAN_CACHE`` kept)
and asks again at its next fetch.

When a commit gives an open file a new version, its reader is *retired*
(``retire``): read-ahead nobody waits for is cancelled unless it has started,
and it reads no further ahead; reads already waiting for its chunks finish.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TypeVar

import trio

from fsobj import chunking
from fsobj.fs.budget import ByteBudget, Share
from fsobj.model.header import ChunkRef
from fsobj.store import PartitionView, Store, Version
from fsobj.store.payload import PREFETCH

CACHE_CHUNKS = 12
READ_AHEAD = 8
INLINE_CHUNK = 64 * 1024  # a single chunk up to this size is read on the trio thread
ARENA = 16 * 1024 * 1024  # a sequential reader's chunks are decrypted into this much memory (plus the largest chunk)
LEAN_AHEAD = 1  # chunks read ahead by a sequential reader that found no room for an arena
LEAN_CACHE = 2  # chunks such a reader keeps

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
    """Reads one version's payload by offset (shared by every handle of a file).
    ``budget``: the mount's for reads, where its arena and the chunks it caches
    beyond ``LEAN_CACHE`` are counted (None: not counted)."""

    def __init__(self, store: Store, view: PartitionView, version: Version, budget: ByteBudget | None = None) -> None:
        self.store = store
        self.view = view
        self.version = version
        self.length = version.length
        self._refs: list[ChunkRef] | None = None
        self._offsets: list[int] = []
        self._cache: collections.OrderedDict[int, bytes | memoryview] = collections.OrderedDict()
        self._pending: dict[int, Future[bytes] | Future[memoryview]] = {}
        self._waiting: collections.Counter[int] = collections.Counter()  # readers awaiting a pending chunk
        self._pins: collections.Counter[int] = collections.Counter()  # reads holding a chunk's bytes
        self._arena: bytearray | None = None
        self._ring = 0  # a chunk at payload offset o sits at o % _ring in the arena
        self._where: dict[int, int] = {}  # chunk -> its start in the arena, until another chunk takes the place
        self._last = -2
        self._retired = False  # a newer version's reader took over: read no further ahead
        self._share = Share(budget)  # the arena's bytes in the mount's budget for reads
        self._cache_share = Share(budget)  # cached chunks in their own buffers, beyond LEAN_CACHE
        self._lean = False  # sequential, and the budget had no room for an arena

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

    def _submit(self, i: int, hint_until: int = -1, arena: bool = False) -> Future[bytes] | Future[memoryview]:
        """Fetch chunk ``i`` in the pool; a sequential reader (``hint_until``: the last
        chunk it will want) also hints the blob ``PREFETCH`` chunks further on.
        ``arena``: into the arena if its place there is free (trio thread only)."""
        assert self._refs is not None
        keys = self.view.epoch_keys(self.version.header.epoch)
        j = i + PREFETCH
        ahead = self._refs[j] if j <= hint_until else None
        payloads = self.store.payloads
        start = self._place(i) if arena else None
        if start is None:
            return payloads.pool.submit(payloads.read_chunk, self._refs[i], keys, self.view.id, ahead)
        assert self._arena is not None
        out = memoryview(self._arena)[start : start + self._refs[i].length]
        return payloads.pool.submit(payloads.read_chunk_into, self._refs[i], keys, self.view.id, out, ahead)

    def _place(self, i: int) -> int | None:
        """Where chunk ``i`` goes in the arena, taking the place from the chunks there
        that nothing holds; None if one is held (the chunk then gets its own buffer)."""
        assert self._refs is not None
        if not self._ensure_arena():
            return None
        assert self._arena is not None
        a = self._offsets[i] % self._ring
        b = a + self._refs[i].length
        if b > len(self._arena):
            return None
        overlapping = [j for j, ja in self._where.items() if ja < b and a < ja + self._refs[j].length]
        for j in overlapping:
            fut = self._pending.get(j)
            if self._pins[j] or self._waiting[j] or (fut is not None and not fut.done()):
                return None
        for j in overlapping:
            del self._where[j]
            self._cache.pop(j, None)
            self._pending.pop(j, None)  # done, and nobody waits: read-ahead given up
        if overlapping:
            self._recount()
        self._where[i] = a
        return a

    def _ensure_arena(self) -> bool:
        """Whether there is an arena, allocating it if the budget has room (trio thread)."""
        if self._arena is not None:
            return True
        if self._refs is None or len(self._refs) < 2 or self._retired:
            return False
        ring = min(ARENA, self.length)
        size = ring + (chunking.LARGEST if self.length > ring else 0)
        if not self._share.grow_to(size):
            self._lean = True
            return False
        self._ring, self._arena, self._lean = ring, bytearray(size), False
        return True

    # ------------------------------------------------------------ async reads
    async def read(
        self, off: int, n: int, limiter: trio.CapacityLimiter | None = None, keep: bool = False
    ) -> bytes | memoryview:
        """Bytes [off, off+n) clipped to the payload. Without ``keep`` the answer may be
        a view into the cache or the arena, valid until the caller's next ``await``; with
        it, ``bytes`` or a view of a chunk's own ``bytes`` (immutable), never of the arena."""
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
        first = bisect.bisect_right(self._offsets, off) - 1
        last = bisect.bisect_right(self._offsets, end - 1) - 1
        chunks: list[bytes | memoryview] = []
        try:
            for i in range(first, last + 1):
                chunks.append(await self._chunk(i))
                self._pins[i] += 1  # its place in the arena stays its own until this read returns
            lo = off - self._offsets[first]
            if self._side_by_side(first, last, chunks):
                assert self._arena is not None
                a = self._where[first] + lo
                out: bytes | memoryview = memoryview(self._arena)[a : a + (end - off)]
            elif first == last:
                out = memoryview(chunks[0])[lo : lo + (end - off)]
            else:
                pieces = [memoryview(c) for c in chunks]
                pieces[0] = pieces[0][lo:]
                pieces[-1] = pieces[-1][: end - self._offsets[last]]
                return b"".join(pieces)
            return bytes(out) if keep and isinstance(chunks[0], memoryview) else out
        finally:
            for i in range(first, first + len(chunks)):
                self._pins[i] -= 1
                if not self._pins[i]:
                    del self._pins[i]

    def _side_by_side(self, first: int, last: int, chunks: list[bytes | memoryview]) -> bool:
        """Chunks ``first..last`` lie one after another in the arena."""
        if not isinstance(chunks[0], memoryview) or first not in self._where:
            return False
        assert self._refs is not None
        pos = self._where[first]
        for i, c in zip(range(first, last + 1), chunks, strict=True):
            if not isinstance(c, memoryview) or self._where.get(i) != pos:
                return False
            pos += self._refs[i].length
        return True

    async def _chunk(self, i: int) -> bytes | memoryview:
        # the kernel's read-ahead keeps several reads in flight, answered out of order
        sequential = self._last - READ_AHEAD <= i <= self._last + READ_AHEAD
        self._last = max(i, self._last) if sequential else i
        if sequential and not self._retired:
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
            until = len(self._refs) - 1 if sequential and self._refs else -1
            fut = self._pending[i] = self._submit(i, until, arena=sequential)
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

    def _keep(self, i: int, data: T) -> T:
        """Cache chunk ``i`` (the least recently used goes) and return it.

        Every reader may keep ``LEAN_CACHE`` chunks; beyond that, chunks in their
        own buffers (random reads, lean reads: not the arena, counted already) are
        kept only while the budget has room for all of them. Without that, every
        file read at random kept up to ``CACHE_CHUNKS`` chunks of up to 4 MiB."""
        self._cache[i] = data
        while len(self._cache) > (LEAN_CACHE if self._lean else CACHE_CHUNKS):
            self._cache.popitem(last=False)
        own = sum(map(self._own_len, self._cache.values()))
        while len(self._cache) > LEAN_CACHE and not self._cache_share.grow_to(own):
            own -= self._own_len(self._cache.popitem(last=False)[1])
        self._recount(own)
        return data

    def _recount(self, own: int | None = None) -> None:
        """Hold in the budget what the cache holds beyond the first ``LEAN_CACHE`` chunks
        (``own``: the bytes of its own buffers, if the caller has them)."""
        if len(self._cache) <= LEAN_CACHE:
            self._cache_share.shrink_to(0)
        else:
            self._cache_share.shrink_to(sum(map(self._own_len, self._cache.values())) if own is None else own)

    def _own_len(self, data: bytes | memoryview) -> int:
        """The bytes a cached chunk holds apart from the arena (0 for a view of the arena)."""
        return 0 if isinstance(data, memoryview) and data.obj is self._arena else len(data)

    def _read_ahead(self, i: int) -> None:
        assert self._refs is not None
        # ahead by at most half an arena that wraps: the chunks being read keep their places
        limit = self._offsets[i] + ARENA // 2 if self.length > ARENA else self.length
        ahead = READ_AHEAD if self._ensure_arena() or not self._lean else LEAN_AHEAD
        for j in range(i + 1, min(i + 1 + ahead, len(self._refs))):
            if self._offsets[j] + self._refs[j].length > limit:
                break
            if j not in self._cache and j not in self._pending:
                self._pending[j] = self._submit(j, len(self._refs) - 1, arena=True)
        for j in [j for j in self._pending if j < i - READ_AHEAD and j not in self._waiting]:
            # read-ahead nobody asked for: the reader jumped away
            if self._pending[j].cancel():
                del self._pending[j]
                self._where.pop(j, None)
            elif j not in self._where:
                del self._pending[j]
            # else: it is writing into the arena; it stays pending until done and its place is needed

    def retire(self) -> None:
        """A newer version replaced this one: read-ahead that nobody waits for and that
        has not started is cancelled, and no more is started. Reads still waiting for a
        chunk of this version get it; a fetch already running finishes and keeps its
        place in the arena (it is still in ``_pending``, so no other chunk is put there).
        The arena leaves the budget now; it is freed once those reads and fetches end."""
        self._retired = True
        self._share.shrink_to(0)
        self._cache_share.shrink_to(0)
        for i in [i for i, fut in self._pending.items() if not self._waiting[i] and fut.cancel()]:
            del self._pending[i]
            self._where.pop(i, None)
        self._cache.clear()

    def close(self) -> None:
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
        self._cache.clear()
        self._where.clear()
        self._share.shrink_to(0)
        self._cache_share.shrink_to(0)
        self._arena = None  # a fetch still running keeps it alive until it ends

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
                    if not isinstance(cached, bytes):  # None, or a view into the arena, which trio may reuse
                        cached = None
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
