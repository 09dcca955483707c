"""What a store holds on disk, blob by blob, for tests that count, remove or damage blobs.

A blob is a row of ``blobs/small.sqlite`` (up to 16 KiB) or a file
``blobs/xx/<hex id>`` (docs/format.md, "blobs/"). These helpers go to the
bytes on disk themselves, as an attacker or a failing disk would, not through
``fsobj.blobs``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _db(root: Path) -> contextlib.closing[sqlite3.Connection]:
    """The table of small blobs; an empty one if the store has none (format version 1)."""
    path = root / "blobs" / "small.sqlite"
    if not path.exists():
        empty = sqlite3.connect(":memory:", isolation_level=None)
        empty.execute("CREATE TABLE blob (id BLOB PRIMARY KEY, written INTEGER, data BLOB)")
        return contextlib.closing(empty)
    uri = f"{path.absolute().as_uri()}?mode=rw"
    return contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None, timeout=60))


def _file(root: Path, blob_id: bytes) -> Path:
    h = blob_id.hex()
    return root / "blobs" / h[:2] / h


def _files(root: Path) -> Iterator[Path]:
    for sub in (root / "blobs").iterdir():
        if sub.is_dir():
            yield from (p for p in sub.iterdir() if p.is_file() and len(p.name) == 64)


def file_paths(root: Path, ids: list[bytes]) -> list[Path]:
    """The files of those of ``ids`` that are files, in order (a blob of up to 16 KiB,
    such as a payload's last chunk, is a row instead)."""
    return [p for p in (_file(root, i) for i in ids) if p.is_file()]


def stored(root: Path) -> set[bytes]:
    """The ids of every blob on disk: rows and files."""
    with _db(root) as db:
        rows = {r[0] for r in db.execute("SELECT id FROM blob")}
    return rows | {bytes.fromhex(p.name) for p in _files(root)}


def is_row(root: Path, blob_id: bytes) -> bool:
    with _db(root) as db:
        return db.execute("SELECT 1 FROM blob WHERE id = ?", (blob_id,)).fetchone() is not None


def is_file(root: Path, blob_id: bytes) -> bool:
    return _file(root, blob_id).is_file()


def read(root: Path, blob_id: bytes) -> bytes:
    with _db(root) as db:
        row = db.execute("SELECT data FROM blob WHERE id = ?", (blob_id,)).fetchone()
    return row[0] if row else _file(root, blob_id).read_bytes()


def write(root: Path, blob_id: bytes, data: bytes) -> None:
    """Replace a blob's bytes where they are (row or file)."""
    with _db(root) as db:
        if db.execute("UPDATE blob SET data = ? WHERE id = ?", (data, blob_id)).rowcount:
            return
    _file(root, blob_id).write_bytes(data)


def remove(root: Path, blob_id: bytes) -> None:
    with _db(root) as db:
        if db.execute("DELETE FROM blob WHERE id = ?", (blob_id,)).rowcount:
            return
    _file(root, blob_id).unlink()


def flip(root: Path, blob_id: bytes, pos: int) -> None:
    """Flip one bit of a stored blob (``pos`` may be negative)."""
    data = bytearray(read(root, blob_id))
    data[pos] ^= 0x01
    write(root, blob_id, bytes(data))


@dataclass(frozen=True)
class StoredBlob:
    """One blob on disk, with the few ``Path`` methods tamper tests use."""

    root: Path
    id: bytes

    def read_bytes(self) -> bytes:
        return read(self.root, self.id)

    def write_bytes(self, data: bytes) -> None:
        write(self.root, self.id, data)

    def unlink(self) -> None:
        remove(self.root, self.id)
