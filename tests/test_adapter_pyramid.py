"""The Pyramid adapter: settings, request.channels, pyramid_tm after-commit pushes, consumers with the session."""
from __future__ import annotations

import pytest
import transaction
from pyramid.config import Configurator
from pyramid.session import SignedCookieSessionFactory
from adapter_helpers import call, dispatch, replies, ws_connect, ws_receive
from wsgi_channels import ConfigurationError, Group, get_layer
from wsgi_channels.adapters.pyramid import reject, routing_for

LAYER = "memory://pyramid-tests"


@pytest.fixture
def layer():
    layer = get_layer(LAYER)
    layer.flush()
    return layer


def connect_consumer(message, room):
    if message.session.get("nick") is None:
        return reject(message)
    message.channel_session["room"] = room
    Group(f"room-{room}", layer=LAYER).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    message.reply_channel.send({"text": f"{message.session['nick']} joined {room}"
                                        f" ({message.registry.settings['app.title']})"})


def receive_consumer(message, room):
    Group(f"room-{room}", layer=LAYER).send({"text": f"{message.session['nick']}: {message['text']}"})


def make_app(tm=True, **settings):
    base = {"wsgi_channels.layer": LAYER, "app.title": "Chat"}
    base.update(settings)
    with Configurator(settings=base) as config:
        config.set_session_factory(SignedCookieSessionFactory("s3cret"))
        if tm:
            config.include("pyramid_tm")
        config.include("wsgi_channels.adapters.pyramid")

        def login(request):
            request.session["nick"] = request.matchdict["nick"]
            return request.response

        def post(request):
            request.channels.group_send("room-lobby", {"text": request.text})
            if request.params.get("fail"):
                raise RuntimeError("rolled back")
            request.response.text = "ok"
            return request.response

        config.add_route("login", "/login/{nick}")
        config.add_view(login, route_name="login")
        config.add_route("post", "/post")
        config.add_view(post, route_name="post")
        config.add_channel_route("websocket.connect", connect_consumer, path=r"^/ws/chat/(?P<room>\w+)/$")
        config.add_channel_route("websocket.receive", receive_consumer, path=r"^/ws/chat/(?P<room>\w+)/$")
        return config.make_wsgi_app()


def cookie_for(app, nick):
    status, headers, _ = call(app, "POST", f"/login/{nick}")
    assert status.startswith("200"), status
    cookie = [v for k, v in headers if k.lower() == "set-cookie"][0]
    return cookie.split(";", 1)[0]


def test_settings_are_read_and_bad_ones_named():
    app = make_app(**{"wsgi_channels.option.capacity": "9"})
    state = app.registry.wsgi_channels
    assert get_layer(state.layer_url).get_capacity("x") == 9
    with pytest.raises(ConfigurationError, match="wsgi_channels.layer"):
        make_app(**{"wsgi_channels.layer": "nope://"})
    with pytest.raises(ConfigurationError, match="wsgi_channels.lyaer"):
        make_app(**{"wsgi_channels.lyaer": "memory://"})
    with pytest.raises(Exception, match="not.a.module"):
        make_app(**{"wsgi_channels.routing": "not.a.module:routes"})


def test_push_from_a_view_goes_out_after_commit(layer):
    app = make_app()
    member = layer.new_channel("test.m?")
    Group("room-lobby", layer=LAYER).add(member)
    status, _, body = call(app, "POST", "/post", body=b"hello")
    assert status.startswith("200") and body == b"ok"
    assert replies(layer, member) == [{"text": "hello"}]


def test_push_is_dropped_when_the_transaction_aborts(layer):
    app = make_app()
    member = layer.new_channel("test.m?")
    Group("room-lobby", layer=LAYER).add(member)
    with pytest.raises(RuntimeError, match="rolled back"):
        call(app, "POST", "/post?fail=1", body=b"never")
    assert replies(layer, member) == []


def test_push_waits_for_commit_inside_the_transaction(layer):
    """A data-changing view: nothing is visible to clients until the transaction commits."""
    from pyramid.request import Request

    app = make_app()
    member = layer.new_channel("test.m?")
    Group("room-lobby", layer=LAYER).add(member)
    from pyramid.scripting import prepare

    request = Request.blank("/")
    env = prepare(request=request, registry=app.registry)
    try:
        request.tm = transaction.TransactionManager(explicit=True)
        request.tm.begin()
        request.channels.group_send("room-lobby", {"text": "pending"})
        request.channels.send(member, {"text": "direct"})
        assert replies(layer, member) == []
        request.tm.commit()
        assert replies(layer, member) == [{"text": "pending"}, {"text": "direct"}]
        # A second transaction on the same request gets its own buffer.
        request.tm.begin()
        request.channels.group_send("room-lobby", {"text": "second"})
        request.tm.abort()
        assert replies(layer, member) == []
    finally:
        env["closer"]()


