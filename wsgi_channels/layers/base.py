"""What every channel layer shares: names, capacities, new channels, the API surface.

Backends subclass :class:`BaseChannelLayer` and implement ``send``, ``receive``,
``group_add``, ``group_discard``, ``group_channels``, ``send_group``, ``flush``
and the statistics methods. Everything that is a rule of the contract (naming,
message validation, capacity lookup, reply-channel names) lives here, so every
backend applies it the same way.
"""
from __future__ import annotations

import base64
import fnmatch
import os
import re
import threading
import warnings
from collections import Counter
from typing import Any, Iterable, Mapping, Pattern

from .. import exceptions as exc
from ..serialization import DEFAULT_MAX_MESSAGE_SIZE, RESERVED_KEY, decode, encode

__all__ = [
    "BaseChannelLayer",
    "CHANNEL_NAME_RE",
    "GROUP_NAME_RE",
    "MAX_NAME_LENGTH",
    "validate_channel_name",
    "validate_group_name",
    "non_local_name",
    "new_process_prefix",
    "SIDECAR_PREFIX",
    "is_sidecar_prefix",
    "DEFAULT_BLOCK_TIMEOUT",
]

# ``\Z``, not ``$``: with ``re.match``, ``$`` also matches before a trailing newline, which
# would let ``"name\n"`` through (and a newline or space in a name breaks the Redis layer's
# member lists).
CHANNEL_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]+((\?|\!)[a-zA-Z0-9\-_.]*)?\Z")
GROUP_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]+\Z")
#: Longest channel or group name accepted (the contract asks for at least 100).
MAX_NAME_LENGTH = 200
#: Longest a blocking ``receive`` waits when no ``timeout`` is given (seconds).
DEFAULT_BLOCK_TIMEOUT = 5.0
#: Characters of randomness in ``new_channel`` names and process prefixes
#: (urlsafe base64: 6 bits each, so 16 characters = 96 bits).
_TOKEN_CHARS = 16
#: Length of the per-connection suffix a process puts after its own prefix (72 random bits).
LOCAL_SUFFIX_CHARS = 12


class _RandomPool:
    """Bytes from the operating system's CSPRNG (``os.urandom``), read a page at a time and each
    handed out once: a token costs a slice instead of a ``getrandom`` call (under load, a system
    call per request is also a point where the process can be preempted). A forked child never
    hands out its parent's bytes."""

    SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            pos = self._pos
            if pos + n > len(self._data):
                self._data, pos = os.urandom(max(self.SIZE, n)), 0
            self._pos = pos + n
            return self._data[pos:pos + n]

    def discard(self) -> None:
        self._lock = threading.Lock()  # a lock held by another thread at fork time stays held here
        self._data, self._pos = b"", 0


_random = _RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random.discard)


