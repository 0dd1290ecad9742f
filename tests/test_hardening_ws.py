"""Hardening of the sidecar's WebSocket side (issue 21): floods, output bounds, bad offers, size limits.

Each test runs a real sidecar process (``tests/sidecar_echo_app.py``: the sidecar and an echo
consumer on the in-memory layer) and talks to it over real sockets with wsproto and
websocket-client. ``benchmarks/sidecar_flood.py`` measures the same floods on a real worker and
Redis; here only liveness and outcomes are checked (a probe that used to wait for ever now gets
through within a generous timeout), never speed.
"""
from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from sidecar_helpers import Harness, RawClient, close_codes, raw_request
from test_sidecar_server import recorded, wait_for
from wsgi_channels.sidecar.config import SidecarConfig

pytestmark = pytest.mark.timeout(120)

#: An empty masked ping, an empty masked continuation frame without FIN (mask key 0: payload as is).
EMPTY_PING = b"\x89\x80\x00\x00\x00\x00"
EMPTY_CONTINUATION = b"\x00\x80\x00\x00\x00\x00"
HEALTH = b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n"


class Flood:
    """One socket sending ``blob`` as fast as it can (and reading whatever comes back)."""

    def __init__(self, sock: socket.socket, blob: bytes) -> None:
        self.sock = sock
        self.blob = blob
        self.sent = 0
        self.stopped = threading.Event()
        self.closed = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._drain, daemon=True)]

    def __enter__(self) -> "Flood":
        self.sock.settimeout(None)
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for t in self.threads:
            t.join(10)

    def _send(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sock.sendall(self.blob)
            except OSError:
                break
            self.sent += len(self.blob)
        self.closed.set()

    def _drain(self) -> None:
        while not self.stopped.is_set():
            try:
                if not self.sock.recv(1 << 20):
                    break
            except OSError:
                break


def ws_flooder(port: int, kind: str) -> Flood:
    client = RawClient(port, "/flooder")
    assert client.accepted
    if kind == "continuation":
        client.sock.sendall(b"\x01\x80\x00\x00\x00\x00")  # an empty first text fragment without FIN
        return Flood(client.sock, EMPTY_CONTINUATION * 10000)
    return Flood(client.sock, EMPTY_PING * 10000)


def probe(port: int, path: str = "/probe") -> float:
    """A new client's handshake and one echo; seconds taken (a socket timeout fails the test)."""
    started = time.monotonic()
    client = RawClient(port, path, timeout=10)
    assert client.accepted
    client.send(TextMessage(data="hello"))
    events, _ = client.read_events(10, stop=lambda e: isinstance(e, TextMessage))
    client.close()
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["hello"], events
    return time.monotonic() - started


def health_probe(port: int) -> None:
    assert raw_request(port, b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       read_timeout=10).startswith(b"HTTP/1.1 200 ")


def assert_still_flooding(h: Harness, flood: Flood, before: float) -> None:
    """The probes were served while the flood went on: the flooder was neither closed nor starved
    (the sidecar keeps reading it afterwards)."""
    assert not flood.closed.is_set()
    assert wait_for(lambda: h.metric("wsgi_channels_sidecar_received_bytes_total") - before > 256 * 1024,
                    timeout=20)
    assert not flood.closed.is_set()


# -- item 1: one client cannot hold the event loop ------------------------------------------------

@pytest.mark.parametrize("kind", ["ping", "continuation"])
def test_a_frame_flood_on_one_socket_leaves_other_clients_served(tmp_path, kind):
    """With no rate limit at all, the flooding socket is served only in its turn: before, a new
    client's handshake waited as long as the flood lasted (over 30 s here)."""
    h = Harness(tmp_path, "--control-frame-rate", "0").start()
    try:
        probe(h.port)
        with ws_flooder(h.port, kind) as flood:
            time.sleep(1.0)  # the kernel's buffers are full: the sidecar always has flood to read
            before = h.metric("wsgi_channels_sidecar_received_bytes_total")
            for _ in range(5):
                probe(h.port)
            health_probe(h.port)
            assert_still_flooding(h, flood, before)
    finally:
        h.stop()


@pytest.mark.parametrize("mode", ["off", "layer"])
def test_pipelined_requests_answered_by_the_sidecar_leave_other_clients_served(tmp_path, mode):
    h = Harness(tmp_path, "--http", mode).start()
    try:
        sock = socket.create_connection(("127.0.0.1", h.port))
        with Flood(sock, HEALTH * 2000) as flood:
            time.sleep(1.0)
            before = h.metric("wsgi_channels_sidecar_received_bytes_total")
            for _ in range(5):
                probe(h.port)
                health_probe(h.port)
            assert_still_flooding(h, flood, before)
    finally:
        h.stop()


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("hardening"), "--http", "layer", "--max-outgoing-buffer", "262144").start()
    yield h
    h.stop()


