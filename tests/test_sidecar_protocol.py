"""The sidecar's sans-IO parts, in memory: a wsproto client wired to our server objects."""
from __future__ import annotations

import argparse

import h11
import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Ping, Pong, Request,
                            TextMessage)
from wsproto.extensions import PerMessageDeflate

from wsgi_channels.exceptions import ConfigurationError
from wsgi_channels.protocol import websocket as wsp
from wsgi_channels.sidecar.config import SidecarConfig
from wsgi_channels.protocol.http import HttpConnection, HttpError, connect_message, request_info


def handshake(compression=False, subprotocols=(), max_message_size=1 << 20, extra_headers=(), offer=None):
    """A wsproto client and our server objects after an accepted handshake (``offer``: the client's deflate)."""
    client = WSConnection(ConnectionType.CLIENT)
    offer = offer or PerMessageDeflate()
    data = client.send(Request(host="example.com", target="/chat?room=1", subprotocols=list(subprotocols),
                               extensions=[offer] if compression else [],
                               extra_headers=list(extra_headers)))
    http = HttpConnection()
    http.receive_data(data)
    request = http.next_event()
    assert isinstance(request, h11.Request)
    headers = list(request.headers)
    assert wsp.is_upgrade(headers)
    upgrade = wsp.check_upgrade(request.method, request.http_version, headers)
    assert isinstance(upgrade, wsp.Upgrade)
    assert isinstance(http.next_event(), h11.EndOfMessage)
    chosen = subprotocols[-1] if subprotocols else None
    response_headers, extensions = wsp.accept_headers(upgrade, chosen, compression)
    out, trailing = http.switch_protocols(response_headers)
    client.receive_data(out)
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection), events
    assert events[0].subprotocol == chosen
    session = wsp.WebSocketSession(extensions, trailing, max_message_size=max_message_size)
    return client, session, events[0], request, headers


def test_text_and_binary_round_trip():
    client, server, _, _, _ = handshake()
    out, messages = server.receive_data(client.send(TextMessage(data="héllo")) + client.send(BytesMessage(data=b"\x00\xff")))
    assert out == b""
    assert messages == ["héllo", b"\x00\xff"]
    client.receive_data(server.send_message("réponse") + server.send_message(b"\x01"))
    got = [(type(e).__name__, e.data) for e in client.events()]
    assert got == [("TextMessage", "réponse"), ("BytesMessage", b"\x01")]


def test_fragments_are_buffered_into_one_message():
    client, server, _, _, _ = handshake()
    data = client.send(TextMessage(data="ab", message_finished=False))
    data += client.send(TextMessage(data="cd", message_finished=False))
    out, messages = server.receive_data(data)
    assert messages == []
    out, messages = server.receive_data(client.send(TextMessage(data="ef", message_finished=True)))
    assert messages == ["abcdef"]


def test_size_limit_is_enforced_while_buffering_fragments():
    client, server, _, _, _ = handshake(max_message_size=10)
    out, messages = server.receive_data(client.send(BytesMessage(data=b"x" * 6, message_finished=False)))
    assert messages == [] and out == b""
    out, messages = server.receive_data(client.send(BytesMessage(data=b"x" * 6, message_finished=False)))
    assert messages == []
    client.receive_data(out)
    close = [e for e in client.events() if isinstance(e, CloseConnection)]
    assert close and close[0].code == wsp.CLOSE_TOO_BIG
    assert server.close_code == wsp.CLOSE_TOO_BIG


def test_one_whole_message_over_the_limit_is_refused():
    client, server, _, _, _ = handshake(max_message_size=10)
    out, messages = server.receive_data(client.send(TextMessage(data="y" * 11)))
    assert messages == []
    client.receive_data(out)
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [1009]


def test_ping_is_answered_and_pong_clears_the_wait():
    client, server, _, _, _ = handshake()
    out, _ = server.receive_data(client.send(Ping(payload=b"p1")))
    client.receive_data(out)
    assert [e.payload for e in client.events() if isinstance(e, Pong)] == [b"p1"]
    data = server.ping(b"x")
    assert server.awaiting_pong
    client.receive_data(data)
    pings = [e for e in client.events() if isinstance(e, Ping)]
    assert pings
    server.receive_data(client.send(pings[0].response()))
    assert not server.awaiting_pong


def test_client_close_handshake_reports_its_code():
    client, server, _, _, _ = handshake()
    out, _ = server.receive_data(client.send(CloseConnection(code=4000, reason="bye")))
    assert server.closed and server.close_code == 4000
    client.receive_data(out)
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [4000]


