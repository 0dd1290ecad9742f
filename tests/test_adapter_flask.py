"""The Flask adapter: config, pushes from views and scripts, consumers with the handshake's session."""
from __future__ import annotations

import json

import flask
import pytest

from adapter_helpers import dispatch, replies, ws_connect, ws_receive
from wsgi_channels import ConfigurationError, Group, get_layer
from wsgi_channels.adapters.flask import Channels, reject, routing_for

LAYER = "memory://flask-tests"


@pytest.fixture
def layer():
    layer = get_layer(LAYER)
    layer.flush()
    return layer


def make_app(**config):
    app = flask.Flask("flask_adapter_test")
    app.secret_key = "test-secret"
    app.config["WSGI_CHANNELS_LAYER"] = LAYER
    app.config.update(config)
    channels = Channels()
    channels.init_app(app)

    @app.post("/login/<name>")
    def login(name):
        flask.session["user"] = name
        return "ok"

    @app.post("/publish")
    def publish():
        channels.group_send("news", {"text": flask.request.get_data(as_text=True)})
        return "sent"

    @app.post("/publish-later/<int:status>")
    def publish_later(status):
        channels.group_send_after_request("news", {"text": "later"})
        return "done", status

    @channels.user_loader
    def load_user(session):
        return {"name": session["user"]} if "user" in session else None

    @channels.consumer("websocket.connect", path=r"^/ws/news/$")
    def connect(message):
        if message.user is None:
            return reject(message)
        Group("news", layer=LAYER).add(message.reply_channel)
        message.reply_channel.send({"accept": True})
        message.reply_channel.send({"text": json.dumps({"hello": flask.session["user"], "app": flask.current_app.name})})

    @channels.consumer("websocket.receive", path=r"^/ws/news/$")
    def receive(message):
        who = message.user["name"] if message.user else None
        message.reply_channel.send({"text": f"{who}: {message['text']}"})

    return app, channels


def login_cookie(app, name="alice"):
    client = app.test_client()
    assert client.post(f"/login/{name}").status_code == 200
    cookie = client.get_cookie("session")
    assert cookie is not None, "Flask did not set a session cookie"
    return f"session={cookie.value}"


def test_init_app_sets_defaults_and_extension_state(monkeypatch):
    monkeypatch.setenv("WSGI_CHANNELS_LAYER", "memory://from-env")
    app = flask.Flask("defaults")
    ext = Channels(app)
    assert app.config["WSGI_CHANNELS_LAYER"] == "memory://from-env"
    assert app.config["WSGI_CHANNELS_ROUTING"] is None
    assert app.config["WSGI_CHANNELS_OPTIONS"] == {}
    assert app.config["WSGI_CHANNELS_ALLOWED_ORIGINS"] == []
    assert app.extensions["wsgi_channels"].extension is ext
    with app.app_context():
        assert ext.layer is get_layer("memory://from-env")


