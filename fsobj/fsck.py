"""Checking and repairing a store: verify, rebuild the index, collect garbage.

Owns: whole-store passes over the blobs. The blobs are the source of truth:
``rebuild_index`` recomputes every index row of the partitions this identity
can read from the blobs alone; ``verify`` reads every blob of those partitions
back through the same checks ``get`` uses; ``gc`` deletes blobs that nothing in
the index references (mark and sweep), but only when the index is complete.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from fsobj import crypto
from fsobj.errors import FsobjError, IntegrityError, NotFoundError, UsageError
from fsobj.index import PartitionRow, VersionRow
from fsobj.model.checksum import BlockHasher
from fsobj.model.header import VersionHeader, decode_header_blob
from fsobj.model.partition import PartitionRecord
from fsobj.store import INCOMPLETE, PartitionView, Store, Version

Tick = Callable[[int], None]


@dataclass
class Report:
    partitions: int = 0
    skipped_partitions: int = 0  # not readable by this identity
    versions: int = 0
    payload_blobs: int = 0
    bytes_checked: int = 0
    orphans: int = 0
    faults: list[str] = field(default_factory=list)
    rebuilt: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "ok": not self.faults,
            "partitions": self.partitions,
            "skipped_partitions": self.skipped_partitions,
            "versions": self.versions,
            "payload_blobs": self.payload_blobs,
            "bytes_checked": self.bytes_checked,
            "orphan_blobs": self.orphans,
            "index_rebuilt": self.rebuilt,
            "faults": self.faults,
        }


# ---------------------------------------------------------------- verify


def verify(store: Store, tick: Tick | None = None) -> Report:
    """Check every partition record, version, signature, chunk and link.

    ``tick(1)`` is called once per version checked.
    """
    report = Report()
    seen: set[bytes] = set()
    for row in store.index.partitions():
        try:
            view = store.partition(row.partition_id)
        except FsobjError as e:
            report.faults.append(f"partition {row.partition_id.hex()}: {e}")
            continue
        if view.role is None:
            report.skipped_partitions += 1
            continue
        report.partitions += 1
        vrows = store.index.versions_in(view.id)
        for vrow in vrows:
            _verify_version(store, view, vrow, report, seen)
            if tick:
                tick(1)
        _verify_links(store, view, vrows, report)
    referenced = store.index.known_blob_ids()
    for blob_id in store.blobs.list():
        if blob_id not in referenced:
            report.orphans += 1
    return report


def _verify_version(store: Store, view: PartitionView, vrow: VersionRow, report: Report, seen: set[bytes]) -> None:
    """Header, signatures, index row; then the payload once per distinct checksum."""
    what = f"version {vrow.hash.hex()}"
    try:
        v = store.load_version(vrow.hash, view)
        _compare_row(store, view, v, vrow)
        keys = view.epoch_keys(v.header.epoch)
        if v.header.data is not None:  # carried by the header (its length is checked on decoding)
            if _checksum(v.header, [v.header.data]) != v.header.checksum:
                raise IntegrityError(f"{what}: payload does not match the checksum in its header")
        else:
            _verify_chunks(store, view, v, keys, report, seen)
        report.versions += 1
    except FsobjError as e:
        report.faults.append(f"{what} ({view.display_name}): {e}")


def _verify_chunks(
    store: Store, view: PartitionView, v: Version, keys: crypto.EpochKeys, report: Report, seen: set[bytes]
) -> None:
    what = f"version {v.hash.hex()}"
    refs = store.payloads.chunk_refs(v.header, keys)
    if sum(r.length for r in refs) != v.header.length:
        raise IntegrityError(f"{what}: chunk lengths do not add up to the header's length")
    if v.header.format == 3:  # the block list: readable, fits the length, hashes to the checksum
        store.payloads.expand_blocks(v.header, keys)
    if v.header.checksum not in seen:
        chunks = store.payloads.iter_chunks(refs, v.header.length, keys, view.id)

        def counted() -> Iterator[bytes]:
            for ref, data in zip(refs, chunks, strict=True):
                if ref.id not in seen:
                    seen.add(ref.id)
                    report.payload_blobs += 1
                    report.bytes_checked += ref.length
                yield data

        if _checksum(v.header, counted()) != v.header.checksum:
            raise IntegrityError(f"{what}: payload does not match the checksum in its header")
        seen.add(v.header.checksum)


def _checksum(header: VersionHeader, payload: Iterable[bytes]) -> bytes:
    """The checksum of ``payload`` as ``header``'s format defines it (docs/format.md)."""
    if header.format == 3:
        blocks = BlockHasher()
        for data in payload:
            blocks.update(data)
        return blocks.finish()[1]
    hasher = crypto.new_hasher()  # formats 1 and 2: plain BLAKE3 of the payload
    for data in payload:
        hasher.update(data)
    return hasher.digest()