def test_server_close_handshake_and_abnormal_end():
    client, server, _, _, _ = handshake()
    client.receive_data(server.close(1001, "going away"))
    events = list(client.events())
    assert isinstance(events[0], CloseConnection) and events[0].code == 1001
    assert server.close(1000) == b""  # only one close frame
    server.receive_data(client.send(events[0].response()))
    assert server.closed and server.close_code == 1001
    _, other, _, _, _ = handshake()
    other.receive_data(None)
    assert other.closed and other.close_code == wsp.CLOSE_ABNORMAL


def test_protocol_error_closes_with_1002():
    client, server, _, _, _ = handshake()
    out, messages = server.receive_data(b"\x81\x05hello")  # unmasked client frame
    assert messages == []
    assert server.close_code == 1002


def test_compression_negotiated_and_round_trips():
    client, server, accepted, _, _ = handshake(compression=True)
    assert accepted.extensions and server.compressed
    text = "compress me " * 200
    out, messages = server.receive_data(client.send(TextMessage(data=text)))
    assert messages == [text]
    frame = server.send_message(text)
    assert len(frame) < len(text) // 4
    client.receive_data(frame)
    assert [e.data for e in client.events()] == [text]


@pytest.mark.parametrize("window", [None, 9, 12])
def test_deflated_frames_are_shared_and_each_message_stands_alone(window):
    offer = PerMessageDeflate(server_max_window_bits=window) if window else PerMessageDeflate()
    client, server, accepted, _, _ = handshake(compression=True, offer=offer)
    agreed = accepted.extensions[0]
    assert agreed.server_no_context_takeover and agreed.client_no_context_takeover, \
        "both added to the answer although the client did not ask"
    assert server.deflate_bits == (window or 15)
    texts = ["x" * wsp.COMPRESS_MIN + " compress me " * 50, "short", "y" * 5000, b"\x00\x01" * 400]
    # Frames built on their own (as for a broadcast shared by many sockets) are read in any order,
    # interleaved with frames from the session's own wsproto compressor.
    frames = [wsp.message_frame(t, server.deflate_bits) for t in texts]
    client.receive_data(frames[2] + server.send_message(texts[0]) + frames[0] + frames[1] + frames[3] + frames[2])
    assert [e.data for e in client.events()] == [texts[2], texts[0], texts[0], texts[1], texts[3], texts[2]]
    assert frames[0][0] & 0x40 and len(frames[0]) < len(texts[0]) // 4, "a long message is deflated (RSV1)"
    assert frames[1] == wsp.encode_frame(wsp.OP_TEXT, b"short"), "a short one is a plain frame"
    out, messages = server.receive_data(client.send(TextMessage(data=texts[0])) + client.send(TextMessage(data=texts[2])))
    assert messages == [texts[0], texts[2]]
    ours = server._conn._proto.extensions[0]
    assert ours._compressor is None and ours._decompressor is None, "no zlib state kept between messages"


def test_plain_sockets_get_plain_frames():
    _, server, _, _, _ = handshake(compression=False)
    assert server.deflate_bits == 0
    assert wsp.message_frame("z" * 500, server.deflate_bits) == wsp.encode_frame(wsp.OP_TEXT, b"z" * 500)


def test_large_compressed_messages_survive_sliced_inflation():
    import os as _os

    client, server, _, _, _ = handshake(compression=True)
    texts = [_os.urandom(150_000).hex(), "abc" * 100_000]
    data = b"".join(client.send(TextMessage(data=t)) for t in texts)
    data += client.send(Ping(payload=b"between"))
    data += client.send(BytesMessage(data=b"tail", message_finished=True))
    out, messages = server.receive_data(data)
    assert messages == texts + [b"tail"]
    client.receive_data(out)
    assert [e.payload for e in client.events() if isinstance(e, Pong)] == [b"between"]


