"""Message validation and encoding (msgpack), shared by every layer.

A message is a ``dict`` with ``str`` keys whose values are ``None``, ``bool``,
``int`` (signed 64-bit), ``float``, ``str``, ``bytes``, ``list``/``tuple``
(tuples arrive as lists) or ``dict`` of the same. ``bytes`` and ``str`` stay
distinct through a round trip (msgpack's bin and str types).

Validation walks the message once and names the key path of the first bad
value, so an error reads ``message['headers'][1][0]: set is not allowed``.
A ``str`` that UTF-8 cannot encode (a lone surrogate such as ``"\\ud800"``) is
found by :func:`encode`, which names its key path the same way; checking every
string before packing would cost the common case a pass of its own.

Reserved keys (CONTRACT.md section 5, ``docs/protocol.md`` "Reserved names"): top-level
keys starting with ``__wsc_`` or ``__asgi_`` belong to wsgi_channels. Every layer
operation refuses them (:class:`InvalidMessage` naming the key), except the
:data:`SERVER_KEYS` a server adds to the messages it sends on behalf of a client (the
sidecar's ``__wsc_flow`` in ``http.request``, ``__wsc_token`` in ``websocket.connect``);
the push API (``Channel.send``, ``Group.send``), which application code calls, refuses
those too (``encode(..., strict=True)``). Keys the layer itself adds (``__asgi_channel__``,
a history stamp, a membership notice) go in through ``extra``/:func:`with_keys`, never
through validation.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator, Mapping

import msgpack  # type: ignore[import-untyped]  # no type information shipped

from .exceptions import InvalidMessage, MessageTooLarge

__all__ = [
    "RESERVED_KEY",
    "RESERVED_PREFIXES",
    "SERVER_KEYS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "reserved_key",
    "refuse_reserved",
    "validate_message",
    "encode",
    "decode",
    "EncodedMessage",
    "with_keys",
    "encoded_size",
]

#: Key under which layers carry the full ``prefix!suffix`` name of a process-local channel.
RESERVED_KEY = "__asgi_channel__"
#: Top-level message keys starting with these are wsgi_channels' own (CONTRACT.md section 5).
RESERVED_PREFIXES = ("__wsc_", "__asgi_")
#: Reserved keys a server puts in the messages it sends for a client: the layer's ``send``
#: lets them through (the sidecar sends them), the push API refuses them.
SERVER_KEYS = frozenset({"__wsc_flow", "__wsc_token"})

#: Default limit on the encoded size of one message (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024

_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_SCALARS = (str, bytes, float, bool, type(None))
_MAX_DEPTH = 64


def _valid(value: Any, depth: int) -> bool:
    """Whether ``value`` is a plain valid message value: exact builtin types only, no path kept.

    The fast check every message goes through; anything it does not accept (a bad value,
    or a subclass such as an ``IntEnum``) goes to :func:`_check`, which decides and names
    the key path of the first bad value. Scalars inside a dict or list are checked in the
    loop (most values are scalars: no call each).
    """
    t = type(value)
    if t is dict:
        items: Any = value.values()
        for k in value:
            if type(k) is not str:
                return False
    elif t is list or t is tuple:
        items = value
    elif t is str or t is bytes or t is float or t is bool or value is None:
        return True
    elif t is int:
        return _INT_MIN <= value <= _INT_MAX
    else:
        return False
    if depth > _MAX_DEPTH:
        return False
    for v in items:
        t = type(v)
        if t is str or t is bytes or t is bool or v is None or t is float:
            continue
        if t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                return False
        elif not _valid(v, depth + 1):
            return False
    return True


def _path(parts: list) -> str:
    return "message" + "".join(f"[{p!r}]" for p in parts)


def _check(value: Any, parts: list, depth: int) -> None:
    # Exact-type checks first: they are the common case and the cheapest.
    t = type(value)
    if t is str or t is bytes or t is float or t is bool or value is None:
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidMessage(f"{_path(parts)}: int {value} does not fit in signed 64 bits")
        return
    if depth > _MAX_DEPTH:
        raise InvalidMessage(f"{_path(parts)}: nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                raise InvalidMessage(
                    f"{_path(parts)}: key {k!r} is a {type(k).__name__}, keys must be str"
                )
            _check(v, parts + [k], depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, parts + [i], depth + 1)
        return
    if isinstance(value, int) and not isinstance(value, bool):
        # int subclasses (IntEnum, ...) are sent as plain ints.
        _check(int(value), parts, depth)
        return
    if isinstance(value, _SCALARS):
        return
    raise InvalidMessage(
        f"{_path(parts)}: {type(value).__name__} is not allowed "
        "(use None, bool, int, float, str, bytes, list or dict)"
    )


def reserved_key(message: Any, strict: bool = False) -> str | None:
    """The first top-level key of ``message`` that the reserved-name rule refuses, or None.

    ``strict`` refuses :data:`SERVER_KEYS` too (the push API); otherwise they pass.
    """
    for key in message:
        # "_" <= key < "`": starts with "_" (one C comparison each, no slice made).
        if type(key) is str and "_" <= key < "`" and key.startswith(RESERVED_PREFIXES) \
                and (strict or key not in SERVER_KEYS):
            return key
    return None


def _refuse_reserved(key: str) -> None:
    where = "the channel layer" if key.startswith("__asgi_") else "wsgi_channels"
    raise InvalidMessage(
        f"message[{key!r}] is reserved for {where}: application messages may not use keys starting "
        "with '__wsc_' or '__asgi_' (docs/protocol.md, Reserved names)")


def refuse_reserved(message: Any, strict: bool = True) -> None:
    """Raise :class:`InvalidMessage` if ``message`` (a dict) uses a reserved key (``strict``: the
    :data:`SERVER_KEYS` too); anything else is left to :func:`validate_message`."""
    if type(message) is dict:
        for key in message:
            # "_" <= key < "`": the key starts with "_" (a C comparison, no slice made).
            if type(key) is not str or "_" <= key < "`":
                break
        else:
            return
    elif not isinstance(message, dict):
        return
    key = reserved_key(message, strict)
    if key is not None:
        _refuse_reserved(key)


def validate_message(message: Any, strict: bool = False) -> None:
    """Raise :class:`InvalidMessage` unless ``message`` is a valid channel message.

    Reserved keys are refused (``strict``: :data:`SERVER_KEYS` as well; see the module
    docstring).
    """
    if type(message) is not dict:
        if not isinstance(message, dict):
            raise InvalidMessage(f"a message must be a dict, not {type(message).__name__}")
    elif _valid_top(message):
        return
    key = reserved_key(message, strict)
    if key is not None:
        _refuse_reserved(key)
    if not _valid(message, 0):
        _check(message, [], 0)


def _valid_top(message: dict[Any, Any]) -> bool:
    """:func:`_valid` of the message itself, also False when a key sorts before "`" (starts with "_",
    an upper-case letter, a digit...): then the reserved-name rule looks at the keys, and
    :func:`_valid` again. One comparison per key on the common path (lower-case keys)."""
    for k in message:
        if type(k) is not str or k < "`":
            return False
    for v in message.values():
        t = type(v)
        if t is str or t is bytes or t is bool or v is None or t is float:
            continue
        if t is int:
            if not _INT_MIN <= v <= _INT_MAX:
                return False
        elif not _valid(v, 1):
            return False
    return True


def _default(obj: Any) -> Any:
    # Only reached for int subclasses and similar that passed validation.
    if isinstance(obj, int):
        return int(obj)
    raise InvalidMessage(f"{type(obj).__name__} is not allowed in a message")


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's packer: making one per message costs more than packing a small message."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        # A failed pack leaves it empty (msgpack resets its buffer on any error).
        packer = _local.packer = msgpack.Packer(use_bin_type=True, default=_default)
    return packer


def _not_utf8(text: str, where: str) -> str | None:
    """The error for ``text`` (``where`` names it) if UTF-8 cannot encode it, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"{where} {text[:40]!r} cannot be encoded as UTF-8 ({e.reason} at position {e.start})"
    return None


