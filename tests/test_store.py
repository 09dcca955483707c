"""The store API against real SQLite and blob files: round trips, versions,
delete/purge, deduplication, ordering, access control and a full disk."""

from __future__ import annotations

import ctypes
import errno
import io
import itertools
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blobfiles
import pytest
from blobfiles import stored
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pagecache import evict, resident

import fsobj.blobs.local as local_blobs
import fsobj.store as store_mod
from fsobj import crypto
from fsobj.errors import (
    AccessDeniedError,
    DeletedError,
    FormatError,
    IntegrityError,
    NoSpaceError,
    NotFoundError,
    UsageError,
)
from fsobj.model.header import MAX_INLINE_CHUNKS
from fsobj.store import Store

MiB = 1024 * 1024

_names = itertools.count()


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def fresh_partition(store: Store) -> bytes:
    return store.create_partition(f"p{next(_names)}").id


def chunk_ids(store: Store, version) -> list[bytes]:
    keys = store.partition(version.header.partition).epoch_keys(version.header.epoch)
    return [c.id for c in store.payloads.chunk_refs(version.header, keys)]


def version_count(store: Store) -> int:
    return store.index.stats()["versions"]


sort_keys = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40
)

payloads = st.one_of(
    st.binary(max_size=4096),
    st.builds(rand_bytes, st.integers(0, 3 * MiB), st.integers(0, 2**32)),
    # highly repetitive data: max-size chunks, identical chunks inside one payload
    st.builds(lambda n, b: bytes([b]) * n, st.integers(0, 3 * MiB), st.integers(0, 255)),
)


@pytest.fixture(scope="module")
def big_data() -> bytes:
    """112 MiB of random data: well over MAX_INLINE_CHUNKS chunks (chunker set 2: ~1.25 MiB mean),
    so a chunk-list tree."""
    return rand_bytes(112 * MiB, 40)


# ---------------------------------------------------------------- round trips


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=sort_keys, data=payloads)
def test_put_get_roundtrip(store: Store, key: str, data: bytes) -> None:
    pid = fresh_partition(store)
    v = store.put(pid, key, data)
    assert v.sort_key == key
    assert v.length == len(data)
    assert v.header.seq == 1 and v.base_hash == v.hash
    got = store.get(pid, key)
    assert got.hash == v.hash
    assert got.sort_key == key
    assert store.read_bytes(got) == data
    assert store.read_bytes(store.get_hash(v.hash)) == data
    [entry] = store.list(pid)
    assert (entry.sort_key, entry.head_hash, entry.length) == (key, v.hash, len(data))


def test_roundtrip_survives_reopen(store_dir: Path, alice, open_store) -> None:
    s1 = open_store(store_dir, alice)
    pid = s1.create_partition("docs").id
    data = rand_bytes(3 * MiB + 17, 1)
    v = s1.put(pid, "päth/ünïcode/😀", data)
    s1.close()
    s2 = open_store(store_dir, alice)
    got = s2.get("docs", "päth/ünïcode/😀")
    assert got.hash == v.hash
    assert s2.read_bytes(got) == data


def test_empty_payload(store: Store) -> None:
    pid = fresh_partition(store)
    v = store.put(pid, "empty", b"")
    assert v.length == 0
    assert v.header.chunks == ()
    assert store.read_bytes(store.get(pid, "empty")) == b""


def test_large_payload_uses_chunk_list_tree(store_dir: Path, alice, open_store, big_data: bytes) -> None:
    store = open_store(store_dir, alice)
    pid = fresh_partition(store)
    v = store.put(pid, "big", big_data)
    assert v.header.chunks is None
    assert v.header.tree is not None
    root, depth = v.header.tree
    assert depth >= 1 and root in stored(store_dir)
    assert len(chunk_ids(store, v)) > MAX_INLINE_CHUNKS
    assert store.read_bytes(store.get(pid, "big")) == big_data
    # and from a separately opened store
    other = open_store(store_dir, alice)
    assert other.read_bytes(other.get(pid, "big")) == big_data


def test_small_edit_in_big_payload_stores_few_new_blobs(store_dir: Path, store: Store, big_data: bytes) -> None:
    pid = fresh_partition(store)
    v1 = store.put(pid, "big", big_data)
    before = stored(store_dir)
    edited = bytearray(big_data)
    mid = len(edited) // 2
    edited[mid : mid + 16] = b"0123456789abcdef"
    v2 = store.put(pid, "big", bytes(edited))
    new = stored(store_dir) - before
    # the chunk(s) around the edit, the chunk-list root, the header: nothing else
    assert 2 <= len(new) <= 5, len(new)
    assert v2.hash in new
    assert store.read_bytes(store.get(pid, "big")) == bytes(edited)
    assert store.read_bytes(store.get_hash(v1.hash, exact=True)) == big_data
    shared = set(chunk_ids(store, v1)) & set(chunk_ids(store, v2))
    assert len(shared) >= len(chunk_ids(store, v1)) - 3


# ---------------------------------------------------------------- versions, hashes, log


def test_get_by_absolute_hash(store: Store) -> None:
    pid = fresh_partition(store)
    v1 = store.put(pid, "k", b"one")
    v2 = store.put(pid, "k", b"two")
    v3 = store.put(pid, "k", b"three")
    assert v2.header.prev == v1.hash and v3.header.prev == v2.hash
    assert v1.base_hash == v2.base_hash == v3.base_hash == v1.hash
    for v, data in ((v1, b"one"), (v2, b"two"), (v3, b"three")):
        got = store.get_hash(v.hash, exact=True)
        assert got.hash == v.hash
        assert store.read_bytes(got) == data
    # a later version's absoluteHash names that version, exact or not
    assert store.get_hash(v2.hash).hash == v2.hash