@pytest.mark.parametrize("kind", ["ping", "pong", "empty fragment", "small fragment"])
def test_frames_without_a_message_past_the_rate_close_1008(sidecar, kind):
    client = RawClient(sidecar.port, f"/flood-{kind.replace(' ', '-')}", timeout=20)
    before = sidecar.metric("wsgi_channels_sidecar_dropped_total", reason="control_flood")
    burst = b""
    if kind in ("empty fragment", "small fragment"):
        burst += client.ws.send(TextMessage(data="", message_finished=False))
    for _ in range(1000):  # the default rate is 100 a second, bursts of 200
        if kind == "ping":
            burst += client.ws.send(Ping())
        elif kind == "pong":
            burst += client.ws.send(Pong())
        else:
            burst += client.ws.send(TextMessage(data="" if kind == "empty fragment" else "x" * 63,
                                                message_finished=False))
    client.sock.sendall(burst)
    events, _ = client.read_events(20, stop=lambda e: isinstance(e, CloseConnection))
    client.close()
    assert close_codes(events) == [1008]
    if kind == "ping":
        assert 150 < len([e for e in events if isinstance(e, Pong)]) <= 250  # the burst was answered
    assert wait_for(lambda: sidecar.metric("wsgi_channels_sidecar_dropped_total", reason="control_flood")
                    == before + 1)
    path = f"/flood-{kind.replace(' ', '-')}"
    assert wait_for(lambda: [d["code"] for d in recorded(sidecar, "disconnects") if d["path"] == path] == [1008])


def test_control_frames_and_fragments_within_the_rate_pass(tmp_path):
    h = Harness(tmp_path, "--control-frame-rate", "20").start()
    try:
        client = RawClient(h.port, "/steady")
        pongs = 0
        for _ in range(50):  # 2.5 s at about 16 a second (the burst alone would allow 40)
            client.send(Ping(payload=b"p"))
            events, closed = client.read_events(0.06)
            assert not closed and not close_codes(events)
            pongs += len([e for e in events if isinstance(e, Pong)])
        events, _ = client.read_events(0.5)
        pongs += len([e for e in events if isinstance(e, Pong)])
        assert pongs == 50
        # Fragments of 64 bytes and more carry data: 1000 of them are one message, not a flood.
        for i in range(1000):
            client.send(BytesMessage(data=bytes([i % 256]) * 64, message_finished=i == 999))
        events, _ = client.read_events(5, stop=lambda e: isinstance(e, BytesMessage) and e.message_finished)
        data = b"".join(e.data for e in events if isinstance(e, BytesMessage))
        assert data == b"".join(bytes([i % 256]) * 64 for i in range(1000))
        assert not close_codes(events)
        client.close()
    finally:
        h.stop()


# -- item 7: bounded output, slow readers closed with a real close frame ----------------------------

def finished(events: list) -> list:
    """The messages whose last piece is among ``events`` (wsproto hands frames over in pieces)."""
    return [e for e in events if isinstance(e, (TextMessage, BytesMessage)) and e.message_finished]


def read_all(client: RawClient, seconds: float = 20.0) -> list:
    events, _ = client.read_events(seconds, stop=lambda e: isinstance(e, CloseConnection))
    return events


def test_a_slow_reader_gets_a_1013_close_frame_and_its_disconnect_says_so(sidecar):
    before = sidecar.metric("wsgi_channels_sidecar_slow_closed_total")
    client = RawClient(sidecar.port, "/slow-1013", rcvbuf=4096, timeout=20)
    client.send(TextMessage(data="flood 12000"))  # ~12 MB back: more than the kernel holds, not read yet
    assert wait_for(lambda: sidecar.metric("wsgi_channels_sidecar_slow_closed_total") > before, timeout=10)
    events = read_all(client)  # what was on its way, then a real close frame
    client.close()
    assert len(finished(events)) > 100
    assert close_codes(events) == [1013]
    assert wait_for(lambda: [d["code"] for d in recorded(sidecar, "disconnects") if d["path"] == "/slow-1013"]
                    == [1013])


