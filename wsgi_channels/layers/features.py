"""Group history and presence: the options, the types and the reserved keys every backend shares.

One grammar configures both features everywhere (layer keywords, the layer URL's query, the
adapters' settings and the command line all end up here)::

    from_url(url, group_history={"chat.*": {"size": 100, "ttl": 300}},
                  group_presence={"room.*": {"max_members": 1000, "ttl": 60}})
    redis://host:6379/0?group_history=chat.*:size=100:ttl=300&group_history=news.*

A spec is a mapping (or a list of pairs) of fnmatch globs or compiled regexes to a dict of
fields (``{}``: the defaults), or URL items ``PATTERN[:FIELD=VALUE]...`` (one str, several
separated by spaces, or a list of them). Patterns are tried in order and the first match
wins, as for ``channel_capacity``. A group no pattern matches has neither feature and costs
one dict lookup per operation (:class:`FeatureRules` caches the answer per group).

Reserved message keys the layer adds (``docs/protocol.md``, "Reserved names"), all read by
the sidecar only:

``__wsc_h`` (:data:`STAMP_KEY`)
    ``[group, epoch, offset]`` on the copies of a history group's message that a
    ``sidecar.*!`` prefix receives; other receivers get the message exactly as sent.
``__wsc_n`` (:data:`NOTICE_KEY`)
    a membership notice queued on a sidecar reply channel when it joins or leaves a history
    or presence group (:func:`add_notice`, :func:`discard_notice`); on joining a history
    group it carries the group's position at the membership.
``__wsc_p`` (:data:`PRESENCE_KEY`)
    a presence change, sent to a group's sidecar members only (:meth:`PresenceChange.message`).
"""
from __future__ import annotations

import base64
import gc
import time as _time
import fnmatch
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Pattern, Sequence, TypedDict, Union

from ..exceptions import ConfigurationError, InvalidMessage

__all__ = [
    "STAMP_KEY",
    "NOTICE_KEY",
    "PRESENCE_KEY",
    "Position",
    "HistoryPage",
    "PresenceEntry",
    "PresenceChange",
    "presence_change",
    "HistoryOptions",
    "PresenceOptions",
    "FeatureRules",
    "parse_history",
    "parse_presence",
    "format_item",
    "new_epoch",
    "check_since_limit",
    "add_notice",
    "check_entries",
    "discard_notice",
    "decode_infos",
    "gc_paused",
    "MAX_HISTORY_LIMIT",
    "MAX_USER_LENGTH",
]

STAMP_KEY = "__wsc_h"
NOTICE_KEY = "__wsc_n"
PRESENCE_KEY = "__wsc_p"

#: Most messages one ``group_history`` call returns (and the largest ``size``).
MAX_HISTORY_LIMIT = 10000
#: Longest presence ``user`` string.
MAX_USER_LENGTH = 200
#: Characters of an epoch (urlsafe base64, from the CSPRNG).
EPOCH_CHARS = 8

_EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,16}\Z")


class Position(NamedTuple):
    """Where a history group's stream is: its epoch and the offset of its latest message (0: none)."""

    epoch: str
    offset: int


class HistoryPage(NamedTuple):
    """What ``group_history`` returns: the epoch, the latest offset (``top``) and
    ``(offset, message)`` pairs, oldest first."""

    epoch: str
    top: int
    messages: list[tuple[int, dict[str, Any]]]


class PresenceEntry(TypedDict):
    """One member as ``group_presence`` lists it (keyed by its ``conn_id``)."""

    user: Optional[str]
    info: Any
    since: float


class PresenceChange(NamedTuple):
    """A change of a presence group, as the layer sends it to the group's sidecars.

    ``v`` counts changes of the group (a sidecar that sees a jump knows it missed some);
    ``clients`` and ``users`` are the counts after it; ``mode`` is ``"e"`` (events: each
    join and leave is sent) or ``"c"`` (count only: too many members, or ``join_leave``
    off); ``events`` are ``["j", conn_id, user, info, since_ms]`` and ``["l", conn_id]``,
    in order; ``stale`` says the member list may have changed without events (a switch
    back from count mode). The presence methods return the change with the events they
    made; what the sidecars receive in count mode carries none (or nothing is sent).
    """

    group: str
    v: int
    clients: int
    users: int
    mode: str
    events: list[list[Any]]
    stale: bool = False

    def message(self) -> dict[str, Any]:
        """The ``{"__wsc_p": {...}}`` message the sidecars receive."""
        body: dict[str, Any] = {"g": self.group, "v": self.v, "c": self.clients, "u": self.users,
                                "m": self.mode, "ev": self.events}
        if self.stale:
            body["stale"] = True
        return {PRESENCE_KEY: body}


