"""Pieces every framework adapter shares: handshake cookies, commit-bound pushes, the browser client.

Nothing here imports a web framework. The adapters translate their framework's
settings into one :class:`~wsgi_channels.settings.AppSettings` (a layer URL with
its options, a routing, allowed origins, the sidecar's URL and the token secret).

Handshake cookies: only ``websocket.connect`` carries the HTTP headers. To give
later ``websocket.receive``/``websocket.disconnect`` messages the same session
and user, the ``Cookie`` header seen at connect is kept in the channel session
(when the consumer helper's ``channel_session`` is available) and read back
from there.

Group history and presence for pages: :func:`position_of` (what each adapter's
``channels_position`` helper renders, the same value for the whole request) and
:func:`presence_answer` (the presence view ``GET /_wsgi_channels/presence/<group>``
that ``channels.js``'s ``presence(group)`` reads), framework-free; the adapters wrap
them in their own responses and template helpers.
"""
from __future__ import annotations

import base64
import functools
import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional

from werkzeug.http import parse_cookie

from ..channel import Channel, Group, check_push, resolve_layer
from ..exceptions import ConfigurationError, InvalidGroupName, LayerUnavailable, PresenceNotEnabled
from ..layers.base import BaseChannelLayer
from ..layers.names import validate_group_name
from ..presence import consuming
from ..protocol.close_codes import CLOSE_POLICY
from ..protocol.origin import normalize_origins, parse_origin
from ..protocol.origin import origin_allowed as _origin_key_allowed

__all__ = [
    "CLIENT_JS",
    "CLIENT_JS_URL",
    "client_js_app",
    "message_content",
    "handshake_cookie_header",
    "handshake_cookies",
    "header",
    "PushBuffer",
    "import_dotted",
    "extend_message",
    "origin_allowed",
    "check_allowed_origins",
    "sidecar_connect_url",
    "reject",
    "set_attribute",
    "set_lazy_attribute",
    "consuming",
    "PRESENCE_URL",
    "position_of",
    "position_json",
    "SafeJSON",
    "PresenceAnswer",
    "presence_answer",
]

logger = logging.getLogger(__name__)

#: The browser client shipped with the package.
CLIENT_JS = Path(__file__).resolve().parent.parent / "static" / "channels.js"
if not CLIENT_JS.is_file():  # editable install: adapters/ sits beside wsgi_channels/
    CLIENT_JS = Path(__file__).resolve().parent.parent / "wsgi_channels" / "static" / "channels.js"

#: Where the adapters serve it by default.
CLIENT_JS_URL = "/_wsgi_channels/static/channels.js"  # the sidecar serves the same path
#: Where the adapters serve the presence view (``channels.js``'s default ``presenceURL``); the group follows.
PRESENCE_URL = "/_wsgi_channels/presence/"

_COOKIE_KEY = "_wsgi_channels_cookie"


def client_js_bytes() -> bytes:
    return CLIENT_JS.read_bytes()


