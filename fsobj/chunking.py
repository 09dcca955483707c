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

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

AVG_SIZE = 512 * 1024
MIN_SIZE = 128 * 1024
MAX_SIZE = 2 * 1024 * 1024


def chunker(seed: int) -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)


def split_stream(stream: BinaryIO, seed: int) -> Iterator[bytes]:
    """Yield the chunks of ``stream`` as independent ``bytes`` objects.

    Memory stays bounded by the chunker's buffer plus the chunks the caller
    keeps; an empty stream yields nothing.
    """
    for c in chunker(seed).cut_stream(stream):
        yield bytes(c.data)


def split_bytes(data: bytes, seed: int) -> Iterator[bytes]:
    for c in chunker(seed).cut_buf(data):
        yield bytes(c.data)