def _token(chars: int = _TOKEN_CHARS) -> str:
    """``chars`` characters of CSPRNG randomness in urlsafe base64 (A-Z a-z 0-9 - _, inside the
    name rule), 6 bits each."""
    return base64.urlsafe_b64encode(_random.take((chars * 3 + 3) // 4)).decode()[:chars]


def validate_channel_name(name: Any, receive: bool = False) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`.

    For sending (``receive=False``) a name ending in ``?`` or ``!`` is refused:
    those are patterns or prefixes, never destinations. For receiving, a ``!``
    name must end at the ``!`` and a ``?`` name must have a suffix.
    """
    if not isinstance(name, str):
        raise exc.InvalidChannelName(f"channel name must be a str, not {type(name).__name__}: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise exc.InvalidChannelName(
            f"channel name {name[:40]!r}... is {len(name)} characters, over the limit of {MAX_NAME_LENGTH}"
        )
    if not CHANNEL_NAME_RE.match(name):
        raise exc.InvalidChannelName(
            f"channel name {name!r} is invalid: use letters, digits, '-', '_' and '.', "
            "optionally one '?' or '!' followed by more of them"
        )
    if name.endswith("?"):
        raise exc.InvalidChannelName(
            f"channel name {name!r} ends in '?': that is a pattern for new_channel(), not a channel"
        )
    if "!" in name:
        if receive and not name.endswith("!"):
            raise exc.InvalidChannelName(
                f"cannot receive on {name!r}: receive on its process prefix {non_local_name(name)!r}"
            )
        if not receive and name.endswith("!"):
            raise exc.InvalidChannelName(
                f"cannot send to {name!r}: a process-local channel needs a suffix after '!'"
            )
    return name


def validate_group_name(name: Any) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`InvalidGroupName`."""
    if not isinstance(name, str):
        raise exc.InvalidGroupName(f"group name must be a str, not {type(name).__name__}: {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise exc.InvalidGroupName(
            f"group name {name[:40]!r}... is {len(name)} characters, over the limit of {MAX_NAME_LENGTH}"
        )
    if not GROUP_NAME_RE.match(name):
        raise exc.InvalidGroupName(
            f"group name {name!r} is invalid: use only letters, digits, '-', '_' and '.'"
        )
    return name


def non_local_name(channel: str) -> str:
    """``'prefix!suffix'`` -> ``'prefix!'``; any other name is returned unchanged."""
    i = channel.find("!")
    return channel if i < 0 else channel[: i + 1]


def new_process_prefix(name: str = "process") -> str:
    """An unguessable process-local prefix such as ``'sidecar.Xy3...!'`` for one reading process."""
    validate_group_name(name)
    return f"{name}.{_token()}!"


def new_local_channel(prefix: str) -> str:
    """A reply channel on the process prefix ``prefix`` (``'sidecar.Xy3...!'``): the prefix plus
    a random suffix, so knowing one connection's channel tells nothing about another's."""
    return prefix + _token(LOCAL_SUFFIX_CHARS)


#: The sidecar's process prefixes start with this; they get ``process_capacity`` (see BaseChannelLayer).
SIDECAR_PREFIX = "sidecar."


def is_sidecar_prefix(name: str) -> bool:
    """Whether ``name`` (a non-local ``prefix!``) is one of the sidecar's own process prefixes."""
    return name.endswith("!") and name.startswith(SIDECAR_PREFIX)


CapacityKey = str | Pattern[str]


class BaseChannelLayer:
    """Shared machinery of the shipped layers; see CONTRACT.md section 1.

    Constructor keywords (common to every backend):

    ``expiry``
        seconds a message waits before it is dropped unread (default 60).
    ``group_expiry``
        seconds a group membership lasts after the latest ``group_add`` (default 86400).
    ``capacity``
        messages a channel holds before ``send`` raises :class:`ChannelFull` (default 100).
    ``channel_capacity``
        mapping of fnmatch globs (str) or compiled regexes to capacities; the first match wins.
    ``max_message_size``
        encoded size limit in bytes (default 1 MiB).
    ``process_capacity``
        capacity of a sidecar's own process prefix (``sidecar.<token>!``) that no
        ``channel_capacity`` rule names (default 10000). One prefix carries every
        connection of a sidecar process, so its capacity scales with connections, not with
        one channel (CONTRACT.md section 3), and every process that answers the sidecar
        gets it without configuration. Any other ``prefix!`` has ``capacity``, counted on the
        prefix, as ASGI v1 (and asgiref 1.x's conformance suite) requires.
    """

    extensions = ["groups", "flush", "statistics"]
    #: Whether other processes can reach this layer (False only for the in-memory layer).
    cross_process = True

    ChannelFull = exc.ChannelFull
    MessageTooLarge = exc.MessageTooLarge
    InvalidChannelName = exc.InvalidChannelName
    InvalidMessage = exc.InvalidMessage
    LayerUnavailable = exc.LayerUnavailable

    RESERVED_KEY = RESERVED_KEY

    def __init__(
        self,
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[CapacityKey, int] | Iterable[tuple[CapacityKey, int]] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        process_capacity: int = 10000,
    ) -> None:
        if expiry <= 0 or group_expiry <= 0:
            raise exc.ConfigurationError("expiry and group_expiry must be positive numbers of seconds")
        if int(capacity) < 1:
            raise exc.ConfigurationError(f"capacity must be at least 1, not {capacity!r}")
        self.expiry = float(expiry)
        self.group_expiry = float(group_expiry)
        self.capacity = int(capacity)
        self.max_message_size = int(max_message_size)
        self.process_capacity = int(process_capacity)
        self._capacity_rules = self._compile_capacities(channel_capacity)
        self._capacity_cache: dict[str, int] = {}
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> "BaseChannelLayer":
        """Build a layer from its URL; query parameters are constructor keywords, ``options`` win."""
        from . import parse_options
        from urllib.parse import urlsplit

        return cls(**{**parse_options(urlsplit(url).query), **options})

    # -- capacities -------------------------------------------------------------------------

    @staticmethod
    def _compile_capacities(spec: Any) -> list[tuple[Pattern[str], int]]:
        if not spec:
            return []
        items = spec.items() if isinstance(spec, Mapping) else spec
        rules = []
        for pattern, cap in items:
            if isinstance(pattern, str):
                compiled = re.compile(fnmatch.translate(pattern))
            elif isinstance(pattern, re.Pattern):
                compiled = pattern
            else:
                raise exc.ConfigurationError(
                    f"channel_capacity key {pattern!r} must be a glob string or a compiled regex"
                )
            if int(cap) < 1:
                raise exc.ConfigurationError(f"channel_capacity for {pattern!r} must be at least 1")
            rules.append((compiled, int(cap)))
        return rules

    def get_capacity(self, channel: str) -> int:
        """Capacity of ``channel`` (for ``prefix!suffix``, of ``prefix!``); first matching rule wins."""
        name = non_local_name(channel)
        cap = self._capacity_cache.get(name)
        if cap is None:
            cap = self.process_capacity if is_sidecar_prefix(name) else self.capacity
            for pattern, value in self._capacity_rules:
                if pattern.match(name):
                    cap = value
                    break
            if len(self._capacity_cache) < 10000:
                self._capacity_cache[name] = cap
        return cap

    # -- names and messages -----------------------------------------------------------------

    def new_channel(self, pattern: str) -> str:
        """Return ``pattern`` (which must end in ``?``) plus an unguessable, unused suffix."""
        if not isinstance(pattern, str) or not pattern.endswith("?"):
            raise exc.InvalidChannelName(
                f"new_channel pattern must end in '?' (single-reader channel), got {pattern!r}"
            )
        if len(pattern) + _TOKEN_CHARS > MAX_NAME_LENGTH or not CHANNEL_NAME_RE.match(pattern):
            raise exc.InvalidChannelName(
                f"new_channel pattern {pattern!r} is invalid: letters, digits, '-', '_' and '.' then one '?'"
            )
        for _ in range(10):
            name = pattern + _token()
            if not self._channel_in_use(name):
                return name
        raise exc.ChannelsError("could not find an unused channel name")  # pragma: no cover

    def _channel_in_use(self, channel: str) -> bool:
        """Whether ``channel`` has queued messages; backends may refine this."""
        return False

    def _encode(self, message: dict, channel: str | None = None) -> bytes:
        extra = {RESERVED_KEY: channel} if channel is not None and "!" in channel else None
        return encode(message, self.max_message_size, extra)

    @staticmethod
    def _decode(data: bytes, channel: str) -> tuple[str, dict]:
        """Decode a stored message and return the channel it was sent to (its full ``!`` name)."""
        message = decode(data)
        return message.pop(RESERVED_KEY, channel), message

    @staticmethod
    def _receive_channels(channels: Any) -> list[str]:
        if isinstance(channels, str):
            raise exc.InvalidChannelName(
                f"receive() takes a list of channel names, not the single string {channels!r}"
            )
        names = list(channels)
        for name in names:
            validate_channel_name(name, receive=True)
        return names

    @staticmethod
    def _block_timeout(block: bool, timeout: float | None) -> float:
        if not block:
            return 0.0
        if timeout is None:
            return DEFAULT_BLOCK_TIMEOUT
        if timeout < 0:
            raise ValueError(f"timeout must not be negative, got {timeout!r}")
        return float(timeout)

    # -- statistics -------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[key] += n

    def _local_statistics(self) -> dict[str, int]:
        with self._counts_lock:
            return {
                "channel_full_count": self._counts["channel_full_count"],
                "group_drop_count": self._counts["group_drop_count"],
            }

    # -- API --------------------------------------------------------------------------------

    def send(self, channel: str, message: dict) -> None:
        raise NotImplementedError

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None):
        raise NotImplementedError

    def receive_batch(self, channels: Iterable[str], limit: int = 100, block: bool = False,
                      timeout: float | None = None, shared: bool = False) -> list[tuple[str, dict]]:
        """Up to ``limit`` waiting messages at once, waiting (like :meth:`receive`) only for the first.

        Readers of busy channels (the worker, the sidecar's ``prefix!`` loop) use it to
        take a backlog in few operations; backends override it to do so in one round trip.
        Delivery rules are those of :meth:`receive` (FIFO per channel, at most once).

        Every delivery is its own copy, unless ``shared``: a reader that never changes the
        messages it gets (the sidecar only frames them) allows the layer to give the members
        of one group message the same dict, which saves a copy per member of a broadcast.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int of at least 1, got {limit!r}")
        names = self._receive_channels(channels)
        first = self.receive(names, block=block, timeout=timeout)
        if first[0] is None:
            return []
        batch = [first]
        while len(batch) < limit:
            item = self.receive(names)
            if item[0] is None:
                break
            batch.append(item)
        return batch

    def receive_many(self, channels: Iterable[str], block: bool = False, timeout: float | None = None):
        """Deprecated alias of :meth:`receive` (ASGI v1 name)."""
        warnings.warn("receive_many() is deprecated; use receive()", DeprecationWarning, stacklevel=2)
        return self.receive(channels, block=block, timeout=timeout)

    def group_add(self, group: str, channel: str) -> None:
        raise NotImplementedError

    def group_discard(self, group: str, channel: str) -> None:
        raise NotImplementedError

    def group_channels(self, group: str) -> list[str]:
        raise NotImplementedError

    def send_group(self, group: str, message: dict) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def global_statistics(self) -> dict[str, int]:
        raise NotImplementedError

    def channel_statistics(self, channel: str) -> dict[str, int]:
        raise NotImplementedError

    # -- small key-value store (channel sessions, ordering state) -----------------------------
    #
    # Keys are short strings chosen by wsgi_channels (for example
    # ``"session:" + reply_channel``); values are bytes; every entry expires.
    # Backends keep these beside their queues, in the same store.

    def session_get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or None when absent or expired."""
        raise NotImplementedError

    def session_set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (replacing any value)."""
        raise NotImplementedError

    def session_delete(self, key: str) -> None:
        """Remove ``key``; a no-op when absent."""
        raise NotImplementedError

    @staticmethod
    def _session_key(key: Any) -> str:
        if not isinstance(key, str) or not key or len(key) > 2 * MAX_NAME_LENGTH:
            raise exc.InvalidChannelName(f"session key must be a non-empty str of at most "
                                         f"{2 * MAX_NAME_LENGTH} characters, got {key!r}")
        return key

    def close(self) -> None:
        """Release connections or files; the layer may not be used afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} expiry={self.expiry:g} capacity={self.capacity}>"
