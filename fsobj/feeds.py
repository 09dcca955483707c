"""Feeds: persistent queues of update notifications with at-least-once delivery.

Owns: the feed model (docs/feeds.md). A *feed* belongs to one user and is
identified like a partition: the BLAKE3 hash of a canonical ID object
(``name`` + ``owner``). It subscribes to partitions the owner can read,
optionally narrowed to a sort-key prefix. Every committed version of a
subscribed partition queues one notification per feed **in the same SQLite
transaction that commits the version** (``Index.add_version``), so a crash can
never separate the two.

Delivery: ``read`` leases up to N visible notifications, each with a fresh
receipt handle, and hides them for a visibility timeout; ``ack`` deletes them;
un-acked ones become visible again when the timeout passes; ``extend`` pushes a
lease's timeout further. Leasing happens inside ``BEGIN IMMEDIATE``, so
concurrent consumers (threads or processes) never receive the same
notification inside its visibility window. Long polling watches the index's
generation counter (bumped by every commit, from any process) every
``POLL_S`` seconds.

At rest a queued notification is (feed id, seq, version hash, partition id,
commit time): no more than the index already holds. Feed names and prefixes
are sealed with a key only the owner's identity can derive; headers (sort
key, user headers) are decrypted only when the entitled owner reads.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from fsobj import crypto
from fsobj.errors import AccessDeniedError, ExistsError, FsobjError, NotFoundError, UsageError
from fsobj.index import FeedRow, MessageRow
from fsobj.model import cbor
from fsobj.store import Store, now_us

POLL_S = 0.005
MAX_BATCH = 1000
DEFAULT_VISIBILITY_S = 30.0


def feed_id(name: str, owner: bytes) -> bytes:
    return crypto.hash_bytes(cbor.encode({"type": "fsobj-feed-id", "v": 1, "name": name, "owner": owner}))


@dataclass(frozen=True)
class Subscription:
    partition: str  # display name of the partition
    partition_id: bytes
    prefix: str

    def to_json(self) -> dict[str, str]:
        return {"partition": self.partition, "partition_id": self.partition_id.hex(), "prefix": self.prefix}


@dataclass
class Notification:
    """One delivery of one queued notification."""

    feed: str
    seq: int
    receipt: str
    commit_us: int
    deliveries: int
    partition_id: bytes
    version_hash: bytes
    partition: str | None = None
    event: str | None = None  # created | updated | renamed | deleted
    header: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "feed": self.feed,
            "seq": self.seq,
            "receipt": self.receipt,
            "commit_us": self.commit_us,
            "deliveries": self.deliveries,
            "partition": self.partition,
            "partition_id": self.partition_id.hex(),
            "absolute_hash": self.version_hash.hex(),
            "event": self.event,
            "header": self.header,
        }
        if self.error:
            d["error"] = self.error
        return d


class Feeds:
    """The feeds of the store's identity."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.index = store.index
        self.me = store.identity.user_id
        self._siv = AESSIV(store.identity.derive_secret(crypto.CTX_FEED))

    # ------------------------------------------------------------ naming
    def _seal(self, text: str) -> bytes:
        return self._siv.encrypt(text.encode("utf-8"), [self.me])

    def _open(self, sealed: bytes) -> str:
        return self._siv.decrypt(sealed, [self.me]).decode("utf-8")

    def _row(self, name: str) -> FeedRow:
        """A feed of this identity by name, or any feed by its 64-hex id."""
        fid = feed_id(name, self.me)
        if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            by_id = self.index.feed(bytes.fromhex(name))
            if by_id is not None:
                fid = by_id.feed_id
        row = self.index.feed(fid)
        if row is None or (row.expires_us is not None and row.expires_us <= now_us()):
            raise NotFoundError(f"no feed {name!r} of this identity")
        if row.owner_id != self.me:
            raise AccessDeniedError(f"feed {name!r} belongs to someone else")
        return row

    def _subs(self, subs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
        out = []
        for ref, prefix in subs:
            view = self.store.partition(ref)
            view.require_read()
            out.append((view.id, self._seal(prefix)))
        if not out:
            raise UsageError("a feed needs at least one --partition")
        return out

    # ------------------------------------------------------------ management
    def create(self, name: str, subscriptions: list[tuple[str, str]], expires_s: float | None = None) -> dict[str, Any]:
        """A new feed subscribed to (partition, prefix) pairs."""
        if not name or "\x00" in name:
            raise UsageError("feed name must be a non-empty string")
        subs = self._subs(subscriptions)
        fid = feed_id(name, self.me)
        now = now_us()
        expires = None if expires_s is None else now + int(expires_s * 1e6)
        with self.index.write(bump=False):
            existing = self.index.feed(fid)
            if existing is not None:
                if existing.expires_us is None or existing.expires_us > now:
                    raise ExistsError(f"feed {name!r} already exists")
                self.index.delete_feed(fid)
            self.index.add_feed(FeedRow(fid, self.me, self._seal(name), now, expires, 1))
            self.index.set_subscriptions(fid, subs)
        return self.show(name)

    def subscribe(self, name: str, subscriptions: list[tuple[str, str]], replace: bool = False) -> dict[str, Any]:
        """Add (or with ``replace``, set) the feed's subscriptions."""
        row = self._row(name)
        new = self._subs(subscriptions)
        with self.index.write(bump=False):
            current = [] if replace else self.index.subscriptions(row.feed_id)
            self.index.set_subscriptions(row.feed_id, current + new)
        return self.show(name)

    def unsubscribe(self, name: str, partition: str) -> dict[str, Any]:
        row = self._row(name)
        pid = self.store.partition(partition).id
        with self.index.write(bump=False):
            subs = [s for s in self.index.subscriptions(row.feed_id) if s[0] != pid]
            if not subs:
                raise UsageError("a feed needs at least one subscription: delete the feed instead")
            self.index.set_subscriptions(row.feed_id, subs)
        return self.show(name)

    def set_expiry(self, name: str, expires_s: float | None) -> dict[str, Any]:
        row = self._row(name)
        with self.index.write(bump=False):
            self.index.set_feed_expiry(row.feed_id, None if expires_s is None else now_us() + int(expires_s * 1e6))
        return self.show(name)

    def delete(self, name: str) -> None:
        row = self._row(name)
        with self.index.write(bump=False):
            self.index.delete_feed(row.feed_id)

    def subscriptions(self, row: FeedRow) -> list[Subscription]:
        out = []
        for pid, prefix_ct in self.index.subscriptions(row.feed_id):
            try:
                pname = self.store.partition(pid).display_name
            except FsobjError:
                pname = pid.hex()
            out.append(Subscription(pname, pid, self._open(prefix_ct)))
        return out

    def show(self, name: str) -> dict[str, Any]:
        row = self._row(name)
        return {
            "name": name,
            "feed_id": row.feed_id.hex(),
            "owner": row.owner_id.hex(),
            "created_us": row.created_us,
            "expires_us": row.expires_us,
            "next_seq": row.next_seq,
            "subscriptions": [s.to_json() for s in self.subscriptions(row)],
            **self.index.queue_stats(row.feed_id, now_us()),
        }

    def list(self) -> list[dict[str, Any]]:
        now = now_us()
        with self.index.write(bump=False):
            self.index.delete_expired_feeds(now)
        names = [
            self._open(r.name_ct) for r in self.index.feeds_of(self.me) if r.expires_us is None or r.expires_us > now
        ]
        return [self.show(n) for n in sorted(names)]

    # ------------------------------------------------------------ delivery
    def read(
        self, name: str, max_messages: int = 10, wait_s: float = 0.0, visibility_s: float = DEFAULT_VISIBILITY_S
    ) -> list[Notification]:
        """Lease up to ``max_messages`` notifications, waiting up to ``wait_s`` for some."""
        if not 1 <= max_messages <= MAX_BATCH:
            raise UsageError(f"max must be between 1 and {MAX_BATCH}")
        if visibility_s <= 0:
            raise UsageError("visibility timeout must be positive")
        row = self._row(name)
        prefixes = self._prefixes(row)
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            generation = self.index.generation()
            out = self._take(name, row, prefixes, max_messages, visibility_s)
            if out or time.monotonic() >= deadline:
                return out
            self._wait(row, generation, deadline)

    def _prefixes(self, row: FeedRow) -> dict[bytes, list[str]]:
        prefixes: dict[bytes, list[str]] = {}
        for pid, prefix_ct in self.index.subscriptions(row.feed_id):
            prefixes.setdefault(pid, []).append(self._open(prefix_ct))
        return prefixes

    def _take(
        self, name: str, row: FeedRow, prefixes: dict[bytes, list[str]], limit: int, visibility_s: float
    ) -> list[Notification]:
        now = now_us()
        leased: list[tuple[MessageRow, str]] = []
        with self.index.write(bump=False):
            for m in self.index.take_messages(row.feed_id, now, limit):
                receipt = secrets.token_hex(16)  # never starts with '-' (a command line would take it for an option)
                self.index.lease_message(row.feed_id, m.seq, receipt, now + int(visibility_s * 1e6))
                leased.append((m, receipt))
        out, skipped = [], []
        for m, receipt in leased:
            n = self._describe(name, m, receipt)
            wanted = prefixes.get(m.partition_id, [""])
            sort_key = n.header.get("sort_key")
            if sort_key is not None and not any(sort_key.startswith(p) for p in wanted):
                skipped.append(receipt)  # outside the subscribed prefix: consumed here
            else:
                out.append(n)
        if skipped:
            self.ack(name, skipped)
        return out

    def _describe(self, name: str, m: MessageRow, receipt: str) -> Notification:
        n = Notification(name, m.seq, receipt, m.commit_us, m.deliveries + 1, m.partition_id, m.version_hash)
        try:
            view = self.store.partition(m.partition_id)
            n.partition = view.display_name
            v = self.store.load_version(m.version_hash, view)
        except FsobjError as e:
            n.error = str(e)  # purged, access revoked, or damaged: still delivered, never dropped
            return n
        s = v.summary()
        n.header = {
            k: s[k]
            for k in (
                "absolute_hash",
                "base_hash",
                "previous_hash",
                "version",
                "sort_key",
                "author",
                "created_us",
                "length",
                "tombstone",
                "headers",
            )
        }
        n.event = self._event(v, view)
        return n

    def _event(self, v: Any, view: Any) -> str:
        h = v.header
        if h.tombstone:
            return "deleted"
        if h.prev is None:
            return "created"
        try:
            prev = self.store.load_version(h.prev, view)
        except FsobjError:
            return "updated"
        return "renamed" if prev.sort_key != h.sort_key else "updated"

    def _wait(self, row: FeedRow, generation: int, deadline: float) -> None:
        """Sleep until a commit happens, a lease expires, or the deadline."""
        wake_at = deadline
        nxt = self.index.next_visible_us(row.feed_id)
        if nxt is not None:
            wake_at = min(wake_at, time.monotonic() + max(0.0, (nxt - now_us()) / 1e6))
        while time.monotonic() < wake_at:
            time.sleep(POLL_S)
            if self.index.generation() != generation:
                return

    def ack(self, name: str, receipts: list[str]) -> int:
        """Delete delivered notifications. Unknown/expired receipts raise after the valid ones are acked."""
        row = self._row(name)
        bad = []
        with self.index.write(bump=False):
            for r in receipts:
                m = self.index.message_by_receipt(row.feed_id, r)
                if m is None:
                    bad.append(r)
                else:
                    self.index.delete_message(row.feed_id, m.seq)
        if bad:
            raise NotFoundError(
                f"{len(bad)} receipt(s) unknown or expired (the notification was redelivered or acked): "
                + ", ".join(bad[:5])
            )
        return len(receipts)

    def extend(self, name: str, receipt: str, by_s: float) -> int:
        """Push a lease's visibility timeout ``by_s`` seconds further; returns the new time (us)."""
        if by_s <= 0:
            raise UsageError("--by must be positive")
        row = self._row(name)
        now = now_us()
        with self.index.write(bump=False):
            m = self.index.message_by_receipt(row.feed_id, receipt)
            if m is None or m.visible_us <= now:
                raise NotFoundError(f"receipt {receipt} expired: the notification may be delivered again")
            visible = m.visible_us + int(by_s * 1e6)
            self.index.set_visible(row.feed_id, m.seq, visible)
        return visible

    def follow(self, name: str, batch: int = 100, visibility_s: float = DEFAULT_VISIBILITY_S) -> Iterator[Notification]:
        """Yield notifications forever; each is acked when the consumer asks for the next."""
        while True:
            for n in self.read(name, batch, wait_s=5.0, visibility_s=visibility_s):
                yield n
                self.ack(name, [n.receipt])

    # ------------------------------------------------------------ trio
    async def aread(
        self, name: str, max_messages: int = 10, wait_s: float = 0.0, visibility_s: float = DEFAULT_VISIBILITY_S
    ) -> list[Notification]:
        """``read`` for trio programs: runs in a worker thread, cancellable while waiting."""
        import trio

        return await trio.to_thread.run_sync(
            partial(self.read, name, max_messages, wait_s, visibility_s), abandon_on_cancel=True
        )

    async def aack(self, name: str, receipts: list[str]) -> int:
        import trio

        return await trio.to_thread.run_sync(partial(self.ack, name, receipts))
