"""The SQLite index: typed queries over the schema in ``schema.py``.

Owns: all SQL in fsobj. Rows are returned as small dataclasses; callers never
write SQL. One connection per thread (sqlite3 objects must not cross threads);
WAL mode so readers never block the single writer; ``write()`` takes SQLite's
write lock up front (``BEGIN IMMEDIATE``), which serialises committing writers
across threads *and* processes: it is the optimistic lock's critical section.
"""

from __future__ import annotations

import operator
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from fsobj.errors import FormatError
from fsobj.index.feeds import FeedQueries, FeedRow, MessageRow
from fsobj.index.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

__all__ = ["FeedRow", "HeadRow", "Index", "MessageRow", "PartitionRow", "VersionRow"]

BUSY_TIMEOUT_MS = 60_000
OWN_GENERATIONS_MAX = 100_000


@dataclass(frozen=True)
class VersionRow:
    hash: bytes
    partition_id: bytes
    base_hash: bytes
    prev_hash: bytes | None
    seq: int
    created_us: int
    length: int
    tombstone: bool
    epoch: int
    author_id: bytes
    sort_key_ct: bytes


@dataclass(frozen=True)
class HeadRow:
    base_hash: bytes
    partition_id: bytes
    head_hash: bytes
    sort_key_ct: bytes
    epoch: int
    seq: int
    tombstone: bool
    length: int
    created_us: int


@dataclass(frozen=True)
class PartitionRow:
    partition_id: bytes
    owner_id: bytes
    seq: int
    record_id: bytes


_VERSION_COLS = (
    "hash, partition_id, base_hash, prev_hash, seq, created_us, length, tombstone, epoch, author_id, sort_key_ct"
)
_HEAD_COLS = "base_hash, partition_id, head_hash, sort_key_ct, epoch, seq, tombstone, length, created_us"
# An upsert, not INSERT OR REPLACE: a new head of a known series updates its row in place,
# which leaves the two indexes alone unless the sort key changed (REPLACE deleted and
# inserted the row in all three b-trees).
_SET_HEAD = (
    f"INSERT INTO heads ({_HEAD_COLS}) VALUES (?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (partition_id, base_hash) DO UPDATE SET head_hash = excluded.head_hash, "
    "sort_key_ct = excluded.sort_key_ct, epoch = excluded.epoch, seq = excluded.seq, "
    "tombstone = excluded.tombstone, length = excluded.length, created_us = excluded.created_us"
)


# A version row's values in the order of ``_VERSION_COLS`` (VersionRow's own field
# order), and those of the head row it makes, in the order of ``_HEAD_COLS``.
_version_params = operator.attrgetter(*_VERSION_COLS.split(", "))
_head_params = operator.attrgetter(
    "base_hash", "partition_id", "hash", "sort_key_ct", "epoch", "seq", "tombstone", "length", "created_us"
)


def _version(r: tuple) -> VersionRow:
    return VersionRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9], r[10])


def _head(r: tuple) -> HeadRow:
    return HeadRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8])


def _batches(items: list[bytes], n: int = 500) -> Iterator[list[bytes]]:
    """``items`` in lists of at most ``n`` (the ``IN (...)`` lists of one statement)."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _statements(script: str) -> Iterator[str]:
    """Split an SQL script into statements (comments may contain ';')."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"incomplete SQL statement in migration: {buf!r}")