def test_get_by_base_hash_gives_latest(store: Store) -> None:
    """A baseHash (= the first version's absoluteHash) gives the series' latest version."""
    pid = fresh_partition(store)
    v1 = store.put(pid, "k", b"one")
    store.put(pid, "k", b"two")
    v3 = store.put(pid, "k", b"three")
    got = store.get_hash(v1.base_hash)
    assert got.hash == v3.hash
    assert store.read_bytes(got) == b"three"
    t = store.delete(pid, "k")
    assert store.get_hash(v1.base_hash).hash == t.hash  # the latest may be a tombstone


def test_get_hash_unknown(store: Store) -> None:
    fresh_partition(store)
    with pytest.raises(NotFoundError):
        store.get_hash(os.urandom(32))


def test_log_is_oldest_first_and_includes_tombstones(store: Store) -> None:
    pid = fresh_partition(store)
    v1 = store.put(pid, "k", b"one")
    v2 = store.put(pid, "k", b"two")
    t = store.delete(pid, "k")
    assert t.tombstone and t.length == 0 and t.header.prev == v2.hash
    log = store.log(pid, "k")
    assert [v.hash for v in log] == [v1.hash, v2.hash, t.hash]
    assert [v.header.seq for v in log] == [1, 2, 3]
    assert [v.tombstone for v in log] == [False, False, True]


def test_delete_then_get_raises_but_history_readable(store: Store) -> None:
    pid = fresh_partition(store)
    v1 = store.put(pid, "k", b"one")
    v2 = store.put(pid, "k", b"two")
    store.put(pid, "other", b"x")
    t = store.delete(pid, "k")
    with pytest.raises(DeletedError) as ei:
        store.get(pid, "k")
    assert ei.value.tombstone == t.hash
    assert store.read_bytes(store.get_hash(v1.hash, exact=True)) == b"one"
    assert store.read_bytes(store.get_hash(v2.hash)) == b"two"
    assert [store.read_bytes(v) for v in store.log(pid, "k")[:2]] == [b"one", b"two"]
    assert [e.sort_key for e in store.list(pid)] == ["other"]
    listed = store.list(pid, include_deleted=True)
    assert [(e.sort_key, e.tombstone) for e in listed] == [("k", True), ("other", False)]
    # a put after a delete starts a new object
    v4 = store.put(pid, "k", b"again")
    assert v4.header.seq == 1 and v4.base_hash != v1.base_hash
    assert store.read_bytes(store.get(pid, "k")) == b"again"


def test_delete_of_deleted_object_raises_deleted_error(store: Store) -> None:
    """Store.delete: an object whose latest version is a tombstone is 'already deleted'."""
    pid = fresh_partition(store)
    store.put(pid, "k", b"one")
    t = store.delete(pid, "k")
    with pytest.raises(DeletedError) as ei:
        store.delete(pid, "k")
    assert ei.value.tombstone == t.hash
    assert [v.hash for v in store.log(pid, "k")][-1] == t.hash


def test_delete_missing(store: Store) -> None:
    pid = fresh_partition(store)
    with pytest.raises(NotFoundError):
        store.delete(pid, "nope")
    with pytest.raises(NotFoundError):
        store.get(pid, "nope")


def test_user_headers_kept_across_versions(store: Store) -> None:
    pid = fresh_partition(store)
    store.put(pid, "k", b"1", headers=[("content-type", "text/plain")])
    v2 = store.put(pid, "k", b"2")
    assert v2.header.headers == (("content-type", "text/plain"),)
    v3 = store.put(pid, "k", b"3", headers=[])
    assert v3.header.headers == ()


def test_invalid_sort_keys_rejected(store: Store) -> None:
    pid = fresh_partition(store)
    for bad in ("", "a\x00b", "x" * 4097, "\ud800"):
        with pytest.raises(UsageError):
            store.put(pid, bad, b"data")
    assert store.list(pid) == []


# ---------------------------------------------------------------- dedup and purge


def test_identical_content_stores_no_new_chunks(store_dir: Path, store: Store) -> None:
    pid = fresh_partition(store)
    data = rand_bytes(9 * MiB, 7)  # at least 3 chunks of at most 4 MiB
    v1 = store.put(pid, "a", data)
    assert len(chunk_ids(store, v1)) >= 2
    before = stored(store_dir)
    v2 = store.put(pid, "b", data)  # another object, same content
    assert stored(store_dir) - before == {v2.hash}
    before = stored(store_dir)
    v3 = store.put(pid, "a", data)  # a new version, same content
    assert stored(store_dir) - before == {v3.hash}
    assert chunk_ids(store, v1) == chunk_ids(store, v2) == chunk_ids(store, v3)
    assert store.read_bytes(store.get(pid, "b")) == data


