"""Flask integration: ``Channels(app)`` / ``channels.init_app(app)``.

::

    from flask import Flask, session
    from wsgi_channels.adapters.flask import Channels

    channels = Channels()

    def create_app():
        app = Flask(__name__)
        app.config["WSGI_CHANNELS_LAYER"] = "redis://localhost:6379/0"
        channels.init_app(app)
        return app

    @app.post("/posts")
    def publish():
        ...
        channels.group_send("liveblog", {"text": json.dumps(post)})   # or Group("liveblog").send(...)

    @channels.consumer("websocket.connect", path=r"^/ws/liveblog/$")
    def ws_connect(message):
        if session.get("user") is None:            # the handshake's Flask session
            return reject(message)
        Group("liveblog").add(message.reply_channel)
        message.reply_channel.send({"accept": True})

Consumers run inside the app context; WebSocket consumers also run inside a
request context built from the handshake (its path and cookies), so
``flask.session`` is the session of the browser that opened the socket, read
through the app's own ``session_interface`` (signed cookie sessions or a
server-side one), and extensions that load the user from the session (such as
Flask-Login's ``current_user``) work as in a view. Changes made to that
session are not saved: there is no HTTP response to carry a cookie.
``message.user`` is what :meth:`Channels.user_loader` returns, else (an app
using Flask-Login) ``flask_login.current_user``, loaded on first use; it is
also the user of presence entries the consumer adds without one
(``Group(name).add(message.reply_channel, presence={})``).

Group history and presence for pages: ``channels.position(group)`` in a view
(before it reads the data it renders) and ``{{ channels_position(group) }}`` in
its template render the group's position for ``channels.js``'s ``positions``;
``GET /_wsgi_channels/presence/<group>`` answers ``presence(group)`` once
``WSGI_CHANNELS_PRESENCE_AUTHORIZE`` says who may read it.

With no app, the same object is a write-only emitter (Flask-SocketIO's trick)
for Celery tasks and scripts: ``Channels(layer="redis://...").group_send(...)``.

The worker runs the routing ``channels.routing_for(app)``; ``flask channels
worker`` and ``flask channels sidecar`` start the worker and the sidecar with
the app's configuration.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import quote

from ..channel import Channel, Group, get_layer
from ..consumers.routing import AppRouting
from ..consumers.sessions import channel_session
from ..exceptions import ConfigurationError
from ..settings import AppSettings, SettingNames, default_layer_url
from ._common import (
    CLIENT_JS_URL,
    PRESENCE_URL,
    PushBuffer,
    client_js_bytes,
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

__all__ = ["Channels", "reject", "routing_for"]

logger = logging.getLogger(__name__)

EXTENSION_KEY = "wsgi_channels"


#: How Flask spells each setting (for error messages).
_NAMES = SettingNames(layer="WSGI_CHANNELS_LAYER", options="WSGI_CHANNELS_OPTIONS", routing="WSGI_CHANNELS_ROUTING",
                      allowed_origins="WSGI_CHANNELS_ALLOWED_ORIGINS", sidecar_url="WSGI_CHANNELS_SIDECAR_URL",
                      token_secret="WSGI_CHANNELS_TOKEN_SECRET",
                      presence_authorize="WSGI_CHANNELS_PRESENCE_AUTHORIZE")


@dataclass
class _State(AppSettings):
    """What ``init_app`` keeps in ``app.extensions["wsgi_channels"]``: the app's checked settings
    (``layer_url`` has ``WSGI_CHANNELS_OPTIONS`` folded in) and the extension."""

    extension: Any = None


class Channels:
    """The Flask extension; with no app bound it is a write-only emitter.

    ``layer`` sets the emitter's layer URL when used without an app (default:
    ``WSGI_CHANNELS_LAYER`` from the environment, then ``ipc://``, the user's store on this machine).
    ``client_js_url`` and ``presence_url`` are where the app serves the browser client and the
    presence view (None: not at all).
    """

    def __init__(self, app: Any = None, *, layer: str | None = None, client_js_url: str | None = CLIENT_JS_URL,
                 presence_url: str | None = PRESENCE_URL) -> None:
        self._emitter_layer = layer
        self._client_js_url = client_js_url
        self._presence_url = presence_url
        self._consumers: list[tuple[str, Callable, dict, bool]] = []
        self._user_loader: Callable[[Any], Any] | None = None
        if app is not None:
            self.init_app(app)

    # -- binding -------------------------------------------------------------------------------------------------------

    def init_app(self, app: Any) -> None:
        """Bind to ``app``. Config keys (defaults set with ``app.config.setdefault``):

        ``WSGI_CHANNELS_LAYER``
            layer URL; default ``$WSGI_CHANNELS_LAYER``, else ``ipc://`` (the user's store on
            this machine). ``routing_for(app)`` carries it to ``wsgi-channels worker``.
        ``WSGI_CHANNELS_ROUTING``
            extra routes for the worker: a list of routes or a dotted path to one
            (``"myapp.routing:routes"``); consumers registered with
            :meth:`consumer` come first.
        ``WSGI_CHANNELS_OPTIONS``
            layer constructor keywords (``{"capacity": 500}``), folded into the layer URL
            that the worker and ``flask channels sidecar`` get too. Group history and
            presence are two of them: ``{"group_history": {"chat.*": {"size": 100, "ttl":
            300}}, "group_presence": {"room.*": {"max_members": 1000}}}`` (or URL items,
            ``"chat.*:size=100:ttl=300"``).
        ``WSGI_CHANNELS_ALLOWED_ORIGINS``
            origins (or host names) allowed to open WebSockets; empty allows any.
            Checked by consumers registered with ``check_origin=True`` (the default
            for ``websocket.connect``) and passed to ``flask channels sidecar``.
        ``WSGI_CHANNELS_SIDECAR_URL``
            the sidecar's public URL when it is not on the app's origin
            (``http://127.0.0.1:8001``); default ``$WSGI_CHANNELS_SIDECAR_URL``.
            Then ``channels_url(path)`` (a Jinja global, and :meth:`url`) renders
            the sidecar's URL of ``path`` with a signed connect token. Unset, it
            renders ``path`` (same origin: nginx routes it to the sidecar).
        ``WSGI_CHANNELS_TOKEN_SECRET``
            the secret connect tokens are signed with (the sidecar's
            ``--token-secret``); default ``$WSGI_CHANNELS_TOKEN_SECRET``, else
            ``app.secret_key``.
        ``WSGI_CHANNELS_PRESENCE_AUTHORIZE``
            ``(request, group) -> bool`` or its dotted path: who may read the presence
            view ``GET /_wsgi_channels/presence/<group>`` (403 when false). Unset, the
            view answers 404: it lists users, so it is never open by default.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"wsgi_channels is already initialised on the Flask app {app.import_name!r}; "
                               "call init_app() once per app")
        config = app.config
        config.setdefault("WSGI_CHANNELS_LAYER", self._emitter_layer or default_layer_url())
        config.setdefault("WSGI_CHANNELS_ROUTING", None)
        config.setdefault("WSGI_CHANNELS_OPTIONS", {})
        config.setdefault("WSGI_CHANNELS_ALLOWED_ORIGINS", [])
        config.setdefault("WSGI_CHANNELS_SIDECAR_URL", os.environ.get("WSGI_CHANNELS_SIDECAR_URL", ""))
        config.setdefault("WSGI_CHANNELS_TOKEN_SECRET", os.environ.get("WSGI_CHANNELS_TOKEN_SECRET") or None)
        config.setdefault("WSGI_CHANNELS_PRESENCE_AUTHORIZE", None)
        state = _State.parse(
            _NAMES, layer=config["WSGI_CHANNELS_LAYER"], options=config["WSGI_CHANNELS_OPTIONS"],
            routing=config["WSGI_CHANNELS_ROUTING"], allowed_origins=config["WSGI_CHANNELS_ALLOWED_ORIGINS"],
            sidecar_url=config["WSGI_CHANNELS_SIDECAR_URL"], token_secret=config["WSGI_CHANNELS_TOKEN_SECRET"],
            presence_authorize=config["WSGI_CHANNELS_PRESENCE_AUTHORIZE"], extension=self)
        state.presence_authorizer(_NAMES.presence_authorize)  # a path that does not import fails here
        app.extensions[EXTENSION_KEY] = state
        if self._client_js_url:
            app.add_url_rule(self._client_js_url, "wsgi_channels_client_js", _client_js_view)
        if self._presence_url:
            app.add_url_rule(self._presence_url.rstrip("/") + "/<path:group>", "wsgi_channels_presence",
                             _presence_view, methods=["GET"])
        app.add_template_global(self.url, "channels_url")
        app.add_template_global(self._position_markup, "channels_position")
        _register_cli(app)

    def _state(self, app: Any = None) -> _State | None:
        if app is None:
            from flask import current_app, has_app_context

            if not has_app_context():
                return None
            app = current_app
        state = app.extensions.get(EXTENSION_KEY)
        if state is None:
            raise RuntimeError(f"wsgi_channels is not initialised on the Flask app {app.import_name!r}: call "
                               "Channels(app) or channels.init_app(app)")
        return state

    # -- push (works with or without an app) ---------------------------------------------------------------------------

    @property
    def layer_url(self) -> str:
        state = self._state()
        if state is not None:
            return state.layer_url
        return self._emitter_layer or default_layer_url()

    @property
    def layer(self) -> Any:
        """The layer of the current app, or the emitter's layer outside an app context."""
        return get_layer(self.layer_url)

    def group(self, name: str) -> Group:
        return Group(name, layer=self.layer_url)

    def channel(self, name: str) -> Channel:
        return Channel(name, layer=self.layer_url)

    def send(self, channel: str, content: dict) -> None:
        """Send to one channel now."""
        self.channel(channel).send(content)

    def group_send(self, group: str, content: dict) -> None:
        """Send to every member of a group now."""
        self.group(group).send(content)

    def group_send_after_request(self, group: str, content: dict) -> None:
        """Send when the current request ends with a response below 400 (dropped on an error).

        Flask has no transaction of its own; with Flask-SQLAlchemy, call this
        after ``db.session.commit()`` or use ``group_send`` directly.
        """
        from flask import g

        buffer = g.get("_wsgi_channels_buffer")
        if buffer is None:
            buffer = g._wsgi_channels_buffer = PushBuffer(self.layer_url)
            from flask import after_this_request

            @after_this_request
            def _flush(response):  # type: ignore[no-untyped-def]
                if response.status_code < 400:
                    buffer.flush()
                else:
                    buffer.clear()
                return response
        buffer.group_send(group, content)

    def url(self, path: str, *, user_id: Any = None, groups: Any = None, max_age: float | None = None,
            origin: str | None = None) -> str:
        """The URL a page opens for the WebSocket ``path`` (the Jinja global ``channels_url``).

        With ``WSGI_CHANNELS_SIDECAR_URL`` set: the sidecar's ``ws(s)://`` URL of
        ``path`` with a connect token signed for that path, the page's origin
        (from the request) and ``user_id``/``groups``, valid ``max_age`` seconds
        (default 300); the consumer reads them as ``message.user_id`` and
        ``message.token_claims``. Without it: ``path`` itself, for a sidecar on
        the app's origin. In a template: ``connect({{ channels_url("/ws/news/",
        user_id=user.id)|tojson }})``.
        """
        from flask import current_app, has_request_context, request

        state = self._state()
        if state is None:
            raise RuntimeError("channels_url needs an app context (it reads the app's configuration)")
        if origin is None and has_request_context():
            origin = request.host_url
        secret = current_app.config.get("WSGI_CHANNELS_TOKEN_SECRET") or current_app.secret_key
        return sidecar_connect_url(state.sidecar_url, secret, path, user_id=user_id, groups=groups, origin=origin,
                                   max_age=max_age, setting="WSGI_CHANNELS_SIDECAR_URL",
                                   secret_setting="app.secret_key or WSGI_CHANNELS_TOKEN_SECRET")

    def position(self, group: str) -> dict:
        """``{"epoch", "offset"}`` of the group's history (``Group(group).position()``) for a page's
        ``positions``; the Jinja global ``channels_position(group)`` renders it as JSON.

        Within a request every call answers the same (kept in ``flask.g``): call it in the view
        *before* reading the data the page renders, and the template renders that position, so
        the page's socket is replayed everything published after the read. Raises
        ``HistoryNotEnabled`` for a group without a ``group_history`` pattern.
        """
        from flask import g, has_app_context

        memo = None
        if has_app_context():
            memo = g.setdefault("_wsgi_channels_positions", {})
        return position_of(self.layer_url, group, memo)

    def _position_markup(self, group: str) -> Any:
        from markupsafe import Markup

        return Markup(position_json(self.position(group)))

    # -- consumers -----------------------------------------------------------------------------------------------------

    def user_loader(self, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Register ``func(session) -> user or None``; WebSocket consumers get it as ``message.user``
        (and presence entries their user). Without one, an app using Flask-Login gets
        ``flask_login.current_user`` there."""
        self._user_loader = func
        return func

    def consumer(self, channel: str, *, session: bool | None = None, check_origin: bool | None = None,
                 **route_kwargs: Any) -> Callable[[Callable], Callable]:
        """Register a consumer for ``channel`` (``path=r"^/ws/..."`` and other route filters allowed).

        ``session`` (default: on for ``websocket.*``) runs it in a request context
        built from the handshake, so ``flask.session`` and ``message.user`` are the
        connecting browser's. ``check_origin`` (default: on for
        ``websocket.connect``) refuses handshakes from origins not in
        ``WSGI_CHANNELS_ALLOWED_ORIGINS``.
        """
        if session is None:
            session = channel.startswith("websocket.")
        if check_origin is None:
            check_origin = channel == "websocket.connect"

        def decorator(func: Callable) -> Callable:
            self._consumers.append((channel, func, dict(route_kwargs, _check_origin=check_origin), session))
            return func

        return decorator

    def routing_for(self, app: Any) -> AppRouting:
        """The worker's routing for ``app``: registered consumers (bound to ``app``), then ``WSGI_CHANNELS_ROUTING``.

        The list also carries the app's layer URL (``layer_url``): ``wsgi-channels worker`` serves
        that layer unless ``--layer`` names another (see :mod:`wsgi_channels.settings`).
        """
        from .. import route

        state = self._state(app)
        assert state is not None
        routes = []
        for channel, func, kwargs, session in self._consumers:
            kwargs = dict(kwargs)
            check_origin = kwargs.pop("_check_origin")
            routes.append(route(channel, self._bind(app, func, session, check_origin, state), **kwargs))
        extra = state.routing
        if extra:
            extra = import_dotted(extra, "WSGI_CHANNELS_ROUTING")
            routes.extend(extra if isinstance(extra, (list, tuple)) else [extra])
        return AppRouting(routes, layer_url=state.layer_url)

    def _bind(self, app: Any, func: Callable, session: bool, check_origin: bool, state: _State) -> Callable:
        loader = self._user_loader

        def run(message: Any, **kwargs: Any) -> Any:
            message = extend_message(message)
            with app.app_context():
                if check_origin and not origin_allowed(message, state.allowed_origins):
                    logger.info("WebSocket refused: Origin not allowed", extra={"path": message_content(message).get("path")})
                    return reject(message)
                if not session:
                    with consuming(message):
                        return func(message, **kwargs)
                with _handshake_request_context(app, message):
                    import flask

                    user = loader(flask.session) if loader is not None else None
                    if loader is None and getattr(app, "login_manager", None) is not None:
                        set_lazy_attribute(message, "user", _flask_login_user)
                    else:
                        set_attribute(message, "user", user)
                    set_attribute(message, "session", flask.session)
                    flask.g.user = user
                    with consuming(message):  # presence entries added without a user get message.user
                        return func(message, **kwargs)

        functools.update_wrapper(run, func)
        if session:
            run = channel_session(run)
        return run




def _flask_login_user() -> Any:
    """Flask-Login's user of the handshake's request context (its ``AnonymousUserMixin`` when not
    logged in, which presence lists as no user)."""
    from flask_login import current_user

    return current_user._get_current_object()


def _handshake_request_context(app: Any, message: Any) -> Any:
    content = message_content(message)
    headers = {}
    cookie = handshake_cookie_header(message)
    if cookie:
        headers["Cookie"] = cookie
    server = content.get("server") or None
    base_url = None
    if server and len(server) == 2 and server[0]:
        scheme = "https" if content.get("scheme") in ("wss", "https") else "http"
        base_url = f"{scheme}://{server[0]}:{server[1]}"
    # The message's path is decoded ("/ws/chat/tea & cake?/"); the request context takes a URL.
    return app.test_request_context(quote(content.get("path") or "/", safe="/"), headers=headers, base_url=base_url)


def _client_js_view() -> Any:
    from flask import Response

    return Response(client_js_bytes(), mimetype="text/javascript",
                    headers={"Cache-Control": "public, max-age=300"})


def _presence_view(group: str) -> Any:
    from flask import Response, current_app, request

    state = current_app.extensions[EXTENSION_KEY]
    answer = presence_answer(state.layer_url, state.presence_authorizer(_NAMES.presence_authorize), request, group)
    return Response(answer.body, status=answer.status, headers=answer.headers)


def routing_for(app: Any) -> AppRouting:
    """The worker routing of a Flask ``app`` bound with :class:`Channels`, carrying the app's layer URL."""
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        raise RuntimeError(f"wsgi_channels is not initialised on the Flask app {app.import_name!r}")
    return state.extension.routing_for(app)


