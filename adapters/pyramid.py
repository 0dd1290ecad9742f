"""Pyramid integration: ``config.include("wsgi_channels.adapters.pyramid")``.

Settings (ini file or ``Configurator(settings=...)``), all under ``wsgi_channels.``:

=====================================  ==========================================================
``wsgi_channels.layer``                layer URL (default ``$WSGI_CHANNELS_LAYER``, else ``ipc://``)
``wsgi_channels.routing``              dotted name of extra routes for the worker (``pkg.routing:routes``)
``wsgi_channels.allowed_origins``      origins or host names allowed to open WebSockets (list)
``wsgi_channels.transactional``        with ``pyramid_tm``: hold pushes until commit (default true)
``wsgi_channels.client_js_url``        path serving the browser client (default ``/_wsgi_channels/static/channels.js``;
                                       empty to disable)
``wsgi_channels.option.NAME``          layer constructor keywords (``wsgi_channels.option.capacity = 500``)
``wsgi_channels.sidecar_url``          the sidecar's public URL when it is not on the app's origin
                                       (``http://127.0.0.1:8001``): ``request.channels_url(path)`` then
                                       renders it with a signed connect token
``wsgi_channels.token_secret``         the secret connect tokens are signed with (the sidecar's
                                       ``--token-secret``); needed with ``sidecar_url``
``wsgi_channels.presence_authorize``   dotted name of ``(request, group) -> bool``: who may read
                                       the presence view (unset: the view answers 404)
``wsgi_channels.presence_url``         path of the presence view (default ``/_wsgi_channels/presence/``,
                                       the group follows; empty to disable)
=====================================  ==========================================================

Group history and presence are layer options too, in URL items (several separated
by spaces or lines): ``wsgi_channels.option.group_history = chat.*:size=100:ttl=300
news.*`` and ``wsgi_channels.option.group_presence = room.*:max_members=1000``.

In views, ``request.channels.group_send("room", {...})`` pushes. When the
request is managed by ``pyramid_tm`` (``request.tm``), pushes join the
``transaction`` package's transaction: they go out after a successful commit,
in order, and are dropped on abort. Outside a transaction they go out at once.

Consumers are registered with ``config.add_channel_route(channel, consumer,
path=...)``; the worker's routing is :func:`routing_for` ``(app)``. A
consumer receives ``message.registry``, ``message.request`` (a request built
from the handshake, with ``message.session`` from the app's configured session
factory) and runs with Pyramid's thread locals pushed, as a view would.
``message.user`` is the handshake's ``authenticated_userid`` (the app's security
policy), computed on first use; it is also the user of presence entries the
consumer adds without one (``Group(name).add(message.reply_channel, presence={})``).

Pages: ``request.channels_position(group)`` renders a history group's position as
JSON for ``channels.js``'s ``positions``, the same for the whole request (call it, or
``request.channels.position(group)``, in the view before reading the data the page
renders). The presence view ``GET /_wsgi_channels/presence/<group>`` answers
``presence(group)`` once ``wsgi_channels.presence_authorize`` says who may read it.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from ..channel import Channel, Group
from ..consumers.routing import AppRouting
from ..consumers.sessions import channel_session
from ..exceptions import ConfigurationError
from ..settings import AppSettings, SettingNames
from ._common import (
    CLIENT_JS_URL,
    PRESENCE_URL,
    PushBuffer,
    client_js_app,
    consuming,
    extend_message,
    handshake_cookie_header,
    import_dotted,
    message_content,
    origin_allowed,
    position_json,
    position_of,
    presence_answer,
    reject,
    set_attribute,
    set_lazy_attribute,
    sidecar_connect_url,
)

__all__ = ["includeme", "routing_for", "ChannelsSettings", "RequestChannels", "reject"]

logger = logging.getLogger(__name__)

PREFIX = "wsgi_channels."
_KNOWN = {"layer", "routing", "allowed_origins", "transactional", "client_js_url", "sidecar_url", "token_secret",
          "presence_authorize", "presence_url"}


_NAMES = SettingNames(layer=PREFIX + "layer", options=PREFIX + "option.*", routing=PREFIX + "routing",
                      allowed_origins=PREFIX + "allowed_origins", sidecar_url=PREFIX + "sidecar_url",
                      token_secret=PREFIX + "token_secret", presence_authorize=PREFIX + "presence_authorize")


@dataclass
class ChannelsSettings(AppSettings):
    """The adapter's state, kept on the registry as ``registry.wsgi_channels``: the app's checked
    settings (:class:`~wsgi_channels.settings.AppSettings`; ``layer_url`` has the
    ``wsgi_channels.option.*`` keywords folded in) plus Pyramid's own."""

    #: With ``pyramid_tm``: hold pushes until the transaction commits.
    transactional: bool = True
    #: Path serving the browser client ("" to disable).
    client_js_url: str = CLIENT_JS_URL
    #: Path of the presence view, the group following it ("" to disable).
    presence_url: str = PRESENCE_URL
    #: ``(channel, consumer, route filters, session)`` added by ``config.add_channel_route``.
    consumers: list[tuple[str, Callable, dict, bool]] = field(default_factory=list)


