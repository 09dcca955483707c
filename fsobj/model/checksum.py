"""The payload checksum of header format 3: BLAKE3 over fixed 1 MiB blocks.

Owns: the definition of ``checksum`` for format-3 headers and of their block
list (docs/format.md, "Payload checksum"), and computing both from bytes.
Pure: no I/O beyond the file :func:`file_checksum` is asked to read.

The payload is cut into blocks of ``BLOCK_SIZE`` bytes (the last one shorter;
an empty payload has none). Each block's hash is plain BLAKE3-256 of its
bytes; the checksum is BLAKE3 ``derive_key`` with the context
``CHECKSUM_CONTEXT`` over the concatenated block hashes. A version keeps its
block list (encrypted, in its header or in block-list nodes), so an edit
re-hashes only the blocks it touches instead of the whole payload. Anyone
holding the plaintext computes the same value without any key: ``fsobj
checksum FILE``. Format-1 and format-2 headers keep their checksum, plain
``BLAKE3(payload)``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import BinaryIO

from fsobj import crypto

BLOCK_SIZE = 1024 * 1024
CHECKSUM_CONTEXT = "fsobj 2026-12 v1 payload checksum"
CHECKSUM_TYPE = "blake3-blocks-1m"  # as the xattr system.fsobj.checksum_type names it (formats 1, 2: "blake3")

Block = tuple[bytes, int]  # (BLAKE3-256 of the block, its length)


def checksum_of(block_hashes: Iterable[bytes]) -> bytes:
    """The checksum of a payload whose blocks hash to ``block_hashes``, in order."""
    return crypto.derive(CHECKSUM_CONTEXT, b"".join(block_hashes))


def blocks_of(data: bytes | memoryview) -> list[Block]:
    """The block list of a payload held in memory."""
    view = memoryview(data)
    return [
        (crypto.hash_bytes(view[i : i + BLOCK_SIZE]), min(BLOCK_SIZE, len(view) - i))
        for i in range(0, len(view), BLOCK_SIZE)
    ]


def check_blocks(blocks: list[Block], length: int) -> bool:
    """True if ``blocks`` has the shape a payload of ``length`` bytes gives: every
    block ``BLOCK_SIZE`` long but the last, which is 1 to ``BLOCK_SIZE``."""
    full, rest = divmod(length, BLOCK_SIZE)
    want = full + (1 if rest else 0)
    if len(blocks) != want:
        return False
    return all(n == BLOCK_SIZE for _, n in blocks[:full]) and (not rest or blocks[-1][1] == rest)


class BlockHasher:
    """Hashes a payload fed in order, a block at a time.

    ``update`` takes the payload's bytes; ``extend`` takes the hashes of whole
    blocks known already (kept from an earlier version), and may be called
    only at a block boundary. ``finish`` returns (block list, checksum).
    """

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._current = crypto.new_hasher()
        self._filled = 0  # bytes of the current block hashed so far
        self._ended = False  # a short block was added: nothing may follow it
        self.length = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._ended and view:
            raise ValueError("bytes after a short block")
        self.length += len(view)
        while view:
            take = min(BLOCK_SIZE - self._filled, len(view))
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_SIZE:
                self.blocks.append((self._current.digest(), BLOCK_SIZE))
                self._current = crypto.new_hasher()
                self._filled = 0

    def extend(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            if self._filled or self._ended:
                raise ValueError("known blocks must start at a block boundary")
            self.blocks.append(block)
            self.length += block[1]
            self._ended = block[1] != BLOCK_SIZE

    def finish(self) -> tuple[list[Block], bytes]:
        if self._filled:
            self.blocks.append((self._current.digest(), self._filled))
            self._filled = 0
        return self.blocks, checksum_of(h for h, _ in self.blocks)


def stream_checksum(stream: BinaryIO) -> bytes:
    """The format-3 checksum of everything ``stream`` yields (``fsobj checksum``)."""
    hasher = BlockHasher()
    while block := stream.read(BLOCK_SIZE):
        hasher.update(block)
    return hasher.finish()[1]


def file_checksum(path: str | os.PathLike[str]) -> bytes:
    """The format-3 checksum of a local file's contents."""
    with open(path, "rb") as f:
        return stream_checksum(f)
