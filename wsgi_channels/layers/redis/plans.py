"""How a receive on a channel list reaches each shard: the queues there and their packed commands.

A channel list is planned once per shard (:class:`ShardPlan`, cached by the layer per list):
the names of the list whose queues live on that shard, their keys, and the ``RECEIVE`` /
``RECEIVE_MANY`` script commands (:mod:`.scripts`, :mod:`.cluster_scripts` on a Redis
Cluster) packed up to their per-call arguments, once per starting point of the round robin.
The receiving code (:mod:`.receive`) runs them, and keeps on each plan what it learnt about
its queues (``drained``, ``read_at``).
"""
from __future__ import annotations

from typing import Any

from . import cluster_scripts as cscripts
from . import connection
from . import scripts
from .connection import Script, bulk

__all__ = ["ShardPlan"]

_RECEIVE = Script(scripts.RECEIVE)
_RECEIVE_MANY = Script(scripts.RECEIVE_MANY)
_C_RECEIVE = Script(cscripts.RECEIVE)
_C_RECEIVE_MANY = Script(cscripts.RECEIVE_MANY)


class ShardPlan:
    """The queues of one channel list that live on one shard, with their receive commands packed.

    A receive tries the queues in turn, starting one further along each time (so a busy
    channel cannot starve a quiet one); the fixed part of the command for each starting
    point is packed once. A single plain channel (not a ``prefix!``) needs no script: its
    queue holds only ``m`` entries and nothing but an expired head is ever skipped, so a
    plain ``LPOP`` (``lpop``) does the script's work, the deadline checked on our side.
    """

    __slots__ = ("shard", "names", "keys", "flags", "prefix", "lpop", "plain", "drained", "read_at", "_packed",
                 "scripts")

    def __init__(self, shard: Any, names: list[str], prefix: str) -> None:
        self.shard = shard
        self.names = names
        self.keys = [shard.key("q", name) for name in names]
        self.flags = [b"1" if name.endswith("!") else b"0" for name in names]
        self.prefix = prefix
        #: (RECEIVE, RECEIVE_MANY) of the shard's key layout.
        self.scripts = (_C_RECEIVE, _C_RECEIVE_MANY) if shard.cluster else (_RECEIVE, _RECEIVE_MANY)
        self.lpop = connection.packed("LPOP", self.keys[0]) if self.flags == [b"0"] else None
        #: Only plain channels (no ``prefix!``): a blocking wait may be one ``BLPOP`` (see :meth:`.receive.ReceivingMixin._blocking_pop`).
        self.plain = b"1" not in self.flags
        #: The last batch receive on them got less than it asked for: they were left empty, and
        #: the next one starts with the blocking pop (an answer at once if a message came since).
        self.drained = False
        #: When (monotonic) a blocking pop on a process prefix of this list last returned: see
        #: :meth:`.receive.ReceivingMixin._blocking_pop_prefix`.
        self.read_at = float("-inf")
        self._packed: dict[tuple[int, bool], tuple[bytes, list[str]]] = {}

    def _command(self, rr: int, many: bool) -> tuple[bytes, list[str]]:
        """(packed command up to its per-call arguments, names in the order tried)."""
        r = rr % len(self.names)
        got = self._packed.get((r, many))
        if got is None:
            keys, flags, names = (self.keys[r:] + self.keys[:r], self.flags[r:] + self.flags[:r],
                                  self.names[r:] + self.names[:r])
            script = self.scripts[many]
            if self.shard.cluster:
                # EVALSHA sha numkeys bucket-keys... (q | q u m)... flags... [most] now: every key declared
                shard = self.shard
                keys = list(shard.bucket_keys) + [k for name in names for k in (
                    (shard.key("q", name), shard.key("u", name), shard.key("m", name)) if name.endswith("!")
                    else (shard.key("q", name),))]
                count = 3 + len(keys) + len(flags) + (2 if many else 1)
                head = b"*%d\r\n" % count + bulk("EVALSHA", script.sha, len(keys), *keys, *flags)
            else:
                # EVALSHA sha numkeys keys... P flags... [most] now
                count = 4 + 2 * len(keys) + (2 if many else 1)
                head = b"*%d\r\n" % count + bulk("EVALSHA", script.sha, len(keys), *keys, self.prefix, *flags)
            got = self._packed[(r, many)] = (head, names)
        return got

    def receive(self, rr: int) -> tuple[bytes, list[str]]:
        return self._command(rr, False)

    def receive_many(self, rr: int) -> tuple[bytes, list[str]]:
        return self._command(rr, True)
