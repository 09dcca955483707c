"""Payload splitting: content-defined chunking (FastCDC) of a byte stream.

Owns: where a payload is cut. Pure apart from reading the stream it is given;
never sees keys except the per-partition chunker seed, which keys the gear
table so that chunk boundaries (and hence chunk sizes) do not fingerprint
known content across partitions.

Two parameter sets (FastCDC 2020, normalization level 1), chosen per store
when it is created and named in its marker (docs/format.md, "Chunking"):

* set 1: average 512 KiB, minimum 128 KiB, maximum 2 MiB (stores made before
  set 2 existed: their marker names no set);
* set 2: average 1 MiB, minimum 256 KiB, maximum 4 MiB (new stores). Half as
  many chunks per GiB: each costs a blob file, an index row, a thread
  hand-off and a read-ahead step, so bigger chunks write and read faster
  (and a 4 KiB edit of a 1 GiB file commits a shorter chunk list).

A store keeps its set: an edit re-cuts only the changed region and relies on
the new cuts meeting the old ones again, which needs the same parameters.
Readers never re-chunk (chunk lists record lengths).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Params:
    """One chunker parameter set: sizes in bytes (``avg`` a power of two)."""

    number: int
    min: int
    avg: int
    max: int


PARAMS = {
    p.number: p
    for p in (
        Params(1, min=128 * KiB, avg=512 * KiB, max=2 * MiB),
        Params(2, min=256 * KiB, avg=1 * MiB, max=4 * MiB),
    )
}
DEFAULT = PARAMS[2]  # what new stores use
LEGACY = PARAMS[1]  # what a store whose marker names no set uses
LARGEST = max(p.max for p in PARAMS.values())  # the longest chunk any store may hold


def chunker(seed: int, params: Params) -> FastCDC:
    return FastCDC(params.avg, min_size=params.min, max_size=params.max, seed=seed)


SEGMENT = 8 * MiB  # bytes gathered before cutting: the < max left over is copied once per segment
READ_SIZE = 1 * MiB


def split_pieces(pieces: Iterable[bytes | memoryview], seed: int, params: Params) -> Iterator[memoryview]:
    """Yield the chunks of the concatenation of ``pieces``: the same cuts as
    :func:`split_bytes` of the whole, whatever the pieces' sizes.

    Each chunk is a read-only view into an immutable buffer of its own segment
    (the pieces joined: one copy), so it may be handed to another thread and
    kept. Nothing is cut until ``params.max`` bytes follow the cut point or the
    pieces end, which is when a cut no longer depends on later bytes. Memory
    stays bounded by ``SEGMENT + params.max`` plus the segments that the chunks
    the caller still holds point into.
    """
    cdc = chunker(seed, params)
    held: list[bytes | memoryview] = []
    n = 0
    for piece in pieces:
        if not len(piece):
            continue
        held.append(piece)
        n += len(piece)
        if n >= SEGMENT + params.max:
            rest = yield from _cut(cdc, memoryview(b"".join(held)), params.max, final=False)
            held, n = [rest], len(rest)
    if n:
        seg = memoryview(held[0]) if len(held) == 1 else memoryview(b"".join(held))
        yield from _cut(cdc, seg.toreadonly(), params.max, final=True)


def _cut(cdc: FastCDC, seg: memoryview, max_size: int, final: bool) -> Generator[memoryview, None, memoryview]:
    """Yield the chunks of ``seg``; unless ``final``, stop before a chunk that starts
    less than ``max_size`` before the end and return the rest (still to be cut)."""
    for c in cdc.cut_buf(seg):
        if not final and len(seg) - c.offset < max_size:
            return seg[c.offset :]
        yield c.data
    return seg[len(seg) :]


def read_pieces(stream: BinaryIO) -> Iterator[bytes]:
    """What ``stream`` reads, ``READ_SIZE`` at a time, until its end."""
    return iter(lambda: stream.read(READ_SIZE), b"")


def split_stream(stream: BinaryIO, seed: int, params: Params) -> Iterator[memoryview]:
    """:func:`split_pieces` of what ``stream`` reads; an empty stream yields nothing."""
    return split_pieces(read_pieces(stream), seed, params)


def split_bytes(data: bytes, seed: int, params: Params) -> Iterator[bytes]:
    for c in chunker(seed, params).cut_buf(data):
        yield bytes(c.data)
