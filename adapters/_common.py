"""Pieces every framework adapter shares: handshake cookies, commit-bound pushes, the browser client.

Nothing here imports a web framework. The adapters translate their framework's
settings into one :class:`~wsgi_channels.settings.AppSettings` (a layer URL with
its options, a routing, allowed origins, the sidecar's URL and the token secret).

Handshake cookies: only ``websocket.connect`` carries the HTTP headers. To give
later ``websocket.receive``/``websocket.disconnect`` messages the same session
and user, the ``Cookie`` header seen at connect is kept in the channel session
(when the consumer helper's ``channel_session`` is available) and read back
from there.
"""
from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from werkzeug.http import parse_cookie

from ..channel import Channel, Group, check_push, resolve_layer
from ..exceptions import ConfigurationError
from ..layers.base import BaseChannelLayer
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
]

logger = logging.getLogger(__name__)

#: The browser client shipped with the package.
CLIENT_JS = Path(__file__).resolve().parent.parent / "static" / "channels.js"
if not CLIENT_JS.is_file():  # editable install: adapters/ sits beside wsgi_channels/
    CLIENT_JS = Path(__file__).resolve().parent.parent / "wsgi_channels" / "static" / "channels.js"

#: Where the adapters serve it by default.
CLIENT_JS_URL = "/_wsgi_channels/static/channels.js"  # the sidecar serves the same path

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
        """A :class:`Message` with room for adapter attributes; ``channel_session`` writes go to the original."""

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value)
            if name == "channel_session" and "_original" in self.__dict__:
                setattr(self.__dict__["_original"], name, value)

    return ExtendedMessage


def set_attribute(message: Any, name: str, value: Any) -> None:
    """Set ``message.<name>``; a message class that refuses new attributes is logged, not fatal."""
    try:
        setattr(message, name, value)
    except (AttributeError, TypeError):
        logger.debug("message type %s does not take attribute %s", type(message).__name__, name)


def import_dotted(path: Any, what: str = "object") -> Any:
    """``"pkg.module:attr"`` or ``"pkg.module.attr"`` -> the object; non-strings are returned as they are.

    Raises :class:`~wsgi_channels.ConfigurationError` naming ``what`` and the path.
    """
    from ..exceptions import ConfigurationError
    from ..consumers.routing import import_object

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

