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

Must not know: what the values mean (see ``fsobj.model.header``).
"""

from __future__ import annotations

import struct
from typing import Any

from fsobj.errors import FormatError

Value = Any  # int | bytes | str | bool | None | list[Value] | dict[str, Value]

_MAX_DEPTH = 32


def _head(major: int, n: int) -> bytes:
    """The initial byte(s) of an item: major type + argument, shortest form."""
    mt = major << 5
    if n < 24:
        return bytes([mt | n])
    if n < 0x100:
        return bytes([mt | 24, n])
    if n < 0x10000:
        return bytes([mt | 25]) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes([mt | 26]) + struct.pack(">I", n)
    if n < 0x10000000000000000:
        return bytes([mt | 27]) + struct.pack(">Q", n)
    raise ValueError("integer too large for CBOR")


def encode(value: Value) -> bytes:
    """Encode ``value`` canonically. Raises ``TypeError`` on unsupported types."""
    out = bytearray()
    _encode_into(out, value, 0)
    return bytes(out)


def _encode_into(out: bytearray, value: Value, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("structure nested too deeply")
    if value is False:
        out.append(0xF4)
    elif value is True:
        out.append(0xF5)
    elif value is None:
        out.append(0xF6)
    elif isinstance(value, int):
        if value >= 0:
            out += _head(0, value)
        else:
            out += _head(1, -1 - value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        out += _head(2, len(b))
        out += b
    elif isinstance(value, str):
        b = value.encode("utf-8")
        out += _head(3, len(b))
        out += b
    elif isinstance(value, (list, tuple)):
        out += _head(4, len(value))
        for item in value:
            _encode_into(out, item, depth + 1)
    elif isinstance(value, dict):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("CBOR map keys must be text strings")
            items.append((encode(k), v))
        items.sort(key=lambda kv: (len(kv[0]), kv[0]))
        out += _head(5, len(items))
        for kb, v in items:
            out += kb
            _encode_into(out, v, depth + 1)
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


def _read_arg(mv: memoryview, pos: int, info: int) -> tuple[int, int]:
    if info < 24:
        return info, pos
    sizes = {24: 1, 25: 2, 26: 4, 27: 8}
    if info not in sizes:
        raise FormatError("unsupported CBOR length encoding")
    n = sizes[info]
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
