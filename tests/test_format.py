"""The on-disk format (docs/format.md) against the test vectors in tests/vectors/v1.json.

Every vector is checked against the code; the chunker is also checked against
the reference algorithm written out in the specification.
"""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import blake3
import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cbor import same

from fsobj import chunking, crypto, identity
from fsobj.errors import FormatError, IdentityError, IntegrityError
from fsobj.model import cbor
from fsobj.model.checksum import (
    BLOCK_SIZE,
    CHECKSUM_CONTEXT,
    BlockHasher,
    blocks_of,
    check_blocks,
    checksum_of,
)
from fsobj.model.header import (
    BLOCK_LIST_TYPE,
    CHUNK_LIST_TYPE,
    FORMAT_VERSION,
    ChunkRef,
    VersionHeader,
    decode_chunk_list,
    decode_header_blob,
    encode_chunk_list,
    encode_header_blob,
    verify_signatures,
)
from fsobj.model.partition import PartitionRecord, id_object, partition_id
from fsobj.store import MARKER, check_store

ROOT = Path(__file__).resolve().parent.parent
V = json.loads((ROOT / "tests" / "vectors" / "v1.json").read_text())


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def untag(v: Any) -> Any:
    """JSON vector value -> CBOR value (``{"$bytes": hex}`` -> bytes)."""
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return h(v["$bytes"])
        return {k: untag(x) for k, x in v.items()}
    if isinstance(v, list):
        return [untag(x) for x in v]
    return v


def ident(name: str) -> crypto.Identity:
    d = V["identities"][name]
    return crypto.Identity.from_private_bytes(d["name"], h(d["ed25519_seed"]) + h(d["x25519_private"]))


def keys() -> crypto.EpochKeys:
    return crypto.EpochKeys.from_epoch_key(V["epoch_keys"]["epoch"], h(V["epoch_keys"]["epoch_key"]))


PID = h(V["partition_id"]["partition_id"])


# ---------------------------------------------------------------- constants and the document


def test_constants_match_the_spec():
    assert V["format_version"] == 1
    assert crypto.MAGIC == b"FSOB" and crypto.ENVELOPE_VERSION == 1
    assert (crypto.ALG_NONE, crypto.ALG_AES256GCM) == (0, 1)
    assert (crypto.KIND_CHUNK, crypto.KIND_HEADER, crypto.KIND_CHUNK_LIST, crypto.KIND_PARTITION) == (1, 2, 3, 4)
    assert crypto.ENVELOPE_HEAD_LEN == 23 and crypto.NONCE_LEN == 12 and crypto.TAG_LEN == 16
    assert crypto.ENVELOPE_OVERHEAD == 39
    assert (crypto.SCRYPT_N, crypto.SCRYPT_R, crypto.SCRYPT_P) == (2**15, 8, 1)


def test_document_quotes_every_context_string_and_prefix():
    doc = (ROOT / "docs" / "format.md").read_text()
    for ctx in (
        crypto.CTX_BLOB_KEY,
        crypto.CTX_CHUNK_ID,
        crypto.CTX_CHUNK_LIST_ID,
        crypto.CTX_SORT_KEY,
        crypto.CTX_CDC_SEED,
        crypto.CTX_USER_ID,
        crypto.CTX_WRAP,
        crypto.CTX_FEED,
    ):
        assert f'"{ctx}"' in doc, ctx
    for prefix in (crypto.SIG_PARTITION, crypto.SIG_SESSION, crypto.SIG_INTEGRITY, crypto.SIG_KX):
        text = prefix[:-1].decode("ascii")
        assert f'"{text}" 00' in doc, prefix
    assert "tests/vectors/v1.json" in doc


# ---------------------------------------------------------------- canonical CBOR


@pytest.mark.parametrize("case", V["cbor"]["valid"], ids=lambda c: c["hex"][:24])
def test_cbor_valid(case):
    value = untag(case["value"])
    assert cbor.encode(value).hex() == case["hex"]
    assert same(cbor.decode(h(case["hex"])), value)


@pytest.mark.parametrize("case", V["cbor"]["invalid"], ids=lambda c: c["why"])
def test_cbor_invalid(case):
    with pytest.raises(FormatError):
        cbor.decode(h(case["hex"]))


# ---------------------------------------------------------------- ids and keys


@pytest.mark.parametrize("name", sorted(V["identities"]))
def test_identity_keys_and_user_id(name):
    d = V["identities"][name]
    me = ident(name)
    assert me.public.sign_pub.hex() == d["sign_pub"]
    assert me.public.kx_pub.hex() == d["kx_pub"]
    assert me.public.kx_sig.hex() == d["kx_sig"]
    assert crypto.user_id_for(h(d["sign_pub"])).hex() == d["user_id"] == me.user_id.hex()
    me.public.check()
    assert crypto.derive(crypto.CTX_USER_ID, h(d["sign_pub"])).hex() == d["user_id"]


