"""Canonical CBOR (fsobj.model.cbor): unit tests and Hypothesis round trips."""

from __future__ import annotations

import enum
import random
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsobj.errors import FormatError
from fsobj.model import cbor

# ---------------------------------------------------------------- strategies

ints = st.integers(min_value=-(2**64), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.binary(max_size=64) | st.text(max_size=32)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also compares types (so True != 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def enc_head(major: int, n: int, width: int) -> bytes:
    """An item head with the argument in a chosen width (0 = in the initial byte)."""
    info = {0: n, 1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | info]) + (n.to_bytes(width, "big") if width else b"")


# ---------------------------------------------------------------- round trips


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip(v):
    b = cbor.encode(v)
    back = cbor.decode(b)
    assert same(back, v)
    assert cbor.encode(back) == b


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=30), ints, max_size=30))
def test_map_keys_in_rfc8949_core_deterministic_order(d):
    """Keys sort by the bytewise order of their encoded form (RFC 8949 section 4.2.1)."""
    b = cbor.encode(d)
    pos = len(enc_head(5, len(d), _width(len(d))))
    encoded_keys = []
    for _ in range(len(d)):
        n = _flat_item_len(b, pos)
        encoded_keys.append(b[pos : pos + n])
        pos += n
        pos += _flat_item_len(b, pos)
    assert pos == len(b)
    assert encoded_keys == sorted(set(encoded_keys))


def _width(n: int) -> int:
    return 0 if n < 24 else 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 0x100000000 else 8


def _flat_item_len(b: bytes, pos: int) -> int:
    """Length of the integer or string item at ``pos``."""
    ib = b[pos]
    info = ib & 0x1F
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info, 0)
    arg = info if width == 0 else int.from_bytes(b[pos + 1 : pos + 1 + width], "big")
    return 1 + width + (arg if ib >> 5 in (2, 3) else 0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_accepts_only_canonical_bytes(b):
    """Arbitrary input is refused with FormatError or decodes to a value that re-encodes to it."""
    try:
        v = cbor.decode(b)
    except FormatError:
        return
    assert cbor.encode(v) == b


@settings(max_examples=200, deadline=None)
@given(values, st.data())
def test_mutated_encodings_never_crash(v, data):
    b = bytearray(cbor.encode(v))
    i = data.draw(st.integers(0, len(b) - 1))
    b[i] = data.draw(st.integers(0, 255))
    try:
        out = cbor.decode(bytes(b))
    except FormatError:
        return
    assert cbor.encode(out) == bytes(b)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 2, 4, 8]), st.sampled_from([0, 1]), st.data())
def test_integers_only_in_shortest_form(width, major, data):
    n = data.draw(st.integers(0, 23 if width == 0 else (1 << (8 * width)) - 1))
    b = enc_head(major, n, width)
    value = n if major == 0 else -1 - n
    if width == _width(n):
        assert cbor.decode(b) == value
    else:
        with pytest.raises(FormatError):
            cbor.decode(b)


@settings(max_examples=100, deadline=None)
@given(values, st.binary(min_size=1, max_size=4))
def test_trailing_bytes_refused(v, extra):
    with pytest.raises(FormatError):
        cbor.decode(cbor.encode(v) + extra)


@settings(max_examples=100, deadline=None)
@given(values)
def test_truncation_refused(v):
    b = cbor.encode(v)
    for n in range(len(b)):
        with pytest.raises(FormatError):
            cbor.decode(b[:n])


# ---------------------------------------------------------------- unit tests


