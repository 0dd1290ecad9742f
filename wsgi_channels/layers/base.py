"""What every channel layer shares: names, capacities, new channels, the API surface.

:class:`BaseChannelLayer` is the whole contract a backend implements, in one place: every
method the push API, the worker, the consumers and the sidecar call. A backend implements
``send``, ``receive``, ``group_add``, ``group_discard``, ``group_channels``, ``send_group``,
``flush``, the statistics and the session methods (``session_compare_and_set`` included);
``send_many``, ``receive_batch`` and ``send_many_then_receive`` have default implementations
built on those, which a backend overrides when it can do the same in fewer round trips.
Everything that is a rule of the contract (naming, message validation, capacity lookup,
reply-channel names) lives here too, so every backend applies it the same way.
"""
from __future__ import annotations

import base64
import fnmatch
import os
import re
import threading
import warnings
from collections import Counter
from typing import Any, Iterable, Mapping, Pattern, Sequence, Union

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
    "MessageDict",
    "Received",
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


CapacityKey = Union[str, Pattern[str]]
#: A channel message: a dict with str keys (values as :mod:`wsgi_channels.serialization` allows).
MessageDict = dict[str, Any]
#: What :meth:`BaseChannelLayer.receive` returns: ``(channel, message)``, or ``(None, None)``.
Received = Union[tuple[str, MessageDict], tuple[None, None]]


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

    def _encode(self, message: MessageDict, channel: str | None = None) -> bytes:
        extra = {RESERVED_KEY: channel} if channel is not None and "!" in channel else None
        return encode(message, self.max_message_size, extra)

    @staticmethod
    def _decode(data: bytes, channel: str) -> tuple[str, MessageDict]:
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

    # -- the contract: what the worker, the sidecar and the push API call --------------------
    #
    # A backend implements the methods that raise NotImplementedError. The others have
    # default implementations built on those, correct if not the fastest; a backend overrides
    # them where it can do the same work in fewer round trips (the Redis layer overrides all
    # of them), and says so with ``batch_round_trips`` and ``send_many_batches``. The contract
    # suite (tests/test_layer_contract.py) runs every backend through both.

    #: Round trips one :meth:`receive_batch` costs however many messages it takes, when that is a
    #: constant (1 on Redis), else 0 (the default implementation costs one receive per message).
    #: The worker asks for as many messages as it has idle threads every time when it is 1.
    batch_round_trips: int = 0
    #: Whether :meth:`send_many` costs fewer round trips than one :meth:`send` per item (Redis: one
    #: pipeline per shard). The sidecar and the worker's reply sender collect sends from many
    #: connections or threads into ``send_many`` calls only then; otherwise each sends on its own.
    send_many_batches: bool = False

    def send(self, channel: str, message: MessageDict) -> None:
        """Queue a copy of ``message`` on ``channel`` (a later change of the dict changes nothing).

        Never blocks. Raises :class:`~wsgi_channels.exceptions.InvalidChannelName` (also a
        ``TypeError``) for a bad name, ``InvalidMessage`` for a value that is not allowed,
        ``MessageTooLarge`` over ``max_message_size``, ``ChannelFull`` when the channel (for
        ``prefix!suffix``, its prefix) holds its capacity, ``LayerUnavailable`` when the store
        cannot be reached (the message was not queued).
        """
        raise NotImplementedError

    def send_many(self, items: Sequence[tuple[str, MessageDict]]) -> list[BaseException | None]:
        """Send several ``(channel, message)`` items; one outcome per item, in order.

        An outcome is ``None`` when the item was queued, else the exception :meth:`send` would
        have raised for it alone; one item's failure never stops the others, and nothing is
        raised. Items for one channel are queued in the order given. This default sends them
        one by one; a backend that can pipeline them overrides it and sets ``send_many_batches``.
        """
        outcomes: list[BaseException | None] = []
        for channel, message in items:
            try:
                self.send(channel, message)
            except Exception as e:
                outcomes.append(e)
            else:
                outcomes.append(None)
        return outcomes

    def receive(self, channels: Iterable[str], block: bool = False, timeout: float | None = None) -> Received:
        """The next message of one of ``channels``, as ``(channel, message)``, or ``(None, None)``.

        With ``block``, waits for one up to ``timeout`` seconds (default
        :data:`DEFAULT_BLOCK_TIMEOUT`, never for ever). FIFO per channel, at most once; a busy
        channel never starves a quiet one of the same call. A ``prefix!`` name receives every
        ``prefix!suffix`` channel and returns the full name. ``channels`` is a list (a single
        string is refused); an empty list returns ``(None, None)`` at once.
        """
        raise NotImplementedError

    def receive_batch(self, channels: Iterable[str], limit: int = 100, block: bool = False,
                      timeout: float | None = None, shared: bool = False) -> list[tuple[str, MessageDict]]:
        """Up to ``limit`` waiting messages at once, waiting (like :meth:`receive`) only for the first.

        Readers of busy channels (the worker, the sidecar's ``prefix!`` loop) use it to
        take a backlog in few operations; backends override it to do so in one round trip.
        Delivery rules are those of :meth:`receive` (FIFO per channel, at most once).

        Every delivery is its own copy, unless ``shared``: a reader that never changes the
        messages it gets (the sidecar only frames them) allows the layer to give the members
        of one group message the same dict, which saves a copy per member of a broadcast.
        This default takes one message per :meth:`receive` and copies every one.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be an int of at least 1, got {limit!r}")
        names = self._receive_channels(channels)
        channel, message = self.receive(names, block=block, timeout=timeout)
        batch: list[tuple[str, MessageDict]] = []
        while channel is not None and message is not None:
            batch.append((channel, message))
            if len(batch) >= limit:
                break
            channel, message = self.receive(names)
        return batch

    def send_many_then_receive(self, items: Sequence[tuple[str, MessageDict]], channels: Iterable[str],
                               limit: int, timeout: float,
                               outcomes: list[BaseException | None]) -> list[tuple[str, MessageDict]]:
        """:meth:`send_many` of ``items``, then a blocking :meth:`receive_batch` of up to ``limit``
        messages of ``channels``, waiting up to ``timeout`` seconds for the first.

        The worker sends the responses of a batch and waits for its next batch this way; a
        backend may do both in one round trip (Redis 7 does). ``outcomes`` receives one entry
        per item, as :meth:`send_many` returns them, before anything can raise: when the
        receive fails (``LayerUnavailable``), it still tells which sends failed.
        """
        outcomes[:] = self.send_many(items)
        return self.receive_batch(channels, limit, block=True, timeout=timeout)

    def receive_many(self, channels: Iterable[str], block: bool = False, timeout: float | None = None) -> Received:
        """Deprecated alias of :meth:`receive` (ASGI v1 name)."""
        warnings.warn("receive_many() is deprecated; use receive()", DeprecationWarning, stacklevel=2)
        return self.receive(channels, block=block, timeout=timeout)

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds (again: the membership is renewed)."""
        raise NotImplementedError

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op when it is not a member."""
        raise NotImplementedError

    def group_channels(self, group: str) -> list[str]:
        """The current members of ``group``."""
        raise NotImplementedError

    def send_group(self, group: str, message: MessageDict) -> None:
        """Queue a copy of ``message`` for every member of ``group``.

        Never raises ``ChannelFull``: a member whose channel is full is skipped, counted in
        ``group_drop_count`` and logged at debug. May raise ``MessageTooLarge``,
        ``InvalidMessage`` and ``LayerUnavailable`` as :meth:`send` does.
        """
        raise NotImplementedError

    def flush(self) -> None:
        """Empty every queue, group and session entry this layer owns, for every client."""
        raise NotImplementedError

    def global_statistics(self) -> dict[str, int]:
        """Layer-wide figures: any of ``messages_count``, ``messages_pending``, ``channel_full_count``,
        ``group_drop_count``."""
        raise NotImplementedError

    def channel_statistics(self, channel: str) -> dict[str, int]:
        """Figures of one channel (a ``prefix!`` counts its channels): ``messages_pending``,
        ``messages_max_age`` (seconds) and the full and drop counters."""
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

    def session_compare_and_set(self, key: str, expected: bytes | None, value: bytes | None, ttl: float) -> bool:
        """Atomically, for every process: if ``key`` holds ``expected`` (None: absent or expired),
        store ``value`` for ``ttl`` seconds (None: remove ``key``) and return True; else change
        nothing and return False. ``enforce_ordering`` keeps its state with it.

        No default: a read followed by a write is not atomic across processes.
        """
        raise NotImplementedError

    @staticmethod
    def _session_value(value: Any) -> bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"session value must be bytes, not {type(value).__name__}")
        return bytes(value)

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