def test_deflate_bomb_is_stopped_near_the_limit():
    import tracemalloc

    client, server, _, _, _ = handshake(compression=True, max_message_size=100_000)
    data = client.send(BytesMessage(data=b"\0" * 50_000_000))  # ~50 KB on the wire
    assert len(data) < 100_000
    tracemalloc.start()
    out, messages = server.receive_data(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert messages == [] and server.close_code == wsp.CLOSE_TOO_BIG
    assert peak < 10_000_000, peak


def test_subprotocol_and_encoded_frame_are_readable_by_a_client():
    client, server, accepted, _, _ = handshake(subprotocols=["chat.v1", "chat.v2"])
    assert accepted.subprotocol == "chat.v2"
    big = b"z" * 70000
    client.receive_data(wsp.encode_frame(wsp.OP_TEXT, "hi".encode()) + wsp.encode_frame(wsp.OP_BINARY, big)
                        + wsp.encode_frame(wsp.OP_BINARY, b"m" * 300))
    assert [e.data for e in client.events()] == ["hi", big, b"m" * 300]


@pytest.mark.parametrize("method,version,headers,problem", [
    (b"POST", b"1.1", [], "GET"),
    (b"GET", b"1.0", [], "HTTP/1.1"),
    (b"GET", b"1.1", [(b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"x" * 24)], "Connection"),
    (b"GET", b"1.1", [(b"connection", b"Upgrade"), (b"sec-websocket-version", b"8"),
                      (b"sec-websocket-key", b"x" * 24)], "Version"),
    (b"GET", b"1.1", [(b"connection", b"keep-alive, Upgrade"), (b"sec-websocket-version", b"13")], "Key"),
])
def test_bad_upgrades_name_the_problem(method, version, headers, problem):
    result = wsp.check_upgrade(method, version, headers)
    assert isinstance(result, str) and problem in result


def test_subprotocol_offers_that_are_not_tokens_are_ignored():
    headers = [(b"connection", b"Upgrade"), (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"x" * 24),
               (b"sec-websocket-protocol", "chat, \u00e9t\u00e9, a b, v2".encode("latin-1"))]
    upgrade = wsp.check_upgrade(b"GET", b"1.1", headers)
    assert isinstance(upgrade, wsp.Upgrade) and upgrade.subprotocols == ["chat", "v2"]
    for offered in upgrade.subprotocols:
        assert wsp.accept_headers(upgrade, offered, False)[0][-1] == (b"Sec-WebSocket-Protocol", offered.encode())


@pytest.mark.parametrize("origin,host,scheme,allowed,ok", [
    (None, b"example.com", "http", [], True),
    (b"http://example.com", b"example.com", "http", [], True),
    (b"http://example.com:80", b"example.com", "http", [], True),
    (b"https://example.com", b"example.com", "https", [], True),
    (b"https://example.com", b"example.com", "http", [], False),  # scheme differs
    (b"http://evil.example", b"example.com", "http", [], False),  # cross-site hijacking attempt
    (b"http://example.com.evil.example", b"example.com", "http", [], False),
    (b"http://example.com:8080", b"example.com", "http", [], False),
    (b"null", b"example.com", "http", [], False),
    (b"https://app.example", b"ws.example", "https", ["https://app.example"], True),
    (b"https://other.example", b"ws.example", "https", ["https://app.example"], False),
    (b"https://anything.example", b"ws.example", "https", ["*"], True),
    # A subdomain wildcard: subdomains at any depth, same scheme and port; never the domain itself.
    (b"http://a.example.com", b"ws.example", "http", ["http://*.example.com"], True),
    (b"http://a.b.example.com", b"ws.example", "http", ["http://*.example.com"], True),
    (b"http://A.Example.COM:80", b"ws.example", "http", ["http://*.example.com"], True),
    (b"http://example.com", b"ws.example", "http", ["http://*.example.com"], False),
    (b"http://evil-example.com", b"ws.example", "http", ["http://*.example.com"], False),
    (b"http://a.example.com.evil.example", b"ws.example", "http", ["http://*.example.com"], False),
    (b"https://a.example.com", b"ws.example", "https", ["http://*.example.com"], False),
    (b"http://a.example.com:8080", b"ws.example", "http", ["http://*.example.com"], False),
    (b"http://a.example.com:8080", b"ws.example", "http", ["http://*.example.com:8080"], True),
    (b"http://*.example.com", b"ws.example", "http", ["http://*.example.com"], False),  # not a host
])
def test_origin_check(origin, host, scheme, allowed, ok):
    headers = [(b"host", host)] + ([(b"origin", origin)] if origin is not None else [])
    config = SidecarConfig(allowed_origins=allowed)
    result = wsp.check_origin(headers, scheme, host, config.allowed_origins)
    assert (result is None) is ok, result


def test_connect_message_shape_and_proxy_headers():
    _, _, _, request, headers = handshake(subprotocols=["a"], extra_headers=[
        (b"X-Forwarded-For", b"6.6.6.6, 10.0.0.7"), (b"X-Forwarded-Proto", b"https")])
    info = request_info(headers, ("127.0.0.1", 5000), ("127.0.0.1", 8001), proxy_headers=False)
    assert info.client == ["127.0.0.1", 5000] and info.scheme == "http"
    trusted = request_info(headers, ("127.0.0.1", 5000), ("127.0.0.1", 8001), proxy_headers=True)
    assert trusted.client == ["10.0.0.7", 0] and trusted.scheme == "https"
    m = connect_message(reply_channel="sidecar.abc!1", target=bytes(request.target), headers=headers,
                        info=trusted, root_path="/app", subprotocols=["a"])
    assert m["scheme"] == "wss" and m["path"] == "/chat" and m["query_string"] == b"room=1"
    assert m["order"] == 0 and m["subprotocols"] == ["a"] and m["root_path"] == "/app"
    assert all(isinstance(n, bytes) and n == n.lower() for n, _ in m["headers"])


def test_http_header_limit_and_keep_alive():
    http = HttpConnection(max_header_size=200)
    http.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 500)
    event = http.next_event()
    assert isinstance(event, HttpError) and event.status == 431
    http = HttpConnection()
    http.receive_data(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(http.next_event(), h11.Request)
    assert isinstance(http.next_event(), h11.EndOfMessage)
    data = http.respond(200, b"ok")
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"\r\n\r\nok")
    assert http.keep_alive
    http.start_next_cycle()
    second = http.next_event()
    assert isinstance(second, h11.Request) and second.target == b"/b"


