"""Routing: filters, named groups, includes with prefix stripping, dotted paths, defaults."""
from __future__ import annotations

import sys
import types

import pytest

from wsgi_channels import ConfigurationError, include, route, route_class
from wsgi_channels.consumers.generic import WebsocketConsumer
from wsgi_channels.consumers.routing import DEFAULT_CONSUMERS, Router, import_object


def a(message, **kw):
    pass


def b(message, **kw):
    pass


def c(message, **kw):
    pass


def test_first_match_wins_and_named_groups_become_kwargs():
    router = Router([
        route("websocket.receive", a, path=r"^/room/(?P<room>[a-z]+)/$"),
        route("websocket.receive", b, path=r"^/room/"),
        route("websocket.receive", c),
    ])
    assert router.match("websocket.receive", {"path": "/room/lobby/"}) == (a, {"room": "lobby"})
    assert router.match("websocket.receive", {"path": "/room/42/"}) == (b, {})
    assert router.match("websocket.receive", {"path": "/other"}) == (c, {})
    assert router.match("websocket.receive", {}) == (c, {}), "a missing key fails the filter, not the router"


def test_several_filters_must_all_match():
    router = Router([route("http.request", a, path=r"^/api/(?P<v>\d+)", method=r"^POST$")])
    assert router.match("http.request", {"path": "/api/2/x", "method": "POST"}) == (a, {"v": "2"})
    found = router.match("http.request", {"path": "/api/2/x", "method": "GET"})
    assert found == (DEFAULT_CONSUMERS["http.request"], {})


def test_bytes_values_are_matched_as_latin1():
    router = Router([route("http.request", a, query_string=r"^token=(?P<t>\w+)")])
    assert router.match("http.request", {"query_string": b"token=abc"}) == (a, {"t": "abc"})


def test_include_strips_matched_prefix_and_nests():
    inner = [route("websocket.connect", a, path=r"^/(?P<room>\w+)/$"),
             include([route("websocket.connect", b, path=r"^/deep/$")], path=r"^/more")]
    router = Router([include(inner, path=r"^/chat(?P<version>/v\d)?")])
    assert router.match("websocket.connect", {"path": "/chat/lobby/"}) == (a, {"room": "lobby"})
    assert router.match("websocket.connect", {"path": "/chat/v2/lobby/"}) == (a, {"room": "lobby",
                                                                                    "version": "/v2"})
    assert router.match("websocket.connect", {"path": "/chat/more/deep/"}) == (b, {})
    # The prefix was stripped for matching only; the message is untouched.
    content = {"path": "/chat/lobby/"}
    router.match("websocket.connect", content)
    assert content == {"path": "/chat/lobby/"}
    assert router.match("websocket.connect", {"path": "/lobby/"}) == (DEFAULT_CONSUMERS["websocket.connect"], {})


def test_dotted_paths_and_module_routing(monkeypatch):
    mod = types.ModuleType("routing_fixture_mod")
    mod.consumer = a
    mod.inner = [route("chat.send", "routing_fixture_mod:consumer")]
    mod.routing = [include("routing_fixture_mod.inner"), route("other", "routing_fixture_mod.consumer")]
    monkeypatch.setitem(sys.modules, "routing_fixture_mod", mod)
    router = Router("routing_fixture_mod:routing")
    assert router.match("chat.send", {}) == (a, {})
    assert router.match("other", {}) == (a, {})
    assert router.channels == {"chat.send", "other"}, "no WebSocket route: the WebSocket channels are left alone"


def test_channel_names_and_route_class():
    class Chat(WebsocketConsumer):
        pass

    router = Router([route_class(Chat, path=r"^/chat/"), route("http.request", a)])
    assert router.channels == {"http.request", "http.disconnect", "websocket.connect", "websocket.receive",
                               "websocket.disconnect"}
    assert router.match("websocket.receive", {"path": "/chat/x"}) == (Chat, {})
    assert router.match("websocket.receive", {"path": "/other"}) == (DEFAULT_CONSUMERS["websocket.receive"], {})


def test_one_websocket_route_brings_all_websocket_channels():
    router = Router([route("websocket.receive", a), route("http.request", b)])
    assert router.channels == {"websocket.connect", "websocket.receive", "websocket.disconnect", "http.request",
                               "http.disconnect"}


def test_unknown_channel_without_default_is_none():
    assert Router([route("x", a)]).match("y", {}) is None


@pytest.mark.parametrize("make,words", [
    (lambda: Router([route("x", "no_such_module_zz.consumer")]), "cannot import 'no_such_module_zz'"),
    (lambda: Router([route("x", "wsgi_channels.consumers.routing:nope")]), "has no attribute 'nope'"),
    (lambda: Router([route("x", "wsgi_channels.consumers.routing:DEFAULT_CONSUMERS")]), "not callable"),
    (lambda: route("x", 5), "not callable"),
    (lambda: route("x", a, path="(unclosed"), "not a valid regular expression"),
    (lambda: route("x", a, path=5), "must be a regular expression"),
    (lambda: route("", a), "channel name"),
    (lambda: Router(["not a route"]), "is not a route"),
    (lambda: Router(5), "must be a list"),
    (lambda: route_class(a), "has no channel_names"),
    (lambda: import_object("nodots"), "dotted path"),
])
def test_configuration_errors_are_clear(make, words):
    with pytest.raises(ConfigurationError, match=words):
        make()


def test_channels_1_dict_routing():
    router = Router({"chat.send": a})
    assert router.match("chat.send", {}) == (a, {})
