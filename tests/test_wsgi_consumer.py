"""WsgiConsumer: any PEP 3333 app behind http.request, checked against werkzeug's test client.

Differential tests send the same request through ``werkzeug.test.Client(app)``
and through the layer + consumer (``wsgi_channels.testing.Client``, the code
path the worker uses) and demand the same status, headers and body.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote
from wsgiref.validate import validator

import pytest
from werkzeug.test import Client as WerkzeugClient

from wsgi_channels import route
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.testing import Client
from wsgi_channels.protocol.translation import validate_response_message
from wsgi_channels.consumers.wsgi import WsgiConsumer

from apps import bare_app, flask_app, pyramid_app

TESTS = Path(__file__).parent


def channel_client(app, layer=None, **options):
    return Client([route("http.request", WsgiConsumer(app, **options))], layer or MemoryChannelLayer())


def read_all(client, reply):
    """Every message on ``reply``, each checked against the contract."""
    messages = client.drain(reply)
    for i, m in enumerate(messages):
        validate_response_message(m, first=i == 0)
    return messages


def norm(headers):
    return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in headers]


def differential(app, method, path, *, data=b"", headers=None, root="", content_type=None, query=""):
    """Run one request both ways; return (werkzeug (status, headers, body), ours (status, headers, body))."""
    headers = list(headers or [])
    wz = WerkzeugClient(app, use_cookies=False)
    base = "http://testserver" + root
    resp = wz.open(quote(path), base_url=base, method=method, data=data, headers=headers,
                   content_type=content_type, query_string=query,
                   environ_overrides={"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000"})
    expected = (resp.status_code, [(k.lower(), v.strip()) for k, v in resp.headers.items()], resp.get_data())
    resp.close()
    ours_headers = list(headers)
    if content_type:
        ours_headers.append(("Content-Type", content_type))
    target = root + path + ("?" + query if query else "")
    status, hdrs, body = channel_client(app).http(method, target, ours_headers, data, root_path=root)
    return expected, (status, norm(hdrs), body)


FLASK_CASES = [
    ("GET", "/", {}),
    ("GET", "/cookies", {}),
    ("GET", "/read-cookies", {"headers": [("Cookie", "a=1; b=two")]}),
    ("GET", "/redirect", {}),
    ("GET", "/target", {"query": "q=%C3%A9&x=1"}),
    ("GET", "/stream/50", {}),
    ("GET", "/big/700000", {}),
    ("GET", "/unicode/café ✓", {}),
    ("GET", "/where", {"root": "/mount", "query": "a=1&a=2"}),
    ("GET", "/where", {}),
    ("GET", "/headers", {"headers": [("X-Custom", "v1"), ("Accept-Language", "fr")]}),
    ("POST", "/form", {"data": b"a=1&b=%C3%A9", "content_type": "application/x-www-form-urlencoded"}),
    ("POST", "/json", {"data": b'{"k": [1, 2]}', "content_type": "application/json"}),
    ("PUT", "/upload", {"data": bytes(range(256)) * 300, "content_type": "application/octet-stream"}),
    ("GET", "/nope", {}),
    ("DELETE", "/", {}),
]


@pytest.mark.parametrize("method,path,kw", FLASK_CASES, ids=[f"{m} {p}" for m, p, _ in FLASK_CASES])
def test_flask_differential(method, path, kw):
    expected, ours = differential(flask_app.app, method, path, **kw)
    assert ours == expected


def test_flask_multipart_upload_differential():
    payload = bytes(range(256)) * 200
    boundary = "----wsgichannelsboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalüe\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
    expected, ours = differential(flask_app.app, "POST", "/upload", data=body,
                                  content_type=f"multipart/form-data; boundary={boundary}")
    assert ours == expected
    assert json.loads(ours[2]) == {"filename": "f.bin", "size": len(payload), "field": "valüe",
                                   "sha256": hashlib.sha256(payload).hexdigest()}


def test_flask_cookies_and_redirect_details():
    status, headers, body = channel_client(flask_app.app).http("GET", "/cookies")
    cookies = [v for n, v in norm(headers) if n == "set-cookie"]
    assert len(cookies) == 2 and cookies[0].startswith("a=1") and "HttpOnly" in cookies[1]
    status, headers, _ = channel_client(flask_app.app).http("GET", "/mount/redirect", root_path="/mount")
    assert status == 302 and dict(norm(headers))["location"] == "/mount/target?q=1"


PYRAMID_CASES = [
    ("GET", "/", {}),
    ("GET", "/cookies", {}),
    ("GET", "/go", {}),
    ("GET", "/go", {"root": "/pyr"}),
    ("POST", "/upload", {"data": b"z" * 100000, "content_type": "application/octet-stream"}),
    ("GET", "/name/ünïcödé", {"root": "/pyr"}),
    ("GET", "/missing", {}),
]


@pytest.mark.parametrize("method,path,kw", PYRAMID_CASES, ids=[f"{m} {p}" for m, p, _ in PYRAMID_CASES])
def test_pyramid_differential(method, path, kw):
    expected, ours = differential(pyramid_app.app, method, path, **kw)
    assert ours == expected


def test_django_differential_in_subprocess():
    """Plain Django (settings configured once per process, so in a child process)."""
    script = r"""
