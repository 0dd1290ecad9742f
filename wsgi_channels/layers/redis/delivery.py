"""What a popped queue entry delivers: one ``(channel, message)``, or a group message's copies.

A plain entry (``m``) is one message for the queue's channel; a ``t`` entry naming one
channel is a send to that process-local channel. A group entry (a ``t`` entry naming several
members of one process prefix, or an ``r`` entry naming them through a ``P:t:`` key, see
:mod:`.entries`) is decrypted and decoded once (:class:`~.copies.GroupMessage`): its first
member's message is delivered at once and the others wait in the layer's
:class:`~.copies.CopyBuffer`, behind the copies fetched before it, so no member gets a later
message first. A buffered copy that expires unread takes its member out of its groups (the
``EVICT`` script), as the scripts do for entries that expire in Redis.

:class:`Delivery` is owned by :class:`~wsgi_channels.layers.redis.RedisChannelLayer`; the
receiving code (:mod:`.receive`) pops the entries and hands them over.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable

from ... import exceptions as exc
from . import cluster_scripts as cscripts
from . import entries
from . import scripts
from .bodies import Bodies
from .connection import Script
from .copies import CopyBuffer, GroupMessage
from .entries import REFERENCE_KIND, SEPARATOR, TARGETS_KIND, is_message
from .entries import deadline as entry_deadline
from .entries import parse as parse_entry

__all__ = ["Delivery"]

log = logging.getLogger(__name__)

_EVICT = Script(scripts.EVICT)
_C_EVICT = Script(cscripts.EVICT)
#: Member lists of ``r`` entries kept before the cache is cleared.
_MEMBER_LISTS_LIMIT = 64


class Delivery:
    """Turns popped entries into ``(channel, message)`` pairs, buffering group messages' other copies.

    ``shard_of``: the layer's name -> vshard lookup; ``prefix``: its key prefix with its ``:``;
    ``bodies``: how it opens stored bodies; ``copies``: its buffer of group messages.
    """

    __slots__ = ("_shard_of", "_p", "_bodies", "copies", "_member_lists")

    def __init__(self, shard_of: Callable[[str], Any], prefix: str, bodies: Bodies, copies: CopyBuffer) -> None:
        self._shard_of = shard_of
        self._p = prefix
        self._bodies = bodies
        self.copies = copies
        self._member_lists: dict[bytes, list[str]] = {}  # P:t: key -> the member names it holds

    def take_buffered(self, names: Iterable[str], limit: int, shared: bool = False) -> list[tuple[str, dict]]:
        """Up to ``limit`` (channel, message) pairs from group messages already fetched for ``names``."""
        taken, expired = self.copies.take(names, limit, shared)
        for name, channels in expired:
            self.evict(name, channels)
        return taken

    def evict(self, prefix: str, channels: list[str]) -> None:
        """Members whose buffered message expired here, unread, leave their groups."""
        shard = self._shard_of(prefix)
        try:
            if shard.cluster:
                shard.script(_C_EVICT, shard.bucket_keys + (shard.key("m", prefix),), channels)
            else:
                shard.script(_EVICT, (shard.key("m", prefix),), (self._p, *channels))
        except exc.LayerUnavailable as e:
            log.warning("could not evict %d expired channel(s) of %s from their groups: %s",
                        len(channels), prefix, e)

    def group_message(self, name: str, entry: bytes, now_ms: int) -> GroupMessage:
        """A popped ``t`` or ``r`` entry (one message for members of prefix ``name``), decrypted
        and decoded once."""
        kind, field, body = parse_entry(entry)
        if field is None:
            raise exc.ChannelsError(f"a message entry on the process prefix {name!r} names no member")
        if kind == REFERENCE_KIND:
            count, key = entries.reference(field)
            targets = self.named_members(name, key, count)
        else:
            targets = entries.names(field)
        plain = bytes(self._bodies.plaintext(body))
        template = self._bodies.decoded(plain)
        deadline = time.monotonic() + (entry_deadline(entry) - now_ms) / 1000.0
        return GroupMessage(targets, plain, template, deadline)

    def named_members(self, prefix: str, key: bytes, count: int) -> list[str]:
        """The members held by a ``P:t:`` key (an ``r`` entry's), fetched once and kept.

        The key is named by the SHA1 of its content, so a kept list never goes stale; the
        fan-out keeps the key alive as long as any entry that names it.
        """
        names = self._member_lists.get(key)
        if names is None:
            shard = self._shard_of(prefix)
            # On a Cluster the reference is a field of the bucket's hash of member lists.
            data = shard.execute("HGET", shard.key("t", ""), key) if shard.cluster else shard.execute("GET", key)
            if data is None:
                raise exc.ChannelsError(f"the member list {key.decode()!r} of a group message for {prefix!r} "
                                        "is gone (flushed, or evicted by Redis' maxmemory policy)")
            names = data.decode().split(" ")
            if len(names) != count:
                raise exc.ChannelsError(f"the member list {key.decode()!r} names {len(names)} channels, "
                                        f"not {count}")
            if len(self._member_lists) >= _MEMBER_LISTS_LIMIT:
                self._member_lists.clear()
            self._member_lists[key] = names
        return names

    def deliver(self, name: str, entry: bytes, now_ms: int, shared: bool = False) -> tuple[str, dict]:
        """The ``(channel, message)`` of a live entry popped from queue ``name`` (for a group entry,
        its first member's; the others are buffered)."""
        kind, field, body = parse_entry(entry)
        if field is None:
            return name, self._bodies.open(body)
        if kind == TARGETS_KIND and SEPARATOR not in field:
            return field.decode(), self._bodies.open(body)  # one target: a send to a process-local channel
        message = self.group_message(name, entry, now_ms)
        first = message.copies(message.targets[:1], shared)[0]
        message.pos = 1
        self.copies.add(name, message)
        # Other threads of this process waiting on this prefix can take the rest now.
        shard = self._shard_of(name)
        shard.bell().ring(shard.key("q", name))
        return first

    def take_entry(self, name: str, entry: bytes, now_ms: int, shared: bool, batch: list) -> bool:
        """Add the message of a live popped ``entry`` of queue ``name`` to ``batch`` (the first member's,
        for a group entry, whose other members' copies are buffered); True when copies were buffered."""
        try:
            if not is_message(entry) and name in self.copies:
                # behind this prefix's earlier copies, so no member gets a later message first
                self.copies.add(name, self.group_message(name, entry, now_ms))
                return True
            batch.append(self.deliver(name, entry, now_ms, shared))
            return name in self.copies
        except exc.ChannelsError as e:
            # One unreadable entry must not cost the rest of the batch, already popped.
            log.error("dropped an unreadable message on %s: %s", name, e)
            return False

    def targets(self, name: str, entry: bytes, now_ms: int) -> list[str]:
        """The members an expired ``t`` or ``r`` entry of prefix ``name`` was for (none when unreadable)."""
        try:
            return self.group_message(name, entry, now_ms).targets
        except exc.ChannelsError:
            return []
