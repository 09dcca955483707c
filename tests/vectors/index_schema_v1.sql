-- fsobj index schema 1, frozen: the migration test upgrades it.
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
CREATE TABLE IF NOT EXISTS heads (
    base_hash    BLOB PRIMARY KEY,
    partition_id BLOB NOT NULL,
    head_hash    BLOB NOT NULL,
    sort_key_ct  BLOB NOT NULL,
    epoch        INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    tombstone    INTEGER NOT NULL,
    length       INTEGER NOT NULL,
    created_us   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS heads_sort_key ON heads (partition_id, sort_key_ct);

-- Which payload blobs (chunks and chunk-list nodes) each version references.
-- A blob with no row here and no version/partition row naming it is garbage.
CREATE TABLE IF NOT EXISTS refs (
    blob_id      BLOB NOT NULL,
    version_hash BLOB NOT NULL,
    PRIMARY KEY (blob_id, version_hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_version ON refs (version_hash);
