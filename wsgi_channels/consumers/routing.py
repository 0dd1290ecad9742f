"""Routing: which consumer handles a message, as in Channels 1.x.

A routing is a list::

    routing = [
        route("http.request", WsgiConsumer(app)),
        route("websocket.receive", "chat.consumers.receive", path=r"^/chat/(?P<room>[^/]+)/$"),
        route_class(ChatConsumer, path=r"^/live/"),
        include("chat.routing.routes", path=r"^/chat"),
    ]

Filters are regular expressions matched (with ``re.match``, so anchored at the
start) against a key of the message content; named groups become keyword
arguments of the consumer. ``include`` matches a prefix and hands the rest of
the value to the included routes. The first matching route wins.

When nothing matches, :class:`Router` falls back to defaults, so no client
waits for a timeout because a route is missing: an ``http.request`` gets a
404; ``websocket.receive`` and ``websocket.disconnect`` are ignored; a
``websocket.connect`` is accepted when a ``websocket.receive`` route takes its
path (Channels 1.x's receive-only routings), and otherwise *refused* (the
server answers 403), with a warning naming the path and the routes tried, and
counted as ``unrouted``: a mistyped path or a name outside a route's pattern
would otherwise get a socket on which nothing ever arrives.
``Router(routing, accept_unrouted=True)`` (``wsgi-channels worker
--accept-unrouted``) accepts such handshakes instead. A worker listens on the
WebSocket channels only when its routing routes at least one of them.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, Pattern, Tuple, Union

from ..config import import_object
from ..exceptions import ConfigurationError

__all__ = ["route", "route_class", "include", "Route", "RouteClass", "Include", "Router", "AppRouting",
           "import_object", "DEFAULT_CONSUMERS"]

log = logging.getLogger(__name__)

Consumer = Callable[..., Any]
Match = Tuple[Consumer, dict]




def _compile_filters(filters: dict[str, Any]) -> list[tuple[str, Pattern[str]]]:
    compiled = []
    for key, pattern in filters.items():
        if isinstance(pattern, re.Pattern):
            compiled.append((key, pattern))
        elif isinstance(pattern, str):
            try:
                compiled.append((key, re.compile(pattern)))
            except re.error as e:
                raise ConfigurationError(f"filter {key}={pattern!r} is not a valid regular expression: {e}") from None
        else:
            raise ConfigurationError(f"filter {key}={pattern!r} must be a regular expression (str)")
    return compiled


def _value(content: dict, key: str, overrides: dict[str, str]) -> Optional[str]:
    if key in overrides:
        return overrides[key]
    value = content.get(key)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


class Route:
    """Send messages on ``channel`` whose content matches ``filters`` to ``consumer``."""

    def __init__(self, channel: str, consumer: Union[Consumer, str], **filters: Any) -> None:
        if not isinstance(channel, str) or not channel:
            raise ConfigurationError(f"route channel must be a channel name, got {channel!r}")
        self.channel = channel
        self._consumer_spec = consumer
        self._consumer: Optional[Consumer] = None if isinstance(consumer, str) else consumer
        if self._consumer is not None and not callable(self._consumer):
            raise ConfigurationError(f"consumer for {channel!r} is not callable: {consumer!r}")
        self.filters = _compile_filters(filters)

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            consumer = import_object(self._consumer_spec)
            if not callable(consumer):
                raise ConfigurationError(f"consumer {self._consumer_spec!r} is not callable")
            self._consumer = consumer
        return self._consumer

    def channel_names(self) -> set[str]:
        return {self.channel}

    def _handles(self, channel: str) -> bool:
        return channel == self.channel

    def match(self, channel: str, content: dict, overrides: Optional[dict[str, str]] = None) -> Optional[Match]:
        if not self._handles(channel):
            return None
        kwargs: dict[str, Any] = {}
        for key, pattern in self.filters:
            value = _value(content, key, overrides or {})
            if value is None:
                return None
            m = pattern.match(value)
            if m is None:
                return None
            kwargs.update({k: v for k, v in m.groupdict().items() if v is not None})
        return self.consumer, kwargs

    def __repr__(self) -> str:
        return f"route({self.channel!r}, {self._consumer_spec!r})"


class RouteClass(Route):
    """Route every channel a class-based consumer handles (its ``channel_names()``) to it."""

    def __init__(self, consumer: Union[type, str], **filters: Any) -> None:
        self._consumer_spec = consumer
        self._consumer = None if isinstance(consumer, str) else consumer
        self.filters = _compile_filters(filters)
        self.channel = ""
        self._channels = set(self._class_channels())

    def _class_channels(self) -> Iterable[str]:
        cls = self.consumer
        names = getattr(cls, "channel_names", None)
        if names is None:
            raise ConfigurationError(f"route_class: {cls!r} has no channel_names(); use route() for functions")
        return names()

    def channel_names(self) -> set[str]:
        return set(self._channels)

    def _handles(self, channel: str) -> bool:
        return channel in self._channels

    def __repr__(self) -> str:
        return f"route_class({self._consumer_spec!r})"


class Include:
    """Routes of another routing, reached when ``prefix_filters`` match; the matched prefix is stripped."""

    def __init__(self, routing: Any, **prefix_filters: Any) -> None:
        self._routing_spec = routing
        self.filters = _compile_filters(prefix_filters)
        self._routes: Optional[list] = None

    @property
    def routes(self) -> list:
        """The included routes, imported on first use (so routing modules may include each other)."""
        if self._routes is None:
            self._routes = [_as_route(r) for r in _load_routing(self._routing_spec)]
        return self._routes

    def channel_names(self) -> set[str]:
        names: set[str] = set()
        for r in self.routes:
            names |= r.channel_names()
        return names

    def match(self, channel: str, content: dict, overrides: Optional[dict[str, str]] = None) -> Optional[Match]:
        overrides = dict(overrides or {})
        kwargs: dict[str, Any] = {}
        for key, pattern in self.filters:
            value = _value(content, key, overrides)
            if value is None:
                return None
            m = pattern.match(value)
            if m is None:
                return None
            overrides[key] = value[m.end():]
            kwargs.update({k: v for k, v in m.groupdict().items() if v is not None})
        for r in self.routes:
            found = r.match(channel, content, overrides)
            if found is not None:
                consumer, inner = found
                return consumer, {**kwargs, **inner}
        return None

    def __repr__(self) -> str:
        return f"include({self._routing_spec!r})"


class AppRouting(list):  # type: ignore[type-arg]
    """A routing list that also names the layer its app pushes to (``layer_url``, or None).

    The framework adapters' ``routing_for(app)`` return one, so ``wsgi-channels worker
    myapp:routing`` serves the app's layer without a ``--layer`` that repeats it (an explicit
    ``--layer`` still wins; see :mod:`wsgi_channels.settings`).
    """

    def __init__(self, routes: Iterable[Any] = (), layer_url: Optional[str] = None) -> None:
        super().__init__(routes)
        self.layer_url = layer_url


def _load_routing(routing: Any) -> list:
    routing = import_object(routing)
    if isinstance(routing, (Route, Include)):
        return [routing]
    if isinstance(routing, dict):  # Channels 1.0's {"channel": consumer} form
        return [Route(channel, consumer) for channel, consumer in routing.items()]
    if not isinstance(routing, (list, tuple)):
        raise ConfigurationError(f"a routing must be a list of route()/include() items, got {type(routing).__name__}")
    return list(routing)


def _as_route(item: Any) -> Union[Route, Include]:
    if isinstance(item, (Route, Include)):
        return item
    raise ConfigurationError(f"routing item {item!r} is not a route(), route_class() or include()")


def route(channel: str, consumer: Union[Consumer, str], **filters: Any) -> Route:
    """Route ``channel`` messages whose content matches ``filters`` (regexes) to ``consumer``."""
    return Route(channel, consumer, **filters)


def route_class(consumer: Union[type, str], **filters: Any) -> RouteClass:
    """Route every channel of a class-based consumer (``WebsocketConsumer`` subclass, ...) to it."""
    return RouteClass(consumer, **filters)


def include(routing: Any, **prefix_filters: Any) -> Include:
    """Include another routing (a list or a dotted path to one) under ``prefix_filters``."""
    return Include(routing, **prefix_filters)


# -- defaults -------------------------------------------------------------------------------

def _accept_connect(message: Any, **kwargs: Any) -> None:
    if message.reply_channel is not None:
        message.reply_channel.send({"accept": True})


def _refuse_connect(message: Any, **kwargs: Any) -> None:
    """No route takes this handshake's path: refuse it (the server answers 403)."""
    if message.reply_channel is not None:
        message.reply_channel.send({"accept": False})