def test_without_pyramid_tm_pushes_are_immediate(layer):
    app = make_app(tm=False)
    member = layer.new_channel("test.m?")
    Group("room-lobby", layer=LAYER).add(member)
    call(app, "POST", "/post", body=b"now")
    assert replies(layer, member) == [{"text": "now"}]


def test_consumer_uses_the_session_factory_and_registry(layer):
    app = make_app()
    routing = routing_for(app)
    reply = layer.new_channel("test.reply?")
    dispatch(routing, "websocket.connect", ws_connect(reply, "/ws/chat/lobby/", cookie_for(app, "bob")), layer)
    assert replies(layer, reply) == [{"accept": True}, {"text": "bob joined lobby (Chat)"}]
    dispatch(routing, "websocket.receive", ws_receive(reply, "/ws/chat/lobby/", "hi all"), layer)
    assert replies(layer, reply) == [{"text": "bob: hi all"}]


def test_connection_without_a_nickname_is_refused(layer):
    app = make_app()
    reply = layer.new_channel("test.reply?")
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, "/ws/chat/lobby/"), layer)
    assert replies(layer, reply) == [{"accept": False}]


def test_client_js_is_served():
    status, headers, body = call(make_app(), "GET", "/_wsgi_channels/static/channels.js")
    assert status.startswith("200")
    assert b"export class ChannelSocket" in body


def test_explicit_transaction_manager_without_a_transaction_sends_at_once(layer):
    from pyramid.request import Request
    from pyramid.scripting import prepare

    app = make_app()
    member = layer.new_channel("test.m?")
    Group("room-lobby", layer=LAYER).add(member)
    request = Request.blank("/")
    env = prepare(request=request, registry=app.registry)
    try:
        request.tm = transaction.TransactionManager(explicit=True)  # nothing begun
        request.channels.group_send("room-lobby", {"text": "no txn"})
        assert replies(layer, member) == [{"text": "no txn"}]
    finally:
        env["closer"]()


# -- request.channels_url: the sidecar's URL with a signed connect token ----------------------------

def _page_app(**settings):
    class Policy:
        def identity(self, request):
            return request.headers.get("X-User")

        def authenticated_userid(self, request):
            return request.headers.get("X-User")

        def permits(self, request, context, permission):
            return True

    with Configurator(settings={"wsgi_channels.layer": LAYER, **settings}) as config:
        config.set_security_policy(Policy())
        config.include("wsgi_channels.adapters.pyramid")

        def page(request):
            request.response.text = request.channels_url("/ws/chat/lobby/")
            return request.response

        config.add_route("page", "/page")
        config.add_view(page, route_name="page")
        return config.make_wsgi_app()


def test_request_channels_url_signs_for_the_authenticated_user():
    from urllib.parse import parse_qs, urlsplit

    from wsgi_channels.tokens import verify_connect_token

    app = _page_app(**{"wsgi_channels.sidecar_url": "http://127.0.0.1:8001", "wsgi_channels.token_secret": "shh"})
    status, _, body = call(app, "GET", "/page", headers={"X-User": "carol", "Host": "app.example:8000"})
    url = body.decode()
    assert status.startswith("200") and url.startswith("ws://127.0.0.1:8001/ws/chat/lobby/?_wsc_token=")
    token = parse_qs(urlsplit(url).query)["_wsc_token"][0]
    claims = verify_connect_token(token, "shh", path="/ws/chat/lobby/", origin="http://app.example:8000")
    assert claims["sub"] == "carol"
    _, _, body = call(app, "GET", "/page")
    assert "sub" not in verify_connect_token(parse_qs(urlsplit(body.decode()).query)["_wsc_token"][0], "shh")
    # Without a sidecar URL: the same-origin path.
    assert call(_page_app(), "GET", "/page")[2] == b"/ws/chat/lobby/"


def test_sidecar_url_settings_are_checked():
    with pytest.raises(ConfigurationError, match="wsgi_channels.token_secret"):
        _page_app(**{"wsgi_channels.sidecar_url": "http://127.0.0.1:8001"})
    with pytest.raises(ConfigurationError, match="wsgi_channels.sidecar_url"):
        _page_app(**{"wsgi_channels.sidecar_url": "nope", "wsgi_channels.token_secret": "x"})