def _verify_links(store: Store, view: PartitionView, vrows: list[VersionRow], report: Report) -> None:
    """Series links and heads: each version's prev is the one before it in its
    series, and each head row names its series' newest version with its values."""
    series: dict[bytes, list[VersionRow]] = defaultdict(list)
    for r in vrows:
        series[r.base_hash].append(r)
    for base, rows in series.items():
        rows.sort(key=lambda r: (r.seq, r.created_us, r.hash))
        by_hash = {r.hash: r for r in rows}
        for r in rows:
            if r.seq > 1 and (r.prev_hash not in by_hash or by_hash[r.prev_hash].seq != r.seq - 1):
                report.faults.append(f"version {r.hash.hex()}: its previous version is not in its series")
        head = store.index.head(base)
        newest = rows[-1]
        if head is None or (head.head_hash, head.sort_key_ct, head.tombstone, head.seq, head.epoch) != (
            newest.hash,
            newest.sort_key_ct,
            newest.tombstone,
            newest.seq,
            newest.epoch,
        ):
            report.faults.append(f"series {base.hex()}: the index head does not name its newest version")
    for head in store.index.heads_in(view.id):
        if head.base_hash not in series:
            report.faults.append(f"series {head.base_hash.hex()}: head row without versions")


def _compare_row(store: Store, view: PartitionView, v: Version, r: VersionRow) -> None:
    h = v.header
    sort_key = store.sort_key_of(view, r.epoch, r.sort_key_ct)
    if (r.base_hash, r.prev_hash, r.seq, r.tombstone, r.length, r.epoch, r.author_id, sort_key) != (
        v.base_hash,
        h.prev,
        h.seq,
        h.tombstone,
        h.length,
        h.epoch,
        h.author,
        h.sort_key,
    ):
        raise IntegrityError(f"index row of version {v.hash.hex()} disagrees with its header")


# ---------------------------------------------------------------- rebuild


def rebuild_index(store: Store, tick: Tick | None = None) -> Report:
    """Recompute the index from the blobs for every partition this identity can read.

    Partition records are public (signed, not encrypted), so every partition
    row comes back; version rows come back for the partitions this identity is
    entitled to. Rows of other partitions are left as they are; if any partition
    could not be rebuilt, the index stays marked incomplete (``gc`` refuses).
    The whole rebuild holds the index's write lock: writers wait, so no version
    committed meanwhile can be missed. Feed queues are kept (they are state).
    """
    report = Report(rebuilt=True)
    with store.index.write():
        kinds: dict[int, list[bytes]] = defaultdict(list)
        for blob_id in store.blobs.list():
            head = store.blobs.peek(blob_id, crypto.ENVELOPE_HEAD_LEN)
            if len(head) >= 6 and head[:4] == crypto.MAGIC:
                kinds[head[5]].append(blob_id)
            else:
                report.faults.append(f"blob {blob_id.hex()} has no fsobj envelope")
        _rebuild_partitions(store, kinds[crypto.KIND_PARTITION], report)
        views = []
        for row in store.index.partitions():
            try:
                view = store.partition(row.partition_id)
            except FsobjError as e:
                report.faults.append(f"partition {row.partition_id.hex()}: {e}")
                report.skipped_partitions += 1
                continue
            if view.role is None:
                report.skipped_partitions += 1
            else:
                views.append(view)
        report.partitions = len(views)
        found = _decrypt_headers(store, views, kinds[crypto.KIND_HEADER], report)
        for view in views:
            store.index.delete_partition_rows(view.id)
            for v in sorted(found[view.id], key=lambda v: (v.header.seq, v.header.created_us, v.hash)):
                if _add_rebuilt_version(store, view, v, report) and tick:
                    tick(1)
        store.index.set_meta(
            INCOMPLETE, f"{report.skipped_partitions} partition(s) not rebuilt" if report.skipped_partitions else None
        )
    return report


