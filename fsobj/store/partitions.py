"""Partitions as the store sees them: creation, resolution, membership, keys.

Owns: turning partition records (``fsobj.model.partition``) into a
:class:`PartitionView` for the store's identity (role, the epoch keys it can
unwrap, the verified name), and changing membership (grant, revoke with key
rotation) by writing a new owner-signed record. Mixed into
:class:`fsobj.store.Store`; all SQL goes through ``self.index``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from fsobj import crypto
from fsobj.blobs import BlobStore
from fsobj.errors import (
    AccessDeniedError,
    ConflictError,
    ExistsError,
    FormatError,
    IntegrityError,
    NotFoundError,
    UsageError,
)
from fsobj.index import Index, PartitionRow
from fsobj.model import cbor
from fsobj.model.partition import (
    Member,
    PartitionRecord,
    check_partition_name,
    id_object,
    partition_id,
)

#: meta key present while the index may miss versions that the blobs hold
INCOMPLETE = "incomplete"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class PartitionView:
    """A partition as this identity sees it: record, role, the keys it can open."""

    row: PartitionRow
    record: PartitionRecord
    name: str | None
    role: str | None
    keys: dict[int, crypto.EpochKeys]

    @property
    def id(self) -> bytes:
        return self.row.partition_id

    @property
    def display_name(self) -> str:
        return self.name or self.id.hex()

    def current_keys(self) -> crypto.EpochKeys:
        return self.epoch_keys(self.record.current_epoch)

    def epoch_keys(self, epoch: int) -> crypto.EpochKeys:
        try:
            return self.keys[epoch]
        except KeyError:
            raise AccessDeniedError(
                f"no key for epoch {epoch} of partition {self.display_name}: not entitled"
            ) from None

    def require_read(self) -> None:
        if self.role is None:
            raise AccessDeniedError(f"no read access to partition {self.id.hex()[:16]}")

    def require_write(self) -> None:
        self.require_read()
        if self.role not in ("owner", "write"):
            raise AccessDeniedError(f"partition {self.display_name} is read-only for this identity")

    def info(self) -> dict[str, object]:
        return {
            "name": self.name,
            "partition_id": self.id.hex(),
            "owner": self.record.owner.user_id.hex(),
            "owner_name": self.record.owner.name,
            "role": self.role,
            "epoch": self.record.current_epoch,
            "record_seq": self.record.seq,
            "members": [
                {"user_id": m.user_id.hex(), "name": m.public.name, "role": m.role} for m in self.record.members
            ],
        }


class PartitionsMixin:
    """Partition operations of :class:`fsobj.store.Store`."""

    index: Index
    blobs: BlobStore
    identity: crypto.Identity
    _views: dict[bytes, PartitionView]
    _lock: threading.Lock

    def create_partition(self, name: str) -> PartitionView:
        check_partition_name(name)
        reason = self.index.get_meta(INCOMPLETE)
        if reason:
            raise UsageError(f"cannot create partitions while the index is incomplete ({reason})")
        me = self.identity
        pid = partition_id(name, me.user_id)
        epoch_key = os.urandom(32)
        keys0 = crypto.EpochKeys.from_epoch_key(0, epoch_key)
        name_sealed = crypto.seal_blob(crypto.KIND_PARTITION, keys0, pid, b"", cbor.encode(id_object(name, me.user_id)))
        record = PartitionRecord(
            partition=pid,
            seq=1,
            created_us=now_us(),
            owner=me.public,
            name_sealed=name_sealed,
            members=[],
            epochs=[{me.user_id: crypto.wrap_key(me.public, pid, 0, epoch_key)}],
        )
        record.history = [record.history_entry()]
        blob = record.signed_blob(me)
        record_id = crypto.hash_bytes(blob)
        with self.index.write():
            if self.index.partition(pid) is not None:
                raise ExistsError(f"partition {name!r} already exists")
            self.blobs.put(record_id, blob)
            self.blobs.sync()
            self.index.put_partition(PartitionRow(pid, me.user_id, 1, record_id))
        return self.partition(pid)

    def partition(self, ref: str | bytes) -> PartitionView:
        """A partition by id (bytes or 64 hex), ``name`` (own first) or ``name@owner-prefix``."""
        pid = self._resolve(ref)
        row = self.index.partition(pid)
        if row is None:
            raise NotFoundError(f"no partition {_show(ref)}")
        with self._lock:
            view = self._views.get(pid)
            if view is not None and view.row.record_id == row.record_id:
                return view
        view = self._load_view(row)
        with self._lock:
            self._views[pid] = view
        return view

    def _resolve(self, ref: str | bytes) -> bytes:
        if isinstance(ref, bytes):
            return ref
        if len(ref) == 64:
            try:
                pid = bytes.fromhex(ref)
                if self.index.partition(pid) is not None:
                    return pid
            except ValueError:
                pass
        name, _, owner_prefix = ref.partition("@")
        own = partition_id(name, self.identity.user_id)
        if not owner_prefix and self.index.partition(own) is not None:
            return own
        matches = [
            v.id for v in self.partitions() if v.name == name and v.record.owner.user_id.hex().startswith(owner_prefix)
        ]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"partition name {ref!r} is ambiguous: add @<owner id prefix>")
        hint = self.index.get_meta(INCOMPLETE)
        raise NotFoundError(f"no partition {ref!r} readable by this identity" + (f" ({hint})" if hint else ""))

    def _load_view(self, row: PartitionRow) -> PartitionView:
        record = PartitionRecord.from_blob(self.blobs.get(row.record_id), row.record_id)
        if record.partition != row.partition_id or record.seq != row.seq:
            raise IntegrityError(f"partition record {row.record_id.hex()} does not match the index")
        me = self.identity.user_id
        role = record.role_of(me)
        keys: dict[int, crypto.EpochKeys] = {}
        for epoch, wraps in enumerate(record.epochs):
            if me in wraps:
                raw = self.identity.unwrap(record.partition, epoch, wraps[me])
                keys[epoch] = crypto.EpochKeys.from_epoch_key(epoch, raw)
        if role is not None and set(keys) != set(range(len(record.epochs))):
            # every genuine member holds every epoch key, epoch 0 included, which
            # lets them check the owner through the sealed ID object below
            raise IntegrityError(f"partition record {row.record_id.hex()} withholds key epochs: forged?")
        name = None
        if 0 in keys:
            plain = crypto.open_blob(record.name_sealed, crypto.KIND_PARTITION, keys[0], record.partition, b"")
            ido = cbor.decode(plain)
            if crypto.hash_bytes(cbor.encode(ido)) != record.partition or ido.get("owner") != record.owner.user_id:
                raise IntegrityError(f"partition {record.partition.hex()}: ID object does not hash to its id")
            name = ido["name"]
        if role is None:
            keys = {}  # an ex-member keeps no access through this API
        return PartitionView(row, record, name, role, keys)

    def partitions(self) -> list[PartitionView]:
        """Partitions this identity can read, own ones first, then by name."""
        views = []
        for row in self.index.partitions():
            try:
                v = self.partition(row.partition_id)
            except (IntegrityError, FormatError):
                continue
            if v.role is not None:
                views.append(v)
        views.sort(key=lambda v: (v.role != "owner", v.name or "", v.id))
        return views

    def grant(self, ref: str | bytes, grantee: crypto.PublicIdentity, role: str) -> PartitionView:
        if role not in ("read", "write"):
            raise UsageError("role must be 'read' or 'write'")
        grantee.check()
        view = self._owner_view(ref)
        if grantee.user_id == self.identity.user_id:
            raise UsageError("the owner already has every right")
        rec = view.record
        members = [m for m in rec.members if m.user_id != grantee.user_id] + [Member(grantee, role)]
        epochs = [dict(e) for e in rec.epochs]
        for epoch, wraps in enumerate(epochs):
            if epoch in view.keys:
                raw = self.identity.unwrap(rec.partition, epoch, wraps[self.identity.user_id])
                wraps[grantee.user_id] = crypto.wrap_key(grantee, rec.partition, epoch, raw)
        return self._replace_record(view, members, epochs)

    def revoke(self, ref: str | bytes, user: str) -> PartitionView:
        """Remove a member (by user id prefix or name) and rotate the partition key."""
        view = self._owner_view(ref)
        rec = view.record
        gone = [m for m in rec.members if m.user_id.hex().startswith(user) or m.public.name == user]
        if not gone:
            raise NotFoundError(f"{user!r} is not a member of partition {view.display_name}")
        if len(gone) > 1:
            raise UsageError(f"{user!r} matches several members: give more of the user id")
        members = [m for m in rec.members if m.user_id != gone[0].user_id]
        epochs = [{u: w for u, w in e.items() if u != gone[0].user_id} for e in rec.epochs]
        new_epoch = len(epochs)
        new_key = os.urandom(32)
        epochs.append(
            {
                m.user_id: crypto.wrap_key(m.public, rec.partition, new_epoch, new_key)
                for m in [Member(self.identity.public, "owner"), *members]
            }
        )
        return self._replace_record(view, members, epochs)

    def _owner_view(self, ref: str | bytes) -> PartitionView:
        view = self.partition(ref)
        if view.role != "owner":
            raise AccessDeniedError(f"only the owner of partition {view.display_name} can do this")
        return view

    def _replace_record(
        self, view: PartitionView, members: list[Member], epochs: list[dict[bytes, bytes]]
    ) -> PartitionView:
        old = view.record
        rec = PartitionRecord(
            partition=old.partition,
            seq=old.seq + 1,
            created_us=now_us(),
            owner=old.owner,
            name_sealed=old.name_sealed,
            members=members,
            epochs=epochs,
            history=list(old.history),
        )
        rec.history.append(rec.history_entry())
        blob = rec.signed_blob(self.identity)
        record_id = crypto.hash_bytes(blob)
        with self.index.write():
            row = self.index.partition(old.partition)
            if row is None or row.seq != old.seq:
                raise ConflictError("the partition record changed meanwhile; retry")
            self.blobs.put(record_id, blob)
            self.blobs.sync()
            self.index.put_partition(PartitionRow(old.partition, old.owner.user_id, rec.seq, record_id))
        return self.partition(old.partition)


def _show(ref: str | bytes) -> str:
    return ref.hex() if isinstance(ref, bytes) else repr(ref)