def test_init_app_twice_is_a_clear_error():
    app = flask.Flask("twice")
    ext = Channels(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        ext.init_app(app)


def test_bad_layer_url_names_the_config_key():
    app = flask.Flask("bad")
    app.config["WSGI_CHANNELS_LAYER"] = "carrier-pigeon://x"
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_LAYER.*carrier-pigeon"):
        Channels(app)


def test_options_travel_in_the_layer_url():
    app = flask.Flask("opts")
    app.config.update(WSGI_CHANNELS_LAYER="memory://opts", WSGI_CHANNELS_OPTIONS={"capacity": 7})
    Channels(app)
    url = app.extensions["wsgi_channels"].layer_url
    assert get_layer(url).get_capacity("some.channel") == 7


def test_bad_options_are_named_and_config_is_left_as_given():
    app = flask.Flask("badopts")
    app.config.update(WSGI_CHANNELS_LAYER="memory://x", WSGI_CHANNELS_OPTIONS={"capacity": "lots"})
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_OPTIONS.*capacity"):
        Channels(app)
    app = flask.Flask("goodopts")
    app.config.update(WSGI_CHANNELS_LAYER="memory://y", WSGI_CHANNELS_OPTIONS={"capacity": 3})
    Channels(app)
    assert app.config["WSGI_CHANNELS_LAYER"] == "memory://y"


def test_push_from_a_view_reaches_group_members(layer):
    app, _ = make_app()
    member = layer.new_channel("test.member?")
    Group("news", layer=LAYER).add(member)
    assert app.test_client().post("/publish", data="breaking").data == b"sent"
    assert replies(layer, member) == [{"text": "breaking"}]


def test_push_after_request_is_dropped_on_error_status(layer):
    app, _ = make_app()
    member = layer.new_channel("test.member?")
    Group("news", layer=LAYER).add(member)
    client = app.test_client()
    assert client.post("/publish-later/500").status_code == 500
    assert replies(layer, member) == []
    assert client.post("/publish-later/201").status_code == 201
    assert replies(layer, member) == [{"text": "later"}]


def test_write_only_emitter_works_without_an_app(layer):
    emitter = Channels(layer=LAYER)  # a Celery task or script: no Flask app at all
    member = layer.new_channel("test.member?")
    emitter.group("news").add(member)
    emitter.group_send("news", {"text": "from a script"})
    emitter.send(member, {"text": "direct"})
    assert replies(layer, member) == [{"text": "from a script"}, {"text": "direct"}]


def test_consumer_reads_the_signed_cookie_session_of_the_handshake(layer):
    app, _ = make_app()
    reply = layer.new_channel("test.reply?")
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/news/", login_cookie(app, "alice")), layer)
    got = replies(layer, reply)
    assert got[0] == {"accept": True}
    assert json.loads(got[1]["text"]) == {"hello": "alice", "app": "flask_adapter_test"}
    assert reply in Group("news", layer=LAYER).channels()
    # A later frame has no headers: the session comes back through the channel session.
    dispatch(routing_for(app), "websocket.receive", ws_receive(reply, "/ws/news/", "hi"), layer)
    assert replies(layer, reply) == [{"text": "alice: hi"}]


def test_connection_without_a_session_is_refused(layer):
    app, _ = make_app()
    reply = layer.new_channel("test.reply?")
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/news/"), layer)
    assert replies(layer, reply) == [{"accept": False}]
    forged = "session=eyJ1c2VyIjoibWFsbG9yeSJ9.forged.signature"
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/news/", forged), layer)
    assert replies(layer, reply) == [{"accept": False}], "a cookie with a bad signature must not log anyone in"


def test_allowed_origins_refuse_other_sites(layer):
    app, _ = make_app(WSGI_CHANNELS_ALLOWED_ORIGINS=["https://good.example"])
    reply = layer.new_channel("test.reply?")
    cookie = login_cookie(app)
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/news/", cookie, origin="https://evil.example"),
             layer)
    assert replies(layer, reply) == [{"accept": False}]
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/news/", cookie, origin="https://good.example"),
             layer)
    assert replies(layer, reply)[0] == {"accept": True}


def test_routing_setting_is_appended_and_bad_paths_are_named():
    app, _ = make_app(WSGI_CHANNELS_ROUTING="no.such.module:routes")
    with pytest.raises(ConfigurationError, match="no.such.module"):
        routing_for(app)


def test_client_js_is_served():
    app, _ = make_app()
    resp = app.test_client().get("/_wsgi_channels/static/channels.js")
    assert resp.status_code == 200
    assert resp.mimetype == "text/javascript"
    assert b"export function connect" in resp.data


# -- channels_url: the sidecar's URL with a signed connect token ------------------------------------

def _token_of(url):
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(url).query)["_wsc_token"][0]


