"""Blob storage: opaque, immutable byte strings named by 32-byte ids.

Owns: the ``BlobStore`` interface. Blob backends never see plaintext or keys,
nor the index's SQL: they move ciphertext (or signed records) in and out. The
local directory backend (``local.py``: small blobs as rows of its own SQLite
file, the others as files) is the embedded default; an S3-compatible backend
can implement the same calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol


class BlobStore(Protocol):
    """Blob calls and a barrier. All methods are thread-safe."""

    def put(self, blob_id: bytes, data: bytes | Sequence[bytes], fsync: bool = True, replace: bool = False) -> bool:
        """Store ``data`` (bytes, or parts to concatenate) under ``blob_id``
        atomically; False if it already existed (unless ``replace``).

        With ``fsync`` the blob's bytes are durable on return and its name after
        :meth:`sync`; without, both after :meth:`sync_all`.
        """
        ...

    def put_many(self, items: Sequence[tuple[bytes, bytes | Sequence[bytes]]]) -> None:
        """Store several blobs as :meth:`put` without fsync does (durable after
        :meth:`sync_all`), in as few writes as the backend can (a group commit's headers)."""
        ...

    def get(self, blob_id: bytes, size: int | None = None) -> bytes:
        """The blob's bytes; ``NotFoundError`` if absent. ``size``: the size the caller
        expects, a hint only (a blob of another size is still returned)."""
        ...

    def get_into(self, blob_id: bytes, buf: memoryview) -> int:
        """Read the blob into ``buf`` and return its length; ``NotFoundError`` if
        absent. A blob longer than ``buf`` fills it and returns ``len(buf)``, so a
        caller that expects ``n`` bytes passes ``n + 1`` and refuses any other
        answer. Saves a fresh buffer per read (a chunk read's scratch is reused)."""
        ...

    def exists(self, blob_id: bytes) -> bool: ...

    def prefetch(self, blob_id: bytes) -> None:
        """A hint that the blob will be read soon: start fetching it without
        waiting. Never fails (an absent blob is reported by :meth:`get`)."""
        ...

    def peek(self, blob_id: bytes, n: int) -> bytes:
        """The first ``n`` bytes of a blob (an envelope head) without reading it all."""
        ...

    def stat(self, blob_id: bytes, size: int | None = None) -> tuple[int, float]:
        """(size in bytes, modification time) of a blob; ``NotFoundError`` if absent.
        ``size``: the size the caller expects, which a backend may use to look only
        where a blob of that size is kept."""
        ...

    def delete(self, blob_id: bytes) -> None:
        """Remove a blob; absent blobs are ignored."""
        ...

    def delete_many(self, blob_ids: Sequence[bytes]) -> None:
        """:meth:`delete` of each, in as few writes as the backend can (a purge)."""
        ...

    def list(self) -> Iterator[bytes]:
        """Every blob id, in no particular order."""
        ...

    def sync(self) -> None:
        """Make the names of every blob put so far durable (directory fsync)."""
        ...

    def sync_all(self) -> None:
        """Make every blob put so far durable, also those put without fsync."""
        ...

    def close(self) -> None:
        """Release what the backend holds open (connections, files)."""
        ...

    def clean_tmp(self) -> int:
        """Remove leftovers of interrupted writes (of processes no longer running)."""
        ...
