"""URLs of a Redis Cluster or a Sentinel-watched Redis: parsed and checked, nothing connected.

``redis+cluster://[user:password@]host:port[,host:port...]/[0][?options]``
    seed nodes of a Redis Cluster (any of its nodes; the layer learns the rest from them).
    ``rediss+cluster://`` connects with TLS. A Cluster has only database 0: a URL asking for
    another (``/3`` or ``?db=3``) is refused here, at start, rather than failing later on
    the server.
``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE_NAME[/DB][?options]``
    the sentinels and the name of the service they watch (``sentinel monitor NAME ...``).
    The user name and password are the data nodes'; the sentinels' own are the options
    ``sentinel_username`` and ``sentinel_password`` (sentinels are often protected apart).
    ``rediss+sentinel://`` connects to the data nodes with TLS; ``sentinel_ssl=true`` also to
    the sentinels.

A port may be left out (6379 for cluster nodes, 26379 for sentinels); IPv6 hosts go in
brackets (``[::1]:7000``). User names and passwords are percent-decoded, so a ``@``, ``:``
or ``,`` in them is written ``%40``, ``%3A``, ``%2C``. Every other query parameter is
kept, in order, in :attr:`RedisTopologyURL.options` for the layer to sort into its own
keywords and redis-py's connection options.

Several URLs may be joined by commas into shards of the layer's hash ring, as plain Redis
URLs are: a comma starts another URL only where a scheme follows it, so the commas
between seed nodes stay inside their URL.

:func:`parse_topology_url` raises :class:`~wsgi_channels.exceptions.ConfigurationError`
naming the URL (its password hidden) and the part that is wrong.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from ... import exceptions as exc

__all__ = ["TOPOLOGY_SCHEMES", "RedisTopologyURL", "parse_topology_url", "is_topology_url", "redact"]

#: scheme -> (kind, TLS to the data nodes)
TOPOLOGY_SCHEMES = {
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}

_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*)://", re.S)
#: Options this module reads (the rest are handed on in ``options``).
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password", "sentinel_ssl")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_SERVICE = re.compile(r"^[^\s/?#]{1,200}$")


@dataclass(frozen=True, repr=False)
class RedisTopologyURL:
    """One parsed ``redis+cluster://`` or ``redis+sentinel://`` URL (see the module docstring).

    ``nodes`` are the seed nodes (Cluster) or the sentinels (Sentinel), in the URL's order
    without repeats. Its ``str`` and ``repr`` hide every password (``ssl_password`` too).
    """

    kind: str  # "cluster" or "sentinel"
    tls: bool  # TLS to the data nodes
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service_name: str | None = None  # Sentinel only
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_tls: bool = False
    options: tuple[tuple[str, str], ...] = ()  # every other query parameter, in order

    def node_url(self, host: str, port: int) -> str:
        """A plain ``redis://`` (or ``rediss://``) URL of one data node, with this URL's credentials,
        database and connection options: what a single-server client connects with."""
        scheme = "rediss" if self.tls else "redis"
        query = urlencode(self.options)
        return (f"{scheme}://{_userinfo(self.username, self.password)}{_hostport(host, port)}/{self.db}"
                + (f"?{query}" if query else ""))

    def sentinel_url(self, host: str, port: int) -> str:
        """A plain URL of one sentinel, with the sentinels' own credentials (no database, no options)."""
        scheme = "rediss" if self.sentinel_tls else "redis"
        return f"{scheme}://{_userinfo(self.sentinel_username, self.sentinel_password)}{_hostport(host, port)}"

    def __str__(self) -> str:
        """The URL again, passwords hidden (for logs and error messages)."""
        scheme = ("rediss+" if self.tls else "redis+") + self.kind
        auth = ""
        if self.username or self.password:
            auth = (quote(self.username, safe="") if self.username else "") + (":***" if self.password else "") + "@"
        path = "/" + (f"{quote(self.service_name or '', safe='')}/{self.db}" if self.kind == "sentinel" else f"{self.db}")
        pairs = [(k, "***" if "password" in k else v) for k, v in self.options]
        if self.sentinel_username:
            pairs.append(("sentinel_username", self.sentinel_username))
        if self.sentinel_password:
            pairs.append(("sentinel_password", "***"))
        if self.sentinel_tls:
            pairs.append(("sentinel_ssl", "true"))
        query = urlencode(pairs, safe="*")
        return f"{scheme}://{auth}{','.join(_hostport(h, p) for h, p in self.nodes)}{path}" + (
            f"?{query}" if query else "")


    def __repr__(self) -> str:
        return f"<RedisTopologyURL {self}>"


def _userinfo(username: str | None, password: str | None) -> str:
    if not username and not password:
        return ""
    return (quote(username, safe="") if username else "") + (f":{quote(password, safe='')}" if password else "") + "@"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_topology_url(url: Any) -> bool:
    """Whether ``url`` is a string with one of the Cluster or Sentinel schemes."""
    if not isinstance(url, str):
        return False
    match = _SCHEME.match(url)
    return match is not None and match.group(1).lower() in TOPOLOGY_SCHEMES