def test_channels_url_jinja_global_signs_a_token_for_the_path_and_page(monkeypatch):
    from wsgi_channels.tokens import verify_connect_token

    app, _ = make_app(WSGI_CHANNELS_SIDECAR_URL="http://127.0.0.1:8001")

    @app.get("/page")
    def page():
        return flask.render_template_string('connect({{ channels_url("/ws/news/", user_id=7, groups=["news"])|tojson }})')

    body = app.test_client().get("/page", base_url="http://app.example:8000").get_data(as_text=True)
    url = json.loads(body[len("connect("):-1])
    assert url.startswith("ws://127.0.0.1:8001/ws/news/?_wsc_token=")
    claims = verify_connect_token(_token_of(url), "test-secret", path="/ws/news/", origin="http://app.example:8000")
    assert claims["sub"] == 7 and claims["groups"] == ["news"] and claims["exp"] - claims["iat"] == 300
    # WSGI_CHANNELS_TOKEN_SECRET (the sidecar's --token-secret) wins over app.secret_key.
    app2, channels2 = make_app(WSGI_CHANNELS_SIDECAR_URL="https://rt.example.com", WSGI_CHANNELS_TOKEN_SECRET="shared")
    with app2.test_request_context("/", base_url="https://app.example.com"):
        url = channels2.url("/ws/news/", max_age=30)
    assert url.startswith("wss://rt.example.com/ws/news/?_wsc_token=")
    assert verify_connect_token(_token_of(url), "shared", path="/ws/news/", origin="https://app.example.com")
    # The environment variable shared with the sidecar is the default.
    monkeypatch.setenv("WSGI_CHANNELS_SIDECAR_URL", "http://127.0.0.1:9001")
    monkeypatch.setenv("WSGI_CHANNELS_TOKEN_SECRET", "from-env")
    app3, channels3 = make_app()
    with app3.test_request_context("/"):
        assert verify_connect_token(_token_of(channels3.url("/ws/x/")), "from-env", path="/ws/x/")


def test_channels_url_without_a_sidecar_url_is_the_same_origin_path():
    app, channels = make_app()
    with app.test_request_context("/"):
        assert flask.render_template_string('{{ channels_url("/ws/news/") }}') == "/ws/news/"


def test_channels_url_mistakes_name_the_setting():
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_SIDECAR_URL"):
        make_app(WSGI_CHANNELS_SIDECAR_URL="127.0.0.1:8001")
    app, channels = make_app(WSGI_CHANNELS_SIDECAR_URL="http://127.0.0.1:8001")
    app.secret_key = None
    with app.test_request_context("/"):
        with pytest.raises(ConfigurationError, match="app.secret_key or WSGI_CHANNELS_TOKEN_SECRET"):
            channels.url("/ws/news/")


def test_consumer_request_context_takes_any_decoded_path(layer):
    """The handshake's path is decoded: spaces, '?', '%' and non-ASCII stay part of the path."""
    app = flask.Flask("paths")
    app.secret_key = "k"
    app.config["WSGI_CHANNELS_LAYER"] = LAYER
    channels = Channels(app)

    @channels.consumer("websocket.connect", path=r"^/ws/room/(?P<room>[^/]+)/$")
    def connect(message, room):
        message.reply_channel.send({"accept": True})
        message.reply_channel.send({"text": json.dumps([room, flask.request.path])})

    reply = layer.new_channel("test.reply?")
    path = "/ws/room/tea & cake? 100% ü/"
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, path), layer)
    assert replies(layer, reply)[1] == {"text": json.dumps(["tea & cake? 100% ü", path])}


def test_routing_for_carries_the_apps_layer_with_its_options():
    """``wsgi-channels worker myapp:routing`` serves the layer the app pushes to (settings.py)."""
    from wsgi_channels.adapters.flask import routing_for

    app = flask.Flask("carried")
    app.config.update(WSGI_CHANNELS_LAYER="memory://carried", WSGI_CHANNELS_OPTIONS={"capacity": 5})
    channels = Channels(app)

    @channels.consumer("websocket.receive")
    def receive(message):
        pass

    routing = routing_for(app)
    assert routing.layer_url == "memory://carried?capacity=5" == channels.routing_for(app).layer_url
    assert len(routing) == 1