def _unencodable(value: Any, parts: list) -> str | None:
    """The error naming the first ``str`` (a value or a key) in ``value`` that UTF-8 cannot encode."""
    if isinstance(value, str):
        return _not_utf8(value, f"{_path(parts)}: str")
    if isinstance(value, dict):
        for k, v in value.items():
            found = _not_utf8(k, f"{_path(parts)}: key") or _unencodable(v, parts + [k])
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _unencodable(v, parts + [i])
            if found is not None:
                return found
    return None


class EncodedMessage(Mapping[str, Any]):
    """A message validated and encoded once, handed to a layer as it is.

    ``Channel.send``/``Group.send`` inside a consumer encode the message when they are
    called (so a bad message fails there, and later changes to the dict change nothing) and
    queue it in this form; the layer's :func:`encode` then takes its bytes instead of
    packing the message a second time. Read as a mapping it is the message, decoded on
    first use (a read-only view).
    """

    __slots__ = ("data", "_decoded")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._decoded: dict[str, Any] | None = None

    def _message(self) -> dict[str, Any]:
        if self._decoded is None:
            self._decoded = decode(self.data)
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._message()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._message())

    def __len__(self) -> int:
        return len(self._message())

    def __repr__(self) -> str:
        return f"EncodedMessage({self._message()!r})"


