"""The format of one queued entry of the Redis layer, in one place, for Python and for the Lua.

An entry is one element of a queue's LIST::

    DDDDDDDDDDDDD m <body>                                  a message for the queue's channel
    DDDDDDDDDDDDD t <name> <name> ...\\n<body>                 one message for these members of a prefix
    DDDDDDDDDDDDD r <count> <P:t: key>\\n<body>                one message for the members that key holds
    DDDDDDDDDDDDD h <offset>\\n<body>                        a kept message of a history group (not a queue)

(without the spaces around the kind byte). ``D``: :data:`DEADLINE_DIGITS` ASCII digits of the
deadline in ms since the epoch on the Redis clock (13 digits last until the year 2286); then
one kind byte; then, for ``m``, the body (the encoded, maybe encrypted, message). A plain
channel's queue holds only ``m`` entries. A send to a process-local channel is a ``t`` entry
naming it alone; a group message is one ``t`` entry per process prefix naming all its members
there, or, from ``REF_MIN`` members (see :mod:`.scripts`), an ``r`` entry naming them through
a ``P:t:`` key, so no script copies thousands of names per message.

Channel names hold neither spaces nor newlines (the name rules of
:mod:`wsgi_channels.layers.names`), so the separators never occur inside a name.

Python builds and parses entries with the functions here. The Lua scripts get the same
constants as locals from :data:`LUA_CONSTANTS` (generated from the constants below, put first
in every script that touches an entry), and their parsing helpers from :data:`LUA_HELPERS`;
``tests/test_redis_entries.py`` round-trips every kind between the two on a real server.
"""
from __future__ import annotations

from ...exceptions import ChannelsError

__all__ = [
    "DEADLINE_DIGITS", "KIND_AT", "REST_AT", "MESSAGE", "TARGETS", "REFERENCE", "SEPARATOR", "FIELD_END",
    "MESSAGE_KIND", "TARGETS_KIND", "REFERENCE_KIND", "HISTORY", "history_item",
    "message_head", "targets_head", "reference_head", "build", "append_entry",
    "deadline", "is_message", "message_body", "parse", "names", "reference",
    "LUA_CONSTANTS", "LUA_HELPERS", "lua_helpers",
]

#: Digits of the deadline at the start of every entry (ms since the epoch, zero-padded).
DEADLINE_DIGITS = 13
#: Offset of the kind byte.
KIND_AT = DEADLINE_DIGITS
#: Offset of what follows the kind: the body of an ``m`` entry, the target field of ``t`` and ``r``.
REST_AT = KIND_AT + 1
#: Kind bytes: a message for the queue's channel, for the members listed, for the members of a key.
MESSAGE, TARGETS, REFERENCE = b"m", b"t", b"r"
#: Kind byte of an item of a history group's kept stream (``P:h:{group}``, see :mod:`.history`):
#: the deadline is when it ages out, the field its offset.
HISTORY = b"h"
#: The same kinds as :func:`parse` returns them (the byte's value: comparing ints is the cheapest).
MESSAGE_KIND, TARGETS_KIND, REFERENCE_KIND = MESSAGE[0], TARGETS[0], REFERENCE[0]
#: Between the names of a ``t`` entry, and between the count and the key of an ``r`` entry.
SEPARATOR = b" "
#: Ends the target field of ``t`` and ``r`` entries; the body follows.
FIELD_END = b"\n"

_SEPARATOR_STR = SEPARATOR.decode()
_ENTRY = b"%%0%dd%%s%%s" % DEADLINE_DIGITS
_COMMAND_AND_ENTRY = b"%%s$%%d\r\n%s\r\n" % _ENTRY


# -- building -------------------------------------------------------------------------------------


def message_head() -> bytes:
    """What follows the deadline in an ``m`` entry, before the body."""
    return MESSAGE


def targets_head(targets: list[str]) -> bytes:
    """What follows the deadline in a ``t`` entry for ``targets``, before the body."""
    return TARGETS + SEPARATOR.join(name.encode() for name in targets) + FIELD_END


def reference_head(count: int, key: bytes) -> bytes:
    """What follows the deadline in an ``r`` entry for the ``count`` members held by ``key``."""
    return REFERENCE + b"%d" % count + SEPARATOR + key + FIELD_END


def build(deadline_ms: int, head: bytes, body: bytes) -> bytes:
    """An entry: its deadline (ms on the Redis clock), its head (from the ``*_head`` functions), the body."""
    return _ENTRY % (deadline_ms, head, body)


def append_entry(command: bytes, deadline_ms: int, head: bytes, body: bytes) -> bytes:
    """``command`` (a packed command up to its last argument) followed by the entry as that last
    argument (a RESP bulk string): the send's whole payload, the body copied once."""
    return _COMMAND_AND_ENTRY % (command, DEADLINE_DIGITS + len(head) + len(body), deadline_ms, head, body)


# -- parsing --------------------------------------------------------------------------------------


def deadline(entry: bytes) -> int:
    """The deadline of ``entry``, in ms on the Redis clock: it is delivered only before then."""
    return int(entry[:DEADLINE_DIGITS])


def is_message(entry: bytes) -> bool:
    """Whether ``entry`` is an ``m`` entry (its body is for the queue's own channel)."""
    return entry[KIND_AT] == MESSAGE_KIND


