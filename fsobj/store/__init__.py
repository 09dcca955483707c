"""The store API: partitions, put/get/versions/list/delete/purge, grants.

Owns: the rules of the object model (docs/design.md): who may do what, how a
version is built, signed and committed, and how one is read back and verified.
Delegates bytes to ``fsobj.blobs``, SQL to ``fsobj.index``, crypto to
``fsobj.crypto`` and payload streaming to ``store.payload``.

Commit protocol (the optimistic lock): payload blobs are written first,
outside any lock, and made durable by one ``syncfs``; then, inside one
``BEGIN IMMEDIATE`` transaction, the partition record and the series' head are
compared with what the update was built on, every payload blob it names is
checked to exist, the header blob is written and fsynced, and the index rows
(and feed notifications) are inserted. A conflict writes no header and no row.
Concurrency rule: a ``Store`` may be shared by threads; each thread gets its
own SQLite connection.
"""

from __future__ import annotations

import bisect
import errno
import io
import itertools
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag

from fsobj import chunking, crypto
from fsobj.blobs import BlobStore
from fsobj.blobs.local import LocalBlobStore, fsync_dir
from fsobj.errors import (
    AccessDeniedError,
    ConflictError,
    DeletedError,
    ExistsError,
    FormatError,
    IntegrityError,
    NotEmptyError,
    NotFoundError,
    UsageError,
)
from fsobj.index import HeadRow, Index, VersionRow
from fsobj.model.header import (
    Posix,
    VersionHeader,
    check_sort_key,
    decode_header_blob,
    header_blob_from_body,
    verify_signatures,
)
from fsobj.store.partitions import INCOMPLETE, PartitionsMixin, PartitionView, now_us

__all__ = ["INCOMPLETE", "MARKER", "ListEntry", "PartitionView", "Store", "Version", "check_store", "now_us"]
from fsobj.store.payload import IterStream, PayloadIO, Progress, Splice, WrittenPayload

STORE_FORMAT = "fsobj-store"
STORE_VERSION = 2  # 2: small blobs are rows of blobs/small.sqlite (docs/format.md)
READABLE_VERSIONS = (1, 2)  # a version-1 store is upgraded when opened: its blob files stay
MARKER = "fsobj-store.json"
# Payload threads: one per core, 2 to 6. Their work (AES-GCM, BLAKE3, blob I/O) runs
# without the GIL, but each chunk also runs Python between those calls: more threads
# than cores only hand the GIL back and forth (cold read of 1 GiB through the mount on
# 2 cores: 1.56-1.85 s of daemon CPU with 2 threads, 1.85-2.02 s with 6).
PURGE_BATCH = 1000  # series purged per pair of transactions (purge_series)
WORKERS = max(2, min(os.cpu_count() or 2, 6))


@dataclass(frozen=True)
class Version:
    """A verified version: its absoluteHash and decoded header."""

    hash: bytes
    header: VersionHeader

    @property
    def base_hash(self) -> bytes:
        return self.header.base_hash(self.hash)

    @property
    def sort_key(self) -> str:
        return self.header.sort_key

    @property
    def tombstone(self) -> bool:
        return self.header.tombstone

    @property
    def length(self) -> int:
        return self.header.length

    def summary(self) -> dict[str, object]:
        h = self.header
        return {
            "absolute_hash": self.hash.hex(),
            "base_hash": self.base_hash.hex(),
            "previous_hash": h.prev.hex() if h.prev else None,
            "version": h.seq,
            "sort_key": h.sort_key,
            "partition_id": h.partition.hex(),
            "author": h.author.hex(),
            "created_us": h.created_us,
            "length": h.length,
            "tombstone": h.tombstone,
            "checksum": h.checksum.hex(),
            "checksum_type": h.checksum_type,
            "headers": [list(kv) for kv in h.headers],
            "posix": h.posix.to_cbor(),
            "epoch": h.epoch,
        }


@dataclass(frozen=True)
class ListEntry:
    """One live object in a listing (from the index alone, no blob reads)."""

    sort_key: str
    base_hash: bytes
    head_hash: bytes
    seq: int
    length: int
    created_us: int
    tombstone: bool

    def to_json(self) -> dict[str, object]:
        return {
            "sort_key": self.sort_key,
            "base_hash": self.base_hash.hex(),
            "absolute_hash": self.head_hash.hex(),
            "version": self.seq,
            "length": self.length,
            "created_us": self.created_us,
            "tombstone": self.tombstone,
        }