# -- group history and presence: options, the presence user, the presence view, channels_position ----------

FEATURES = {"group_history": {"chat.*": {"size": 5, "ttl": 300}}, "group_presence": ["room.*:max_members=3"]}


def may_see_presence(request, group):
    """The presence view's authorisation in these tests: the caller says who it is, 'room.secret' is closed."""
    return group != "room.secret" and request.headers.get("X-Member") == "yes"


def feature_app(name="features", **config):
    app = flask.Flask(name)
    app.secret_key = "features-secret"
    app.config.update(WSGI_CHANNELS_LAYER=f"memory://{name}", WSGI_CHANNELS_OPTIONS=FEATURES, **config)
    channels = Channels(app)
    layer = get_layer(app.extensions["wsgi_channels"].layer_url)
    layer.flush()
    return app, channels, layer


def test_group_history_and_presence_options_travel_in_the_layer_url():
    app, channels, layer = feature_app("opts-features")
    url = app.extensions["wsgi_channels"].layer_url
    assert url == "memory://opts-features?group_history=chat.*:size=5:ttl=300&group_presence=room.*:max_members=3"
    assert routing_for(app).layer_url == url  # what `flask channels worker` serves
    assert layer.history_options("chat.lobby").size == 5 and layer.presence_options("room.1").max_members == 3
    assert layer.history_options("news") is None


@pytest.mark.parametrize("options, words", [
    ({"group_history": {"chat.*": {"size": 0}}}, "WSGI_CHANNELS_OPTIONS: group_history 'chat.*': size=0"),
    ({"group_presence": "room.*:ttl=1"}, "WSGI_CHANNELS_OPTIONS: group_presence 'room.*': ttl=1"),
    ({"group_history": {"chat.*": {"sise": 5}}}, "unknown field(s) sise"),
])
def test_bad_history_or_presence_options_fail_at_init_naming_the_setting(options, words):
    app = flask.Flask("bad-features")
    app.config.update(WSGI_CHANNELS_LAYER="memory://bad-features", WSGI_CHANNELS_OPTIONS=options)
    with pytest.raises(ConfigurationError) as caught:
        Channels(app)
    assert words in str(caught.value)


def test_presence_authorize_that_does_not_import_fails_at_init():
    app = flask.Flask("bad-authorize")
    app.config.update(WSGI_CHANNELS_LAYER="memory://x", WSGI_CHANNELS_PRESENCE_AUTHORIZE="no.such.module:may_see")
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_PRESENCE_AUTHORIZE.*no.such.module"):
        Channels(app)


class _Account:
    """A Flask-Login user."""

    is_active = True
    is_anonymous = False

    def __init__(self, uid):
        self.id = uid

    @property
    def is_authenticated(self):
        return True

    def get_id(self):
        return self.id


def test_presence_user_is_the_flask_login_user_of_the_handshake():
    """An app using Flask-Login: a presence entry added without a user gets current_user's id."""
    import flask_login  # a test dependency (setup.py), never skipped
    app, channels, layer = feature_app("login-features")
    manager = flask_login.LoginManager(app)
    loaded = []

    @manager.user_loader
    def load(uid):
        loaded.append(uid)
        return _Account(uid)

    @app.post("/login/<uid>")
    def login(uid):
        flask_login.login_user(_Account(uid))
        return "ok"

    @channels.consumer("websocket.connect", path=r"^/ws/room/$")
    def connect(message):
        channels.group("room.1").add(message.reply_channel, presence={"info": {"page": "room"}})
        message.reply_channel.send({"accept": True})

    @channels.consumer("websocket.receive", path=r"^/ws/room/$")
    def receive(message):
        message.reply_channel.send({"text": "pong"})  # never reads message.user

    client = app.test_client()
    assert client.post("/login/alice").status_code == 200
    cookie = f"session={client.get_cookie('session').value}"
    alice, anonymous = layer.new_channel("test.alice?"), layer.new_channel("test.anon?")
    loaded.clear()
    dispatch(routing_for(app), "websocket.receive", ws_receive(alice, "/ws/room/", "ping"), layer)
    assert loaded == [], "the user is loaded on first use only"
    dispatch(routing_for(app), "websocket.connect", ws_connect(alice, "/ws/room/", cookie), layer)
    dispatch(routing_for(app), "websocket.connect", ws_connect(anonymous, "/ws/room/"), layer)
    members = Group("room.1", layer=layer).presence()
    from wsgi_channels.presence import conn_id

    assert {cid: e["user"] for cid, e in members.items()} == {conn_id(alice): "alice", conn_id(anonymous): None}
    assert members[conn_id(alice)]["info"] == {"page": "room"} and loaded == ["alice"]


