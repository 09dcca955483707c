"""Payload splitting: content-defined chunking (FastCDC) of a byte stream.

Owns: where a payload is cut. Pure apart from reading the stream it is given;
never sees keys except the per-partition chunker seed, which keys the gear
table so that chunk boundaries (and hence chunk sizes) do not fingerprint
known content across partitions.

Parameters (format version 1): average 512 KiB, minimum 128 KiB, maximum
2 MiB (FastCDC 2020, normalization level 1). Changing them does not break old
stores (chunk lists record lengths), it only reduces deduplication.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

AVG_SIZE = 512 * 1024
MIN_SIZE = 128 * 1024
MAX_SIZE = 2 * 1024 * 1024


def chunker(seed: int) -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)


SEGMENT = 8 * 1024 * 1024  # bytes gathered before cutting: the < MAX_SIZE left over is copied once per segment
READ_SIZE = 1024 * 1024


def split_pieces(pieces: Iterable[bytes | memoryview], seed: int) -> Iterator[memoryview]:
    """Yield the chunks of the concatenation of ``pieces``: the same cuts as
    :func:`split_bytes` of the whole, whatever the pieces' sizes.

    Each chunk is a read-only view into an immutable buffer of its own segment
    (the pieces joined: one copy), so it may be handed to another thread and
    kept. Nothing is cut until ``MAX_SIZE`` bytes follow the cut point or the
    pieces end, which is when a cut no longer depends on later bytes. Memory
    stays bounded by ``SEGMENT + MAX_SIZE`` plus the segments that the chunks
    the caller still holds point into.
    """
    cdc = chunker(seed)
    held: list[bytes | memoryview] = []
    n = 0
    for piece in pieces:
        if not len(piece):
            continue
        held.append(piece)
        n += len(piece)
        if n >= SEGMENT + MAX_SIZE:
            rest = yield from _cut(cdc, memoryview(b"".join(held)), final=False)
            held, n = [rest], len(rest)
    if n:
        seg = memoryview(held[0]) if len(held) == 1 else memoryview(b"".join(held))
        yield from _cut(cdc, seg.toreadonly(), final=True)


def _cut(cdc: FastCDC, seg: memoryview, final: bool) -> Generator[memoryview, None, memoryview]:
    """Yield the chunks of ``seg``; unless ``final``, stop before a chunk that starts
    less than ``MAX_SIZE`` before the end and return the rest (still to be cut)."""
    for c in cdc.cut_buf(seg):
        if not final and len(seg) - c.offset < MAX_SIZE:
            return seg[c.offset :]
        yield c.data
    return seg[len(seg) :]


def read_pieces(stream: BinaryIO) -> Iterator[bytes]:
    """What ``stream`` reads, ``READ_SIZE`` at a time, until its end."""
    return iter(lambda: stream.read(READ_SIZE), b"")


def split_stream(stream: BinaryIO, seed: int) -> Iterator[memoryview]:
    """:func:`split_pieces` of what ``stream`` reads; an empty stream yields nothing."""
    return split_pieces(read_pieces(stream), seed)


def split_bytes(data: bytes, seed: int) -> Iterator[bytes]:
    for c in chunker(seed).cut_buf(data):
        yield bytes(c.data)
