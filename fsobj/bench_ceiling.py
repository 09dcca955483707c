"""The least work a cold read of fsobj's format can take on the daemon's binding
(pyfuse3 on trio): the benchmark's ceiling for a cold sequential read.

Owns nothing of the store. ``python -m fsobj.bench_ceiling make SRC DIR`` cuts
SRC into chunks of ``CHUNK`` bytes and seals each one as the store seals a chunk
(``fsobj.crypto``: a blob envelope, AES-256-GCM under a random epoch key, bound
to the chunk's id, the keyed BLAKE3 of its plaintext), one file per chunk.
``python -m fsobj.bench_ceiling mount DIR MOUNTPOINT`` serves them read-only as
the one file ``big.bin``, and does for each chunk only what every cold read
must: read the blob, decrypt it and check it against its id (a mismatch is
``EIO``, never data). It does nothing else the daemon does (no index, no
header, no history, no staging, fixed-size chunks, no locks), and it does that
the cheapest way found: ``READ_AHEAD`` chunks fetched ahead on one worker
thread per core, each decrypted straight into its slot of one arena, so that a
reply across two chunks is a slice of it (never joined, never allocated). The
mount takes the daemon's kernel read-ahead (1 MiB requests) and request loop
(``fsobj.fs.loop``), and awaits its fetches as the daemon's reader does
(futures of a thread pool, ``fsobj.fs.reader.wait_future``).

``fsobj bench --mount`` runs it as the target ``ceiling``, with the cold reads
only: the rate a daemon on pyfuse3 that checks every chunk as fsobj does reaches
on that machine when it does nothing else, done the cheapest way found so far
(docs/mount.md, "The ceiling, measured"). Arena slots follow the
reads, so it is meant for one sequential reader (``cat``); a read elsewhere
waits for the slot it needs. Not for data: the epoch key lies in DIR.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from fsobj.bench_null import serve
from fsobj.crypto import ENVELOPE_OVERHEAD, KIND_CHUNK, EpochKeys, open_blob_into, seal_blob_parts
from fsobj.errors import FsobjError, IntegrityError
from fsobj.fs import loop
from fsobj.fs.daemon import DEFAULT_READ_AHEAD_KB, set_read_ahead
from fsobj.fs.reader import READ_AHEAD, wait_future  # chunks fetched ahead, as the reader does
from fsobj.store.payload import PREFETCH  # blobs hinted to the kernel further ahead of each fetch

CHUNK = 1024 * 1024  # bytes of plaintext per chunk (fsobj's chunks are cut by content, 1 MiB on average or less)
SLOTS = 2 * READ_AHEAD  # arena slots of CHUNK bytes
NAME = b"big.bin"
FILE_INODE = pyfuse3.ROOT_INODE + 1
PARTITION = bytes(32)  # the partition id every envelope is bound to


def make(src: Path, out: Path) -> int:
    """Seal ``src`` into ``out`` (chunks/NNNNNNNN, ids, key, size); the number of chunks."""
    epoch_key = os.urandom(32)
    keys = EpochKeys.from_epoch_key(1, epoch_key)
    (out / "chunks").mkdir(parents=True)
    ids = []
    size = 0
    with open(src, "rb") as f:
        while block := f.read(CHUNK):
            blob_id = keys.chunk_id(block)
            with open(out / "chunks" / f"{len(ids):08d}", "wb") as g:
                g.writelines(seal_blob_parts(KIND_CHUNK, keys, PARTITION, blob_id, block))
            ids.append(blob_id)
            size += len(block)
    (out / "ids").write_bytes(b"".join(ids))
    (out / "key").write_bytes(epoch_key)
    (out / "size").write_text(f"{size}\n")
    return len(ids)


@dataclass
class Slot:
    """One arena slot: the chunk it holds, its fetch, and how many reads use it. It goes
    to another chunk only once its fetch has ended, no read pins it, and it is ``gone``
    (read to its end, failed, or wanted by another chunk)."""

    chunk: int
    fetch: Future[None]
    pins: int = 0
    gone: bool = False


class CeilingOps(pyfuse3.Operations):
    """A read-only directory with one file, read chunk by chunk from sealed blobs."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base
        self.keys = EpochKeys.from_epoch_key(1, (base / "key").read_bytes())
        raw = (base / "ids").read_bytes()
        self.ids = [raw[i : i + 32] for i in range(0, len(raw), 32)]
        self.size = int((base / "size").read_text())
        self.arena = bytearray(SLOTS * CHUNK)
        self.slots: dict[int, Slot] = {}  # slot index -> the chunk in it
        self.freed = trio.Event()  # set (and replaced) whenever a slot is given up
        # fetches go straight to a pool and are awaited as futures, as fsobj.fs.reader does
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="ceiling")
        self.local = threading.local()  # each worker thread's blob buffer
        self.pending_read_ahead: str | None = None  # the mount point, until its read-ahead is set

    # ------------------------------------------------------------ chunks
    def _path(self, i: int) -> str:
        return os.fspath(self.base / "chunks" / f"{i:08d}")

    def _load(self, i: int) -> None:
        """On a worker thread: chunk ``i`` into its slot, checked; IntegrityError if it does not verify."""
        buf = getattr(self.local, "buf", None)
        if buf is None:
            buf = self.local.buf = bytearray(CHUNK + ENVELOPE_OVERHEAD)
        ahead = i + PREFETCH
        if ahead < len(self.ids):
            fd = os.open(self._path(ahead), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        fd = os.open(self._path(i), os.O_RDONLY)
        try:
            n = os.readv(fd, [buf])
        finally:
            os.close(fd)
        start = (i % SLOTS) * CHUNK
        length = min(CHUNK, self.size - i * CHUNK)
        out = memoryview(self.arena)[start : start + length]
        open_blob_into(memoryview(buf)[:n], KIND_CHUNK, self.keys, PARTITION, self.ids[i], out)
        if self.keys.chunk_id(out) != self.ids[i]:
            raise IntegrityError(f"chunk {i} does not match its id")

    def _start(self, i: int) -> Slot | None:
        """Chunk ``i``'s slot, its fetch started if the slot was free; None if another chunk holds it."""
        s = self.slots.get(i % SLOTS)
        if s is not None:
            return s if s.chunk == i else None
        s = self.slots[i % SLOTS] = Slot(i, self.pool.submit(self._load, i))
        return s

    def _free(self, s: Slot) -> None:
        if s.gone and s.pins == 0 and s.fetch.done() and self.slots.get(s.chunk % SLOTS) is s:
            del self.slots[s.chunk % SLOTS]
            self.freed.set()
            self.freed = trio.Event()

    async def _chunk(self, i: int) -> Slot:
        """Chunk ``i``'s slot, pinned (the caller unpins it), its fetch ended."""
        while (s := self._start(i)) is None:
            other = self.slots[i % SLOTS]
            other.gone = True  # wanted by another chunk: it goes once nothing uses it
            if not other.fetch.done():
                with contextlib.suppress(OSError, FsobjError):
                    await wait_future(other.fetch)
            self._free(other)
            if self.slots.get(i % SLOTS) is other:
                await self.freed.wait()
        s.pins += 1
        with contextlib.suppress(OSError, FsobjError):  # the caller asks the fetch for its outcome
            await wait_future(s.fetch)
        return s

    # ------------------------------------------------------------ requests
    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.entry_timeout = e.attr_timeout = 300
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink = stat.S_IFDIR | 0o555, 2
        else:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFREG | 0o444, 1, self.size
            e.st_blocks = (self.size + 511) // 512
        return e

    def _first_request(self) -> None:
        if self.pending_read_ahead is not None:  # INIT is answered: the kernel now keeps what we set
            set_read_ahead(Path(self.pending_read_ahead), DEFAULT_READ_AHEAD_KB)
            self.pending_read_ahead = None

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._first_request()
        if inode not in (pyfuse3.ROOT_INODE, FILE_INODE):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._first_request()
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        # as the daemon's handlers run: one that waits lets a spare task read the next request
        return await loop.watched(self._read(off, size))

    async def _read(self, off: int, size: int) -> bytes | memoryview:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        first, last = off // CHUNK, (end - 1) // CHUNK
        for j in range(first, min(last + READ_AHEAD + 1, len(self.ids))):
            self._start(j)  # read-ahead where the slot is free
        got: list[Slot] = []
        try:
            for i in range(first, last + 1):
                s = await self._chunk(i)
                got.append(s)
                if s.fetch.exception() is not None:  # unreadable, or not what its id says
                    s.gone = True
                    raise pyfuse3.FUSEError(errno.EIO)
            a = (first % SLOTS) * CHUNK + off - first * CHUNK
            if (last % SLOTS) >= (first % SLOTS):  # side by side in the arena: one slice
                return memoryview(self.arena)[a : a + end - off]
            head = memoryview(self.arena)[a : (first % SLOTS + 1) * CHUNK]
            return bytes(head) + memoryview(self.arena)[: end - off - len(head)]  # across the arena's end
        finally:
            for s in got:  # pyfuse3 copies the reply before any other task runs
                s.pins -= 1
                s.gone = s.gone or end >= min((s.chunk + 1) * CHUNK, self.size)  # read to its end
                self._free(s)


USAGE = "usage: python -m fsobj.bench_ceiling make SRC DIR | mount DIR MOUNTPOINT"


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("make", "mount"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "make":
        make(Path(argv[1]), Path(argv[2]))
        return 0
    ops = CeilingOps(Path(argv[1]))
    ops.pending_read_ahead = os.path.abspath(argv[2])
    opts = set(pyfuse3.default_options) | {"fsname=fsobj-ceiling", "default_permissions", "ro"}
    pyfuse3.init(ops, argv[2], opts)
    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
        ops.pool.shutdown(wait=True, cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
