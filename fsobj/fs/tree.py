"""The virtual file tree: how the objects of a partition appear as paths.

Owns: the mapping between sort keys and paths, in both directions, and the
names of everything that is not an object (``.versions``, ``.objects``, the
version files). Pure: no store calls, no trio, no FUSE; the filesystem layer
(``fsobj.fs.filesystem``) feeds it listing entries and asks it for names.

Terms (docs/mount.md, "Mapping"):

- A sort key ``a/b/c`` is the file ``c`` in directory ``a/b`` of its
  partition. A sort key ending in ``/`` (``a/b/``) is a *directory marker*:
  it keeps the directory ``a/b`` alive when it is empty and carries its
  mode, owner and times; ``/`` is the marker of the partition root.
- A sort key that is not a valid path (an empty, ``.`` or ``..`` segment, a
  segment over 255 bytes, or a first segment named ``.versions``/``.objects``)
  appears in the partition root under its *escaped name*: the key
  percent-encoded (``%`` → ``%25``, ``/`` → ``%2F``, a leading ``.`` → ``%2E``).
- Names are resolved per directory: a directory keeps its name; of several
  objects that want the same name, the one with the smallest baseHash keeps
  it and the others appear as ``name~<first 8 hex digits of the baseHash>``.

A *ref* names an object: its baseHash (bytes) once committed, or a small int
for a file created through the mount whose first version is not written yet.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

VERSIONS = ".versions"
OBJECTS = ".objects"
RESERVED = frozenset({VERSIONS, OBJECTS})
NAME_MAX = 255
TIE_SEP = "~"
HASH_PREFIX = 8  # hex digits shown in tie names, version names and conflict names

Ref = bytes | int


# ---------------------------------------------------------------- placement


def segment_ok(seg: str) -> bool:
    # a character is at most 4 bytes in UTF-8: a short segment needs no encoding to be measured
    fits = len(seg) <= NAME_MAX // 4 or len(seg.encode("utf-8", "surrogateescape")) <= NAME_MAX
    return bool(seg) and seg not in (".", "..") and fits


def path_ok(path: str) -> bool:
    """A directory path (no leading or trailing slash) usable as nested directories."""
    segs = path.split("/")
    return all(segment_ok(s) for s in segs) and segs[0] not in RESERVED


def escape_key(sort_key: str) -> str:
    """The escaped name of a sort key that is not a valid path."""
    out = []
    for i, ch in enumerate(sort_key):
        if ch in "%/" or (i == 0 and ch == "."):
            out.append(f"%{ord(ch):02X}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_name(name: str) -> str:
    """Inverse of :func:`escape_key` (for documentation and tests)."""
    out, i = [], 0
    while i < len(name):
        if name[i] == "%" and _is_hex(name[i + 1 : i + 3]):
            out.append(chr(int(name[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass(frozen=True)
class Place:
    """Where a sort key appears: a file ``name`` in ``parent``, or the marker of directory ``dir``."""

    parent: str
    name: str
    marker: bool = False

    @property
    def dir(self) -> str:
        """The directory a marker stands for."""
        return join(self.parent, self.name)


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


@functools.lru_cache(maxsize=4096)  # an unlink places its key three times (tree, applied tombstone, history)
def place(sort_key: str) -> Place:
    if sort_key == "/":
        return Place("", "", marker=True)
    if sort_key.endswith("/") and path_ok(sort_key[:-1]):
        parent, name = split(sort_key[:-1])
        return Place(parent, name, marker=True)
    if path_ok(sort_key):
        parent, name = split(sort_key)
        return Place(parent, name)
    return Place("", escape_key(sort_key))


def key_for(parent: str, name: str) -> str:
    """The sort key of a new file ``name`` in directory ``parent``."""
    return join(parent, name)


def marker_key(path: str) -> str:
    """The sort key of the directory marker of ``path`` ("" = partition root)."""
    return path + "/"


def tie_name(name: str, ref: Ref) -> str:
    suffix = TIE_SEP + (ref.hex()[:HASH_PREFIX] if isinstance(ref, bytes) else f"new{ref}")
    raw = name.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len(suffix)
    if len(raw) > room:
        name = raw[:room].decode("utf-8", "ignore")
    return name + suffix


def _order(ref: Ref) -> tuple[int, bytes | int]:
    return (1, ref) if isinstance(ref, int) else (0, ref)


# ---------------------------------------------------------------- live tree


@dataclass(frozen=True)
class Child:
    """One name in a directory: a subdirectory (``path``) or an object (``ref``)."""

    is_dir: bool
    path: str = ""
    ref: Ref = b""


@dataclass
class Dir:
    path: str
    subdirs: dict[str, Dir] = field(default_factory=dict)
    files: dict[str, list[Ref]] = field(default_factory=dict)  # wanted name -> refs, tie order
    markers: list[Ref] = field(default_factory=list)
    _names: dict[str, Child] | None = None  # resolved listing, kept up to date once built
    _emitted: dict[str, list[str]] = field(default_factory=dict)  # wanted name -> names it got

    @property
    def marker(self) -> Ref | None:
        return self.markers[0] if self.markers else None

    def empty(self) -> bool:
        return not self.subdirs and not self.files

    def names(self) -> dict[str, Child]:
        """The resolved listing: name -> child."""
        if self._names is None:
            self._names, self._emitted = {}, {}
            for wanted in sorted({*self.subdirs, *self.files}):
                self.changed(wanted)
        return self._names

    def changed(self, wanted: str) -> None:
        """Re-resolve the names of everything that wants ``wanted`` (a directory keeps its
        name; of the files, the first in tie order keeps it, the others get a suffix)."""
        names = self._names
        if names is None:
            return
        for n in self._emitted.pop(wanted, []):
            names.pop(n, None)
        out = []
        sub = self.subdirs.get(wanted)
        if sub is not None:
            names[wanted] = Child(True, path=sub.path)
            out.append(wanted)
        for i, ref in enumerate(self.files.get(wanted, [])):
            name = wanted if i == 0 and sub is None else tie_name(wanted, ref)
            if name not in names:
                names[name] = Child(False, ref=ref)
                out.append(name)
        if out:
            self._emitted[wanted] = out


class PartitionTree:
    """The live objects of one partition arranged as directories.

    It also keeps when each directory last gained or lost an entry
    (``entry_times``: path -> ns), the time a local filesystem puts in a
    directory's mtime and ctime. Changes are stamped with ``clock`` once it is
    set (the mount sets it when a tree is built; building from a listing stamps
    nothing), and the stamped directories are collected in ``unsaved`` until
    the mount writes their times. Both may be shared with the tree this one
    replaces, so a rebuild keeps them.
    Giving a new file its first ref (``swap``) and placing an object under
    the key it already has change no entry and stamp nothing.
    """

    def __init__(self, entry_times: dict[str, int] | None = None, unsaved: set[str] | None = None) -> None:
        self.root = Dir("")
        self.dirs: dict[str, Dir] = {"": self.root}
        self.keys: dict[Ref, str] = {}  # ref -> sort key
        self.entry_times: dict[str, int] = {} if entry_times is None else entry_times
        self.unsaved: set[str] = set() if unsaved is None else unsaved  # stamped, not written yet
        self.clock: Callable[[], int] | None = None

    def _stamp(self, path: str) -> None:
        if self.clock is not None:
            self.entry_times[path] = self.clock()
            self.unsaved.add(path)

    def add(self, ref: Ref, sort_key: str) -> None:
        old = self.keys.get(ref)
        if old == sort_key:
            return
        if old is not None:
            self.remove(ref)
        self.keys[ref] = sort_key
        p = place(sort_key)
        if p.marker:
            d = self._ensure(p.dir)
            d.markers.append(ref)
            d.markers.sort(key=_order)
            return
        d = self._ensure(p.parent)
        refs = d.files.setdefault(p.name, [])
        refs.append(ref)
        refs.sort(key=_order)
        d.changed(p.name)
        self._stamp(p.parent)

    def swap(self, old: Ref, new: Ref) -> None:
        """The same entry under another ref (a new file's first version)."""
        if new in self.keys:  # a rebuild placed the version already: only the old ref goes
            clock, self.clock = self.clock, None
            try:
                self.remove(old)
            finally:
                self.clock = clock
            return
        sort_key = self.keys.pop(old, None)
        if sort_key is None:
            return
        self.keys[new] = sort_key
        p = place(sort_key)
        d = self.dirs[p.dir if p.marker else p.parent]
        refs = d.markers if p.marker else d.files[p.name]
        refs[refs.index(old)] = new
        refs.sort(key=_order)
        if not p.marker:
            d.changed(p.name)

    def remove(self, ref: Ref) -> None:
        sort_key = self.keys.pop(ref, None)
        if sort_key is None:
            return
        p = place(sort_key)
        d = self.dirs.get(p.dir if p.marker else p.parent)
        if d is None:
            return
        if p.marker:
            if ref in d.markers:
                d.markers.remove(ref)
        else:
            refs = d.files.get(p.name, [])
            if ref in refs:
                refs.remove(ref)
            if not refs:
                d.files.pop(p.name, None)
            d.changed(p.name)
            self._stamp(p.parent)
        self._prune(d)

    def _ensure(self, path: str) -> Dir:
        d = self.dirs.get(path)
        if d is not None:
            return d
        parent_path, name = split(path)
        parent = self._ensure(parent_path)
        d = Dir(path)
        parent.subdirs[name] = d
        parent.changed(name)
        self.dirs[path] = d
        self._stamp(parent_path)
        return d

    def _prune(self, d: Dir) -> None:
        while d.path and d.empty() and not d.markers:
            parent_path, name = split(d.path)
            parent = self.dirs[parent_path]
            parent.subdirs.pop(name, None)
            parent.changed(name)
            del self.dirs[d.path]
            self.entry_times.pop(d.path, None)
            self._stamp(parent_path)
            d = parent

    # ------------------------------------------------------------ queries
    def dir(self, path: str) -> Dir | None:
        return self.dirs.get(path)

    def lookup(self, path: str, name: str) -> Child | None:
        d = self.dirs.get(path)
        return d.names().get(name) if d is not None else None

    def listing(self, path: str) -> list[tuple[str, Child]]:
        d = self.dirs.get(path)
        if d is None:
            return []
        return sorted(d.names().items(), key=lambda kv: kv[0].encode("utf-8", "surrogateescape"))

    def name_of(self, ref: Ref) -> tuple[str, str] | None:
        """(directory path, displayed name) of a live object, markers excluded."""
        sort_key = self.keys.get(ref)
        if sort_key is None:
            return None
        p = place(sort_key)
        if p.marker:
            return None
        d = self.dirs[p.parent]
        for name, child in d.names().items():
            if not child.is_dir and child.ref == ref:
                return p.parent, name
        return None

    def refs_under(self, path: str) -> list[tuple[Ref, str]]:
        """Every (ref, sort key) placed in directory ``path`` or below it, its marker included."""
        d = self.dirs.get(path)
        if d is None:
            return []
        out: list[tuple[Ref, str]] = []
        stack = [d]
        while stack:
            cur = stack.pop()
            out.extend((r, self.keys[r]) for r in cur.markers)
            for refs in cur.files.values():
                out.extend((r, self.keys[r]) for r in refs)
            stack.extend(cur.subdirs.values())
        return out

    def subdir_count(self, path: str) -> int:
        d = self.dirs.get(path)
        return len(d.subdirs) if d is not None else 0


def changed_names(old: PartitionTree, new: PartitionTree, refs: Iterable[Ref]) -> set[tuple[str, str]]:
    """The (directory, name) entries of ``old`` that mean something else in ``new`` (gone, or
    now another object or a directory), in the directories where ``refs`` were or are, and
    their ancestors: what the kernel may have cached that a change to ``refs`` made stale."""
    dirs: set[str] = set()
    for ref in refs:
        for tree in (old, new):
            sort_key = tree.keys.get(ref)
            if sort_key is None:
                continue
            p = place(sort_key)
            path = p.dir if p.marker else p.parent
            while path not in dirs:
                dirs.add(path)
                if not path:
                    break
                path = split(path)[0]
    out = set()
    for path in dirs:
        was, now = old.dirs.get(path), new.dirs.get(path)
        after = now.names() if now is not None else {}
        for name, child in (was.names() if was is not None else {}).items():
            c = after.get(name)
            if c is None or c.is_dir != child.is_dir or c.ref != child.ref:
                out.add((path, name))
    return out


def moved_key(sort_key: str, old_dir: str, new_dir: str) -> str:
    """The sort key of an object under ``old_dir`` once that directory is renamed to ``new_dir``."""
    assert sort_key.startswith(old_dir + "/"), (sort_key, old_dir)
    return new_dir + sort_key[len(old_dir) :]


def is_under(path: str, ancestor: str) -> bool:
    """True if ``path`` is ``ancestor`` or inside it."""
    return path == ancestor or not ancestor or path.startswith(ancestor + "/")


# ---------------------------------------------------------------- history tree


@dataclass
class VDir:
    """A directory under ``.versions``: subdirectories, and the series whose path it is."""

    children: set[str] = field(default_factory=set)
    series: set[bytes] = field(default_factory=set)


class HistoryTree:
    """Every series of a partition, live or deleted, placed by its latest sort key."""

    def __init__(self) -> None:
        self.dirs: dict[str, VDir] = {"": VDir()}
        self.paths: dict[bytes, str] = {}  # baseHash -> path

    def set(self, base_hash: bytes, sort_key: str) -> None:
        p = place(sort_key)
        path = None if p.marker else join(p.parent, p.name)
        old = self.paths.get(base_hash)
        if old == path:
            return
        if old is not None:
            self._remove(base_hash, old)
        if path is not None:
            self.paths[base_hash] = path
            self._ensure(path).series.add(base_hash)

    def drop(self, base_hash: bytes) -> None:
        old = self.paths.get(base_hash)
        if old is not None:
            self._remove(base_hash, old)

    def _ensure(self, path: str) -> VDir:
        d = self.dirs.get(path)
        if d is None:
            parent, name = split(path)
            self._ensure(parent).children.add(name)
            d = self.dirs[path] = VDir()
        return d

    def _remove(self, base_hash: bytes, path: str) -> None:
        del self.paths[base_hash]
        d = self.dirs[path]
        d.series.discard(base_hash)
        while path and not d.children and not d.series:
            del self.dirs[path]
            path, name = split(path)
            d = self.dirs[path]
            d.children.discard(name)

    def dir(self, path: str) -> VDir | None:
        return self.dirs.get(path)


# ---------------------------------------------------------------- version files


@dataclass(frozen=True)
class VersionName:
    """One file under ``.versions/<path>/``."""

    name: str
    hash: bytes
    number: int


def version_names(rows: Iterable[tuple[bytes, int, bool]]) -> list[VersionName]:
    """Names for the versions at one path, oldest first.

    ``rows`` are (absoluteHash, created_us, tombstone) of every version of every
    series at the path. They are numbered 1.. in creation order (ties by hash);
    tombstones take a number but get no file.
    """
    ordered = sorted(rows, key=lambda r: (r[1], r[0]))
    width = max(4, len(str(len(ordered))))
    out = []
    for n, (hash_, created_us, tombstone) in enumerate(ordered, 1):
        if not tombstone:
            out.append(VersionName(f"{n:0{width}d}_{stamp(created_us)}_{hash_.hex()[:HASH_PREFIX]}", hash_, n))
    return out


def stamp(created_us: int) -> str:
    t = datetime.datetime.fromtimestamp(created_us / 1e6, datetime.UTC)
    return t.strftime("%Y-%m-%dT%H-%M-%SZ")


def conflict_key(sort_key: str, hash_: bytes) -> str:
    """The sort key of a conflict copy: ``<key>.conflict-<hash8>``."""
    return f"{sort_key}.conflict-{hash_.hex()[:HASH_PREFIX]}"