def test_presence_user_comes_from_the_user_loader_and_an_explicit_user_wins():
    app, channels, layer = feature_app("loader-features")

    @app.post("/login/<name>")
    def login(name):
        flask.session["user"] = name
        return "ok"

    @channels.user_loader
    def load(session):
        return session.get("user")

    @channels.consumer("websocket.connect", path=r"^/ws/(?P<how>\w+)/$")
    def connect(message, how):
        channels.group("room.2").add(message.reply_channel, presence={"user": "chosen"} if how == "explicit" else {})

    client = app.test_client()
    client.post("/login/bob")
    cookie = f"session={client.get_cookie('session').value}"
    a, b = layer.new_channel("test.a?"), layer.new_channel("test.b?")
    dispatch(routing_for(app), "websocket.connect", ws_connect(a, "/ws/default/", cookie), layer)
    dispatch(routing_for(app), "websocket.connect", ws_connect(b, "/ws/explicit/", cookie), layer)
    from wsgi_channels.presence import conn_id

    users = {cid: e["user"] for cid, e in Group("room.2", layer=layer).presence().items()}
    assert users == {conn_id(a): "bob", conn_id(b): "chosen"}


def test_presence_view_answers_who_is_in_a_group():
    app, channels, layer = feature_app("view-features", WSGI_CHANNELS_PRESENCE_AUTHORIZE=may_see_presence)
    a, b, c = (layer.new_channel(f"test.{n}?") for n in "abc")
    Group("room.1", layer=layer).add(a, presence={"user": "alice", "info": {"avatar": b"\x89PNG"}})
    Group("room.1", layer=layer).add(b, presence={"user": "bob"})
    Group("room.1", layer=layer).add(c, presence={"user": "alice"})  # a second tab
    Group("room.1", layer=layer).add(layer.new_channel("test.plain?"))  # a member without presence
    client = app.test_client()
    member = {"X-Member": "yes"}
    response = client.get("/_wsgi_channels/presence/room.1", headers=member)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store" and response.mimetype == "application/json"
    body = response.get_json()
    from wsgi_channels.presence import conn_id

    assert (body["group"], body["clients"], body["users"]) == ("room.1", 3, 2)
    assert {m["id"]: m["user"] for m in body["members"]} == {conn_id(a): "alice", conn_id(b): "bob",
                                                              conn_id(c): "alice"}
    first = next(m for m in body["members"] if m["id"] == conn_id(a))
    assert first["info"] == {"avatar": "iVBORw=="}  # bytes as base64 text
    since = Group("room.1", layer=layer).presence()[conn_id(a)]["since"]
    assert first["since"] == round(since * 1000) and isinstance(first["since"], int)
    assert [m["since"] for m in body["members"]] == sorted(m["since"] for m in body["members"])
    for name in (a, b, c):
        assert name not in response.get_data(as_text=True), "the view must never list reply channels"
    # Refusals, each a JSON body that is never cached.
    for path, headers, status in [("room.1", {}, 403), ("room.secret", member, 403), ("bad%20name!", member, 400),
                                  ("chat.lobby", member, 404)]:
        got = client.get(f"/_wsgi_channels/presence/{path}", headers=headers)
        assert (got.status_code, got.headers["Cache-Control"]) == (status, "no-store"), path
        assert "error" in got.get_json()
    assert client.post("/_wsgi_channels/presence/room.1", headers=member).status_code == 405


