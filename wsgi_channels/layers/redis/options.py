"""What a Redis layer is configured with: its URLs (one shard or several, options in the query
string) and the keys that encrypt its message bodies.

``redis://host:6379/0?expiry=30&capacity=500`` carries layer keywords (:data:`LAYER_OPTIONS`)
and redis-py connection options (:data:`CONNECTION_OPTIONS`: TLS files, user name, ...);
several shards are written as a list, or as one string of URLs separated by commas (the
form ``WSGI_CHANNELS_LAYER`` takes). ``redis+cluster://`` and ``redis+sentinel://`` URLs
(:mod:`.urls`) take the same options and may be shards too. A bad host, port, database or
option name is refused with a :class:`~wsgi_channels.exceptions.ConfigurationError` that
names it.
"""
from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ... import exceptions as exc
from .urls import is_topology_url, parse_topology_url

__all__ = ["LAYER_OPTIONS", "CONNECTION_OPTIONS", "fernet", "split_urls", "check_url", "connection_url",
           "options_from_url"]

#: Layer keywords a URL's query string may set (``symmetric_encryption_keys`` separated by commas).
LAYER_OPTIONS = frozenset({"expiry", "group_expiry", "capacity", "max_message_size", "process_capacity",
                           "prefix", "socket_timeout", "socket_connect_timeout", "ring_replicas",
                           "symmetric_encryption_keys", "cluster_tags", "wait_replicas",
                           "wait_replicas_timeout", "group_history", "group_presence",
                           "history_trust_persistence"})
#: redis-py connection options a URL may carry (TLS files and checks, user name, client name, ...).
CONNECTION_OPTIONS = frozenset({
    "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
    "ssl_check_hostname", "ssl_min_version", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
    "username", "client_name", "socket_keepalive", "socket_read_size", "health_check_interval",
    "max_connections", "db",
})
#: A comma starts a new URL only where a scheme follows (commas may appear inside a query value).
_URL_SEPARATOR = re.compile(r",(?=\s*rediss?(?:\+(?:cluster|sentinel))?://)", re.I)


def fernet(keys: Any) -> Any:
    if not keys:
        return None
    try:
        from cryptography.fernet import Fernet, MultiFernet
    except ImportError:
        raise exc.ConfigurationError(
            "symmetric_encryption_keys needs the 'cryptography' package: pip install 'wsgi_channels[crypto]'"
        ) from None
    if isinstance(keys, (str, bytes)):
        raise exc.ConfigurationError("symmetric_encryption_keys must be a list of keys (the first encrypts)")
    fernets = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise exc.ConfigurationError("symmetric_encryption_keys contains an empty key")
        # Any secret string becomes a valid Fernet key through SHA-256.
        fernets.append(Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest())))
    return MultiFernet(fernets)


def split_urls(url_or_list: Any) -> list[str]:
    urls = _URL_SEPARATOR.split(url_or_list) if isinstance(url_or_list, str) else list(url_or_list)
    urls = [u.strip() for u in urls if isinstance(u, str) and u.strip()]
    if not urls:
        raise exc.ConfigurationError(f"no Redis URL given: {url_or_list!r}")
    for u in urls:
        check_url(u)
    return urls


def check_url(url: str) -> None:
    """Refuse a Redis URL whose host, port or database number cannot be used, naming the part."""
    if is_topology_url(url):
        parse_topology_url(url)
        return
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError as e:
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: {e}") from None
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise exc.ConfigurationError(f"{url!r} is not a redis://, rediss://, redis+cluster:// or "
                                     "redis+sentinel:// URL")
    if not parts.hostname:
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: no host (redis://HOST:PORT/DB)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise exc.ConfigurationError(f"invalid Redis URL {url!r}: the database {db!r} is not a number")
    del port


def connection_url(url: str) -> str:
    """``url`` with only the redis-py connection options in its query (checked by name)."""
    if is_topology_url(url):
        _check_names(k for k, _ in parse_topology_url(url).options)
        return url.strip()
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    _check_names(k for k, _ in pairs)
    return urlunsplit(parts._replace(query=urlencode(pairs), fragment=""))


def _check_names(names: Any) -> None:
    unknown = sorted(set(names) - CONNECTION_OPTIONS)
    if unknown:
        known = ", ".join(sorted(LAYER_OPTIONS | CONNECTION_OPTIONS | {"sentinel_username", "sentinel_password",
                                                                      "sentinel_ssl"}))
        raise exc.ConfigurationError(f"unknown Redis layer URL option(s) {', '.join(unknown)}; known: {known}")


def _without_layer_options(url: str) -> tuple[str, list[tuple[str, str]]]:
    """(``url`` without the layer keywords in its query, those keywords' pairs)."""
    if is_topology_url(url):
        # Seed lists hold commas and the path a service name, so the query is cut off as text.
        head, mark, query = url.strip().partition("?")
        query, _, _ = query.partition("#")
    else:
        parts = urlsplit(url)
        head, mark, query = urlunsplit(parts._replace(query="", fragment="")), "?", parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    rest = urlencode([(k, v) for k, v in pairs if k not in LAYER_OPTIONS])
    return head + (f"?{rest}" if rest else ""), [(k, v) for k, v in pairs if k in LAYER_OPTIONS]


def options_from_url(url: Any) -> tuple[list[str], dict[str, Any]]:
    """(the shards' URLs without layer keywords, the layer keywords their query strings set).

    Every shard may repeat an option, but all must agree on its value.
    """
    from .. import parse_options

    merged: dict[str, Any] = {}
    hosts = []
    for u in split_urls(url):
        host, pairs = _without_layer_options(u)
        for key, value in parse_options(urlencode(pairs)).items():
            if key in merged and merged[key] != value:
                raise exc.ConfigurationError(f"shard URLs disagree on option {key!r}")
            merged[key] = value
        hosts.append(host)
    keys = merged.get("symmetric_encryption_keys")
    if isinstance(keys, str):
        merged["symmetric_encryption_keys"] = [k for k in keys.split(",") if k]
    return hosts, merged
