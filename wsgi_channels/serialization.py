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
"""
from __future__ import annotations

import threading
from typing import Any, Iterator, Mapping

import msgpack  # type: ignore[import-untyped]  # no type information shipped

from .exceptions import InvalidMessage, MessageTooLarge

__all__ = [
    "RESERVED_KEY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "validate_message",
    "encode",
    "decode",
    "EncodedMessage",
]

#: Key under which layers carry the full ``prefix!suffix`` name of a process-local channel.
RESERVED_KEY = "__asgi_channel__"

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


def validate_message(message: Any) -> None:
    """Raise :class:`InvalidMessage` unless ``message`` is a valid channel message."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"a message must be a dict, not {type(message).__name__}")
    if RESERVED_KEY in message:
        raise InvalidMessage(f"message[{RESERVED_KEY!r}] is reserved for the channel layer")
    if not _valid(message, 0):
        _check(message, [], 0)


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
           extra: dict[str, Any] | None = None) -> bytes:
    """Validate ``message`` and encode it; ``extra`` keys (layer-internal) are added unchecked.

    Raises :class:`InvalidMessage` (naming the key path of the bad value, a ``str`` that
    is not valid Unicode included) or :class:`MessageTooLarge` (with the sizes). An
    :class:`EncodedMessage` is not packed again: only its size is checked.
    """
    if type(message) is EncodedMessage:
        data = message.data if not extra else _packer().pack({**message._message(), **extra})
        if max_size is not None and len(data) > max_size:
            raise MessageTooLarge(f"message encodes to {len(data)} bytes, over the limit of {max_size} bytes")
        return data
    validate_message(message)
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