def test_a_chunk_blob_left_short_is_written_again_by_the_next_write_of_its_bytes(store_dir: Path, store: Store) -> None:
    """A chunk file cut short (a power cut after its rename reached the disk and before
    its bytes did) is not taken for the chunk when the same bytes are written again: the
    writer rewrites it, and the first object reads back too."""
    pid = fresh_partition(store)
    data = rand_bytes(3 * MiB, 11)
    v1 = store.put(pid, "a", data)
    first = chunk_ids(store, v1)[0]
    assert blobfiles.is_file(store_dir, first)
    whole = blobfiles.read(store_dir, first)
    blobfiles.write(store_dir, first, whole[: len(whole) // 2])
    with pytest.raises(IntegrityError):
        store.read_bytes(store.get(pid, "a"))
    v2 = store.put(pid, "b", data)
    assert chunk_ids(store, v2)[0] == first
    assert len(blobfiles.read(store_dir, first)) == len(whole)  # sealed again (a new nonce)
    assert store.read_bytes(store.get(pid, "a")) == store.read_bytes(store.get(pid, "b")) == data


def test_purge_frees_unreferenced_chunks_and_keeps_shared_ones(store_dir: Path, store: Store) -> None:
    pid = fresh_partition(store)
    shared = rand_bytes(3 * MiB, 1)
    unique = rand_bytes(3 * MiB, 2)
    va1 = store.put(pid, "a", shared)
    va2 = store.put(pid, "a", unique)
    vb = store.put(pid, "b", shared)
    shared_ids = set(chunk_ids(store, va1))
    unique_ids = set(chunk_ids(store, va2))
    assert shared_ids and unique_ids and not shared_ids & unique_ids
    before = stored(store_dir)

    removed, freed = store.purge(pid, "a")

    assert removed == 2
    assert freed == len(unique_ids)
    gone = before - stored(store_dir)
    assert gone == {va1.hash, va2.hash, *unique_ids}
    assert shared_ids <= stored(store_dir)
    assert store.read_bytes(store.get(pid, "b")) == shared
    assert store.get(pid, "b").hash == vb.hash
    with pytest.raises(NotFoundError):
        store.get(pid, "a")
    with pytest.raises(NotFoundError):
        store.get_hash(va1.hash)
    with pytest.raises(NotFoundError):
        store.get_hash(va2.hash, exact=True)
    assert [e.sort_key for e in store.list(pid, include_deleted=True)] == ["b"]


def test_purge_deleted_object(store_dir: Path, store: Store) -> None:
    pid = fresh_partition(store)
    before = stored(store_dir)
    store.put(pid, "a", rand_bytes(MiB, 3))
    store.delete(pid, "a")
    assert store.purge(pid, "a")[0] == 2
    assert stored(store_dir) == before
    assert store.list(pid, include_deleted=True) == []


def test_removing_a_partition_purges_its_series_in_batches_and_a_chunk_lives_while_referenced(
    store_dir: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``remove_partition`` purges every series in batches of ``PURGE_BATCH`` (two
    transactions and one sync each): a chunk that a series of a later batch shares
    stays until that batch, and in the end nothing of the partition is left."""
    monkeypatch.setattr(store_mod, "PURGE_BATCH", 2)
    other = fresh_partition(store)
    kept = store.put(other, "kept", rand_bytes(3 * MiB, 40))
    before = stored(store_dir)
    pid = fresh_partition(store)
    shared = rand_bytes(3 * MiB, 41)
    firsts = [store.put(pid, "s0", shared)]
    firsts += [store.put(pid, f"s{i}", rand_bytes(2 * MiB, 41 + i)) for i in range(1, 4)]
    firsts.append(store.put(pid, "s4", shared))  # same chunks as s0, in the last batch
    for i in range(5):
        store.delete(pid, f"s{i}")
    shared_ids = set(chunk_ids(store, firsts[0]))
    assert shared_ids and shared_ids == set(chunk_ids(store, firsts[4]))
    every_chunk = {c for v in firsts for c in chunk_ids(store, v)}

    removed, freed = store.purge_series(firsts[0].base_hash, firsts[1].base_hash)  # one batch
    assert removed == 4 and freed == len(chunk_ids(store, firsts[1]))
    assert shared_ids <= stored(store_dir)  # s4 still references them
    assert store.read_bytes(store.get_hash(firsts[4].hash, exact=True)) == shared

    assert store.remove_partition(pid) == 6  # s2, s3, s4: a version and a tombstone each
    assert stored(store_dir) == before  # no header, tombstone, chunk or record blob left
    assert not every_chunk & stored(store_dir)
    assert store.index.versions_in(pid) == [] and store.index.heads_in(pid) == []
    assert store.read_bytes(store.get(other, "kept")) == store.read_bytes(kept)


# ---------------------------------------------------------------- ordering


def test_list_order_is_bytewise_utf8(store: Store) -> None:
    pid = fresh_partition(store)
    keys = ["b", "a", "ä", "Z", "a/b", "a\u00ff", "\U0001f600", "\uffff", "\U00010000", "A", "a b", "ab", "~"]
    for k in keys:
        store.put(pid, k, k.encode())
    listed = [e.sort_key for e in store.list(pid)]
    assert listed == sorted(keys, key=lambda k: k.encode("utf-8"))
    # U+FFFF (EF BF BF) sorts before U+10000 (F0 90 80 80) bytewise, unlike UTF-16 order
    assert listed.index("\uffff") < listed.index("\U00010000")


def test_ties_are_broken_by_absolute_hash(store: Store) -> None:
    pid = fresh_partition(store)
    store.put(pid, "a", b"first")
    vs = [store.put(pid, "same", f"{i}".encode(), new=True) for i in range(4)]
    store.put(pid, "z", b"last")
    listed = store.list(pid)
    assert [e.sort_key for e in listed] == ["a", "same", "same", "same", "same", "z"]
    assert [e.head_hash for e in listed[1:5]] == sorted(v.hash for v in vs)
    assert len({v.base_hash for v in vs}) == 4
    with pytest.raises(UsageError):  # ambiguous: name one by hash
        store.get(pid, "same")
    for i, v in enumerate(vs):
        assert store.read_bytes(store.get_hash(v.hash)) == f"{i}".encode()


def test_prefix_after_limit(store: Store) -> None:
    pid = fresh_partition(store)
    keys = ["a", "a/1", "a/2", "a/3", "b/1", "b/2", "c"]
    for k in keys:
        store.put(pid, k, b"x")

    def names(**kw) -> list[str]:
        return [e.sort_key for e in store.list(pid, **kw)]

    assert names(prefix="a/") == ["a/1", "a/2", "a/3"]
    assert names(prefix="b") == ["b/1", "b/2"]
    assert names(prefix="zz") == []
    assert names(after="a/1") == ["a/2", "a/3", "b/1", "b/2", "c"]
    assert names(after="a/") == ["a/1", "a/2", "a/3", "b/1", "b/2", "c"]
    assert names(after="c") == []
    assert names(limit=2) == ["a", "a/1"]
    assert names(prefix="a/", after="a/1", limit=1) == ["a/2"]
    # paging with after + limit visits every key once
    seen: list[str] = []
    after = None
    while page := names(after=after, limit=3):
        seen += page
        after = page[-1]
    assert seen == keys


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(st.one_of(sort_keys, st.sampled_from(["a", "ab", "b", "é", "\U0001f600"])), max_size=12),
    data=st.data(),
)
def test_list_matches_sorted_model(store: Store, keys: list[str], data) -> None:
    pid = fresh_partition(store)
    model: list[tuple[str, bytes]] = []
    for k in keys:
        tie = any(mk == k for mk, _ in model)
        v = store.put(pid, k, k.encode(), new=tie)  # repeated key: a second live object (a tie)
        model.append((k, v.hash))
    model.sort(key=lambda e: (e[0].encode("utf-8"), e[1]))
    assert [(e.sort_key, e.head_hash) for e in store.list(pid)] == model

    prefix = data.draw(st.one_of(st.just(""), st.sampled_from(keys or ["a"]).map(lambda k: k[:1]), sort_keys))
    after = data.draw(st.one_of(st.none(), st.sampled_from(keys or ["a"]), sort_keys))
    limit = data.draw(st.one_of(st.none(), st.integers(1, 13)))
    expected = [
        e for e in model if e[0].startswith(prefix) and (after is None or e[0].encode("utf-8") > after.encode("utf-8"))
    ]
    if limit is not None:
        expected = expected[:limit]
    got = store.list(pid, prefix=prefix, after=after, limit=limit)
    assert [(e.sort_key, e.head_hash) for e in got] == expected


# ---------------------------------------------------------------- access control


def test_no_grant_cannot_read(store_dir: Path, store: Store, bob, open_store) -> None:
    pid = store.create_partition("docs").id
    store.put(pid, "secret", b"s3cret")
    as_bob = open_store(store_dir, bob)
    with pytest.raises((AccessDeniedError, NotFoundError)):
        as_bob.get(pid, "secret")
    with pytest.raises((AccessDeniedError, NotFoundError)):
        as_bob.get("docs", "secret")
    with pytest.raises((AccessDeniedError, NotFoundError)):
        as_bob.list(pid)
    with pytest.raises((AccessDeniedError, NotFoundError)):
        as_bob.put(pid, "mine", b"x")
    assert as_bob.partitions() == []


def test_read_grant_reads_but_cannot_write(store_dir: Path, store: Store, bob, open_store) -> None:
    pid = store.create_partition("docs").id
    v = store.put(pid, "k", b"hello")
    store.grant(pid, bob.public, "read")
    as_bob = open_store(store_dir, bob)
    assert as_bob.partition(pid).role == "read"
    assert as_bob.read_bytes(as_bob.get(pid, "k")) == b"hello"
    assert as_bob.read_bytes(as_bob.get("docs", "k")) == b"hello"
    assert [e.sort_key for e in as_bob.list(pid)] == ["k"]
    with pytest.raises(AccessDeniedError):
        as_bob.put(pid, "k", b"changed")
    with pytest.raises(AccessDeniedError):
        as_bob.put(pid, "new", b"x")
    with pytest.raises(AccessDeniedError):
        as_bob.delete(pid, "k")
    with pytest.raises(AccessDeniedError):
        as_bob.purge(pid, "k")
    with pytest.raises(AccessDeniedError):
        as_bob.grant(pid, bob.public, "write")
    assert [x.hash for x in store.log(pid, "k")] == [v.hash]


def test_write_grant_can_write(store_dir: Path, store: Store, bob, open_store) -> None:
    pid = store.create_partition("docs").id
    store.put(pid, "k", b"v1")
    store.grant(pid, bob.public, "write")
    as_bob = open_store(store_dir, bob)
    vb = as_bob.put(pid, "k", b"v2 by bob")
    as_bob.put(pid, "bobs", b"new object")
    assert vb.header.author == bob.user_id
    got = store.get(pid, "k")
    assert got.hash == vb.hash
    assert store.read_bytes(got) == b"v2 by bob"
    assert store.read_bytes(store.get(pid, "bobs")) == b"new object"
    with pytest.raises(AccessDeniedError):  # only the owner purges
        as_bob.purge(pid, "k")


def test_revoke_rotates_epoch(store_dir: Path, store: Store, bob, open_store) -> None:
    pid = store.create_partition("docs").id
    old = store.put(pid, "old", b"before revocation")
    store.grant(pid, bob.public, "write")
    as_bob = open_store(store_dir, bob)
    assert as_bob.read_bytes(as_bob.get(pid, "old")) == b"before revocation"
    bob_keys = dict(as_bob.partition(pid).keys)  # what bob could have kept
    assert set(bob_keys) == {0}

    view = store.revoke(pid, "bob")
    assert view.record.current_epoch == 1
    assert bob.user_id not in view.record.epochs[1]
    assert view.role == "owner"
    new = store.put(pid, "new", b"after revocation")
    old2 = store.put(pid, "old", b"old, updated after revocation")
    assert new.header.epoch == 1 and old2.header.epoch == 1

    as_bob_again = open_store(store_dir, bob)
    for key in ("new", "old"):
        with pytest.raises((AccessDeniedError, NotFoundError)):
            as_bob_again.get(pid, key)
    with pytest.raises((AccessDeniedError, NotFoundError)):
        as_bob_again.put(pid, "x", b"x")
    # even with the epoch-0 keys bob had, nothing written after revocation opens
    for v in (new, old2):
        header_blob = store.blobs.get(v.hash)
        with pytest.raises(IntegrityError):
            crypto.open_blob(header_blob, crypto.KIND_HEADER, bob_keys[0], pid, v.hash)
        for cid in chunk_ids(store, v):
            with pytest.raises(IntegrityError):
                crypto.open_blob(store.blobs.get(cid), crypto.KIND_CHUNK, bob_keys[0], pid, cid)

    # the owner reads everything, old epoch and new
    owner = open_store(store_dir, store.identity)
    assert owner.read_bytes(owner.get_hash(old.hash, exact=True)) == b"before revocation"
    assert owner.read_bytes(owner.get(pid, "old")) == b"old, updated after revocation"
    assert owner.read_bytes(owner.get(pid, "new")) == b"after revocation"
    assert [v.hash for v in owner.log(pid, "old")] == [old.hash, old2.hash]


# ---------------------------------------------------------------- a full disk


class _FullDisk:
    """Stands in for ``os`` inside fsobj.blobs.local: writing file data
    (``os.write``/``os.writev``) fails with ENOSPC once ``budget`` writes have
    succeeded (the disk stays full). Everything else is the real ``os``."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.failures = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        return getattr(os, name)

    def _spend(self) -> None:
        with self._lock:
            if self.budget <= 0:
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.budget -= 1

    def write(self, fd: int, data) -> int:
        self._spend()
        return os.write(fd, data)

    def writev(self, fd: int, buffers) -> int:
        self._spend()
        return os.writev(fd, buffers)


@pytest.mark.parametrize(
    "budget, new_payload",
    [
        pytest.param(0, "fresh", id="first-chunk"),
        pytest.param(2, "fresh", id="partway-through-chunks"),
    ],
)
def test_no_space_left(store_dir: Path, store: Store, monkeypatch, budget: int, new_payload: str) -> None:
    pid = fresh_partition(store)
    old = rand_bytes(9 * MiB, 11)  # at least 3 chunks of at most 4 MiB
    v1 = store.put(pid, "k", old)
    versions = version_count(store)
    files = stored(store_dir)
    data = rand_bytes(9 * MiB, 12) if new_payload == "fresh" else old

    disk = _FullDisk(budget)
    monkeypatch.setattr(local_blobs, "os", disk)
    with pytest.raises(NoSpaceError):
        store.put(pid, "k", data)
    with pytest.raises(NoSpaceError):
        store.put(pid, "another", data)
    assert disk.failures >= 2

    # the failed versions are not visible; the previous one still reads
    assert version_count(store) == versions
    assert store.get(pid, "k").hash == v1.hash
    assert [v.hash for v in store.log(pid, "k")] == [v1.hash]
    assert store.read_bytes(store.get(pid, "k")) == old
    with pytest.raises(NotFoundError):
        store.get(pid, "another")
    assert [e.sort_key for e in store.list(pid)] == ["k"]
    assert list((store_dir / "tmp").iterdir()) == []
    assert v1.hash in stored(store_dir) and files <= stored(store_dir)

    # space is back: writing works again
    monkeypatch.undo()
    v2 = store.put(pid, "k", data)
    assert v2.header.prev == v1.hash
    assert store.read_bytes(store.get(pid, "k")) == data


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB file system (tmpfs, root only), unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC


def test_no_space_left_for_a_header_row(small_disk: Path, alice) -> None:
    """A full disk when only a header is written (the payload deduplicated): SQLite's
    SQLITE_FULL from blobs/small.sqlite is NoSpaceError, nothing is committed, and the
    store works again once there is space."""
    Store.init(small_disk / "store")
    with Store.open(small_disk / "store", alice) as store:
        pid = fresh_partition(store)
        data = rand_bytes(3 * MiB, 11)
        store.put(pid, "k", data)
        versions = version_count(store)
        _fill(small_disk / "filler")
        for _ in range(2):
            with pytest.raises(NoSpaceError):
                for _ in range(1000):  # a row may fit in a page with room left: go on until one does not
                    store.put(pid, "k", data, expect=store.get(pid, "k").hash)
                    versions += 1
        head = store.get(pid, "k")
        assert version_count(store) == versions and head.header.seq == versions
        assert store.read_bytes(head) == data
        (small_disk / "filler").unlink()
        v = store.put(pid, "k", data)
        assert v.header.prev == head.hash and store.read_bytes(store.get(pid, "k")) == data
        assert version_count(store) == versions + 1


def test_a_version_1_store_is_upgraded_and_keeps_its_blob_files(
    store_dir: Path, alice, open_store, monkeypatch
) -> None:
    """Format version 1 kept every blob as a file. Opening such a store creates
    blobs/small.sqlite and sets the marker to 2; its files stay readable, new small
    blobs become rows, and purge, gc and verify see both."""
    import json

    from fsobj import fsck

    with monkeypatch.context() as m:
        m.setattr(local_blobs, "SMALL_BLOB_MAX", -1)  # every blob a file, as version 1 wrote them
        s = open_store(store_dir, alice)
        pid = fresh_partition(s)
        old = s.put(pid, "old", b"written by version 1")
        gone = s.put(pid, "gone", rand_bytes(MiB, 5))
        s.close()
    (store_dir / "blobs" / "small.sqlite").unlink()
    marker = store_dir / "fsobj-store.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "version": 1}))
    files = stored(store_dir)
    assert old.hash in files

    s = open_store(store_dir, alice)
    assert json.loads(marker.read_text())["version"] == 2
    assert (store_dir / "blobs" / "small.sqlite").is_file()
    assert s.read_bytes(s.get(pid, "old")) == b"written by version 1"
    new = s.put(pid, "old", b"written by version 2", expect=old.hash)
    assert new.hash not in files and new.hash in stored(store_dir)
    assert (store_dir / "blobs" / new.hash.hex()[:2] / new.hash.hex()).exists() is False
    s.purge(pid, "gone")
    assert gone.hash not in stored(store_dir)
    report = fsck.verify(s)
    assert report.faults == [] and report.versions == 2
    assert [v.hash for v in s.log(pid, "old")] == [old.hash, new.hash]


class _FailingSyncfs:
    """Stands in for libc inside fsobj.blobs.local: ``syncfs`` fails with
    ENOSPC, as it does when write-back of data already accepted fails."""

    def __init__(self) -> None:
        self.calls = 0

    def sync_file_range(self, fd: int, offset: object, nbytes: object, flags: int) -> int:
        return 0  # early write-back is only a hint

    def syncfs(self, fd: int) -> int:
        self.calls += 1
        ctypes.set_errno(errno.ENOSPC)
        return -1


def test_failed_syncfs_is_not_ignored(store_dir: Path, store: Store, monkeypatch) -> None:
    """Payload blobs are written without fsync and made durable by one syncfs
    before the header names them: if that sync fails, the version must not commit."""
    pid = fresh_partition(store)
    old = rand_bytes(MiB, 21)
    v1 = store.put(pid, "k", old)
    versions = version_count(store)
    libc = _FailingSyncfs()
    monkeypatch.setattr(local_blobs, "_LIBC", libc)
    with pytest.raises((NoSpaceError, OSError)):
        store.put(pid, "k", rand_bytes(MiB, 22))
    assert libc.calls >= 1
    assert version_count(store) == versions
    assert store.get(pid, "k").hash == v1.hash
    assert store.read_bytes(store.get(pid, "k")) == old


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(0, 7 * 1024 * 1024),
    cuts=st.lists(st.integers(0, 7 * 1024 * 1024), max_size=12),
    segment=st.sampled_from([0, 1, 300_000, 3 * 1024 * 1024]),
    seed=st.integers(0, 2**32 - 1),
    number=st.sampled_from([1, 2]),
)
def test_chunking_pieces_cut_like_the_whole(
    monkeypatch: pytest.MonkeyPatch, length: int, cuts: list[int], segment: int, seed: int, number: int
) -> None:
    """The cuts of written pieces do not depend on how the bytes were split into pieces,
    nor on how much is gathered before cutting (``SEGMENT``), in either parameter set."""
    from fsobj import chunking

    params = chunking.PARAMS[number]
    data = random.Random(seed).randbytes(length)
    monkeypatch.setattr(chunking, "SEGMENT", segment)
    bounds = sorted({0, length, *(c for c in cuts if c < length)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    got = list(chunking.split_pieces(pieces, seed, params))
    assert [bytes(c) for c in got] == [bytes(c) for c in chunking.split_bytes(data, seed, params)]
    assert all(c.readonly for c in got)


SPLICE_BASE = 12 * MiB + 777_777


@pytest.fixture(scope="module")
def splice_base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, crypto.Identity, bytes]:
    """A store holding one payload of 12.7 MiB (about 25 chunks; its last 1 MiB block
    is not full), edited by the splice tests."""
    root = tmp_path_factory.mktemp("splice") / "store"
    Store.init(root)
    owner = crypto.Identity.generate("editor")
    with Store.open(root, owner) as s:
        pid = s.create_partition("edits").id
        s.put(pid, "base", rand_bytes(SPLICE_BASE, 7))
    return root, owner, pid


edits = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 13 * MiB), st.integers(1, 300_000)),
        st.tuples(st.just("truncate"), st.integers(0, 13 * MiB), st.just(0)),
    ),
    min_size=0,
    max_size=3,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=edits, seed=st.integers(0, 2**32 - 1))
