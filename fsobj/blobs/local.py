"""The local directory blob backend: one file per blob under ``blobs/xx/``.

Owns: the files below ``<store>/blobs`` and ``<store>/tmp``. Each blob is
written to a unique temporary file, then renamed into place, so a blob file is
either absent or complete. Durability: ``put(fsync=True)`` fsyncs the file and
:meth:`LocalBlobStore.sync` the directories touched; blobs put without fsync
become durable with :meth:`LocalBlobStore.sync_all` (one ``syncfs``). Never sees plaintext or SQL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from fsobj.errors import NoSpaceError, NotFoundError

_SYNC_FILE_RANGE_WRITE = 2
EARLY_WRITEBACK = 128 * 1024  # blobs from this size start write-back at once; smaller ones wait for syncfs

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if not hasattr(_LIBC, "syncfs"):  # not Linux
        _LIBC = None
except OSError:  # pragma: no cover - non-glibc platforms fall back to os.sync()
    _LIBC = None


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

    @classmethod
    def create(cls, root: Path) -> LocalBlobStore:
        store = cls(root)
        store.blob_dir.mkdir(parents=True, exist_ok=True)
        store.tmp_dir.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (store.blob_dir / f"{i:02x}").mkdir(exist_ok=True)
        return store

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
        """Atomic write (temp file + rename). ``fsync=False`` defers durability
        to :meth:`sync_all` (group commit); ``replace`` overwrites a damaged copy."""
        dest = self._file(blob_id)
        if not replace and os.path.exists(dest):
            return False
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
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

    def get(self, blob_id: bytes) -> bytes:
        try:
            with open(self._file(blob_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store") from None

    def exists(self, blob_id: bytes) -> bool:
        return os.path.exists(self._file(blob_id))

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
        try:
            with open(self._file(blob_id), "rb") as f:
                return f.read(n)
        except FileNotFoundError:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store") from None

    def stat(self, blob_id: bytes) -> tuple[int, float]:
        try:
            st = os.stat(self._file(blob_id))
        except FileNotFoundError:
            raise NotFoundError(f"blob {blob_id.hex()} is missing from the store") from None
        return st.st_size, st.st_mtime

    def delete(self, blob_id: bytes) -> None:
        try:
            os.unlink(self._file(blob_id))
        except FileNotFoundError:
            return
        with self._lock:
            self._dirty.add(blob_id.hex()[:2])

    def list(self) -> Iterator[bytes]:
        for sub in sorted(os.listdir(self.blob_dir)):
            for name in os.listdir(self.blob_dir / sub):
                if len(name) == 64:
                    try:
                        yield bytes.fromhex(name)
                    except ValueError:
                        continue

    def sync(self) -> None:
        # _sync_lock: a caller must not return while another thread is still
        # fsyncing directories it took from the shared dirty set.
        with self._sync_lock:
            self._sync_dirs()

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
