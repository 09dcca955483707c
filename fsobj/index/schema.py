"""The SQLite index schema, written once, with the meaning of every column.

Owns: table definitions and migrations. The index is a *cache* of what the
blobs say: every row can be recomputed from the blobs by an entitled identity
(``fsobj verify --rebuild-index``). It holds no plaintext sort key, user header
or POSIX attribute: sort keys are stored only AES-SIV-sealed.
"""

from __future__ import annotations

SCHEMA_VERSION = 3

SCHEMA = """
-- Facts about the index itself. key 'schema' = SCHEMA_VERSION;
-- key 'generation' = counter bumped by every committing transaction (readers
-- use it to know whether a cached listing is still current).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per partition known to the store.
--   partition_id  BLAKE3 of the canonical ID object (name + owner)
--   owner_id      user id of the owner (public: it is inside the ID object's hash anyway)
--   seq           seq of the newest verified partition record
--   record_id     blob id of that record (a signed, unencrypted blob)
CREATE TABLE IF NOT EXISTS partitions (
    partition_id BLOB PRIMARY KEY,
    owner_id     BLOB NOT NULL,
    seq          INTEGER NOT NULL,
    record_id    BLOB NOT NULL
);

-- One row per committed version (tombstones included).
--   hash         absoluteHash = blob id of the header blob
--   base_hash    baseHash of the series (= hash for the first version)
--   prev_hash    version this one replaced; NULL for the first
--   seq          version number in the series, 1-based
--   created_us   creation time, microseconds since the epoch (author's clock)
--   length       payload length in bytes (0 for tombstones)
--   tombstone    1 if this version is a logical delete
--   epoch        partition key epoch the version is encrypted under
--   author_id    user id of the author
--   sort_key_ct  AES-SIV(sort key) under the epoch's sort-key key, AD = partition id
CREATE TABLE IF NOT EXISTS versions (
    hash         BLOB PRIMARY KEY,
    partition_id BLOB NOT NULL,
    base_hash    BLOB NOT NULL,
    prev_hash    BLOB,
    seq          INTEGER NOT NULL,
    created_us   INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    tombstone    INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    author_id    BLOB NOT NULL,
    sort_key_ct  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_series ON versions (base_hash, seq);
CREATE INDEX IF NOT EXISTS versions_partition ON versions (partition_id);

-- One row per series: its newest version (denormalised from versions).
--   head_hash    absoluteHash of the newest version; tombstone/length/... are its values
-- Clustered by partition (schema 3), so listing a partition reads its rows in
-- sequence instead of one random page per row (the cold listing figure).
CREATE TABLE IF NOT EXISTS heads (
    base_hash    BLOB NOT NULL,
    partition_id BLOB NOT NULL,
    head_hash    BLOB NOT NULL,
    sort_key_ct  BLOB NOT NULL,
    epoch        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    tombstone    INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    created_us   INTEGER NOT NULL,
    PRIMARY KEY (partition_id, base_hash)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS heads_base ON heads (base_hash);
CREATE INDEX IF NOT EXISTS heads_sort_key ON heads (partition_id, sort_key_ct);

-- Which payload blobs (chunks and chunk-list nodes) each version references.
-- A blob with no row here and no version/partition row naming it is garbage.
CREATE TABLE IF NOT EXISTS refs (
    blob_id      BLOB NOT NULL,
    version_hash BLOB NOT NULL,
    PRIMARY KEY (blob_id, version_hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_version ON refs (version_hash);
"""

FEEDS_SCHEMA = """
-- Feeds (schema 2): persistent queues of update notifications. Feeds are
-- state, not a cache: they cannot be rebuilt from the blobs (docs/feeds.md).
--   feed_id      BLAKE3 of the canonical feed ID object (name + owner)
--   owner_id     the only user who may read, change or delete the feed
--   name_ct      the feed name, AES-SIV under the owner's feed key (AD = owner id)
--   created_us   creation time; expires_us: after it the feed is gone (NULL: never)
--   next_seq     the sequence number the next notification gets
CREATE TABLE IF NOT EXISTS feeds (
    feed_id    BLOB PRIMARY KEY,
    owner_id   BLOB NOT NULL,
    name_ct    BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER,
    next_seq   INTEGER NOT NULL DEFAULT 1
);

-- Which partitions push into which feed. prefix_ct is the sort-key prefix,
-- sealed with the owner's feed key (empty prefix: every object); since writers
-- cannot open it, every version of the partition is queued once per feed and
-- the prefix is applied when the owner reads (non-matching ones are acked then).
CREATE TABLE IF NOT EXISTS feed_subscriptions (
    feed_id      BLOB NOT NULL,
    partition_id BLOB NOT NULL,
    prefix_ct    BLOB NOT NULL,
    PRIMARY KEY (feed_id, partition_id, prefix_ct)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feed_subscriptions_partition ON feed_subscriptions (partition_id);

-- Queued notifications, inserted in the transaction that commits the version.
--   seq          per-feed sequence number (commit order within one store)
--   version_hash absoluteHash of the version; the header is read from its blob
--   commit_us    commit time (committer's clock)
--   visible_us   not handed out again before this time (0: available now)
--   receipt      receipt handle of the delivery in flight (NULL: none yet)
--   deliveries   how many times it has been handed out
CREATE TABLE IF NOT EXISTS feed_messages (
    feed_id      BLOB NOT NULL,
    seq          INTEGER NOT NULL,
    version_hash BLOB NOT NULL,
    partition_id BLOB NOT NULL,
    commit_us    INTEGER NOT NULL,
    visible_us   INTEGER NOT NULL DEFAULT 0,
    receipt      TEXT,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (feed_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feed_messages_visible ON feed_messages (feed_id, visible_us, seq);
CREATE UNIQUE INDEX IF NOT EXISTS feed_messages_receipt ON feed_messages (receipt);
"""

SCHEMA += FEEDS_SCHEMA

#: schema version -> SQL that upgrades from the previous version.
HEADS_CLUSTERED = """
-- Schema 3: the heads table clustered by partition.
CREATE TABLE heads_v3 (
    base_hash    BLOB NOT NULL,
    partition_id BLOB NOT NULL,
    head_hash    BLOB NOT NULL,
    sort_key_ct  BLOB NOT NULL,
    epoch        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    tombstone    INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    created_us   INTEGER NOT NULL,
    PRIMARY KEY (partition_id, base_hash)
) WITHOUT ROWID;
INSERT INTO heads_v3 SELECT base_hash, partition_id, head_hash, sort_key_ct, epoch, seq, tombstone, length,
    created_us FROM heads;
DROP TABLE heads;
ALTER TABLE heads_v3 RENAME TO heads;
CREATE UNIQUE INDEX heads_base ON heads (base_hash);
CREATE INDEX heads_sort_key ON heads (partition_id, sort_key_ct);
"""

MIGRATIONS: dict[int, str] = {2: FEEDS_SCHEMA, 3: HEADS_CLUSTERED}