@example(ops=[("write", 6 * MiB, 4096)], seed=1)  # a small edit in the middle
@example(ops=[("write", SPLICE_BASE, 1000)], seed=2)  # an append: the base's last chunk was cut by its end
@example(ops=[("write", SPLICE_BASE - 300_000, 10)], seed=6)  # the last, short block changes
@example(ops=[("write", 12 * MiB - 300_000, 10)], seed=7)  # the last block is kept after the re-cut
@example(ops=[("truncate", 12 * MiB - 5000, 0)], seed=3)
@example(ops=[("truncate", 5 * MiB, 0), ("truncate", 12 * MiB, 0)], seed=4)  # a hole where bytes were
@example(ops=[], seed=5)
def test_a_spliced_edit_is_the_payload_a_whole_write_gives(
    splice_base: tuple[Path, crypto.Identity, bytes], ops: list[tuple[str, int, int]], seed: int
) -> None:
    """Writes and truncates applied to a committed payload, committed as a ``Splice``:
    the same chunk list, block list and checksum as writing the whole new content, new
    blobs only for the chunks around the edits, and no chunk of the base read back."""
    from fsobj.store.payload import Splice

    root, owner, pid = splice_base
    rng = random.Random(seed)
    with Store.open(root, owner) as s:
        base = s.get(pid, "base")
        new = bytearray(s.read_bytes(base))
        changed: list[tuple[int, int]] = []  # what may differ from the base, at the same offsets
        for op, off, n in ops:
            end = off + n if op == "write" else off
            if end > len(new):
                changed.append((len(new), end))  # an extension (zeros up to a write)
                new.extend(bytes(end - len(new)))
            if op == "write":
                new[off:end] = rng.randbytes(n)
                changed.append((off, end))
            else:
                del new[off:]
        data = bytes(new)
        changed = [(a, min(b, len(data))) for a, b in changed if a < len(data)]
        span = (min(a for a, _ in changed), max(b for _, b in changed)) if changed else None
        view = s.partition(pid)
        before = stored(root)
        cut: list[int] = []  # chunks cut and identified again (the real _store, counted)
        real_store = s.payloads._store
        s.payloads._store = lambda kind, *a: cut.append(kind) or real_store(kind, *a)  # type: ignore[method-assign]
        base_chunks = set(chunk_ids(s, base))
        read_back: list[bytes] = []  # base chunks fetched from disk (the real get, counted)
        real_get = s.blobs.get
        s.blobs.get = lambda i: (read_back.append(i) if i in base_chunks else None) or real_get(i)  # type: ignore[method-assign]
        v = s.commit(
            view, None, sort_key=f"edit{seed}", source=Splice(base.header, len(data), span, lambda a: [data[a:]])
        )
        added = stored(root) - before
        del s.payloads._store, s.blobs.get
        assert read_back == []  # kept chunks are neither read nor hashed: their blocks' hashes are kept
        if span is not None and span[1] - span[0] <= 4096 and len(data) == base.header.length:
            assert cut.count(crypto.KIND_CHUNK) <= 3  # a small edit cuts a chunk or two again, not all
        keys = view.current_keys()
        whole = s.payloads.write(io.BytesIO(data), keys, pid)
        assert (v.header.length, v.header.checksum) == (len(data), whole.checksum)
        assert v.header.format == 3 and v.header.blocks == whole.blocks
        assert chunk_ids(s, v) == whole.refs[: len(chunk_ids(s, v))] and len(whole.refs) == len(chunk_ids(s, v))
        assert s.read_bytes(v) == data
        fresh = [c for c in chunk_ids(s, v) if c not in base_chunks]
        # new blobs: the chunks that differ from the base's, and the header
        assert len(added) <= len(fresh) + 1