def test_config_validation_names_the_field():
    with pytest.raises(ConfigurationError, match="http must be one of"):
        SidecarConfig(http="maybe")
    with pytest.raises(ConfigurationError, match="bind"):
        SidecarConfig(bind=["nowhere"])
    with pytest.raises(ConfigurationError, match="allowed origin"):
        SidecarConfig(allowed_origins=["example.com"])
    with pytest.raises(ConfigurationError, match="unknown sidecar setting"):
        SidecarConfig.from_mapping({"bnid": "x"})
    assert SidecarConfig(allowed_origins="https://A.example:443, http://b.example:8080").allowed_origins == [
        "https://a.example", "http://b.example:8080"]
    assert SidecarConfig(allowed_origins=["HTTPS://*.Example.com:443"]).allowed_origins == ["https://*.example.com"]
    for pattern in ("http://*", "http://*.com", "http://a*.example.com", "http://*.*.example.com",
                    "http://*example.com", "http://example.*", "*.example.com", "http://x.example:99999"):
        with pytest.raises(ConfigurationError, match="allowed origin"):  # never accepted to match only itself
            SidecarConfig(allowed_origins=[pattern])
    for name in ("max_outgoing_total", "control_frame_rate"):
        with pytest.raises(ConfigurationError, match=name):
            SidecarConfig(**{name: -1})


def test_cli_flags_and_environment(monkeypatch):
    from wsgi_channels.cli import sidecar as cli

    monkeypatch.setenv("WSGI_CHANNELS_PING_INTERVAL", "7.5")
    monkeypatch.setenv("WSGI_CHANNELS_ALLOWED_ORIGINS", "https://a.example https://b.example")
    monkeypatch.setenv("WSGI_CHANNELS_PROXY_HEADERS", "true")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["sidecar", "--bind", "127.0.0.1:9999", "--http", "layer", "--ping-timeout", "3"])
    config = cli.build_config(args)
    assert config.bind == ["127.0.0.1:9999"] and config.http == "layer"
    assert config.ping_interval == 7.5 and config.ping_timeout == 3.0 and config.proxy_headers
    assert config.allowed_origins == ["https://a.example", "https://b.example"]
    defaults = SidecarConfig()
    assert (config.control_frame_rate, config.max_outgoing_total) == (defaults.control_frame_rate,
                                                                    defaults.max_outgoing_total)
    monkeypatch.setenv("WSGI_CHANNELS_CONTROL_FRAME_RATE", "12.5")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    config = cli.build_config(parser.parse_args(["sidecar", "--max-outgoing-total", "1000"]))
    assert config.control_frame_rate == 12.5 and config.max_outgoing_total == 1000


# -- issue 21: bounded work per call, frames without a message rate-limited, sizes in bytes ------

def test_process_handles_a_bounded_number_of_frames_per_call():
    client, server, _, _, _ = handshake()
    server.feed(b"".join(client.send(Ping(payload=b"%d" % i)) for i in range(1000)))
    pongs = 0
    calls = 0
    while True:
        out, messages = server.process(64)
        client.receive_data(out)
        got = [e for e in client.events() if isinstance(e, Pong)]
        assert len(got) <= 64 and not messages
        pongs += len(got)
        calls += 1
        if not server.more:
            break
    assert pongs == 1000 and calls >= 1000 // 64
    # A large payload costs one unit per 8 KiB: a 1 MB message is a turn's work on its own.
    server.feed(client.send(BytesMessage(data=b"b" * 1000_000)) + client.send(Ping(payload=b"after")))
    out, messages = server.process(64)
    assert server.more and messages == [b"b" * 1000_000] and out == b""
    out, messages = server.process(64)
    client.receive_data(out)
    assert not server.more and [e.payload for e in client.events()] == [b"after"]


