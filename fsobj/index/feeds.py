"""SQL of feeds: feed rows, subscriptions and the notification queue.

Owns: every statement on the ``feeds``, ``feed_subscriptions`` and
``feed_messages`` tables (schema in ``schema.py``). Mixed into
:class:`fsobj.index.Index`, sharing its per-thread connection; methods that
change rows must run inside ``Index.write()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database


@dataclass(frozen=True)
class FeedRow:
    feed_id: bytes
    owner_id: bytes
    name_ct: bytes
    created_us: int
    expires_us: int | None
    next_seq: int


@dataclass(frozen=True)
class MessageRow:
    feed_id: bytes
    seq: int
    version_hash: bytes
    partition_id: bytes
    commit_us: int
    visible_us: int
    receipt: str | None
    deliveries: int


_FEED_COLS = "feed_id, owner_id, name_ct, created_us, expires_us, next_seq"
_MSG_COLS = "feed_id, seq, version_hash, partition_id, commit_us, visible_us, receipt, deliveries"


class FeedQueries:
    db: Database

    def q(self, sql: str, params: object = ()) -> list[tuple]:  # provided by Index
        raise NotImplementedError

    # ------------------------------------------------------------ feeds
    def feed(self, feed_id: bytes) -> FeedRow | None:
        rows = self.q(f"SELECT {_FEED_COLS} FROM feeds WHERE feed_id = ?", [feed_id])
        return FeedRow(*rows[0]) if rows else None

    def feeds_of(self, owner_id: bytes) -> list[FeedRow]:
        return [FeedRow(*r) for r in self.q(f"SELECT {_FEED_COLS} FROM feeds WHERE owner_id = ?", [owner_id])]

    def add_feed(self, row: FeedRow) -> None:
        self.db.execute(
            f"INSERT INTO feeds ({_FEED_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
            (row.feed_id, row.owner_id, row.name_ct, row.created_us, row.expires_us, row.next_seq),
        )

    def set_feed_expiry(self, feed_id: bytes, expires_us: int | None) -> None:
        self.db.execute("UPDATE feeds SET expires_us = ? WHERE feed_id = ?", (expires_us, feed_id))

    def delete_feed(self, feed_id: bytes) -> None:
        for table in ("feed_messages", "feed_subscriptions", "feeds"):
            self.db.execute(f"DELETE FROM {table} WHERE feed_id = ?", (feed_id,))

    def delete_expired_feeds(self, now_us: int) -> int:
        expired = [
            r[0] for r in self.q("SELECT feed_id FROM feeds WHERE expires_us IS NOT NULL AND expires_us <= ?", [now_us])
        ]
        for feed_id in expired:
            self.delete_feed(feed_id)
        return len(expired)

    # ------------------------------------------------------------ subscriptions
    def subscriptions(self, feed_id: bytes) -> list[tuple[bytes, bytes]]:
        """(partition_id, prefix_ct) pairs of a feed."""
        return [
            (r[0], r[1])
            for r in self.q(
                "SELECT partition_id, prefix_ct FROM feed_subscriptions WHERE feed_id = ? "
                "ORDER BY partition_id, prefix_ct",
                [feed_id],
            )
        ]

    def set_subscriptions(self, feed_id: bytes, subs: list[tuple[bytes, bytes]]) -> None:
        self.db.execute("DELETE FROM feed_subscriptions WHERE feed_id = ?", (feed_id,))
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO feed_subscriptions (feed_id, partition_id, prefix_ct) VALUES (?, ?, ?)",
            [(feed_id, pid, prefix) for pid, prefix in subs],
        )

    def drop_partition_subscriptions(self, partition_id: bytes) -> None:
        """A removed partition pushes nothing more (queued notifications stay)."""
        self.db.execute("DELETE FROM feed_subscriptions WHERE partition_id = ?", (partition_id,))

    # ------------------------------------------------------------ queue
    def subscribed_feeds(self, partition_id: bytes, now_us: int) -> list[bytes]:
        """The unexpired feeds subscribed to a partition."""
        return [
            r[0]
            for r in self.q(
                "SELECT DISTINCT s.feed_id FROM feed_subscriptions s JOIN feeds f ON f.feed_id = s.feed_id "
                "WHERE s.partition_id = ? AND (f.expires_us IS NULL OR f.expires_us > ?)",
                [partition_id, now_us],
            )
        ]

    def push_notifications(
        self, partition_id: bytes, version_hash: bytes, commit_us: int, feeds: list[bytes] | None = None
    ) -> int:
        """Queue one notification per feed subscribed to the partition (inside the commit;
        ``feeds``: :meth:`subscribed_feeds` asked earlier in the same transaction)."""
        if feeds is None:
            feeds = self.subscribed_feeds(partition_id, commit_us)
        for feed_id in feeds:
            seq = self.q(
                "UPDATE feeds SET next_seq = next_seq + 1 WHERE feed_id = ? RETURNING next_seq - 1", [feed_id]
            )[0][0]
            self.db.execute(
                "INSERT INTO feed_messages (feed_id, seq, version_hash, partition_id, commit_us) "
                "VALUES (?, ?, ?, ?, ?)",
                (feed_id, seq, version_hash, partition_id, commit_us),
            )
        return len(feeds)

    def take_messages(self, feed_id: bytes, now_us: int, limit: int) -> list[MessageRow]:
        """Visible messages, oldest first (inside a write transaction, which hands them out)."""
        rows = self.q(
            f"SELECT {_MSG_COLS} FROM feed_messages WHERE feed_id = ? AND visible_us <= ? ORDER BY seq LIMIT ?",
            [feed_id, now_us, limit],
        )
        return [MessageRow(*r) for r in rows]

    def lease_message(self, feed_id: bytes, seq: int, receipt: str, visible_us: int) -> None:
        self.db.execute(
            "UPDATE feed_messages SET receipt = ?, visible_us = ?, deliveries = deliveries + 1 "
            "WHERE feed_id = ? AND seq = ?",
            (receipt, visible_us, feed_id, seq),
        )

    def message_by_receipt(self, feed_id: bytes, receipt: str) -> MessageRow | None:
        rows = self.q(f"SELECT {_MSG_COLS} FROM feed_messages WHERE feed_id = ? AND receipt = ?", [feed_id, receipt])
        return MessageRow(*rows[0]) if rows else None

    def delete_message(self, feed_id: bytes, seq: int) -> None:
        self.db.execute("DELETE FROM feed_messages WHERE feed_id = ? AND seq = ?", (feed_id, seq))

    def set_visible(self, feed_id: bytes, seq: int, visible_us: int) -> None:
        self.db.execute(
            "UPDATE feed_messages SET visible_us = ? WHERE feed_id = ? AND seq = ?", (visible_us, feed_id, seq)
        )

    def queue_stats(self, feed_id: bytes, now_us: int) -> dict[str, int | None]:
        depth, oldest, in_flight = self.q(
            "SELECT count(*), min(commit_us), sum(CASE WHEN visible_us > ? THEN 1 ELSE 0 END) "
            "FROM feed_messages WHERE feed_id = ?",
            [now_us, feed_id],
        )[0]
        return {"depth": depth, "oldest_commit_us": oldest, "in_flight": in_flight or 0}

    def next_visible_us(self, feed_id: bytes) -> int | None:
        """When the earliest hidden message becomes visible again (None: none hidden)."""
        return self.q("SELECT min(visible_us) FROM feed_messages WHERE feed_id = ?", [feed_id])[0][0]
