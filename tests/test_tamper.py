"""Tampering with blob files on disk is detected: reads raise IntegrityError,
never return wrong data. So is a version forged by a member without write access."""

from __future__ import annotations

import dataclasses
import io
import random
from pathlib import Path

import pytest
from blobfiles import StoredBlob

from fsobj import crypto
from fsobj.errors import AccessDeniedError, FormatError, IntegrityError
from fsobj.store import Store, Version

MiB = 1024 * 1024

# byte offsets inside the blob envelope head (docs/format.md, "Blob envelope")
HEAD_FIELDS = {
    "magic": [0, 1, 2, 3],
    "version": [4],
    "kind": [5],
    "alg": [6],
    "epoch": [7, 8, 9, 10],
    "nonce": [11, 16, 22],
}
# An envelope version/alg this fsobj does not know is documented as a FormatError
# ("a blob of an unknown format version"); either way the read must fail.
FORMAT_FIELDS = {"version", "alg"}


def rand_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def flip(path: StoredBlob, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))


@dataclasses.dataclass
class Obj:
    store: Store
    pid: bytes
    v1: Version
    v2: Version
    d1: bytes
    d2: bytes

    def chunk_paths(self, v: Version) -> list[StoredBlob]:
        keys = self.store.partition(self.pid).epoch_keys(v.header.epoch)
        return [StoredBlob(self.store.root, c.id) for c in self.store.payloads.chunk_refs(v.header, keys)]

    def header_path(self, v: Version) -> StoredBlob:
        return StoredBlob(self.store.root, v.hash)

    def read_latest(self) -> bytes:
        return self.store.read_bytes(self.store.get(self.pid, "k"))


@pytest.fixture
def obj(store: Store) -> Obj:
    """Object "k" with two versions of ~5 MiB each (several chunks of at most 4 MiB, none shared)."""
    pid = store.create_partition("docs").id
    d1, d2 = rand_bytes(5 * MiB, 1), rand_bytes(5 * MiB + 5, 2)
    v1 = store.put(pid, "k", d1)
    v2 = store.put(pid, "k", d2)
    o = Obj(store, pid, v1, v2, d1, d2)
    assert len(o.chunk_paths(v2)) >= 2
    assert not set(o.chunk_paths(v1)) & set(o.chunk_paths(v2))
    assert o.read_latest() == d2
    return o


def _expect_integrity(read, field: str | None = None) -> None:
    allowed = (IntegrityError, FormatError) if field in FORMAT_FIELDS else IntegrityError
    with pytest.raises(allowed):
        read()


# ---------------------------------------------------------------- chunk blobs