def parse_settings(settings: dict) -> ChannelsSettings:
    """Translate ``wsgi_channels.*`` settings; raises :class:`ConfigurationError` naming the bad setting."""
    from pyramid.settings import asbool, aslist

    unknown = sorted(k for k in settings if k.startswith(PREFIX) and not k.startswith(PREFIX + "option.")
                     and k[len(PREFIX):] not in _KNOWN)
    if unknown:
        raise ConfigurationError(f"unknown setting(s) {', '.join(unknown)}; known: "
                                 + ", ".join(PREFIX + k for k in sorted(_KNOWN)) + f", {PREFIX}option.NAME")
    try:
        transactional = asbool(settings.get(PREFIX + "transactional", True))
    except ValueError as e:
        raise ConfigurationError(f"{PREFIX}transactional: {e}") from None
    origins = settings.get(PREFIX + "allowed_origins") or []
    token_secret = str(settings.get(PREFIX + "token_secret") or "").strip()
    state = ChannelsSettings.parse(
        _NAMES, layer=settings.get(PREFIX + "layer"),
        options={k[len(PREFIX + "option."):]: v for k, v in settings.items() if k.startswith(PREFIX + "option.")},
        routing=settings.get(PREFIX + "routing"),
        allowed_origins=aslist(origins) if isinstance(origins, str) else list(origins),
        sidecar_url=settings.get(PREFIX + "sidecar_url"), token_secret=token_secret,
        presence_authorize=settings.get(PREFIX + "presence_authorize") or None,
        transactional=transactional, client_js_url=settings.get(PREFIX + "client_js_url", CLIENT_JS_URL) or "",
        presence_url=settings.get(PREFIX + "presence_url", PRESENCE_URL) or "")
    if state.sidecar_url and not token_secret:
        raise ConfigurationError(f"{PREFIX}sidecar_url needs {PREFIX}token_secret: the secret connect tokens are "
                                 "signed with (give the sidecar the same one as --token-secret)")
    return state


class RequestChannels:
    """``request.channels``: push from a view, after commit when the request has a transaction."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.settings: ChannelsSettings = request.registry.wsgi_channels
        self._buffer: PushBuffer | None = None

    @property
    def layer(self) -> Any:
        return self.settings.layer

    def group(self, name: str) -> Group:
        """A :class:`Group` on the app's layer (its ``send`` is immediate)."""
        return Group(name, layer=self.settings.layer_url)

    def channel(self, name: str) -> Channel:
        return Channel(name, layer=self.settings.layer_url)

    def position(self, group: str) -> dict:
        """``{"epoch", "offset"}`` of a history group, the same for every call in this request
        (see :func:`channels_position`)."""
        memo = self.request.__dict__.setdefault("_wsgi_channels_positions", {})
        return position_of(self.settings.layer_url, group, memo)

    def send(self, channel: str, content: dict) -> None:
        """Send to a channel (after commit inside a ``pyramid_tm`` transaction)."""
        buffer = self._transaction_buffer()
        if buffer is None:
            self.channel(channel).send(content)
        else:
            buffer.send(channel, content)

    def group_send(self, group: str, content: dict) -> None:
        """Send to a group (after commit inside a ``pyramid_tm`` transaction)."""
        buffer = self._transaction_buffer()
        if buffer is None:
            self.group(group).send(content)
        else:
            buffer.group_send(group, content)

    def _transaction_buffer(self) -> PushBuffer | None:
        if not self.settings.transactional:
            return None
        tm = getattr(self.request, "tm", None)  # set by pyramid_tm
        if tm is None:
            return None
        try:
            txn = tm.get()
        except Exception:  # explicit mode with no transaction begun: nothing to wait for
            return None
        if self._buffer is None or self._buffer_txn is not txn:
            buffer = PushBuffer(self.settings.layer_url)

            def after_commit(success: bool) -> None:
                if success:
                    buffer.flush()
                else:
                    logger.debug("transaction aborted: %d push(es) dropped", len(buffer))
                    buffer.clear()

            txn.addAfterCommitHook(after_commit)

            def after_abort() -> None:
                buffer.clear()

            if hasattr(txn, "addAfterAbortHook"):
                txn.addAfterAbortHook(after_abort)
            self._buffer, self._buffer_txn = buffer, txn
        return self._buffer

    _buffer_txn: Any = None


