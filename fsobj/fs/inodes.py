"""The inode table: kernel inode numbers for the nodes of the virtual tree.

Owns: which inode number stands for which node, and the kernel's lookup count
of each (pyfuse3 "Inode lifetime"). A node is named by a *node key*, a tuple:

    ("root",)                 the mount root (inode 1)
    ("dir", pid, path)        a directory of a partition; path "" is the partition root
    ("obj", pid, ref)         an object: ref = baseHash, or an int for a file
                              created through the mount and not committed yet
    ("vdir", pid, path)       a directory under <partition>/.versions ("" = .versions)
    ("ver", absoluteHash)     one version, read-only (.versions and .objects files)
    ("objects", pid)          <partition>/.objects

Inode numbers are never reused while the daemon runs, so no generation number
is needed. An entry lives while the kernel holds a lookup count on it or the
filesystem pins it (open files); ``forget`` drops it when both are gone.
Pure bookkeeping: no store, no trio, no FUSE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

ROOT_INODE = 1
ROOT_KEY: tuple = ("root",)

NodeKey = tuple


class InodeTable:
    def __init__(self) -> None:
        self._key: dict[int, NodeKey] = {ROOT_INODE: ROOT_KEY}
        self._ino: dict[NodeKey, int] = {ROOT_KEY: ROOT_INODE}
        self._lookups: dict[int, int] = {ROOT_INODE: 1}
        self._pins: dict[int, int] = {}
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._key)

    def key(self, ino: int) -> NodeKey | None:
        return self._key.get(ino)

    def find(self, key: NodeKey) -> int | None:
        return self._ino.get(key)

    def get(self, key: NodeKey) -> int:
        """The inode of ``key``, allocating one if needed (lookup count unchanged)."""
        ino = self._ino.get(key)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino[key] = ino
            self._key[ino] = key
            self._lookups[ino] = 0
        return ino

    def remember(self, ino: int, n: int = 1) -> None:
        """The kernel got ``ino`` in a reply that counts as a lookup."""
        if ino in self._lookups:
            self._lookups[ino] += n

    def forget(self, ino: int, n: int) -> None:
        if ino == ROOT_INODE or ino not in self._lookups:
            return
        self._lookups[ino] = max(0, self._lookups[ino] - n)
        self._maybe_drop(ino)

    def pin(self, ino: int) -> None:
        """Keep ``ino`` alive independently of lookups (an open file handle)."""
        self._pins[ino] = self._pins.get(ino, 0) + 1

    def unpin(self, ino: int) -> None:
        left = self._pins.get(ino, 0) - 1
        if left > 0:
            self._pins[ino] = left
        else:
            self._pins.pop(ino, None)
            self._maybe_drop(ino)

    def _maybe_drop(self, ino: int) -> None:
        if self._lookups.get(ino, 0) == 0 and ino not in self._pins and ino != ROOT_INODE:
            key = self._key.pop(ino, None)
            self._lookups.pop(ino, None)
            if key is not None and self._ino.get(key) == ino:
                del self._ino[key]

    def rekey(self, old: NodeKey, new: NodeKey) -> None:
        """The node ``old`` is now called ``new`` (a pending file got its baseHash, a directory moved)."""
        ino = self._ino.pop(old, None)
        if ino is not None:
            self._assign(ino, new)

    def _assign(self, ino: int, new: NodeKey) -> None:
        """``ino`` is now called ``new``; an inode that had that name resolves to nothing."""
        stale = self._ino.pop(new, None)
        if stale is not None and stale != ino:
            self._key[stale] = ("gone", stale)
            self._ino[("gone", stale)] = stale
        self._ino[new] = ino
        self._key[ino] = new

    def rekey_where(self, match: Callable[[NodeKey], NodeKey | None], together: bool = False) -> None:
        """Rekey every node for which ``match(key)`` returns a new key; ``together``: all at
        once, for a mapping whose new keys are old keys of others (an exchange)."""
        moves = [(k, new) for k in list(self._ino) if (new := match(k)) is not None]
        if not together:
            for key, new in moves:
                self.rekey(key, new)
            return
        for ino, new in [(self._ino.pop(key), new) for key, new in moves]:
            self._assign(ino, new)

    def lookups(self, ino: int) -> int:
        return self._lookups.get(ino, 0)

    def items(self) -> Iterator[tuple[int, NodeKey]]:
        yield from list(self._key.items())
