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