def is_store(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


class Store(PartitionsMixin):
    """An open store, acting as one unlocked identity."""

    def __init__(
        self,
        root: Path,
        identity: crypto.Identity,
        blobs: BlobStore | None = None,
        *,
        chunk_params: chunking.Params,
    ) -> None:
        self.root = Path(root)
        self.identity = identity
        self.blobs: BlobStore = blobs if blobs is not None else LocalBlobStore(self.root)
        self.index = Index(self.root / "index.sqlite")
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="fsobj-io")
        self.payloads = PayloadIO(self.blobs, self.pool, chunk_params)
        self.session = crypto.Session(identity, int(time.time()))
        self._views: dict[bytes, PartitionView] = {}
        self._listing: dict[tuple[bytes, bool], tuple[int, list[tuple]]] = {}  # (pid, with removed)
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._certs: set[tuple[bytes, ...]] = set()  # session certificates already verified

    # ------------------------------------------------------------ lifecycle
    @staticmethod
    def init(root: Path) -> None:
        """Create a new, empty store directory."""
        root = Path(root)
        if is_store(root):
            raise ExistsError(f"{root} is already an fsobj store")
        if root.exists() and any(root.iterdir()):
            raise ExistsError(f"{root} exists and is not empty")
        root.mkdir(parents=True, exist_ok=True)
        LocalBlobStore.create(root)
        Index(root / "index.sqlite").create()
        _write_marker(
            root,
            {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "store_id": os.urandom(16).hex(),
                "chunking": chunking.DEFAULT.number,
            },
        )

    @classmethod
    def open(cls, root: Path, identity: crypto.Identity) -> Store:
        root = Path(root)
        marker = check_store(root)
        if marker["version"] != STORE_VERSION:
            _upgrade(root, marker)
        store = cls(root, identity, chunk_params=chunk_params_of(marker, root))
        if not store.index.path.exists():
            # A deleted index: empty until rebuilt; gc must not run on it.
            store.index.create()
            with store.index.write():
                store.index.set_meta(INCOMPLETE, "index was recreated empty; run 'fsobj verify --rebuild-index'")
        else:
            store.index.check()
        return store

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.payloads.close()
        self.index.close()
        self.blobs.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ reading
    def load_version(self, hash_: bytes, view: PartitionView | None = None) -> Version:
        """Fetch, decrypt and verify one version header by absoluteHash."""
        if view is None:
            row = self.index.version(hash_)
            if row is None:
                raise NotFoundError(f"no version {hash_.hex()}")
            view = self.partition(row.partition_id)
        view.require_read()
        try:
            blob = self.blobs.get(hash_)
        except NotFoundError as e:
            raise IntegrityError(f"header blob of version {hash_.hex()} is missing") from e
        _kind, epoch = crypto.envelope_epoch(blob, hash_)
        if epoch >= len(view.record.epochs):
            raise IntegrityError(f"version {hash_.hex()} names key epoch {epoch}, which the partition never had")
        keys = view.epoch_keys(epoch)
        plain = crypto.open_blob(blob, crypto.KIND_HEADER, keys, view.id, hash_)
        header, integrity = decode_header_blob(plain, hash_)
        self._check_header(view, header, hash_, integrity, epoch)
        return Version(hash_, header)

    def _check_header(self, view: PartitionView, h: VersionHeader, hash_: bytes, integrity: bytes, epoch: int) -> None:
        what = f"version {hash_.hex()}"
        if h.partition != view.id or h.epoch != epoch:
            raise IntegrityError(f"{what} does not belong to partition {view.display_name}")
        if view.record.epoch_at(h.acl) != h.epoch:
            raise IntegrityError(f"{what} is encrypted under another key epoch than its record seq {h.acl} had")
        if h.author not in view.record.writers_at(h.acl):
            raise IntegrityError(f"{what} was written by {h.author.hex()[:16]}, who had no write access")
        verify_signatures(h, hash_, integrity, view.record.public_of(h.author).sign_pub, self._certs)

    # ------------------------------------------------------------ typed readers (no SQL above this layer)
    def generation(self) -> int:
        """A counter that changes whenever any process commits to the store."""
        return self.index.generation()

    def only_own_commits(self, since: int, now: int) -> bool:
        """Whether the generations (since, now] were all made by this Store object."""
        return self.index.only_own_commits(since, now)

    def head(self, base_hash: bytes) -> Version:
        """The newest version of a series (tombstones included), verified."""
        row = self.index.head(base_hash)
        if row is None:
            raise NotFoundError(f"no object with baseHash {base_hash.hex()}")
        version = self.load_version(row.head_hash)
        if version.base_hash != base_hash:
            raise IntegrityError(f"the index points baseHash {base_hash.hex()} at another object's version")
        return version

    def series_rows(self, base_hash: bytes) -> list[VersionRow]:
        """The index rows of a series, oldest first, without reading any blob
        (hash, created_us, length, tombstone, seq ...: what ``.versions/`` lists)."""
        return self.index.series(base_hash)

    def get(self, partition: str | bytes, sort_key: str) -> Version:
        """The latest version of the live object with this sort key."""
        view = self.partition(partition)
        head = self._head_for_key(view, sort_key, live_only=False)
        version = self.load_version(head.head_hash, view)
        if version.sort_key != sort_key or version.base_hash != head.base_hash:
            raise IntegrityError(f"the index points {sort_key!r} at version {head.head_hash.hex()} of another object")
        if version.tombstone:
            raise DeletedError(f"{sort_key!r} in {view.display_name} was deleted", version.hash)
        return version

    def get_hash(self, hash_: bytes, exact: bool = False) -> Version:
        """A baseHash gives its series' latest version; any other absoluteHash
        gives that version. The first version's hash is both: it means the
        series (latest) unless ``exact``.
        """
        head = None if exact else self.index.head(hash_)
        if head is not None:
            version = self.load_version(head.head_hash)
            if version.base_hash != hash_:
                raise IntegrityError(f"the index points baseHash {hash_.hex()} at another object's version")
            return version
        if self.index.version(hash_) is not None:
            return self.load_version(hash_)
        raise NotFoundError(f"no version or object with hash {hash_.hex()}")

    def _head_for_key(self, view: PartitionView, sort_key: str, live_only: bool) -> HeadRow:
        check_sort_key(sort_key)
        view.require_read()
        sealed = [k.seal_sort_key(view.id, sort_key) for k in view.keys.values()]
        heads = self.index.heads_by_sort_key(view.id, sealed)
        live = [h for h in heads if not h.tombstone]
        if len(live) > 1:
            raise UsageError(
                f"{len(live)} live objects share sort key {sort_key!r}: name one by hash "
                f"({', '.join(h.head_hash.hex()[:16] for h in live)})"
            )
        if live:
            return live[0]
        if heads and not live_only:
            newest = max(heads, key=lambda h: (h.created_us, h.head_hash))
            return newest
        raise NotFoundError(f"no object {sort_key!r} in partition {view.display_name}")

    def open_payload(self, version: Version, progress: Progress | None = None) -> Iterator[bytes]:
        view = self.partition(version.header.partition)
        return self.payloads.iter_payload(version.header, view.epoch_keys(version.header.epoch), progress)

    def read_bytes(self, version: Version) -> bytes:
        return b"".join(self.open_payload(version))

    def sort_key_of(self, view: PartitionView, epoch: int, sealed: bytes) -> str:
        """Open one sealed sort key from the index (listings open them in bulk)."""
        return view.epoch_keys(epoch).open_sort_key(view.id, sealed)

    def list(
        self,
        partition: str | bytes,
        prefix: str = "",
        after: str | None = None,
        limit: int | None = None,
        include_deleted: bool = False,
        after_hash: bytes | None = None,
    ) -> list[ListEntry]:
        """Objects in sort-key order (ties by absoluteHash).

        ``after`` skips every entry up to that sort key; with ``after_hash`` it
        skips only up to that (sort key, absoluteHash), so ties can be paged.
        """
        view = self.partition(partition)
        view.require_read()
        rows = self._sorted_rows(view, include_deleted)
        start = 0
        if after is not None:
            bound = (after.encode("utf-8"), after_hash if after_hash is not None else b"\xff" * 33)
            start = bisect.bisect_right(rows, bound, key=lambda r: (r[0], r[1]))
        raw_prefix = prefix.encode("utf-8")
        if raw_prefix:
            start = max(start, bisect.bisect_left(rows, raw_prefix, key=lambda r: r[0]))
        out: list[ListEntry] = []
        for r in itertools.islice(rows, start, None):
            if raw_prefix and not r[0].startswith(raw_prefix):
                break
            if r[7] and not include_deleted:
                continue
            try:
                name = r[0].decode("utf-8")
            except UnicodeDecodeError as e:
                raise IntegrityError(f"a sealed sort key in the index of {view.display_name} is not UTF-8") from e
            out.append(ListEntry(name, r[2], r[1], r[3], r[4], r[5], bool(r[7])))
            if limit is not None and len(out) >= limit:
                break
        return out

    def _sorted_rows(self, view: PartitionView, include_deleted: bool) -> list[tuple]:
        """Every live head of a partition (``include_deleted``: every head) as (sort key
        bytes, head hash, base hash, seq, length, created, epoch, tombstone), sorted:
        the listing order.

        Kept per partition until the index generation changes (warm listings);
        rows stay tuples so a cold listing of 100,000 objects stays cheap. The live
        listing neither reads nor decrypts the heads of removed series, so its cost
        follows the live objects, not the partition's history.
        """
        gen = self.index.generation()
        cached = self._listing.get((view.id, include_deleted))
        if cached and cached[0] == gen:
            return cached[1]
        every = self._listing.get((view.id, True))
        if not include_deleted and every and every[0] == gen:
            rows = [r for r in every[1] if not r[7]]
        else:
            openers = {epoch: keys.sort_key_opener(view.id) for epoch, keys in view.keys.items()}
            try:
                rows = [
                    (openers[epoch](ct), head, base, seq, length, created, epoch, tomb)
                    for ct, epoch, head, base, seq, length, created, tomb in self.index.head_rows(
                        view.id, live_only=not include_deleted
                    )
                ]
            except (InvalidTag, KeyError) as e:
                raise IntegrityError(f"a sealed sort key in the index of {view.display_name} does not verify") from e
            rows.sort()
        self._listing[(view.id, include_deleted)] = (gen, rows)
        return rows

    def log(self, partition: str | bytes, sort_key: str) -> list[Version]:
        """Every version of the object with this sort key, oldest first."""
        view = self.partition(partition)
        head = self._head_for_key(view, sort_key, live_only=False)
        return self.history(head.base_hash, view)

    def history(self, base_hash: bytes, view: PartitionView | None = None) -> list[Version]:
        return [self.load_version(r.hash, view) for r in self.index.series(base_hash)]

    # ------------------------------------------------------------ writing
    def put(
        self,
        partition: str | bytes,
        sort_key: str,
        source: BinaryIO | bytes | None,
        *,
        headers: Iterable[tuple[str, str]] | None = None,
        expect: bytes | None = None,
        new: bool = False,
        posix: Posix | None = None,
        progress: Progress | None = None,
    ) -> Version:
        """A new object, or a new version of the live object with this sort key.

        ``expect`` names the version this update replaces (optimistic lock); it
        defaults to the head seen when the call starts. ``new`` always starts a
        new series (two live objects may then share a sort key). ``headers``
        None keeps the previous version's user headers.
        """
        view = self.partition(partition)
        view.require_write()
        check_sort_key(sort_key)
        prev = self._expected_head(view, sort_key, expect, new)
        return self.commit(
            view,
            prev,
            sort_key=sort_key,
            source=source,
            headers=headers,
            posix=posix,
            progress=progress,
            exclusive=not new,
        )

    def _expected_head(self, view: PartitionView, sort_key: str, expect: bytes | None, new: bool) -> Version | None:
        if new:
            return None
        if expect is not None:
            row = self.index.version(expect)
            if row is None:
                head = self.index.head(expect)  # a baseHash is accepted as "its current head"
                if head is None:
                    raise NotFoundError(f"no version {expect.hex()} to replace")
                raise ConflictError(
                    f"--expect must name a version (absoluteHash); the head of that object is {head.head_hash.hex()}",
                    head.head_hash,
                )
            if row.partition_id != view.id:
                raise UsageError(f"--expect {expect.hex()} is a version of another partition")
            return self.load_version(expect, view)
        try:
            head = self._head_for_key(view, sort_key, live_only=True)
        except NotFoundError:
            return None
        return self.load_version(head.head_hash, view)

    def update(self, version: Version, **changes: object) -> Version:
        """A new version of ``version``'s series (fails if it is not the head)."""
        view = self.partition(version.header.partition)
        view.require_write()
        return self.commit(view, version, **changes)  # type: ignore[arg-type]

    def delete(self, partition: str | bytes, sort_key: str, expect: bytes | None = None) -> Version:
        """Logical delete: a tombstone version."""
        view = self.partition(partition)
        view.require_write()
        prev = self._expected_head(view, sort_key, expect, new=False)
        if prev is None:
            head = self._head_for_key(view, sort_key, live_only=False)  # NotFoundError if never existed
            raise DeletedError(f"{sort_key!r} is already deleted", head.head_hash)
        if prev.tombstone:
            raise DeletedError(f"{sort_key!r} is already deleted", prev.hash)
        return self.commit(view, prev, source=None, tombstone=True)

    def commit(
        self,
        view: PartitionView,
        prev: Version | None,
        *,
        sort_key: str | None = None,
        source: BinaryIO | bytes | object | None = ...,
        headers: Iterable[tuple[str, str]] | None = None,
        posix: Posix | None = None,
        tombstone: bool = False,
        progress: Progress | None = None,
        exclusive: bool = False,
    ) -> Version:
        """Build, sign and commit one version replacing ``prev`` (None: a new series).

        ``source=...`` (the default) keeps ``prev``'s payload without rewriting it.
        ``exclusive`` (new series only): fail if a live object with this sort key
        appeared meanwhile, instead of creating a tie.
        """
        view = self._current_view(view.id)
        session = self._renew_session()  # one session for the whole commit, even if another thread renews
        view.require_write()
        keys = view.current_keys()
        if sort_key is None:
            if prev is None:
                raise UsageError("a new object needs a sort key")
            sort_key = prev.sort_key
        check_sort_key(sort_key)
        payload = self._payload_for(view, prev, source, keys, progress)
        ph = prev.header if prev is not None else None
        header = VersionHeader(
            partition=view.id,
            author=self.identity.user_id,
            created_us=now_us(),
            length=payload.length,
            base=prev.base_hash if prev else None,
            prev=prev.hash if prev else None,
            seq=ph.seq + 1 if ph else 1,
            sort_key=sort_key,
            headers=tuple(headers) if headers is not None else (ph.headers if ph else ()),
            checksum=payload.checksum,
            chunks=payload.chunks,
            tree=payload.tree,
            data=payload.inline,
            blocks=payload.blocks,
            block_tree=payload.block_tree,
            tombstone=tombstone,
            posix=posix or (ph.posix if ph else Posix(mtime_ns=time.time_ns())),
            epoch=keys.epoch,
            acl=view.record.seq,
            session=session.verification(),
        )
        for k, v in header.headers:
            if not isinstance(k, str) or not isinstance(v, str) or not k:
                raise UsageError("user headers must be non-empty string keys with string values")
        reused = source is ... and prev is not None and prev.header.epoch == keys.epoch
        return self._commit_header(
            view, prev, header, keys, payload.refs, exclusive, 0 if reused or not payload.refs else None, session
        )

    def _current_view(self, pid: bytes) -> PartitionView:
        """The partition's current record (grants and key epoch may have changed); read
        once per group-commit batch, not once per version."""
        views: dict[bytes, PartitionView] | None = getattr(self._tls, "batch_views", None)
        if views is None:
            return self.partition(pid)
        if pid not in views:
            views[pid] = self.partition(pid)
        return views[pid]

    def _renew_session(self) -> crypto.Session:
        """The session to sign with; long-running processes (the mount) get a fresh
        one before it expires."""
        now = int(time.time())
        session = self.session
        if session.expires - now < crypto.Session.LIFETIME_S // 4:
            session = self.session = crypto.Session(self.identity, now)
        return session

    def _payload_for(
        self,
        view: PartitionView,
        prev: Version | None,
        source: object,
        keys: crypto.EpochKeys,
        progress: Progress | None,
    ) -> WrittenPayload:
        if isinstance(source, WrittenPayload):
            # written earlier by payloads.write() (e.g. streamed by the mount while a file was open)
            if source.epoch != keys.epoch:
                raise ConflictError("the partition key rotated while the payload was written; write it again")
            return source
        if isinstance(source, Splice):
            if source.base.epoch == keys.epoch and source.base.partition == view.id:
                return self.payloads.write_splice(source, keys, view.id, progress)
            source = IterStream(iter(source.content(0)))  # the base's chunks are under other keys
        if source is ... and prev is not None and prev.header.epoch == keys.epoch:
            h = prev.header
            return WrittenPayload(
                h.length,
                h.checksum,
                h.chunks,
                h.tree,
                self.index.refs_of(prev.hash),
                inline=h.data,
                blocks=h.blocks,
                block_tree=h.block_tree,
            )
        if source is ...:
            # the key rotated since prev: re-encrypt its payload under the new epoch
            assert prev is not None
            source = IterStream(self.open_payload(prev))
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(bytes(source))
        return self.payloads.write(source, keys, view.id, progress)  # type: ignore[arg-type]

    def _commit_header(
        self,
        view: PartitionView,
        prev: Version | None,
        header: VersionHeader,
        keys: crypto.EpochKeys,
        refs: list[bytes],
        exclusive: bool,
        new_blobs: int | None,
        session: crypto.Session,
    ) -> Version:
        body = header.encode_body()  # encoded once: for the hash and for the blob
        hash_ = crypto.hash_bytes(body)
        blob = crypto.seal_blob(
            crypto.KIND_HEADER, keys, view.id, hash_, header_blob_from_body(body, session.sign_integrity(hash_))
        )
        sealed_key = keys.seal_sort_key(view.id, header.sort_key)
        row = VersionRow(
            hash_,
            view.id,
            header.base_hash(hash_),
            header.prev,
            header.seq,
            header.created_us,
            header.length,
            header.tombstone,
            keys.epoch,
            header.author,
            sealed_key,
        )
        pending = getattr(self._tls, "batch", None)
        if pending is not None:  # the header is written with the others at the end of the batch
            pending.append(
                _Pending(view, prev, header.sort_key if exclusive and prev is None else None, row, refs, blob)
            )
            return Version(hash_, header)
        if new_blobs is None or new_blobs:
            # payload blobs are durable before a header names them (also those found
            # by dedup, which another writer may have written without syncing yet)
            self.blobs.sync_all()
        written = False
        try:
            with self.index.write():
                self._check_lock(view, prev, header.sort_key if exclusive and prev is None else None)
                self._check_refs(refs, prev)
                written = self.blobs.put(hash_, blob)
                self.blobs.sync()
                self.index.add_version(row, refs)
        except BaseException:
            if written:
                self.blobs.delete(hash_)  # never committed: must not reappear in a rebuild
            raise
        return Version(hash_, header)

    # ------------------------------------------------------------ group commit
    def _batching(self) -> bool:
        return getattr(self._tls, "batch", None) is not None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit for this thread: versions committed inside become durable
        and visible together at exit (one ``syncfs`` and one transaction).

        If any of them conflicts, none is committed and ``ConflictError`` is
        raised at exit. A batch must not update the same object twice. Nested
        batches join the outer one.
        """
        if self._batching():
            yield
            return
        pending: list[_Pending] = []
        self._tls.batch, self._tls.batch_views = pending, {}
        try:
            yield
        except BaseException:
            self._tls.batch = self._tls.batch_views = None
            self._discard(pending)
            raise
        self._tls.batch = self._tls.batch_views = None
        try:
            self.blobs.put_many([(p.row.hash, p.blob) for p in pending])
            self.blobs.sync_all()
            with self.index.write():
                self._check_locks(pending)
                for p in pending:
                    self._check_refs(p.refs, p.prev)
                now_us = time.time_ns() // 1000
                feeds = {pid: self.index.subscribed_feeds(pid, now_us) for pid in {p.row.partition_id for p in pending}}
                self.index.add_versions([(p.row, p.refs) for p in pending], feeds)
        except BaseException:
            self._discard(pending)
            raise

    def _discard(self, pending: list[_Pending]) -> None:
        """Remove the header blobs of versions that were never committed."""
        for p in pending:
            self.blobs.delete(p.row.hash)
        self.blobs.sync()

    def _check_refs(self, refs: list[bytes], prev: Version | None) -> None:
        """Inside the write transaction, after ``_check_lock``: every payload blob the
        version names exists.

        Deduplication decides outside the lock that a blob exists; purge and gc
        delete blobs only under the lock, so checking here closes that race. A
        blob that ``prev`` names needs no look: ``_check_lock`` has just found
        ``prev`` still the head, and a blob a version names goes only after that
        version does (purge, then gc). An edit of a big file names thousands of
        chunks and changes a few: for 1,663 refs the check took 7-8 ms (37 ms
        uncached) looking for every one, 1.0-1.4 ms this way, inside the lock
        every writer shares.
        """
        known = set(self.index.refs_of(prev.hash)) if prev is not None and len(refs) > 1 else set()
        missing = [r for r in refs if r not in known and not self.blobs.exists(r)]
        if missing:
            raise ConflictError(
                f"{len(missing)} payload blob(s) were purged while this version was written; write it again"
            )

    def _check_lock(self, view: PartitionView, prev: Version | None, new_key: str | None) -> None:
        """Inside the write transaction: the series must still be at ``prev``;
        for an exclusive new object, no live object may have taken ``new_key``."""
        self._check_partition(view)
        if new_key is not None:
            self._check_new_key(view, new_key)
        if prev is not None:
            _check_head(prev, self.index.head(prev.base_hash))

    def _check_locks(self, pending: list[_Pending]) -> None:
        """:meth:`_check_lock` for a group commit: each partition's row once and the
        heads of every series in one query per 500 (an ``rm -r`` queues thousands of
        tombstones, each of which checked both on its own: 14 % of the helper's time)."""
        views = {p.view.id: p.view for p in pending}
        for view in views.values():
            self._check_partition(view)
        bases = list({p.prev.base_hash for p in pending if p.prev is not None})
        heads = self.index.heads_of(bases)
        for p in pending:
            if p.new_key is not None:
                self._check_new_key(p.view, p.new_key)
            if p.prev is not None:
                _check_head(p.prev, heads.get(p.prev.base_hash))

    def _check_partition(self, view: PartitionView) -> None:
        row = self.index.partition(view.id)
        if row is None:
            raise NotFoundError(f"partition {view.display_name} was removed")
        if row.seq != view.record.seq:
            raise ConflictError(f"the membership of partition {view.display_name} changed meanwhile; retry")

    def _check_new_key(self, view: PartitionView, new_key: str) -> None:
        sealed = [k.seal_sort_key(view.id, new_key) for k in view.keys.values()]
        live = [h for h in self.index.heads_by_sort_key(view.id, sealed) if not h.tombstone]
        if live:
            raise ConflictError(
                f"{new_key!r} was created meanwhile: current version is {live[0].head_hash.hex()}",
                live[0].head_hash,
            )

    def purge(self, partition: str | bytes, sort_key: str) -> tuple[int, int]:
        """Physically delete every version of a series (owner only).

        Returns (versions removed, payload blobs freed). Blobs still referenced
        by another version are kept.
        """
        view = self.partition(partition)
        if view.role != "owner":
            raise AccessDeniedError(f"only the owner of {view.display_name} can purge")
        head = self._head_for_key(view, sort_key, live_only=False)
        return self.purge_series(head.base_hash)

    def remove_partition(self, ref: str | bytes) -> int:
        """Delete an empty partition physically (owner only): every tombstoned
        series is purged, then the partition row and its record blob go.
        Returns the number of versions purged. Older record blobs are left to gc."""
        view = self._owner_view(ref)
        if self.index.count_heads(view.id, live_only=True):
            raise NotEmptyError(f"partition {view.display_name} still holds live objects")
        purged = self.purge_series(*(h.base_hash for h in self.index.heads_in(view.id)))[0]
        with self.index.write():
            if self.index.count_heads(view.id, live_only=False):
                raise NotEmptyError(f"partition {view.display_name} got new objects meanwhile")
            self.index.delete_partition(view.id)
            self.index.drop_partition_subscriptions(view.id)
            self.blobs.delete(view.row.record_id)
            self.blobs.sync()
        with self._lock:
            self._views.pop(view.id, None)
        return purged

    def purge_series(self, *base_hashes: bytes) -> tuple[int, int]:
        """Physically delete every version of these series; (versions removed, payload
        blobs freed). ``PURGE_BATCH`` series at a time, each batch in two transactions
        and one ``sync`` of the blobs: so removing a partition after ``rm -r`` of
        thousands of files does not pay a transaction pair and a sync per file."""
        removed = deleted = 0
        todo = list(base_hashes)
        for i in range(0, len(todo), PURGE_BATCH):
            with self.index.write():
                hashes, freed = self.index.delete_series(todo[i : i + PURGE_BATCH])
            # Second transaction: delete what is still unreferenced. A put that
            # deduplicated against a freed blob and committed in between keeps it;
            # one committing later finds it gone (_check_refs). A crash in between
            # leaves only unreferenced blobs, which gc removes.
            with self.index.write(bump=False):
                still = self.index.referenced(freed)
                gone = [b for b in freed if b not in still]
                self.blobs.delete_many([*hashes, *gone])
                self.blobs.sync()
            removed += len(hashes)
            deleted += len(gone)
        return removed, deleted


def _check_head(prev: Version, head: HeadRow | None) -> None:
    """The optimistic lock: ``head`` (the series' head row now) must still be ``prev``."""
    if head is None:
        raise ConflictError(f"{prev.sort_key!r} was purged meanwhile")
    if head.head_hash != prev.hash:
        raise ConflictError(
            f"{prev.sort_key!r} changed: current version is {head.head_hash.hex()}, not {prev.hash.hex()}",
            head.head_hash,
        )


@dataclass
class _Pending:
    """A version waiting in a group commit."""

    view: PartitionView
    prev: Version | None
    new_key: str | None
    row: VersionRow
    refs: list[bytes]
    blob: bytes | Sequence[bytes]  # the header blob, written at the end of the batch


def _marker_json(d: dict[str, object]) -> str:
    return json.dumps(d, indent=2, sort_keys=True) + "\n"


def _write_marker(root: Path, marker: dict[str, object]) -> None:
    """Atomically (temporary file, fsync, rename, directory fsync). The temporary name
    is the process's own: two processes upgrading one store at once both succeed."""
    tmp = root / f"{MARKER}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(_marker_json(marker))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, root / MARKER)
    fsync_dir(root)


def _upgrade(root: Path, marker: dict[str, object]) -> None:
    """Version 1 to 2: create ``blobs/small.sqlite``, then say so in the marker (so that
    an fsobj that reads only version 1 refuses the store instead of missing blobs).
    A store that cannot be written stays at version 1 and is read as it is."""
    try:
        LocalBlobStore(root).small.create()
        _write_marker(root, {**marker, "version": STORE_VERSION})
    except PermissionError:
        return
    except OSError as e:
        if e.errno != errno.EROFS:
            raise


def check_store(root: Path) -> dict[str, object]:
    """The store marker, or a clear error if ``root`` is not a store of a known format."""
    marker = Path(root) / MARKER
    if not Path(root).is_dir():
        raise NotFoundError(f"store {root} does not exist")
    try:
        doc = json.loads(marker.read_text())
    except FileNotFoundError:
        raise FormatError(f"{root} is not an fsobj store (no {MARKER}); create one with 'fsobj init'") from None
    except (OSError, ValueError) as e:
        raise FormatError(f"{root}: unreadable store marker: {e}") from e
    if doc.get("format") != STORE_FORMAT:
        raise FormatError(f"{root} is not an fsobj store")
    if doc.get("version") not in READABLE_VERSIONS:
        raise FormatError(
            f"{root}: store format version {doc.get('version')} is not supported"
            f" (this fsobj reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    chunk_params_of(doc, root)
    return doc


def chunk_params_of(marker: dict[str, object], root: Path) -> chunking.Params:
    """The chunker parameter set the marker names (``chunking``); set 1 if it names none
    (stores made before set 2). An unknown set is refused: edits would be cut differently."""
    number = marker.get("chunking", chunking.LEGACY.number)
    params = chunking.PARAMS.get(number) if type(number) is int else None
    if params is None:
        known = ", ".join(map(str, chunking.PARAMS))
        raise FormatError(f"{root}: chunker parameter set {number!r} is not supported (this fsobj knows {known})")
    return params
