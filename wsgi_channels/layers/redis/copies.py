"""Group messages for many members of one process prefix, handed out one member at a time.

The Redis layer stores a group message once per process prefix, naming every member
behind that prefix (a broadcast to 10,000 sockets of one sidecar is one entry). The
reading process pops that entry once and keeps it here; ``receive`` and
``receive_batch`` then hand out ``(member, message)`` pairs from it with no further
round trip, behind the entries fetched before it (FIFO per member).

Every member gets a dict of its own: a received message is its receiver's to change,
and a change must never show up in another member's message. The message is decoded
once. When its values are all immutable (str, bytes, numbers, None: a WebSocket
frame, most group messages), a member's message is a shallow ``dict.copy()`` of that
decoded template, which is never handed out itself; that costs a fraction of a
decode. A message holding lists or dicts is decoded afresh for each member, so no two
members ever share a mutable part. A reader that never changes what it receives (the
sidecar only frames it) may ask for ``shared`` messages: all members of one group
message then get the same dict, and handing one out costs no allocation but its pair.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from itertools import repeat
from typing import Iterable

import msgpack  # type: ignore[import-untyped]  # no type information shipped

from .connection import fork_generation

__all__ = ["CopyBuffer", "GroupMessage"]

_IMMUTABLE = frozenset({str, bytes, int, float, bool, type(None)})


def _unpack(plain: bytes) -> dict:
    return msgpack.unpackb(plain, raw=False, strict_map_key=True)


class GroupMessage:
    """One fetched group message: its members, how many were handed out, and how to copy it.

    ``plain`` is the decrypted encoded message and ``template`` its decoding, which is
    never handed out itself.
    """

    __slots__ = ("targets", "pos", "template", "plain", "deadline", "shared")

    def __init__(self, targets: list[str], plain: bytes, template: dict, deadline: float) -> None:
        self.targets = targets
        self.pos = 0  # members before this index have had their copy
        self.plain = plain
        # Only a message whose values are all immutable is copied shallowly.
        self.template = template if all(type(v) in _IMMUTABLE for v in template.values()) else None
        self.deadline = deadline  # time.monotonic() after which it is never handed out
        self.shared: dict | None = None  # the one dict handed to readers that asked for shared messages

    def copies(self, targets: list[str], shared: bool = False) -> list[tuple[str, dict]]:
        """One ``(member, message)`` per name of ``targets``: each message independent of the
        others, or with ``shared`` one dict for all of them (never changed by its reader)."""
        if shared:
            if self.shared is None:
                self.shared = _unpack(self.plain)
            return list(zip(targets, repeat(self.shared, len(targets))))
        if self.template is not None:
            return list(zip(targets, map(dict.copy, repeat(self.template, len(targets)))))
        plain = self.plain
        return [(target, _unpack(plain)) for target in targets]


class CopyBuffer:
    """Per process prefix, the fetched group messages not yet handed out to all their members.

    Thread-safe. After a fork the child starts empty: the parent's fetched messages are
    the parent's to deliver (and its lock may have been held by a thread that does not
    exist in the child).
    """

    def __init__(self) -> None:
        self._queues: dict[str, deque[GroupMessage]] = {}
        self._lock = threading.Lock()
        self._generation = fork_generation()

    def _check_fork(self) -> None:
        if self._generation != fork_generation():
            self._queues, self._generation = {}, fork_generation()
            self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._queues)

    def __contains__(self, name: str) -> bool:
        return name in self._queues

    def add(self, name: str, message: GroupMessage) -> None:
        """Keep ``message`` for its members not handed out yet, behind prefix ``name``'s earlier ones."""
        self._check_fork()
        with self._lock:
            self._queues.setdefault(name, deque()).append(message)

    def take(self, names: Iterable[str], limit: int,
             shared: bool = False) -> tuple[list[tuple[str, dict]], list[tuple[str, list[str]]]]:
        """Up to ``limit`` pairs for prefixes in ``names``, and the ``(prefix, members)`` whose
        message expired here unread (the caller evicts those members from their groups)."""
        self._check_fork()
        now = time.monotonic()
        chunks: list[tuple[list[str], GroupMessage]] = []
        expired: list[tuple[str, list[str]]] = []
        got = 0
        with self._lock:
            for name in names:
                queue = self._queues.get(name)
                if queue is None:
                    continue
                while queue and got < limit:
                    pending = queue[0]
                    targets, pos = pending.targets, pending.pos
                    if pending.deadline <= now:
                        queue.popleft()
                        expired.append((name, targets[pos:]))
                        continue
                    end = min(len(targets), pos + limit - got)
                    chunks.append((targets[pos:end], pending))
                    got += end - pos
                    pending.pos = end
                    if end == len(targets):
                        queue.popleft()
                if not queue:
                    del self._queues[name]
                if got >= limit:
                    break
        taken: list[tuple[str, dict]] = []
        for targets, pending in chunks:  # copied outside the lock
            taken += pending.copies(targets, shared)
        return taken, expired

    def pending(self, name: str | None = None) -> int:
        """Members still to be handed a message (for ``name``, or for every prefix)."""
        self._check_fork()
        with self._lock:
            queues = self._queues.values() if name is None else [self._queues.get(name, ())]
            return sum(len(p.targets) - p.pos for q in queues for p in q)

    def clear(self) -> None:
        self._check_fork()
        with self._lock:
            self._queues.clear()