def test_presence_view_is_a_404_until_the_app_says_who_may_read_it():
    app, channels, layer = feature_app("closed-features")
    Group("room.1", layer=layer).add(layer.new_channel("test.a?"), presence={"user": "alice"})
    response = app.test_client().get("/_wsgi_channels/presence/room.1", headers={"X-Member": "yes"})
    assert response.status_code == 404 and "alice" not in response.get_data(as_text=True)
    # Served elsewhere, or not at all.
    app2 = flask.Flask("moved")
    app2.config.update(WSGI_CHANNELS_LAYER="memory://moved", WSGI_CHANNELS_OPTIONS=FEATURES,
                       WSGI_CHANNELS_PRESENCE_AUTHORIZE=f"{__name__}:may_see_presence")
    Channels(app2, presence_url="/who/")
    assert app2.test_client().get("/who/room.9", headers={"X-Member": "yes"}).get_json()["clients"] == 0
    app3 = flask.Flask("none")
    app3.config.update(WSGI_CHANNELS_LAYER="memory://none", WSGI_CHANNELS_PRESENCE_AUTHORIZE=may_see_presence)
    Channels(app3, presence_url=None)
    assert "wsgi_channels_presence" not in app3.view_functions


def test_channels_position_renders_the_position_read_before_the_data():
    """The view reads the position first, then its data; a message published in between (offset 1)
    is after the rendered position, so the page's socket gets it replayed."""
    app, channels, layer = feature_app("position-features")
    page = ('<script>connect("/ws/", {positions: {"chat.lobby": {{ channels_position("chat.lobby") }}}})</script>'
            '<p>{{ posts }}</p>')

    @app.get("/page")
    def view():
        channels.position("chat.lobby")  # before reading the data
        channels.group_send("chat.lobby", {"text": "published while the page reads its data"})
        return flask.render_template_string(page, posts="[]")

    @app.get("/late")
    def late():
        return flask.render_template_string('{{ channels_position("chat.lobby") }}')

    epoch = Group("chat.lobby", layer=layer).position().epoch
    html = app.test_client().get("/page").get_data(as_text=True)
    assert f'{{positions: {{"chat.lobby": {{"epoch":"{epoch}","offset":0}}}}}})' in html, html
    assert Group("chat.lobby", layer=layer).position().offset == 1
    assert json.loads(app.test_client().get("/late").get_data(as_text=True)) == {"epoch": epoch, "offset": 1}
    with app.test_request_context("/"):
        from wsgi_channels import HistoryNotEnabled

        with pytest.raises(HistoryNotEnabled):
            channels.position("news")


def test_the_worker_says_nothing_when_the_app_only_adds_options_to_the_environments_layer(monkeypatch, caplog):
    """``routing_for(app)`` carries ``$WSGI_CHANNELS_LAYER`` plus the app's options: the worker serves it
    without warning that the environment's layer is not used (it is, with the options)."""
    import logging

    from wsgi_channels.settings import command_layer_url

    monkeypatch.setenv("WSGI_CHANNELS_LAYER", "memory://env-layer")
    app = flask.Flask("env-plus-options")
    app.config["WSGI_CHANNELS_OPTIONS"] = FEATURES
    Channels(app)
    carried = routing_for(app).layer_url
    assert carried.startswith("memory://env-layer?group_history=")
    with caplog.at_level(logging.WARNING, logger="wsgi_channels.settings"):
        assert command_layer_url(None, carried) == carried
        assert command_layer_url(None, "memory://other") == "memory://other"
    assert [r.getMessage() for r in caplog.records] == [
        "WSGI_CHANNELS_LAYER='memory://env-layer' is not used: the app's own setting names the layer "
        "'memory://other', where the app pushes (give --layer to choose another)"]
