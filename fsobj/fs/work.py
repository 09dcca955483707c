"""Store-side work of filesystem operations, one logical operation per call.

Owns: the sequences of store calls behind a filesystem operation (commit an
open file, a conflict copy, a metadata version, a rename of a whole
directory). Every public function here runs whole in one worker thread
(``trio.to_thread.run_sync``), so the SQLite calls of one operation stay
together on that thread's connection, and a multi-version change runs inside
one ``Store.batch()`` (one transaction: atomic for readers). Nothing here
touches the mount's in-memory state (tree, inodes, open files): that belongs
to the trio thread, which applies the returned versions. The one exception is
``DataJob.on_streamed``, which hands an open file (whose lock the trio side
holds for the whole call) the payload its stream wrote.

Each call returns a :class:`Done`: the result plus the index generation
after it, which orders it against a listing taken meanwhile. Whether the
index moved only by the mount's own transactions is the store's to tell
(``Store.only_own_commits``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Generic, TypeVar

from fsobj.errors import ConflictError, DeletedError
from fsobj.fs.stream import PayloadStream
from fsobj.fs.tree import conflict_key
from fsobj.model.header import Posix
from fsobj.store import PartitionView, Store, Version
from fsobj.store.payload import IterStream, Splice, WrittenPayload

log = logging.getLogger("fsobj.fs")

T = TypeVar("T")
RETRIES = 3

Change = Callable[[Posix, tuple[tuple[str, str], ...]], tuple[Posix, tuple[tuple[str, str], ...]]]


@dataclass
class Done(Generic[T]):
    value: T
    gen_after: int


def run(store: Store, fn: Callable[..., T], *args: Any) -> Done[T]:
    """Run ``fn(store, *args)`` and note the generation after it."""
    value = fn(store, *args)
    return Done(value, store.generation())


@contextlib.contextmanager
def batch(store: Store) -> Iterator[bool]:
    """``Store.batch()`` when the store has it: the versions inside commit as one transaction."""
    group = getattr(store, "batch", None)
    if group is None:
        yield False
        return
    with group():
        yield True


def head(store: Store, view: PartitionView, base_hash: bytes) -> Version:
    """The current version of a series (by baseHash), verified."""
    return store.head(base_hash)


# ---------------------------------------------------------------- one object


@dataclass
class DataJob:
    """What an open file commits."""

    view: PartitionView
    prev: Version | None
    sort_key: str
    posix: Posix
    headers: tuple[tuple[str, str], ...]
    source: Callable[[], BinaryIO | bytes | WrittenPayload | Splice]
    payload_changed: bool
    stream: PayloadStream | None = None  # the payload already written while the file was written
    on_streamed: Callable[[WrittenPayload], None] | None = None  # told the stream's payload before it is used
    on_lost: Callable[[], None] | None = None  # told when the stream could not give the staging its bytes


def commit_data(store: Store, job: DataJob) -> Version:
    """One new version of an open file (``ConflictError`` if its series moved on)."""
    source: object = _streamed(store, job)
    if source is None:
        source = _current(store, job.view, job.source()) if job.payload_changed else ...
    with _closing(source):
        v = store.commit(
            job.view,
            job.prev,
            sort_key=job.sort_key,
            source=source,
            posix=job.posix,
            headers=job.headers,
            exclusive=job.prev is None,
        )
    return v


def _streamed(store: Store, job: DataJob) -> WrittenPayload | None:
    """The payload written by the job's stream, if it completed under the current key epoch
    (then ``job.on_streamed`` is told it)."""
    stream, job.stream = job.stream, None  # a retry or a conflict copy reads the staging
    if stream is None:
        return None
    try:
        written = stream.finish()
        if written is None:
            return None  # it failed: the bytes it owed are in the spill file again
        if written.length != stream.pos or written.epoch != store.partition(job.view.id).current_keys().epoch:
            stream.give_back()  # (the key rotated meanwhile): write it again from the staging
            return None
    except OSError:
        if job.on_lost is not None:
            job.on_lost()
        raise
    stream.close()
    if job.on_streamed is not None:
        job.on_streamed(written)
    return written


@contextlib.contextmanager
def _closing(source: object) -> Iterator[None]:
    try:
        yield
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Given:
    """A source factory that returns what was read earlier (so that it can cross to the
    commit helper, ``fsobj.fs.helper``)."""

    value: object

    def __call__(self) -> Any:
        return self.value


def settle_sources(store: Store, jobs: list[DataJob]) -> list[DataJob]:
    """Finish the jobs' streams and read the sources that are plain data (in memory, or a
    payload already written), so that the jobs can cross to the commit helper. A source
    that would read a spill file is left as it is (the job then commits here)."""
    for job in jobs:
        written = _streamed(store, job)
        if written is not None:
            job.source = Given(written)
        elif job.payload_changed:
            source = job.source()
            if isinstance(source, (bytes, WrittenPayload)):
                job.source = Given(source)
            else:
                with _closing(source):
                    pass
        job.on_streamed = job.on_lost = None
    return jobs


def commit_batch(store: Store, jobs: list[DataJob]) -> list[Version]:
    """Several open files in one transaction; ``ConflictError`` (nothing committed) if any lost a race."""
    with batch(store):
        versions = [commit_data(store, job) for job in jobs]
    return versions


def _current(store: Store, view: PartitionView, source: object) -> object:
    """``source``, or the bytes of a written payload whose key epoch has rotated since."""
    if not isinstance(source, WrittenPayload):
        return source
    current = store.partition(view.id)
    if source.epoch == current.current_keys().epoch:
        return source
    return IterStream(store.payloads.iter_written(source, current.epoch_keys(source.epoch), view.id))


def conflict_copy(store: Store, job: DataJob, winner: bytes | None) -> Version:
    """Commit the writer's data as a new object ``<key>.conflict-<hash8>`` next to the file."""
    tag = winner or (job.prev.hash if job.prev is not None else os.urandom(32))
    source = _current(store, job.view, job.source())
    with _closing(source):
        v = store.commit(
            job.view,
            None,
            sort_key=conflict_key(job.sort_key, tag),
            source=source,
            posix=job.posix,
            headers=job.headers,
        )
    return v


