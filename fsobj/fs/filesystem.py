"""The mounted store: every filesystem operation, in terms of inodes and names.

Owns: the composition of one mount's operations — ``state`` (what the mount
knows, attributes), ``lookup`` (names and listings), ``files`` (contents and
commits), ``meta`` (attributes and headers), ``names`` (create, remove,
rename) — and the concurrency rules they all follow. Knows nothing of
pyfuse3: ``fsobj.fs.ops`` translates requests and results. Operations raise
``OSError`` for filesystem rules (ENOTEMPTY, EISDIR, ...) and let
``FsobjError`` through; the adapter maps both with ``fsobj.errors.errno_for``.

Concurrency (docs/mount.md, "Concurrency"):

- Everything in this object belongs to the trio thread. pyfuse3 runs many
  request tasks at once; they interleave only at ``await``. One of them reads
  ``/dev/fuse`` until a handler yields to wait; then another reads on
  (``fsobj.fs.loop``).
- Store work goes to worker threads, one logical operation per thread call
  (:meth:`Filesystem._work`), all under one ``CapacityLimiter``. Reading the
  index generation counter (one indexed row) is done inline.
- An operation that checks names and then changes them holds its
  partition's namespace lock (``PartState.lock``) from the check to the apply.
- An open file's ``lock`` covers its writes, truncates, staged reads and its
  commit. Lock order: namespace lock first, then open-file locks by inode.
  Both are ``QuickLock``s (``fsobj.fs.locks``): taking a free one does not yield.
"""

from __future__ import annotations

import os

from fsobj.fs.lookup import LookupOps
from fsobj.fs.meta import MetaOps
from fsobj.fs.names import RENAME_EXCHANGE, RENAME_NOREPLACE, NameOps
from fsobj.fs.state import Attr, Options


class Filesystem(NameOps, MetaOps, LookupOps):
    """A mounted store (see the module docstring for the concurrency rules)."""

    def statfs(self) -> dict[str, int]:
        st = os.statvfs(self.store.root)
        return {
            "f_bsize": st.f_bsize,
            "f_frsize": st.f_frsize,
            "f_blocks": st.f_blocks,
            "f_bfree": st.f_bfree,
            "f_bavail": st.f_bavail,
            "f_files": st.f_files,
            "f_ffree": st.f_ffree,
            "f_favail": st.f_favail,
            "f_namemax": 255,
        }

    async def start(self) -> None:
        await self.refresh(force=True)
        await self.start_helper()

    async def shutdown(self) -> None:
        try:
            await self.flush_all()
        finally:
            await self.stop_helper()
        for of in list(self.files.values()):
            of.drop_staging()


__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "Attr", "Filesystem", "Options"]
