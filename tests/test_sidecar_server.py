"""The sidecar over real sockets with real clients (websocket-client, requests, raw sockets).

The sidecar runs in its own process exactly as ``wsgi-channels sidecar`` does, with
a small consumer loop beside it on the in-memory layer (``tests/sidecar_echo_app.py``);
``test_sidecar_e2e.py`` repeats the essentials with a real worker and Redis.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time

import pytest
import requests
import websocket
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from sidecar_helpers import Harness, RawClient, close_codes, pings, raw_request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("sidecar"), "--http", "layer", "--connect-timeout", "1",
                "--http-timeout", "1.5", "--handshake-timeout", "1", "--max-message-size", "65536",
                "--max-outgoing-buffer", "262144", "--http-body-inline", "65536").start()
    yield h
    h.stop()


def connect(h, path="/", **kw):
    return websocket.create_connection(h.ws_url + path, timeout=5, **kw)


def recorded(h, what):
    return requests.get(f"{h.url}/_test/{what}", timeout=5).json()


def settle(h):
    """Wait until the harness's single consumer has caught up (after tests that block it)."""
    def ok():
        try:
            return requests.get(f"{h.url}/settle", timeout=5).status_code == 200
        except requests.RequestException:
            return False
    assert wait_for(ok, timeout=10, interval=0.2)


