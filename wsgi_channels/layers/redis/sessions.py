"""The Redis layer's small key-value store: channel sessions and ordering state.

One string per entry (``P:s:{key}``, see :mod:`.scripts`), on the shard (or Cluster bucket)
the key hashes to, beside the queues; every entry expires (``PX``). The compare-and-set is
one script (``SESSION_CAS``), so it is atomic for every process. The layer checks the key
and the value (:meth:`~wsgi_channels.layers.base.BaseChannelLayer.session_get` and the
others say what each does) and hands over the shard.
"""
from __future__ import annotations

from typing import Any

from . import cluster_scripts as cscripts
from . import scripts
from .connection import Script

__all__ = ["get", "put", "delete", "compare_and_set"]

_SESSION_CAS = Script(scripts.SESSION_CAS)
_C_SESSION_CAS = Script(cscripts.SESSION_CAS)


def _ttl_ms(ttl: float) -> int:
    if ttl <= 0:
        raise ValueError(f"session ttl must be positive, got {ttl!r}")
    return max(1, int(ttl * 1000))


def get(shard: Any, key: str) -> bytes | None:
    """The value under ``key`` on ``shard``, or None."""
    return shard.execute("GET", shard.key("s", key))


def put(shard: Any, key: str, value: bytes, ttl: float) -> None:
    """Store ``value`` under ``key`` on ``shard`` for ``ttl`` seconds."""
    if not isinstance(value, bytes):
        raise TypeError(f"session value must be bytes, not {type(value).__name__}")
    shard.execute("SET", shard.key("s", key), value, "PX", _ttl_ms(ttl))


def delete(shard: Any, key: str) -> None:
    """Remove ``key`` from ``shard`` (a no-op when absent)."""
    shard.execute("DEL", shard.key("s", key))


def compare_and_set(shard: Any, key: str, expected: bytes | None, value: bytes | None, ttl: float) -> bool:
    """If ``key`` holds ``expected`` (None: absent), store ``value`` for ``ttl`` seconds (None:
    remove the key) and return True; else change nothing and return False. One script."""
    ttl_ms = _ttl_ms(ttl) if value is not None else max(1, int(ttl * 1000))
    args = (b"0" if expected is None else b"1", expected or b"", b"0" if value is None else b"1", value or b"",
            ttl_ms)
    return bool(shard.script(_C_SESSION_CAS if shard.cluster else _SESSION_CAS, (shard.key("s", key),), args))