def update_meta(
    store: Store, view: PartitionView, base_hash: bytes, change: Change, always: bool = False
) -> Version | None:
    """A metadata version (same payload) of the series' current head; None if nothing
    changes, unless ``always`` (a directory whose shown mtime is not the stored one).

    ``DeletedError`` (ENOENT) if the head is a tombstone: a ``chmod``, ``touch`` or
    ``setfattr`` that reaches a file another process removed meanwhile (the kernel
    had looked the name up before) must not bring the file back. It did: the version
    made on the tombstone was live again, and the next file created under that name
    met it and became a conflict copy."""
    for attempt in range(RETRIES):
        prev = head(store, view, base_hash)
        if prev.tombstone:
            raise DeletedError(f"{prev.header.sort_key!r} was deleted", prev.hash)
        posix, headers = change(prev.header.posix, prev.header.headers)
        if not always and posix == prev.header.posix and headers == prev.header.headers:
            return None
        try:
            return store.commit(view, prev, posix=posix, headers=headers)
        except ConflictError:
            if attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def create(
    store: Store,
    view: PartitionView,
    sort_key: str,
    payload: bytes,
    posix: Posix,
    headers: tuple[tuple[str, str], ...] = (),
) -> Version:
    """A new object; ``ConflictError`` if a live object took the sort key meanwhile."""
    v = store.commit(view, None, sort_key=sort_key, source=payload, posix=posix, headers=headers, exclusive=True)
    return v


# ---------------------------------------------------------------- namespace changes


@dataclass
class Namespace:
    """A change to names, committed atomically: moves, tombstones and new directory markers."""

    view: PartitionView
    moves: list[tuple[bytes, str]]  # (baseHash, new sort key)
    removals: list[bytes]  # baseHashes to tombstone
    markers: list[tuple[str, Posix]]  # (marker sort key, attributes) to create
    heads: dict[bytes, Version] = field(default_factory=dict)  # the heads as the mount knows them (hints)
    mtimes: list[tuple[bytes, int]] = field(default_factory=list)  # (marker baseHash, directory mtime ns) to write


def change_names(store: Store, ns: Namespace) -> list[Version]:
    """Apply ``ns`` in one transaction (retrying if a head moved underneath)."""
    for attempt in range(RETRIES):
        try:
            return _change_names_once(store, ns, ns.heads if attempt == 0 else {})
        except ConflictError as e:
            if attempt == RETRIES - 1:
                raise
            log.debug("namespace change conflicted (%s); retrying", e)
    raise AssertionError("unreachable")


def _change_names_once(store: Store, ns: Namespace, hints: dict[bytes, Version]) -> list[Version]:
    """One attempt. A hinted head is used without re-reading it: if it is not the head
    any more, the commit's own check (the optimistic lock) fails and the retry reads."""
    out: list[Version] = []
    view = ns.view

    def prev_of(base_hash: bytes) -> Version:
        return hints.get(base_hash) or head(store, view, base_hash)

    single = len(ns.moves) + len(ns.removals) + len(ns.markers) + len(ns.mtimes) == 1  # one version: no batch
    with contextlib.nullcontext(False) if single else batch(store):
        for base_hash in ns.removals:
            prev = prev_of(base_hash)
            if not prev.tombstone:
                out.append(store.commit(view, prev, source=None, tombstone=True))
        for base_hash, new_key in ns.moves:
            prev = prev_of(base_hash)
            out.append(store.commit(view, prev, sort_key=new_key))
        for key, posix in ns.markers:
            # not exclusive: if another writer made the same marker meanwhile, two markers
            # of one directory are harmless (the tree uses the first)
            out.append(store.commit(view, None, sort_key=key, source=b"", posix=posix))
        for base_hash, mtime_ns in ns.mtimes:
            prev = prev_of(base_hash)
            if not prev.tombstone:  # removed meanwhile: nothing left to date
                out.append(store.commit(view, prev, posix=replace(prev.header.posix, mtime_ns=mtime_ns)))
    return out