def presence_change(group: str, v: int, clients: int, users: int, mode: str, join_leave: bool, events_max: int,
                    events: list[list[Any]]) -> tuple[str, PresenceChange, Optional[PresenceChange]]:
    """The rule of change messages, shared by the backends: given a group's change number ``v``,
    its counts after the change, its mode before it and its options, return (the mode after it,
    the change with its events for the caller, what is sent to the sidecars or None).

    Events mode sends every change; past ``events_max`` (or with ``join_leave`` off) the group
    switches to count mode with one ``m: "c"`` change without events and sends nothing more
    until it is back under 80 % of ``events_max`` (one ``m: "e"`` change marked ``stale``).
    """
    if mode == "e":
        if not join_leave or clients > events_max:
            return ("c", PresenceChange(group, v, clients, users, "c", events),
                    PresenceChange(group, v, clients, users, "c", []))
        change = PresenceChange(group, v, clients, users, "e", events)
        return "e", change, change
    if join_leave and clients < 0.8 * events_max:
        return ("e", PresenceChange(group, v, clients, users, "e", events),
                PresenceChange(group, v, clients, users, "e", [], stale=True))
    return "c", PresenceChange(group, v, clients, users, "c", events), None


# -- options ----------------------------------------------------------------------------------


def _number(value: Any, kind: type, pattern: str, name: str) -> Any:
    """``value`` as an int or float (from a str too); bools are refused as numbers."""
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is float or float(value).is_integer():
            return kind(value)
    raise ConfigurationError(f"{pattern!r}: {name}={value!r} is not {'an int' if kind is int else 'a number'}")


def _boolean(value: Any, pattern: str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ConfigurationError(f"{pattern!r}: {name}={value!r} is not a boolean (1/0, true/false)")


def _check_fields(setting: str, cls: type, pattern: str, spec: Mapping[str, Any]) -> None:
    """Refuse fields of ``spec`` that ``cls`` (an options dataclass) does not have, naming those it has."""
    known = [f.name for f in fields(cls) if f.name != "pattern"]
    unknown = sorted(set(spec) - set(known))
    if unknown:
        raise ConfigurationError(f"{setting} {pattern!r}: unknown field(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(known)}")


@dataclass(frozen=True)
class HistoryOptions:
    """Fields of a ``group_history`` pattern.

    ``size``: messages kept (1..10000, default 100). ``ttl``: seconds each is kept (default
    300). ``meta_ttl``: seconds the epoch and the latest offset outlive the last message
    (default ``max(86400, ttl)``): a client resuming within it learns exactly what it missed
    (``gap`` when they were trimmed), after it only that the stream restarted (``epoch``).
    """

    size: int = 100
    ttl: float = 300.0
    meta_ttl: float = 86400.0
    #: The pattern these options came from (its source text: for messages).
    pattern: str = field(default="", compare=False)

    @classmethod
    def build(cls, pattern: str, spec: Mapping[str, Any]) -> "HistoryOptions":
        _check_fields("group_history", cls, pattern, spec)
        size = _number(spec.get("size", 100), int, pattern, "size")
        ttl = _number(spec.get("ttl", 300.0), float, pattern, "ttl")
        if not 1 <= size <= MAX_HISTORY_LIMIT:
            raise ConfigurationError(f"group_history {pattern!r}: size={size} must be from 1 to {MAX_HISTORY_LIMIT}")
        if not ttl > 0:
            raise ConfigurationError(f"group_history {pattern!r}: ttl={ttl:g} must be a positive number of seconds")
        meta_ttl = _number(spec.get("meta_ttl", max(86400.0, ttl)), float, pattern, "meta_ttl")
        if meta_ttl < ttl:
            raise ConfigurationError(f"group_history {pattern!r}: meta_ttl={meta_ttl:g} must be at least ttl={ttl:g}")
        return cls(size, ttl, meta_ttl, pattern)


@dataclass(frozen=True)
class PresenceOptions:
    """Fields of a ``group_presence`` pattern.

    ``max_members`` (default 1000): past it, adding an entry raises ``PresenceFull``.
    ``join_leave`` (default True): send join/leave events to the sidecars (False: counts
    only). ``events_max`` (default 100): above this many members, counts only (back to
    events below 80 % of it). ``info_max_bytes`` (default 2048): largest encoded ``info``.
    ``ttl`` (seconds, default 60, at least 5): how long an entry outlives its owner's last
    refresh (a sidecar refreshes every ``ttl/3``; a killed one's members leave within
    ``ttl`` plus a sweep period).
    """

    max_members: int = 1000
    join_leave: bool = True
    events_max: int = 100
    info_max_bytes: int = 2048
    ttl: float = 60.0
    #: The pattern these options came from (its source text: for messages).
    pattern: str = field(default="", compare=False)

    @classmethod
    def build(cls, pattern: str, spec: Mapping[str, Any]) -> "PresenceOptions":
        _check_fields("group_presence", cls, pattern, spec)
        options = cls(
            max_members=_number(spec.get("max_members", 1000), int, pattern, "max_members"),
            join_leave=_boolean(spec.get("join_leave", True), pattern, "join_leave"),
            events_max=_number(spec.get("events_max", 100), int, pattern, "events_max"),
            info_max_bytes=_number(spec.get("info_max_bytes", 2048), int, pattern, "info_max_bytes"),
            ttl=_number(spec.get("ttl", 60.0), float, pattern, "ttl"),
            pattern=pattern,
        )
        for name in ("max_members", "events_max", "info_max_bytes"):
            if getattr(options, name) < (1 if name == "max_members" else 0):
                raise ConfigurationError(f"group_presence {pattern!r}: {name}={getattr(options, name)} is negative"
                                         if name != "max_members" else
                                         f"group_presence {pattern!r}: max_members must be at least 1")
        if options.ttl < 5:
            raise ConfigurationError(f"group_presence {pattern!r}: ttl={options.ttl:g} must be at least 5 seconds")
        return options


PatternKey = Union[str, Pattern[str]]
Spec = Union[None, str, Mapping[PatternKey, Any], Iterable[Any]]


def _split_item(item: str, option: str) -> tuple[str, dict[str, str]]:
    """``"chat.*:size=100:ttl=300"`` -> ``("chat.*", {"size": "100", "ttl": "300"})``."""
    pattern, *parts = item.strip().split(":")
    if not pattern:
        raise ConfigurationError(f"{option} item {item!r} has no group pattern (PATTERN[:FIELD=VALUE]...)")
    spec: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"{option} item {item!r}: {part!r} is not FIELD=VALUE")
        spec[name.strip()] = value.strip()
    return pattern, spec