def test_all_queues_together_are_bounded_and_the_slowest_reader_goes_first(tmp_path):
    """Loopback's kernel buffers take about 3 MB per socket; what they do not take is queued."""
    h = Harness(tmp_path, "--http", "layer", "--max-outgoing-total", "4000000", "--max-outgoing-buffer",
                "64000000").start()
    try:
        fast = RawClient(h.port, "/fast", timeout=30)  # reads everything at once: never queued for long
        slow = RawClient(h.port, "/slow", rcvbuf=4096, timeout=30)
        slow.send(TextMessage(data="flood 4000"))  # ~1 MB queued: under both bounds
        assert wait_for(lambda: h.metric("wsgi_channels_sidecar_queued_bytes") > 500_000)
        slowest = RawClient(h.port, "/slowest", rcvbuf=4096, timeout=30)
        slowest.send(TextMessage(data="flood 12000"))  # ~9 MB to queue: under its own bound, over the total
        assert wait_for(lambda: h.metric("wsgi_channels_sidecar_dropped_total", reason="outgoing_cap") == 1,
                        timeout=20)
        assert h.metric("wsgi_channels_sidecar_queued_bytes") <= 4_000_000
        assert close_codes(read_all(slowest)) == [1013]  # within the sidecar's 5 s close wait
        slowest.close()
        fast.send(TextMessage(data="flood 2000"))
        events, _ = fast.read_events(30, stop=lambda e: isinstance(e, TextMessage) and e.data.endswith("1999"))
        assert len(finished(events)) == 2000 and not close_codes(events)
        for client, count in ((slow, 4000), (fast, 0)):  # the others were left alone
            if count:
                events, _ = client.read_events(20, stop=lambda e: isinstance(e, TextMessage)
                                               and e.data.endswith(str(count - 1)))
                assert len(finished(events)) == count
                assert not close_codes(events)
            client.send(TextMessage(data="still here"))
            events, _ = client.read_events(20, stop=lambda e: isinstance(e, TextMessage))
            assert [e.data for e in events if isinstance(e, TextMessage)] == ["still here"]
            client.close()
        assert wait_for(lambda: h.metric("wsgi_channels_sidecar_queued_bytes") == 0)
        codes = {d["path"]: d["code"] for d in recorded(h, "disconnects")}
        assert codes.get("/slowest") == 1013 and codes.get("/slow") != 1013
        assert h.metric("wsgi_channels_sidecar_slow_closed_total") == 1
    finally:
        h.stop()


# -- item 10: a malformed extension offer is a bad request, before the layer -----------------------

def handshake_bytes(path: str, extensions: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: {extensions}\r\n\r\n").encode()


@pytest.mark.parametrize("offer", ["permessage-deflate; server_max_window_bits=abc",
                                   "permessage-deflate; client_max_window_bits=1x",
                                   "permessage-deflate; server_max_window_bits=10 10",
                                   "permessage-deflate;; server_no_context_takeover"])
def test_a_malformed_extension_offer_is_answered_400_before_routing(sidecar, offer):
    path = "/bad-ext-" + str(abs(hash(offer)))
    response = raw_request(sidecar.port, handshake_bytes(path, offer))
    assert response.startswith(b"HTTP/1.1 400 "), response[:200]
    assert b"Sec-WebSocket-Extensions" in response or b"window_bits" in response, response
    assert path not in recorded(sidecar, "connects"), "a refused handshake must never reach the consumer"


def test_extension_offers_declined_or_agreed_as_rfc_7692_says(sidecar):
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:  # a quoted value is fine
        s.sendall(handshake_bytes("/quoted", 'permessage-deflate; server_max_window_bits="10"'))
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 101 ") and b"server_max_window_bits=10" in head, head
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:  # unknown parameter: declined
        s.sendall(handshake_bytes("/declined", "permessage-deflate; frobnicate=1"))
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-extensions" not in head.lower(), head


# -- item 12: the message size limit is the client's payload, whatever the path -------------------

def test_a_message_at_the_size_limit_passes_on_the_longest_path(tmp_path):
    """Defaults throughout: the path (up to --max-header-size) travels in every websocket.receive,
    and a message exactly at --max-message-size still fits the layer's 1 MiB beside it."""
    h = Harness(tmp_path, admin=False).start()
    try:
        limit = SidecarConfig().max_message_size
        path = "/" + "p" * (SidecarConfig().max_header_size - 600)  # the head stays under the limit
        client = RawClient(h.port, path, timeout=10)
        for message in (BytesMessage(data=b"m" * limit), TextMessage(data="é" * (limit // 2))):  # UTF-8 bytes
            client.send(message)
            events, _ = client.read_events(10, stop=lambda e: getattr(e, "message_finished", False))
            parts = [e.data for e in events if isinstance(e, (TextMessage, BytesMessage))]
            assert not close_codes(events)
            assert (b"" if isinstance(message, BytesMessage) else "").join(parts) == message.data
        client.send(BytesMessage(data=b"m" * (limit + 1)))
        events, _ = client.read_events(10, stop=lambda e: isinstance(e, CloseConnection))
        assert close_codes(events) == [1009]
        client.close()
    finally:
        h.stop()


def test_a_message_limit_the_layer_cannot_carry_is_refused_at_start(tmp_path):
    import subprocess

    from wsgi_channels.exitcodes import EXIT_CONFIG

    result = subprocess.run([sys.executable, "-m", "wsgi_channels", "sidecar", "--layer",
                             f"ipc://{tmp_path / 'layer.db'}", "--max-message-size", str(1 << 20)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "max_message_size (1048576)" in result.stderr and "max_header_size" in result.stderr