def client_js_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    """A WSGI app answering with the browser client (``text/javascript``, short cache)."""
    body = client_js_bytes()
    start_response("200 OK", [
        ("Content-Type", "text/javascript; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "public, max-age=300"),
    ])
    return [body]


def message_content(message: Any) -> dict:
    """The message's dict, whether ``message`` is a :class:`~wsgi_channels.Message` or a plain dict."""
    content = getattr(message, "content", message)
    if not isinstance(content, dict):
        raise TypeError(f"expected a message or a dict, got {type(message).__name__}")
    return content


def header(message: Any, name: str) -> str | None:
    """A header of the handshake (``websocket.connect``/``http.request``), decoded as latin-1; repeated ones joined."""
    wanted = name.lower().encode("latin-1")
    values = []
    for item in message_content(message).get("headers") or ():
        try:
            key, value = item
        except (TypeError, ValueError):
            continue
        key = key if isinstance(key, bytes) else str(key).encode("latin-1")
        if key.lower() == wanted:
            values.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    if not values:
        return None
    return ("; " if wanted == b"cookie" else ",").join(values)


def _channel_session(message: Any) -> Any:
    try:
        return getattr(message, "channel_session", None)
    except Exception:  # the helper may raise when the consumer is not decorated
        return None


def handshake_cookie_header(message: Any) -> str:
    """The ``Cookie`` header of the connection's handshake, or ``""``.

    On ``websocket.connect`` it comes from the headers and is remembered in the
    channel session (if the message has one); on later messages it is read
    back from there.
    """
    content = message_content(message)
    session = _channel_session(message)
    if "headers" in content:
        value = header(message, "cookie") or ""
        if session is not None:
            try:
                if session.get(_COOKIE_KEY) != value:
                    session[_COOKIE_KEY] = value
            except Exception:
                logger.debug("could not keep the handshake cookie in the channel session", exc_info=True)
        return value
    if session is not None:
        try:
            return session.get(_COOKIE_KEY) or ""
        except Exception:
            logger.debug("could not read the handshake cookie from the channel session", exc_info=True)
    return ""


def handshake_cookies(message: Any) -> dict[str, str]:
    """The handshake's cookies as a dict (first value wins for repeated names)."""
    parsed = parse_cookie(handshake_cookie_header(message))
    return {k: parsed[k] for k in parsed.keys()}


def extend_message(message: Any) -> Any:
    """A view of ``message`` that also takes new attributes (``user``, ``session``, ``registry``...).

    :class:`~wsgi_channels.Message` has ``__slots__``; the adapters hand their
    consumers an instance of a subclass sharing the same content dict, channel
    session and reply channel, so whatever the consumer changes is what the
    worker and ``channel_session`` see. Plain dicts and objects that already
    take attributes are returned unchanged.
    """
    if hasattr(message, "__dict__") or not hasattr(message, "content"):
        return message
    from ..consumers.message import Message

    if not isinstance(message, Message):
        return message
    cls = _extended_class()
    extended = cls.__new__(cls)
    for slot in Message.__slots__:
        try:
            setattr(extended, slot, getattr(message, slot))
        except AttributeError:
            pass
    object.__setattr__(extended, "_original", message)
    return extended


@functools.lru_cache(maxsize=None)
def _extended_class() -> Any:
    from ..consumers.message import Message

    class ExtendedMessage(Message):
        """A :class:`Message` with room for adapter attributes; ``channel_session`` writes go to the original.

        An attribute set with :func:`set_lazy_attribute` is computed on its first read and kept.
        """

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
            if name == "channel_session" and "_original" in self.__dict__:
                setattr(self.__dict__["_original"], name, value)

        def __getattr__(self, name: str) -> Any:  # only for names not found the usual way
            lazy = self.__dict__.get("_lazy")
            if lazy is None or name not in lazy:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            value = lazy.pop(name)()
            object.__setattr__(self, name, value)
            return value

    return ExtendedMessage


def set_attribute(message: Any, name: str, value: Any) -> None:
    """Set ``message.<name>``; a message class that refuses new attributes is logged, not fatal."""
    try:
        setattr(message, name, value)
    except (AttributeError, TypeError):
        logger.debug("message type %s does not take attribute %s", type(message).__name__, name)


def set_lazy_attribute(message: Any, name: str, factory: Callable[[], Any]) -> None:
    """Make ``message.<name>`` the result of ``factory()``, called on the first read only (the user
    of a socket costs a session or database read that most messages never need). A message that is
    not an :func:`extend_message` view gets the value now."""
    if type(message) is not _extended_class():
        set_attribute(message, name, factory())
        return
    message.__dict__.pop(name, None)  # a value set before would hide the factory
    message.__dict__.setdefault("_lazy", {})[name] = factory


def import_dotted(path: Any, what: str = "object") -> Any:
    """``"pkg.module:attr"`` or ``"pkg.module.attr"`` -> the object; non-strings are returned as they are.

    Raises :class:`~wsgi_channels.ConfigurationError` naming ``what`` and the path.
    """
    from ..exceptions import ConfigurationError
    from ..config import import_object

    try:
        return import_object(path)
    except ConfigurationError as e:
        raise ConfigurationError(f"{what}: {e}") from None


class PushBuffer:
    """Pushes held back until a transaction commits, sent in order then, or dropped on abort.

    Each entry is validated when queued (a bad message fails in the view, not
    after the commit). ``flush()`` sends every entry; a failing send is logged
    and the rest still go out, because the commit has already happened.
    """

    def __init__(self, layer: BaseChannelLayer | str | None = None) -> None:
        self._layer = layer
        self._items: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _add(self, kind: str, name: str, content: dict) -> None:
        layer = resolve_layer(self._layer)
        from ..serialization import decode, encode

        check_push(layer, kind, name, content)  # a bad push fails in the view, as Group.send would
        copy = decode(encode(content, layer.max_message_size))
        with self._lock:
            self._items.append((kind, name, copy))

    def send(self, channel: str, content: dict) -> None:
        self._add("send", Channel(channel).name, content)

    def group_send(self, group: str, content: dict) -> None:
        self._add("send_group", Group(group).name, content)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def flush(self) -> int:
        """Send everything queued; returns how many went out."""
        with self._lock:
            items, self._items = self._items, []
        if not items:
            return 0
        layer = resolve_layer(self._layer)
        sent = 0
        for kind, name, content in items:
            try:
                getattr(layer, kind)(name, content)
                sent += 1
            except Exception:
                logger.exception("push to %s %r after commit failed", "group" if kind == "send_group" else "channel",
                                 name)
        return sent


def sidecar_connect_url(sidecar_url: str, secret: Any, path: str, *, user_id: Any = None,
                        groups: Iterable[str] | None = None, origin: str | None = None,
                        max_age: float | None = None, setting: str, secret_setting: str) -> str:
    """What every adapter's ``channels_url`` renders: ``path`` itself without a sidecar URL (same
    origin, nginx routes it), else the sidecar's ``ws(s)://`` URL of ``path`` with a connect token.

    Raises :class:`~wsgi_channels.ConfigurationError` naming ``secret_setting`` when there is no secret.
    """
    if not sidecar_url:
        return path
    if not secret:
        from ..exceptions import ConfigurationError

        raise ConfigurationError(f"channels_url needs a secret to sign connect tokens: set {secret_setting} "
                                 f"(and give the sidecar the same one as --token-secret), or unset {setting}")
    from ..tokens import DEFAULT_MAX_AGE, connect_url

    return connect_url(sidecar_url, path, secret, user_id=user_id, groups=groups, origin=origin,
                       max_age=DEFAULT_MAX_AGE if max_age is None else max_age, setting=setting)


def check_allowed_origins(origins: Iterable[str], setting: str) -> list[str]:
    """The allowed origins of a setting in canonical form; an entry that is not an origin raises
    :class:`ConfigurationError` naming ``setting`` (the adapters call it when they read settings)."""
    try:
        return normalize_origins(origins or ())
    except ValueError as e:
        raise ConfigurationError(f"{setting}: {e}") from None


@functools.lru_cache(maxsize=32)
def _canonical_origins(entries: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_allowed_origins(entries, "allowed origins"))


def origin_allowed(message: Any, allowed: Iterable[str]) -> bool:
    """Whether the handshake's ``Origin`` may open the socket, by the one Origin rule
    (:mod:`wsgi_channels.protocol.origin`, the sidecar's): entries are origins
    (``https://example.com``) or subdomain wildcards (``https://*.example.com``); ``"*"`` or
    no list allows any (the sidecar has refused other sites by then unless it lists them). A
    handshake without an Origin header (not a browser) is allowed. An entry that is not an
    origin raises :class:`ConfigurationError` naming it.
    """
    entries = _canonical_origins(tuple(allowed or ()))
    if not entries or "*" in entries:
        return True
    origin = header(message, "origin")
    if origin is None:
        return True
    key = parse_origin(origin)
    return key is not None and _origin_key_allowed(key, entries)


def reject(message: Any) -> None:
    """Refuse a ``websocket.connect`` (the sidecar answers HTTP 403) or close an open socket (1008)."""
    content = message_content(message)
    reply = getattr(message, "reply_channel", None)
    if reply is None:
        name = content.get("reply_channel")
        if not name:
            return
        reply = Channel(name)
    if content.get("order", 0) == 0 and "headers" in content:
        reply.send({"accept": False})
    else:
        reply.send({"close": CLOSE_POLICY})



# -- group history and presence for pages -------------------------------------------------------------


def position_of(layer: Any, group: str, memo: Optional[dict] = None) -> dict:
    """``{"epoch", "offset"}`` of ``Group(group).position()`` on ``layer``, for a page's ``positions``.

    ``memo`` (a dict kept on the request) makes every call of one request answer the same: a view
    calls the helper *before* it reads the data it renders, and the template's call renders that
    position, so every message published after the read has a greater offset and is replayed to
    the page's socket. Raises ``HistoryNotEnabled`` when the group has no ``group_history`` pattern.
    """
    if memo is not None and group in memo:
        return memo[group]
    from ..channel import Group

    position = Group(group, layer=layer).position()
    value = {"epoch": position.epoch, "offset": position.offset}
    if memo is not None:
        memo[group] = value
    return value


class SafeJSON(str):
    """JSON text a template inserts as it is: ``__html__`` is how Jinja (``Markup``), Chameleon and
    Mako know a value needs no escaping (escaping would turn its quotes into ``&#34;``)."""

    __slots__ = ()

    def __html__(self) -> str:
        return str(self)


def position_json(value: Any) -> SafeJSON:
    """``value`` as JSON safe inside an HTML ``<script>`` (``<``, ``>``, ``&``, ``'`` escaped)."""
    text = json.dumps(value, separators=(",", ":"))
    return SafeJSON(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
                    .replace("'", "\\u0027"))


class PresenceAnswer(NamedTuple):
    """What the presence view answers: a status, a JSON body and the headers to send with it."""

    status: int
    body: bytes
    headers: list[tuple[str, str]]


_PRESENCE_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                     ("X-Content-Type-Options", "nosniff")]