import json, sys
from urllib.parse import quote
from werkzeug.test import Client as WZ
from apps.django_app import get_app
from wsgi_channels import route
from wsgi_channels.layers.memory import MemoryChannelLayer
from wsgi_channels.testing import Client
from wsgi_channels.consumers.wsgi import WsgiConsumer
app = get_app()
cases = [("GET", "/", b"", None, ""), ("GET", "/cookies", b"", None, ""), ("GET", "/go", b"", None, ""),
         ("POST", "/upload", b"q" * 50000, "application/octet-stream", ""), ("GET", "/stream", b"", None, ""),
         ("GET", "/where/caf\u00e9", b"", None, "/dj"), ("GET", "/missing", b"", None, "")]
out = []
for method, path, data, ctype, root in cases:
    r = WZ(app).open(quote(path), base_url="http://testserver" + root, method=method, data=data,
                     content_type=ctype)
    # Whitespace around a header value is not part of it (RFC 9110 5.5): Django's " d1=1" is "d1=1".
    exp = [r.status_code, sorted([k.lower(), v.strip()] for k, v in r.headers.items()),
           r.get_data().decode("latin-1")]
    r.close()
    c = Client([route("http.request", WsgiConsumer(app))], MemoryChannelLayer())
    hdrs = [("Content-Type", ctype)] if ctype else []
    s, h, b = c.http(method, root + path, hdrs, data, root_path=root)
    got = [s, sorted([n.decode("latin-1").lower(), v.decode("latin-1")] for n, v in h), b.decode("latin-1")]
    out.append([method, path, exp, got])
