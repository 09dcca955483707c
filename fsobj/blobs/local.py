"""The local directory blob backend: small blobs as rows of one SQLite file, the others one file each.

Owns: everything below ``<store>/blobs`` and ``<store>/tmp``.

- A blob of up to :data:`SMALL_BLOB_MAX` bytes (headers, tombstones, list
  nodes, records, small chunks) is a row of ``blobs/small.sqlite``
  (:class:`SmallBlobs`). A group commit of 2,000 small files then writes rows
  of one file instead of creating 2,000 files: on ext4 each new file costs an
  inode allocation, and on a file system without a journal that allocation
  scans past every inode freed in the last minutes (measured: 75 % of the
  commit helper's CPU right after a mass deletion).
- A bigger blob is one file ``blobs/xx/<hex id>``, written to a unique
  temporary file in ``tmp/`` and renamed into place, so it is either absent or
  complete.

Readers look in the table first, then for a file (stores of format version 1
have only files). Durability: ``put(fsync=True)`` commits the row with
``synchronous=FULL`` or fsyncs the file, and :meth:`LocalBlobStore.sync` the
directories touched; blobs put without fsync become durable with
:meth:`LocalBlobStore.sync_all` (one ``syncfs``, which also writes the
table's WAL). Never sees plaintext; its one table is its own (the index's SQL
lives in ``fsobj.index``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from fsobj.errors import FormatError, IntegrityError, NoSpaceError, NotFoundError

_SYNC_FILE_RANGE_WRITE = 2
SMALL_BLOB_MAX = 16 * 1024  # blobs up to this size are rows of blobs/small.sqlite
SMALL_DB = "small.sqlite"
SMALL_DB_VERSION = 1  # PRAGMA user_version of small.sqlite (docs/format.md)
BUSY_TIMEOUT_S = 60.0
EARLY_WRITEBACK = 128 * 1024  # blobs from this size start write-back at once; smaller ones wait for syncfs

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if not hasattr(_LIBC, "syncfs"):  # not Linux
        _LIBC = None
except OSError:  # pragma: no cover - non-glibc platforms fall back to os.sync()
    _LIBC = None


class SmallBlobs:
    """Blobs of up to :data:`SMALL_BLOB_MAX` bytes as rows of ``blobs/small.sqlite``.

    Every call is its own transaction, so a writer holds the file's lock for
    one row at a time (the daemon, its commit helper and the CLI share it).
    Connections wait in a pool between calls: one per thread would leak as
    worker threads come and go. A reader never creates the file (a store of
    format version 1 has none); the first put does. Deleted rows are
    overwritten in place (``secure_delete``) and :meth:`compact` truncates
    the WAL, so a purged blob does not linger in the file.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS blob ("
        "id BLOB PRIMARY KEY, "  # the 32-byte blob id
        "written INTEGER NOT NULL, "  # when it was put: Unix time in nanoseconds
        "data BLOB NOT NULL)"  # the blob, byte for byte what a blob file would hold
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._exists = os.path.exists(path)
        self.deleted = False  # rows were deleted since the last compact()

    def create(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(self.SCHEMA)
            db.execute(f"PRAGMA user_version={SMALL_DB_VERSION}")
        except sqlite3.Error as e:
            raise _sql_error(self.path, e) from e
        finally:
            db.close()
        fsync_dir(os.path.dirname(self.path))
        self._exists = True

    def _take(self, create: bool) -> sqlite3.Connection | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        if not self._exists:
            if not create and not os.path.exists(self.path):
                return None
            self.create()
        uri = Path(self.path).absolute().as_uri() + "?mode=rw"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            (version,) = db.execute("PRAGMA user_version").fetchone()
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA secure_delete=ON")
        except sqlite3.Error as e:
            raise _sql_error(self.path, e) from e
        if version != SMALL_DB_VERSION:
            db.close()
            raise FormatError(f"{self.path}: table version {version} is not supported (this fsobj reads 1)")
        return db

    def _give(self, db: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(db)
                return
        db.close()

    @contextmanager
    def _connection(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A pooled connection (None: no table yet and ``create`` is false), given back
        after use; SQLite's errors come out as fsobj's."""
        db = self._take(create)
        if db is None:
            yield None
            return
        try:
            yield db
        except sqlite3.Error as e:
            raise _sql_error(self.path, e) from e
        finally:
            self._give(db)

    def _run(self, sql: str, params: tuple[object, ...], write: bool = False, sync: bool = False) -> tuple[list, int]:
        """(rows, rows changed) of one statement; ``sync``: durable on return (``synchronous=FULL``)."""
        with self._connection(create=write) as db:
            if db is None:
                return [], 0
            if sync:
                db.execute("PRAGMA synchronous=FULL")
            try:
                cur = db.execute(sql, params)
                return cur.fetchall(), cur.rowcount
            finally:
                if sync:
                    db.execute("PRAGMA synchronous=NORMAL")

    def put(self, blob_id: bytes, data: bytes, fsync: bool, replace: bool) -> bool:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        sql = f"{verb} INTO blob (id, written, data) VALUES (?, ?, ?)"
        return self._run(sql, (blob_id, time.time_ns(), data), write=True, sync=fsync)[1] > 0

    def put_many(self, rows: list[tuple[bytes, bytes]]) -> None:
        """Rows that do not exist yet, in one transaction (durable after the next syncfs)."""
        now = time.time_ns()
        with self._connection(create=True) as db:
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT OR IGNORE INTO blob (id, written, data) VALUES (?, ?, ?)", [(i, now, d) for i, d in rows]
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get(self, blob_id: bytes) -> bytes | None:
        rows = self._run("SELECT data FROM blob WHERE id = ?", (blob_id,))[0]
        return rows[0][0] if rows else None

    def peek(self, blob_id: bytes, n: int) -> bytes | None:
        rows = self._run("SELECT substr(data, 1, ?) FROM blob WHERE id = ?", (n, blob_id))[0]
        return rows[0][0] if rows else None

    def exists(self, blob_id: bytes) -> bool:
        return bool(self._run("SELECT 1 FROM blob WHERE id = ?", (blob_id,))[0])

    def stat(self, blob_id: bytes) -> tuple[int, float] | None:
        rows = self._run("SELECT length(data), written FROM blob WHERE id = ?", (blob_id,))[0]
        return (rows[0][0], rows[0][1] / 1e9) if rows else None

    def delete(self, blob_id: bytes) -> bool:
        gone = self._run("DELETE FROM blob WHERE id = ?", (blob_id,), write=True)[1] > 0
        self.deleted = self.deleted or gone
        return gone

    def delete_many(self, blob_ids: Sequence[bytes]) -> None:
        """Delete these rows (absent ones are ignored) in one transaction."""
        with self._connection(create=False) as db:
            if db is None:
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                before = db.total_changes
                db.executemany("DELETE FROM blob WHERE id = ?", [(b,) for b in blob_ids])
                gone = db.total_changes > before
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self.deleted = self.deleted or gone

    def ids(self) -> list[bytes]:
        return [r[0] for r in self._run("SELECT id FROM blob", ())[0]]

    def usage(self) -> tuple[int, int]:
        """(rows, bytes of their blobs): what the rows hold, not the database's file sizes."""
        rows = self._run("SELECT count(*), coalesce(sum(length(data)), 0) FROM blob", ())[0]
        return (rows[0][0], rows[0][1]) if rows else (0, 0)

    def compact(self) -> None:
        """After deletes: copy the WAL into the file and truncate it (best effort: a
        reader that still uses the WAL leaves it for the next time)."""
        if self.deleted:
            self.deleted = False
            self._run("PRAGMA wal_checkpoint(TRUNCATE)", ())

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()


def _sql_error(path: str, e: sqlite3.Error) -> Exception:
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return NoSpaceError(f"no space left on the store's device writing {path}")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return IntegrityError(f"{path} is damaged ({e}); run 'fsobj verify'")
    return e


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self._blob_dir_s = str(self.blob_dir)
        self._tmp_dir_s = str(self.tmp_dir)
        self._dirty: set[str] = set()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._counter = 0
        self.small = SmallBlobs(f"{self._blob_dir_s}/{SMALL_DB}")

    @classmethod
    def create(cls, root: Path) -> LocalBlobStore:
        store = cls(root)
        store.blob_dir.mkdir(parents=True, exist_ok=True)
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (store.blob_dir / f"{i:02x}").mkdir(exist_ok=True)
        store.small.create()
        return store

    def close(self) -> None:
        self.small.close()

    def path(self, blob_id: bytes) -> Path:
        return Path(self._file(blob_id))

    def _file(self, blob_id: bytes) -> str:
        """The blob's file name as a string: pathlib costs more than the system calls
        for small blobs (a group commit of small files writes several per file)."""
        h = blob_id.hex()
        return f"{self._blob_dir_s}/{h[:2]}/{h}"

    def _tmp_name(self) -> str:
        with self._lock:
            self._counter += 1
            n = self._counter
        return f"{self._tmp_dir_s}/{os.getpid()}-{threading.get_ident()}-{n}.tmp"

    def put(self, blob_id: bytes, data: bytes | Sequence[bytes], fsync: bool = True, replace: bool = False) -> bool:
        """Atomic write (a row, or temp file + rename). ``fsync=False`` defers
        durability to :meth:`sync_all` (group commit); ``replace`` overwrites a damaged copy."""
        dest = self._file(blob_id)
        parts = _parts(data)
        if sum(len(p) for p in parts) <= SMALL_BLOB_MAX:
            if replace:
                self.delete(blob_id)  # also a damaged file copy (format-1 stores)
            elif os.path.exists(dest):
                return False
            return self.small.put(blob_id, b"".join(parts), fsync, replace)
        if not replace and os.path.exists(dest):
            return False
        tmp = self._tmp_name()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                size = _write_all(fd, parts)
                if fsync:
                    os.fsync(fd)
                elif _LIBC is not None and size >= EARLY_WRITEBACK:
                    # start write-back now, without waiting, so the later syncfs has little left to do
                    _LIBC.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)
            finally:
                os.close(fd)
            os.rename(tmp, dest)
        except OSError as e:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"no space left on the store's device writing blob {blob_id.hex()}") from e
            raise
        with self._lock:
            self._dirty.add(blob_id.hex()[:2])
        return True

    def put_many(self, items: Sequence[tuple[bytes, bytes | Sequence[bytes]]]) -> None:
        """Small blobs in one transaction (an id that also exists as a file of a
        version-1 store gets a row too: reads use the row, delete removes both)."""
        rows = []
        for blob_id, data in items:
            parts = _parts(data)
            if sum(len(p) for p in parts) <= SMALL_BLOB_MAX:
                rows.append((blob_id, b"".join(parts)))
            else:
                self.put(blob_id, parts, fsync=False)
        if rows:
            self.small.put_many(rows)

    def get(self, blob_id: bytes, size: int | None = None) -> bytes:
        """The blob. ``size``: what the caller expects it to be; a blob bigger than
        :data:`SMALL_BLOB_MAX` is then read from its file without asking the table
        first (a chunk read: the lookup and the GIL hand-offs around it cost more
        than the read's own three system calls)."""
        big = size is not None and size > SMALL_BLOB_MAX
        data = None if big else self.small.get(blob_id)
        if data is None:
            data = self._read_file(blob_id, size)
        if data is None and big:
            data = self.small.get(blob_id)  # not the size the caller expected: it will say so
        if data is None:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store")
        return data

    def _read_file(self, blob_id: bytes, size: int | None) -> bytes | None:
        """A blob file's bytes in as few system calls as possible (open, read, close)."""
        try:
            fd = os.open(self._file(blob_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            want = (size if size is not None else os.fstat(fd).st_size) + 1
            data = os.read(fd, want)
            if len(data) < want:  # a short read of a regular file: the end of it
                return data
            parts = [data]  # longer than expected (the caller's checks will refuse it)
            while part := os.read(fd, 1 << 20):
                parts.append(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def get_into(self, blob_id: bytes, buf: memoryview) -> int:
        """:meth:`get` into ``buf``: where a blob of ``len(buf) - 1`` bytes would be
        kept is looked at first."""
        big = len(buf) > SMALL_BLOB_MAX + 1
        got = self._read_file_into(blob_id, buf) if big else None
        if got is not None:
            return got
        data = self.small.get(blob_id)
        if data is not None:
            got = min(len(data), len(buf))
            buf[:got] = data[:got]
            return got
        got = None if big else self._read_file_into(blob_id, buf)
        if got is None:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store")
        return got

    def _read_file_into(self, blob_id: bytes, buf: memoryview) -> int | None:
        """Fill ``buf`` from a blob file (None if there is none); the bytes read."""
        try:
            fd = os.open(self._file(blob_id), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            got = 0
            while got < len(buf) and (n := os.readv(fd, [buf[got:]])):
                got += n
            return got
        finally:
            os.close(fd)

    def exists(self, blob_id: bytes) -> bool:
        # the file first: a commit checks every chunk its version names, and the chunks
        # of a big file are files (one stat each, instead of a query and a stat)
        return os.path.exists(self._file(blob_id)) or self.small.exists(blob_id)

    def prefetch(self, blob_id: bytes) -> None:
        # The kernel reads the file into the page cache in the background; a
        # sequential reader that asks a few chunks ahead keeps the disk busy
        # while its threads decrypt (measured: cold reads of 1 GiB in 0.5 MiB
        # blobs 1.0-1.4 GiB/s with 8 blobs hinted ahead, 0.5-0.9 without).
        try:
            fd = os.open(self._file(blob_id), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def peek(self, blob_id: bytes, n: int) -> bytes:
        data = self.small.peek(blob_id, n)
        if data is not None:
            return data
        try:
            with open(self._file(blob_id), "rb") as f:
                return f.read(n)
        except FileNotFoundError:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store") from None

    def stat(self, blob_id: bytes, size: int | None = None) -> tuple[int, float]:
        """(size, modification time). ``size``: the size the caller expects; one bigger
        than :data:`SMALL_BLOB_MAX` is looked for as a file only, as a row could only be
        of another size (damage, which ``fsobj verify`` reports). The payload writer asks
        this of every new chunk before writing it: one ``stat`` instead of a ``stat``
        and a query of the table."""
        big = size is not None and size > SMALL_BLOB_MAX
        row = None if big else self.small.stat(blob_id)
        if row is not None:
            return row
        try:
            st = os.stat(self._file(blob_id))
        except FileNotFoundError:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store") from None
        return st.st_size, st.st_mtime

    def delete(self, blob_id: bytes) -> None:
        self.small.delete(blob_id)
        try:
            os.unlink(self._file(blob_id))
        except FileNotFoundError:
            return
        with self._lock:
            self._dirty.add(blob_id.hex()[:2])

    def delete_many(self, blob_ids: Sequence[bytes]) -> None:
        self.small.delete_many(blob_ids)
        dirty = set()
        for blob_id in blob_ids:
            try:
                os.unlink(self._file(blob_id))
            except FileNotFoundError:
                continue
            dirty.add(blob_id.hex()[:2])
        with self._lock:
            self._dirty |= dirty

    def list(self) -> Iterator[bytes]:
        rows = set(self.small.ids())
        yield from rows
        for blob_id, _ in self._blob_files():
            if blob_id not in rows:
                yield blob_id

    def _blob_files(self) -> Iterator[tuple[bytes, Path]]:
        """(id, path) of every blob file, by directory."""
        for sub in sorted(os.listdir(self.blob_dir)):
            if len(sub) != 2 or not os.path.isdir(self.blob_dir / sub):
                continue
            for name in os.listdir(self.blob_dir / sub):
                if len(name) != 64:
                    continue
                try:
                    blob_id = bytes.fromhex(name)
                except ValueError:
                    continue
                yield blob_id, self.blob_dir / sub / name

    def usage(self) -> tuple[int, int]:
        """(blobs, their bytes): the blob files by their sizes, and the rows of
        small.sqlite by the bytes of their blobs, not by the database's file sizes,
        which move by SQLite's own rules (pages, the WAL) by more than a put's
        envelopes add."""
        count = size = 0
        for _, path in self._blob_files():
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                continue  # removed meanwhile (gc)
            count += 1
        rows, row_bytes = self.small.usage()
        return count + rows, size + row_bytes

    def sync(self) -> None:
        # _sync_lock: a caller must not return while another thread is still
        # fsyncing directories it took from the shared dirty set.
        with self._sync_lock:
            self._sync_dirs()
        self.small.compact()

    def _sync_dirs(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for name in sorted(dirty):
            fsync_dir(self.blob_dir / name)

    def sync_all(self) -> None:
        """Make every blob written so far durable, data and names (syncfs)."""
        with self._lock:
            covered = set(self._dirty)  # names put later may miss this syncfs
        if _LIBC is None:
            os.sync()  # reports no errors; only where syncfs is unavailable
        else:
            fd = os.open(self.blob_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _LIBC.syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    if err in (errno.ENOSPC, errno.EDQUOT):
                        raise NoSpaceError("no space left on the store's device while syncing blobs")
                    raise OSError(err, f"syncfs of the store failed: {os.strerror(err)}")
            finally:
                os.close(fd)
        with self._lock:
            self._dirty -= covered

    def clean_tmp(self) -> int:
        """Remove temporary files left by writers that no longer run; returns how many."""
        n = 0
        for name in os.listdir(self.tmp_dir):
            pid = name.split("-", 1)[0]
            if pid.isdigit() and _alive(int(pid)):
                continue
            (self.tmp_dir / name).unlink(missing_ok=True)
            n += 1
        return n


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries durable (on the mount: drains the group commit)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parts(data: bytes | Sequence[bytes]) -> list[bytes]:
    """A blob given as bytes or as parts to concatenate, as a list of parts."""
    return [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)


def _write_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> int:
    """Write every part; returns the bytes written."""
    views = [memoryview(p) for p in parts if len(p)]
    total = 0
    while views:
        n = os.writev(fd, views)
        total += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
