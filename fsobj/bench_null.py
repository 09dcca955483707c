"""A filesystem that does nothing but keep files in memory, on the same binding
as the daemon (pyfuse3 on trio): the benchmark's measure of what the binding
alone costs per request.

Owns nothing of the store. ``fsobj bench --mount`` runs it as one more target
(``python -m fsobj.bench_null MOUNTPOINT``) with the small-file work, so every
run shows the rates that no pyfuse3 daemon can exceed on that machine, next to
fsobj's and gocryptfs's. It mounts with the daemon's options
(``default_permissions``), cache timeouts and request loop (``fsobj.fs.loop``),
answers every request from
Python dicts, and exits when unmounted or sent SIGTERM/SIGINT. Not for data:
everything is lost at unmount.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from fsobj.fs import loop

TIMEOUT = 30.0  # the daemon's attr_timeout


@dataclass
class Node:
    ino: int
    mode: int
    data: bytearray = field(default_factory=bytearray)
    children: dict[bytes, int] = field(default_factory=dict)
    nlink: int = 1
    lookups: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)


class NullOps(pyfuse3.Operations):
    """Directories and regular files in memory; nothing else."""

    def __init__(self) -> None:
        super().__init__()
        root = Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2)
        self.nodes: dict[int, Node] = {root.ino: root}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.open_count: dict[int, int] = {}

    # ------------------------------------------------------------ helpers
    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, n: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = n.ino
        e.entry_timeout = e.attr_timeout = TIMEOUT
        e.st_mode = n.mode
        e.st_nlink = n.nlink
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        e.st_size = len(n.data)
        e.st_blksize = 1024 * 1024
        e.st_blocks = (len(n.data) + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = n.mtime_ns
        return e

    def _add(self, parent: int, name: bytes, mode: int) -> Node:
        d = self._node(parent)
        if name in d.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        n = Node(self.next_ino, mode, nlink=2 if stat.S_ISDIR(mode) else 1, lookups=1)
        self.next_ino += 1
        self.nodes[n.ino] = n
        d.children[name] = n.ino
        return n

    def _drop(self, n: Node) -> None:
        if n.nlink == 0 and n.lookups == 0 and not self.open_count.get(n.ino):
            del self.nodes[n.ino]

    # ------------------------------------------------------------ names
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        ino = self._node(parent_inode).children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self.nodes[ino]
        n.lookups += 1
        return self._attr(n)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            n = self.nodes.get(ino)
            if n is not None:
                n.lookups -= count
                self._drop(n)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None, ctx: object
    ) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        if fields.update_size:
            del n.data[attr.st_size :]
            n.data.extend(bytes(attr.st_size - len(n.data)))
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_mtime:
            n.mtime_ns = attr.st_mtime_ns
        return self._attr(n)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        n = self._add(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))
        self.nodes[parent_inode].nlink += 1
        return self._attr(n)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        d = self._node(parent_inode)
        ino = d.children.pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self.nodes[ino]
        n.nlink = 0
        self._drop(n)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        d = self._node(parent_inode)
        ino = d.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if self.nodes[ino].children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del d.children[name]
        d.nlink -= 1
        n = self.nodes[ino]
        n.nlink = 0
        self._drop(n)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._node(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        names = sorted(self._node(fh).children.items())
        for i, (name, ino) in enumerate(names[start_id:], start=start_id + 1):
            n = self.nodes[ino]
            if not pyfuse3.readdir_reply(token, name, self._attr(n), i):
                return
            n.lookups += 1

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = 255
        return s

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)

    # ------------------------------------------------------------ files
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        n = self._add(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        self.open_count[n.ino] = self.open_count.get(n.ino, 0) + 1
        return pyfuse3.FileInfo(fh=n.ino), self._attr(n)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        n = self._node(inode)
        if flags & os.O_TRUNC:
            n.data.clear()
        self.open_count[inode] = self.open_count.get(inode, 0) + 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self._node(fh).data[off : off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        n = self._node(fh)
        if len(n.data) < off:
            n.data.extend(bytes(off - len(n.data)))
        n.data[off : off + len(buf)] = buf
        n.mtime_ns = time.time_ns()
        return len(buf)

    async def release(self, fh: int) -> None:
        self.open_count[fh] -= 1
        if not self.open_count[fh]:
            del self.open_count[fh]
            if fh in self.nodes:
                self._drop(self.nodes[fh])


async def serve() -> None:
    """Run the initialised pyfuse3 session on the daemon's request loop (so that a
    bench filesystem stays the daemon's ceiling) until unmounted, SIGTERM or SIGINT."""
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(stop_on_signal)
        loop.install()
        try:
            await pyfuse3.main()
        finally:
            loop.uninstall()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m fsobj.bench_null MOUNTPOINT", file=sys.stderr)
        return 2
    opts = set(pyfuse3.default_options) | {"fsname=fsobj-null", "default_permissions"}
    pyfuse3.init(NullOps(), argv[0], opts)
    try:
        trio.run(serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