print(json.dumps(out))
"""
    env = {"DJANGO_SETTINGS_MODULE": "apps.django_app", "PYTHONPATH": str(TESTS), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60,
                          cwd=TESTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == 7
    for method, path, expected, got in results:
        assert got == expected, (method, path)
    by_path = {p: got for _, p, _, got in results}
    assert sum(1 for n, _ in by_path["/cookies"][1] if n == "set-cookie") == 2
    assert json.loads(by_path["/where/café"][2])["script_name"] == "/dj"
    assert by_path["/stream"][2] == "".join(f"chunk {i}\n" for i in range(5))


# -- PEP 3333 corners with bare apps, under wsgiref.validate -----------------------------------

def bare(name, **options):
    return channel_client(validator(bare_app.APPS[name]), **options)


def test_bare_hello_and_write():
    assert bare("hello").http("GET", "/")[2] == b"hello world"
    assert bare("writer").http("GET", "/")[2] == b"written then returned"


def test_iterable_closed():
    bare_app.CLOSED.clear()
    assert bare("closing").http("GET", "/?tag1")[2] == b"abc"
    assert bare_app.CLOSED == ["tag1"]


def test_exc_info_replaces_status_before_sending():
    status, headers, body = bare("exc_info_app").http("GET", "/")
    assert status == 503 and dict(norm(headers))["retry-after"] == "5" and body == b"try later"


def test_file_wrapper_streams_in_bounded_chunks():
    client = bare("file_app", chunk_size=10000)
    message = client.http_message("GET", "/")
    client.send_and_consume("http.request", message)
    messages = read_all(client, message["reply_channel"])
    assert b"".join(m["content"] for m in messages) == bytes(range(256)) * 1000
    assert all(0 < len(m["content"]) <= 10000 for m in messages)
    assert messages[-1]["more_content"] is False and len(messages) >= 26


def test_head_sends_no_body():
    status, headers, body = channel_client(flask_app.app).http("HEAD", "/big/5000")
    assert status == 200 and body == b"" and dict(norm(headers))["content-length"] == "5000"


def test_content_length_overflow_is_cut(caplog):
    with caplog.at_level(logging.WARNING):
        assert bare_app and channel_client(bare_app.content_length_lies).http("GET", "/")[2] == b"12345"
    assert "beyond its Content-Length" in caplog.text


@pytest.mark.parametrize("app", ["no_start", "yields_str", "bad_header"])
def test_misbehaving_apps_get_500(app, caplog):
    client = channel_client(bare_app.APPS[app])
    with caplog.at_level(logging.ERROR, logger="wsgi_channels.consumers.wsgi"):
        status, _, body = client.http("GET", "/")
    assert status == 500 and body == b"Internal Server Error\n"
    assert "Traceback" in caplog.text


def test_exception_gives_500_without_leaking(caplog):
    client = channel_client(flask_app.app)
    flask_app.app.config["PROPAGATE_EXCEPTIONS"] = True
    try:
        with caplog.at_level(logging.ERROR, logger="wsgi_channels.consumers.wsgi"):
            status, _, body = client.http("GET", "/boom")
    finally:
        flask_app.app.config["PROPAGATE_EXCEPTIONS"] = None
    assert status == 500 and b"secret" not in body
    assert "secret detail that must not leak" in caplog.text and "Traceback" in caplog.text
    assert client.http("GET", "/")[0] == 200  # the consumer goes on


def test_failure_after_start_abandons_response(caplog):
    bare_app.CLOSED.clear()
    client = channel_client(bare_app.fails_midway, chunk_size=5)
    message = client.http_message("GET", "/")
    with caplog.at_level(logging.WARNING):
        client.send_and_consume("http.request", message)
    messages = read_all(client, message["reply_channel"])
    assert messages and all(m["more_content"] for m in messages), "never a final message: the body is truncated"
    sent = b"".join(m["content"] for m in messages)
    assert sent.startswith(b"x" * 10) and (b"x" * 10 + b"y" * 10).startswith(sent)
    assert bare_app.CLOSED == ["midway"]
    assert "abandoned" in caplog.text


def test_invalid_request_message_gets_400():
    client = channel_client(bare_app.hello)
    reply = client.new_reply_channel()
    client.send_and_consume("http.request", {"reply_channel": reply, "method": "get", "path": "/"})
    assert client.read_response(reply) == (400, [(b"content-type", b"text/plain; charset=utf-8")],
                                           b"Bad Request\n")
    client.send_and_consume("http.request", {"no": "reply channel"})  # nothing to answer, nothing raised


# -- request bodies ---------------------------------------------------------------------------

def feed_body(layer, channel, chunks, delay=0.01):
    def run():
        for chunk in chunks:
            time.sleep(delay)
            layer.send(channel, chunk)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_body_channel_streams_into_wsgi_input():
    layer = MemoryChannelLayer()
    client = channel_client(validator(bare_app.echo_lines), layer)
    body_channel = layer.new_channel("http.request.body?")
    message = client.http_message("POST", "/", body=b"first line\nsec", body_channel=body_channel)
    t = feed_body(layer, body_channel, [{"content": b"ond line\n", "more_content": True},
                                        {"content": b"third", "more_content": True},
                                        {"content": b" line\nlast", "more_content": False}])
    client.send_and_consume("http.request", message)
    t.join(5)
    status, _, body = client.read_response(message["reply_channel"])
    assert status == 200 and body == b"4:first line\nsecond line\nthird line\nlast"


def test_body_channel_with_flask_upload_no_content_length():
    layer = MemoryChannelLayer()
    client = channel_client(flask_app.app, layer)
    body_channel = layer.new_channel("http.request.body?")
    data = bytes(range(256)) * 4000
    pieces = [data[i:i + 100000] for i in range(0, len(data), 100000)]
    message = client.http_message("POST", "/upload", [("Content-Type", "application/octet-stream")],
                                  body=pieces[0], body_channel=body_channel)
    t = feed_body(layer, body_channel, [{"content": p, "more_content": i < len(pieces) - 2}
                                        for i, p in enumerate(pieces[1:])], delay=0.001)
    client.send_and_consume("http.request", message)
    t.join(5)
    status, _, body = client.read_response(message["reply_channel"])
    assert status == 200, body
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_declared_body_over_limit_is_413_without_running_app():
    calls = []

    def app(environ, start_response):
        calls.append(1)
        start_response("200 OK", [])
        return [b""]

    client = channel_client(app, max_body_size=1000)
    status, _, body = client.http("POST", "/", [("Content-Length", "1001")], b"")
    assert status == 413 and calls == []


def test_streamed_body_over_limit_is_413():
    layer = MemoryChannelLayer()
    client = channel_client(bare_app.echo_body, layer, max_body_size=1000)
    body_channel = layer.new_channel("http.request.body?")
    message = client.http_message("POST", "/", body=b"a" * 600, body_channel=body_channel)
    layer.send(body_channel, {"content": b"b" * 600, "more_content": True})
    client.send_and_consume("http.request", message)
    assert client.read_response(message["reply_channel"])[0] == 413
    client2 = channel_client(bare_app.echo_body, layer, max_body_size=1000)
    assert client2.http("POST", "/", body=b"c" * 1001)[0] == 413


def test_body_that_stops_arriving_is_408():
    layer = MemoryChannelLayer()
    client = channel_client(bare_app.echo_body, layer, body_timeout=0.3)
    body_channel = layer.new_channel("http.request.body?")
    message = client.http_message("POST", "/", body=b"start", body_channel=body_channel)
    t0 = time.monotonic()
    client.send_and_consume("http.request", message)
    assert 0.25 < time.monotonic() - t0 < 3
    assert client.read_response(message["reply_channel"])[:1] == (408,)


def test_client_that_left_gets_nothing():
    layer = MemoryChannelLayer()
    client = channel_client(bare_app.echo_body, layer)
    body_channel = layer.new_channel("http.request.body?")
    message = client.http_message("POST", "/", body=b"start", body_channel=body_channel)
    layer.send(body_channel, {"closed": True})
    client.send_and_consume("http.request", message)
    assert client.drain(message["reply_channel"]) == []


# -- reply channel deadlines ----------------------------------------------------------------

def test_full_reply_channel_is_given_up_after_deadline(caplog):
    layer = MemoryChannelLayer(channel_capacity={"http.response.test*": 2})
    bare_app.CLOSED.clear()

    def endless(environ, start_response):
        start_response("200 OK", [])
        return bare_app.Closing("endless", [b"x" * 10] * 1000)

    client = channel_client(endless, layer, chunk_size=10, send_timeout=0.3)
    message = client.http_message("GET", "/")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        client.send_and_consume("http.request", message)
    assert time.monotonic() - t0 < 3
    assert "abandoned" in caplog.text
    assert bare_app.CLOSED == ["endless"]
    assert len(client.drain(message["reply_channel"])) == 2


def test_slow_reader_within_deadline_gets_everything():
    layer = MemoryChannelLayer(channel_capacity={"http.response.test*": 2})
    client = channel_client(bare_app.file_app, layer, chunk_size=50000, send_timeout=5)
    message = client.http_message("GET", "/")
    got = []
    done = threading.Event()

    def reader():
        more = True
        while more and not done.is_set():
            ch, m = layer.receive([message["reply_channel"]], block=True, timeout=0.5)
            if ch:
                got.append(m)
                more = m.get("more_content", False)
                time.sleep(0.005)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    client.send_and_consume("http.request", message)
    t.join(5)
    done.set()
    assert b"".join(m["content"] for m in got) == bytes(range(256)) * 1000


# -- property: wsgi.input gives back exactly the body, however it is chunked and read -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from wsgi_channels.consumers.wsgi import BodyStream  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=8),
       reads=st.lists(st.one_of(st.integers(0, 700), st.just(-1), st.just("line")), min_size=1, max_size=30))
def test_property_body_stream(body, cuts, reads):
    layer = MemoryChannelLayer(capacity=1000)
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0] + points, points + [len(body)])]
    channel = layer.new_channel("http.request.body?")
    for i, piece in enumerate(pieces[1:]):
        layer.send(channel, {"content": piece, "more_content": i < len(pieces) - 2})
    stream = BodyStream(pieces[0], layer, channel if len(pieces) > 1 else None, 10**6, timeout=1.0)
    got = b""
    for r in reads:
        if r == "line":
            line = stream.readline()
            assert line.count(b"\n") <= 1 and (not line or line.endswith(b"\n") or got + line == body)
            got += line
        else:
            chunk = stream.read(r)
            assert r < 0 or len(chunk) <= r
            got += chunk
    got += stream.read()
    assert got == body
    assert stream.read(10) == b"" and stream.readline() == b""


# -- response flow control (the sidecar's __wsc_flow offer) ---------------------------------------

def _pattern_app(size):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        block = bytes(range(256)) * 64
        return (block[: min(len(block), size - i)] for i in range(0, size, len(block)))
    return app


def test_response_flow_control_keeps_at_most_a_window_unacknowledged():
    """With the server's offer, the consumer never has more than a window of the response sent
    and not acknowledged: a server acknowledging as its (slow) client reads gets it all."""
    from wsgi_channels.protocol.responses import FLOW_KEY

    layer = MemoryChannelLayer(capacity=1000)
    size, window = 1_000_000, 100_000
    client = channel_client(_pattern_app(size), layer)
    message = client.http_message("GET", "/")
    credit = layer.new_channel("http.response.credit?")
    message[FLOW_KEY] = {"channel": credit, "window": window, "timeout": 5.0}
    got, worst, granted, burst = [], [0], [0], [0]
    done = threading.Event()

    def grant():
        received = sum(len(x["content"]) for x in got)
        worst[0] = max(worst[0], received - granted[0])
        if received - granted[0] >= window // 2:
            granted[0] = received
            layer.send(credit, {"acked": received})

    def server():  # passes the response on slowly, acknowledging as the sidecar does
        time.sleep(0.5)  # the consumer runs ahead as far as it may: what waits is at most a window
        while True:
            ch, m = layer.receive([message["reply_channel"]], block=False)
            if ch is None:
                break
            got.append(m)
        burst[0] = sum(len(x["content"]) for x in got)
        grant()
        more = not got or got[-1].get("more_content", False)
        while more and not done.is_set():
            ch, m = layer.receive([message["reply_channel"]], block=True, timeout=0.5)
            if ch is None:
                continue
            got.append(m)
            more = m.get("more_content", False)
            time.sleep(0.002)
            grant()

    t = threading.Thread(target=server, daemon=True)
    t.start()
    client.send_and_consume("http.request", message)
    t.join(10)
    done.set()
    assert b"".join(m["content"] for m in got) == (bytes(range(256)) * 64 * 100)[:size]
    assert 0 < burst[0] <= window, burst[0]
    assert 0 < worst[0] <= window, worst[0]
    assert all(len(m["content"]) <= window // 2 for m in got)


def test_response_flow_control_gives_up_when_no_credit_comes(caplog):
    """A client that stopped reading: no credit within the server's timeout (plus a margin)
    abandons the response and closes the app's iterable, freeing the worker thread."""
    from wsgi_channels.protocol.responses import FLOW_KEY

    layer = MemoryChannelLayer(capacity=1000)
    bare_app.CLOSED.clear()

    def endless(environ, start_response):
        start_response("200 OK", [])
        return bare_app.Closing("endless", [b"x" * 10000] * 1000)

    client = channel_client(endless, layer)
    message = client.http_message("GET", "/")
    message[FLOW_KEY] = {"channel": layer.new_channel("http.response.credit?"), "window": 50000, "timeout": 0.3}
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        client.send_and_consume("http.request", message)
    assert time.monotonic() - t0 < 3
    assert "read nothing" in caplog.text and bare_app.CLOSED == ["endless"]
    assert sum(len(m["content"]) for m in client.drain(message["reply_channel"])) <= 50000


def test_a_malformed_flow_offer_means_no_flow_control():
    from wsgi_channels.protocol.responses import FLOW_KEY, response_flow

    assert response_flow({FLOW_KEY: {"channel": "c?x", "window": 10, "timeout": 1}}) == \
        {"channel": "c?x", "window": 10, "timeout": 1.0}
    for bad in (None, "c?x", {"channel": "c?x"}, {"channel": "cx", "window": 10, "timeout": 1},
                {"channel": "c?x", "window": True, "timeout": 1}, {"channel": "c?x", "window": 10, "timeout": 0}):
        assert response_flow({FLOW_KEY: bad}) is None, bad
    layer = MemoryChannelLayer(capacity=1000)
    client = channel_client(_pattern_app(300_000), layer)
    message = client.http_message("GET", "/")
    message[FLOW_KEY] = {"channel": "nonsense"}
    client.send_and_consume("http.request", message)  # streams as before, without waiting
    assert sum(len(m["content"]) for m in client.drain(message["reply_channel"])) == 300_000