def message_body(entry: bytes) -> memoryview:
    """The body of an ``m`` entry (a plain channel's queue holds no other kind)."""
    return memoryview(entry)[REST_AT:]


def parse(entry: bytes) -> tuple[int, bytes | None, memoryview]:
    """``(kind, target field, body)`` of ``entry``: the kind as ``MESSAGE_KIND``, ``TARGETS_KIND`` or
    ``REFERENCE_KIND``; the field None for an ``m`` entry.

    The field is parsed further with :func:`names` (``t``) or :func:`reference` (``r``).
    Raises :class:`~wsgi_channels.exceptions.ChannelsError` for an entry of no known shape.
    """
    kind = entry[KIND_AT]
    if kind == MESSAGE_KIND:
        return kind, None, memoryview(entry)[REST_AT:]
    end = entry.find(FIELD_END, REST_AT)
    if end < 0 or (kind != TARGETS_KIND and kind != REFERENCE_KIND):
        raise ChannelsError(f"a queued entry of kind {entry[KIND_AT:REST_AT]!r} could not be parsed: "
                            "is another application using the same key prefix?")
    return kind, entry[REST_AT:end], memoryview(entry)[end + 1:]


def names(field: bytes) -> list[str]:
    """The member names of a ``t`` entry's field."""
    return field.decode().split(_SEPARATOR_STR)


def reference(field: bytes) -> tuple[int, bytes]:
    """``(count, key)`` of an ``r`` entry's field: how many members the ``P:t:`` key holds, and the key."""
    count, _, key = field.partition(SEPARATOR)
    return int(count), key


def history_item(item: bytes) -> tuple[int, memoryview]:
    """``(offset, body)`` of an item of a history group's kept stream."""
    end = item.find(FIELD_END, REST_AT)
    if end < 0 or item[KIND_AT:REST_AT] != HISTORY:
        raise ChannelsError("a kept history item could not be parsed: is another application using the same "
                            "key prefix?")
    return int(item[REST_AT:end]), memoryview(item)[end + 1:]


# -- the Lua side ---------------------------------------------------------------------------------


def _lua_string(value: bytes) -> str:
    return "'" + "".join(f"\\{b}" if not 0x20 <= b < 0x7f or b in b"'\\" else chr(b) for b in value) + "'"


#: Locals that every script touching an entry starts with (Lua strings are 1-based: an offset
#: here is one more than the Python offset of the same byte).
LUA_CONSTANTS = f"""
-- The entry format, generated from wsgi_channels/layers/redis/entries.py.
local E_DEADLINE_END, E_KIND_AT, E_REST_AT = {DEADLINE_DIGITS}, {KIND_AT + 1}, {REST_AT + 1}
local E_MESSAGE, E_TARGETS, E_REFERENCE = {_lua_string(MESSAGE)}, {_lua_string(TARGETS)}, {_lua_string(REFERENCE)}
local E_TARGETS_BYTE, E_REFERENCE_BYTE = {TARGETS_KIND}, {REFERENCE_KIND}
local E_SEPARATOR, E_FIELD_END = {_lua_string(SEPARATOR)}, {_lua_string(FIELD_END)}
local E_HISTORY = {_lua_string(HISTORY)}
"""

def lua_helpers(fetch: str) -> str:
    """The entry helpers of the scripts' ``common()`` table ``C`` (made only when a script needs
    them). ``fetch`` is the Lua expression that reads the member names an ``r`` entry's reference
    ``ref`` stands for (a ``GET`` of that key on standalone Redis; on a Cluster, an ``HGET`` of the
    bucket's hash, so that the key is declared). An entry is built in Lua as ``deadline .. E_MESSAGE
    .. body``, ``deadline .. E_TARGETS .. names .. E_FIELD_END .. body`` or ``deadline .. E_REFERENCE
    .. count .. E_SEPARATOR .. ref .. E_FIELD_END .. body``, where ``deadline`` comes ready from the
    client (13 digits)."""
    return r"""
  function C.deadline(v)
    return tonumber(string.sub(v, 1, E_DEADLINE_END))
  end

  function C.split(names)
    local out = {}
    for name in string.gmatch(names, '[^' .. E_SEPARATOR .. ']+') do out[#out + 1] = name end
    return out
  end

  -- the members an entry is for: none for 'm', listed for 't', behind a reference for 'r'
  function C.targets_of(v)
    local kind = string.byte(v, E_KIND_AT)
    local nl = string.find(v, E_FIELD_END, E_REST_AT, true)
    if kind == E_TARGETS_BYTE then return C.split(string.sub(v, E_REST_AT, nl - 1)) end
    if kind ~= E_REFERENCE_BYTE then return {} end
    local ref = string.sub(v, string.find(v, E_SEPARATOR, E_REST_AT, true) + 1, nl - 1)
    local names = """ + fetch + r"""
    if not names then return {} end
    return C.split(names)
  end

  -- how many members an entry is for
  function C.count_of(v)
    local kind = string.byte(v, E_KIND_AT)
    if kind == E_TARGETS_BYTE then return #C.targets_of(v) end
    if kind == E_REFERENCE_BYTE then
      return tonumber(string.sub(v, E_REST_AT, string.find(v, E_SEPARATOR, E_REST_AT, true) - 1))
    end
    return 1
  end
"""


#: The entry helpers of the standalone scripts: an ``r`` entry's reference is a ``P:t:`` key.
LUA_HELPERS = lua_helpers("redis.call('GET', ref)")