def encode(message: dict[str, Any] | EncodedMessage, max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
           extra: dict[str, Any] | None = None, strict: bool = False) -> bytes:
    """Validate ``message`` and encode it; ``extra`` keys (layer-internal) are added unchecked.

    Raises :class:`InvalidMessage` (naming the key path of the bad value, a ``str`` that
    is not valid Unicode included, or a reserved key: ``strict`` refuses the
    :data:`SERVER_KEYS` too) or :class:`MessageTooLarge` (with the sizes). An
    :class:`EncodedMessage` is not packed again: only its size is checked (it was
    validated when it was made).
    """
    if type(message) is EncodedMessage:
        data = message.data if not extra else _packer().pack({**message._message(), **extra})
        if max_size is not None and len(data) > max_size:
            raise MessageTooLarge(f"message encodes to {len(data)} bytes, over the limit of {max_size} bytes")
        return data
    validate_message(message, strict)
    if extra:
        message = {**message, **extra}
    try:
        data = _packer().pack(message)
    except UnicodeEncodeError:  # a lone surrogate: found and named only now, off the common path
        raise InvalidMessage(_unencodable(message, []) or "a str in the message cannot be encoded as UTF-8") from None
    if max_size is not None and len(data) > max_size:
        raise MessageTooLarge(
            f"message encodes to {len(data)} bytes, over the limit of {max_size} bytes"
        )
    return data


def decode(data: bytes) -> dict:
    """Decode bytes made by :func:`encode` (str stays str, bytes stays bytes)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _map_header(n: int) -> bytes:
    if n <= 15:
        return bytes((0x80 | n,))
    if n <= 0xFFFF:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def with_keys(data: bytes, extra: dict[str, Any]) -> bytes:
    """``data`` (a message made by :func:`encode`) with the keys of ``extra`` added, not decoded.

    The layer stamps a stored message this way (``__wsc_h`` of a history group, for the
    sidecars' copies only): the msgpack map's header is rewritten for the new count and
    the packed pairs appended, so the body is never unpacked or checked again. ``extra``'s
    keys are reserved ones, which a valid message never holds, and its values are the
    layer's own (no validation).
    """
    first = data[0]
    if 0x80 <= first <= 0x8F:
        n, start = first & 0x0F, 1
    elif first == 0xDE:
        n, start = int.from_bytes(data[1:3], "big"), 3
    elif first == 0xDF:
        n, start = int.from_bytes(data[1:5], "big"), 5
    else:
        raise ValueError("not an encoded message (a msgpack map)")
    packer = _packer()
    tail = b"".join(packer.pack(key) + packer.pack(value) for key, value in extra.items())
    return _map_header(n + len(extra)) + data[start:] + tail


def encoded_size(value: Any, root: str, key: str) -> int:
    """Bytes ``value`` takes in a message (msgpack), after checking it is a valid message value.

    Errors name it as ``root[key]`` (``presence['info']: set is not allowed``).
    """
    try:
        _check(value, [key], 1)
        try:
            return len(_packer().pack(value))
        except UnicodeEncodeError:
            raise InvalidMessage(_unencodable(value, [key]) or f"message[{key!r}] cannot be encoded as UTF-8") from None
    except InvalidMessage as e:
        text = str(e)
        raise InvalidMessage(root + text[len("message"):] if text.startswith("message[") else text) from None
