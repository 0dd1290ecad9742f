"""The sidecar connection's state machine (``sidecar/state.py``) and loose ends of its handshake and
frame paths: an outcome the layer calls invalid, Origin refusals, the admin port's bind order."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

import faultkit as fk
import stack
from servers import free_port
from wsgi_channels import tokens
from wsgi_channels.exceptions import ConfigurationError, InvalidMessage
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.protocol import websocket as ws_proto
from wsgi_channels.protocol.origin import check_origin
from wsgi_channels.sidecar import state as state_module
from wsgi_channels.sidecar.config import SidecarConfig
from wsgi_channels.sidecar.connection import ClientConnection
from wsgi_channels.sidecar.server import Sidecar
from wsgi_channels.sidecar.state import TRANSITIONS, IllegalTransition, State
from wsgi_channels.sidecar.websocket_side import WebSocketSide

SECRET = "states-test-secret"


# -- the table ---------------------------------------------------------------------------------

def test_the_table_names_every_state_and_every_state_can_finish():
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.DONE] == frozenset()
    for s in State:
        seen, todo = {s}, [s]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert State.DONE in seen, s
    # The two ways back: keep-alive (HTTP_BODY -> HEAD); nothing returns from a WebSocket.
    assert State.HEAD in TRANSITIONS[State.HTTP_BODY]
    assert not any(State.HEAD in TRANSITIONS[s] for s in (State.CONNECTING, State.OPEN, State.CLOSING))


@pytest.fixture
def conn():
    sidecar = Sidecar(SidecarConfig(http="layer"), layer=MemoryChannelLayer())
    a, b = socket.socketpair()
    try:
        yield ClientConnection(sidecar, a, ("127.0.0.1", 1))
    finally:
        a.close()
        b.close()


def test_an_illegal_transition_raises_under_the_tests(conn):
    assert state_module.STRICT  # tests/conftest.py sets WSGI_CHANNELS_STRICT_STATES=1
    conn.set_state(State.CONNECTING)
    conn.set_state(State.CONNECTING)  # the state it has: no transition
    with pytest.raises(IllegalTransition, match="CONNECTING -> HEAD"):
        conn.set_state(State.HEAD)
    assert conn.state is State.CONNECTING
    conn.set_state(State.OPEN)
    conn.set_state(State.CLOSING)
    conn.set_state(State.DONE)
    with pytest.raises(IllegalTransition, match="DONE -> OPEN"):
        conn.set_state(State.OPEN)


def test_an_illegal_transition_is_logged_loudly_in_production(conn, monkeypatch, caplog):
    monkeypatch.setattr(state_module, "STRICT", False)
    conn.set_state(State.HTTP_BODY)
    with caplog.at_level(logging.ERROR, logger="wsgi_channels.sidecar.state"):
        conn.set_state(State.OPEN)
    assert conn.state is State.OPEN  # the sidecar keeps serving
    record = next(r for r in caplog.records if "illegal connection state transition HTTP_BODY -> OPEN" in r.message)
    assert record.levelno == logging.ERROR and record.stack_info


# -- an outcome the layer calls invalid --------------------------------------------------------

class _RefusingLayer(MemoryChannelLayer):
    """A memory layer whose ``send`` refuses one marked message as invalid, as any layer refuses a
    message it cannot store (a value over 64 bits, a reserved key)."""

    def send(self, channel, message):
        if message.get("text") == "refuse me":
            raise InvalidMessage("message['text']: refused for the test")
        return super().send(channel, message)


def test_a_frame_the_layer_refuses_is_dropped_as_invalid_not_a_layer_outage():
    sidecar = Sidecar(SidecarConfig(), layer=_RefusingLayer())
    a, b = socket.socketpair()
    try:
        conn = ClientConnection(sidecar, a, ("127.0.0.1", 1))
        conn.reply_channel = sidecar.route(conn)
        upgrade = ws_proto.Upgrade(key=b"dGhlIHNhbXBsZSBub25jZQ==")
        ws = conn.ws = WebSocketSide(conn, upgrade)
        conn.set_state(State.CONNECTING)
        ws.session = ws_proto.WebSocketSession()
        conn.http = None
        conn.set_state(State.OPEN)
        ws._receive_messages(ws.session, ["refuse me", "fine"])
        stats = sidecar.stats
        assert stats.dropped["invalid"] == 1 and stats.dropped["layer_down"] == 0, stats.dropped
        assert sidecar.layer_ok and stats.layer_errors == 0
        assert ws.session.open and ws.order == 1  # the socket goes on; the next frame got order 1
        assert sidecar.layer.receive(["websocket.receive"])[1]["text"] == "fine"
    finally:
        a.close()
        b.close()


@pytest.fixture(scope="module")
def token_sidecar(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("states")
    admin = free_port()
    side = stack.sidecar(stack.env_for(f"ipc://{tmp}/channels.db"), tmp, None, "--token-secret", SECRET,
                         "--admin-bind", f"127.0.0.1:{admin}", "--ping-interval", "0")
    side.admin_port = admin
    side.start()
    try:
        yield side
    finally:
        stack.stop_all([side])


def test_a_handshake_the_layer_refuses_is_400_and_the_layer_stays_up(token_sidecar):
    """A connect token may carry an int user id; one over 64 bits makes the layer refuse the
    ``websocket.connect`` (msgpack). That is this request's problem: 400, not 503 "layer unavailable"."""
    side = token_sidecar
    token = tokens.sign_connect_token(SECRET, "/ws/x", user_id=2 ** 70)
    client = fk.RawClient(side.port)
    status, _, body = client.handshake(f"/ws/x?_wsc_token={token}", host=f"127.0.0.1:{side.port}",
                                       origin="https://elsewhere.example")
    client.close()
    assert status == 400, body
    assert b"the handshake cannot be passed on" in body
    m = fk.metrics(side.admin_port)
    assert m.get('wsgi_channels_sidecar_handshakes_total{outcome="bad_request"}') == 1, m
    assert m.get("wsgi_channels_sidecar_layer_errors_total") == 0
    assert m.get("wsgi_channels_sidecar_layer_up") == 1
    assert 'outcome="unavailable"' not in str(m)


