"""The Django adapter (plain Django, no Channels, no ASGI): checks, on_commit pushes, session/user, db cycle."""
from __future__ import annotations

import os
import tempfile

import django
import pytest
from django.conf import settings

from adapter_helpers import dispatch, replies, ws_connect, ws_receive
from wsgi_channels import Group, get_layer

LAYER = "memory://django-tests"
_DB = os.path.join(tempfile.mkdtemp(prefix="wsgi-channels-django-"), "db.sqlite3")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-adapter-tests",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                        "wsgi_channels.adapters.django"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware",
                    "django.contrib.auth.middleware.AuthenticationMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _DB}},
        ROOT_URLCONF="wsgi_channels.adapters.django.urls",
        WSGI_CHANNELS={"default": {"LAYER": LAYER}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        USE_TZ=True,
    )
    django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client, override_settings  # noqa: E402

from wsgi_channels.adapters.django import django_consumer, group_send, login_required  # noqa: E402

@pytest.fixture(scope="module", autouse=True)
def database():
    call_command("migrate", run_syncdb=True, verbosity=0)
    if not User.objects.filter(username="carol").exists():
        User.objects.create_user("carol", password="pw")
    yield


@pytest.fixture
def layer():
    layer = get_layer(LAYER)
    layer.flush()
    return layer


def session_cookie(username="carol"):
    client = Client()
    assert client.login(username=username, password="pw")
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@login_required
def connect(message):
    Group("feed", layer=LAYER).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    message.reply_channel.send({"text": f"hello {message.user.username}"})


@django_consumer
def receive(message):
    name = message.user.username if message.user.is_authenticated else "anonymous"
    message.reply_channel.send({"text": f"{name} ({User.objects.count()} users): {message['text']}"})


def routing():
    from wsgi_channels import route

    return [route("websocket.connect", connect), route("websocket.receive", receive)]


def _check_ids(deploy=False, **wsgi_channels):
    with override_settings(WSGI_CHANNELS=wsgi_channels):
        return sorted(m.id for m in checks.run_checks(tags=["wsgi_channels"], include_deployment_checks=deploy))


def test_system_checks_catch_bad_settings():
    assert _check_ids(default={"LAYER": "redis://localhost:6379/0"}) == []
    assert _check_ids(default={"LAYER": "nope://x"}) == ["wsgi_channels.E002"]
    assert _check_ids(default={"LAYER": "redis://h/0", "TYPO": 1}) == ["wsgi_channels.E002"]
    assert _check_ids(default={"LAYER": "redis://h/0", "OPTIONS": {"capacity": "many"}}) == ["wsgi_channels.E002"]
    assert _check_ids(default={"LAYER": "redis://h/0", "ROUTING": "no.such.module:routes"}) == ["wsgi_channels.E003"]
    assert _check_ids(default={"LAYER": "memory://"}) == []
    assert _check_ids(deploy=True, default={"LAYER": "memory://"}) == ["wsgi_channels.W001"]
    assert _check_ids(deploy=True, default={"LAYER": "redis://h/0"}) == []
    assert _check_ids(other={"LAYER": "redis://h/0"}) == ["wsgi_channels.E004"]
    with override_settings(WSGI_CHANNELS={"default": {"LAYER": "nope://x"}}):
        msg = [m for m in checks.run_checks(tags=["wsgi_channels"])][0]
        assert "WSGI_CHANNELS['default']['LAYER']" in msg.msg and msg.hint


def test_group_send_on_commit_waits_for_the_commit_and_is_dropped_on_rollback(layer):
    member = layer.new_channel("test.m?")
    Group("feed", layer=LAYER).add(member)
    with transaction.atomic():
        group_send("feed", {"text": "committed"}, on_commit=True)
        assert replies(layer, member) == []
    assert replies(layer, member) == [{"text": "committed"}]
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            group_send("feed", {"text": "rolled back"}, on_commit=True)
            raise RuntimeError("abort")
    assert replies(layer, member) == []
    group_send("feed", {"text": "now"})
    assert replies(layer, member) == [{"text": "now"}]


