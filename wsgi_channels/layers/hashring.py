"""A consistent-hash ring with virtual nodes, for spreading channel names over Redis shards.

Each shard owns ``replicas`` points on a 64-bit ring; a name belongs to the
shard owning the first point at or after the name's own hash. A shard's points
depend only on its identity (``host:port/db``), never on its position in the
list or on the other shards, so adding a fourth shard to three moves about a
quarter of the names (the ones that now fall on the newcomer's points) and no
name moves between the old shards.
"""
from __future__ import annotations

import bisect
import hashlib
from typing import Sequence

__all__ = ["HashRing", "DEFAULT_REPLICAS"]

#: Points per shard: enough that three or four shards split names within a few percent.
DEFAULT_REPLICAS = 256


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """Map names to node indexes; ``nodes`` are stable node identities (for example ``"host:6379/0"``)."""

    __slots__ = ("nodes", "replicas", "_points", "_owners", "_cache")

    def __init__(self, nodes: Sequence[str], replicas: int = DEFAULT_REPLICAS) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError(f"hash ring nodes must be distinct, got {list(nodes)!r}")
        self.nodes = list(nodes)
        self.replicas = int(replicas)
        points = sorted(
            (_hash64(f"{node}#{r}".encode()), index)
            for index, node in enumerate(self.nodes)
            for r in range(self.replicas)
        )
        self._points = [p for p, _ in points]
        self._owners = [i for _, i in points]
        self._cache: dict[str, int] = {}

    def node_for(self, name: str) -> int:
        """Index (into ``nodes``) of the node that owns ``name``."""
        index = self._cache.get(name)
        if index is None:
            if len(self.nodes) == 1:
                index = 0
            else:
                i = bisect.bisect_left(self._points, _hash64(name.encode()))
                index = self._owners[i % len(self._points)]
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[name] = index
        return index

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"<HashRing nodes={self.nodes!r} replicas={self.replicas}>"