def wait_for(predicate, timeout=5.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


# -- handshake outcomes --------------------------------------------------------------------------

def test_text_and_binary_round_trips(sidecar):
    ws = connect(sidecar, "/echo")
    ws.send("héllo")
    assert ws.recv() == "héllo"
    ws.send_binary(b"\x00\x01\xff")
    assert ws.recv() == b"\x00\x01\xff"
    big = "x" * 60000
    ws.send(big)
    assert ws.recv() == big
    ws.close()


def test_permessage_deflate_over_a_real_socket(sidecar):
    from wsproto.extensions import PerMessageDeflate

    client = RawClient(sidecar.port, "/deflate", extensions=[PerMessageDeflate()])
    assert client.accepted
    text = "compressible " * 4000
    client.send(TextMessage(data=text))
    client.bytes_in = 0
    events, _ = client.read_events(5, stop=lambda e: isinstance(e, TextMessage) and e.message_finished)
    assert "".join(e.data for e in events if isinstance(e, TextMessage)) == text
    assert client.bytes_in < len(text) // 10  # the echo came back compressed
    client.close()


def test_a_broadcast_reaches_compressed_and_plain_sockets_alike(sidecar):
    """One group message to sockets with deflate (two window sizes) and without: every client reads
    the same text, compressed ones from a deflated frame, each message standing alone."""
    from wsproto.extensions import PerMessageDeflate

    def offer(i):  # a new extension object per client: each holds its own compressor
        return [[PerMessageDeflate()], [PerMessageDeflate(server_max_window_bits=10)], []][i % 3]

    clients = [RawClient(sidecar.port, "/bcast", extensions=offer(i)) for i in range(9)]
    for c in clients:
        c.send(TextMessage(data="join deflated-group"))
        events, _ = c.read_events(5, stop=lambda e: isinstance(e, TextMessage))
        assert [e.data for e in events if isinstance(e, TextMessage)] == ["joined"]
    texts = ["news " * 300, "tiny", "more news " * 200]
    for text in texts:
        clients[0].send(TextMessage(data=f"group deflated-group {text}"))
        for i, c in enumerate(clients):
            c.bytes_in = 0
            events, _ = c.read_events(5, stop=lambda e: isinstance(e, TextMessage) and e.message_finished)
            assert "".join(e.data for e in events if isinstance(e, TextMessage)) == text
            if len(text) > 100:
                assert (c.bytes_in < len(text) // 4) == bool(offer(i)), (i, c.bytes_in)
    for c in clients:
        c.close()


def test_consumer_rejection_is_403(sidecar):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(sidecar, "/reject")
    assert e.value.status_code == 403


def test_subprotocol_choice(sidecar):
    ws = connect(sidecar, "/sub", subprotocols=["chat.v1", "chat.v2"])
    assert ws.getsubprotocol() == "chat.v2"
    ws.close()


def test_connect_timeout_answers_503(sidecar):
    started = time.monotonic()
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(sidecar, "/silent")
    assert e.value.status_code == 503
    assert 0.9 <= time.monotonic() - started < 4


def test_server_close_code_reaches_the_client(sidecar):
    client = RawClient(sidecar.port, "/close-4321")
    assert client.accepted
    events, _ = client.read_events(3, stop=lambda e: isinstance(e, CloseConnection))
    assert close_codes(events) == [4321]
    client.close()


def test_exactly_one_disconnect_with_code_and_order(sidecar):
    ws = connect(sidecar, "/track-clean")
    for i in range(3):
        ws.send(f"m{i}")
        assert ws.recv() == f"m{i}"
    ws.close(status=4000)
    raw = RawClient(sidecar.port, "/track-abrupt")
    raw.send(TextMessage(data="one"))
    raw.read_events(1, stop=lambda e: isinstance(e, TextMessage))
    raw.close()  # TCP gone without a close frame

    def both():
        got = [d for d in recorded(sidecar, "disconnects") if d["path"].startswith("/track-")]
        return got if len(got) >= 2 else None

    got = wait_for(both)
    time.sleep(0.3)
    got = [d for d in recorded(sidecar, "disconnects") if d["path"].startswith("/track-")]
    assert sorted((d["path"], d["code"], d["order"]) for d in got) == [
        ("/track-abrupt", 1006, 2), ("/track-clean", 4000, 4)]


def test_order_numbers_count_frames(sidecar):
    ws = connect(sidecar, "/order")
    ws.send("a")
    ws.recv()
    ws.send("whoami")
    who = json.loads(ws.recv())
    assert who == {"order": 2, "path": "/order", "reply_channel": who["reply_channel"]}
    ws.close()


# -- origin --------------------------------------------------------------------------------------

def test_cross_site_hijacking_with_a_valid_cookie_is_refused_before_the_layer(sidecar):
    with pytest.raises(websocket.WebSocketBadStatusException) as e:
        connect(sidecar, "/hijack", origin="https://evil.example", cookie="sessionid=valid-session")
    assert e.value.status_code == 403
    # Same origin as Host is fine.
    ws = connect(sidecar, "/same-origin", origin=f"http://127.0.0.1:{sidecar.port}")
    ws.close()
    connects = recorded(sidecar, "connects")
    assert "/same-origin" in connects and "/hijack" not in connects
    assert sidecar.metric("wsgi_channels_sidecar_handshakes_total", outcome="origin_refused") >= 1


# -- limits --------------------------------------------------------------------------------------

def test_message_over_the_size_limit_closes_1009(sidecar):
    client = RawClient(sidecar.port, "/big")
    client.send(BytesMessage(data=b"b" * 70000))
    events, _ = client.read_events(3, stop=lambda e: isinstance(e, CloseConnection))
    assert close_codes(events) == [1009]
    client.close()


def test_oversized_request_head_gets_431(sidecar):
    response = raw_request(sidecar.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 40000 + b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 431 ")


def test_slow_handshake_is_cut_off(sidecar):
    started = time.monotonic()
    response = raw_request(sidecar.port, b"GET /slowloris HTTP/1.1\r\nHost: x\r\n", read_timeout=10)
    assert response.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 4
    started = time.monotonic()
    assert raw_request(sidecar.port, b"", read_timeout=10) == b""  # silent socket: closed too
    assert time.monotonic() - started < 4


def test_slow_reader_is_closed_and_counted(sidecar):
    before = sidecar.metric("wsgi_channels_sidecar_slow_closed_total")
    client = RawClient(sidecar.port, "/flood", rcvbuf=4096)
    client.send(TextMessage(data="flood 20000"))  # ~20 MB back (more than kernel buffers), never read
    assert wait_for(lambda: sidecar.metric("wsgi_channels_sidecar_slow_closed_total") > before, timeout=10)
    _, closed = client.read_events(5)
    assert closed
    client.close()


def test_full_receive_channel_closes_1013(sidecar):
    client = RawClient(sidecar.port, "/firehose")
    assert client.accepted
    blocker = connect(sidecar, "/blocker")
    blocker.send("slowpoke 2")  # the only consumer sleeps; websocket.receive (capacity 100) fills up
    time.sleep(0.2)
    for i in range(150):
        client.send(TextMessage(data=f"n{i}"))
    events, _ = client.read_events(5, stop=lambda e: isinstance(e, CloseConnection))
    assert 1013 in close_codes(events)
    client.close()
    blocker.close()
    assert sidecar.metric("wsgi_channels_sidecar_closes_total", code="1013") >= 1


def test_full_connect_channel_answers_503(sidecar):
    settle(sidecar)
    blocker = connect(sidecar, "/blocker2")
    blocker.send("slowpoke 2")
    time.sleep(0.2)
    statuses = []
    clients = []
    for _ in range(8):  # websocket.connect holds 5
        c = RawClient(sidecar.port, "/crowd")
        clients.append(c)
        statuses.append(c.status)
    assert 503 in statuses
    for c in clients:
        c.close()
    blocker.close()


# -- HTTP mode -----------------------------------------------------------------------------------

def test_http_request_keep_alive_and_client_address(sidecar):
    settle(sidecar)
    with requests.Session() as s:
        first = s.get(f"{sidecar.url}/hello?x=1", timeout=5).json()
        second = s.get(f"{sidecar.url}/again", timeout=5).json()
    assert first["path"] == "/hello" and first["query_string"] == "x=1" and first["method"] == "GET"
    assert first["client"] == second["client"]  # same TCP connection: keep-alive
    # X-Forwarded-For is ignored without --proxy-headers.
    info = requests.get(f"{sidecar.url}/who", headers={"X-Forwarded-For": "6.6.6.6"}, timeout=5).json()
    assert info["client"][0] == "127.0.0.1"


def test_reply_channels_are_unguessable(sidecar):
    """Every connection and every HTTP request gets its own reply channel: the sidecar's
    process prefix plus a random suffix, so one channel name tells nothing about another's."""
    settle(sidecar)
    names = []
    with requests.Session() as s:  # keep-alive: a new reply channel per request all the same
        names += [s.get(f"{sidecar.url}/who", timeout=5).json()["reply_channel"] for _ in range(10)]
    names += [requests.get(f"{sidecar.url}/who", timeout=5).json()["reply_channel"] for _ in range(5)]
    for _ in range(5):
        ws = connect(sidecar, "/echo")
        ws.send("whoami")
        names.append(json.loads(ws.recv())["reply_channel"])
        ws.close()
    prefixes = {name[: name.index("!") + 1] for name in names}
    assert len(prefixes) == 1 and next(iter(prefixes)).startswith("sidecar.")
    suffixes = [name.split("!", 1)[1] for name in names]
    assert len(set(suffixes)) == len(suffixes)
    assert all(len(s) >= 12 and re.fullmatch(r"[A-Za-z0-9_-]+", s) for s in suffixes), suffixes
    # 20 draws of 72 random bits: no two share their first three characters, as counters would.
    assert len({s[:3] for s in suffixes}) > 15, suffixes


def test_http_pipelined_requests_are_answered_in_order(sidecar):
    """Three requests in one write (HTTP/1.1 pipelining): three responses, in request order,
    on the one connection, which the last request's ``Connection: close`` then ends."""
    import h11

    requests_bytes = (b"GET /hello?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                      b"GET /again?n=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sent = [("GET", "/hello?n=1", b""), ("POST", "/echo-body", b"hello"), ("GET", "/again?n=3", b"")]
    responses: list = []
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
        s.sendall(requests_bytes)
        leftover = b""
        for method, target, body in sent:
            # h11 parses a response only for a request it sent: one client parser per exchange,
            # handing the bytes after each response to the next.
            client = h11.Connection(h11.CLIENT)
            client.send(h11.Request(method=method, target=target,
                                    headers=[("host", "x"), ("content-length", str(len(body)))]))
            if body:
                client.send(h11.Data(data=body))
            client.send(h11.EndOfMessage())
            if leftover:
                client.receive_data(leftover)  # (b"" would mean the server closed)
            status, content = None, b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(s.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    content += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            responses.append((status, content))
            leftover = client.trailing_data[0]
        assert leftover == b"" and s.recv(1) == b""  # closed after the third, as it asked
    assert [status for status, _ in responses] == [200, 200, 200]
    first, second, third = (body for _, body in responses)
    assert json.loads(first)["path"] == "/hello" and json.loads(first)["query_string"] == "n=1"
    assert second == b"hello"
    assert json.loads(third)["path"] == "/again" and json.loads(third)["query_string"] == "n=3"


def test_http_uploads_small_and_large(sidecar):
    for size in (10, 200_000, 3_000_000):
        body = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
        r = requests.post(f"{sidecar.url}/echo-body", data=body, timeout=10)
        assert r.status_code == 200 and r.headers["x-body-length"] == str(size)
        assert r.content == body


def test_http_expect_100_continue(sidecar):
    body = b"u" * 5000
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=5) as s:
        s.sendall(b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 100 ")
        s.sendall(body)
        response = b""
        while not response.endswith(body):
            chunk = s.recv(65536)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200 ")


def test_http_chunked_upload_streams_through_body_channel(sidecar):
    def gen():
        for _ in range(20):
            yield b"c" * 10000

    r = requests.post(f"{sidecar.url}/echo-body", data=gen(), timeout=10)
    assert r.status_code == 200 and len(r.content) == 200000


def test_http_streaming_response(sidecar):
    r = requests.get(f"{sidecar.url}/stream", stream=True, timeout=5)
    assert r.headers.get("transfer-encoding") == "chunked"
    assert b"".join(r.iter_content(None)) == b"one,two,three"


def test_http_timeout_is_504(sidecar):
    started = time.monotonic()
    r = requests.get(f"{sidecar.url}/never", timeout=10)
    assert r.status_code == 504 and 1.4 <= time.monotonic() - started < 5


def test_http_full_request_channel_is_503(sidecar):
    settle(sidecar)
    results = []

    def hit():
        try:
            results.append(requests.get(f"{sidecar.url}/plain", timeout=10).status_code)
        except requests.RequestException as e:
            results.append(repr(e))

    blocker = threading.Thread(target=lambda: requests.get(f"{sidecar.url}/slowpoke?1.5", timeout=10))
    blocker.start()
    time.sleep(0.3)
    threads = [threading.Thread(target=hit) for _ in range(10)]  # http.request holds 5
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    blocker.join(10)
    assert 503 in results and 200 in results, results


def test_health_and_metrics(sidecar):
    assert requests.get(f"{sidecar.url}/_health", timeout=5).text == "ok\n"
    text = sidecar.metrics()
    for name in ("wsgi_channels_sidecar_open_connections", "wsgi_channels_sidecar_frames_received_total",
                 "wsgi_channels_sidecar_frames_sent_total", "wsgi_channels_sidecar_layer_errors_total",
                 "wsgi_channels_sidecar_handshakes_total", "wsgi_channels_sidecar_slow_closed_total"):
        assert name in text
    assert sidecar.metric("wsgi_channels_sidecar_handshakes_total", outcome="accepted") >= 1


# -- other configurations ------------------------------------------------------------------------

def test_http_off_static_files_connection_limit_and_pings(tmp_path):
    h = Harness(tmp_path, "--max-connections", "3", "--ping-interval", "0.3", "--ping-timeout", "0.6",
                "--proxy-headers").start()
    try:
        assert requests.get(f"{h.url}/anything", timeout=5).status_code == 404
        assert requests.get(f"{h.url}/_health", timeout=5).status_code == 200
        js = requests.get(f"{h.url}/_wsgi_channels/static/channels.js", timeout=5)
        assert js.status_code == 200 and "javascript" in js.headers["content-type"] and len(js.content) > 100
        assert requests.get(f"{h.url}/_wsgi_channels/static/../config.py", timeout=5).status_code == 404

        # A live client answers pings and stays; a dead one (never answers) is closed.
        live = connect(h, "/live")
        dead = RawClient(h.port, "/dead")
        third = RawClient(h.port, "/third")
        # Connection limit: a fourth connection gets 503.
        assert raw_request(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        live.settimeout(0.2)
        seen_pings = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                opcode, _ = live.recv_data(control_frame=True)  # answers pings itself
                seen_pings += opcode == websocket.ABNF.OPCODE_PING
            except websocket.WebSocketTimeoutException:
                pass
        events, closed = dead.read_events(2.0)
        assert pings(events) and closed
        assert seen_pings >= 2
        live.settimeout(5)
        live.send("still here")
        assert live.recv() == "still here"
        assert h.metric("wsgi_channels_sidecar_dead_closed_total") >= 1
        live.close()
        third.close()
        dead.close()
    finally:
        h.stop()


def test_proxy_headers_and_access_log(tmp_path):
    access = tmp_path / "access.log"
    unix_path = str(tmp_path / "sidecar.sock")
    h = Harness(tmp_path, "--http", "layer", "--proxy-headers", "--access-log", str(access), "--root-path", "/app",
                "--bind", f"unix:{unix_path}", admin=False).start()
    try:
        info = requests.get(f"{h.url}/who", headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3",
                                                     "X-Forwarded-Proto": "https"}, timeout=5).json()
        assert info["client"][0] == "10.1.2.3" and info["scheme"] == "https" and info["root_path"] == "/app"
        with socket.socket(socket.AF_UNIX) as s:  # the same server on a Unix socket
            s.settimeout(5)
            s.connect(unix_path)
            s.sendall(b"GET /_health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
        ws = connect(h, "/logged")
        ws.close()
        assert wait_for(lambda: "WSDISCONNECT /logged" in access.read_text())
        text = access.read_text()
        assert '"GET /who" 200' in text and "WSCONNECT /logged" in text
        assert "WSCONNECT" not in h.log()  # the access log goes to its file only
    finally:
        h.stop()
    assert not os.path.exists(unix_path), "a clean stop removes its Unix socket file"


def test_sigterm_drains(tmp_path):
    h = Harness(tmp_path, "--http", "layer", "--grace-period", "4", admin=False).start()
    try:
        client = RawClient(h.port, "/draining")
        results = []
        t = threading.Thread(target=lambda: results.append(requests.get(f"{h.url}/slow-reply?1.5", timeout=10)))
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        h.proc.send_signal(signal.SIGTERM)
        events, _ = client.read_events(3, stop=lambda e: isinstance(e, CloseConnection))
        assert close_codes(events) == [1001]
        client.send(events[-1].response())
        # New connections are refused while draining (or the listener is already closed).
        try:
            refused = raw_request(h.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=2)
            assert refused == b"" or refused.startswith(b"HTTP/1.1 503 ")
        except ConnectionRefusedError:
            pass
        t.join(10)
        assert results and results[0].status_code == 200 and results[0].content == b"late"
        h.proc.proc.wait(10)
        assert h.proc.proc.returncode == 0
        assert time.monotonic() - started < 6
    finally:
        h.stop()