def test_a_splice_of_a_payload_with_a_block_tree(store_dir: Path, store: Store) -> None:
    """Over 64 blocks the block list is a tree of block-list nodes: an edit in the
    middle keeps it but for the changed leaf, and fsck checks it."""
    from fsobj import fsck
    from fsobj.model.checksum import BLOCK_SIZE
    from fsobj.store.payload import Splice

    pid = fresh_partition(store)
    data = bytearray(rand_bytes(70 * MiB, 11))
    base = store.put(pid, "big", bytes(data))
    assert base.header.format == 3 and base.header.blocks is None and base.header.block_tree is not None
    data[35 * MiB + 5 : 35 * MiB + 4101] = rand_bytes(4096, 12)
    edited = bytes(data)
    span = (35 * MiB + 5, 35 * MiB + 4101)
    v = store.update(base, source=Splice(base.header, len(edited), span, lambda a: [edited[a:]]))
    keys = store.partition(pid).current_keys()
    whole = store.payloads.write(io.BytesIO(edited), keys, pid)
    assert (v.header.checksum, v.header.block_tree) == (whole.checksum, whole.block_tree)
    blocks = store.payloads.expand_blocks(v.header, keys)[0]
    old = store.payloads.expand_blocks(base.header, keys)[0]
    assert [i for i, (a, b) in enumerate(zip(old, blocks, strict=True)) if a != b] == [35]
    assert len(blocks) == 70 and all(b.length == BLOCK_SIZE for b in blocks)
    assert store.read_bytes(v) == edited
    assert not fsck.verify(store).faults
    # a block-list node that does not hash to the checksum is caught on the next edit
    tampered = v.header.with_(checksum=bytes(32))
    with pytest.raises(IntegrityError):
        store.payloads.expand_blocks(tampered, keys)


