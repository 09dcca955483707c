"""Partitions: the ID object, the partition id, and the signed partition record.

Owns: what a partition is on disk (docs/format.md, "Partition record"): the
canonical ID object (``name`` + ``owner``) whose hash is the partition id, and
the owner-signed record listing members, their roles and the partition key of
every epoch wrapped for each entitled user. Pure: no I/O.

A record is replaced (never edited) by a record with ``seq + 1``; the highest
``seq`` whose signature verifies is the current one. Versions name the record
``seq`` they were written under (``acl``), so a reader can check the author's
right at the time of writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsobj import crypto
from fsobj.errors import AccessDeniedError, FormatError, IntegrityError, UsageError
from fsobj.model import cbor

RECORD_TYPE = "fsobj-partition"
ID_TYPE = "fsobj-partition-id"
ROLES = ("read", "write")


def id_object(name: str, owner: bytes) -> dict[str, Any]:
    """The ID object: its canonical CBOR hash is the partition id."""
    return {"type": ID_TYPE, "v": 1, "name": name, "owner": owner}


def partition_id(name: str, owner: bytes) -> bytes:
    return crypto.hash_bytes(cbor.encode(id_object(name, owner)))


def check_partition_name(name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\x00" in name:
        raise UsageError("partition name must be a non-empty string without '/' or NUL")
    if name in (".", "..") or name.startswith(".") or "@" in name:
        raise UsageError("partition name must not start with '.' or contain '@'")
    if len(name.encode("utf-8")) > 200:
        raise UsageError("partition name longer than 200 bytes")
    return name


@dataclass(frozen=True)
class Member:
    public: crypto.PublicIdentity
    role: str  # "owner" | "read" | "write"

    @property
    def user_id(self) -> bytes:
        return self.public.user_id


@dataclass
class PartitionRecord:
    """One signed state of a partition's membership and keys."""

    partition: bytes
    seq: int
    created_us: int
    owner: crypto.PublicIdentity
    name_sealed: bytes  # the ID object, AEAD under epoch 0 (members learn the name)
    members: list[Member]  # excluding the owner
    epochs: list[dict[bytes, bytes]]  # epoch -> user_id -> wrapped epoch key
    history: list[dict[str, Any]] = field(default_factory=list)  # [{"seq", "epoch", "writers"}]
    _publics: dict[bytes, crypto.PublicIdentity] = field(default_factory=dict, repr=False, compare=False)

    @property
    def current_epoch(self) -> int:
        return len(self.epochs) - 1

    def role_of(self, user_id: bytes) -> str | None:
        if user_id == self.owner.user_id:
            return "owner"
        for m in self.members:
            if m.user_id == user_id:
                return m.role
        return None

    def can_write(self, user_id: bytes) -> bool:
        return self.role_of(user_id) in ("owner", "write")

    def writers_at(self, acl_seq: int) -> set[bytes]:
        """User ids with write right under record ``acl_seq`` (owner always)."""
        for h in self.history:
            if h["seq"] == acl_seq:
                return set(h["writers"]) | {self.owner.user_id}
        raise IntegrityError(f"version names unknown partition record seq {acl_seq}")

    def epoch_at(self, acl_seq: int) -> int:
        """The key epoch that was current under record ``acl_seq``."""
        for h in self.history:
            if h["seq"] == acl_seq:
                return int(h["epoch"])
        raise IntegrityError(f"version names unknown partition record seq {acl_seq}")

    def public_of(self, user_id: bytes) -> crypto.PublicIdentity:
        """The public identity of a present or past member (checked once, then kept)."""
        if user_id == self.owner.user_id:
            return self.owner
        known = self._publics.get(user_id)
        if known is not None:
            return known
        for h in self.history:
            for rec in h.get("publics", []):
                pub = crypto.PublicIdentity.from_record(rec)
                if pub.user_id == user_id:
                    self._publics[user_id] = pub
                    return pub
        raise AccessDeniedError(f"user {user_id.hex()[:16]} was never a member of this partition")

    # ------------------------------------------------------------ encoding
    def body(self) -> dict[str, Any]:
        return {
            "type": RECORD_TYPE,
            "v": 1,
            "partition": self.partition,
            "seq": self.seq,
            "created": self.created_us,
            "owner": self.owner.to_record(),
            "name_sealed": self.name_sealed,
            "members": [{"id": m.public.to_record(), "role": m.role} for m in self.members],
            "epochs": [[[uid, w] for uid, w in sorted(e.items())] for e in self.epochs],
            "history": self.history,
        }

    def signed_blob(self, owner: crypto.Identity) -> bytes:
        if owner.user_id != self.owner.user_id:
            raise AccessDeniedError("only the partition owner can sign its record")
        body = cbor.encode(self.body())
        sig = owner.sign(crypto.SIG_PARTITION + body)
        return crypto.signed_blob(cbor.encode({"body": self.body(), "sig": sig}))

    @classmethod
    def from_blob(cls, blob: bytes, blob_id: bytes) -> PartitionRecord:
        """Parse and verify a partition record blob (owner signature, id binding)."""
        outer = cbor.decode(crypto.open_signed_blob(blob, blob_id))
        try:
            b, sig = outer["body"], outer["sig"]
            if b["type"] != RECORD_TYPE or b["v"] != 1:
                raise FormatError("not a partition record of a known version")
            owner = crypto.PublicIdentity.from_record(b["owner"])
            crypto.verify_signature(owner.sign_pub, sig, crypto.SIG_PARTITION + cbor.encode(b), "partition record")
            rec = cls(
                partition=b["partition"],
                seq=b["seq"],
                created_us=b["created"],
                owner=owner,
                name_sealed=b["name_sealed"],
                members=[Member(crypto.PublicIdentity.from_record(m["id"]), m["role"]) for m in b["members"]],
                epochs=[{uid: w for uid, w in e} for e in b["epochs"]],
                history=b["history"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"malformed partition record: {e}") from e
        return rec

    def history_entry(self) -> dict[str, Any]:
        """The entry this record adds to ``history`` (writers and publics at this seq)."""
        return {
            "seq": self.seq,
            "epoch": self.current_epoch,
            "writers": sorted(m.user_id for m in self.members if m.role == "write"),
            "publics": [m.public.to_record() for m in self.members],
        }