def redact(url: str) -> str:
    """``url`` with the password of its user part and of any ``...password=`` option replaced by ``***``.

    The user part is taken to run to the last ``@`` before the query, so a password holding an
    unencoded ``/`` is hidden too.
    """
    start = url.find("://")
    if start >= 0:
        end = min((i for i in (url.find("?", start), url.find("#", start)) if i >= 0), default=len(url))
        at = url.rfind("@", start, end)
        if at >= 0:
            user, colon, _ = url[start + 3:at].partition(":")
            url = url[:start + 3] + user + (":***" if colon else "") + url[at:]
    return re.sub(r"([?&][A-Za-z_]*password=)[^&#]*", r"\1***", url)


def parse_topology_url(url: str) -> RedisTopologyURL:
    """Parse and check one Cluster or Sentinel URL; ConfigurationError names what is wrong."""
    if not isinstance(url, str):
        raise exc.ConfigurationError(f"a Redis Cluster or Sentinel URL must be a string, not {type(url).__name__}")
    shown = redact(url.strip())

    def bad(problem: str) -> exc.ConfigurationError:
        return exc.ConfigurationError(f"invalid Redis layer URL {shown!r}: {problem}")

    url = url.strip()
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in TOPOLOGY_SCHEMES:
        raise bad("the scheme must be one of " + ", ".join(f"{s}://" for s in TOPOLOGY_SCHEMES))
    kind, tls = TOPOLOGY_SCHEMES[scheme]
    rest = url[match.end():]  # type: ignore[union-attr]  # matched just above
    rest, _, _fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in path:
        raise bad("an '@' follows the host part: percent-encode '/', '?', '#' and '@' in a user name or "
                  "password (%2F, %3F, %23, %40)")

    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if colon and not secret:
            raise bad("the password after ':' is empty (leave out ':' for none)")
    nodes = _nodes(hosts, DEFAULT_PORTS[kind], bad)

    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and segments[-1] == "" and slash:
        segments.pop()  # a trailing slash
    service = None
    db_text = None
    if kind == "sentinel":
        if not segments or not segments[0]:
            raise bad("the service name is missing: redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB]")
        service = segments.pop(0)
        if not _SERVICE.match(service):
            raise bad(f"the service name {service!r} is not one a sentinel can monitor (no spaces, at most 200 characters)")
    if segments:
        db_text = segments.pop(0)
    if segments:
        form = "/SERVICE_NAME[/DB]" if kind == "sentinel" else "/[0]"
        raise bad(f"the path has more parts than {form}: {'/'.join(segments)!r} is left over")

    pairs = parse_qsl(query, keep_blank_values=True)
    options: list[tuple[str, str]] = []
    sentinel: dict[str, str] = {}
    for key, value in pairs:
        if key == "db":
            if db_text is not None and db_text != value:
                raise bad(f"the database is given twice ({db_text!r} in the path, {value!r} as ?db=)")
            db_text = value
        elif key in _SENTINEL_OPTIONS:
            if kind != "sentinel":
                raise bad(f"{key} is an option of redis+sentinel:// URLs only")
            sentinel[key] = value
        else:
            options.append((key, value))

    db = 0
    if db_text:
        if not db_text.isdigit():
            raise bad(f"the database {db_text!r} is not a number")
        db = int(db_text)
    if kind == "cluster" and db != 0:
        raise bad(f"a Redis Cluster has only database 0, and this URL asks for database {db}")

    ssl_text = sentinel.get("sentinel_ssl", "false").lower()
    if ssl_text not in _TRUE | _FALSE:
        raise bad(f"sentinel_ssl={sentinel['sentinel_ssl']!r} is not true or false")
    if "sentinel_password" in sentinel and not sentinel["sentinel_password"]:
        raise bad("sentinel_password is empty (leave the option out for none)")
    return RedisTopologyURL(
        kind=kind, tls=tls, nodes=nodes, username=username, password=password, db=db, service_name=service,
        sentinel_username=sentinel.get("sentinel_username") or None,
        sentinel_password=sentinel.get("sentinel_password") or None,
        sentinel_tls=ssl_text in _TRUE, options=tuple(options),
    )


def _nodes(hosts: str, default_port: int, bad: Any) -> tuple[tuple[str, int], ...]:
    if not hosts.strip():
        raise bad("no host: write HOST:PORT, several separated by commas")
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            raise bad(f"an empty host in {hosts!r} (two commas, or one at an end)")
        if part.startswith("["):
            host, close, tail = part[1:].partition("]")
            if not close or not host or (tail and not tail.startswith(":")):
                raise bad(f"the IPv6 host {part!r} is not written [ADDRESS] or [ADDRESS]:PORT")
            port_text = tail[1:] if tail else None
        else:
            host, colon, port_text_ = part.rpartition(":")
            if not colon:
                host, port_text_ = part, ""
            if ":" in host:
                raise bad(f"the host {part!r} has several ':' (put an IPv6 address in brackets)")
            port_text = port_text_ if colon else None
        if not host or not re.fullmatch(r"[A-Za-z0-9.\-_:%]+", host):
            raise bad(f"the host {part!r} is not a host name or address")
        if port_text is None:
            port = default_port
        elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise bad(f"the port {port_text!r} of {part!r} is not a number from 1 to 65535")
        else:
            port = int(port_text)
        if (host, port) not in nodes:
            nodes.append((host, port))
    return tuple(nodes)