def test_consumer_request_takes_any_decoded_path(layer):
    """The handshake's path is decoded: spaces, '?', '%' and non-ASCII stay part of the path."""
    def connect(message, room):
        message.reply_channel.send({"accept": True})
        message.reply_channel.send({"text": f"{room}|{message.request.path_info}"})

    with Configurator(settings={"wsgi_channels.layer": LAYER}) as config:
        config.include("wsgi_channels.adapters.pyramid")
        config.add_channel_route("websocket.connect", connect, path=r"^/ws/room/(?P<room>[^/]+)/$")
        app = config.make_wsgi_app()
    reply = layer.new_channel("test.reply?")
    path = "/ws/room/tea & cake? 100% ü/"
    dispatch(routing_for(app), "websocket.connect", ws_connect(reply, path), layer)
    assert replies(layer, reply)[1] == {"text": f"tea & cake? 100% ü|{path}"}


def test_routing_for_carries_the_apps_layer_with_its_options():
    """``wsgi-channels worker myapp:routing`` serves the layer the app pushes to (settings.py)."""
    app = make_app(**{"wsgi_channels.layer": "memory://pyr-carried", "wsgi_channels.option.capacity": "4"})
    routing = routing_for(app)
    assert routing.layer_url == app.registry.wsgi_channels.layer_url == "memory://pyr-carried?capacity=4"
    assert len(routing) == 2  # the two channel routes, as before


# -- group history and presence: options, the presence user, the presence view, channels_position ----------

FEATURE_SETTINGS = {"wsgi_channels.option.group_history": "chat.*:size=5:ttl=300\nnews.*",
                    "wsgi_channels.option.group_presence": "room.*:max_members=3"}


def may_see_presence(request, group):
    """The presence view's authorisation in these tests: logged in, and 'room.secret' is closed."""
    return group != "room.secret" and request.authenticated_userid is not None


def feature_app(name, **settings):
    """A Pyramid app whose security policy reads the user from the session (as a login form would set it)."""
    from pyramid.authentication import SessionAuthenticationHelper

    class Policy:
        helper = SessionAuthenticationHelper()

        def identity(self, request):
            return self.helper.authenticated_userid(request)

        def authenticated_userid(self, request):
            return self.helper.authenticated_userid(request)

        def permits(self, request, context, permission):
            return True

    joined = []

    def connect(message):
        joined.append(message.reply_channel.name)
        room = Group("room.1", layer=message.registry.wsgi_channels.layer_url)
        room.add(message.reply_channel, presence={"info": {"n": len(joined)}})  # no user: the handshake's
        message.reply_channel.send({"accept": True})

    def receive(message):
        message.reply_channel.send({"text": "pong"})

    with Configurator(settings={"wsgi_channels.layer": f"memory://{name}", **FEATURE_SETTINGS, **settings}) as config:
        config.set_session_factory(SignedCookieSessionFactory("s3cret"))
        config.set_security_policy(Policy())
        config.include("wsgi_channels.adapters.pyramid")

        def login(request):
            Policy.helper.remember(request, request.matchdict["uid"])
            return request.response

        def page(request):
            request.channels.position("chat.lobby")  # before reading the data
            request.channels.group("chat.lobby").send({"text": "published while the page reads its data"})
            request.response.text = f'positions: {{"chat.lobby": {request.channels_position("chat.lobby")}}}'
            return request.response

        def late(request):
            import jinja2  # an autoescaping template engine (pyramid_jinja2's) leaves the JSON as it is

            template = jinja2.Environment(autoescape=True).from_string("{{ position }}")
            request.response.text = template.render(position=request.channels_position("chat.lobby"))
            return request.response

        for route_name, path, view in (("login", "/login/{uid}", login), ("page", "/page", page),
                                       ("late", "/late", late)):
            config.add_route(route_name, path)
            config.add_view(view, route_name=route_name)
        config.add_channel_route("websocket.connect", connect, path=r"^/ws/room/$")
        config.add_channel_route("websocket.receive", receive, path=r"^/ws/room/$")
        app = config.make_wsgi_app()
    layer = get_layer(app.registry.wsgi_channels.layer_url)
    layer.flush()
    return app, layer


def test_group_history_and_presence_options_travel_in_the_layer_url():
    app, layer = feature_app("pyr-opts")
    url = app.registry.wsgi_channels.layer_url
    assert url == ("memory://pyr-opts?group_history=chat.*:size=5:ttl=300&group_history=news.*"
                   "&group_presence=room.*:max_members=3")
    assert routing_for(app).layer_url == url
    assert layer.history_options("chat.x").size == 5 and layer.history_options("news.y").size == 100
    assert layer.presence_options("room.1").max_members == 3


def test_bad_history_or_presence_options_are_named():
    with pytest.raises(ConfigurationError, match=r"wsgi_channels\.option\.group_history: 'chat\.\*': size='many' is not an int"):
        make_app(**{"wsgi_channels.option.group_history": "chat.*:size=many"})
    with pytest.raises(ConfigurationError, match=r"wsgi_channels\.option\.group_presence: .*ttl"):
        make_app(**{"wsgi_channels.option.group_presence": "room.*:ttl=1"})
    # Checked in a config action: Pyramid reports it at commit (ConfigurationExecutionError) with the setting's name.
    with pytest.raises(Exception, match=r"wsgi_channels\.presence_authorize: cannot import 'no\.such\.module'"):
        make_app(**{"wsgi_channels.presence_authorize": "no.such.module:may_see"})