def _items(spec: Spec, option: str) -> list[tuple[PatternKey, Mapping[str, Any]]]:
    if spec is None:
        return []
    if isinstance(spec, str):
        return [_split_item(item, option) for item in spec.split()]
    if isinstance(spec, Mapping):
        pairs: Iterable[Any] = spec.items()
    else:
        pairs = spec
    out: list[tuple[PatternKey, Mapping[str, Any]]] = []
    for item in pairs:
        if isinstance(item, str):
            out.extend(_split_item(one, option) for one in item.split())
            continue
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ConfigurationError(f"{option}: {item!r} is neither PATTERN:FIELD=VALUE... nor (pattern, fields)")
        pattern, fields_ = item
        if fields_ is None or fields_ is True:
            fields_ = {}
        if not isinstance(fields_, Mapping):
            raise ConfigurationError(f"{option} {pattern!r}: the fields must be a dict, not {fields_!r}")
        out.append((pattern, fields_))
    return out


def _compile(pattern: Any, option: str) -> tuple[str, Pattern[str]]:
    if isinstance(pattern, str):
        return pattern, re.compile(fnmatch.translate(pattern))
    if isinstance(pattern, re.Pattern):
        return pattern.pattern, pattern
    raise ConfigurationError(f"{option} key {pattern!r} must be a glob string or a compiled regex")


def parse_history(spec: Spec) -> list[tuple[Pattern[str], HistoryOptions]]:
    """``group_history`` in any accepted form -> ``[(compiled pattern, HistoryOptions)]`` in order."""
    rules = []
    for pattern, fields_ in _items(spec, "group_history"):
        name, compiled = _compile(pattern, "group_history")
        rules.append((compiled, HistoryOptions.build(name, fields_)))
    return rules


def parse_presence(spec: Spec) -> list[tuple[Pattern[str], PresenceOptions]]:
    """``group_presence`` in any accepted form -> ``[(compiled pattern, PresenceOptions)]`` in order."""
    rules = []
    for pattern, fields_ in _items(spec, "group_presence"):
        name, compiled = _compile(pattern, "group_presence")
        rules.append((compiled, PresenceOptions.build(name, fields_)))
    return rules