# -- Origin refusals ---------------------------------------------------------------------------

def test_an_origin_refusal_quotes_the_origin_as_text_never_as_a_bytes_repr():
    reason = check_origin([(b"origin", b"null")], "http", b"example.com", [])
    assert reason == "Origin 'null' is not a valid origin"
    reason = check_origin([(b"origin", b"\xff\xfe junk " + b"x" * 300)], "http", b"example.com", [])
    assert reason is not None and "b'" not in reason and "\\x" not in reason and len(reason) < 140


def test_an_origin_refusal_over_a_real_sidecar_says_which_origin(token_sidecar):
    side = token_sidecar
    client = fk.RawClient(side.port)
    status, _, body = client.handshake("/ws/x", host=f"127.0.0.1:{side.port}", origin="null")
    client.close()
    assert status == 403
    assert b"Origin 'null' is not a valid origin" in body and b"b'" not in body, body


def test_the_adapters_use_the_one_origin_rule():
    from wsgi_channels.adapters._common import check_allowed_origins, origin_allowed

    def handshake(origin):
        return {"reply_channel": "r!x", "path": "/", "headers": [[b"origin", origin.encode()]], "order": 0}

    allowed = ["https://*.example.com", "https://app.test:8443"]
    assert origin_allowed(handshake("https://a.b.example.com"), allowed)  # wildcards, as the sidecar's
    assert origin_allowed(handshake("HTTPS://APP.test:8443"), allowed)  # canonical comparison
    assert not origin_allowed(handshake("https://example.com"), allowed)
    assert not origin_allowed(handshake("https://evil-example.com"), allowed)
    assert not origin_allowed(handshake("http://x.example.com"), allowed)
    assert origin_allowed(handshake("https://anything.test"), [])  # no list: the sidecar's check stands
    assert origin_allowed(handshake("https://anything.test"), ["*"])
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_ALLOWED_ORIGINS: allowed origin 'example.com'"):
        check_allowed_origins(["https://ok.example", "example.com"], "WSGI_CHANNELS_ALLOWED_ORIGINS")
    with pytest.raises(ConfigurationError, match="allowed origin 'example.com'"):
        origin_allowed(handshake("https://example.com"), ["example.com"])


# -- the admin port binds first ----------------------------------------------------------------

def test_nothing_listens_when_the_admin_port_cannot_be_bound():
    """The admin endpoint binds before the main port: a sidecar that announced its port always
    answers on its admin port too, and one that cannot bind its admin port never listens."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = free_port()
    sidecar = Sidecar(SidecarConfig(bind=[f"127.0.0.1:{port}"], admin_bind=f"127.0.0.1:{taken.getsockname()[1]}"),
                      layer=MemoryChannelLayer())
    try:
        with pytest.raises(OSError):
            sidecar.start()
        probe = socket.socket()
        probe.settimeout(2)
        try:
            with pytest.raises(ConnectionRefusedError):
                probe.connect(("127.0.0.1", port))
        finally:
            probe.close()
    finally:
        taken.close()
        for server in sidecar._servers:
            server.close()


def test_the_admin_port_answers_as_soon_as_the_main_port_does(tmp_path: Path):
    admin = free_port()
    side = stack.sidecar(stack.env_for(f"ipc://{tmp_path}/channels.db"), tmp_path, None,
                         "--admin-bind", f"127.0.0.1:{admin}")
    side.start(wait=20)  # returns once the main port accepts a connection
    try:
        probe = socket.create_connection(("127.0.0.1", admin), timeout=2)  # no retry, no wait
        probe.close()
        assert "wsgi_channels_sidecar_layer_up" in str(fk.metrics(admin))
    finally:
        stack.stop_all([side])
    assert "illegal connection state transition" not in side.log()


# -- connect tokens: the same Origin rule, names checked whole ---------------------------------

def test_a_token_group_name_ending_in_a_newline_is_refused_when_signed():
    with pytest.raises(ValueError, match="is not a group name"):
        tokens.sign_connect_token(SECRET, "/ws/x", groups=["room\n"])
    token = tokens.sign_connect_token(SECRET, "/ws/x", origin="HTTPS://App.Example:443/")
    claims = tokens.verify_connect_token(token, SECRET, path="/ws/x", origin="https://app.example")
    assert claims["origin"] == "https://app.example"
    with pytest.raises(ValueError, match="is not an origin"):
        tokens.sign_connect_token(SECRET, "/ws/x", origin="https://*.example.com")
    with pytest.raises(tokens.InvalidToken):
        tokens.verify_connect_token(token + "\n", SECRET, path="/ws/x")