def test_presence_user_is_the_authenticated_userid_of_the_handshake():
    app, layer = feature_app("pyr-user")
    status, headers, _ = call(app, "POST", "/login/carol")
    cookie = [v for k, v in headers if k.lower() == "set-cookie"][0].split(";", 1)[0]
    carol, anonymous = layer.new_channel("test.carol?"), layer.new_channel("test.anon?")
    routing = routing_for(app)
    dispatch(routing, "websocket.connect", ws_connect(carol, "/ws/room/", cookie), layer)
    dispatch(routing, "websocket.connect", ws_connect(anonymous, "/ws/room/"), layer)
    from wsgi_channels.presence import conn_id

    members = Group("room.1", layer=layer).presence()
    assert {cid: e["user"] for cid, e in members.items()} == {conn_id(carol): "carol", conn_id(anonymous): None}
    assert members[conn_id(carol)]["info"] == {"n": 1}


def test_message_user_is_computed_on_first_use_only():
    calls = []

    def consumer(message):
        message.reply_channel.send({"text": "no user needed"})

    def who(message):
        message.reply_channel.send({"text": f"{message.user}/{message.user}"})

    class Policy:
        def identity(self, request):
            return None

        def authenticated_userid(self, request):
            calls.append(request.path)
            return "dave"

        def permits(self, request, context, permission):
            return True

    with Configurator(settings={"wsgi_channels.layer": "memory://pyr-lazy"}) as config:
        config.set_security_policy(Policy())
        config.include("wsgi_channels.adapters.pyramid")
        config.add_channel_route("websocket.receive", consumer, path=r"^/ws/quiet/$", session=False)
        config.add_channel_route("websocket.receive", who, path=r"^/ws/who/$", session=False)
        app = config.make_wsgi_app()
    layer = get_layer("memory://pyr-lazy")
    reply = layer.new_channel("test.r?")
    dispatch(routing_for(app), "websocket.receive", ws_receive(reply, "/ws/quiet/", "x"), layer)
    assert calls == []
    dispatch(routing_for(app), "websocket.receive", ws_receive(reply, "/ws/who/", "x"), layer)
    assert calls == ["/ws/who/"] and replies(layer, reply)[-1] == {"text": "dave/dave"}


def test_presence_view_answers_who_is_in_a_group():
    import json

    from werkzeug.test import Client

    from wsgi_channels.presence import conn_id

    app, layer = feature_app("pyr-view", **{"wsgi_channels.presence_authorize": f"{__name__}:may_see_presence"})
    a, b = layer.new_channel("test.a?"), layer.new_channel("test.b?")
    Group("room.1", layer=layer).add(a, presence={"user": "alice", "info": {"x": 1}})
    Group("room.1", layer=layer).add(b, presence={"user": None})
    stranger, member = Client(app), Client(app)  # each keeps its cookies
    assert member.post("/login/erin").status_code == 200
    response = member.get("/_wsgi_channels/presence/room.1")
    assert response.status_code == 200, response.data
    assert response.headers["Cache-Control"] == "no-store" and response.mimetype == "application/json"
    got = response.get_json()
    assert (got["group"], got["clients"], got["users"]) == ("room.1", 2, 1)
    assert {m["id"]: (m["user"], m["info"]) for m in got["members"]} == {conn_id(a): ("alice", {"x": 1}),
                                                                        conn_id(b): (None, None)}
    assert a.encode() not in response.data and b.encode() not in response.data
    for client, path, status in [(stranger, "room.1", 403), (member, "room.secret", 403),
                                 (member, "bad%20name!", 400), (member, "chat.lobby", 404)]:
        response = client.get(f"/_wsgi_channels/presence/{path}")
        assert (response.status_code, response.headers["Cache-Control"]) == (status, "no-store"), path
        assert "error" in json.loads(response.data)
    closed, _ = feature_app("pyr-closed")
    assert Client(closed).get("/_wsgi_channels/presence/room.1").status_code == 404


def test_channels_position_renders_the_position_read_before_the_data():
    import json

    app, layer = feature_app("pyr-position")
    epoch = Group("chat.lobby", layer=layer).position().epoch
    status, _, body = call(app, "GET", "/page")
    assert status.startswith("200") and body.decode() == f'positions: {{"chat.lobby": {{"epoch":"{epoch}","offset":0}}}}'
    assert Group("chat.lobby", layer=layer).position().offset == 1
    assert json.loads(call(app, "GET", "/late")[2]) == {"epoch": epoch, "offset": 1}