def _register_cli(app: Any) -> None:
    """``flask channels worker`` and ``flask channels sidecar`` with the app's layer and routing."""
    import click
    from flask.cli import AppGroup

    group = AppGroup("channels", help="wsgi_channels: run the worker or the WebSocket sidecar for this app.")

    @group.command("worker", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def worker(args: tuple[str, ...]) -> None:
        """Run a wsgi_channels worker on this app's consumers (extra options go to `wsgi-channels worker`)."""
        from flask import current_app

        from ..cli import main

        routing = routing_for(current_app._get_current_object())  # type: ignore[attr-defined]
        HELD_ROUTING[:] = routing
        HELD_ROUTING.layer_url = routing.layer_url  # the app's layer, unless args hold a --layer
        sys.exit(main(["worker", f"{__name__}:HELD_ROUTING", *args]))

    @group.command("sidecar", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def sidecar(args: tuple[str, ...]) -> None:
        """Run the WebSocket sidecar on this app's layer (extra options go to `wsgi-channels sidecar`)."""
        from flask import current_app

        state = current_app.extensions[EXTENSION_KEY]
        # The app's token secret goes through the environment rather than argv (visible in `ps`).
        settings = replace(state, token_secret=current_app.config.get("WSGI_CHANNELS_TOKEN_SECRET")
                           or current_app.secret_key)
        try:
            argv, env = settings.sidecar_command(sys.executable, list(args))
        except ConfigurationError as e:
            click.echo(f"flask channels sidecar: {e}", err=True)
            argv, env = replace(settings, token_secret="").sidecar_command(sys.executable, list(args))
        os.environ.update(env)
        # The sidecar is a gevent server: a fresh interpreter patches before anything is imported.
        os.execv(sys.executable, argv)

    app.cli.add_command(group)


#: The routing ``flask channels worker`` hands to the worker (filled just before it starts).
HELD_ROUTING = AppRouting()