_AUTHENTICATED = object()


def channels_url(request: Any, path: str, *, user_id: Any = _AUTHENTICATED, groups: Any = None,
                 max_age: float | None = None, origin: str | None = None) -> str:
    """``request.channels_url(path)``: the URL a page opens for the WebSocket ``path``.

    With ``wsgi_channels.sidecar_url`` set: the sidecar's ``ws(s)://`` URL of
    ``path`` with a connect token signed for that path, the page's origin,
    ``user_id`` (default ``request.authenticated_userid``) and ``groups``, valid
    ``max_age`` seconds (default 300); consumers read them as
    ``message.user_id`` and ``message.token_claims``. Without it: ``path``
    itself, for a sidecar on the app's origin.
    """
    state: ChannelsSettings = request.registry.wsgi_channels
    if user_id is _AUTHENTICATED:
        user_id = request.authenticated_userid if state.sidecar_url else None
    return sidecar_connect_url(state.sidecar_url, state.token_secret, path, user_id=user_id, groups=groups,
                               origin=request.host_url if origin is None else origin, max_age=max_age,
                               setting=PREFIX + "sidecar_url", secret_setting=PREFIX + "token_secret")


def channels_position(request: Any, group: str) -> str:
    """``request.channels_position(group)``: the group's history position as JSON
    (``{"epoch": ..., "offset": ...}``, safe inside ``<script>``, and marked so that Chameleon
    and Jinja templates insert it unescaped) for ``channels.js``'s ``positions``. Every call in one request answers the same: call it (or
    ``request.channels.position(group)``) in the view *before* reading the data the page
    renders, and the template renders that position, so the page's socket is replayed
    everything published after the read. Raises ``HistoryNotEnabled`` for a group
    without a ``group_history`` pattern."""
    return position_json(request.channels.position(group))


def add_channel_route(config: Any, channel: str, consumer: Any, *, session: bool | None = None,
                      check_origin: bool | None = None, **route_kwargs: Any) -> None:
    """Directive: ``config.add_channel_route("websocket.receive", consumer, path=r"^/ws/chat/")``.

    ``consumer`` may be a dotted name. ``session`` (default on for
    ``websocket.*``) builds ``message.request``/``message.session`` from the
    handshake; ``check_origin`` (default on for ``websocket.connect``) refuses
    origins not in ``wsgi_channels.allowed_origins``.
    """
    consumer = config.maybe_dotted(consumer)
    if session is None:
        session = channel.startswith("websocket.")
    if check_origin is None:
        check_origin = channel == "websocket.connect"
    state: ChannelsSettings = config.registry.wsgi_channels

    def register() -> None:
        if not callable(consumer):
            raise ConfigurationError(f"add_channel_route({channel!r}): consumer {consumer!r} is not callable")
        state.consumers.append((channel, consumer, dict(route_kwargs, _check_origin=check_origin), session))

    config.action(("wsgi_channels.route", channel, repr(sorted(route_kwargs.items())), consumer), register)


