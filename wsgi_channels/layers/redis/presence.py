"""Presence on the Redis layer (issue 19): entries, leases, sweeps and changes, one script per step.

A presence group lives on the group's own shard (keys in :mod:`.feature_scripts`). Each step
(an add, a removal, a refresh, a reassertion, a sweep) is one script, so it is atomic for every
process: of several sweepers racing, exactly one removes a lapsed owner's entries and makes their
leaves. The script applies the change rule of :func:`..features.presence_change` (the mode
stored with the group) and returns what changed; this process then sends the change to the
group's ``sidecar.*!`` members (one fan-out on every shard, :meth:`_send_group_internal`).

Leases are deadlines on the Redis clock (``TIME`` inside the scripts), so processes with
drifting clocks agree on whose lease passed. ``P:px:{presence}`` indexes each group by its
earliest lease: a sweep looks only at groups with a lapsed owner.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, Mapping, Optional, Sequence

import msgpack  # type: ignore[import-untyped]  # no type information shipped

from redis.exceptions import ResponseError

from ... import exceptions as exc
from ...presence import conn_id
from ..names import non_local_name, validate_group_name
from ..features import PresenceChange, PresenceEntry, PresenceOptions, check_entries, gc_paused, presence_change
from . import presence_scripts as fs
from .connection import Script, packed
from .history import unavailable

__all__ = ["PresenceMixin", "presence_key"]

_PUT = Script(fs.PRESENCE_PUT)
_REMOVE = Script(fs.PRESENCE_REMOVE)
_REFRESH = Script(fs.PRESENCE_REFRESH)
_REASSERT = Script(fs.PRESENCE_REASSERT)
_SWEEP = Script(fs.PRESENCE_SWEEP)
_LIST = Script(fs.PRESENCE_LIST)
_COUNTS = Script(fs.PRESENCE_COUNTS)

#: The name of the sweep index on each shard (``P:px:{presence}``; in each Cluster bucket ``P:px:{T}presence``).
INDEX = "presence"


#: How an encoded ``{"i": info}`` starts, and the rest of an entry around the packed info.
_INFO_HEAD, _REST_HEAD, _USER_KEY = b"\x81\xa1i", b"\x82\xa4info", b"\xa4user"


def presence_key(keys: Any) -> bytes:
    """The BLAKE2b key of presence tags and digests for ``symmetric_encryption_keys`` (b"": none):
    derived from the first key (the one that encrypts), apart from its Fernet key."""
    if not keys:
        return b""
    first = keys[0]
    raw = first.encode() if isinstance(first, str) else bytes(first)
    return hashlib.sha256(b"wsgi_channels presence tags\0" + raw).digest()


def _undecodable() -> exc.ChannelsError:
    return exc.ChannelsError("stored presence entries could not be decoded: are they encrypted with "
                             "symmetric_encryption_keys this layer lacks, or is another application "
                             "using the same key prefix?")


def _options_args(options: PresenceOptions) -> tuple:
    return (int(options.ttl * 1000), options.events_max, "1" if options.join_leave else "0", options.max_members)


class PresenceMixin:
    """Presence of :class:`~.layer.RedisChannelLayer`."""

    #: The BLAKE2b key of the entries' user tags and digests (:func:`presence_key`; b"": none).
    _presence_key = b""

    def _entry(self, user: Optional[str], info: bytes) -> tuple[bytes, bytes, bytes]:
        """(user tag, digest, rest) of an entry as the scripts store it (:mod:`.feature_scripts`):
        ``info`` is the encoded ``{"i": info}``; the rest is ``{"info": info, "user": user}``
        (msgpack: the entry ``group_presence`` hands out but for ``since``), encrypted like a
        message body on an encrypted layer. The scripts count users by tag and see an update by
        the digest; keyed on an encrypted layer, neither tells a reader of Redis who is there."""
        if not info.startswith(_INFO_HEAD):
            raise ValueError("not an encoded {'i': info}")
        plain = _REST_HEAD + info[len(_INFO_HEAD):] + _USER_KEY + msgpack.packb(user)
        key = self._presence_key
        tag = b"" if user is None else hashlib.blake2b(user.encode(), digest_size=16, key=key,
                                                          person=b"wsc-user").hexdigest().encode()
        digest = hashlib.blake2b(plain, digest_size=16, key=key, person=b"wsc-entry").hexdigest().encode()
        return tag, digest, self._sealed(plain)  # type: ignore[attr-defined]

    def _entry_rest(self, rest: bytes) -> dict:
        """The ``{"info", "user"}`` of an entry's rest."""
        try:
            entry = msgpack.unpackb(self._bodies.plaintext(rest) if self._bodies.fernet is not None  # type: ignore[attr-defined]
                                    else rest, raw=False, strict_map_key=True)
        except (ValueError, msgpack.UnpackException, exc.ChannelsError):
            entry = None
        if type(entry) is not dict or "user" not in entry:
            raise _undecodable()
        return entry

    def _presence_keys(self, group: str) -> tuple[Any, tuple[bytes, ...]]:
        shard = self._feature_shard(group)  # type: ignore[attr-defined]
        key = shard.key
        return shard, (key("pe", group), key("pu", group), key("po", group), key("pm", group), key("px", INDEX),
                       key("pb", group), key("pf", group))

    def _presence_script(self, what: str, group: str, script: Script, args: Sequence[Any]) -> Any:
        shard, keys = self._presence_keys(group)
        return self._run(what, shard, script, keys, (group,) + tuple(args))  # type: ignore[attr-defined]

    def _event(self, raw: list) -> list:
        if raw[0] == b"l":
            return ["l", raw[1].decode()]
        rest = self._entry_rest(raw[2])
        return ["j", raw[1].decode(), rest["user"], rest["info"], int(float(raw[3]) * 1000)]

    def _changed(self, group: str, reply: list) -> tuple[PresenceChange, Optional[PresenceChange]]:
        """(the change, what the sidecars get or None) of a script's change reply."""
        v, clients, users, before, join_leave, events_max = reply[:6]
        events = [self._event(raw) for raw in reply[6:]]
        _, change, sent = presence_change(group, int(v), int(clients), int(users), before.decode(),
                                          join_leave == b"1", int(events_max), events)
        return change, sent

    def _presence_send(self, group: str, reply: list) -> Optional[PresenceChange]:
        """Send the change of a script's reply ({}: none) to the group's sidecars; return it."""
        if not reply:
            return None
        change, sent = self._changed(group, reply)
        if sent is not None:
            self._send_group_internal(group, sent.message())  # type: ignore[attr-defined]
        return change

    def _presence_put(self, group: str, options: PresenceOptions, channel: str, user: Optional[str],
                      info: bytes) -> tuple[bool, dict, Optional[tuple[PresenceChange, Optional[PresenceChange]]]]:
        """Make or update ``channel``'s entry: (made or changed, the notice's ``p``, the change not sent yet)."""
        cid = conn_id(channel)
        reply = self._presence_script(f"a presence entry in {group!r}", group, _PUT,
                                      _options_args(options) + (cid, non_local_name(channel),
                                                                *self._entry(user, info), repr(time.time())))
        if reply[0] == -1:
            raise exc.PresenceFull(f"group {group!r} has {reply[1]} presence entries (max_members "
                                   f"{options.max_members} of {options.pattern!r}): not added")
        since = float(reply[1])
        notice = {"id": cid, "ttl": options.ttl, "ev": options.events_max, "m": reply[2].decode(), "u": user,
                  "i": self._bodies.decoded(info)["i"], "s": since}  # type: ignore[attr-defined]
        return bool(reply[0]), notice, self._changed(group, reply[3]) if len(reply) > 3 else None

    def _presence_entries(self, group: str) -> dict[str, PresenceEntry]:
        validate_group_name(group)
        shard, keys = self._presence_keys(group)
        fernet = self._bodies.fernet  # type: ignore[attr-defined]
        # The script answers with the entries' msgpack fragments (PRESENCE_LIST), joined here into
        # one msgpack value: a thousand entries are decoded in one call, and no object is made but
        # those handed out (the entries and their info). An object per entry more is what set off
        # Python's cyclic GC twice as often, whose full collections (as long as the heap) made the
        # slow calls; the decoding runs with the GC paused (features.gc_paused).
        head, fragments = self._run(f"the presence of {group!r}", shard, _LIST,  # type: ignore[attr-defined]
                                    (keys[0], keys[2], keys[3], keys[6]), ("e" if fernet is not None else "p",))
        reply = head + b"".join(fragments)
        with gc_paused():
            return self._presence_decode(reply, fernet)

    def _presence_decode(self, reply: bytes, fernet: Any) -> dict[str, PresenceEntry]:
        try:
            if fernet is None:
                return msgpack.unpackb(reply, raw=False, strict_map_key=True)  # type: ignore[no-any-return]
            from cryptography.fernet import InvalidToken

            flat = msgpack.unpackb(reply, raw=False, strict_map_key=True)
            decrypt = fernet.decrypt
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
            try:
                unpacker.feed(b"".join([decrypt(rest) for rest in flat[2::3]]))
            except InvalidToken:
                raise _undecodable() from None
            found: dict[str, Any] = {}
            for cid, since, entry in zip(flat[::3], flat[1::3], unpacker):
                if type(entry) is not dict or "user" not in entry:
                    raise _undecodable()
                entry["since"] = since
                found[cid] = entry
            if len(found) * 3 != len(flat):
                raise _undecodable()
            return found
        except (ValueError, TypeError, msgpack.UnpackException):
            raise _undecodable() from None

    def _presence_counts(self, group: str) -> dict[str, int]:
        validate_group_name(group)
        shard, keys = self._presence_keys(group)
        clients, users = self._run(f"the presence counts of {group!r}", shard, _COUNTS,  # type: ignore[attr-defined]
                                   keys[:2], ())
        return {"clients": int(clients), "users": int(users)}

    def presence_refresh(self, owner: str, groups: Sequence[str]) -> list[bool]:
        by_shard: dict[Any, list] = {}
        for i, group in enumerate(groups):
            shard, keys = self._presence_keys(group)
            by_shard.setdefault(shard, []).append(
                (i, packed("EVALSHA", _REFRESH.sha, len(keys), *keys, group, owner)))
        found = [False] * len(groups)
        for shard, items in by_shard.items():
            replies = shard.pipeline([payload for _, payload in items], _REFRESH)
            for (i, _), reply in zip(items, replies):
                if isinstance(reply, Exception):
                    raise unavailable("a presence refresh", reply)
                found[i] = bool(reply)
        return found

    def presence_remove(self, group: str, owner: str, conn_ids: Sequence[str]) -> Optional[PresenceChange]:
        validate_group_name(group)
        conn_ids = list(conn_ids)
        if not conn_ids:
            return None
        reply = self._presence_script(f"a presence removal in {group!r}", group, _REMOVE, [owner] + conn_ids)
        return self._presence_send(group, reply)

    def presence_reassert(self, owner: str, group: str,
                          entries: Mapping[str, Mapping[str, Any]]) -> Optional[PresenceChange]:
        validate_group_name(group)
        checked = check_entries(entries)
        options = self.presence_options(group) or PresenceOptions()  # type: ignore[attr-defined]
        args: list[Any] = list(_options_args(options)) + [owner]
        for cid, (user, info, since) in checked.items():
            args += [cid, *self._entry(user, info), repr(since)]
        reply = self._presence_script(f"a presence reassertion in {group!r}", group, _REASSERT, args)
        return self._presence_send(group, reply)

    def presence_sweep(self, limit: int = 32) -> list[PresenceChange]:
        changes: list[PresenceChange] = []
        for shard in self._shards:  # type: ignore[attr-defined]
            try:
                due = shard.execute("ZRANGEBYSCORE", shard.key("px", INDEX), "-inf", shard.now_ms(), "LIMIT", 0, limit)
            except ResponseError as e:
                raise unavailable("a presence sweep", e) from e
            for raw in due:
                group = raw.decode()
                change = self._presence_send(group, self._presence_script(
                    f"a presence sweep of {group!r}", group, _SWEEP, ()))
                if change is not None:
                    changes.append(change)
                    if len(changes) >= limit:
                        return changes
        return changes