def test_login_required_consumer_gets_the_user_from_the_session_cookie(layer):
    reply = layer.new_channel("test.reply?")
    dispatch(routing(), "websocket.connect", ws_connect(reply, "/ws/feed/", session_cookie()), layer)
    assert replies(layer, reply) == [{"accept": True}, {"text": "hello carol"}]
    dispatch(routing(), "websocket.receive", ws_receive(reply, "/ws/feed/", "hi"), layer)
    assert replies(layer, reply) == [{"text": "carol (1 users): hi"}]


def test_anonymous_and_forged_sessions_are_refused(layer):
    reply = layer.new_channel("test.reply?")
    dispatch(routing(), "websocket.connect", ws_connect(reply, "/ws/feed/"), layer)
    assert replies(layer, reply) == [{"accept": False}]
    dispatch(routing(), "websocket.connect", ws_connect(reply, "/ws/feed/", "sessionid=not-a-real-session-key"), layer)
    assert replies(layer, reply) == [{"accept": False}]
    assert reply not in Group("feed", layer=LAYER).channels()


def test_database_connection_is_closed_after_each_message_like_a_request(layer):
    reply = layer.new_channel("test.reply?")
    connection.ensure_connection()
    assert connection.connection is not None
    dispatch(routing(), "websocket.receive", ws_receive(reply, "/ws/feed/", "x"), layer)
    assert replies(layer, reply)[0]["text"].startswith("anonymous")
    assert connection.connection is None, "CONN_MAX_AGE=0: the consumer's connection must be closed afterwards"


def test_runworker_without_routing_is_a_clear_error():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="ROUTING"):
        call_command("runworker")
    with override_settings(WSGI_CHANNELS={"default": {"LAYER": "bad://"}}):
        with pytest.raises(CommandError, match="LAYER"):
            call_command("runsidecar")


def test_client_js_view():
    response = Client().get("/_wsgi_channels/static/channels.js")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/javascript")
    assert b"export function connect" in response.content


# -- the browser client's URL, and channels_url ------------------------------------------------------

def test_check_says_which_include_serves_the_browser_client():
    """Without the include, /_wsgi_channels/static/channels.js is a 404: `manage.py check` says what to add."""
    import io

    with override_settings(ROOT_URLCONF="apps.django_urls_without_client"):
        assert Client().get("/_wsgi_channels/static/channels.js").status_code == 404
        found = [m for m in checks.run_checks(tags=["wsgi_channels"]) if m.id == "wsgi_channels.W002"]
        assert len(found) == 1
        assert 'path("", include("wsgi_channels.adapters.django.urls"))' in found[0].hint
        out, err = io.StringIO(), io.StringIO()
        call_command("check", stdout=out, stderr=err)
        assert "wsgi_channels.W002" in out.getvalue() + err.getvalue()
    # With it (this module's ROOT_URLCONF): served, and the check is quiet.
    assert Client().get("/_wsgi_channels/static/channels.js").status_code == 200
    assert "wsgi_channels.W002" not in [m.id for m in checks.run_checks(tags=["wsgi_channels"])]


def _render(source, user=None):
    from django.contrib.auth.models import AnonymousUser
    from django.template.backends.django import DjangoTemplates
    from django.test import RequestFactory

    engine = DjangoTemplates({"NAME": "t", "DIRS": [], "APP_DIRS": False, "OPTIONS": {
        "context_processors": ["django.template.context_processors.request"]}})
    request = RequestFactory().get("/", HTTP_HOST="app.example:8000")
    request.user = user or AnonymousUser()
    return engine.from_string("{% load wsgi_channels %}" + source).render({}, request)