def test_signatures_match_an_independent_ed25519_and_refuse_anything_else():
    """Signing runs on libsodium; RFC 8032 signatures are deterministic, so they must be the
    bytes ``cryptography`` (OpenSSL) makes for the same seed, and verification must refuse a
    changed signature, message or key, and signatures or keys of the wrong length."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for i in range(8):
        seed = crypto.derive("fsobj test: ed25519 seed", bytes([i]), 32)
        ours = crypto.SigningKey(seed)
        theirs = Ed25519PrivateKey.from_private_bytes(seed)
        msg = bytes(range(i * 7))
        sig = ours.sign(msg)
        assert sig == theirs.sign(msg)
        assert len(sig) == 64 and len(ours.public) == 32
        theirs.public_key().verify(sig, msg)
        crypto.verify_signature(ours.public, sig, msg, "test")
        bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
        other = crypto.SigningKey(bytes(32)).public
        for pub, s, m in [
            (ours.public, bad_sig, msg),
            (ours.public, sig, msg + b"x"),
            (other, sig, msg),
            (ours.public, sig[:63], msg),
            (ours.public, sig + b"\0", msg),
            (ours.public[:31], sig, msg),
        ]:
            with pytest.raises(IntegrityError, match="bad signature on test"):
                crypto.verify_signature(pub, s, m, "test")
    with pytest.raises(ValueError):
        crypto.SigningKey(bytes(31))


def test_partition_id():
    p = V["partition_id"]
    ido = id_object(p["name"], h(p["owner"]))
    assert same(ido, untag(p["id_object"]))
    assert cbor.encode(ido).hex() == p["id_object_cbor"]
    assert partition_id(p["name"], h(p["owner"])).hex() == p["partition_id"]
    assert crypto.hash_bytes(h(p["id_object_cbor"])).hex() == p["partition_id"]
    assert p["owner"] == V["identities"]["alice"]["user_id"]


def test_epoch_keys():
    e = V["epoch_keys"]
    k = keys()
    assert k.epoch == e["epoch"]
    assert k.blob_key.hex() == e["blob_key"]
    assert k.chunk_id_key.hex() == e["chunk_id_key"]
    assert k.chunk_list_id_key.hex() == e["chunk_list_id_key"] != e["chunk_id_key"]
    assert crypto.derive(crypto.CTX_CHUNK_LIST_ID, h(e["epoch_key"])).hex() == e["chunk_list_id_key"]
    assert k.sort_key_key.hex() == e["sort_key_key"] and len(k.sort_key_key) == 64
    assert k.cdc_seed == e["cdc_seed"] and 0 <= k.cdc_seed < 2**32


def test_chunk_id():
    c = V["chunk"]
    assert keys().chunk_id(h(c["plaintext"])).hex() == c["chunk_id"]
    assert keys().payload_blob_id(crypto.KIND_CHUNK, h(c["plaintext"])).hex() == c["chunk_id"]
    with pytest.raises(ValueError):
        keys().payload_blob_id(crypto.KIND_HEADER, h(c["plaintext"]))


def test_sealed_sort_key():
    s = V["sort_key"]
    k = keys()
    assert k.seal_sort_key(h(s["partition_id"]), s["sort_key"]).hex() == s["sealed"]
    assert k.open_sort_key(h(s["partition_id"]), h(s["sealed"])) == s["sort_key"]
    with pytest.raises(IntegrityError):
        k.open_sort_key(bytes(32), h(s["sealed"]))


# ---------------------------------------------------------------- blob envelope


def test_chunk_envelope_layout_and_open():
    c = V["chunk"]
    blob, nonce, pt = h(c["blob"]), h(c["nonce"]), h(c["plaintext"])
    assert len(blob) == len(pt) + 23 + 16
    assert blob[:4] == b"FSOB" and blob[4:7] == bytes([1, c["kind"], 1])
    assert struct.unpack(">I", blob[7:11])[0] == c["epoch"]
    assert blob[11:23] == nonce
    assert h(c["associated_data"]) == blob[:23] + PID + h(c["chunk_id"])
    assert crypto.envelope_epoch(blob, h(c["chunk_id"])) == (1, 0)
    assert crypto.open_blob(blob, crypto.KIND_CHUNK, keys(), PID, h(c["chunk_id"])) == pt


def _positions() -> list[int]:
    n = len(h(V["chunk"]["blob"]))
    return [*range(23), 23, n // 2, n - 17, n - 16, n - 1]


def _open_into(blob: bytes, kind: int, k: crypto.EpochKeys, pid: bytes, blob_id: bytes) -> bytes:
    """``open_blob_into`` as the read arena calls it: a view into a bigger buffer."""
    out = bytearray(len(blob) + 100)
    view = memoryview(out)[50 : 50 + len(blob) - crypto.ENVELOPE_OVERHEAD]
    crypto.open_blob_into(memoryview(blob), kind, k, pid, blob_id, view)
    assert out[:50] == bytes(50) and out[50 + len(view) :] == bytes(len(out) - 50 - len(view))
    return bytes(view)


def test_open_blob_into_gives_the_vector_plaintext_and_wants_its_exact_size():
    c = V["chunk"]
    blob, cid = h(c["blob"]), h(c["chunk_id"])
    assert _open_into(blob, crypto.KIND_CHUNK, keys(), PID, cid) == h(c["plaintext"])
    for size in (len(blob) - crypto.ENVELOPE_OVERHEAD - 1, len(blob) - crypto.ENVELOPE_OVERHEAD + 1):
        with pytest.raises(IntegrityError):
            crypto.open_blob_into(memoryview(blob), crypto.KIND_CHUNK, keys(), PID, cid, memoryview(bytearray(size)))


@pytest.mark.parametrize("into", [False, True], ids=["open_blob", "open_blob_into"])
@pytest.mark.parametrize("pos", _positions())
def test_envelope_with_a_flipped_byte_is_refused(pos, into):
    c = V["chunk"]
    blob = bytearray(h(c["blob"]))
    blob[pos] ^= 0x01
    # the version (offset 4) and alg (offset 6) bytes name an unknown format
    expected = FormatError if pos in (4, 6) else IntegrityError
    with pytest.raises(expected):
        (_open_into if into else crypto.open_blob)(bytes(blob), crypto.KIND_CHUNK, keys(), PID, h(c["chunk_id"]))


def test_read_chunk_into_reads_rows_and_files_and_refuses_what_is_not_the_chunk(tmp_path):
    """The arena's chunk read: from a row of small.sqlite and from a file, into a
    view; a missing blob, a longer blob or one under another id is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from fsobj.blobs.local import SMALL_BLOB_MAX, LocalBlobStore
    from fsobj.model.header import ChunkRef
    from fsobj.store.payload import PayloadIO

    blobs = LocalBlobStore.create(tmp_path)
    k = keys()
    with ThreadPoolExecutor(1) as pool:
        io_ = PayloadIO(blobs, pool, chunking.DEFAULT)
        for size in (1000, SMALL_BLOB_MAX * 3):
            plain = bytes(range(256)) * (size // 256)
            cid = k.chunk_id(plain)
            ref = ChunkRef(cid, len(plain))
            with pytest.raises(IntegrityError, match="missing"):
                io_.read_chunk_into(ref, k, PID, memoryview(bytearray(len(plain))))
            sealed = crypto.seal_blob(crypto.KIND_CHUNK, k, PID, cid, plain)
            blobs.put(cid, sealed + b"x")  # one byte too many
            with pytest.raises(IntegrityError, match="wrong length"):
                io_.read_chunk_into(ref, k, PID, memoryview(bytearray(len(plain))))
            blobs.put(cid, sealed, replace=True)
            out = bytearray(len(plain) + 10)
            assert bytes(io_.read_chunk_into(ref, k, PID, memoryview(out)[5 : 5 + len(plain)])) == plain
            assert out[5 : 5 + len(plain)] == plain
            other = k.chunk_id(plain + b"!")  # sealed for its id, but not the hash of its bytes
            blobs.put(other, crypto.seal_blob(crypto.KIND_CHUNK, k, PID, other, plain))
            with pytest.raises(IntegrityError, match="does not match its id"):
                io_.read_chunk_into(ChunkRef(other, len(plain)), k, PID, memoryview(bytearray(len(plain))))


def test_envelope_bound_to_partition_id_kind_and_key():
    c = V["chunk"]
    blob, cid = h(c["blob"]), h(c["chunk_id"])
    with pytest.raises(IntegrityError):
        crypto.open_blob(blob, crypto.KIND_CHUNK, keys(), bytes(32), cid)
    with pytest.raises(IntegrityError):
        crypto.open_blob(blob, crypto.KIND_CHUNK, keys(), PID, bytes(32))
    with pytest.raises(IntegrityError):
        crypto.open_blob(blob, crypto.KIND_HEADER, keys(), PID, cid)
    with pytest.raises(IntegrityError):
        crypto.open_blob(blob, crypto.KIND_CHUNK, crypto.EpochKeys.from_epoch_key(0, bytes(32)), PID, cid)
    with pytest.raises(IntegrityError):
        crypto.open_blob(blob[:38], crypto.KIND_CHUNK, keys(), PID, cid)
    future = bytearray(blob)
    future[4] = 2  # envelope version 2
    with pytest.raises(FormatError):
        crypto.open_blob(bytes(future), crypto.KIND_CHUNK, keys(), PID, cid)


def test_chunk_list_node():
    n = V["chunk_list"]
    entries = decode_chunk_list(h(n["plaintext"]))
    assert [[e.id.hex(), e.length] for e in entries] == n["entries"]
    assert encode_chunk_list(entries).hex() == n["plaintext"]
    plain = h(n["plaintext"])
    # nodes have their own id key: the same bytes as a chunk would have another id
    assert keys().payload_blob_id(crypto.KIND_CHUNK_LIST, plain).hex() == n["blob_id"]
    assert blake3.blake3(plain, key=h(V["epoch_keys"]["chunk_list_id_key"])).hexdigest() == n["blob_id"]
    assert keys().chunk_id(plain).hex() == n["chunk_id_of_same_bytes"] != n["blob_id"]
    assert h(n["associated_data"]) == h(n["blob"])[:23] + PID + h(n["blob_id"])
    assert crypto.open_blob(h(n["blob"]), crypto.KIND_CHUNK_LIST, keys(), PID, h(n["blob_id"])).hex() == n["plaintext"]
    with pytest.raises(IntegrityError):  # bound to its id: not openable under the chunk id of its bytes
        crypto.open_blob(h(n["blob"]), crypto.KIND_CHUNK_LIST, keys(), PID, h(n["chunk_id_of_same_bytes"]))


def test_payload_blob_ids_are_checked_by_kind(tmp_path):
    """A node stored under the chunk id of its bytes (the pre-fix id) is refused."""
    from concurrent.futures import ThreadPoolExecutor

    from fsobj.blobs.local import LocalBlobStore
    from fsobj.store.payload import PayloadIO

    n = V["chunk_list"]
    blobs = LocalBlobStore.create(tmp_path)
    with ThreadPoolExecutor(1) as pool:
        io_ = PayloadIO(blobs, pool, chunking.DEFAULT)
        blobs.put(h(n["blob_id"]), h(n["blob"]))
        assert io_._open(crypto.KIND_CHUNK_LIST, keys(), PID, h(n["blob_id"])).hex() == n["plaintext"]
        wrong_id = h(n["chunk_id_of_same_bytes"])
        wrong = crypto.seal_blob(crypto.KIND_CHUNK_LIST, keys(), PID, wrong_id, h(n["plaintext"]))
        blobs.put(wrong_id, wrong)
        with pytest.raises(IntegrityError):
            io_._open(crypto.KIND_CHUNK_LIST, keys(), PID, wrong_id)


# ---------------------------------------------------------------- partition record


def test_partition_record():
    r = V["partition_record"]
    alice, bob = ident("alice"), ident("bob")
    blob = h(r["blob"])
    assert crypto.hash_bytes(blob).hex() == r["record_id"]
    assert blob[:11] == b"FSOB" + bytes([1, 4, 0]) + bytes(4)
    assert blob[11:].hex() == r["plaintext"]
    outer = cbor.decode(h(r["plaintext"]))
    assert same(outer["body"], untag(r["body"]))
    assert cbor.encode(outer["body"]).hex() == r["body_cbor"]
    assert outer["sig"].hex() == r["sig"]
    crypto.verify_signature(alice.public.sign_pub, h(r["sig"]), crypto.SIG_PARTITION + h(r["body_cbor"]), "record")

    rec = PartitionRecord.from_blob(blob, h(r["record_id"]))
    assert rec.partition == PID and rec.seq == 2 and rec.current_epoch == 0
    assert rec.owner == alice.public
    assert rec.role_of(bob.user_id) == "write" and rec.role_of(alice.user_id) == "owner"
    assert rec.writers_at(1) == {alice.user_id}
    assert rec.writers_at(2) == {alice.user_id, bob.user_id}
    assert rec.public_of(bob.user_id) == bob.public
    assert rec.signed_blob(alice) == blob  # Ed25519 is deterministic
    assert rec.body() == untag(r["body"])

    epoch_key = h(V["epoch_keys"]["epoch_key"])
    for w in r["wraps"]:
        who = alice if w["recipient"] == alice.user_id.hex() else bob
        assert rec.epochs[w["epoch"]][who.user_id].hex() == w["wrapped"]
        assert who.unwrap(PID, w["epoch"], h(w["wrapped"])) == epoch_key
        assert h(w["kek_input"]) == (
            h(w["shared_secret"]) + h(w["ephemeral_public"]) + who.public.kx_pub + PID + w["epoch"].to_bytes(4, "big")
        )
        assert crypto.derive(crypto.CTX_WRAP, h(w["kek_input"])).hex() == w["kek"]
    with pytest.raises(IntegrityError):
        bob.unwrap(PID, 0, rec.epochs[0][alice.user_id])

    ns = r["name_sealed"]
    assert rec.name_sealed.hex() == ns["blob"]
    plain = crypto.open_blob(rec.name_sealed, crypto.KIND_PARTITION, keys(), PID, b"")
    assert plain.hex() == ns["plaintext"] == V["partition_id"]["id_object_cbor"]


def test_partition_record_tampering_is_refused():
    r = V["partition_record"]
    blob = bytearray(h(r["blob"]))
    with pytest.raises(IntegrityError):  # id no longer matches
        PartitionRecord.from_blob(bytes(blob[:-1]) + b"\x00", h(r["record_id"]))
    sig_at = bytes(blob).index(h(r["sig"]))
    blob[sig_at] ^= 0x01
    with pytest.raises(IntegrityError):  # id recomputed, signature fails
        PartitionRecord.from_blob(bytes(blob), crypto.hash_bytes(bytes(blob)))


# ---------------------------------------------------------------- version headers


@pytest.mark.parametrize("i", range(len(V["versions"])))
def test_version_header(i):
    v = V["versions"][i]
    body = untag(v["body"])
    header = VersionHeader.from_body(cbor.decode(h(v["body_cbor"])))
    assert same(header.body(), body)
    assert header.encode_body().hex() == v["body_cbor"]
    assert header.absolute_hash().hex() == v["absolute_hash"]
    assert crypto.hash_bytes(h(v["body_cbor"])).hex() == v["absolute_hash"]
    assert header.base_hash(h(v["absolute_hash"])).hex() == v["base_hash"]

    author = ident(v["author_name"])
    assert header.author == author.user_id
    s = body["session"]
    assert crypto.session_message(author.user_id, s["key"], s["expires"]).hex() == v["session_message"]
    assert (crypto.SIG_INTEGRITY + h(v["absolute_hash"])).hex() == v["integrity_message"]
    assert encode_header_blob(header, h(v["integrity"])).hex() == v["plaintext"]

    blob = h(v["blob"])
    assert blob[:11] == b"FSOB" + bytes([1, 2, 1]) + bytes(4) and blob[11:23].hex() == v["nonce"]
    plain = crypto.open_blob(blob, crypto.KIND_HEADER, keys(), PID, h(v["absolute_hash"]))
    assert plain.hex() == v["plaintext"]
    got, integrity = decode_header_blob(plain, h(v["absolute_hash"]))
    assert got == header and integrity.hex() == v["integrity"]
    verify_signatures(got, h(v["absolute_hash"]), integrity, author.public.sign_pub)
    rec = PartitionRecord.from_blob(h(V["partition_record"]["blob"]), h(V["partition_record"]["record_id"]))
    assert author.user_id in rec.writers_at(header.acl)
    with pytest.raises(IntegrityError):
        decode_header_blob(plain, bytes(32))
    with pytest.raises(IntegrityError):
        other = "bob" if v["author_name"] == "alice" else "alice"
        verify_signatures(got, h(v["absolute_hash"]), integrity, ident(other).public.sign_pub)
    with pytest.raises(IntegrityError):
        verify_signatures(got, bytes(32), integrity, author.public.sign_pub)


def test_series_links():
    v1, v2 = (untag(v["body"]) for v in V["versions"][:2])
    assert v1["seq"] == 1 and v1["base"] is None and v1["prev"] is None
    assert V["versions"][0]["base_hash"] == V["versions"][0]["absolute_hash"]
    assert v2["seq"] == 2 and v2["tombstone"] is True and v2["chunks"] == [] and v2["length"] == 0
    assert v2["base"].hex() == v2["prev"].hex() == V["versions"][0]["absolute_hash"]
    assert V["versions"][1]["base_hash"] == V["versions"][0]["absolute_hash"]
    assert v1["checksum"] == crypto.hash_bytes(h(V["chunk"]["plaintext"]))
    assert v2["checksum"] == crypto.hash_bytes(b"")


def test_a_small_payload_is_carried_by_its_header():
    """Header format 2: ``data`` is the whole payload; no chunk, no chunk blob."""
    b = untag(V["versions"][2]["body"])
    assert b["v"] == 2 and b["chunks"] == [] and b["tree"] is None
    assert b["length"] == len(b["data"]) and b["checksum"] == crypto.hash_bytes(b["data"])
    header = VersionHeader.from_body(b)
    assert header.data == b["data"] and header.body()["v"] == 2
    assert "data" not in VersionHeader.from_body(untag(V["versions"][0]["body"])).body()


@pytest.mark.parametrize(
    "change",
    [
        {"data": b""},
        {"data": bytes(4097), "length": 4097},
        {"length": 1},
        {"chunks": [[b"\x00" * 32, 22]]},
        {"tree": [b"\x00" * 32, 1]},
        {"v": 1},
        {"v": True},
        {"tombstone": True},
        {"data": "text"},
    ],
    ids=lambda c: "-".join(c),
)
def test_malformed_inline_header_is_refused(change):
    body = {**untag(V["versions"][2]["body"]), **change}
    with pytest.raises(FormatError):
        VersionHeader.from_body(body)
    with pytest.raises(FormatError):  # nor may a format-1 header carry data
        VersionHeader.from_body({**untag(V["versions"][0]["body"]), "data": b"x"})


@pytest.mark.parametrize(
    "change",
    [
        {"seq": True},
        {"seq": 0},
        {"created": -1},
        {"partition": b"short"},
        {"checksum": "not bytes"},
        {"tombstone": 0},
        {"chunks": [[b"\x00" * 32]]},
        {"tree": [b"\x00" * 32, 0]},
        {"epoch": 2**32},
        {"sort_key": ""},
        {"headers": [["k"]]},
        {"extra": 1},
        {"posix": {"type": "file", "mode": 420, "uid": 0, "gid": 0, "mtime": 0}},
    ],
    ids=lambda c: next(iter(c)),
)
def test_malformed_header_body_is_refused(change):
    body = {**untag(V["versions"][0]["body"]), **change}
    with pytest.raises(FormatError):
        VersionHeader.from_body(body)


def test_format3_headers_carry_the_block_checksum_and_block_list():
    """Header format 3 (what writers write): ``checksum`` is derived from the block
    hashes; ``data`` is always present (null for a payload in chunks)."""
    chunked, small = (untag(V["versions"][i]["body"]) for i in (3, 4))
    assert chunked["v"] == small["v"] == 3 and chunked["data"] is None and small["data"] is not None
    for b, payload in ((chunked, h(V["chunk"]["plaintext"])), (small, small["data"])):
        assert b["blocks"] == [[blake3.blake3(payload).digest(), len(payload)]] and b["block_tree"] is None
        assert b["checksum"] == checksum_of([blake3.blake3(payload).digest()]) != blake3.blake3(payload).digest()
        header = VersionHeader.from_body(b)
        assert header.format == 3 and header.checksum_type == "blake3-blocks-1m"
        assert header.blocks == (ChunkRef(blake3.blake3(payload).digest(), len(payload)),)
    assert VersionHeader.from_body(untag(V["versions"][0]["body"])).checksum_type == "blake3"


@pytest.mark.parametrize(
    "change",
    [
        {"blocks": None},
        {"block_tree": [b"\x00" * 32, 1]},
        {"block_tree": [b"\x00" * 32, 0], "blocks": None},
        {"checksum": b"\x00" * 32},
        {"blocks": []},
        {"blocks": [[b"\x00" * 32, 62]]},
        {"blocks": [[b"\x00" * 32]]},
        {"length": 2**20 + 1},
        {"data": b"x"},
        {"v": 4},
    ],
    ids=lambda c: "-".join(c),
)
def test_malformed_format3_header_is_refused(change):
    """Exactly one of blocks/block_tree; an inline block list fits the length and
    hashes to the checksum."""
    body = {**untag(V["versions"][3]["body"]), **change}
    with pytest.raises(FormatError):
        VersionHeader.from_body(body)
    assert VersionHeader.from_body(untag(V["versions"][3]["body"])).format == 3


def test_block_checksum():
    """Block hashes and checksums of the vector payloads: in one piece, streamed in odd
    pieces, and with known blocks spliced in (a file on disk: test_cli.py)."""
    v = V["block_checksum"]
    assert (v["block_size"], v["context"]) == (BLOCK_SIZE, CHECKSUM_CONTEXT)
    stream = blake3.blake3(b"fsobj block checksum vector").digest(max(p["length"] for p in v["payloads"]))
    for p in v["payloads"]:
        data = stream[: p["length"]]
        want = [(h(x), n) for x, n in p["blocks"]]
        assert blocks_of(data) == want and checksum_of(x for x, _ in want).hex() == p["checksum"]
        hasher = BlockHasher()
        for i in range(0, len(data), 300_007):
            hasher.update(data[i : i + 300_007])
        assert hasher.finish() == (want, h(p["checksum"]))
        if len(want) > 1:  # the first block known, the rest hashed
            spliced = BlockHasher()
            spliced.extend(want[:1])
            spliced.update(data[BLOCK_SIZE:])
            assert spliced.finish()[1].hex() == p["checksum"]
            with pytest.raises(ValueError):  # known blocks only at a block boundary
                spliced = BlockHasher()
                spliced.update(b"x")
                spliced.extend(want[:1])


def test_block_list_node():
    """A block-list node is a kind-3 blob (chunk-list id key) of type fsobj-block-list."""
    n = V["block_list"]
    entries = decode_chunk_list(h(n["plaintext"]), BLOCK_LIST_TYPE)
    last = V["block_checksum"]["payloads"][-1]
    assert [[e.id.hex(), e.length] for e in entries] == last["blocks"]
    assert encode_chunk_list(entries, BLOCK_LIST_TYPE).hex() == n["plaintext"]
    assert keys().payload_blob_id(crypto.KIND_CHUNK_LIST, h(n["plaintext"])).hex() == n["blob_id"]
    assert crypto.open_blob(h(n["blob"]), crypto.KIND_CHUNK_LIST, keys(), PID, h(n["blob_id"])).hex() == n["plaintext"]
    with pytest.raises(FormatError):  # not a chunk list
        decode_chunk_list(h(n["plaintext"]))
    with pytest.raises(FormatError):
        decode_chunk_list(h(V["chunk_list"]["plaintext"]), BLOCK_LIST_TYPE)


def test_block_list_shape():
    assert check_blocks([], 0) and check_blocks([(b"", 1)], 1)
    assert check_blocks([(b"", BLOCK_SIZE), (b"", 1)], BLOCK_SIZE + 1)
    assert not check_blocks([(b"", 1), (b"", BLOCK_SIZE)], BLOCK_SIZE + 1)
    assert not check_blocks([(b"", BLOCK_SIZE)], BLOCK_SIZE + 1)
    assert not check_blocks([(b"", 2)], 1)


def test_header_without_session_fails_verification():
    v = V["versions"][0]
    header = VersionHeader.from_body(untag(v["body"])).with_(session={"key": "x", "expires": 1, "sig": b""})
    with pytest.raises(IntegrityError):
        verify_signatures(header, header.absolute_hash(), h(v["integrity"]), ident("alice").public.sign_pub)


# ---------------------------------------------------------------- feeds


def test_feed_id():
    f = V["feeds"]
    from fsobj.feeds import feed_id

    fido = untag(f["id_object"])
    assert same(fido, {"type": "fsobj-feed-id", "v": 1, "name": f["name"], "owner": h(f["owner"])})
    assert cbor.encode(fido).hex() == f["id_object_cbor"]
    assert crypto.hash_bytes(h(f["id_object_cbor"])).hex() == f["feed_id"]
    assert feed_id(f["name"], h(f["owner"])).hex() == f["feed_id"]
    assert f["feed_id"] != partition_id(f["name"], h(f["owner"])).hex()
    assert f["owner"] == V["identities"]["alice"]["user_id"]


def test_feed_key_and_sealed_names():
    from types import SimpleNamespace

    from fsobj.feeds import Feeds

    f = V["feeds"]
    alice = ident("alice")
    assert alice.private_bytes().hex() == f["owner_private"]
    assert alice.derive_secret(crypto.CTX_FEED).hex() == f["feed_key"]
    assert crypto.derive(crypto.CTX_FEED, h(f["owner_private"]), 64).hex() == f["feed_key"]
    assert f["associated_data"] == alice.user_id.hex()
    feeds = Feeds(SimpleNamespace(index=None, identity=alice))  # only the sealing is used
    for s in f["sealed"]:
        assert feeds._seal(s["text"]).hex() == s["sealed"]  # AES-SIV: deterministic
        assert feeds._open(h(s["sealed"])) == s["text"]
        assert len(h(s["sealed"])) == 16 + len(s["text"].encode())
    bob_feeds = Feeds(SimpleNamespace(index=None, identity=ident("bob")))
    with pytest.raises(InvalidTag):
        bob_feeds._open(h(f["sealed"][0]["sealed"]))


def test_index_schema_version_and_migration(tmp_path):
    from fsobj.index import Index, schema

    assert schema.SCHEMA_VERSION == 3 and set(schema.MIGRATIONS) == {2, 3}
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)  # a schema-1 index, from the frozen schema-1 SQL, with one series
    old.executescript((ROOT / "tests" / "vectors" / "index_schema_v1.sql").read_text())
    old.execute("INSERT INTO meta VALUES ('schema', '1'), ('generation', '0')")
    head = (b"b" * 32, b"p" * 32, b"h" * 32, b"ct", 0, 2, 0, 5, 123)
    old.execute("INSERT INTO heads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", head)
    old.commit()
    old.close()
    index = Index(path)
    index.check()
    assert index.get_meta("schema") == "3"
    tables = {r[0] for r in index.q("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"feeds", "feed_subscriptions", "feed_messages", "heads"} <= tables
    assert "heads_v3" not in tables
    assert index.head(b"b" * 32) == index.heads_in(b"p" * 32)[0]
    assert index.head(b"b" * 32).head_hash == b"h" * 32
    ddl = index.q("SELECT sql FROM sqlite_master WHERE name = 'heads'")[0][0]
    assert "WITHOUT ROWID" in ddl
    index.close()
    newer = sqlite3.connect(path)
    newer.execute("UPDATE meta SET value = '4' WHERE key = 'schema'")
    newer.commit()
    newer.close()
    newer_index = Index(path)
    with pytest.raises(FormatError):  # a newer schema is refused, not migrated back
        newer_index.check()
    newer_index.close()


# ---------------------------------------------------------------- files


def test_identity_file(tmp_path):
    f = V["identity_file"]
    path = tmp_path / "identity.json"
    path.write_text(f["json"])
    alice = ident("alice")
    me = identity.load(path, f["passphrase"])
    assert me.private_bytes() == alice.private_bytes() and me.user_id == alice.user_id
    assert identity.load_public(path) == alice.public
    doc = json.loads(f["json"])
    assert crypto.passphrase_key(f["passphrase"], h(doc["kdf"]["salt"]), 2**15, 8, 1).hex() == f["scrypt_key"]
    with pytest.raises(IdentityError):
        identity.load(path, "wrong passphrase")


def test_public_identity_export(tmp_path):
    p = V["public_identity"]
    alice = ident("alice")
    assert identity.export_public(alice.public) == p["json"]
    path = tmp_path / "alice.pub.json"
    path.write_text(p["json"])
    assert identity.load_public(path) == alice.public


def test_store_marker(tmp_path):
    (tmp_path / MARKER).write_text(V["store_marker"]["json"])
    assert check_store(tmp_path) == json.loads(V["store_marker"]["json"])
    doc = json.loads(V["store_marker"]["json"])
    (tmp_path / MARKER).write_text(json.dumps({**doc, "version": 2}))
    assert check_store(tmp_path)["version"] == 2
    (tmp_path / MARKER).write_text(json.dumps({**doc, "version": 3}))
    with pytest.raises(FormatError, match="version 3 is not supported"):
        check_store(tmp_path)
    (tmp_path / MARKER).unlink()
    with pytest.raises(FormatError):
        check_store(tmp_path)


# ---------------------------------------------------------------- chunking


def _reference_chunker(
    buf: bytes, seed: int, gear: list[int], mask_s: int, mask_l: int, min_size: int, avg: int, max_size: int
) -> list[int]:
    """The cut-point algorithm exactly as docs/format.md ("Chunking") states it."""
    m64 = (1 << 64) - 1
    g = [x ^ seed for x in gear]
    lengths, start = [], 0
    while start < len(buf):
        remaining = len(buf) - start
        cut = remaining
        if remaining > min_size:
            center = avg
            if remaining > max_size:
                remaining = cut = max_size
            elif remaining < center:
                center = remaining
            fp, mid, end = 0, center - center % 2, remaining - remaining % 2
            for i in range(min_size - min_size % 2, end):
                fp = ((fp << 1) + g[buf[start + i]]) & m64
                if fp & (mask_s if i < mid else mask_l) == 0:
                    cut = i
                    break
        lengths.append(cut)
        start += cut
    return lengths


CHUNK_SETS = [(1, "chunking"), (2, "chunking_2")]  # parameter set, its vector section


@pytest.mark.parametrize(("number", "section"), CHUNK_SETS)
def test_chunking_parameters_and_gear_table(number: int, section: str) -> None:
    from pyfastcdc.py.constants import GEAR, MASKS

    c = V[section]
    p = chunking.PARAMS[number]
    assert (p.avg, p.min, p.max) == (c["avg_size"], c["min_size"], c["max_size"])
    assert blake3.blake3(struct.pack("<256Q", *GEAR)).hexdigest() == c["gear_table_blake3"]
    bits = p.avg.bit_length() - 1
    assert 1 << bits == p.avg
    assert MASKS[bits + 1] == int(c["mask_s"], 16) and MASKS[bits - 1] == int(c["mask_l"], 16)


def test_new_stores_use_set_2_and_older_ones_keep_set_1() -> None:
    assert chunking.DEFAULT is chunking.PARAMS[2] and chunking.LEGACY is chunking.PARAMS[1]
    assert chunking.LARGEST == 4 * 1024 * 1024


@pytest.mark.parametrize(("number", "section"), CHUNK_SETS)
def test_chunk_boundaries(number: int, section: str) -> None:
    from pyfastcdc.py.constants import GEAR

    c = V[section]
    p = chunking.PARAMS[number]
    b = c["buffer"]
    buf = blake3.blake3(b["input"].encode(), key=h(b["blake3_xof_key"])).digest(b["length"])
    assert blake3.blake3(buf).hexdigest() == b["blake3"]
    assert V["epoch_keys"]["cdc_seed"] in [case["seed"] for case in c["cases"]]
    for case in c["cases"]:
        assert [len(x) for x in chunking.split_bytes(buf, case["seed"], p)] == case["lengths"]
        assert [len(x) for x in chunking.split_stream(io.BytesIO(buf), case["seed"], p)] == case["lengths"]
        pieces = [buf[a:b] for a, b in itertools.pairwise([0, 1, 4096, 131072, 1 << 20, 2 << 20, len(buf)])]
        assert [len(x) for x in chunking.split_pieces(pieces, case["seed"], p)] == case["lengths"]
        ref = _reference_chunker(
            buf, case["seed"], list(GEAR), int(c["mask_s"], 16), int(c["mask_l"], 16), p.min, p.avg, p.max
        )
        assert ref == case["lengths"]


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(
        st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
        | st.integers(0, 2**64 - 1),
        max_size=40,
    ),
    block=st.booleans(),
    edit=st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "cut", "add"])),
)
def test_the_chunk_list_scan_reads_exactly_what_the_decoder_reads(lengths, block, edit):
    """The fast reading of chunk- and block-list nodes against the generic CBOR
    decoder: the same entries for every node, and for the node with one byte
    changed, cut off or added, the same entries or the same refusal."""
    from fsobj.model import header as header_mod

    node_type = BLOCK_LIST_TYPE if block else CHUNK_LIST_TYPE
    entries = [ChunkRef(bytes([i]) * 32, n) for i, n in enumerate(lengths)]
    node = encode_chunk_list(entries, node_type)
    assert header_mod._scan_chunk_list(node, node_type) == entries == decode_chunk_list(node, node_type)
    pos, value, how = edit
    pos %= len(node)
    changed = {
        "flip": node[:pos] + bytes([node[pos] ^ (value or 1)]) + node[pos + 1 :],
        "cut": node[:pos],
        "add": node[:pos] + bytes([value]) + node[pos:],
    }[how]

    def generic(data: bytes) -> object:
        d = cbor.decode(data)
        ok = isinstance(d, dict) and set(d) == {"type", "v", "entries"} and d["type"] == node_type
        ok = ok and d["v"] == FORMAT_VERSION and isinstance(d["entries"], list)
        if not ok or not all(isinstance(e, list) and len(e) == 2 for e in d["entries"]):
            raise FormatError("malformed")
        if not all(type(i) is bytes and len(i) == 32 and type(n) is int and n >= 0 for i, n in d["entries"]):
            raise FormatError("malformed")
        return [ChunkRef(i, n) for i, n in d["entries"]]

    try:
        expected: object = generic(changed)
    except FormatError:
        expected = FormatError
    scanned = header_mod._scan_chunk_list(changed, node_type)
    assert scanned is None or scanned == expected
    try:
        got: object = decode_chunk_list(changed, node_type)
    except FormatError:
        got = FormatError
    assert got == expected
