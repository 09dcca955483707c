"""Write staging: the bytes an open file has that its committed version lacks.

Owns: the dirty extents of one open file, their plaintext, its current size,
and how to read the file's logical content as the three kinds of piece it is
made of: *dirty* (written since the last commit, held here), *base* (the
committed version's payload, read through ``fsobj.fs.reader``) and *zero*
(holes: sparse writes, or the part of a file extended by ``truncate``).

Where plaintext waits (docs/mount.md, "Staging"): in memory up to
``MEMORY_LIMIT``, then in an anonymous temporary file (``O_TMPFILE``: it never
has a name) in the mount's 0700 cache directory, outside the store. The
stagings of a mount share a budget of memory (``fsobj.fs.budget``): a staging
that would grow past it spills to its file at once, whatever its size. Both are
dropped when the version is committed or the file is discarded. Pure data
structure: no store, no trio; file I/O is plain ``pread``/``pwrite``.

A spill file whose whole content is also in payload blobs (a finished payload
stream, ``fsobj.fs.stream``) can be *released* before the commit makes those
blobs durable: it is emptied, so the commit's ``syncfs`` does not write the
same bytes to disk a second time. Until :meth:`Staging.restore` refills it,
the staging's bytes cannot be read (``EIO``, never zeros); the open file's
owner keeps the payload that holds them (``OpenFile.streamed``).
"""

from __future__ import annotations

import bisect
import errno
import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fsobj.fs.budget import ByteBudget, Share

MEMORY_LIMIT = 4 * 1024 * 1024

DIRTY, BASE, ZERO = "dirty", "base", "zero"


