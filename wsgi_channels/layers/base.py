"""What every channel layer shares: capacities, message checks, new channels, the API surface.

:class:`BaseChannelLayer` is the whole contract a backend implements, in one place: every
method the push API, the worker, the consumers and the sidecar call. A backend implements
``send``, ``receive``, ``group_add``, ``group_discard``, ``group_channels``, ``send_group``,
``flush``, the statistics and the session methods (``session_compare_and_set`` included);
``send_many``, ``receive_batch`` and ``send_many_then_receive`` have default implementations
built on those, which a backend overrides when it can do the same in fewer round trips.
The rules of the contract every backend applies the same way live beside it: the name rules
and the random names (new channels, process prefixes, reply channels) in :mod:`.names`, the
capacity of each channel in :mod:`.capacity`, message checks in
:mod:`wsgi_channels.serialization`.

Group history (issue 18) and presence (issue 19) are declared here as well, with the
configuration (``group_history``/``group_presence``, :mod:`.features`) and the public
checks; a backend that supports them lists them in ``features_supported`` and implements
the hooks marked below.
"""
from __future__ import annotations

import threading
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from .. import exceptions as exc
from ..serialization import DEFAULT_MAX_MESSAGE_SIZE, RESERVED_KEY, decode, encode
from .capacity import CapacityRules, CapacitySpec
from .features import (
    Features,
    FeatureRules,
    HistoryOptions,
    HistoryPage,
    Position,
    PresenceChange,
    PresenceEntry,
    PresenceOptions,
    Spec,
    check_presence,
    check_since_limit,
)
from .names import (
    MAX_NAME_LENGTH,
    new_channel_name,
    validate_channel_name,
    validate_group_name,
    validate_new_channel_pattern,
)

__all__ = [
    "BaseChannelLayer",
    "DEFAULT_BLOCK_TIMEOUT",
    "MessageDict",
    "Received",
    "Position",
    "HistoryPage",
    "PresenceEntry",
    "PresenceChange",
]

