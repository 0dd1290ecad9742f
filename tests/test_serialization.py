"""Property tests of the message validator and encoding (hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_channels.exceptions import InvalidMessage, MessageTooLarge
from wsgi_channels.serialization import decode, encode, validate_message

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) \
    | st.text() | st.binary()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
                      max_leaves=30)
# Keys starting with "__wsc_" or "__asgi_" are reserved (CONTRACT.md section 5), refused by encode().
messages = st.dictionaries(st.text().filter(lambda k: not k.startswith(("__wsc_", "__asgi_"))), values, max_size=8)


@given(messages)
@settings(max_examples=300, deadline=None)
def test_round_trip_is_identity(message):
    assert decode(encode(message, None)) == message


def _types(v):
    if isinstance(v, dict):
        return {k: _types(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_types(x) for x in v]
    return type(v)


@given(messages)
@settings(max_examples=200, deadline=None)
def test_round_trip_keeps_str_and_bytes_apart(message):
    assert _types(decode(encode(message, None))) == _types(message)


bad_values = st.sampled_from([set(), frozenset(), object(), 1j, bytearray(b"x"), range(2), 2**64, -(2**63) - 1])


@given(messages, st.lists(st.text(), min_size=1, max_size=3), bad_values)
@settings(max_examples=200, deadline=None)
def test_bad_value_anywhere_is_named_by_its_key_path(message, path, bad):
    target = message
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key, {}), dict) else target
    target[path[-1]] = bad
    with pytest.raises(InvalidMessage) as info:
        validate_message(message)
    assert str(info.value).startswith("message[")


@given(st.binary(min_size=0, max_size=3000), st.integers(100, 2000))
@settings(max_examples=100, deadline=None)
def test_size_limit_is_exact(payload, limit):
    msg = {"b": payload}
    size = len(encode(msg, None))
    if size > limit:
        with pytest.raises(MessageTooLarge):
            encode(msg, limit)
    else:
        assert encode(msg, limit)


def test_tuples_arrive_as_lists_and_int_subclasses_as_ints():
    import enum

    class Color(enum.IntEnum):
        RED = 1

    assert decode(encode({"t": (1, (2,)), "c": Color.RED}, None)) == {"t": [1, [2]], "c": 1}


def test_deep_nesting_is_refused_clearly():
    msg: dict = {}
    cur = msg
    for _ in range(100):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(InvalidMessage, match="nested more than"):
        validate_message(msg)


def _full_check_accepts(message):
    from wsgi_channels.serialization import _check

    try:
        _check(message, [], 0)
    except InvalidMessage:
        return False
    return True


@given(messages, st.lists(st.text(), max_size=3), bad_values | scalars)
@settings(max_examples=300, deadline=None)
def test_the_fast_check_agrees_with_the_full_one(message, path, value):
    """Every message goes through the fast check (_valid); the full one (_check) decides, and
    names the bad key, only when it says no. For builtin types the two always agree."""
    from wsgi_channels.serialization import _valid

    target = message
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key, {}), dict) else target
    if path:
        target[path[-1]] = value
    assert _valid(message, 0) == _full_check_accepts(message)


@pytest.mark.parametrize("depth", [62, 63, 64, 65, 66])
@pytest.mark.parametrize("leaf", [{}, [], [1], {"a": b"x"}, "s"])
def test_the_fast_check_agrees_at_the_depth_limit(depth, leaf):
    from wsgi_channels.serialization import _valid

    message: dict = {}
    cur = message
    for _ in range(depth - 1):
        cur["x"] = {}
        cur = cur["x"]
    cur["x"] = leaf  # at depth ``depth``
    accepted = _full_check_accepts(message)
    assert _valid(message, 0) == accepted
    assert accepted == (depth <= 64 or (isinstance(leaf, str) and depth == 65))


@given(messages, st.lists(st.text(), min_size=1, max_size=3),
       st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3), st.booleans())
@settings(max_examples=200, deadline=None)
def test_a_lone_surrogate_anywhere_is_an_invalid_message_naming_its_key_path(message, path, bad, as_key):
    # msgpack's own UnicodeEncodeError named neither the rule nor the place.
    target, parts = message, []
    for key in path[:-1]:
        if isinstance(target.get(key, {}), dict):
            target = target.setdefault(key, {})
            parts.append(key)
    if as_key:
        target[bad] = 1
        expected = "message" + "".join(f"[{p!r}]" for p in parts) + ": key"
    else:
        target[path[-1]] = "ok" + bad
        expected = "message" + "".join(f"[{p!r}]" for p in parts + [path[-1]]) + ": str"
    with pytest.raises(InvalidMessage) as info:
        encode(message, None)
    assert str(info.value).startswith(expected) and "cannot be encoded as UTF-8" in str(info.value)
    assert decode(encode({"after": "\u2603"}, None)) == {"after": "\u2603"}  # the thread's packer still works
