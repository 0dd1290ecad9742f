"""The one Origin rule: which pages may open a WebSocket (sans-IO).

Browsers send ``Origin`` with every WebSocket handshake; a server that accepted any origin
would let another site ride the user's cookies into a socket (cross-site WebSocket
hijacking). The sidecar (:func:`check_origin`, with no list: the page's own origin only) and
the framework adapters' consumer-side check (``adapters/_common.py``) both match origins here:

- an allowed entry is ``*`` (any origin), ``scheme://host[:port]``, or
  ``scheme://*.domain[:port]`` for the subdomains of ``domain`` (any depth, same scheme and
  port; not ``domain`` itself). :func:`normalize_origin` checks an entry when the settings are
  read and gives its canonical form; anything else (a bare host name, another ``*``) is refused
  there, naming the entry, rather than silently matching nothing;
- origins are compared in canonical form (:func:`origin_key`): scheme and host lower-cased,
  default ports dropped, IPv6 literals bracketed.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence
from urllib.parse import urlsplit

__all__ = ["origin_key", "normalize_origin", "normalize_origins", "parse_origin", "origin_allowed", "check_origin"]

#: A DNS name (letters, digits, hyphens; dot-separated labels), lower-cased by origin_key.
_DOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def origin_key(scheme: str, host: str, port: int | None) -> str:
    """Canonical ``scheme://host[:port]`` with default ports dropped, for comparisons."""
    scheme = scheme.lower()
    host = host.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}" if port is None or port == default else f"{scheme}://{host}:{port}"


def normalize_origin(origin: str) -> str:
    """The canonical form of an allowed-origin entry: ``HTTPS://Example.com:443/`` ->
    ``https://example.com``; ``*`` stays ``*``. Raises ``ValueError`` naming the entry.

    ``scheme://*.domain[:port]`` allows the subdomains of ``domain``. Any other ``*`` is
    refused: a pattern that would only ever match itself must not be accepted silently.
    """
    origin = origin.strip()
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
        raise ValueError(f"allowed origin {origin!r} must look like https://host[:port], "
                         "https://*.domain[:port] or be '*'")
    host = parts.hostname
    if "*" in host:
        domain = host[2:]
        if not host.startswith("*.") or "*" in domain or not _DOMAIN_RE.fullmatch(domain) \
                or ("." not in domain and domain != "localhost"):
            raise ValueError(f"allowed origin {origin!r}: a wildcard may only stand for the subdomains "
                             "of a domain with a dot in it, as in https://*.example.com[:port]")
    return origin_key(parts.scheme, host, port)


def normalize_origins(origins: Iterable[str]) -> list[str]:
    """:func:`normalize_origin` of each entry (empty ones skipped)."""
    return [normalize_origin(o) for o in origins if o and o.strip()]


def parse_origin(value: bytes | str) -> str | None:
    """The canonical key of an ``Origin`` header value, or None when it is not an origin
    (``null``, a malformed URL, no host)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    try:
        parts = urlsplit(text.strip())
        if not parts.hostname:
            return None
        return origin_key(parts.scheme, parts.hostname, parts.port)
    except ValueError:
        return None


def origin_allowed(key: str, allowed: Sequence[str]) -> bool:
    """Whether the canonical origin ``key`` (:func:`origin_key`) is in ``allowed`` (entries in
    :func:`normalize_origin` form); ``scheme://*.domain[:port]`` entries match
    ``scheme://sub.domain[:port]`` with the same scheme and port, for any non-empty subdomain."""
    if "*" in allowed:
        return True
    if "*" in key:  # no browser sends one; a pattern matches hosts, never itself
        return False
    if key in allowed:
        return True
    for entry in allowed:
        star = entry.find("://*.")
        if star < 0:
            continue
        prefix, suffix = entry[:star + 3], entry[star + 4:]  # "https://" and ".example.com[:port]"
        if key.startswith(prefix) and key.endswith(suffix) and len(key) > len(prefix) + len(suffix):
            host = key[len(prefix):len(key) - len(suffix)]
            if ":" not in host and "/" not in host and "[" not in host:
                return True
    return False


def check_origin(headers: Sequence[tuple[bytes, bytes]], scheme: str, host: bytes | None,
                 allowed: Sequence[str]) -> str | None:
    """Return None when the request's Origin may open a WebSocket, else the reason it may not.

    With no allow-list the Origin must be the site itself (same scheme family,
    host and port as the Host header): a page on another site cannot ride the
    user's cookies into a WebSocket (cross-site WebSocket hijacking). Requests
    without Origin (non-browser clients) pass: browsers always send it.
    The reason quotes the client's Origin as text (at most 100 characters), never as a bytes repr.
    """
    origin = next((v for n, v in headers if n == b"origin"), None)
    if origin is None:
        return None
    if "*" in allowed:
        return None
    key = parse_origin(origin)
    if key is None:
        return f"Origin {origin[:100].decode('latin-1')!r} is not a valid origin"
    if allowed:
        return None if origin_allowed(key, allowed) else f"Origin {key} is not in the allowed origins"
    if host is None:
        return "Origin check: the request has no Host header"
    http_scheme = "https" if scheme in ("https", "wss") else "http"
    try:
        hp = urlsplit("//" + host.decode("latin-1").strip())
        own = origin_key(http_scheme, hp.hostname or "", hp.port)
    except ValueError:
        return "Origin check: bad Host header"
    return None if key == own else f"Origin {key} is not this site ({own})"