def _accept_unrouted(message: Any, **kwargs: Any) -> None:
    """No route takes this handshake's path, and the router accepts such handshakes (``accept_unrouted``)."""
    if message.reply_channel is not None:
        message.reply_channel.send({"accept": True})


def _ignore(message: Any, **kwargs: Any) -> None:
    pass


def _not_found(message: Any, **kwargs: Any) -> None:
    log.info("no route for http.request to %r: answering 404", message.get("path"))
    if message.reply_channel is not None:
        message.reply_channel.send({"status": 404, "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
                                    "content": b"Not Found\n", "more_content": False})


#: What happens to a message no route matches (other channels: logged and dropped).
DEFAULT_CONSUMERS: dict[str, Consumer] = {
    "websocket.connect": _refuse_connect,  # unless a websocket.receive route takes the path (Router.match)
    "websocket.receive": _ignore,
    "websocket.disconnect": _ignore,
    "http.request": _not_found,
    "http.disconnect": _ignore,
}
_WEBSOCKET_CHANNELS = ("websocket.connect", "websocket.receive", "websocket.disconnect")
_WARN_EVERY = 60.0  # seconds between two warnings about the same unrouted path
_WARNED_PATHS = 256  # paths remembered for that (a flood of distinct paths still logs at most this many a minute)
_ROUTES_SHOWN = 12