def format_item(pattern: str, spec: Mapping[str, Any]) -> str:
    """The URL item of one pattern (``chat.*:size=100:ttl=300``), as adapters and the CLI emit it."""
    if not isinstance(pattern, str) or not pattern or any(c in pattern for c in ":= \t&"):
        raise ConfigurationError(f"pattern {pattern!r} cannot be written as a URL item (no ':', '=', '&' or spaces)")
    parts = [pattern]
    for name, value in spec.items():
        if isinstance(value, bool):
            value = int(value)
        parts.append(f"{name}={value}")
    return ":".join(parts)


class Features(NamedTuple):
    """What a group has: its history and presence options (None: not that feature)."""

    history: Optional[HistoryOptions]
    presence: Optional[PresenceOptions]


_NONE = Features(None, None)


class FeatureRules:
    """The configured patterns of one layer and a bounded per-group cache of their answers."""

    __slots__ = ("history", "presence", "_cache")

    CACHE_LIMIT = 10000

    def __init__(self, history: Spec = None, presence: Spec = None) -> None:
        self.history = parse_history(history)
        self.presence = parse_presence(presence)
        self._cache: dict[str, Optional[Features]] = {}

    def __bool__(self) -> bool:
        return bool(self.history or self.presence)

    def of(self, group: str) -> Optional[Features]:
        """The group's features, or None when it has neither (the common case, one lookup)."""
        try:
            return self._cache[group]
        except KeyError:
            pass
        history = next((o for p, o in self.history if p.match(group)), None)
        presence = next((o for p, o in self.presence if p.match(group)), None)
        found = Features(history, presence) if history or presence else None
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[group] = found
        return found


# -- small rules shared by the backends ---------------------------------------------------------


def new_epoch() -> str:
    """A fresh epoch: 8 characters of the CSPRNG in urlsafe base64 (48 bits)."""
    return base64.urlsafe_b64encode(os.urandom(6)).decode()


def valid_epoch(epoch: Any) -> bool:
    """Whether ``epoch`` has an epoch's form (1..16 of ``[A-Za-z0-9_-]``); an empty one never does."""
    return isinstance(epoch, str) and bool(_EPOCH_RE.match(epoch))


def check_since_limit(since: Any, limit: Any, allow_zero: bool = False) -> tuple[int, int]:
    """Validate ``group_history``'s arguments: ``since`` an int >= 0, ``limit`` 1..10000 (0 too with
    ``allow_zero``: the position only)."""
    if type(since) is not int or since < 0:
        raise ValueError(f"since must be an int offset of at least 0, got {since!r}")
    if type(limit) is not int or not (0 if allow_zero else 1) <= limit <= MAX_HISTORY_LIMIT:
        raise ValueError(f"limit must be an int from {0 if allow_zero else 1} to {MAX_HISTORY_LIMIT}, got {limit!r}")
    return since, limit


