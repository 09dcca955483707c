"""Canonical CBOR: the one byte encoding every hashed or signed structure uses.

Owns: encoding and decoding of the subset of CBOR (RFC 8949) that fsobj needs,
in the *core deterministic encoding* of RFC 8949 section 4.2.1:

* integers (major types 0 and 1) in the shortest form;
* byte strings (2) and UTF-8 text strings (3), definite length only;
* arrays (4) and maps (5), definite length only; map keys must be text strings
  and are sorted by the bytewise order of their encoded form (shorter first);
* ``false``, ``true`` and ``null`` (simple values 20, 21, 22).

Floats, tags, indefinite lengths and duplicate map keys are refused by the
decoder, and the decoder also refuses any input that is not already in
canonical form, so ``encode(decode(b)) == b`` holds for every accepted ``b``.
That property is what lets a hash of the bytes stand for the value.

The encoder is on the commit path (every version header is encoded), so it
dispatches on the exact type first, takes heads with small arguments from a
table, and caches the sorted, encoded keys of small maps by key sequence.

Must not know: what the values mean (see ``fsobj.model.header``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from fsobj.errors import FormatError

Value = Any  # int | bytes | str | bool | None | list[Value] | dict[str, Value]

_MAX_DEPTH = 32


#: every head whose argument fits in one byte, indexed by ``major << 8 | n`` (n < 256):
#: the one-byte form for n < 24, the two-byte form (additional info 24) above
_SHORT_HEADS: tuple[bytes, ...] = tuple(
    bytes([major << 5 | n]) if n < 24 else bytes([major << 5 | 24, n]) for major in range(8) for n in range(256)
)
_PACK_U16 = struct.Struct(">BH").pack
_PACK_U32 = struct.Struct(">BI").pack
_PACK_U64 = struct.Struct(">BQ").pack

#: map key sequence ``tuple(d)`` -> (map head, ((key, encoded key), ...) in canonical order)
_KEY_ORDERS: dict[tuple[str, ...], tuple[bytes, tuple[tuple[str, bytes], ...]]] = {}
_KEY_ORDERS_MAX = 512  # key sequences remembered; the cache is emptied when it is full
_KEY_ORDERS_MAX_KEYS = 64  # maps with more keys are sorted every time, not cached


def _head(major: int, n: int) -> bytes:
    """The initial byte(s) of an item: major type + argument, shortest form."""
    if n < 0x100:
        return _SHORT_HEADS[major << 8 | n]
    mt = major << 5
    if n < 0x10000:
        return _PACK_U16(mt | 25, n)
    if n < 0x100000000:
        return _PACK_U32(mt | 26, n)
    if n < 0x10000000000000000:
        return _PACK_U64(mt | 27, n)
    raise ValueError("integer too large for CBOR")


def encode(value: Value) -> bytes:
    """Encode ``value`` canonically. Raises ``TypeError`` on unsupported types.

    Also raises ``ValueError`` for integers outside [-2**64, 2**64) and for
    structures nested more than ``_MAX_DEPTH`` levels deep.
    """
    pieces: list[bytes] = []
    _encode_into(pieces.append, value, 0)
    return b"".join(pieces)


def _key_order(d: dict[Any, Value]) -> tuple[bytes, tuple[tuple[str, bytes], ...]]:
    """The map head of ``d`` and its (key, encoded key) pairs in canonical order.

    Raises ``TypeError`` if a key is not a text string. The result is cached by
    key sequence for small maps whose keys are all exact ``str``: the same few
    key sets (header body, POSIX attributes, session) recur on every commit.
    """
    keys = tuple(d)
    cached = _KEY_ORDERS.get(keys)
    if cached is not None:
        return cached
    pairs = []
    exact = True
    for k in keys:
        if not isinstance(k, str):
            raise TypeError("CBOR map keys must be text strings")
        exact = exact and type(k) is str
        b = k.encode("utf-8")
        pairs.append((k, _head(3, len(b)) + b))
    pairs.sort(key=lambda kb: (len(kb[1]), kb[1]))
    result = (_head(5, len(pairs)), tuple(pairs))
    if exact and len(keys) <= _KEY_ORDERS_MAX_KEYS:
        if len(_KEY_ORDERS) >= _KEY_ORDERS_MAX:
            _KEY_ORDERS.clear()
        _KEY_ORDERS[keys] = result
    return result


def _encode_into(put: Callable[[bytes], object], value: Value, depth: int) -> None:
    """Pass the encoding of ``value``, ``depth`` levels below the top, to ``put`` piece by piece.

    The exact common types are tested first (``type(value) is ...``); subclasses,
    ``bytearray`` and ``memoryview`` take the ``isinstance`` fallbacks at the end.
    A container at depth ``_MAX_DEPTH`` must be empty: its items would be nested
    too deeply (a dict's keys are checked first, so a bad key is a ``TypeError``).
    """
    t = type(value)
    if t is int:
        if 0 <= value < 0x100:
            put(_SHORT_HEADS[value])
        elif 0 <= value < 0x100000000:
            put(_PACK_U16(0x19, value) if value < 0x10000 else _PACK_U32(0x1A, value))
        elif value >= 0:
            put(_head(0, value))
        else:
            n = -1 - value
            put(_SHORT_HEADS[0x100 | n] if n < 0x100 else _head(1, n))
    elif t is bytes:
        n = len(value)
        put(_SHORT_HEADS[0x200 | n] if n < 0x100 else _head(2, n))
        put(value)
    elif t is str:
        b = value.encode("utf-8")
        n = len(b)
        put(_SHORT_HEADS[0x300 | n] if n < 0x100 else _head(3, n))
        put(b)
    elif t is list or t is tuple:
        n = len(value)
        if n and depth >= _MAX_DEPTH:
            raise ValueError("structure nested too deeply")
        put(_SHORT_HEADS[0x400 | n] if n < 0x100 else _head(4, n))
        depth += 1
        for item in value:
            _encode_into(put, item, depth)
    elif t is dict:
        head, pairs = _key_order(value)
        if pairs and depth >= _MAX_DEPTH:
            raise ValueError("structure nested too deeply")
        put(head)
        depth += 1
        for k, kb in pairs:
            put(kb)
            _encode_into(put, value[k], depth)
    elif value is None:
        put(b"\xf6")
    elif value is False:
        put(b"\xf4")
    elif value is True:
        put(b"\xf5")
    elif isinstance(value, int):
        put(_head(0, value) if value >= 0 else _head(1, -1 - value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        put(_head(2, len(b)))
        put(b)
    elif isinstance(value, str):
        b = value.encode("utf-8")
        put(_head(3, len(b)))
        put(b)
    elif isinstance(value, (list, tuple)):
        if len(value) and depth >= _MAX_DEPTH:
            raise ValueError("structure nested too deeply")
        put(_head(4, len(value)))
        for item in value:
            _encode_into(put, item, depth + 1)
    elif isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("CBOR map keys must be text strings")
            b = k.encode("utf-8")
            items.append((_head(3, len(b)) + b, v))
        items.sort(key=lambda kv: (len(kv[0]), kv[0]))
        if items and depth >= _MAX_DEPTH:
            raise ValueError("structure nested too deeply")
        put(_head(5, len(items)))
        for kb, v in items:
            put(kb)
            _encode_into(put, v, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as canonical CBOR")


def decode(data: bytes) -> Value:
    """Decode one canonical item that spans all of ``data``.

    Raises :class:`FormatError` for malformed or non-canonical input. The
    canonical form is checked while decoding (shortest arguments, map keys in
    order, no duplicates), so ``encode(decode(b)) == b`` without re-encoding.
    """
    mv = memoryview(data)
    value, pos = _decode_at(mv, 0, 0)
    if pos != len(mv):
        raise FormatError("trailing bytes after CBOR item")
    return value


def read_head(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """(major type, argument, position after it) of the item head at ``pos``, checked
    as :func:`decode` checks it (truncation, shortest argument): for readers of one
    fixed shape that skip the generic decoder."""
    if pos >= len(data):
        raise FormatError("truncated CBOR item")
    ib = data[pos]
    arg, after = _read_arg(data, pos + 1, ib & 0x1F)
    return ib >> 5, arg, after


_ARG_BYTES = {24: 1, 25: 2, 26: 4, 27: 8}  # additional information -> bytes of the argument


def _read_arg(mv: bytes | memoryview, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    if info not in _ARG_BYTES:
        raise FormatError("unsupported CBOR length encoding")
    n = _ARG_BYTES[info]
    if pos + n > len(mv):
        raise FormatError("truncated CBOR item")
    arg = int.from_bytes(mv[pos : pos + n], "big")
    if arg < _SHORTEST_FLOOR[info]:
        raise FormatError("CBOR item is not in canonical form (argument not in its shortest form)")
    return arg, pos + n


#: the smallest argument that needs each length encoding (core deterministic encoding)
_SHORTEST_FLOOR = {24: 24, 25: 0x100, 26: 0x10000, 27: 0x100000000}


def _decode_at(mv: memoryview, pos: int, depth: int) -> tuple[Value, int]:
    if depth > _MAX_DEPTH:
        raise FormatError("CBOR nested too deeply")
    if pos >= len(mv):
        raise FormatError("truncated CBOR item")
    ib = mv[pos]
    pos += 1
    major, info = ib >> 5, ib & 0x1F
    if major == 7:
        simple = {20: False, 21: True, 22: None}
        if info not in simple:
            raise FormatError("unsupported CBOR simple value or float")
        return simple[info], pos
    arg, pos = _read_arg(mv, pos, info)
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(mv):
            raise FormatError("truncated CBOR string")
        raw = bytes(mv[pos : pos + arg])
        pos += arg
        if major == 2:
            return raw, pos
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError as e:
            raise FormatError("CBOR text string is not UTF-8") from e
    if major == 4:
        items = []
        for _ in range(arg):
            item, pos = _decode_at(mv, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        result: dict[str, Value] = {}
        previous: bytes | None = None
        for _ in range(arg):
            start = pos
            key, pos = _decode_at(mv, pos, depth + 1)
            if not isinstance(key, str):
                raise FormatError("CBOR map key is not a text string")
            if key in result:
                raise FormatError("duplicate CBOR map key")
            encoded = bytes(mv[start:pos])
            if previous is not None and (len(encoded), encoded) <= (len(previous), previous):
                raise FormatError("CBOR item is not in canonical form (map keys out of order)")
            previous = encoded
            result[key], pos = _decode_at(mv, pos, depth + 1)
        return result, pos
    raise FormatError(f"unsupported CBOR major type {major}")