def _filters_text(filters: list[tuple[str, Pattern[str]]]) -> str:
    return " ".join(f"{key}={pattern.pattern}" for key, pattern in filters)


def _describe(node: Union[Route, Include], channel: str, prefix: str = "") -> list[str]:
    """The filters of every route that handles ``channel``, an include's prefix first."""
    if isinstance(node, Include):
        inner = (prefix + " + " if prefix else "") + _filters_text(node.filters) if node.filters else prefix
        return [d for child in node.routes for d in _describe(child, channel, inner)]
    if not node._handles(channel):
        return []
    own = _filters_text(node.filters)
    return [" + ".join(p for p in (prefix, own) if p) or "(any path)"]


class Router:
    """A routing loaded and checked once; :meth:`match` finds the consumer for a message.

    ``channels`` is every channel a worker should listen on: the routed ones;
    all three WebSocket channels when any of them is routed (so a connect with
    no matching route is still answered); ``http.disconnect`` when
    ``http.request`` is routed. Dotted-path consumers are imported here, so a
    typo fails at start-up with the path in the error.

    ``accept_unrouted``: accept a ``websocket.connect`` that no route takes (by default it
    is refused: see the module's docstring). Either way :meth:`match` returns
    :attr:`unrouted_connect` for it, which the worker counts as ``unrouted``.
    """

    def __init__(self, routing: Any, *, accept_unrouted: bool = False) -> None:
        self.accept_unrouted = accept_unrouted
        #: The consumer :meth:`match` returns for a ``websocket.connect`` that no route takes.
        self.unrouted_connect: Consumer = _accept_unrouted if accept_unrouted else DEFAULT_CONSUMERS["websocket.connect"]
        self._warned: OrderedDict[str, float] = OrderedDict()
        self._warned_lock = threading.Lock()
        self.root = Include(routing)
        self._resolve(self.root)
        routed = self.root.channel_names()
        self.channels: set[str] = set(routed)
        if routed & set(_WEBSOCKET_CHANNELS):
            # A routing that handles WebSockets answers every connect, routed or not. One that
            # handles none leaves websocket.* alone: another worker pool may serve them with
            # its own checks, and every extra channel costs each receive a little.
            self.channels |= set(_WEBSOCKET_CHANNELS)
        if "http.request" in routed:
            # Servers announce clients that left mid-request; drain them even when nothing routes them.
            self.channels.add("http.disconnect")

    def _resolve(self, node: Union[Route, Include]) -> None:
        if isinstance(node, Include):
            for child in node.routes:
                self._resolve(child)
        else:
            node.consumer  # noqa: B018 - import now, fail at start-up

    def match(self, channel: str, content: dict) -> Optional[Match]:
        """``(consumer, kwargs)`` for the first matching route, else the channel's default, else None."""
        found = self.root.match(channel, content)
        if found is not None:
            return found
        if channel == "websocket.connect":
            return self._unrouted_connect(content)
        default = DEFAULT_CONSUMERS.get(channel)
        return (default, {}) if default is not None else None

    def _unrouted_connect(self, content: dict) -> Match:
        """No ``websocket.connect`` route takes this handshake: accept it when a ``websocket.receive``
        route takes its path, else :attr:`unrouted_connect` (refuse, or accept), with a log line."""
        if self.root.match("websocket.receive", content) is not None:
            return _accept_connect, {}
        path = content.get("path")
        if self._should_warn(path if isinstance(path, str) else repr(path)):
            connects = _describe(self.root, "websocket.connect")
            receives = _describe(self.root, "websocket.receive")
            tried = "; ".join(f"{kind} routes: {', '.join(found[:_ROUTES_SHOWN])}"
                              + (f" and {len(found) - _ROUTES_SHOWN} more" if len(found) > _ROUTES_SHOWN else "")
                              for kind, found in (("websocket.connect", connects), ("websocket.receive", receives))
                              if found) or "no websocket.connect or websocket.receive route"
            if self.accept_unrouted:
                log.info("WebSocket handshake for path %.200r accepted although no route takes it (%s): "
                         "accept_unrouted is on", path, tried, extra={"path": path})
            else:
                log.warning("WebSocket handshake for path %.200r refused (the server answers 403): no route takes "
                            "it (%s). Correct the path or the route's pattern, or accept such handshakes with "
                            "`wsgi-channels worker --accept-unrouted`", path, tried, extra={"path": path})
        return self.unrouted_connect, {}

    def _should_warn(self, path: str) -> bool:
        """At most one warning per path every :data:`_WARN_EVERY` seconds: a client retrying a bad path
        (or many distinct ones) cannot flood the log."""
        now = time.monotonic()
        with self._warned_lock:
            last = self._warned.get(path)
            if last is not None and now - last < _WARN_EVERY:
                return False
            self._warned[path] = now
            self._warned.move_to_end(path)
            while len(self._warned) > _WARNED_PATHS:
                self._warned.popitem(last=False)
            return True
