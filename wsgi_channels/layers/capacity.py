"""How many messages a channel may hold: the ``capacity`` rules every backend applies the same way.

A channel's capacity is the first ``channel_capacity`` rule (an fnmatch glob or a compiled
regex) that matches its queue's name, else ``process_capacity`` for a sidecar's own process
prefix (``sidecar.<token>!``: one prefix carries every connection of a sidecar, CONTRACT.md
section 3), else ``capacity``. A ``prefix!suffix`` channel counts on its ``prefix!``.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Mapping, Pattern, Union

from .. import exceptions as exc
from .names import is_sidecar_prefix, non_local_name

__all__ = ["CapacityKey", "CapacitySpec", "CapacityRules"]

#: A ``channel_capacity`` key: an fnmatch glob or a compiled regex.
CapacityKey = Union[str, Pattern[str]]
#: What ``channel_capacity`` takes: a mapping or ``(key, capacity)`` pairs, first match wins.
CapacitySpec = Union[Mapping[CapacityKey, int], Iterable[tuple[CapacityKey, int]], None]

#: Names whose capacity is remembered (a cache, not a limit on names).
_CACHE_LIMIT = 10000


class CapacityRules:
    """The capacity of each queue name, from the ``channel_capacity`` rules and the two defaults.

    Owned by a layer (:class:`~wsgi_channels.layers.base.BaseChannelLayer`); true when any
    ``channel_capacity`` rule is given (the Redis scripts then take capacities from the caller).
    """

    __slots__ = ("capacity", "process_capacity", "rules", "_cache")

    def __init__(self, spec: Any, capacity: int, process_capacity: int) -> None:
        self.capacity = capacity
        self.process_capacity = process_capacity
        self.rules = self.compile(spec)
        self._cache: dict[str, int] = {}

    @staticmethod
    def compile(spec: Any) -> list[tuple[Pattern[str], int]]:
        """``(compiled pattern, capacity)`` of each ``channel_capacity`` rule, checked."""
        if not spec:
            return []
        items = spec.items() if isinstance(spec, Mapping) else spec
        rules = []
        for pattern, cap in items:
            if isinstance(pattern, str):
                compiled = re.compile(fnmatch.translate(pattern))
            elif isinstance(pattern, re.Pattern):
                compiled = pattern
            else:
                raise exc.ConfigurationError(
                    f"channel_capacity key {pattern!r} must be a glob string or a compiled regex"
                )
            if int(cap) < 1:
                raise exc.ConfigurationError(f"channel_capacity for {pattern!r} must be at least 1")
            rules.append((compiled, int(cap)))
        return rules

    def __bool__(self) -> bool:
        return bool(self.rules)

    def of(self, channel: str) -> int:
        """Capacity of ``channel`` (for ``prefix!suffix``, of ``prefix!``); first matching rule wins."""
        name = non_local_name(channel)
        cap = self._cache.get(name)
        if cap is None:
            cap = self.process_capacity if is_sidecar_prefix(name) else self.capacity
            for pattern, value in self.rules:
                if pattern.match(name):
                    cap = value
                    break
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[name] = cap
        return cap
