"""Finding things: lookup, readdir, readlink, and the inode lookup counts.

Owns: how names resolve in every kind of directory — the mount root
(partitions), partition directories (the live tree), ``.versions`` (every
series, deleted ones too, and one read-only file per version) and
``.objects`` (any version by hash, as ``fsobj get --hash``) — and the
readdir snapshots whose offsets stay valid while a directory changes.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from fsobj.errors import NotFoundError
from fsobj.fs.inodes import NodeKey
from fsobj.fs.state import (
    EXACT_SUFFIX,
    Attr,
    MountState,
    PartState,
    oserror,
)
from fsobj.fs.tree import (
    OBJECTS,
    VERSIONS,
    VersionName,
    join,
    version_names,
)


class LookupOps(MountState):
    """Operations that find names and list directories."""

    async def lookup(self, parent: int, name: str) -> Attr:
        await self.refresh()
        key = await self._child(self._key(parent), name)
        if key is None:
            raise oserror(errno.ENOENT, name)
        return await self._entry(key)

    def remember(self, ino: int) -> None:
        self.inodes.remember(ino)

    def forget(self, pairs: Iterable[tuple[int, int]]) -> None:
        for ino, n in pairs:
            self.inodes.forget(ino, n)
            if self.inodes.key(ino) is None:
                self.page_cache.pop(ino, None)

    async def _child(self, pkey: NodeKey, name: str) -> NodeKey | None:
        kind = pkey[0]
        if kind == "root":
            pid = self.names.get(name)
            return ("dir", pid, "") if pid is not None else None
        if kind == "dir":
            return await self._dir_child(self._part(pkey[1]), pkey[2], name)
        if kind == "vdir":
            return await self._vdir_child(self._part(pkey[1]), pkey[2], name)
        if kind == "objects":
            return await self._object_child(self._part(pkey[1]), name)
        raise oserror(errno.ENOTDIR)

    async def _dir_child(self, ps: PartState, path: str, name: str) -> NodeKey | None:
        if not path and name == VERSIONS:
            return ("vdir", ps.pid, "")
        if not path and name == OBJECTS:
            return ("objects", ps.pid)
        tree = await self._tree(ps)
        c = tree.lookup(path, name)
        if c is None:
            return None
        return ("dir", ps.pid, c.path) if c.is_dir else ("obj", ps.pid, c.ref)

    async def _vdir_child(self, ps: PartState, path: str, name: str) -> NodeKey | None:
        await self.committer.drain()  # history shows every closed file: commit what waits
        vd = (await self._history(ps)).dir(path)
        if vd is None:
            return None
        if name in vd.children:
            return ("vdir", ps.pid, join(path, name))
        for vn in await self._version_names(ps, path):
            if vn.name == name:
                return ("ver", vn.hash)
        return None

    async def _version_names(self, ps: PartState, path: str) -> list[VersionName]:
        vd = (await self._history(ps)).dir(path)
        if vd is None or not vd.series:
            return []
        series = list(vd.series)
        rows = await self._thread(lambda: [r for b in series for r in self.store.series_rows(b)])
        if len(self.ver_info) > 200_000:
            self.ver_info.clear()
        for r in rows:
            self.ver_info[r.hash] = (ps.pid, r.length, r.created_us, r.base_hash)
        return version_names((r.hash, r.created_us, r.tombstone) for r in rows)

    async def _object_child(self, ps: PartState, name: str) -> NodeKey | None:
        """``.objects/<hash>`` as ``fsobj get --hash``: a baseHash gives its series' latest
        version, any other absoluteHash that version; ``<hash>@exact`` is always that version."""
        exact = name.endswith(EXACT_SUFFIX)
        try:
            h = bytes.fromhex(name[: -len(EXACT_SUFFIX)] if exact else name)
        except ValueError:
            return None
        if len(h) != 32:
            return None
        try:
            v = await self._thread(self.store.get_hash, h, exact)
        except NotFoundError:
            return None
        if v.header.partition != ps.pid:
            return None
        self.versions.put(v)
        return ("ver", v.hash)

    async def opendir(self, ino: int) -> int:
        key = self._key(ino)
        if key[0] not in ("root", "dir", "vdir", "objects"):
            raise oserror(errno.ENOTDIR)
        fh = self._new_fh()
        self.dirs[fh] = (key, None)
        return fh

    def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    async def readdir(self, fh: int, start: int) -> list[tuple[str, NodeKey]]:
        """Entries from offset ``start`` on, ``.`` and ``..`` first; offsets index a snapshot
        taken at offset 0, so they stay valid while the directory changes."""
        key, snap = self.dirs[fh]
        if snap is None or start == 0:
            await self.refresh()
            snap = [(".", key), ("..", _parent_key(key)), *await self._listing(key)]
            self.dirs[fh] = (key, snap)
        return snap[start:]

    async def entry_attrs(self, keys: list[NodeKey]) -> list[Attr | None]:
        """Attributes for readdir entries, their headers fetched in one thread call first
        (None: the entry vanished since the snapshot). Inodes of entries the kernel does
        not take must be given back with ``forget([(ino, 0)])``."""
        await self._preload_entries(keys)
        out: list[Attr | None] = []
        for key in keys:
            ino = self.inodes.get(key)
            try:
                out.append(await self._attr(key, ino))
            except (OSError, NotFoundError):
                self.inodes.forget(ino, 0)
                out.append(None)
        return out

    async def _listing(self, key: NodeKey) -> list[tuple[str, NodeKey]]:
        kind = key[0]
        if kind == "root":
            return [(n, ("dir", pid, "")) for n, pid in sorted(self.names.items())]
        if kind == "dir":
            ps = self._part(key[1])
            tree = await self._tree(ps)
            return [
                (n, ("dir", ps.pid, c.path) if c.is_dir else ("obj", ps.pid, c.ref)) for n, c in tree.listing(key[2])
            ]
        if kind == "vdir":
            await self.committer.drain()
            ps = self._part(key[1])
            vd = (await self._history(ps)).dir(key[2])
            if vd is None:
                return []
            out: list[tuple[str, NodeKey]] = [(n, ("vdir", ps.pid, join(key[2], n))) for n in sorted(vd.children)]
            return out + [(vn.name, ("ver", vn.hash)) for vn in await self._version_names(ps, key[2])]
        return []  # .objects cannot be listed, only looked up

    async def _preload_entries(self, keys: list[NodeKey]) -> None:
        pairs = []
        for key in keys:
            if key[0] == "obj" and isinstance(key[2], bytes):
                ps = self.parts.get(key[1])
                e = ps.heads.get(key[2]) if ps else None
                if ps and e:
                    pairs.append((e.head_hash, ps.view))
            elif key[0] == "dir" and (ps := self.parts.get(key[1])) and ps.tree:
                d = ps.tree.dir(key[2])
                m = d.marker if d else None
                if isinstance(m, bytes) and m in ps.heads:
                    pairs.append((ps.heads[m].head_hash, ps.view))
        await self._preload(pairs)

    async def readlink(self, ino: int) -> bytes:
        key = self._key(ino)
        if key[0] != "obj" or not isinstance(key[2], bytes):
            raise oserror(errno.EINVAL)
        ps = self._part(key[1])
        await self._tree(ps)
        e = ps.heads.get(key[2])
        if e is None or e.tombstone:
            raise oserror(errno.ENOENT)
        v = await self._version(e.head_hash, ps.view)
        if v.header.posix.type != "symlink":
            raise oserror(errno.EINVAL)
        return await self._thread(self.store.read_bytes, v)


def _parent_key(key: NodeKey) -> NodeKey:
    kind = key[0]
    if kind == "dir" and key[2]:
        return ("dir", key[1], key[2].rpartition("/")[0])
    if kind == "vdir":
        return ("vdir", key[1], key[2].rpartition("/")[0]) if key[2] else ("dir", key[1], "")
    if kind == "objects":
        return ("dir", key[1], "")
    return ("root",)