def test_a_version_of_header_format_1_is_read_kept_and_edited(store_dir: Path, store: Store) -> None:
    """Versions written before format 3 (checksum = plain BLAKE3, no block list) stay
    readable and verifiable; a metadata change keeps their format, an edit writes the
    whole content again in format 3."""
    import blake3

    from fsobj import fsck
    from fsobj.store.payload import Splice

    pid = fresh_partition(store)
    view = store.partition(pid)
    data = rand_bytes(3 * MiB, 21)
    old = store.payloads.write(io.BytesIO(data), view.current_keys(), pid)
    old.checksum, old.blocks, old.block_tree = blake3.blake3(data).digest(), None, None  # what format 1 wrote
    v1 = store.commit(view, None, sort_key="old", source=old)
    assert v1.header.format == 1 and v1.summary()["checksum_type"] == "blake3"
    assert store.read_bytes(store.get(pid, "old")) == data and not fsck.verify(store).faults
    v2 = store.update(v1, headers=[("k", "v")])
    assert (v2.header.format, v2.header.checksum) == (1, v1.header.checksum)
    edited = data[:MiB] + b"x" + data[MiB + 1 :]
    v3 = store.update(v2, source=Splice(v2.header, len(edited), (MiB, MiB + 1), lambda a: [edited[a:]]))
    assert v3.header.format == 3 and v3.summary()["checksum_type"] == "blake3-blocks-1m"
    assert store.read_bytes(v3) == edited and not fsck.verify(store).faults
    forged = v1.header.with_(checksum=blake3.blake3(edited).digest())
    assert fsck._checksum(forged, [data]) != forged.checksum