def test_channels_url_template_tag_signs_for_the_logged_in_user():
    from urllib.parse import parse_qs, urlsplit

    from wsgi_channels.tokens import verify_connect_token

    carol = User.objects.get(username="carol")
    with override_settings(WSGI_CHANNELS={"default": {"LAYER": LAYER, "SIDECAR_URL": "http://127.0.0.1:8001"}}):
        url = _render('{% channels_url "/ws/feed/" groups="feed,news" as url %}{{ url }}', carol)
        assert url.startswith("ws://127.0.0.1:8001/ws/feed/?_wsc_token="), url
        token = parse_qs(urlsplit(url).query)["_wsc_token"][0]
        claims = verify_connect_token(token, settings.SECRET_KEY, path="/ws/feed/", origin="http://app.example:8000")
        assert claims["sub"] == carol.pk and claims["groups"] == ["feed", "news"]
        anonymous = _render('{% channels_url "/ws/feed/" as url %}{{ url }}')
        assert "sub" not in verify_connect_token(parse_qs(urlsplit(anonymous).query)["_wsc_token"][0],
                                                 settings.SECRET_KEY)
    with override_settings(WSGI_CHANNELS={"default": {"LAYER": LAYER, "SIDECAR_URL": "https://rt.example.com",
                                                      "TOKEN_SECRET": "own-secret"}}):
        url = _render('{% channels_url "/ws/feed/" as url %}{{ url }}')
        assert url.startswith("wss://rt.example.com/ws/feed/?_wsc_token=")
        verify_connect_token(parse_qs(urlsplit(url).query)["_wsc_token"][0], "own-secret", path="/ws/feed/")
    assert _render('{% channels_url "/ws/feed/" %}') == "/ws/feed/"  # no SIDECAR_URL: same origin
    assert _check_ids(default={"LAYER": LAYER, "SIDECAR_URL": "8001"}) == ["wsgi_channels.E002"]


# -- group history and presence: options, the presence user, the presence view, channels_position ----------

FEATURE_LAYER = "memory://django-features"
FEATURES = {"LAYER": FEATURE_LAYER, "OPTIONS": {"group_history": {"chat.*": {"size": 5}},
                                                "group_presence": {"room.*": {"max_members": 3}}}}
FEATURE_URL = "memory://django-features?group_history=chat.*:size=5&group_presence=room.*:max_members=3"


def may_see_presence(request, group):
    """The presence view's authorisation in these tests: logged in, and 'room.secret' is closed."""
    return group != "room.secret" and request.user.is_authenticated


@pytest.fixture
def feature_layer():
    layer = get_layer(FEATURE_URL)
    layer.flush()
    return layer


def test_group_history_and_presence_options_travel_in_the_layer_url(feature_layer):
    from wsgi_channels.adapters.django import get_layer_url

    with override_settings(WSGI_CHANNELS={"default": FEATURES}):
        assert get_layer_url() == FEATURE_URL
    assert feature_layer.history_options("chat.a").size == 5 and feature_layer.presence_options("room.b")
    assert _check_ids(default={**FEATURES, "OPTIONS": {"group_history": {"chat.*": {"size": -1}}}}) \
        == ["wsgi_channels.E002"]
    with override_settings(WSGI_CHANNELS={"default": {**FEATURES, "OPTIONS": {"group_presence": "room.*:ttl=2"}}}):
        message = checks.run_checks(tags=["wsgi_channels"])[0].msg
        assert message.startswith("WSGI_CHANNELS['default']['OPTIONS']: group_presence 'room.*': ttl=2"), message
    assert _check_ids(default={**FEATURES, "PRESENCE_AUTHORIZE": "no.such.module:may_see"}) == ["wsgi_channels.E005"]
    assert _check_ids(default={**FEATURES, "PRESENCE_AUTHORIZE": f"{__name__}:may_see_presence"}) == []


@django_consumer
def join_room(message):
    Group("room.1", layer=FEATURE_URL).add(message.reply_channel, presence={"info": {"via": "django"}})


