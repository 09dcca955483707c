"""Generate ``tests/vectors/v1.json``: test vectors for on-disk format version 1.

Run by hand from the repository root after a deliberate format change::

    python tests/vectors/make_vectors.py

Deterministic: every key, seed, nonce and timestamp below is fixed (derived
from a label with BLAKE3, or written out), and Ed25519 signatures are
deterministic, so the output is byte-identical on every run. Where
``fsobj`` only offers a randomised function (``seal_blob``, ``wrap_key``,
``seal_with_passphrase``), the bytes are built here by hand from the layout in
``docs/format.md`` and then cross-checked against ``fsobj``'s own decoders, so
the file checks the specification as well as the code. ``tests/test_format.py``
checks every vector against the code.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from fsobj import chunking, crypto, feeds, identity
from fsobj.errors import FormatError
from fsobj.model import cbor
from fsobj.model.header import (
    BLOCK_LIST_TYPE,
    ChunkRef,
    VersionHeader,
    decode_header_blob,
    encode_chunk_list,
    encode_header_blob,
    verify_signatures,
)
from fsobj.model.partition import Member, PartitionRecord, partition_id

OUT = Path(__file__).with_name("v1.json")

CHUNK_BUFFER_LEN = 3 * 1024 * 1024


# ---------------------------------------------------------------- helpers


def fixed(label: str, n: int = 32) -> bytes:
    """A fixed pseudo-random byte string named by ``label``."""
    return blake3.blake3(b"fsobj test vector v1: " + label.encode()).digest(n)


def tagged(v: Any) -> Any:
    """A CBOR value as JSON: byte strings become ``{"$bytes": hex}``."""
    if isinstance(v, bytes):
        return {"$bytes": v.hex()}
    if isinstance(v, list | tuple):
        return [tagged(x) for x in v]
    if isinstance(v, dict):
        return {k: tagged(x) for k, x in v.items()}
    return v


def raw_pub(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def envelope_head(kind: int, alg: int, epoch: int) -> bytes:
    """magic "FSOB" | version 1 | kind | alg | epoch u32 big-endian (11 bytes)."""
    return b"FSOB" + bytes([1, kind, alg]) + epoch.to_bytes(4, "big")


def seal_by_hand(
    kind: int, blob_key: bytes, epoch: int, nonce: bytes, pid: bytes, blob_id: bytes, plaintext: bytes
) -> dict[str, str]:
    head = envelope_head(kind, 1, epoch) + nonce
    ad = head + pid + blob_id
    blob = head + AESGCM(blob_key).encrypt(nonce, plaintext, ad)
    assert len(blob) == len(plaintext) + 39
    return {"nonce": nonce.hex(), "associated_data": ad.hex(), "blob": blob.hex()}


# ---------------------------------------------------------------- sections


def cbor_section() -> dict[str, Any]:
    # (value, expected hex): the hex is written out by hand (RFC 8949 appendix A
    # where it has the value), not computed, so this checks the encoder.
    valid: list[tuple[Any, str]] = [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (1000000, "1a000f4240"),
        (2**32, "1b0000000100000000"),
        (2**64 - 1, "1bffffffffffffffff"),
        (-1, "20"),
        (-24, "37"),
        (-25, "3818"),
        (-1000, "3903e7"),
        (-(2**64), "3bffffffffffffffff"),
        (b"", "40"),
        (bytes([1, 2, 3, 4]), "4401020304"),
        ("", "60"),
        ("a", "6161"),
        ("\u00fc", "62c3bc"),
        ("\u6c34", "63e6b0b4"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        ([], "80"),
        ([1, [2, 3], [4, 5]], "8301820203820405"),
        ({}, "a0"),
        ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
        # keys sort by encoded form: shorter first, then bytewise
        ({"b": 2, "aa": 3, "a": 1}, "a3616101616202626161" + "03"),
        ({"seq": 1, "v": 1, "acl": 2}, "a3617601636163" + "6c02" + "63736571" + "01"),
    ]
    out_valid = []
    for value, hx in valid:
        enc = cbor.encode(value)
        assert enc.hex() == hx, (value, enc.hex(), hx)
        out_valid.append({"value": tagged(value), "hex": hx})
    invalid = [
        ("", "empty input"),
        ("1817", "integer 23 not in shortest form"),
        ("190017", "integer 23 not in shortest form"),
        ("1a000000ff", "integer 255 not in shortest form"),
        ("3800", "negative integer -1 not in shortest form"),
        ("5801ff", "byte string length not in shortest form"),
        ("5f42010243030405ff", "indefinite-length byte string"),
        ("9f01ff", "indefinite-length array"),
        ("bf616101ff", "indefinite-length map"),
        ("f97c00", "half-precision float"),
        ("fa47c35000", "single-precision float"),
        ("fb3ff199999999999a", "double-precision float"),
        ("c11a514b67b0", "tag 1"),
        ("f7", "undefined"),
        ("f820", "simple value 32"),
        ("1c", "reserved additional information 28"),
        ("a2616201616102", "map keys not sorted (b before a)"),
        ("a262616101616202", "map keys not sorted (longer key before shorter)"),
        ("a2616101616102", "duplicate map key"),
        ("a10102", "map key is not a text string"),
        ("0000", "trailing bytes"),
        ("62c3", "truncated text string"),
        ("62c328", "text string is not valid UTF-8"),
        ("83010203ff", "trailing bytes after array"),
        ("8301", "truncated array"),
        ("81" * 40 + "00", "nested more than 32 levels"),
    ]
    for hx, _ in invalid:
        try:
            cbor.decode(bytes.fromhex(hx))
        except FormatError:
            continue
        raise AssertionError(f"decoder accepted {hx}")
    return {"valid": out_valid, "invalid": [{"hex": hx, "why": why} for hx, why in invalid]}


def identity_section(label: str, name: str) -> tuple[dict[str, Any], crypto.Identity]:
    sign_seed = fixed(f"{label} ed25519 seed")
    kx_priv = fixed(f"{label} x25519 private key")
    sk = Ed25519PrivateKey.from_private_bytes(sign_seed)
    sign_pub = raw_pub(sk)
    kx_pub = raw_pub(X25519PrivateKey.from_private_bytes(kx_priv))
    kx_sig = sk.sign(b"fsobj key agreement key v1\x00" + kx_pub)
    user_id = blake3.blake3(sign_pub, derive_key_context="fsobj 2026-11 v1 user id").digest()
    ident = crypto.Identity.from_private_bytes(name, sign_seed + kx_priv)
    assert ident.public == crypto.PublicIdentity(name, sign_pub, kx_pub, kx_sig)
    assert ident.user_id == crypto.user_id_for(sign_pub) == user_id
    ident.public.check()
    return {
        "name": name,
        "ed25519_seed": sign_seed.hex(),
        "x25519_private": kx_priv.hex(),
        "sign_pub": sign_pub.hex(),
        "kx_pub": kx_pub.hex(),
        "kx_sig": kx_sig.hex(),
        "user_id": user_id.hex(),
    }, ident


def epoch_keys_section(epoch_key: bytes) -> dict[str, Any]:
    def d(ctx: str, n: int) -> bytes:
        return blake3.blake3(epoch_key, derive_key_context=ctx).digest(n)

    out = {
        "epoch": 0,
        "epoch_key": epoch_key.hex(),
        "blob_key": d("fsobj 2026-11 v1 blob encryption key", 32).hex(),
        "chunk_id_key": d("fsobj 2026-11 v1 chunk id key", 32).hex(),
        "chunk_list_id_key": d("fsobj 2026-11 v1 chunk list id key", 32).hex(),
        "sort_key_key": d("fsobj 2026-11 v1 sort key siv key", 64).hex(),
        "cdc_seed": int.from_bytes(d("fsobj 2026-11 v1 chunker seed", 4), "big"),
    }
    k = crypto.EpochKeys.from_epoch_key(0, epoch_key)
    assert (k.blob_key.hex(), k.chunk_id_key.hex(), k.chunk_list_id_key.hex(), k.sort_key_key.hex(), k.cdc_seed) == (
        out["blob_key"],
        out["chunk_id_key"],
        out["chunk_list_id_key"],
        out["sort_key_key"],
        out["cdc_seed"],
    )
    return out


def wrap_by_hand(
    recipient: crypto.PublicIdentity, eph_priv: bytes, pid: bytes, epoch: int, epoch_key: bytes
) -> dict[str, str]:
    eph = X25519PrivateKey.from_private_bytes(eph_priv)
    eph_pub = raw_pub(eph)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient.kx_pub))
    kek_input = shared + eph_pub + recipient.kx_pub + pid + epoch.to_bytes(4, "big")
    kek = blake3.blake3(kek_input, derive_key_context="fsobj 2026-11 v1 partition key wrap").digest()
    wrapped = eph_pub + AESGCM(kek).encrypt(bytes(12), epoch_key, pid)
    assert len(wrapped) == 80
    return {
        "recipient": recipient.user_id.hex(),
        "epoch": epoch,
        "ephemeral_private": eph_priv.hex(),
        "ephemeral_public": eph_pub.hex(),
        "shared_secret": shared.hex(),
        "kek_input": kek_input.hex(),
        "kek": kek.hex(),
        "wrapped": wrapped.hex(),
    }


# the FastCDC masks of each parameter set, written out (MASKS[bits + 1], MASKS[bits - 1])
CHUNK_MASKS = {1: ("0x0000d91747537000", "0x0000d90707537000"), 2: ("0x0000d91767537000", "0x0000d91707537000")}
CHUNK_BUFFER_LENS = {1: CHUNK_BUFFER_LEN, 2: 6 * 1024 * 1024}  # a few chunks of each set


def chunking_section(seeds: list[int], params: chunking.Params) -> dict[str, Any]:
    from pyfastcdc.py.constants import GEAR, MASKS

    bits = params.avg.bit_length() - 1
    mask_s, mask_l = CHUNK_MASKS[params.number]
    assert (MASKS[bits + 1], MASKS[bits - 1]) == (int(mask_s, 16), int(mask_l, 16))
    length = CHUNK_BUFFER_LENS[params.number]
    xof_key = fixed("chunking buffer key")
    buf = blake3.blake3(b"", key=xof_key).digest(length)
    cases = []
    for seed in seeds:
        lengths = [len(c) for c in chunking.split_bytes(buf, seed, params)]
        assert sum(lengths) == len(buf)
        cases.append({"seed": seed, "lengths": lengths})
    return {
        "avg_size": params.avg,
        "min_size": params.min,
        "max_size": params.max,
        "mask_s": mask_s,
        "mask_l": mask_l,
        "gear_table_blake3": blake3.blake3(struct.pack("<256Q", *GEAR)).hexdigest(),
        "buffer": {
            "blake3_xof_key": xof_key.hex(),
            "input": "",
            "length": length,
            "blake3": blake3.blake3(buf).hexdigest(),
        },
        "cases": cases,
    }


def block_checksum_section() -> dict[str, Any]:
    """Payloads of 0, 1, 1 MiB, 1 MiB + 1 and 3 MiB + 5 bytes (a BLAKE3 XOF stream):
    their block hashes and checksums, computed here by hand from the definition."""
    stream = blake3.blake3(b"fsobj block checksum vector").digest(3 * 2**20 + 5)
    payloads = []
    for n in (0, 1, 2**20, 2**20 + 1, 3 * 2**20 + 5):
        data = stream[:n]
        blocks = [data[i : i + 2**20] for i in range(0, n, 2**20)]
        hashes = [blake3.blake3(b).digest() for b in blocks]
        total = blake3.blake3(b"".join(hashes), derive_key_context="fsobj 2026-12 v1 payload checksum").digest()
        payloads.append(
            {
                "length": n,
                "blocks": [[x.hex(), len(b)] for x, b in zip(hashes, blocks, strict=True)],
                "checksum": total.hex(),
            }
        )
    return {
        "stream": 'the first "length" bytes of BLAKE3-XOF("fsobj block checksum vector")',
        "block_size": 2**20,
        "context": "fsobj 2026-12 v1 payload checksum",
        "payloads": payloads,
    }


def feeds_section(owner: crypto.Identity) -> dict[str, Any]:
    name = "photo-updates"
    fido = {"type": "fsobj-feed-id", "v": 1, "name": name, "owner": owner.user_id}
    fido_cbor = cbor.encode(fido)
    fid = blake3.blake3(fido_cbor).digest()
    assert fid == feeds.feed_id(name, owner.user_id)
    feed_key = blake3.blake3(owner.private_bytes(), derive_key_context="fsobj 2026-11 v1 feed key").digest(64)
    assert feed_key == owner.derive_secret(crypto.CTX_FEED)
    siv = AESSIV(feed_key)
    code = feeds.Feeds(SimpleNamespace(index=None, identity=owner))  # type: ignore[arg-type]
    sealed = []
    for kind, text in (("name", name), ("prefix", "docs/"), ("prefix", "")):
        ct = siv.encrypt(text.encode(), [owner.user_id])
        assert ct == code._seal(text) and code._open(ct) == text and len(ct) == 16 + len(text.encode())
        sealed.append({"what": kind, "text": text, "sealed": ct.hex()})
    return {
        "name": name,
        "owner": owner.user_id.hex(),
        "id_object": tagged(fido),
        "id_object_cbor": fido_cbor.hex(),
        "feed_id": fid.hex(),
        "owner_private": owner.private_bytes().hex(),
        "feed_key": feed_key.hex(),
        "associated_data": owner.user_id.hex(),
        "sealed": sealed,
    }


# ---------------------------------------------------------------- main


def build() -> dict[str, Any]:
    out: dict[str, Any] = {
        "format_version": 1,
        "about": "Test vectors for fsobj on-disk format version 1 (docs/format.md). "
        "Generated by tests/vectors/make_vectors.py; checked by tests/test_format.py. "
        'Hex strings are lowercase; CBOR values use {"$bytes": hex} for byte strings.',
    }
    out["cbor"] = cbor_section()

    alice_v, alice = identity_section("alice", "alice")
    bob_v, bob = identity_section("bob", "bob")
    out["identities"] = {"alice": alice_v, "bob": bob_v}

    # ---- partition id
    name = "photos"
    ido = {"type": "fsobj-partition-id", "v": 1, "name": name, "owner": alice.user_id}
    ido_cbor = cbor.encode(ido)
    pid = blake3.blake3(ido_cbor).digest()
    assert pid == partition_id(name, alice.user_id)
    out["partition_id"] = {
        "name": name,
        "owner": alice.user_id.hex(),
        "id_object": tagged(ido),
        "id_object_cbor": ido_cbor.hex(),
        "partition_id": pid.hex(),
    }

    # ---- epoch keys
    epoch_key = fixed("partition photos epoch 0 key")
    out["epoch_keys"] = ek_v = epoch_keys_section(epoch_key)
    keys = crypto.EpochKeys.from_epoch_key(0, epoch_key)

    # ---- a chunk and its envelope
    payload = b"Hello, fsobj!\nThis is the one chunk of a small test object.\n"
    chunk_id = blake3.blake3(payload, key=bytes.fromhex(ek_v["chunk_id_key"])).digest()
    assert chunk_id == keys.chunk_id(payload)
    chunk_env = seal_by_hand(1, keys.blob_key, 0, fixed("chunk nonce", 12), pid, chunk_id, payload)
    assert crypto.open_blob(bytes.fromhex(chunk_env["blob"]), 1, keys, pid, chunk_id) == payload
    out["chunk"] = {
        "kind": 1,
        "epoch": 0,
        "partition_id": pid.hex(),
        "plaintext": payload.hex(),
        "chunk_id": chunk_id.hex(),
        **chunk_env,
    }

    # ---- sealed sort key
    sort_key = "docs/readme.txt"
    sealed = AESSIV(bytes.fromhex(ek_v["sort_key_key"])).encrypt(sort_key.encode(), [pid])
    assert sealed == keys.seal_sort_key(pid, sort_key)
    out["sort_key"] = {"sort_key": sort_key, "partition_id": pid.hex(), "sealed": sealed.hex()}

    # ---- chunk-list node
    entries = [ChunkRef(chunk_id, len(payload)), ChunkRef(fixed("another chunk id"), 524288)]
    node = cbor.encode({"type": "fsobj-chunk-list", "v": 1, "entries": [[c.id, c.length] for c in entries]})
    assert node == encode_chunk_list(entries)
    # its own id key: the same bytes stored as a chunk would get another id
    node_id = blake3.blake3(node, key=bytes.fromhex(ek_v["chunk_list_id_key"])).digest()
    assert node_id == keys.payload_blob_id(crypto.KIND_CHUNK_LIST, node) != keys.chunk_id(node)
    node_env = seal_by_hand(3, keys.blob_key, 0, fixed("chunk list nonce", 12), pid, node_id, node)
    assert crypto.open_blob(bytes.fromhex(node_env["blob"]), 3, keys, pid, node_id) == node
    out["chunk_list"] = {
        "kind": 3,
        "entries": [[c.id.hex(), c.length] for c in entries],
        "plaintext": node.hex(),
        "blob_id": node_id.hex(),
        "chunk_id_of_same_bytes": keys.chunk_id(node).hex(),
        **node_env,
    }

    # ---- payload checksum of header format 3: block hashes, checksum, a block-list node
    out["block_checksum"] = block_checksum_section()
    blocks = [ChunkRef(bytes.fromhex(hx), n) for hx, n in out["block_checksum"]["payloads"][-1]["blocks"]]
    bnode = cbor.encode({"type": "fsobj-block-list", "v": 1, "entries": [[c.id, c.length] for c in blocks]})
    assert bnode == encode_chunk_list(blocks, BLOCK_LIST_TYPE)
    bnode_id = blake3.blake3(bnode, key=bytes.fromhex(ek_v["chunk_list_id_key"])).digest()
    bnode_env = seal_by_hand(3, keys.blob_key, 0, fixed("block list nonce", 12), pid, bnode_id, bnode)
    out["block_list"] = {"kind": 3, "plaintext": bnode.hex(), "blob_id": bnode_id.hex(), **bnode_env}

    # ---- partition record (seq 2: alice owner, bob writer, epoch 0)
    name_sealed_env = seal_by_hand(4, keys.blob_key, 0, fixed("name_sealed nonce", 12), pid, b"", ido_cbor)
    name_sealed = bytes.fromhex(name_sealed_env["blob"])
    wraps = [
        wrap_by_hand(alice.public, fixed("alice wrap ephemeral"), pid, 0, epoch_key),
        wrap_by_hand(bob.public, fixed("bob wrap ephemeral"), pid, 0, epoch_key),
    ]
    for w, who in zip(wraps, (alice, bob), strict=True):
        assert who.unwrap(pid, 0, bytes.fromhex(w["wrapped"])) == epoch_key
    wrap_of = {bytes.fromhex(w["recipient"]): bytes.fromhex(w["wrapped"]) for w in wraps}
    history = [
        {"seq": 1, "epoch": 0, "writers": [], "publics": []},
        {"seq": 2, "epoch": 0, "writers": [bob.user_id], "publics": [bob.public.to_record()]},
    ]
    record_body = {
        "type": "fsobj-partition",
        "v": 1,
        "partition": pid,
        "seq": 2,
        "created": 1767225660000000,
        "owner": alice.public.to_record(),
        "name_sealed": name_sealed,
        "members": [{"id": bob.public.to_record(), "role": "write"}],
        "epochs": [[[uid, wrap_of[uid]] for uid in sorted(wrap_of)]],
        "history": history,
    }
    record_body_cbor = cbor.encode(record_body)
    record_sig = alice.sign(b"fsobj partition record v1\x00" + record_body_cbor)
    record_plain = cbor.encode({"body": record_body, "sig": record_sig})
    record_blob = envelope_head(4, 0, 0) + record_plain
    record_id = blake3.blake3(record_blob).digest()
    rec = PartitionRecord(
        pid, 2, 1767225660000000, alice.public, name_sealed, [Member(bob.public, "write")], [wrap_of], history
    )
    assert rec.body() == record_body and rec.signed_blob(alice) == record_blob
    PartitionRecord.from_blob(record_blob, record_id)
    out["partition_record"] = {
        "name_sealed": {"kind": 4, "epoch": 0, "blob_id": "", "plaintext": ido_cbor.hex(), **name_sealed_env},
        "wraps": wraps,
        "body": tagged(record_body),
        "body_cbor": record_body_cbor.hex(),
        "sig": record_sig.hex(),
        "plaintext": record_plain.hex(),
        "blob": record_blob.hex(),
        "record_id": record_id.hex(),
    }

    # ---- version headers: v1 by alice (acl 1), v2 = tombstone by bob (acl 2), and a new
    # series by alice whose small payload the header carries (header format 2); then
    # two more new series by alice in header format 3, what writers write now: the one
    # chunk of versions[0], and a small payload in the header
    versions = []
    prev_hash: bytes | None = None
    small = b"hello, inline payload\n"
    writers = ((alice, 1, 1), (bob, 2, 2), (alice, 1, 2), (alice, 1, 2), (alice, 1, 2))
    for n, (author, seq, acl) in enumerate(writers, start=1):
        session_sk = Ed25519PrivateKey.from_private_bytes(fixed(f"{author.name} session key seed"))
        session_pub = raw_pub(session_sk)
        expires = 1767312000  # 2026-01-02T00:00:00Z
        session_msg = b"fsobj session v1\x00" + author.user_id + session_pub + expires.to_bytes(8, "big")
        assert session_msg == crypto.session_message(author.user_id, session_pub, expires)
        session = {"key": session_pub, "expires": expires, "sig": author.sign(session_msg)}
        tomb, inline, fmt3 = n == 2, n in (3, 5), n >= 4
        data = small if inline else b"" if tomb else payload
        body = {
            "type": "fsobj-version",
            "v": 3 if fmt3 else 2 if inline else 1,
            "partition": pid,
            "author": author.user_id,
            "created": 1767225600000000 + 1000000 * n,
            "length": len(data),
            "base": versions[0]["absolute_hash_bytes"] if tomb else None,
            "prev": prev_hash if tomb else None,
            "seq": seq,
            "sort_key": f"notes/format3-{n}.txt" if fmt3 else "notes/small.txt" if inline else sort_key,
            "headers": [["content-type", "text/plain"]],
            "checksum": blake3.blake3(data).digest(),
            "chunks": [] if tomb or inline else [[chunk_id, len(payload)]],
            "tree": None,
            "tombstone": tomb,
            "posix": {"type": "file", "mode": 0o644, "uid": 1000, "gid": 1000, "mtime": 1767225000123456789, "rdev": 0},
            "epoch": 0,
            "acl": acl,
            "session": session,
        }
        if fmt3:  # one block: its BLAKE3, then the checksum derived from the block hashes
            body["checksum"] = blake3.blake3(
                blake3.blake3(data).digest(), derive_key_context="fsobj 2026-12 v1 payload checksum"
            ).digest()
            body["data"] = data if inline else None
            body["blocks"] = [[blake3.blake3(data).digest(), len(data)]]
            body["block_tree"] = None
        elif inline:
            body["data"] = data
        body_cbor = cbor.encode(body)
        abs_hash = blake3.blake3(body_cbor).digest()
        h = VersionHeader.from_body(cbor.decode(body_cbor))
        assert h.body() == body and h.absolute_hash() == abs_hash
        integrity_msg = b"fsobj integrity v1\x00" + abs_hash
        integrity = session_sk.sign(integrity_msg)
        plain = cbor.encode({"body": body, "integrity": integrity})
        assert plain == encode_header_blob(h, integrity)
        env = seal_by_hand(2, keys.blob_key, 0, fixed(f"header {n} nonce", 12), pid, abs_hash, plain)
        h2, integ2 = decode_header_blob(crypto.open_blob(bytes.fromhex(env["blob"]), 2, keys, pid, abs_hash), abs_hash)
        verify_signatures(h2, abs_hash, integ2, author.public.sign_pub)
        assert author.user_id in rec.writers_at(acl)
        versions.append(
            {
                "absolute_hash_bytes": abs_hash,
                "author_name": author.name,
                "session_private_seed": fixed(f"{author.name} session key seed").hex(),
                "session_message": session_msg.hex(),
                "body": tagged(body),
                "body_cbor": body_cbor.hex(),
                "absolute_hash": abs_hash.hex(),
                "base_hash": h.base_hash(abs_hash).hex(),
                "integrity_message": integrity_msg.hex(),
                "integrity": integrity.hex(),
                "plaintext": plain.hex(),
                "kind": 2,
                **env,
            }
        )
        prev_hash = abs_hash
    for v in versions:
        del v["absolute_hash_bytes"]
    out["versions"] = versions

    # ---- identity file of alice and her exported public identity
    passphrase = "correct horse battery staple"
    salt = fixed("alice identity salt", 16)
    nonce = fixed("alice identity nonce", 12)
    pkey = hashlib.scrypt(passphrase.encode(), salt=salt, n=2**15, r=8, p=1, maxmem=64 * 2**20, dklen=32)
    sealed_priv = AESGCM(pkey).encrypt(nonce, alice.private_bytes(), alice.user_id)
    doc = {
        "fsobj_identity": 1,
        "name": "alice",
        "user_id": alice.user_id.hex(),
        "sign_pub": alice.public.sign_pub.hex(),
        "kx_pub": alice.public.kx_pub.hex(),
        "kx_sig": alice.public.kx_sig.hex(),
        "kdf": {"alg": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": salt.hex()},
        "nonce": nonce.hex(),
        "sealed": sealed_priv.hex(),
    }
    assert crypto.open_with_passphrase(doc, passphrase, alice.user_id) == alice.private_bytes()
    out["identity_file"] = {"passphrase": passphrase, "scrypt_key": pkey.hex(), "json": json.dumps(doc, indent=2)}
    out["public_identity"] = {"json": identity.export_public(alice.public)}

    # ---- feeds (index schema 2): feed id and names sealed with alice's feed key
    out["feeds"] = feeds_section(alice)

    # ---- store marker
    marker = {"format": "fsobj-store", "store_id": fixed("store id", 16).hex(), "version": 1}
    out["store_marker"] = {"json": json.dumps(marker, indent=2, sort_keys=True) + "\n"}

    # ---- chunking
    out["chunking"] = chunking_section([0, ek_v["cdc_seed"]], chunking.PARAMS[1])
    out["chunking_2"] = chunking_section([0, ek_v["cdc_seed"]], chunking.PARAMS[2])
    return out


def main() -> int:
    text = json.dumps(build(), indent=1) + "\n"
    OUT.write_text(text)
    print(f"wrote {OUT.name} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
