"""Group history on the Redis layer (issue 18), and what history and presence share there.

A history group's stream lives on the group's own shard (the ring places it by the group's
name, with the group's hash tag): one script numbers and keeps a message (:data:`.feature_scripts.HIST_APPEND`),
then the group's fan-out on every shard queues the message for the members, the copies for
``sidecar.*!`` prefixes stamped ``__wsc_h = [group, epoch, offset]`` (:data:`.feature_scripts.FEATURE_FANOUT`).
The offset is assigned and the message kept in one atomic step, so offsets are contiguous and
never reused within an epoch; on the group's own server the members' copies are queued in the
same script (the stamp completed in Lua). The copies on other servers (shards, Cluster buckets)
and all of them on an encrypted layer (the stamp is inside the encrypted body, so the client
makes it) are queued next, each server keeping them in offset order: a copy whose predecessor's
has not been queued there yet waits for it (:data:`ORDER_WAIT_SECONDS` at most, then it is queued
anyway: the publisher of the predecessor died between keeping it and queueing its copies).

The epoch follows the server: see :mod:`.feature_scripts` (run_id rule). A membership of a
``sidecar.*!`` channel in a history or presence group queues its notice (``__wsc_n``) in the
membership's own script, whatever the channel's capacity, completed there with the group's
position at the membership (:func:`.feature_scripts.join_position`: from the stream on the
group's own server, from the server's order mark elsewhere).
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

from redis.exceptions import ResponseError

from ... import exceptions as exc
from ...presence import conn_id
from ...serialization import encode, with_keys
from ..names import is_sidecar_prefix, non_local_name, validate_group_name
from ..features import (STAMP_KEY, Features, HistoryOptions, HistoryPage, add_notice, check_since_limit,
                        discard_notice, new_epoch)
from . import feature_scripts as fs
from .feature_scripts import FEATURE_KEY_KINDS
from .cluster_features import ADD_NOTICE as C_ADD_NOTICE
from .cluster_features import DISCARD_NOTICE as C_DISCARD_NOTICE
from .cluster_features import ClusterFeaturesMixin
from .connection import NOW, Script, bulk, packed, run_everywhere
from .entries import DEADLINE_DIGITS, history_item

__all__ = ["HistoryMixin", "FEATURE_KEY_KINDS"]

# The scripts that read a stream's meta take the run_id of the connection as their last argument,
# packed empty here (RUN_ID): see .link.Script.run_id and the epoch rule in .feature_scripts.
_APPEND = Script(fs.HIST_APPEND, run_id=True)
_READ = Script(fs.HIST_READ, run_id=True)
_FANOUT = Script(fs.FEATURE_FANOUT)
_KEEP = Script(fs.FEATURE_FANOUT, run_id=True)  # the same script, in mode KEEP
_ADD_NOTICE = Script(fs.GROUP_ADD_NOTICE)
_ADD_NOTICE_LOCAL = Script(fs.GROUP_ADD_NOTICE, run_id=True)  # with POSITION_LOCAL
#: The run_id argument as the callers pack it (filled in by the connection that sends it).
RUN_ID = b""
_DISCARD_NOTICE = Script(fs.GROUP_DISCARD_NOTICE)

#: Meta lifetime of a stream first touched by a reader with no pattern for it (as memory and ipc).
DEFAULT_META_TTL = 86400.0

_DEADLINE = b"%%0%dd" % DEADLINE_DIGITS
#: Longest a stamped copy waits for its predecessor's to be queued on a server (another publisher's
#: fan-out under way) before it is queued anyway: that publisher died between keeping and queueing.
ORDER_WAIT_SECONDS = 0.25
_CACHE_LIMIT = 10_000
#: How msgpack ends ``[group, "", 0]``: cut off, the rest of a stamp for the script to complete.
_EMPTY_EPOCH_AND_ZERO = b"\xa0\x00"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def trust_persistence(value: Any) -> bool:
    """``history_trust_persistence`` as a bool (keyword or URL query: 1/0, true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise exc.ConfigurationError(f"history_trust_persistence must be 1 or 0 (true/false), not {value!r}")


def unavailable(what: str, error: BaseException) -> exc.LayerUnavailable:
    """A refusal by Redis (an error reply: out of memory, a read-only replica, ...) as the layer's error."""
    return exc.LayerUnavailable(f"Redis refused {what}: {error}")


class HistoryMixin(ClusterFeaturesMixin):
    """Group history, notices and the features' fan-out of :class:`~.layer.RedisChannelLayer`."""

    _p: str
    _bodies: Any
    _keep_cache: dict[str, tuple]
    _wait: Any
    _expiry_ms: int
    _gexp_ms: int
    _rules_flag: bytes
    _trust: bytes
    capacity: int
    process_capacity: int
    max_message_size: int

    # -- shared by history and presence -------------------------------------------------------

    def _feature_shard(self, name: str) -> Any:
        """The shard holding ``name``'s history or presence (the group's own: by the ring, and on a
        Cluster the group's bucket, whose tag every key of the group carries)."""
        return self._shard_of(name)  # type: ignore[attr-defined]

    def _sealed(self, body: bytes) -> bytes:
        """``body`` (an encoded message) as stored: encrypted when the layer has keys (:mod:`.bodies`)."""
        fernet = self._bodies.fernet
        return fernet.encrypt(body) if fernet is not None else body

    def _run(self, what: str, shard: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``shard``'s script (with ``wait_replicas``' WAIT), an error reply raised as ``LayerUnavailable``."""
        try:
            return self._script_waited(shard, script, keys, args)  # type: ignore[attr-defined]
        except ResponseError as e:
            raise unavailable(what, e) from e

    def _feature_fan_out(self, group: str, body: bytes, mode: str, stamped: bytes = b"", skip: Any = None,
                         order: Optional[tuple] = None) -> int:
        """Queue ``body`` for ``group``'s members on every shard (``mode``: :data:`.feature_scripts.STAMPED`,
        ``stamped`` for ``sidecar.*!`` prefixes; :data:`.feature_scripts.SIDECARS_ONLY`), but on ``skip``;
        the members skipped because their channel was full (counted). ``order``: ``(epoch, offset,
        meta ttl ms)`` of the stamp: each server queues the copies in offset order, so a shard that
        answers :data:`.feature_scripts.ORDER_WAIT` gets the copy again shortly (forced after
        :data:`ORDER_WAIT_SECONDS`)."""
        vshards = [v for v in self._shards if v is not skip]  # type: ignore[attr-defined]
        shards = [v for v in vshards if not v.cluster]
        dropped = 0
        if len(shards) < len(vshards):
            dropped += self._cluster_feature_fan_out([v for v in vshards if v.cluster], group, body, mode, stamped,
                                                     order)
        keys = self._group_keys(group)  # type: ignore[attr-defined]
        tail: tuple = ()
        if order is not None:
            keys += (self._key("hx", group),)  # type: ignore[attr-defined]
            tail = (order[0], order[1])
        waited = 0.0
        while shards:
            force = "1" if waited >= ORDER_WAIT_SECONDS else "0"
            payloads = [packed("EVALSHA", _FANOUT.sha, len(keys), *keys, self._p, self._expiry_ms, self._gexp_ms,
                               self.capacity, self.process_capacity, self._rules_flag, body,
                               _DEADLINE % (s.now_ms() + self._expiry_ms), mode, stamped,
                               *(tail + (force, order[2]) if order is not None else ())) for s in shards]
            try:
                replies = run_everywhere(shards, _FANOUT, payloads, tail=self._wait)
            except ResponseError as e:
                raise unavailable(f"a message for group {group!r}", e) from e
            if self._wait is not None:
                for acked in replies[1::2]:
                    self._replicated(acked)  # type: ignore[attr-defined]
                replies = replies[::2]
            dropped += sum(r for r in replies if r != fs.ORDER_WAIT)
            shards = [s for s, r in zip(shards, replies) if r == fs.ORDER_WAIT]
            if shards:
                pause = min(0.01, 0.0005 + waited / 4)
                time.sleep(pause)
                waited += pause
        if dropped:
            self._count("group_drop_count", dropped)  # type: ignore[attr-defined]
        return dropped

    def _send_group_internal(self, group: str, message: dict, sidecars_only: bool = True) -> None:
        validate_group_name(group)
        body = self._sealed(encode({}, None, message))
        if sidecars_only:
            self._feature_fan_out(group, body, fs.SIDECARS_ONLY)
        else:
            self._feature_fan_out(group, body, fs.STAMPED, body)

    def _join_notice(self, shard: Any, group: str, history: Optional[HistoryOptions],
                     presence: Optional[dict]) -> tuple[tuple, tuple]:
        """The add notice for a membership made on ``shard``: ``(extra keys, (body, position
        arguments...))`` of the notice script, which completes the group's position at the
        membership (``h``) in the same script (:func:`.feature_scripts.join_position`): read from
        the stream when it lives on ``shard`` (not a Cluster: another slot there), else from
        ``shard``'s order mark, given ``group_position`` read just before. An encrypted body cannot
        be completed by a script: the position read just before goes in whole. It is then at or
        before the membership's cut (a message numbered between the read and the membership may
        have been queued here before the membership): the sidecar takes such a message, missing
        from its live stream, from the history (a hole) or a resume replays it, never the other way
        round (a message after the position the socket would not get)."""
        if history is None:
            return (), (self._sealed(encode({}, None, add_notice(group, False, presence))),)
        home = self._feature_shard(group)
        if self._bodies.fernet is None and home is shard and not shard.cluster:
            head = encode({}, None, add_notice(group, ["", 0], presence))
            assert head.endswith(_EMPTY_EPOCH_AND_ZERO)
            return ((shard.key("h", group), shard.key("hm", group)),
                    (head[:-len(_EMPTY_EPOCH_AND_ZERO)], fs.POSITION_LOCAL, new_epoch(), _ms(history.meta_ttl), RUN_ID))
        read = self._history_read([(group, 0, 0)])[0]
        if isinstance(read, BaseException):
            raise read
        if self._bodies.fernet is not None:
            return (), (self._sealed(encode({}, None, add_notice(group, [read.epoch, read.top], presence))),)
        head = encode({}, None, add_notice(group, ["", 0], presence))
        return ((shard.key("hx", group),),
                (head[:-len(_EMPTY_EPOCH_AND_ZERO)], fs.POSITION_MARK, read.epoch, read.top))

    def _notice_membership(self, group: str, channel: str, add: Optional[tuple] = None, always: bool = False) -> bool:
        """Add (``add``: the group's history options or None, and the notice's presence entry) or
        discard (None) the membership of a ``sidecar.*!`` channel, queueing its notice in the same
        script; True when it was a new membership (a discard: a member)."""
        qname = non_local_name(channel)
        shard = self._shard_of(qname)  # type: ignore[attr-defined]
        deadline = _DEADLINE % (shard.now_ms() + self._expiry_ms)
        if shard.cluster:  # the member's bucket (cluster_features); the group and the channel first
            keys = shard.bucket_keys + (shard.key("m", qname), shard.key("q", qname), shard.key("u", qname))
            scripts, names = (C_ADD_NOTICE, C_DISCARD_NOTICE), (group, channel)
        else:
            keys = self._group_keys(group) + (self._key("m", qname), self._key("q", qname),  # type: ignore[attr-defined]
                                              self._key("u", qname))  # type: ignore[attr-defined]
            scripts, names = (_ADD_NOTICE, _DISCARD_NOTICE), (channel, group)
        if add is not None:
            more, notice = self._join_notice(shard, group, add[0], add[1])
            fixed = (self._gexp_ms, self.get_capacity(qname))  # type: ignore[attr-defined]
            rest = ("2" if always else "1", deadline, self._expiry_ms) + notice
            args: tuple[Any, ...] = names + fixed + rest if shard.cluster else (channel,) + fixed + (group,) + rest
            script = _ADD_NOTICE_LOCAL if notice[1:2] == (fs.POSITION_LOCAL,) else scripts[0]
            return bool(self._run(f"group_add to {group!r}", shard, script, keys + more, args))
        body = self._sealed(encode({}, None, discard_notice(group)))
        args = (*names, deadline, self._expiry_ms, self._gexp_ms, body)
        return bool(self._run(f"group_discard from {group!r}", shard, scripts[1], keys, args))

    def _group_add_featured(self, group: str, channel: str, presence: Any, features: Optional[Features]) -> None:
        """``group_add`` in a history or presence group (or with ``presence=``): the presence entry first
        (``PresenceFull`` changes nothing), then the membership with its notice, then the change."""
        made = None
        if presence is not None:
            options, user, info = self._presence_arg(group, presence)  # type: ignore[attr-defined]
            made = self._presence_put(group, options, channel, user, encode({"i": info}, None))  # type: ignore[attr-defined]
        assert features is not None
        if is_sidecar_prefix(non_local_name(channel)):
            self._notice_membership(group, channel, (features.history, made[1] if made is not None else None),
                                    always=made is not None and made[0])
        else:
            self._group_add(group, channel)  # type: ignore[attr-defined]
        self._journal_membership("add", group, channel)  # type: ignore[attr-defined]
        if made is not None and made[2] is not None and made[2][1] is not None:
            self._send_group_internal(group, made[2][1].message())

    def _group_discard_featured(self, group: str, channel: str, features: Features) -> None:
        """``group_discard`` in a history or presence group: the membership (its notice), then the entry."""
        if is_sidecar_prefix(non_local_name(channel)):
            self._notice_membership(group, channel, None)
        else:
            self._group_discard(group, channel)  # type: ignore[attr-defined]
        self._journal_membership("discard", group, channel)  # type: ignore[attr-defined]
        if features.presence is not None:
            self.presence_remove(group, non_local_name(channel), [conn_id(channel)])  # type: ignore[attr-defined]

    # -- history ------------------------------------------------------------------------------

    def _keep_command(self, group: str, options: HistoryOptions) -> tuple[Any, Optional[bytes]]:
        """The group's shard and, where one script numbers, keeps and queues a message (a plain layer,
        the group's own shard not a Cluster bucket), that script's command (:data:`.feature_scripts.KEEP`)
        packed but for the body, the deadline and the candidate epoch (a ``%`` format of them), with
        the stamp's start packed for the script (:data:`.feature_scripts.STAMP_LUA`); cached per group.
        Else None for the command."""
        found = self._keep_cache.get(group)
        if found is not None:
            return found
        validate_group_name(group)
        shard = self._feature_shard(group)
        if self._bodies.fernet is not None or shard.cluster:
            return shard, None  # not cached: a Cluster bucket's owner may change
        stamp = with_keys(b"\x80", {STAMP_KEY: [group, "", 0]})
        assert stamp.endswith(_EMPTY_EPOCH_AND_ZERO)
        keys = self._group_keys(group) + (shard.key("h", group), shard.key("hm", group))  # type: ignore[attr-defined]
        mode = fs.KEEP_POSITION if len(self._shards) > 1 else fs.KEEP  # type: ignore[attr-defined]
        head_args = ("EVALSHA", _KEEP.sha, len(keys), *keys, self._p, self._expiry_ms, self._gexp_ms, self.capacity,
                     self.process_capacity, self._rules_flag)
        tail_args = (mode, stamp[1:-len(_EMPTY_EPOCH_AND_ZERO)])
        rest_args = (options.size, _ms(options.ttl), _ms(options.meta_ttl), self._trust, RUN_ID)
        count = len(head_args) + 2 + len(tail_args) + 1 + len(rest_args)  # + body, deadline; + candidate epoch
        command = (b"*%d\r\n" % count + bulk(*head_args).replace(b"%", b"%%") + b"$%d\r\n%s\r\n" + NOW
                   + bulk(*tail_args).replace(b"%", b"%%") + b"$%d\r\n%s\r\n" + bulk(*rest_args).replace(b"%", b"%%"))
        if len(self._keep_cache) >= _CACHE_LIMIT:
            self._keep_cache.clear()
        found = self._keep_cache[group] = (shard, command)
        return found

    def _send_group_history(self, group: str, message: dict, options: HistoryOptions) -> None:
        """``send_group`` to a history group. On the group's own shard one script numbers and keeps the
        message and queues the copies of the members there, the sidecars' stamped (:data:`.feature_scripts.KEEP`);
        then the fan-out on the other shards, if any, with the stamp it answered. An encrypted layer
        (the stamp goes inside the encrypted body) and a Cluster (members in other buckets than the
        group's) number and keep first, then fan out everywhere."""
        body = encode(message, self.max_message_size)
        shard, command = self._keep_command(group, options)
        if command is not None:
            candidate = new_epoch().encode()
            payload = command % (len(body), body, shard.now_ms() + self._expiry_ms, len(candidate), candidate)
            try:
                if self._wait is None:
                    reply = shard.call(_KEEP, payload)
                else:
                    reply, acked = shard.pipeline([payload], _KEEP, tail=(self._wait,))
                    if isinstance(reply, Exception):
                        raise reply
                    self._replicated(acked)  # type: ignore[attr-defined]
            except ResponseError as e:
                raise unavailable(f"a message for history group {group!r}", e) from e
            if type(reply) is int:  # KEEP: the members skipped
                if reply:
                    self._count("group_drop_count", reply)  # type: ignore[attr-defined]
                return
            dropped, epoch, offset = reply.split(b" ")  # KEEP_POSITION: other shards follow
            if dropped != b"0":
                self._count("group_drop_count", int(dropped))  # type: ignore[attr-defined]
            stamped = with_keys(body, {STAMP_KEY: [group, epoch.decode(), int(offset)]})
            self._feature_fan_out(group, body, fs.STAMPED, stamped, skip=shard,
                                  order=(epoch, int(offset), _ms(options.meta_ttl)))
            return
        plain = self._sealed(body)
        keys = (shard.key("h", group), shard.key("hm", group))
        args = (new_epoch(), options.size, _ms(options.ttl), _ms(options.meta_ttl))
        what = f"a message for history group {group!r}"
        epoch, offset = self._run(what, shard, _APPEND, keys, args + (plain, self._trust, RUN_ID))
        stamped = self._sealed(with_keys(body, {STAMP_KEY: [group, epoch.decode(), offset]}))
        self._feature_fan_out(group, plain, fs.STAMPED, stamped, order=(epoch, offset, _ms(options.meta_ttl)))

    def _history_read(self, requests: Sequence[tuple[str, int, int]]) -> list[Union[HistoryPage, BaseException]]:
        found: list[Any] = [None] * len(requests)
        by_shard: dict[Any, list] = {}
        for i, (group, since, limit) in enumerate(requests):
            try:
                validate_group_name(group)
                check_since_limit(since, limit, allow_zero=True)
                shard = self._feature_shard(group)
            except Exception as e:
                found[i] = e
                continue
            options = self.history_options(group)  # type: ignore[attr-defined]
            keys = (shard.key("h", group), shard.key("hm", group))
            meta_ttl = options.meta_ttl if options is not None else DEFAULT_META_TTL
            by_shard.setdefault(shard, []).append(
                (i, packed("EVALSHA", _READ.sha, 2, *keys, new_epoch(), _ms(meta_ttl), since, limit, self._trust,
                           RUN_ID)))
        for shard, items in by_shard.items():
            try:
                replies = shard.pipeline([payload for _, payload in items], _READ)
            except exc.LayerUnavailable as e:
                for i, _ in items:
                    found[i] = e
                continue
            for (i, _), reply in zip(items, replies):
                if isinstance(reply, Exception):
                    found[i] = unavailable("a history read", reply)
                    continue
                messages = []
                for item in reply[2:]:
                    offset, body = history_item(item)
                    messages.append((offset, self._bodies.open(body)))
                found[i] = HistoryPage(reply[0].decode(), int(reply[1]), messages)
        return found