@pytest.mark.parametrize("make", [
    lambda: Ping(), lambda: Pong(),
    lambda: TextMessage(data="", message_finished=False),
    lambda: BytesMessage(data=b"x" * 63, message_finished=False),
])
def test_frames_without_a_message_are_rate_limited(make):
    client, server, _, _, _ = handshake()
    server.control_rate = 8.0
    server._tokens = 16.0  # as a session made with control_rate=8 starts: a burst of twice the rate
    t = 100.0
    for _ in range(16):  # the burst passes
        out, _ = server.receive_data(client.send(make()), now=t)
    assert server.open and not server.flooded
    for _ in range(10):  # then one every 1/8 s, the rate itself, for ever
        t += 0.125
        server.receive_data(client.send(make()), now=t)
    assert server.open and not server.flooded
    out, _ = server.receive_data(client.send(make()), now=t)  # one too many
    assert server.flooded and not server.open and server.close_code == 1008
    client.receive_data(out)
    assert [e.code for e in client.events() if isinstance(e, CloseConnection)] == [1008]
    server.receive_data(b"\x89\x80\x00\x00\x00\x00", now=t + 0.01)  # a ping after our close: given up
    assert server.closed and server.close_code == 1008


def test_fragments_that_carry_data_and_whole_messages_are_not_rate_limited():
    client, server, _, _, _ = handshake()
    server.control_rate = 1.0
    server._tokens = 2.0
    data = b"".join(client.send(BytesMessage(data=b"f" * 64, message_finished=i == 99)) for i in range(100))
    data += b"".join(client.send(TextMessage(data="")) for _ in range(100))  # empty but whole: for the app
    out, messages = server.receive_data(data, now=5.0)
    assert out == b"" and messages == [b"f" * 6400] + [""] * 100 and server.open


def test_text_size_is_counted_in_utf8_bytes():
    client, server, _, _, _ = handshake(max_message_size=10)
    out, messages = server.receive_data(client.send(TextMessage(data="\u00e9" * 5)))  # 10 bytes: at the limit
    assert messages == ["\u00e9" * 5] and out == b""
    out, messages = server.receive_data(client.send(TextMessage(data="\u00e9" * 6)))  # 6 characters, 12 bytes
    assert messages == [] and server.close_code == 1009


@pytest.mark.parametrize("value,problem", [
    ("permessage-deflate; server_max_window_bits=abc", "server_max_window_bits must be a number"),
    ("permessage-deflate; client_max_window_bits=-1", "client_max_window_bits must be a number"),
    ("permessage-deflate; server_max_window_bits=1 2", "malformed parameter"),
    ('permessage-deflate; server_max_window_bits="a b"', "malformed parameter"),
    ("permessage-deflate;;", "malformed parameter"),
    ("permessage deflate", "malformed Sec-WebSocket-Extensions offer"),
])
def test_malformed_extension_offers_are_a_bad_request(value, problem):
    headers = [(b"connection", b"Upgrade"), (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"x" * 24),
               (b"sec-websocket-extensions", value.encode())]
    result = wsp.check_upgrade(b"GET", b"1.1", headers)
    assert isinstance(result, str) and problem in result, result


@pytest.mark.parametrize("value,agreed", [
    ("permessage-deflate", True),
    ("permessage-deflate; client_max_window_bits", True),
    ('permessage-deflate; server_max_window_bits="10"', True),  # a quoted value (RFC 6455 section 9.1)
    ("permessage-deflate; server_max_window_bits=" + "9" * 5000, False),  # too large: declined
    ("permessage-deflate; server_max_window_bits=7", False),
    ("permessage-deflate; server_max_window_bits", False),  # needs a value (RFC 7692 section 7.1.2.1)
    ("permessage-deflate; frobnicate", False),  # unknown parameter (RFC 7692 section 5.1)
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", False),
    ("permessage-deflate; server_no_context_takeover=1", False),
    ("x-webkit-deflate-frame, permessage-deflate; frobnicate, permessage-deflate", True),  # the next offer
])
def test_extension_offers_are_declined_or_agreed(value, agreed):
    headers = [(b"connection", b"Upgrade"), (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"x" * 24),
               (b"sec-websocket-extensions", value.encode())]
    upgrade = wsp.check_upgrade(b"GET", b"1.1", headers)
    assert isinstance(upgrade, wsp.Upgrade), upgrade
    response, extensions = wsp.accept_headers(upgrade, None, True)
    assert bool(extensions) is agreed, response