def routing_for(app_or_registry: Any) -> AppRouting:
    """The worker's routing for a Pyramid app (the router from ``config.make_wsgi_app()``) or registry.

    The list also carries the app's layer URL (``layer_url``), which ``wsgi-channels worker`` serves
    unless ``--layer`` names another.
    """
    from .. import route

    registry = getattr(app_or_registry, "registry", app_or_registry)
    state: ChannelsSettings | None = getattr(registry, "wsgi_channels", None)
    if state is None:
        raise RuntimeError("wsgi_channels is not included in this Pyramid app: "
                           "config.include('wsgi_channels.adapters.pyramid')")
    routes = []
    for channel, func, kwargs, session in state.consumers:
        kwargs = dict(kwargs)
        check_origin = kwargs.pop("_check_origin")
        routes.append(route(channel, _bind(registry, state, func, session, check_origin), **kwargs))
    if state.routing:
        extra = import_dotted(state.routing, PREFIX + "routing")
        routes.extend(extra if isinstance(extra, (list, tuple)) else [extra])
    return AppRouting(routes, layer_url=state.layer_url)


def _bind(registry: Any, state: ChannelsSettings, func: Callable, session: bool, check_origin: bool) -> Callable:
    def run(message: Any, **kwargs: Any) -> Any:
        from pyramid.request import Request
        from pyramid.scripting import prepare

        message = extend_message(message)
        content = message_content(message)
        if check_origin and not origin_allowed(message, state.allowed_origins):
            logger.info("WebSocket refused: Origin not allowed", extra={"path": content.get("path")})
            return reject(message)
        headers = {}
        if session:
            cookie = handshake_cookie_header(message)
            if cookie:
                headers["Cookie"] = cookie
        # The message's path is decoded ("/ws/chat/tea & cake?/"); blank() takes a URL.
        request = Request.blank(quote(content.get("path") or "/", safe="/"), headers=headers)
        request.registry = registry
        env = prepare(request=request, registry=registry)
        try:
            set_attribute(message, "registry", registry)
            set_attribute(message, "request", request)
            set_lazy_attribute(message, "user", lambda: request.authenticated_userid)
            if session:
                from pyramid.interfaces import ISessionFactory

                factory = registry.queryUtility(ISessionFactory)
                set_attribute(message, "session", request.session if factory is not None else None)
            with consuming(message):  # presence entries added without a user get message.user
                return func(message, **kwargs)
        finally:
            env["closer"]()

    functools.update_wrapper(run, func)
    return channel_session(run) if session else run


def _client_js_view(request: Any) -> Any:
    return request.get_response(client_js_app)


def _presence_view(request: Any) -> Any:
    state: ChannelsSettings = request.registry.wsgi_channels
    answer = presence_answer(state.layer_url, state.presence_authorizer(_NAMES.presence_authorize), request,
                             request.matchdict["group"])
    response = request.response
    response.status_int = answer.status
    response.body = answer.body
    for name, value in answer.headers:
        response.headers[name] = value
    return response


def includeme(config: Any) -> None:
    """Read ``wsgi_channels.*`` settings, add ``request.channels``, ``request.channels_url``,
    ``request.channels_position``, the ``add_channel_route`` directive, and the routes of the
    browser client and the presence view."""
    try:
        state = parse_settings(config.get_settings())
    except ConfigurationError:
        raise
    config.registry.wsgi_channels = state
    config.add_request_method(RequestChannels, "channels", reify=True)
    config.add_request_method(channels_url, "channels_url")
    config.add_request_method(channels_position, "channels_position")
    config.add_directive("add_channel_route", add_channel_route)
    if state.client_js_url:
        config.add_route("wsgi_channels.client_js", state.client_js_url)
        config.add_view(_client_js_view, route_name="wsgi_channels.client_js")
    if state.presence_url:
        config.add_route("wsgi_channels.presence", state.presence_url.rstrip("/") + "/{group:.*}")
        config.add_view(_presence_view, route_name="wsgi_channels.presence", request_method=("GET", "HEAD"))

    def check_routing() -> None:
        if state.routing:
            import_dotted(state.routing, PREFIX + "routing")
        state.presence_authorizer(_NAMES.presence_authorize)  # a path that does not import fails at commit

    config.action("wsgi_channels.check_routing", check_routing, order=10)