class Index(FeedQueries):
    """Typed access to ``index.sqlite``; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._own: set[int] = set()  # generations our own transactions produced
        self._own_lock = threading.Lock()

    # ------------------------------------------------------------ connections
    @property
    def db(self) -> Database:
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so that close() can close every thread's
            # connection; each connection is still used by its own thread alone.
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            db = Database(conn)
            self._local.db = db
            with self._conns_lock:
                self._conns.append(conn)
        return db

    def q(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:  # type: ignore[override]
        return self.db.execute(sql, tuple(params)).fetchall()

    def create(self) -> None:
        self.db.conn.executescript(SCHEMA)
        with self.write():
            self.db["meta"].upsert({"key": "schema", "value": str(SCHEMA_VERSION)}, pk="key")
            self.db["meta"].upsert({"key": "generation", "value": "0"}, pk="key")

    def check(self) -> None:
        """Open an existing index, migrating it forward; refuse newer schemas."""
        try:
            rows = self.q("SELECT value FROM meta WHERE key = 'schema'")
        except sqlite3.DatabaseError as e:
            raise FormatError(f"index {self.path} is not readable: {e}") from e
        if not rows:
            raise FormatError(f"index {self.path} has no schema version")
        version = int(rows[0][0])
        if version > SCHEMA_VERSION:
            raise FormatError(f"index schema {version} is newer than this fsobj ({SCHEMA_VERSION})")
        while version < SCHEMA_VERSION:
            version += 1
            with self.write():
                for statement in _statements(MIGRATIONS[version]):
                    self.db.execute(statement)
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(version),))

    def close(self) -> None:
        """Close every thread's connection (call when no other thread uses the index)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    @contextmanager
    def write(self, bump: bool = True) -> Iterator[None]:
        """A write transaction holding SQLite's write lock from its first statement.

        ``bump`` advances the generation counter, which tells readers (listing
        caches, waiting feed readers) that versions or partitions changed; feed
        bookkeeping passes False so that consumers do not wake each other.
        """
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        gen = None
        try:
            yield
            if bump:
                gen = int(
                    conn.execute(
                        "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation' RETURNING value"
                    ).fetchone()[0]
                )
                # ours before COMMIT makes it visible: counted after it, a thread that read the
                # counter in between (the mount's refresh) took it for another process's and
                # reloaded every partition, dropping the .versions trees with them
                with self._own_lock:
                    if len(self._own) > OWN_GENERATIONS_MAX:
                        self._own.clear()  # nobody asks: forget (the worst outcome is one needless reload)
                    self._own.add(gen)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            if gen is not None:
                with self._own_lock:
                    self._own.discard(gen)  # rolled back: another writer may take that number
            raise

    def take_own(self) -> set[int]:
        """The generations our own transactions produced since the last call (and forget them)."""
        with self._own_lock:
            own, self._own = self._own, set()
        return own

    def note_own(self, generations: Iterable[int]) -> None:
        """Count generations made by a helper acting for us as our own."""
        with self._own_lock:
            self._own.update(generations)

    def only_own_commits(self, since: int, now: int) -> bool:
        """Whether every generation in (since, now] was made through this object (no other
        process or Index committed in between). Forgets generations up to ``now``."""
        with self._own_lock:
            mine = all(g in self._own for g in range(since + 1, now + 1))
            self._own = {g for g in self._own if g > now}
        return mine

    def get_meta(self, key: str) -> str | None:
        rows = self.q("SELECT value FROM meta WHERE key = ?", [key])
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Inside a write transaction: set (or with None, remove) a meta fact."""
        if value is None:
            self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def generation(self) -> int:
        return int(self.q("SELECT value FROM meta WHERE key = 'generation'")[0][0])

    # ------------------------------------------------------------ partitions
    def partition(self, partition_id: bytes) -> PartitionRow | None:
        rows = self.q(
            "SELECT partition_id, owner_id, seq, record_id FROM partitions WHERE partition_id = ?",
            [partition_id],
        )
        return PartitionRow(*rows[0]) if rows else None

    def partitions(self) -> list[PartitionRow]:
        return [PartitionRow(*r) for r in self.q("SELECT partition_id, owner_id, seq, record_id FROM partitions")]

    def put_partition(self, row: PartitionRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO partitions (partition_id, owner_id, seq, record_id) VALUES (?, ?, ?, ?)",
            (row.partition_id, row.owner_id, row.seq, row.record_id),
        )

    def delete_partition(self, partition_id: bytes) -> None:
        self.db.execute("DELETE FROM partitions WHERE partition_id = ?", (partition_id,))

    # ------------------------------------------------------------ versions and heads
    def version(self, hash_: bytes) -> VersionRow | None:
        rows = self.q(f"SELECT {_VERSION_COLS} FROM versions WHERE hash = ?", [hash_])
        return _version(rows[0]) if rows else None

    def series(self, base_hash: bytes) -> list[VersionRow]:
        rows = self.q(
            f"SELECT {_VERSION_COLS} FROM versions WHERE base_hash = ? ORDER BY seq, created_us, hash", [base_hash]
        )
        return [_version(r) for r in rows]

    def versions_in(self, partition_id: bytes) -> list[VersionRow]:
        rows = self.q(f"SELECT {_VERSION_COLS} FROM versions WHERE partition_id = ?", [partition_id])
        return [_version(r) for r in rows]

    def head(self, base_hash: bytes) -> HeadRow | None:
        rows = self.q(f"SELECT {_HEAD_COLS} FROM heads WHERE base_hash = ?", [base_hash])
        return _head(rows[0]) if rows else None

    def heads_of(self, base_hashes: list[bytes]) -> dict[bytes, HeadRow]:
        """The head rows of these series (absent ones are left out), 500 per query."""
        out: dict[bytes, HeadRow] = {}
        for part in _batches(base_hashes):
            marks = ",".join("?" * len(part))
            for r in self.q(f"SELECT {_HEAD_COLS} FROM heads WHERE base_hash IN ({marks})", part):
                head = _head(r)
                out[head.base_hash] = head
        return out

    def heads_by_sort_key(self, partition_id: bytes, sealed_keys: list[bytes]) -> list[HeadRow]:
        marks = ",".join("?" * len(sealed_keys))
        rows = self.q(
            # INDEXED BY: without statistics SQLite would scan the partition's whole
            # primary-key range (milliseconds at 20,000 heads) instead of this index
            f"SELECT {_HEAD_COLS} FROM heads INDEXED BY heads_sort_key "
            f"WHERE partition_id = ? AND sort_key_ct IN ({marks})",
            [partition_id, *sealed_keys],
        )
        return [_head(r) for r in rows]

    def heads_in(self, partition_id: bytes) -> list[HeadRow]:
        rows = self.q(f"SELECT {_HEAD_COLS} FROM heads WHERE partition_id = ?", [partition_id])
        return [_head(r) for r in rows]

    def head_rows(self, partition_id: bytes, live_only: bool = False) -> list[tuple]:
        """(sort_key_ct, epoch, head_hash, base_hash, seq, length, created_us, tombstone) of
        every head of a partition (``live_only``: not the tombstones), as plain tuples
        (bulk listing)."""
        extra = " AND tombstone = 0" if live_only else ""
        return self.q(
            "SELECT sort_key_ct, epoch, head_hash, base_hash, seq, length, created_us, tombstone "
            f"FROM heads WHERE partition_id = ?{extra}",
            [partition_id],
        )

    def count_heads(self, partition_id: bytes, live_only: bool = True) -> int:
        extra = " AND tombstone = 0" if live_only else ""
        return self.q(f"SELECT count(*) FROM heads WHERE partition_id = ?{extra}", [partition_id])[0][0]

    def add_version(
        self, row: VersionRow, blob_refs: Iterable[bytes], notify: bool = True, feeds: list[bytes] | None = None
    ) -> None:
        """Insert a version, make it its series' head, record its blob references,
        and (``notify``) queue its notification in every subscribed feed (``feeds``:
        those of its partition, if the caller has just asked :meth:`subscribed_feeds`
        in the same transaction)."""
        if notify and feeds is None:
            feeds = self.subscribed_feeds(row.partition_id, time.time_ns() // 1000)
        self.add_versions([(row, blob_refs)], {row.partition_id: feeds or []} if notify else {})

    def add_versions(self, items: list[tuple[VersionRow, Iterable[bytes]]], feeds: dict[bytes, list[bytes]]) -> None:
        """:meth:`add_version` of many versions of distinct series, one statement per
        table for them all (a group commit: an ``rm -r`` queues thousands of tombstones,
        and the statements one by one were a quarter of the helper's time per tombstone).
        ``feeds``: the subscribed feeds of each of their partitions, asked in this transaction."""
        conn = self.db.conn
        conn.executemany(
            f"INSERT INTO versions ({_VERSION_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (_version_params(r) for r, _ in items),
        )
        conn.executemany(_SET_HEAD, (_head_params(r) for r, _ in items))
        conn.executemany(
            "INSERT OR IGNORE INTO refs (blob_id, version_hash) VALUES (?, ?)",
            ((b, r.hash) for r, refs in items for b in set(refs)),
        )
        now_us = time.time_ns() // 1000
        for r, _ in items:
            if feeds.get(r.partition_id):
                self.push_notifications(r.partition_id, r.hash, now_us, feeds[r.partition_id])

    def refs_of(self, version_hash: bytes) -> list[bytes]:
        return [r[0] for r in self.q("SELECT blob_id FROM refs WHERE version_hash = ?", [version_hash])]

    def is_referenced(self, blob_id: bytes) -> bool:
        return bool(self.q("SELECT 1 FROM refs WHERE blob_id = ? LIMIT 1", [blob_id]))

    def referenced(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Those of these blobs that some version still references, 500 per query."""
        out: set[bytes] = set()
        for part in _batches(list(blob_ids)):
            marks = ",".join("?" * len(part))
            out.update(r[0] for r in self.q(f"SELECT DISTINCT blob_id FROM refs WHERE blob_id IN ({marks})", part))
        return out

    def delete_series(self, base_hashes: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        """Remove these series; returns (their version hashes, payload blobs no longer
        referenced). One statement per table for 500 series or versions at a time: a
        removed partition's thousands of series go in a few statements."""
        hashes: list[bytes] = []
        candidates: set[bytes] = set()
        for part in _batches(base_hashes):
            marks = ",".join("?" * len(part))
            found = [r[0] for r in self.q(f"SELECT hash FROM versions WHERE base_hash IN ({marks})", part)]
            for vpart in _batches(found):
                vmarks = ",".join("?" * len(vpart))
                refs = self.q(f"SELECT blob_id FROM refs WHERE version_hash IN ({vmarks})", vpart)
                candidates.update(r[0] for r in refs)
                self.db.execute(f"DELETE FROM refs WHERE version_hash IN ({vmarks})", tuple(vpart))
            self.db.execute(f"DELETE FROM versions WHERE base_hash IN ({marks})", tuple(part))
            self.db.execute(f"DELETE FROM heads WHERE base_hash IN ({marks})", tuple(part))
            hashes += found
        still = self.referenced(candidates)
        return hashes, [b for b in candidates if b not in still]

    def delete_partition_rows(self, partition_id: bytes) -> None:
        """Forget every row of a partition (before rebuilding it from blobs)."""
        self.db.execute(
            "DELETE FROM refs WHERE version_hash IN (SELECT hash FROM versions WHERE partition_id = ?)",
            (partition_id,),
        )
        self.db.execute("DELETE FROM versions WHERE partition_id = ?", (partition_id,))
        self.db.execute("DELETE FROM heads WHERE partition_id = ?", (partition_id,))

    def known_blob_ids(self) -> set[bytes]:
        """Every blob id the index references (versions, payload refs, partition records)."""
        known = {r[0] for r in self.q("SELECT hash FROM versions")}
        known.update(r[0] for r in self.q("SELECT DISTINCT blob_id FROM refs"))
        known.update(r[0] for r in self.q("SELECT record_id FROM partitions"))
        return known

    def stats(self) -> dict[str, int]:
        return {
            "partitions": self.q("SELECT count(*) FROM partitions")[0][0],
            "versions": self.q("SELECT count(*) FROM versions")[0][0],
            "series": self.q("SELECT count(*) FROM heads")[0][0],
            "payload_blobs": self.q("SELECT count(DISTINCT blob_id) FROM refs")[0][0],
        }
