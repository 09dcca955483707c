"""Payload streams: chunk, identify, encrypt and store; fetch, verify and decrypt.

Owns: the pipeline between a byte stream and the chunk blobs of one version,
including the chunk-list tree of large payloads (linked child objects). Work
per chunk (keyed hash, AES-GCM, blob write) runs in a shared thread
pool with a bounded window, so memory stays at ``window x`` the largest chunk
whatever the payload size. Where to cut is the store's chunker parameter set
(``fsobj.chunking``), which this class is given. Never touches SQL.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import io
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from fsobj import chunking, crypto
from fsobj.blobs import BlobStore
from fsobj.errors import FormatError, IntegrityError, NotFoundError
from fsobj.model.checksum import BLOCK_SIZE, BlockHasher, blocks_of, check_blocks, checksum_of
from fsobj.model.header import (
    BLOCK_LIST_TYPE,
    CHUNK_LIST_TYPE,
    MAX_INLINE_CHUNKS,
    MAX_INLINE_DATA,
    ChunkRef,
    VersionHeader,
    decode_chunk_list,
    encode_chunk_list,
)

log = logging.getLogger(__name__)

TREE_FANOUT = 1024
WINDOW = 12  # chunks in flight per stream (write) and read-ahead (read)
EMPTY_CHECKSUM = checksum_of([])  # the payload checksum of zero bytes
PREFETCH = 8  # a read hints the blob this many chunks further on (BlobStore.prefetch)

Progress = Callable[[int], None]
Stored = Callable[[ChunkRef], None]  # told each new chunk, in payload order, once its blob is written


@dataclass
class WrittenPayload:
    length: int
    checksum: bytes
    chunks: tuple[ChunkRef, ...] | None
    tree: tuple[bytes, int] | None
    refs: list[bytes] = field(default_factory=list)  # every payload blob id (chunks + nodes)
    new_blobs: int = 0
    new_bytes: int = 0  # bytes of blob data actually written (after dedup)
    epoch: int = -1  # key epoch the blobs were written under (-1: taken from a previous version)
    inline: bytes | None = None  # a small payload itself: it goes into the header, no blob is written
    # the block list (format 3), inline or as a tree like the chunk list; both None
    # only for a payload reused from a format-1/2 version (plain BLAKE3 checksum)
    blocks: tuple[ChunkRef, ...] | None = None
    block_tree: tuple[bytes, int] | None = None


@dataclass(frozen=True)
class Splice:
    """A payload that differs from a committed one (``base``) only inside ``span``:
    what a small edit of a big file commits (:meth:`PayloadIO.write_splice`).

    ``span`` is [first changed byte, end of the last change) of the new payload,
    None if no byte changed (the length may still differ). Bytes outside it are the
    base's, at the same offsets. ``content(start)`` yields the new payload's bytes
    from ``start`` to its end.
    """

    base: VersionHeader
    length: int
    span: tuple[int, int] | None
    content: Callable[[int], Iterable[bytes | memoryview]]


class _Assembly:
    """The chunk list, block list and checksum of a payload assembled in order from
    new chunks (identified, encrypted and written in the pool, ``WINDOW`` in flight)
    and chunks kept from an earlier payload of the same key epoch (neither read nor
    hashed: their blocks' hashes are kept too, or the bytes are handed to
    :meth:`hash_only`)."""

    def __init__(
        self, io: PayloadIO, keys: crypto.EpochKeys, pid: bytes, progress: Progress | None, stored: Stored | None = None
    ) -> None:
        self.io, self.keys, self.pid, self.progress, self.stored = io, keys, pid, progress, stored
        self.hasher = BlockHasher()
        self.result = WrittenPayload(0, b"", None, None, epoch=keys.epoch)
        self.chunks: list[ChunkRef] = []
        self.pending: collections.deque[tuple[int, Future[tuple[bytes, int]]]] = collections.deque()
        self.checksums: collections.deque[Future[None]] = collections.deque()

    def __enter__(self) -> _Assembly:
        return self

    def __exit__(self, *exc: object) -> None:
        for _, fut in self.pending:  # on error: wait so no worker writes after we return
            fut.cancel()
            try:
                fut.result()
            except Exception:
                pass

    def _checksum_task(self, fn: Callable[..., None], arg: object) -> None:
        """Run ``fn(arg)`` on the hasher in the checksum thread, in submission order."""
        self.checksums.append(self.io.checksum_pool.submit(fn, arg))
        while len(self.checksums) > WINDOW:  # bound the memory queued for the checksum
            self.checksums.popleft().result()

    def hash_only(self, data: bytes | memoryview) -> None:
        """Payload bytes that are in kept chunks but in a block that changed."""
        self._checksum_task(self.hasher.update, data)

    def keep_blocks(self, blocks: list[ChunkRef]) -> None:
        """Blocks of the base that the edit leaves as they are (at a block boundary)."""
        self._checksum_task(self.hasher.extend, [(b.id, b.length) for b in blocks])

    def add_new(self, data: bytes | memoryview) -> None:
        self._checksum_task(self.hasher.update, data)
        self.result.length += len(data)
        if self.progress:
            self.progress(len(data))
        self.pending.append(
            (len(data), self.io.pool.submit(self.io._store, crypto.KIND_CHUNK, self.keys, self.pid, data))
        )
        self._drain(WINDOW)

    def add_kept(self, refs: list[ChunkRef]) -> None:
        for ref in refs:
            kept: Future[tuple[bytes, int]] = Future()
            kept.set_result((ref.id, 0))
            self.pending.append((ref.length, kept))
            self.result.length += ref.length
            if self.progress:
                self.progress(ref.length)

    def _drain(self, limit: int) -> None:
        while len(self.pending) > limit:
            n, fut = self.pending.popleft()
            blob_id, written = fut.result()
            self.chunks.append(ChunkRef(blob_id, n))
            if self.stored is not None:
                self.stored(self.chunks[-1])
            if written:
                self.result.new_blobs += 1
                self.result.new_bytes += written

    def finish(self) -> WrittenPayload:
        self._drain(0)
        if self.checksums:
            self.checksums[-1].result()  # FIFO: every earlier update is done too
        result = self.result
        blocks, result.checksum = self.hasher.finish()
        if self.hasher.length != result.length:
            raise AssertionError("the block hashes do not cover the payload")  # a bug, not bad input
        result.refs = [c.id for c in self.chunks]
        if len(self.chunks) <= MAX_INLINE_CHUNKS:
            result.chunks = tuple(self.chunks)
        else:
            result.tree = self.io._build_tree(self.chunks, self.keys, self.pid, result, CHUNK_LIST_TYPE)
        block_refs = [ChunkRef(h, n) for h, n in blocks]
        if len(block_refs) <= MAX_INLINE_CHUNKS:
            result.blocks = tuple(block_refs)
        else:
            result.block_tree = self.io._build_tree(block_refs, self.keys, self.pid, result, BLOCK_LIST_TYPE)
        return result


def _hash_until(content: Iterator[bytes | memoryview], n: int, asm: _Assembly) -> Iterator[bytes | memoryview]:
    """Hand the first ``n`` bytes of ``content`` to ``asm.hash_only``, then yield the rest."""
    for piece in content:
        if n <= 0:
            yield piece
            continue
        take = min(n, len(piece))
        asm.hash_only(piece[:take])
        n -= take
        if take < len(piece):
            yield piece[take:]


class PayloadIO:
    """Reads and writes payloads of one partition epoch."""

    def __init__(self, blobs: BlobStore, pool: ThreadPoolExecutor, params: chunking.Params) -> None:
        self.blobs = blobs
        self.pool = pool
        self.params = params  # the store's chunker parameter set
        # The whole-payload checksum is sequential: one thread computes it, in
        # submission order (FIFO), beside the chunker (BLAKE3 releases the GIL).
        self.checksum_pool = ThreadPoolExecutor(1, thread_name_prefix="fsobj-checksum")
        self._scratch = threading.local()  # each thread's buffer for the ciphertext of a chunk read

    def close(self) -> None:
        self.checksum_pool.shutdown(wait=True)

    # ------------------------------------------------------------ writing
    def _store(self, kind: int, keys: crypto.EpochKeys, pid: bytes, data: bytes) -> tuple[bytes, int]:
        """Identify, dedup, encrypt and write one payload blob (not yet durable).

        An existing blob of the wrong size (left damaged by a crash before the
        commit's sync) is rewritten instead of being trusted for dedup.
        """
        blob_id = keys.payload_blob_id(kind, data)
        size = len(data) + crypto.ENVELOPE_OVERHEAD
        try:
            if self.blobs.stat(blob_id, size)[0] == size:
                return blob_id, 0
            damaged = True
        except NotFoundError:
            damaged = False
        parts = crypto.seal_blob_parts(kind, keys, pid, blob_id, data)
        return blob_id, size if self.blobs.put(blob_id, parts, fsync=False, replace=damaged) else 0

    def write(
        self, stream: BinaryIO | None, keys: crypto.EpochKeys, pid: bytes, progress: Progress | None = None
    ) -> WrittenPayload:
        """Store the payload read from ``stream`` (None = empty): :meth:`write_pieces`."""
        if stream is None:
            return self._write_small(b"", keys, pid, progress)  # a tombstone: nothing to store
        return self.write_pieces(chunking.read_pieces(stream), keys, pid, progress)

    def write_pieces(
        self,
        pieces: Iterable[bytes | memoryview],
        keys: crypto.EpochKeys,
        pid: bytes,
        progress: Progress | None = None,
        stored: Stored | None = None,
    ) -> WrittenPayload:
        """Store the payload made of ``pieces`` (which must not change once handed over).

        The blobs are written but not yet durable: the caller makes them durable
        (``BlobStore.sync_all``) before a header names them. A payload below the
        chunker's minimum size is one chunk: it is stored in the calling thread,
        without the two thread hand-offs (small files are the common case).
        ``stored`` is told each chunk of a bigger payload once its blob is written
        (in order, from the calling thread), so that a caller can let go of the
        bytes it holds for them.
        """
        it = iter(pieces)
        head: list[bytes | memoryview] = []
        got = 0
        for piece in it:
            head.append(piece)
            got += len(piece)
            if got > self.params.min:
                break
        if got <= self.params.min:
            return self._write_small(b"".join(head), keys, pid, progress)
        with _Assembly(self, keys, pid, progress, stored) as asm:
            for data in chunking.split_pieces(itertools.chain(head, it), keys.cdc_seed, self.params):
                asm.add_new(data)
            return asm.finish()

    def write_splice(
        self, splice: Splice, keys: crypto.EpochKeys, pid: bytes, progress: Progress | None = None
    ) -> WrittenPayload:
        """Store an edited payload, keeping the base's chunks and blocks that the edit
        cannot change.

        The result is the one :meth:`write_pieces` gives for the whole new content
        (the same chunk list, block list and checksum). Only the chunks from the one
        holding the first changed byte up to the first cut after the last changed
        byte that falls on one of the base's cuts are cut, identified and stored
        again. A chunk's cut depends only on its own bytes, unless it starts less
        than the maximum chunk size before the end: so when the length changes, the base's
        last chunks are cut again too. Only the blocks (``BLOCK_SIZE``) from the one
        holding the first re-cut byte to the one holding the last are hashed again
        (their unchanged bytes read through ``content``); the kept chunks are
        neither read nor hashed.
        A base of header format 1 or 2 has no block list, and a base whose block
        list cannot be read back intact is not trusted for one (logged): the whole
        new content is written then. ``keys`` must be the base's key epoch
        (``Store.commit`` checks).
        """
        base = splice.base
        kept = self._blocks_to_keep(base, keys)
        if kept is None:
            return self.write_pieces(splice.content(0), keys, pid, progress)
        blocks, block_nodes = kept
        refs, nodes = self.expand(base, keys)
        if splice.span is None and splice.length == base.length:  # nothing changed: the same payload
            return WrittenPayload(
                base.length,
                base.checksum,
                base.chunks,
                base.tree,
                [r.id for r in refs] + nodes + block_nodes,
                inline=base.data,
                blocks=base.blocks,
                block_tree=base.block_tree,
            )
        if min(base.length, splice.length) <= self.params.min:
            return self.write_pieces(splice.content(0), keys, pid, progress)
        first, last = splice.span if splice.span is not None else (splice.length, splice.length)
        same_length = splice.length == base.length
        limit = min(base.length, splice.length)
        offsets = list(itertools.accumulate((r.length for r in refs), initial=0))
        keep = 0  # the chunks [0, keep) are kept: wholly before the edit, and cut by their bytes alone
        while (
            keep < len(refs)
            and offsets[keep + 1] <= first
            and (same_length or limit - offsets[keep] >= self.params.max)
        ):
            keep += 1
        start = offsets[keep]
        read_from = start // BLOCK_SIZE * BLOCK_SIZE  # the blocks before it are kept (start <= first)
        resume = {off: i for i, off in enumerate(offsets[:-1]) if i > keep} if same_length else {}
        with _Assembly(self, keys, pid, progress) as asm:
            asm.keep_blocks(blocks[: read_from // BLOCK_SIZE])
            asm.add_kept(refs[:keep])
            pos, tail = start, None
            content = iter(splice.content(read_from))
            try:
                pieces = _hash_until(content, start - read_from, asm)
                cuts = chunking.split_pieces(pieces, keys.cdc_seed, self.params)
                try:
                    for data in cuts:
                        asm.add_new(data)
                        pos += len(data)
                        if pos >= last and pos in resume:  # from here on the base's cuts again
                            tail = resume[pos]
                            break
                finally:
                    cuts.close()
            finally:
                getattr(content, "close", lambda: None)()  # stop its read-ahead
            if tail is not None:
                asm.add_kept(refs[tail:])
                # the block holding ``pos`` is hashed to its end, from the (unchanged) bytes
                block_end = min(-(-pos // BLOCK_SIZE) * BLOCK_SIZE, base.length)
                rest = iter(splice.content(pos))
                try:
                    for _ in _hash_until(rest, block_end - pos, asm):
                        break
                finally:
                    getattr(rest, "close", lambda: None)()
                asm.keep_blocks(blocks[-(-block_end // BLOCK_SIZE) :])  # those starting at block_end
            return asm.finish()

    def _blocks_to_keep(self, base: VersionHeader, keys: crypto.EpochKeys) -> tuple[list[ChunkRef], list[bytes]] | None:
        """The base's block list and its node ids, or None if it has none to trust
        (header format 1 or 2, or a list that does not read back intact: logged)."""
        if base.format != 3:
            return None
        try:
            return self.expand_blocks(base, keys)
        except (IntegrityError, FormatError) as e:
            log.warning("%s; the edit of %r is written whole", e, base.sort_key)
            return None

    def _write_small(
        self, data: bytes, keys: crypto.EpochKeys, pid: bytes, progress: Progress | None
    ) -> WrittenPayload:
        blocks = [ChunkRef(h, n) for h, n in blocks_of(data)]
        checksum = checksum_of(b.id for b in blocks) if blocks else EMPTY_CHECKSUM  # a tombstone's, every time
        result = WrittenPayload(len(data), checksum, (), None, epoch=keys.epoch, blocks=tuple(blocks))
        if 0 < len(data) <= MAX_INLINE_DATA:
            result.inline = bytes(data)  # the header carries it
        elif data:
            blob_id, written = self._store(crypto.KIND_CHUNK, keys, pid, data)
            result.chunks = (ChunkRef(blob_id, len(data)),)
            result.refs = [blob_id]
            result.new_blobs, result.new_bytes = (1, written) if written else (0, 0)
        if data and progress:
            progress(len(data))
        return result

    def _build_tree(
        self, level: list[ChunkRef], keys: crypto.EpochKeys, pid: bytes, result: WrittenPayload, node_type: str
    ) -> tuple[bytes, int]:
        depth = 0
        while True:
            depth += 1
            nodes: list[ChunkRef] = []
            for i in range(0, len(level), TREE_FANOUT):
                entries = level[i : i + TREE_FANOUT]
                node_id, written = self._store(crypto.KIND_CHUNK_LIST, keys, pid, encode_chunk_list(entries, node_type))
                result.refs.append(node_id)
                if written:
                    result.new_blobs += 1
                    result.new_bytes += written
                nodes.append(ChunkRef(node_id, sum(e.length for e in entries)))
            if len(nodes) == 1:
                return nodes[0].id, depth
            level = nodes

    # ------------------------------------------------------------ reading
    def chunk_refs(self, header: VersionHeader, keys: crypto.EpochKeys) -> list[ChunkRef]:
        """The full chunk list of a version, expanding the chunk-list tree."""
        return self.expand(header, keys)[0]

    def expand(self, header: VersionHeader, keys: crypto.EpochKeys) -> tuple[list[ChunkRef], list[bytes]]:
        """(chunk list, ids of the chunk-list nodes walked to get it)."""
        return self._expand(header.chunks, header.tree, header.length, keys, header.partition)

    def expand_blocks(self, header: VersionHeader, keys: crypto.EpochKeys) -> tuple[list[ChunkRef], list[bytes]]:
        """(block list as (block hash, length) refs, ids of the block-list nodes walked);
        ``IntegrityError`` if it does not fit the payload or its checksum. Format 3 only."""
        if header.blocks is not None:  # checked when the header was decoded
            return list(header.blocks), []
        blocks, nodes = self._expand(None, header.block_tree, header.length, keys, header.partition, BLOCK_LIST_TYPE)
        what = f"the block list of {header.sort_key!r}"
        if not check_blocks([(b.id, b.length) for b in blocks], header.length):
            raise IntegrityError(f"{what} does not fit its payload length")
        if checksum_of(b.id for b in blocks) != header.checksum:
            raise IntegrityError(f"{what} does not match the checksum in its header")
        return blocks, nodes

    def _expand(
        self,
        chunks: tuple[ChunkRef, ...] | None,
        tree: tuple[bytes, int] | None,
        length: int,
        keys: crypto.EpochKeys,
        pid: bytes,
        node_type: str = CHUNK_LIST_TYPE,
    ) -> tuple[list[ChunkRef], list[bytes]]:
        if chunks is not None:
            return list(chunks), []
        assert tree is not None
        root, depth = tree
        level = [ChunkRef(root, length)]
        nodes: list[bytes] = []
        for _ in range(depth):
            nxt: list[ChunkRef] = []
            for node in level:
                nodes.append(node.id)
                plain = self._open(crypto.KIND_CHUNK_LIST, keys, pid, node.id)
                entries = decode_chunk_list(plain, node_type)
                if sum(e.length for e in entries) != node.length:
                    what = "block list" if node_type == BLOCK_LIST_TYPE else "chunk list"
                    raise IntegrityError(f"{what} {node.id.hex()} does not add up to its length")
                nxt.extend(entries)
            level = nxt
        return level, nodes

    def _open(self, kind: int, keys: crypto.EpochKeys, pid: bytes, blob_id: bytes, length: int | None = None) -> bytes:
        """The verified plaintext of a payload blob (``length``: of the plaintext, if known)."""
        try:
            blob = self.blobs.get(blob_id, None if length is None else length + crypto.ENVELOPE_OVERHEAD)
        except NotFoundError as e:
            raise IntegrityError(f"payload blob {blob_id.hex()} is missing") from e
        plain = crypto.open_blob(blob, kind, keys, pid, blob_id)
        if keys.payload_blob_id(kind, plain) != blob_id:
            raise IntegrityError(f"payload blob {blob_id.hex()} does not match its id")
        return plain

    def read_chunk(self, ref: ChunkRef, keys: crypto.EpochKeys, pid: bytes, prefetch: ChunkRef | None = None) -> bytes:
        """The verified plaintext of one chunk. ``prefetch``: a chunk the caller
        will want next, whose blob the backend starts fetching first."""
        if prefetch is not None:
            self.blobs.prefetch(prefetch.id)
        plain = self._open(crypto.KIND_CHUNK, keys, pid, ref.id, ref.length)
        if len(plain) != ref.length:
            raise IntegrityError(f"chunk {ref.id.hex()} has the wrong length")
        return plain

    def read_chunk_into(
        self, ref: ChunkRef, keys: crypto.EpochKeys, pid: bytes, out: memoryview, prefetch: ChunkRef | None = None
    ) -> memoryview:
        """:meth:`read_chunk` into ``out`` (``ref.length`` bytes), returned once verified.

        The ciphertext goes through a buffer the thread keeps, the plaintext
        straight into ``out``: no fresh buffer to be zeroed and faulted in per
        chunk. On an error ``out`` holds nothing the caller may use."""
        if prefetch is not None:
            self.blobs.prefetch(prefetch.id)
        want = ref.length + crypto.ENVELOPE_OVERHEAD
        scratch: bytearray | None = getattr(self._scratch, "buf", None)
        if scratch is None or len(scratch) <= want:
            scratch = self._scratch.buf = bytearray(max(want + 1, chunking.LARGEST + crypto.ENVELOPE_OVERHEAD + 1))
        view = memoryview(scratch)
        try:
            got = self.blobs.get_into(ref.id, view[: want + 1])
        except NotFoundError as e:
            raise IntegrityError(f"payload blob {ref.id.hex()} is missing") from e
        if got != want:
            raise IntegrityError(f"chunk {ref.id.hex()} has the wrong length")
        # open_blob_into also refuses an ``out`` that is not the plaintext's length
        crypto.open_blob_into(view[:got], crypto.KIND_CHUNK, keys, pid, ref.id, out)
        if keys.chunk_id(out) != ref.id:
            raise IntegrityError(f"payload blob {ref.id.hex()} does not match its id")
        return out

    def iter_payload(
        self, header: VersionHeader, keys: crypto.EpochKeys, progress: Progress | None = None
    ) -> Iterator[bytes]:
        """Yield the verified plaintext, chunk by chunk, with read-ahead.

        Each chunk is authenticated (AEAD) and re-identified (keyed hash) before
        it is yielded, and the chunk list comes from the authenticated header,
        so the whole-payload checksum is not recomputed here (``verify`` does).
        """
        if header.data is not None:  # in the header: authenticated with it
            if progress:
                progress(len(header.data))
            yield header.data
            return
        refs = self.chunk_refs(header, keys)
        yield from self.iter_chunks(refs, header.length, keys, header.partition, progress)

    def iter_written(self, written: WrittenPayload, keys: crypto.EpochKeys, pid: bytes) -> Iterator[bytes]:
        """Yield the plaintext of a payload written but not (yet) named by a header,
        verified as :meth:`iter_payload` verifies (``keys``: those of ``written.epoch``)."""
        if written.inline is not None:
            yield written.inline
            return
        refs = self._expand(written.chunks, written.tree, written.length, keys, pid)[0]
        yield from self.iter_chunks(refs, written.length, keys, pid, None)

    def iter_chunks(
        self,
        refs: list[ChunkRef],
        length: int,
        keys: crypto.EpochKeys,
        pid: bytes,
        progress: Progress | None = None,
    ) -> Iterator[bytes]:
        """Yield the verified plaintext of ``refs`` in order (``WINDOW`` chunks in flight
        in the pool, each hinting the blob ``PREFETCH`` further on); ``IntegrityError``
        if they do not add up to ``length``."""
        total = 0
        window: collections.deque[Future[bytes]] = collections.deque()

        def submit(i: int) -> None:
            ahead = refs[i + PREFETCH] if i + PREFETCH < len(refs) else None
            window.append(self.pool.submit(self.read_chunk, refs[i], keys, pid, ahead))

        try:
            nxt = min(WINDOW, len(refs))
            for i in range(nxt):
                submit(i)
            while window:
                data = window.popleft().result()
                if nxt < len(refs):
                    submit(nxt)
                    nxt += 1
                total += len(data)
                if progress:
                    progress(len(data))
                yield data
        finally:
            for fut in window:
                fut.cancel()
        if total != length:
            raise IntegrityError("payload length does not match its header")


#: glibc's mmap threshold: above the largest buffer made per chunk or per segment. The
#: chunker joins its pieces into segments of ``SEGMENT + LARGEST`` plus at most one
#: piece (a FUSE write or a read of 1 MiB): 13 MiB.
MMAP_THRESHOLD = chunking.SEGMENT + 2 * chunking.LARGEST
#: glibc's arenas (M_ARENA_MAX; its default is 8 per core): the threads that allocate
#: chunk buffers share them, so a buffer one thread frees is reused by the next.
ARENAS = 2


def keep_chunk_buffers() -> bool:
    """Let this process reuse freed chunk-sized buffers instead of mapping fresh pages.

    Each chunk read or written allocates a few buffers of up to a chunk's size
    (the blob's bytes, the plaintext, a joined read reply), and the chunker
    joins the pieces of a write into segments of up to 13 MiB. glibc serves
    allocations above its mmap threshold with fresh mappings, which the kernel
    faults in and zeroes page by page; below it, freed buffers are reused. Four
    settings, each measured with paired runs through the mount (docs/design.md,
    "Memory for chunk buffers"):

    - mmap threshold ``MMAP_THRESHOLD`` (16 MiB), above every chunk and segment.
      At 8 MiB, above the chunks only, a cold read of 1 GiB took 28,000 page
      faults instead of 125,000 (10-15 % faster), but 12 % of the daemon's CPU
      still went to faulting in each fresh segment while ``cp`` wrote 1 GiB; at
      16 MiB writes went from 166 to 206 MiB/s, daemon CPU from 7.2 to 6.0 s.
    - trim threshold 96 MiB and 32 MiB of top padding: a streaming write holds
      more than 32 MiB in flight (its queue, its pieces, the window's plaintext
      and ciphertext), and the heap shrank and grew again all the time (7 % of
      the CPU in page faults): writes from 194 to 241 MiB/s.
    - ``ARENAS`` (2) arenas instead of one per thread, so that a buffer one
      thread frees is reused by the next: writes from 152 to 195 and from 193
      to 234 MiB/s, cold reads from 366 to 428 and from 344 to 421 MiB/s, and
      16 files of 64 MiB copied at once peaked at 480-499 MiB instead of 583-612.

    Memory stays bounded by the read and write windows (peak RSS copying 4 GiB:
    169-174 MiB). Returns False where ``mallopt`` is not available (not glibc):
    nothing changes there.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold, m_arena_max = -1, -2, -3, -8  # <malloc.h>
    return all(
        mallopt(param, value)
        for param, value in (
            (m_mmap_threshold, MMAP_THRESHOLD),
            (m_trim_threshold, 96 * chunking.MiB),
            (m_top_pad, 32 * chunking.MiB),
            (m_arena_max, ARENAS),
        )
    )


class IterStream(io.RawIOBase):
    """A read-only stream over an iterator of byte strings (e.g. a payload being re-encrypted)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