def test_a_small_payload_lives_in_its_header_blob(store_dir: Path, store: Store) -> None:
    """Up to 4096 bytes: one blob per version (the header carries the payload), read
    back, verified, kept by a metadata-only version; one byte more takes a chunk blob."""
    from fsobj import fsck

    pid = fresh_partition(store)
    data = rand_bytes(4096, 3)
    before = stored(store_dir)
    v = store.put(pid, "small", data)
    assert stored(store_dir) - before == {v.hash}
    assert v.header.data == data and v.header.chunks == () and chunk_ids(store, v) == []
    assert store.read_bytes(store.get(pid, "small")) == data
    v2 = store.update(v, headers=[("k", "v")])
    assert v2.header.data == data and store.read_bytes(v2) == data
    before = stored(store_dir)
    v3 = store.put(pid, "bigger", data + b"!")
    assert len(stored(store_dir) - before) == 2 and v3.header.data is None
    report = fsck.verify(store)
    assert not report.faults and report.versions >= 3


# ---------------------------------------------------------------- read-ahead hints


def test_a_sequential_read_asks_the_disk_for_the_chunks_after_those_it_decrypts(store: Store) -> None:
    """``iter_payload`` hints the blob ``PREFETCH`` chunks beyond each one it submits, so
    the kernel reads it into the page cache before a thread asks for it."""
    from fsobj.store.payload import PREFETCH, WINDOW

    pid = fresh_partition(store)
    v = store.put(pid, "big", rand_bytes(48 * MiB, 7))
    paths = blobfiles.file_paths(store.root, chunk_ids(store, v))  # only the last chunk can be a row
    assert len(paths) > WINDOW + PREFETCH
    for p in paths:
        evict(p)
    if resident(paths[-1]):
        pytest.skip("this file system keeps the blobs in memory (no page cache to test)")
    # Taking the first chunk submits chunks 0 .. WINDOW (one more once the first is
    # done), which hint the blobs PREFETCH further on; nothing beyond is read.
    hinted = paths[WINDOW + PREFETCH]
    untouched = paths[WINDOW + PREFETCH + 1 :]
    reader = store.open_payload(v)
    first = next(reader)
    assert len(first) > 0
    for _ in range(200):
        if resident(hinted):
            break
        time.sleep(0.01)
    assert resident(hinted), "the hinted blob was not read ahead"
    assert not any(resident(p) for p in untouched), "blobs beyond the hints were read"
    reader.close()
    assert store.read_bytes(v) == rand_bytes(48 * MiB, 7)
    store.blobs.prefetch(b"\0" * 32)  # an absent blob: a hint never fails


