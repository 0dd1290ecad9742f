"""Channel and group names: the rules they follow, and the unguessable ones the layers make.

The name rules of the contract (CONTRACT.md section 1) in one place, applied the same way by
every backend: :func:`validate_channel_name` and :func:`validate_group_name`; how a
process-local name maps to its queue (:func:`non_local_name`); and the random names: new
``?`` channels, process prefixes (``sidecar.<token>!``) and the reply channels a process makes
on its prefix, drawn from the operating system's CSPRNG.
"""
from __future__ import annotations

import base64
import os
import re
import threading
from typing import Any

from .. import exceptions as exc

__all__ = [
    "CHANNEL_NAME_RE",
    "GROUP_NAME_RE",
    "MAX_NAME_LENGTH",
    "LOCAL_SUFFIX_CHARS",
    "validate_channel_name",
    "validate_group_name",
    "validate_new_channel_pattern",
    "new_channel_name",
    "non_local_name",
    "new_process_prefix",
    "new_local_channel",
    "SIDECAR_PREFIX",
    "is_sidecar_prefix",
]

# ``\Z``, not ``$``: with ``re.match``, ``$`` also matches before a trailing newline, which
# would let ``"name\n"`` through (and a newline or space in a name breaks the Redis layer's
# member lists).
CHANNEL_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]+((\?|\!)[a-zA-Z0-9\-_.]*)?\Z")
GROUP_NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]+\Z")
#: Longest channel or group name accepted (the contract asks for at least 100).
MAX_NAME_LENGTH = 200
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


def validate_new_channel_pattern(pattern: Any) -> str:
    """Return ``pattern`` if ``new_channel`` may use it (a valid name ending in ``?``, with room
    for the random suffix), else raise :class:`InvalidChannelName`."""
    if not isinstance(pattern, str) or not pattern.endswith("?"):
        raise exc.InvalidChannelName(
            f"new_channel pattern must end in '?' (single-reader channel), got {pattern!r}"
        )
    if len(pattern) + _TOKEN_CHARS > MAX_NAME_LENGTH or not CHANNEL_NAME_RE.match(pattern):
        raise exc.InvalidChannelName(
            f"new_channel pattern {pattern!r} is invalid: letters, digits, '-', '_' and '.' then one '?'"
        )
    return pattern


def new_channel_name(pattern: str) -> str:
    """``pattern`` (checked by :func:`validate_new_channel_pattern`) plus an unguessable suffix."""
    return pattern + _token()


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


#: The sidecar's process prefixes start with this; they get ``process_capacity`` (see :mod:`.capacity`).
SIDECAR_PREFIX = "sidecar."


def is_sidecar_prefix(name: str) -> bool:
    """Whether ``name`` (a non-local ``prefix!``) is one of the sidecar's own process prefixes."""
    return name.endswith("!") and name.startswith(SIDECAR_PREFIX)