def test_presence_user_is_the_django_user_of_the_handshake(feature_layer):
    from wsgi_channels import route
    from wsgi_channels.presence import conn_id

    carol, anonymous = feature_layer.new_channel("test.carol?"), feature_layer.new_channel("test.anon?")
    routing = [route("websocket.connect", join_room)]
    dispatch(routing, "websocket.connect", ws_connect(carol, "/ws/room/", session_cookie()), feature_layer)
    dispatch(routing, "websocket.connect", ws_connect(anonymous, "/ws/room/"), feature_layer)
    members = Group("room.1", layer=feature_layer).presence()
    carol_pk = str(User.objects.get(username="carol").pk)
    assert {cid: e["user"] for cid, e in members.items()} == {conn_id(carol): carol_pk, conn_id(anonymous): None}
    assert members[conn_id(carol)]["info"] == {"via": "django"}


def test_presence_view_answers_who_is_in_a_group(feature_layer):
    import json

    from wsgi_channels.presence import conn_id

    a, b = feature_layer.new_channel("test.a?"), feature_layer.new_channel("test.b?")
    Group("room.1", layer=feature_layer).add(a, presence={"user": "7", "info": [1, 2]})
    Group("room.1", layer=feature_layer).add(b, presence={"user": "8"})
    member, stranger = Client(), Client()
    assert member.login(username="carol", password="pw")
    with override_settings(WSGI_CHANNELS={"default": {**FEATURES,
                                                      "PRESENCE_AUTHORIZE": f"{__name__}:may_see_presence"}}):
        response = member.get("/_wsgi_channels/presence/room.1")
        assert response.status_code == 200, response.content
        assert response["Cache-Control"] == "no-store" and response["Content-Type"] == "application/json"
        got = json.loads(response.content)
        assert (got["group"], got["clients"], got["users"]) == ("room.1", 2, 2)
        assert {m["id"]: (m["user"], m["info"]) for m in got["members"]} == {conn_id(a): ("7", [1, 2]),
                                                                            conn_id(b): ("8", None)}
        assert a.encode() not in response.content and b.encode() not in response.content
        for client, path, status in [(stranger, "room.1", 403), (member, "room.secret", 403),
                                     (member, "bad%20name!", 400), (member, "chat.lobby", 404)]:
            response = client.get(f"/_wsgi_channels/presence/{path}")
            assert (response.status_code, response["Cache-Control"]) == (status, "no-store"), path
            assert "error" in json.loads(response.content)
        assert member.post("/_wsgi_channels/presence/room.1").status_code == 405
    with override_settings(WSGI_CHANNELS={"default": FEATURES}):
        assert member.get("/_wsgi_channels/presence/room.1").status_code == 404


def test_channels_position_renders_the_position_read_before_the_data(feature_layer):
    from django.test import RequestFactory

    from wsgi_channels import HistoryNotEnabled
    from wsgi_channels.adapters.django import channels_position

    epoch = Group("chat.lobby", layer=feature_layer).position().epoch
    with override_settings(WSGI_CHANNELS={"default": FEATURES}):
        from django.template.backends.django import DjangoTemplates

        engine = DjangoTemplates({"NAME": "t", "DIRS": [], "APP_DIRS": False, "OPTIONS": {
            "context_processors": ["django.template.context_processors.request"]}})
        template = engine.from_string('{% load wsgi_channels %}<script>connect("/ws/", {positions: '
                                      '{"chat.lobby": {% channels_position "chat.lobby" %}}})</script>')
        request = RequestFactory().get("/")
        assert str(channels_position(request, "chat.lobby")) == f'{{"epoch":"{epoch}","offset":0}}'  # the view, first
        group_send("chat.lobby", {"text": "published while the page reads its data"})
        html = template.render({}, request)
        assert f'{{"chat.lobby": {{"epoch":"{epoch}","offset":0}}}}' in html, html
        assert Group("chat.lobby", layer=feature_layer).position().offset == 1
        assert f'"offset":1}}' in template.render({}, RequestFactory().get("/"))  # a new request reads anew
        with pytest.raises(HistoryNotEnabled):
            channels_position(request, "news")