def test_the_allocator_keeps_chunk_buffers() -> None:
    """glibc takes the setting (the mount daemon and the commit helper make it at start)."""
    from fsobj.store.payload import keep_chunk_buffers

    assert keep_chunk_buffers() is True


_ARENAS = """
import ctypes, os, re, sys, tempfile, threading
from fsobj.store.payload import keep_chunk_buffers
if sys.argv[1] == "keep":
    assert keep_chunk_buffers()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
together = threading.Barrier(8)
def work():
    buf = bytearray(1 << 20)  # above pymalloc's sizes: from the thread's arena
    together.wait()
    del buf
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
fd, path = tempfile.mkstemp()
os.close(fd)
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, f)
libc.fclose(f)
print(len(re.findall(r'<heap nr="[0-9]+">', open(path).read())))
os.unlink(path)
"""


def test_threads_share_the_allocators_arenas() -> None:
    """8 threads allocating at once: glibc gives each its own arena (a heap of freed
    buffers that only that thread reuses) unless ``keep_chunk_buffers`` caps them."""
    import subprocess
    import sys

    from fsobj.store.payload import ARENAS

    def arenas(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    assert arenas("default") >= 8
    assert arenas("keep") == ARENAS


_SEGMENT_FAULTS = """
import ctypes, resource, sys
from fsobj import chunking
from fsobj.store.payload import keep_chunk_buffers
assert keep_chunk_buffers()
if sys.argv[1] != "keep":  # an mmap threshold below the segments (8 MiB was ours before)
    ctypes.CDLL(None).mallopt(-3, int(sys.argv[1]))
pieces = [bytes([i]) * chunking.MiB for i in range(64)]
def split():
    for c in chunking.split_pieces(pieces, 7, chunking.DEFAULT):
        pass
split()  # the heap grows once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    split()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_the_chunkers_segments_are_reused_not_faulted_in_again() -> None:
    """The chunker joins 1 MiB writes into segments of about 13 MiB. Under
    ``keep_chunk_buffers`` they come from the heap and are reused; above glibc's
    mmap threshold each one was a fresh mapping, faulted in page by page (here
    5,120 faults for 256 MiB split, in folios of up to 64 KiB; none kept). Each
    count is a fresh interpreter's own."""
    import subprocess
    import sys

    def faults(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _SEGMENT_FAULTS, mode], capture_output=True, text=True, check=True
        ).stdout
        return int(out)

    below = faults(str(8 * MiB))
    assert below >= 20, below  # at least one fault per fresh segment: the measure sees them
    kept = faults("keep")
    assert kept * 10 < below, (kept, below)


# ---------------------------------------------------------------- chunker parameter sets


def _store_with_chunking(root: Path, ident: crypto.Identity, number: object) -> Store:
    """A new store whose marker then names ``number`` (``None``: no set, as stores made before set 2)."""
    import json

    from fsobj.store import MARKER

    Store.init(root)
    marker = json.loads((root / MARKER).read_text())
    assert marker["chunking"] == 2  # what ``fsobj init`` writes
    if number is None:
        del marker["chunking"]
    else:
        marker["chunking"] = number
    (root / MARKER).write_text(json.dumps(marker))
    return Store.open(root, ident)


@pytest.mark.parametrize("number", [2, None])
def test_a_store_cuts_with_its_own_chunker_set_and_edits_stay_cheap(tmp_path: Path, alice, number) -> None:
    """New stores cut with set 2; a store whose marker names no set (made before set 2)
    keeps set 1, so an edit's new cuts meet the base's again and only the chunks around
    the edit are stored."""
    from fsobj import chunking
    from fsobj.store.payload import Splice

    params = chunking.PARAMS[number or 1]
    data = rand_bytes(24 * MiB, 81)
    with _store_with_chunking(tmp_path / "s", alice, number) as store:
        assert store.payloads.params is params
        pid = fresh_partition(store)
        v1 = store.put(pid, "big", data)
        keys = store.partition(pid).epoch_keys(v1.header.epoch)
        lengths = [r.length for r in store.payloads.chunk_refs(v1.header, keys)]
        assert lengths == [len(c) for c in chunking.split_bytes(data, keys.cdc_seed, params)]
        assert all(params.min <= n <= params.max for n in lengths[:-1])
        before = stored(tmp_path / "s")
        edited = bytearray(data)
        mid = len(data) // 2
        edited[mid : mid + 4096] = rand_bytes(4096, 82)
        new_bytes = bytes(edited)
        v2 = store.update(v1, source=Splice(v1.header, len(new_bytes), (mid, mid + 4096), lambda a: [new_bytes[a:]]))
        new = stored(tmp_path / "s") - before
        # the chunk(s) around the edit, the block(s) list, the header: nothing else
        assert 2 <= len(new) <= 6, len(new)
        assert store.read_bytes(store.get(pid, "big")) == new_bytes
        assert len(set(chunk_ids(store, v1)) - set(chunk_ids(store, v2))) <= 2
        assert v2.header.prev == v1.hash


@pytest.mark.parametrize("number", [3, 0, "2", True, 2.0])
def test_a_store_naming_an_unknown_chunker_set_is_refused(tmp_path: Path, alice, number) -> None:
    with pytest.raises(FormatError, match=r"chunker parameter set .* is not supported"):
        _store_with_chunking(tmp_path / "s", alice, number)