def _add_rebuilt_version(store: Store, view: PartitionView, v: Version, report: Report) -> bool:
    keys = view.epoch_keys(v.header.epoch)
    try:
        refs, tree_nodes = store.payloads.expand(v.header, keys)
    except FsobjError as e:
        report.faults.append(f"version {v.hash.hex()}: {e}")
        return False
    h = v.header
    row = VersionRow(
        v.hash,
        view.id,
        v.base_hash,
        h.prev,
        h.seq,
        h.created_us,
        h.length,
        h.tombstone,
        h.epoch,
        h.author,
        keys.seal_sort_key(view.id, v.sort_key),
    )
    store.index.add_version(row, [r.id for r in refs] + tree_nodes, notify=False)
    report.versions += 1
    return True


def _rebuild_partitions(store: Store, record_ids: list[bytes], report: Report) -> None:
    """Inside the rebuild's transaction: the newest verified record of each partition."""
    newest: dict[bytes, tuple[int, bytes, bytes]] = {}
    for rid in sorted(record_ids):
        try:
            rec = PartitionRecord.from_blob(store.blobs.get(rid), rid)
        except FsobjError as e:
            report.faults.append(f"partition record {rid.hex()}: {e}")
            continue
        known = newest.get(rec.partition)
        if known is not None and known[0] == rec.seq:
            report.faults.append(
                f"partition {rec.partition.hex()}: two records with seq {rec.seq} ({known[1].hex()}, {rid.hex()})"
            )
        if known is None or rec.seq > known[0]:
            newest[rec.partition] = (rec.seq, rid, rec.owner.user_id)
    for pid, (seq, rid, owner) in newest.items():
        current = store.index.partition(pid)
        if current is None or current.seq <= seq:
            store.index.put_partition(PartitionRow(pid, owner, seq, rid))


def _decrypt_headers(
    store: Store, views: list[PartitionView], header_ids: list[bytes], report: Report
) -> dict[bytes, list[Version]]:
    found: dict[bytes, list[Version]] = {v.id: [] for v in views}
    for hid in header_ids:
        blob = store.blobs.get(hid)
        try:
            _, epoch = crypto.envelope_epoch(blob, hid)
        except FsobjError as e:
            report.faults.append(str(e))
            continue
        for view in views:
            keys = view.keys.get(epoch)
            if keys is None:
                continue
            try:
                plain = crypto.open_blob(blob, crypto.KIND_HEADER, keys, view.id, hid)
            except IntegrityError:
                continue  # another partition's header
            try:
                header, integrity = decode_header_blob(plain, hid)
                store._check_header(view, header, hid, integrity, epoch)
            except FsobjError as e:
                report.faults.append(f"version {hid.hex()}: {e}")
                break
            found[view.id].append(Version(hid, header))
            break
    return found


# ---------------------------------------------------------------- gc


@dataclass
class GcReport:
    deleted: int = 0
    bytes_freed: int = 0
    kept_young: int = 0
    tmp_removed: int = 0

    def to_json(self) -> dict[str, int]:
        return self.__dict__.copy()


def gc(store: Store, grace_s: float = 3600.0, dry_run: bool = False) -> GcReport:
    """Delete blobs nothing references (older than ``grace_s``, so in-flight writes survive)."""
    reason = store.index.get_meta(INCOMPLETE)
    if reason:
        raise UsageError(f"the index may be incomplete ({reason}); gc would delete live data, refusing")
    report = GcReport()
    known = store.index.known_blob_ids()
    now = time.time()
    candidates: list[tuple[bytes, int]] = []
    for blob_id in list(store.blobs.list()):
        if blob_id in known:
            continue
        try:
            size, mtime = store.blobs.stat(blob_id)
        except NotFoundError:
            continue
        if now - mtime < grace_s:
            report.kept_young += 1
        else:
            candidates.append((blob_id, size))
    # Delete under the write lock, re-checking each: a commit that deduplicated
    # against an unreferenced blob checks inside its own transaction that it exists.
    for start in range(0, len(candidates), 1000):
        with store.index.write(bump=False):
            for blob_id, size in candidates[start : start + 1000]:
                if store.index.version(blob_id) is not None or store.index.is_referenced(blob_id):
                    continue
                report.deleted += 1
                report.bytes_freed += size
                if not dry_run:
                    store.blobs.delete(blob_id)
            if not dry_run:
                store.blobs.sync()
    if not dry_run:
        report.tmp_removed = store.blobs.clean_tmp()
    return report