#: Longest a blocking ``receive`` waits when no ``timeout`` is given (seconds).
DEFAULT_BLOCK_TIMEOUT = 5.0


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
    ``group_history``
        groups that keep their recent messages, numbered, for resume: ``{"chat.*": {"size":
        100, "ttl": 300}}`` (grammar and fields: :mod:`wsgi_channels.layers.features`).
        Every process that sends to, adds to or reads such a group must have the same
        patterns (give them in the layer URL, which every process reads).
    ``group_presence``
        groups that keep a presence list: ``{"room.*": {"max_members": 1000, "ttl": 60}}``.
    """

    extensions = ["groups", "flush", "statistics"]
    #: The optional features this backend implements (``"history"``, ``"presence"``);
    #: configuring another one raises :class:`ConfigurationError` at construction.
    features_supported: frozenset[str] = frozenset()
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
        channel_capacity: CapacitySpec = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        process_capacity: int = 10000,
        group_history: Spec = None,
        group_presence: Spec = None,
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
        self._capacities = CapacityRules(channel_capacity, self.capacity, self.process_capacity)
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._features = FeatureRules(group_history, group_presence)
        #: Whether any pattern is configured: the one attribute a plain group's operations look at.
        self._has_features = bool(self._features)
        wanted = {name for name, rules in (("history", self._features.history),
                                           ("presence", self._features.presence)) if rules}
        missing = wanted - self.features_supported
        if missing:
            raise exc.ConfigurationError(
                f"{type(self).__name__} does not support group_{sorted(missing)[0]} yet: "
                "use memory:// or ipc:// for it, or leave the option out")
        if wanted:
            self.extensions = [*type(self).extensions, *sorted(wanted)]

    @classmethod
    def from_url(cls, url: Any, **options: Any) -> "BaseChannelLayer":
        """Build a layer from its URL; query parameters are constructor keywords, ``options`` win."""
        from . import parse_options
        from urllib.parse import urlsplit

        return cls(**{**parse_options(urlsplit(url).query), **options})

    # -- capacities -------------------------------------------------------------------------

    def get_capacity(self, channel: str) -> int:
        """Capacity of ``channel`` (for ``prefix!suffix``, of ``prefix!``); first matching rule wins."""
        return self._capacities.of(channel)

    # -- names and messages -----------------------------------------------------------------

    def new_channel(self, pattern: str) -> str:
        """Return ``pattern`` (which must end in ``?``) plus an unguessable, unused suffix."""
        validate_new_channel_pattern(pattern)
        for _ in range(10):
            name = new_channel_name(pattern)
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

    # -- group history and presence: configuration ------------------------------------------

    def group_features(self, group: str) -> Optional[Features]:
        """The history and presence options of ``group`` (None: neither; one dict lookup)."""
        return self._features.of(group) if self._has_features else None

    def history_options(self, group: str) -> Optional[HistoryOptions]:
        """The ``group_history`` options of ``group``, or None when no pattern matches it."""
        found = self.group_features(group)
        return found.history if found else None

    def presence_options(self, group: str) -> Optional[PresenceOptions]:
        """The ``group_presence`` options of ``group``, or None when no pattern matches it."""
        found = self.group_features(group)
        return found.presence if found else None

    def _require_history(self, group: str) -> HistoryOptions:
        options = self.history_options(validate_group_name(group))
        if options is None:
            raise exc.HistoryNotEnabled(
                f"group {group!r} keeps no history in this process: add a group_history pattern for it "
                "(layer option group_history, e.g. ?group_history=chat.*:size=100:ttl=300 in the layer URL "
                "every process uses)")
        return options

    def _require_presence(self, group: str) -> PresenceOptions:
        options = self.presence_options(validate_group_name(group))
        if options is None:
            raise exc.PresenceNotEnabled(
                f"group {group!r} keeps no presence in this process: add a group_presence pattern for it "
                "(layer option group_presence, e.g. ?group_presence=room.*:max_members=1000 in the layer URL "
                "every process uses)")
        return options

    def _presence_arg(self, group: str, presence: Any) -> tuple[PresenceOptions, Optional[str], Any]:
        """``(options, user, info)`` of a ``group_add(..., presence=...)`` argument, checked."""
        options = self._require_presence(group)
        user, info = check_presence(presence, group, options)
        return options, user, info

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
    #: Whether a send may wait (on a lock, a server): the sidecar then has its sends made by a few
    #: flusher greenlets rather than by each connection. False only where sends never wait (memory).
    sends_may_wait: bool = True

    @property
    def topology_epoch(self) -> int:
        """A number that grows each time the layer followed a change of the servers behind it
        (a failover, a slot move); 0 for a layer whose store never moves (memory, ipc)."""
        return 0

    def on_topology_change(self, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called after each change that :attr:`topology_epoch` counts, once
        the layer has re-applied what it must (the sidecar then checks its state at once).
        A layer whose store never moves never calls it."""

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

    # ``*args, **options`` (not ``presence=None``) only so that a backend without presence may
    # still declare ``group_add(self, group, channel)`` under mypy: ``presence`` is the one
    # keyword there is. Tighten to ``presence: Mapping | None = None`` once every backend takes it.
    def group_add(self, group: str, channel: str, *args: Any, **options: Any) -> None:
        """Add ``channel`` to ``group`` for ``group_expiry`` seconds (again: the membership is renewed).

        ``presence=`` (groups with a ``group_presence`` pattern only, else
        :class:`PresenceNotEnabled`): ``{"user": str | None, "info": value}`` makes or updates
        the channel's presence entry (keyed by :func:`wsgi_channels.presence.conn_id`), first:
        past ``max_members`` it raises :class:`PresenceFull` and nothing changes, the
        membership included. An ``info`` over ``info_max_bytes`` raises ``InvalidMessage``.
        Without ``presence`` no entry is made.

        In a history or presence group, a new membership of a ``sidecar.*!`` channel (or a
        presence entry this call made or changed) queues a membership notice on the channel
        (``__wsc_n``, :func:`.features.add_notice`), atomically with the membership and
        whatever its capacity, so that the sidecar knows to follow the group.
        """
        raise NotImplementedError

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; a no-op when it is not a member.

        Also removes its presence entry (a leave), and queues a discard notice on a sidecar
        channel that was a member of a history or presence group.
        """
        raise NotImplementedError

    def group_channels(self, group: str) -> list[str]:
        """The current members of ``group``."""
        raise NotImplementedError

    def send_group(self, group: str, message: MessageDict) -> None:
        """Queue a copy of ``message`` for every member of ``group``.

        Never raises ``ChannelFull``: a member whose channel is full is skipped, counted in
        ``group_drop_count`` and logged at debug. May raise ``MessageTooLarge``,
        ``InvalidMessage`` and ``LayerUnavailable`` as :meth:`send` does.

        In a history group the message also gets the group's next offset (1, 2, 3, ...
        contiguous within an epoch, assigned atomically with storing it) and is kept for
        :meth:`group_history` (the last ``size``, for ``ttl`` seconds); the copies queued on
        ``sidecar.*!`` prefixes carry ``__wsc_h = [group, epoch, offset]``, every other member
        gets the message exactly as sent.
        """
        raise NotImplementedError

    # -- group history (issue 18) ---------------------------------------------------------------

    def group_position(self, group: str) -> Position:
        """``(epoch, offset)`` of ``group``'s stream: the offset of its latest message (0: none yet).

        Makes the epoch when the group has none, so a page never embeds an empty one. Raises
        :class:`HistoryNotEnabled` for a group no ``group_history`` pattern matches.
        """
        self._require_history(group)
        page = self._history_read([(group, 0, 0)])[0]
        if isinstance(page, BaseException):
            raise page
        return Position(page.epoch, page.top)

    def group_history(self, group: str, since: int, limit: int = 300) -> HistoryPage:
        """The kept messages of ``group`` with offset > ``since``, oldest first, at most ``limit``.

        Returns ``(epoch, top, [(offset, message), ...])``, ``top`` being the latest offset.
        A gap shows: the first offset is above ``since + 1``, or there are no messages while
        ``top > since``. ``since`` above ``top`` returns nothing (the stream is not the one
        the caller followed: compare the epoch, which changes whenever messages may have been
        lost). ``limit``: 1..10000. Raises :class:`HistoryNotEnabled` as
        :meth:`group_position` does.
        """
        self._require_history(group)
        since, limit = check_since_limit(since, limit)
        page = self._history_read([(group, since, limit)])[0]
        if isinstance(page, BaseException):
            raise page
        return page

    def _history_read(self, requests: Sequence[tuple[str, int, int]]) -> list[Union[HistoryPage, BaseException]]:
        """For each ``(group, since, limit)`` its :class:`HistoryPage` (``limit`` 0: the position
        only), or the exception reading it raised; one round trip per shard for all of them.

        No configuration check (the sidecar reads groups its own process has no pattern
        for); makes the epoch of a group that has none. Backend hook.
        """
        raise NotImplementedError

    # -- presence (issue 19) --------------------------------------------------------------------

    def group_presence(self, group: str) -> dict[str, PresenceEntry]:
        """``{conn_id: {"user", "info", "since"}}`` of ``group``'s live entries (those of an owner
        whose lease passed are left out at once). Raises :class:`PresenceNotEnabled` for a group
        no ``group_presence`` pattern matches."""
        self._require_presence(group)
        return self._presence_entries(group)

    def group_presence_stats(self, group: str) -> dict[str, int]:
        """``{"clients": entries, "users": distinct non-None users}`` of ``group``, in O(1) whatever
        its size (entries of a dead owner count until they are swept)."""
        self._require_presence(group)
        return self._presence_counts(group)

    def _presence_entries(self, group: str) -> dict[str, PresenceEntry]:
        """Backend hook of :meth:`group_presence` (no configuration check)."""
        raise NotImplementedError

    def _presence_counts(self, group: str) -> dict[str, int]:
        """Backend hook of :meth:`group_presence_stats` (no configuration check)."""
        raise NotImplementedError

    def presence_refresh(self, owner: str, groups: Sequence[str]) -> list[bool]:
        """Renew ``owner``'s lease (its entries' liveness) in each of ``groups`` for the group's
        presence ttl; False for a group where the owner has no lease any more (it was swept:
        the owner puts its entries back with :meth:`presence_reassert`). One command per group.

        ``owner`` is a process prefix (``sidecar.<token>!``), or the channel itself for a
        member that is not on one. No configuration check (the sidecar calls it).
        """
        raise NotImplementedError

    def presence_remove(self, group: str, owner: str, conn_ids: Sequence[str]) -> Optional[PresenceChange]:
        """Remove ``owner``'s entries ``conn_ids`` from ``group`` (its sockets closed); the change
        (leaves) is sent to the group's sidecars and returned, None when nothing was removed.
        Idempotent: whoever removes an entry first makes its one leave."""
        raise NotImplementedError

    def presence_reassert(self, owner: str, group: str,
                          entries: Mapping[str, Mapping[str, Any]]) -> Optional[PresenceChange]:
        """Make ``owner``'s entries in ``group`` exactly ``entries`` (``{conn_id: {"user", "info",
        "since"}}``) and renew its lease: entries missing are added (joins, within
        ``max_members``), entries not listed are removed (leaves). The change is sent and
        returned (None: nothing changed). The sidecar calls it when a refresh answered False
        and, as a reconciliation, every tenth refresh."""
        raise NotImplementedError

    def presence_sweep(self, limit: int = 32) -> list[PresenceChange]:
        """Remove every entry of owners whose lease passed, in up to ``limit`` groups; each
        change (leaves) is sent to its group's sidecars and returned. Atomic per group: of
        several sweepers racing, exactly one removes an entry and makes its leave."""
        raise NotImplementedError

    def _send_group_internal(self, group: str, message: MessageDict, sidecars_only: bool = True) -> None:
        """Queue a layer-made message (reserved keys, not validated, not stamped nor kept) for
        ``group``'s members on ``sidecar.*!`` prefixes (``sidecars_only``) or all of them.
        Backend hook."""
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