def _json_value(value: Any) -> Any:
    """JSON has no bytes: a presence ``info`` holding bytes shows them as base64 text."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _answer(status: int, body: Any) -> PresenceAnswer:
    return PresenceAnswer(status, json.dumps(body, separators=(",", ":"), default=_json_value).encode(),
                          list(_PRESENCE_HEADERS))


def presence_answer(layer: Any, authorize: Optional[Callable[[Any, str], Any]], request: Any,
                    group: str) -> PresenceAnswer:
    """The presence view, framework-free: who is in ``group``, for ``channels.js``'s ``presence(group)``.

    404 unless the app configured ``authorize`` (the view lists users: it is never open by default);
    400 for a name that is not a group name; 403 when ``authorize(request, group)`` is false; 404 for
    a group without a ``group_presence`` pattern; 503 when the layer cannot be reached. 200:
    ``{"group", "clients", "users", "members": [{"id", "user", "info", "since"}]}``, ``id`` the
    connection's presence id (never its reply channel), ``since`` in milliseconds, members oldest
    first; ``clients``/``users`` count these members (the same read). Never cached.
    """
    if authorize is None:
        return _answer(404, {"error": "the presence view is not enabled: configure who may read it"})
    try:
        validate_group_name(group)
    except InvalidGroupName as e:
        return _answer(400, {"error": str(e)})
    if not authorize(request, group):
        return _answer(403, {"error": f"not allowed to see who is in {group!r}"})
    from ..channel import Group

    try:
        entries = Group(group, layer=layer).presence()
    except PresenceNotEnabled:
        return _answer(404, {"error": f"group {group!r} has no presence (no group_presence pattern matches it)"})
    except LayerUnavailable:
        logger.warning("presence view: the channel layer is unavailable", exc_info=True)
        return _answer(503, {"error": "the channel layer is unavailable"})
    members = sorted(({"id": cid, "user": e.get("user"), "info": e.get("info"),
                       "since": int(round(float(e.get("since") or 0) * 1000))} for cid, e in entries.items()),
                     key=lambda m: (m["since"], m["id"]))
    users = {m["user"] for m in members if m["user"] is not None}
    return _answer(200, {"group": group, "clients": len(members), "users": len(users), "members": members})