@pytest.mark.parametrize(
    ("value", "hexstr"),
    [
        (0, "00"),
        (10, "0a"),
        (23, "17"),
        (24, "1818"),
        (100, "1864"),
        (1000, "1903e8"),
        (1000000, "1a000f4240"),
        (1000000000000, "1b000000e8d4a51000"),
        (-10, "29"),
        (-100, "3863"),
        (b"\x01\x02\x03\x04", "4401020304"),
        ("IETF", "6449455446"),
        ('"\\', "62225c"),
        ([1, 2, 3], "83010203"),
        (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
        ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
        (["a", {"b": "c"}], "826161a161626163"),
    ],
)
def test_rfc8949_appendix_a(value, hexstr):
    assert cbor.encode(value).hex() == hexstr
    assert same(cbor.decode(bytes.fromhex(hexstr)), value)


def test_tuples_bytearrays_and_memoryviews_encode_like_lists_and_bytes():
    assert cbor.encode((1, 2)) == cbor.encode([1, 2])
    assert cbor.encode(bytearray(b"ab")) == cbor.encode(memoryview(b"ab")) == cbor.encode(b"ab")


def test_map_key_order_is_length_first():
    # "b" < "aa" because the encoded key 61 62 is shorter than 62 61 61
    assert cbor.encode({"aa": 1, "b": 2}).hex() == "a2616202626161" + "01"
    assert list(cbor.decode(bytes.fromhex("a2616202626161" + "01"))) == ["b", "aa"]
    with pytest.raises(FormatError):
        cbor.decode(bytes.fromhex("a2626161016162" + "02"))


@pytest.mark.parametrize(
    "hexstr",
    [
        "a2616201616102",  # unsorted keys
        "a2616101616102",  # duplicate keys
        "a10102",  # integer key
        "a1410001",  # byte-string key
        "f93c00",  # half float 1.0
        "fa3f800000",  # single float 1.0
        "fb3ff0000000000000",  # double float 1.0
        "f7",  # undefined
        "f0",  # simple value 16
        "f818",  # simple value 24
        "c0",  # tag 0 (missing content)
        "c100",  # tag 1 over 0
        "5f40ff",  # indefinite byte string
        "7f60ff",  # indefinite text string
        "9fff",  # indefinite array
        "bfff",  # indefinite map
        "1c",  # reserved info 28
        "1d",  # reserved info 29
        "1e",  # reserved info 30
        "ff",  # break outside an indefinite item
        "61ff",  # invalid UTF-8
        "63eda080",  # UTF-8 encoded surrogate
        "62c0af",  # overlong UTF-8
        "5b" + "ff" * 8,  # byte string claiming 2**64-1 bytes
        "9b" + "ff" * 8,  # array claiming 2**64-1 items
        "bb" + "ff" * 8,  # map claiming 2**64-1 pairs
        "",
    ],
)
def test_refused(hexstr):
    with pytest.raises(FormatError):
        cbor.decode(bytes.fromhex(hexstr))


def test_nesting_limit():
    ok = bytes.fromhex("81" * 32 + "00")
    assert cbor.encode(cbor.decode(ok)) == ok
    with pytest.raises(FormatError):
        cbor.decode(bytes.fromhex("81" * 33 + "00"))
    deep: Any = 0
    for _ in range(33):
        deep = [deep]
    with pytest.raises(ValueError):
        cbor.encode(deep)


@pytest.mark.parametrize("value", [1.0, float("nan"), {1: 2}, {b"k": 1}, {1, 2}, object()])
def test_encoder_refuses_unsupported_types(value):
    with pytest.raises(TypeError):
        cbor.encode(value)


def test_encoder_refuses_integers_out_of_range():
    with pytest.raises(ValueError):
        cbor.encode(2**64)
    with pytest.raises(ValueError):
        cbor.encode(-(2**64) - 1)
    assert cbor.encode(2**64 - 1).hex() == "1bffffffffffffffff"
    assert cbor.encode(-(2**64)).hex() == "3bffffffffffffffff"


def test_bools_are_not_integers():
    assert cbor.encode(True) == b"\xf5" and cbor.encode(1) == b"\x01"
    assert cbor.decode(b"\xf5") is True and cbor.decode(b"\xf4") is False and cbor.decode(b"\xf6") is None


# ---------------------------------------------------------------- fast encoder vs a reference encoder


def ref_encode(v: Any) -> bytes:
    """A straightforward RFC 8949 core deterministic encoder, independent of fsobj.model.cbor."""

    def head(major: int, n: int) -> bytes:
        for limit, info, width in ((24, n, 0), (1 << 8, 24, 1), (1 << 16, 25, 2), (1 << 32, 26, 4), (1 << 64, 27, 8)):
            if n < limit:
                return bytes([major << 5 | info]) + (n.to_bytes(width, "big") if width else b"")
        raise ValueError("integer too large for CBOR")

    if v is None or isinstance(v, bool):
        return {None: b"\xf6", False: b"\xf4", True: b"\xf5"}[v]
    if isinstance(v, int):
        return head(0, v) if v >= 0 else head(1, -1 - v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return head(2, len(bytes(v))) + bytes(v)
    if isinstance(v, str):
        return head(3, len(v.encode())) + v.encode()
    if isinstance(v, (list, tuple)):
        return head(4, len(v)) + b"".join(ref_encode(x) for x in v)
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError("CBOR map keys must be text strings")
        pairs = sorted((ref_encode(k), ref_encode(x)) for k, x in v.items())
        pairs.sort(key=lambda kv: len(kv[0]))  # stable: bytewise within equal lengths
        return head(5, len(pairs)) + b"".join(k + x for k, x in pairs)
    raise TypeError(type(v).__name__)


_BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
boundary_ints = st.sampled_from(_BOUNDARIES + [-1 - n for n in _BOUNDARIES]) | ints
_LENGTHS = [0, 1, 23, 24, 255, 256, 65535, 65536]
boundary_bytes = st.sampled_from(_LENGTHS).map(lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256))
boundary_text = st.sampled_from(_LENGTHS).map(lambda n: "x" * n) | st.text(max_size=40)
# few distinct key names, so the same key sets recur (in different insertion orders) and hit the key cache
map_keys = st.sampled_from(["", "a", "b", "aa", "type", "v", "seq", "é", "\U0001f600", "x" * 23, "x" * 24]) | st.text(
    max_size=30
)
fast_scalars = st.none() | st.booleans() | boundary_ints | boundary_bytes | boundary_text
fast_values = st.recursive(
    fast_scalars,
    lambda children: (
        st.lists(children, max_size=30)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(map_keys, children, max_size=30)
    ),
    max_leaves=60,
)


@settings(max_examples=400, deadline=None)
@given(fast_values)
def test_encoder_matches_reference_encoder(v):
    assert cbor.encode(v) == ref_encode(v)
    assert cbor.encode(v) == ref_encode(v)  # again, now with every key set cached


def test_encoder_matches_reference_for_boundary_ints_and_lengths():
    for n in _BOUNDARIES:
        for v in (n, -1 - n, [n, -1 - n], {"k": n}):
            assert cbor.encode(v) == ref_encode(v)
    for n in [*_LENGTHS, 2**16 + 1]:
        for v in (b"\xab" * n, "y" * n, bytearray(n), memoryview(b"z" * n), [0] * n, {f"{i:06d}": i for i in range(n)}):
            if not isinstance(v, dict) or n <= 300:
                assert cbor.encode(v) == ref_encode(v)


def test_encoder_key_cache_many_key_sets_and_eviction():
    rng = random.Random(1234)
    names = ["a", "b", "c", "aa", "bb", "ab", "type", "mode", "seq", "\xe9", "z" * 24, ""]
    for _ in range(3 * cbor._KEY_ORDERS_MAX):
        d = {
            k: rng.choice([0, 24, -25, 2**40, b"", "s", None, True, [1]]) for k in rng.sample(names, rng.randint(0, 9))
        }
        d[str(rng.randrange(10**6))] = False  # many distinct key sets, so the cache fills and is emptied
        assert cbor.encode(d) == ref_encode(d)
        assert cbor.encode([d, d]) == ref_encode([d, d])
    assert len(cbor._KEY_ORDERS) <= cbor._KEY_ORDERS_MAX
    big = {f"k{i}": i for i in range(cbor._KEY_ORDERS_MAX_KEYS + 5)}
    assert cbor.encode(big) == ref_encode(big)


def test_encoder_subclasses_take_the_fallbacks():
    class Flag(enum.IntEnum):
        A = 7
        B = 300

    class S(str):
        pass

    class B(bytes):
        pass

    class L(list):
        pass

    class D(dict):
        pass

    v = [Flag.A, Flag.B, S("s"), B(b"b"), L([1, 2]), D({S("k"): 1, "j": D(a=2)}), OrderedDict(z=1, a=2)]
    assert cbor.encode(v) == ref_encode(v)
    assert cbor.encode(v) == ref_encode(v)


def test_encoder_errors_are_unchanged_with_a_warm_key_cache():
    good = {"a": 1, "b": 2}
    cbor.encode(good)
    with pytest.raises(TypeError):
        cbor.encode({"a": 1, 2: 2})
    with pytest.raises(TypeError):
        cbor.encode({"a": 1, "b": 2.5})
    with pytest.raises(TypeError):
        cbor.encode([b"x", object()])
    with pytest.raises(ValueError):
        cbor.encode({"a": 2**64})
    with pytest.raises(ValueError):
        cbor.encode([-(2**64) - 1])
    with pytest.raises(UnicodeEncodeError):
        cbor.encode({"a": "\ud800"})


@pytest.mark.parametrize("make", [list, tuple, lambda x: {"k": x[0]} if x else {}])
def test_encoder_nesting_limit_for_every_container(make):
    def nest(levels: int, leaf: Any) -> Any:
        for _ in range(levels):
            leaf = make([leaf])
        return leaf

    assert cbor.encode(nest(32, 0)) == ref_encode(nest(32, 0))
    assert cbor.encode(nest(32, make([]))) == ref_encode(nest(32, make([])))  # empty container at depth 32: fine
    with pytest.raises(ValueError):
        cbor.encode(nest(33, 0))
    with pytest.raises(ValueError):
        cbor.encode(nest(33, make([])))
    with pytest.raises(TypeError):  # a bad key is found before the too-deep value under it
        cbor.encode(nest(32, {1: 0}))
