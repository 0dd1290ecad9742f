"""The members of the Redis layer's hash ring: a server or a Sentinel-watched service.

The ring (:mod:`..hashring`) maps a name to a member by the member's ``identity``; the member
maps it to the *vshard* whose keys hold it: for a server (or the primary of a Sentinel
service) the :class:`~.connection.Shard` itself, keys ``P:kind:{name}`` as ever.

``identity`` never depends on where a member's server turns out to be, so every process
agrees on the ring: ``host:port/db`` for a server (as before), ``sentinel:NAME/db@sentinels``
for a Sentinel service. Every process must be given the same URLs.
"""
from __future__ import annotations

from typing import Any, Callable

from .connection import Shard

__all__ = ["ServerMember"]


class ServerMember:
    """One Redis server (or the primary of a Sentinel service) of the ring: one vshard."""

    def __init__(self, shard: Shard, identity: str | None = None) -> None:
        self.shard = shard
        self.identity = identity or shard.identity

    def vshard_for(self, name: str) -> Any:
        return self.shard

    def vshards(self) -> list:
        return [self.shard]

    def nodes(self) -> list[Shard]:
        """Every primary this member's keys may live on (flush and statistics visit each)."""
        return [self.shard]

    @property
    def epoch(self) -> int:
        """Bumped by every failover this process followed."""
        return self.shard.epoch

    def on_change(self, callback: Callable[[], None]) -> None:
        self.shard.on_move(callback)

    def close(self) -> None:
        self.shard.close()
        if self.shard.locator is not None:
            self.shard.locator.close()