def add_notice(group: str, history: Union[bool, Sequence[Any]],
               presence: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The membership notice queued on a sidecar reply channel that joined ``group`` (or whose
    presence entry this add made or changed): ``{"__wsc_n": {"g", "a": True, "p", "h"}}``.

    ``h`` is False for a group without history, else the group's position at the moment of the
    membership, ``[epoch, offset]``, taken atomically with it: every message of the group with a
    higher offset sees the membership (it reaches the channel), every one up to it was published
    before. (``True``, a history group without a position, is what layers before it sent: the
    sidecar still accepts it.) ``h`` is the map's last key, so a Redis script can complete it.

    ``p`` is None, or the entry as the sidecar needs it to keep it alive and to put it back
    after a sweep: ``{"id", "ttl", "ev", "m", "u", "i", "s"}`` (conn_id, the group's
    presence ttl and events_max, its mode, user, info, since).
    """
    h: Any = history if isinstance(history, bool) else [str(history[0]), int(history[1])]
    return {NOTICE_KEY: {"g": group, "a": True, "p": dict(presence) if presence is not None else None, "h": h}}


def discard_notice(group: str) -> dict[str, Any]:
    """The notice queued on a sidecar reply channel that left ``group``."""
    return {NOTICE_KEY: {"g": group, "a": False}}


def check_presence(presence: Any, group: str, options: PresenceOptions) -> tuple[Optional[str], Any]:
    """``(user, info)`` of a ``presence=`` argument, checked: a dict with at most ``user`` (a str
    of up to 200 characters, or None) and ``info`` (a message value of at most
    ``info_max_bytes`` encoded)."""
    from ..serialization import encoded_size

    if not isinstance(presence, Mapping):
        raise InvalidMessage(f"presence for group {group!r} must be a dict such as "
                             f"{{'user': '42', 'info': {{...}}}}, not {type(presence).__name__}")
    unknown = sorted(set(presence) - {"user", "info"})
    if unknown:
        raise InvalidMessage(f"presence for group {group!r} has unknown key(s) {unknown!r}; allowed: 'user', 'info'")
    user = presence.get("user")
    if user is not None:
        if not isinstance(user, str):
            raise InvalidMessage(f"presence['user'] must be a str or None, got {type(user).__name__}")
        if len(user) > MAX_USER_LENGTH:
            raise InvalidMessage(f"presence['user'] is {len(user)} characters, over {MAX_USER_LENGTH}")
    info = presence.get("info")
    size = encoded_size(info, "presence", "info")
    if size > options.info_max_bytes:
        raise InvalidMessage(f"presence['info'] of group {group!r} encodes to {size} bytes, over info_max_bytes="
                             f"{options.info_max_bytes} of {options.pattern!r}")
    return user, info


def check_entries(entries: Any) -> dict[str, tuple[Optional[str], bytes, float]]:
    """``{conn_id: {"user", "info", "since"}}`` given to ``presence_reassert``, checked and with
    ``info`` encoded: ``{conn_id: (user, encoded info, since)}``."""
    from ..serialization import encode

    if not isinstance(entries, Mapping):
        raise InvalidMessage(f"presence entries must be a dict of conn_id -> entry, not {type(entries).__name__}")
    out: dict[str, tuple[Optional[str], bytes, float]] = {}
    for cid, entry in entries.items():
        if not isinstance(cid, str) or not 0 < len(cid) <= 64 or not isinstance(entry, Mapping):
            raise InvalidMessage(f"presence entry {cid!r}: a conn_id (str) mapping to {{'user', 'info', 'since'}}")
        user = entry.get("user")
        if user is not None and (not isinstance(user, str) or len(user) > MAX_USER_LENGTH):
            raise InvalidMessage(f"presence entry {cid!r}: user must be a str of at most {MAX_USER_LENGTH} characters")
        since = entry.get("since")
        if not isinstance(since, (int, float)) or isinstance(since, bool):
            since = _time.time()
        out[cid] = (user, encode({"i": entry.get("info")}, None), float(since))
    return out


class gc_paused:
    """Python's cyclic GC paused while a presence list is built (``with gc_paused(): ...``).

    Every object a presence read makes is part of its answer (an entry and its info per member),
    so a collection set off by making them frees nothing: it only walks the heap (a full one, as
    long as the process's whole heap, was what made the slow reads). msgpack's own documentation
    advises the same for unpacking large messages. When the caller drops the answer, its objects
    are freed by reference counting and the collector's count goes back down; when it keeps them
    and allocates, the next collection comes at the caller's allocation, as it would have for any
    objects it holds. Left alone when the GC is already disabled (the application's choice, or
    another thread's read under way).

    A class rather than a ``contextlib.contextmanager``: leaving a generator-based manager
    raises ``StopIteration`` inside the library, an allocation that set off a young collection
    with the answer alive on every read, so each answer was promoted (and every tenth one to
    the oldest generation, whose growth brings the full collections): measured with
    ``gc.callbacks``, one young collection per read before, none after when the caller drops the
    answer.
    """

    __slots__ = ("_paused",)

    def __enter__(self) -> None:
        self._paused = gc.isenabled()
        if self._paused:
            gc.disable()

    def __exit__(self, *exc_info: object) -> None:
        if self._paused:
            gc.enable()


#: How an encoded ``{"i": info}`` (the stored form of a presence ``info``) starts.
INFO_HEAD = b"\x81\xa1i"


def decode_infos(encoded: Sequence[bytes]) -> Iterable[Any]:
    """The ``info`` of each encoded ``{"i": info}`` in ``encoded``, decoded in one msgpack call: a
    presence list makes one object per entry and per container of its info, nothing more (a
    thousand entries' worth of temporary objects doubles the cyclic GC's collections)."""
    import msgpack  # type: ignore[import-untyped]  # no type information shipped

    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    head = len(INFO_HEAD)
    if not all(data[:head] == INFO_HEAD for data in encoded):
        raise ValueError("not an encoded {'i': info}")
    unpacker.feed(b"".join([data[head:] for data in encoded]))
    return unpacker  # type: ignore[no-any-return]