@pytest.mark.parametrize("field", [*HEAD_FIELDS, "ciphertext-start", "middle", "tag-last-byte"])
def test_flip_byte_in_chunk_blob(obj: Obj, field: str) -> None:
    path = obj.chunk_paths(obj.v2)[1]
    size = len(path.read_bytes())
    positions = (
        HEAD_FIELDS.get(field)
        or {
            "ciphertext-start": [crypto.ENVELOPE_HEAD_LEN],
            "middle": [size // 2],
            "tag-last-byte": [size - 1],
        }[field]
    )
    original = path.read_bytes()
    for pos in positions:
        flip(path, pos)
        _expect_integrity(obj.read_latest, field)
        path.write_bytes(original)
    assert obj.read_latest() == obj.d2


@pytest.mark.parametrize("new_size", [0, 10, crypto.ENVELOPE_HEAD_LEN + crypto.TAG_LEN, "half", "minus-one"])
def test_truncated_chunk_blob(obj: Obj, new_size) -> None:
    path = obj.chunk_paths(obj.v2)[0]
    data = path.read_bytes()
    n = {"half": len(data) // 2, "minus-one": len(data) - 1}.get(new_size, new_size)
    path.write_bytes(data[:n])
    _expect_integrity(obj.read_latest)


def test_byte_appended_to_chunk_blob(obj: Obj) -> None:
    path = obj.chunk_paths(obj.v2)[-1]
    path.write_bytes(path.read_bytes() + b"\x00")
    _expect_integrity(obj.read_latest)


def test_two_chunk_blobs_swapped(obj: Obj) -> None:
    a, b = obj.chunk_paths(obj.v2)[:2]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    _expect_integrity(obj.read_latest)


def test_chunk_blob_replaced_by_chunk_of_older_version(obj: Obj) -> None:
    obj.chunk_paths(obj.v2)[0].write_bytes(obj.chunk_paths(obj.v1)[0].read_bytes())
    _expect_integrity(obj.read_latest)
    assert obj.store.read_bytes(obj.store.get_hash(obj.v1.hash, exact=True)) == obj.d1


def test_missing_chunk_blob(obj: Obj) -> None:
    obj.chunk_paths(obj.v2)[1].unlink()
    _expect_integrity(obj.read_latest)


def test_tampered_chunk_list_node(store: Store) -> None:
    pid = store.create_partition("big").id
    data = rand_bytes(112 * MiB, 5)
    v = store.put(pid, "big", data)
    assert v.header.tree is not None
    node = StoredBlob(store.root, v.header.tree[0])
    original = node.read_bytes()
    for pos in (crypto.ENVELOPE_HEAD_LEN + 3, len(original) // 2, len(original) - 1):
        flip(node, pos)
        with pytest.raises(IntegrityError):
            store.read_bytes(store.get(pid, "big"))
        node.write_bytes(original)
    node.write_bytes(original[:-1])
    with pytest.raises(IntegrityError):
        store.read_bytes(store.get(pid, "big"))
    node.write_bytes(original)
    assert store.read_bytes(store.get(pid, "big")) == data


def test_tampered_block_list_node(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged block-list node (format 3, over 64 blocks) is a fault for verify; reads
    do not need it; an edit of that version is written whole instead of trusting it."""
    from fsobj import fsck
    from fsobj.store.payload import Splice

    pid = store.create_partition("blocks").id
    data = bytearray(rand_bytes(66 * MiB, 6))
    v = store.put(pid, "big", bytes(data))
    assert v.header.block_tree is not None
    node = StoredBlob(store.root, v.header.block_tree[0])
    flip(node, len(node.read_bytes()) // 2)
    faults = fsck.verify(store).faults
    assert len(faults) == 1 and v.hash.hex() in faults[0] and "failed authentication" in faults[0]
    assert store.read_bytes(v) == data
    data[40 * MiB : 40 * MiB + 10] = b"0123456789"
    edited = bytes(data)
    v2 = store.update(v, source=Splice(v.header, len(edited), (40 * MiB, 40 * MiB + 10), lambda a: [edited[a:]]))
    assert "is written whole" in caplog.text
    assert store.read_bytes(v2) == edited
    whole = store.payloads.write(io.BytesIO(edited), store.partition(pid).current_keys(), pid)
    assert v2.header.checksum == whole.checksum and v2.header.block_tree == whole.block_tree


# ---------------------------------------------------------------- header blobs


def test_header_replay_of_older_version(obj: Obj) -> None:
    """The newest header blob file replaced by the older version's header blob."""
    obj.header_path(obj.v2).write_bytes(obj.header_path(obj.v1).read_bytes())
    with pytest.raises(IntegrityError):
        obj.store.get(obj.pid, "k")
    with pytest.raises(IntegrityError):
        obj.store.get_hash(obj.v2.hash)
    with pytest.raises(IntegrityError):
        obj.read_latest()


def test_header_replaced_by_header_of_another_object(obj: Obj) -> None:
    other = obj.store.put(obj.pid, "other", b"other payload")
    obj.header_path(obj.v2).write_bytes(obj.header_path(other).read_bytes())
    with pytest.raises(IntegrityError):
        obj.read_latest()


def test_missing_header_blob(obj: Obj) -> None:
    obj.header_path(obj.v2).unlink()
    with pytest.raises(IntegrityError):
        obj.read_latest()


@pytest.mark.parametrize("field", list(HEAD_FIELDS))
def test_flip_byte_in_header_blob_envelope_head(obj: Obj, field: str) -> None:
    path = obj.header_path(obj.v2)
    original = path.read_bytes()
    for pos in HEAD_FIELDS[field]:
        flip(path, pos)
        _expect_integrity(obj.read_latest, field)
        path.write_bytes(original)
    assert obj.read_latest() == obj.d2


def test_flip_any_byte_in_header_blob_body(obj: Obj) -> None:
    """Every single-bit change in the sealed header (ciphertext and tag) is caught."""
    path = obj.header_path(obj.v2)
    original = path.read_bytes()
    wrong: dict[int, str] = {}
    for pos in range(crypto.ENVELOPE_HEAD_LEN, len(original)):
        flip(path, pos)
        try:
            obj.store.get(obj.pid, "k")
            wrong[pos] = "no error"
        except IntegrityError:
            pass
        except Exception as e:
            wrong[pos] = type(e).__name__
        path.write_bytes(original)
    assert wrong == {}
    assert obj.read_latest() == obj.d2


def test_truncated_header_blob(obj: Obj) -> None:
    path = obj.header_path(obj.v2)
    data = path.read_bytes()
    for n in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:n])
        with pytest.raises(IntegrityError):
            obj.store.get(obj.pid, "k")
    path.write_bytes(data + b"\x00")
    with pytest.raises(IntegrityError):
        obj.store.get(obj.pid, "k")


# ---------------------------------------------------------------- forged versions


def test_version_forged_by_read_only_member_is_rejected(store_dir: Path, store: Store, bob, open_store) -> None:
    pid = store.create_partition("docs").id
    v1 = store.put(pid, "k", b"genuine")
    store.grant(pid, bob.public, "read")
    as_bob = open_store(store_dir, bob)
    with pytest.raises(AccessDeniedError):
        as_bob.put(pid, "k", b"evil")

    # bob bypasses the API's role check: same keys, same record, role forced to "write"
    # (planted in his store's view cache, which commit() consults)
    view = as_bob.partition(pid)
    forged_view = dataclasses.replace(view, role="write")
    as_bob._views[pid] = forged_view
    prev = as_bob.load_version(v1.hash, view)
    forged = as_bob.commit(forged_view, prev, source=b"evil")
    planted = as_bob.commit(forged_view, None, sort_key="planted", source=b"evil")
    assert forged.header.author == bob.user_id
    # the index took them (it is only a cache), but no reader accepts them
    assert store.list(pid)[0].head_hash == forged.hash

    owner = open_store(store_dir, store.identity)
    for s in (store, owner):
        with pytest.raises(IntegrityError):
            s.get(pid, "k")
        with pytest.raises(IntegrityError):
            s.get_hash(forged.hash)
        with pytest.raises(IntegrityError):
            s.get(pid, "planted")
        with pytest.raises(IntegrityError):
            s.get_hash(planted.hash)
        assert s.read_bytes(s.load_version(v1.hash)) == b"genuine"
    with pytest.raises(IntegrityError):
        as_bob.get(pid, "k")