class Extents:
    """Sorted, disjoint, non-adjacent half-open intervals [start, end)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.starts, self.ends, strict=True))

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect.bisect_left(self.ends, start)  # first interval that ends at/after start
        j = bisect.bisect_right(self.starts, end)  # intervals [i, j) touch [start, end]
        if i < j:
            start = min(start, self.starts[i])
            end = max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def cut(self, size: int) -> None:
        """Forget everything at or beyond ``size``."""
        i = bisect.bisect_left(self.ends, size + 1)
        del self.starts[i + 1 :], self.ends[i + 1 :]
        if i < len(self.starts):
            if self.starts[i] >= size:
                del self.starts[i], self.ends[i]
            else:
                self.ends[i] = size

    def covers(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start) - 1
        return end <= start or (i >= 0 and self.ends[i] >= end)

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """Split [start, end) into (s, e, dirty) pieces."""
        pos = start
        i = bisect.bisect_right(self.ends, start)  # first interval ending after pos
        while pos < end:
            if i < len(self.starts) and self.starts[i] <= pos:
                e = min(end, self.ends[i])
                yield pos, e, True
                i += 1
            else:
                e = min(end, self.starts[i]) if i < len(self.starts) else end
                yield pos, e, False
            pos = e


@dataclass(frozen=True)
class Piece:
    start: int
    end: int
    kind: str  # DIRTY, BASE or ZERO


class Staging:
    """The dirty state of one open file over a base payload of ``base_length`` bytes."""

    def __init__(self, base_length: int, spill_dir: str | None, budget: ByteBudget | None = None) -> None:
        self.size = base_length
        self.base_limit = base_length  # bytes below this that are not dirty come from the base
        self.extents = Extents()
        self.spill_dir = spill_dir
        self._mem: bytearray | None = bytearray()
        self._file: tempfile._TemporaryFileWrapper | None = None  # type: ignore[type-arg]
        self.released = False  # the spill file was emptied: its bytes are elsewhere (release)
        self.lost = False  # bytes owed to the spill file could not be written there (lose)
        self._share = Share(budget)  # _mem's bytes in the mount's budget for stagings

    # ------------------------------------------------------------ changes
    def write(self, off: int, data: bytes) -> None:
        self._readable()
        end = off + len(data)
        if self._mem is not None and (end > MEMORY_LIMIT or not self._share.grow_to(end)):
            self._spill()
        if self._mem is not None:
            if len(self._mem) < off:
                self._mem.extend(bytes(off - len(self._mem)))
            self._mem[off:end] = data
        else:
            assert self._file is not None
            pwrite_all(self._file.fileno(), data, off)
        self._written(off, end)

    def write_elsewhere(self, off: int, n: int) -> None:
        """Record a write of ``n`` bytes at ``off`` whose bytes someone else owes the
        spill file (a payload stream, ``fsobj.fs.stream``): until they are written there,
        nobody may read them from here."""
        assert self._file is not None
        self._written(off, off + n)

    def _written(self, off: int, end: int) -> None:
        self.extents.add(off, end)
        self.size = max(self.size, end)

    @property
    def spill_fd(self) -> int | None:
        return self._file.fileno() if self._file is not None else None

    def truncate(self, size: int) -> None:
        self._readable()
        if size < self.size:
            self.extents.cut(size)
            self.base_limit = min(self.base_limit, size)
            if self._mem is not None:
                del self._mem[size:]
                self._share.shrink_to(len(self._mem))
            elif self._file is not None:
                os.ftruncate(self._file.fileno(), size)
        self.size = size

    def _spill(self) -> None:
        assert self._mem is not None
        f = tempfile.TemporaryFile(dir=self.spill_dir, prefix="fsobj-staging-")
        pwrite_all(f.fileno(), self._mem, 0)
        self._file, self._mem = f, None  # type: ignore[assignment]
        self._share.shrink_to(0)

    def release(self) -> bool:
        """Empty the spill file of a fully written staging whose bytes are safe elsewhere;
        False (nothing done) if it is in memory. Dirty pages of the emptied file are
        dropped, not written back."""
        if self._file is None or not self.extents.covers(0, self.size):
            return False
        os.ftruncate(self._file.fileno(), 0)
        self.released = True
        return True

    def restore(self, content: Iterable[bytes]) -> None:
        """Refill a released spill file with the whole content, in order."""
        assert self._file is not None and self.released
        pos = 0
        for data in content:
            pwrite_all(self._file.fileno(), data, pos)
            pos += len(data)
        if pos != self.size:
            raise OSError(errno.EIO, f"restored {pos} of {self.size} staged bytes")
        self.released = False

    def lose(self) -> None:
        """Bytes recorded with :meth:`write_elsewhere` never reached the spill file: from
        now on every read, change and commit of this staging fails with EIO (never zeros)."""
        self.lost = True

    def _readable(self) -> None:
        """Refuse to read or change a released or lost staging (EIO)."""
        if self.lost:
            raise OSError(errno.EIO, "staged writes were lost before they reached the spill file")
        if self.released:
            raise OSError(errno.EIO, "the staged bytes are only in the uncommitted payload")

    def close(self) -> None:
        """Drop the plaintext."""
        self._mem = bytearray()
        self._share.shrink_to(0)
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def in_memory(self) -> bool:
        return self._file is None

    # ------------------------------------------------------------ reading
    def pieces(self, off: int, n: int) -> list[Piece]:
        """The pieces of [off, off+n) clipped to the file size."""
        end = min(self.size, off + n)
        out: list[Piece] = []
        for s, e, dirty in self.extents.pieces(off, end):
            if dirty:
                out.append(Piece(s, e, DIRTY))
                continue
            if s < self.base_limit:
                out.append(Piece(s, min(e, self.base_limit), BASE))
            if e > self.base_limit:
                out.append(Piece(max(s, self.base_limit), e, ZERO))
        return out

    def read_dirty(self, off: int, n: int) -> bytes:
        self._readable()
        if self._mem is not None:
            data = bytes(self._mem[off : off + n])
            return data + bytes(n - len(data))
        assert self._file is not None
        data = os.pread(self._file.fileno(), n, off)
        return data + bytes(n - len(data))

    def fully_dirty(self) -> bool:
        """True if no byte comes from the base (a new file, or ``O_TRUNC`` then writes)."""
        return self.base_limit == 0 or self.extents.covers(0, self.base_limit)

    def whole_file(self) -> BinaryIO | None:
        """A reader of the whole content straight from the spill file, when every byte of it
        is dirty (the common ``cp``/``O_TRUNC`` case): the commit then reads a plain file."""
        if self._file is None or not self.extents.covers(0, self.size):
            return None
        self._readable()
        return _Bounded(os.dup(self._file.fileno()), self.size)

    def memory_bytes(self) -> bytes | None:
        """The whole content, if it is small, in memory and fully dirty with no holes."""
        if self._mem is not None and self.extents.covers(0, self.size) and self.size <= len(self._mem):
            return bytes(self._mem[: self.size])
        if self.size == 0:
            return b""
        return None


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, off: int) -> None:
    """Write all of ``data`` at ``off`` (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


class _Bounded(io.RawIOBase):
    """The first ``size`` bytes of a file descriptor (its own, closed with the reader)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._pos = 0
        self._size = size

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b)[:n]], self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
