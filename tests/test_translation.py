"""The sans-IO translation rules (CONTRACT.md sections 2 and 3), unit and property tests."""
from __future__ import annotations

import io
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgi_channels.exceptions import InvalidMessage
from wsgi_channels.serialization import decode, encode
from wsgi_channels.protocol.translation import (
    InvalidRequest,
    ResponseEncoder,
    build_request_message,
    encode_response_headers,
    environ_to_request_message,
    parse_status,
    request_message_to_environ,
    split_target,
    validate_body_chunk,
    validate_request_message,
    validate_response_message,
    validate_websocket_send,
)


def msg(**over):
    base = dict(reply_channel="http.response!abc", method="GET", target=b"/", headers=[(b"Host", b"example.com")],
                http_version="1.1")
    base.update(over)
    return build_request_message(**base)


# -- request target -------------------------------------------------------------------------

@pytest.mark.parametrize("target,path,query", [
    (b"/", "/", b""),
    (b"/a/b?x=1&y=2", "/a/b", b"x=1&y=2"),
    (b"/caf%C3%A9/%E2%9C%93", "/café/✓", b""),
    (b"/a%2Fb", "/a/b", b""),            # decoded like every WSGI server: PATH_INFO is decoded
    (b"/a?q=%20%2F", "/a", b"q=%20%2F"),  # the query string stays raw
    (b"/a?", "/a", b""),
    (b"/a?b?c", "/a", b"b?c"),
    (b"/a#frag", "/a", b""),
    (b"http://example.com/x/y?z=1", "/x/y", b"z=1"),
    (b"HTTPS://example.com:8443?z", "/", b"z"),
    (b"*", "*", b""),
    (b"/caf\xc3\xa9", "/café", b""),      # raw UTF-8 (some clients) is accepted too
])
def test_split_target(target, path, query):
    assert split_target(target) == (path, query)


@pytest.mark.parametrize("target,words", [
    (b"", "empty"),
    (b"/a b", "space or control"),
    (b"/a\x00", "space or control"),
    (b"example.com:443", "neither origin-form"),
    (b"/%FF%FE", "not UTF-8"),
    (b"/\xff", "not UTF-8"),
    (b"/a%00b", "NUL"),                  # never a NUL in PATH_INFO
    (b"http://h/%00", "NUL"),
])
def test_split_target_rejects(target, words):
    with pytest.raises(InvalidRequest, match=words) as info:
        split_target(target)
    assert info.value.status == 400
    assert isinstance(info.value, ValueError)


def test_split_target_needs_bytes():
    with pytest.raises(InvalidRequest, match="must be bytes"):
        split_target("/str")  # type: ignore[arg-type]


# -- building and validating http.request -----------------------------------------------------

def test_build_request_message_shape():
    m = build_request_message(
        reply_channel="http.response!x", method=b"post", target=b"/app/p?q=1",
        headers=[(b"Host", b"h"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Content-Type", b"text/plain")],
        http_version="1.1", scheme="https", client=("10.0.0.1", 5000), server=["h", 443], root_path="/app",
        body=b"data", body_channel="http.request.body?xyz")
    assert m == {
        "reply_channel": "http.response!x", "http_version": "1.1", "method": "POST", "scheme": "https",
        "path": "/app/p", "query_string": b"q=1", "root_path": "/app",
        "headers": [[b"host", b"h"], [b"x-a", b"1"], [b"x-a", b"2"], [b"content-type", b"text/plain"]],
        "body": b"data", "body_channel": "http.request.body?xyz", "client": ["10.0.0.1", 5000],
        "server": ["h", 443],
    }
    assert decode(encode(m)) == m  # it is a valid layer message as is


@pytest.mark.parametrize("bad,words", [
    ({"headers": [(b"a",)]}, r"headers\[0\] must be a \[name, value\]"),
    ({"headers": [("a", b"b")]}, "must be bytes"),
    ({"client": ["h"]}, r"message\['client'\]"),
    ({"server": [1, 2]}, r"message\['server'\]"),
    ({"http_version": "3"}, "http_version"),
])
def test_build_request_message_bad_arguments(bad, words):
    with pytest.raises(InvalidMessage, match=words):
        msg(**bad)


def test_build_request_message_methods():
    for raw, method in [(b"get", "GET"), (b"M-SEARCH", "M-SEARCH"), ("VERSION-CONTROL", "VERSION-CONTROL")]:
        assert msg(method=raw)["method"] == method
    for raw in [b"G.T", b"X_1", b"BREW1", b"", "G\u00c9T"]:
        with pytest.raises(InvalidRequest, match="request method"):  # the server answers 400
            msg(method=raw)


def test_validate_request_message_names_the_key():
    good = dict(msg())
    assert validate_request_message(good) is good
    cases = [
        ("reply_channel", None, "reply_channel"), ("method", "get", "upper-case"), ("method", 5, "method"),
        ("path", b"/", r"message\['path'\]"), ("http_version", "1.2", "http_version"),
        ("headers", "x", "headers"), ("headers", [[b"a", "b"]], r"headers'\]\[0\]"),
        ("query_string", "q=1", "query_string"), ("body", "text", "body"), ("body_channel", 3, "body_channel"),
        ("scheme", 1, "scheme"), ("client", "1.2.3.4", "client"),
    ]
    for key, value, words in cases:
        bad = dict(good)
        if value is None:
            del bad[key]
        else:
            bad[key] = value
        with pytest.raises(InvalidMessage, match=words):
            validate_request_message(bad)
    with pytest.raises(InvalidMessage, match="must be a dict"):
        validate_request_message(["not", "a", "dict"])
    minimal = {"reply_channel": "r!x", "method": "GET", "http_version": "2", "path": "/", "headers": []}
    assert validate_request_message(minimal) is minimal


def test_validate_body_chunk():
    assert validate_body_chunk({"content": b"x", "more_content": True})
    for bad in ({"content": "x"}, {"more_content": 1}, {"closed": "yes"}, "x"):
        with pytest.raises(InvalidMessage):
            validate_body_chunk(bad)


# -- message -> environ ---------------------------------------------------------------------

def test_environ_mapping():
    m = build_request_message(
        reply_channel="r!x", method="PUT", target=b"/app/caf%C3%A9?a=1&b=%C3%A9",
        headers=[(b"Host", b"example.com:8080"), (b"Content-Type", b"application/json"),
                 (b"Content-Length", b"2"), (b"X-Multi", b"1"), (b"X-Multi", b"2"),
                 (b"Cookie", b"a=1"), (b"Cookie", b"b=2"), (b"X_Smuggled", b"evil"), (b"x-latin", b"\xe9")],
        http_version="2", scheme="https", client=["10.1.2.3", 4321], server=["srv", 8443], root_path="/app/")
    body = io.BytesIO(b"{}")
    env = request_message_to_environ(m, body)
    assert env["REQUEST_METHOD"] == "PUT"
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/café".encode().decode("latin-1")
    assert env["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert env["CONTENT_TYPE"] == "application/json"
    assert env["CONTENT_LENGTH"] == "2"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_X_MULTI"] == "1,2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert env["HTTP_X_LATIN"] == "é"
    assert "HTTP_X_SMUGGLED" not in env
    assert env["SERVER_NAME"] == "srv" and env["SERVER_PORT"] == "8443"
    assert env["REMOTE_ADDR"] == "10.1.2.3" and env["REMOTE_PORT"] == "4321"
    assert env["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert env["wsgi.url_scheme"] == "https"
    assert env["wsgi.input"] is body
    assert env["wsgi.version"] == (1, 0)
    assert env["wsgi.input_terminated"] is True
    assert all(type(v) is str for k, v in env.items() if k.isupper())


@pytest.mark.parametrize("path,root,script,info", [
    ("/app/x", "/app", "/app", "/x"),
    ("/app", "/app", "/app", ""),
    ("/application", "/app", "/app", "/application"),  # not a segment boundary: proxy stripped already
    ("/x", "/app", "/app", "/x"),
    ("/x", "", "", "/x"),
    ("/x", "/", "", "/x"),
])
def test_root_path_split(path, root, script, info):
    m = {"reply_channel": "r!x", "method": "GET", "http_version": "1.1", "path": path, "root_path": root,
         "headers": []}
    env = request_message_to_environ(m, io.BytesIO())
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script, info)


@pytest.mark.parametrize("host,scheme,name,port", [
    (b"example.com", "http", "example.com", "80"),
    (b"example.com", "https", "example.com", "443"),
    (b"example.com:81", "http", "example.com", "81"),
    (b"[::1]:9000", "http", "[::1]", "9000"),
    (None, "http", "localhost", "80"),
])
def test_server_from_host_when_no_server(host, scheme, name, port):
    headers = [[b"host", host]] if host else []
    m = {"reply_channel": "r!x", "method": "GET", "http_version": "1.1", "path": "/", "headers": headers,
         "scheme": scheme, "server": None}
    env = request_message_to_environ(m, io.BytesIO())
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)
    assert "REMOTE_ADDR" not in env


def test_environ_passes_wsgiref_validator():
    from wsgiref.validate import validator

    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    m = msg(target=b"/p?q", headers=[(b"host", b"h"), (b"content-length", b"3")], body=b"abc",
            client=["1.2.3.4", 1], server=["h", 80])
    env = request_message_to_environ(m, io.BytesIO(b"abc"))
    result = validator(app)(env, lambda s, h, e=None: None)
    list(result)
    result.close()
    assert seen["PATH_INFO"] == "/p"


# -- environ -> message ---------------------------------------------------------------------

def test_environ_to_request_message():
    from werkzeug.test import EnvironBuilder

    env = EnvironBuilder(path="/caf%C3%A9", base_url="https://example.com:8443/root", query_string="a=1",
                         method="POST", data=b"xyz", headers={"X-Thing": "v", "Cookie": "a=1"},
                         content_type="text/plain").get_environ()
    env["REMOTE_ADDR"], env["REMOTE_PORT"] = "10.0.0.9", "5555"
    m = environ_to_request_message(env, "http.response!q", body=b"xyz")
    assert m["path"] == "/root/café" and m["root_path"] == "/root"
    assert m["query_string"] == b"a=1"
    assert m["method"] == "POST" and m["scheme"] == "https"
    assert [b"x-thing", b"v"] in m["headers"] and [b"cookie", b"a=1"] in m["headers"]
    assert [b"content-type", b"text/plain"] in m["headers"] and [b"content-length", b"3"] in m["headers"]
    assert m["client"] == ["10.0.0.9", 5555] and m["server"] == ["example.com", 8443]
    assert m["body"] == b"xyz"


def test_environ_to_request_message_rejects_non_utf8_path():
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": "\xff", "SERVER_PROTOCOL": "HTTP/1.1"}
    with pytest.raises(InvalidRequest, match="PATH_INFO"):
        environ_to_request_message(env, "r!x")
    with pytest.raises(InvalidRequest, match="SERVER_PROTOCOL"):
        environ_to_request_message({"SERVER_PROTOCOL": "SPDY/3"}, "r!x")


# -- property tests ---------------------------------------------------------------------------

# NUL is excluded: a %00 in a path is refused (test_split_target_rejects).
segment = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/?#%\x00"), min_size=1,
                  max_size=8)
paths = st.lists(segment, min_size=0, max_size=4).map(lambda parts: "/" + "/".join(parts))
header_names = st.from_regex(rb"\A[a-z][a-z0-9-]{0,15}\Z").filter(lambda n: n not in (b"content-type",
                                                                                       b"content-length"))
header_values = st.binary(max_size=20).filter(lambda v: b"\r" not in v and b"\n" not in v)
queries = st.binary(max_size=30).map(lambda b: quote(b, safe="=&+").encode("ascii"))


@settings(max_examples=200, deadline=None)
@given(path=paths, query=queries, root=st.sampled_from(["", "/app", "/a/b"]))
def test_property_target_round_trip(path, query, root):
    full = (root + path) if path != "/" or not root else root + "/"
    target = quote(full.encode("utf-8"), safe="/").encode("ascii") + (b"?" + query if query else b"")
    m = msg(target=target, root_path=root)
    assert m["path"] == full and m["query_string"] == query
    env = request_message_to_environ(m, io.BytesIO())
    assert (env["SCRIPT_NAME"] + env["PATH_INFO"]).encode("latin-1").decode("utf-8") == full
    assert env["QUERY_STRING"].encode("latin-1") == query
    back = environ_to_request_message(env, "r!x")
    assert back["path"] == full and back["query_string"] == query


@settings(max_examples=200, deadline=None)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=8))
def test_property_headers_kept_and_joined(headers):
    m = msg(headers=headers)
    assert m["headers"] == [[n, v] for n, v in headers]  # order and duplicates kept
    env = request_message_to_environ(m, io.BytesIO())
    for name in {n for n, _ in headers}:
        values = [v.decode("latin-1") for n, v in headers if n == name]
        key = "HTTP_" + name.decode().upper().replace("-", "_")
        sep = "; " if name == b"cookie" else ","
        assert env[key] == sep.join(values)


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.binary(max_size=40), max_size=12), chunk=st.integers(1, 16),
       declare=st.booleans())
def test_property_response_encoder(blocks, chunk, declare):
    body = b"".join(blocks)
    headers = [[b"content-length", str(len(body)).encode()]] if declare else []
    enc = ResponseEncoder(200, headers, chunk_size=chunk)
    out = []
    for b in blocks:
        out += enc.feed(b)
    out += enc.finish()
    assert out[0]["status"] == 200 and out[0]["headers"] == headers
    assert all("status" not in m for m in out[1:])
    assert b"".join(m["content"] for m in out) == body
    assert all(len(m["content"]) <= chunk for m in out)
    assert [m["more_content"] for m in out] == [True] * (len(out) - 1) + [False]
    if body:
        assert all(m["content"] for m in out), "no empty message once there is a body"
    else:
        assert len(out) == 1
    for i, m in enumerate(out):
        validate_response_message(m, first=i == 0)


def test_response_encoder_content_length_ends_early_and_drops_overflow():
    enc = ResponseEncoder(200, [[b"Content-Length", b"4"]], chunk_size=100)
    assert enc.feed(b"ab") == []
    final = enc.feed(b"cdEXTRA")
    assert final == [{"status": 200, "headers": [[b"Content-Length", b"4"]], "content": b"ab", "more_content": True},
                     {"content": b"cd", "more_content": False}]
    assert enc.feed(b"more") == [] and enc.finish() == []
    assert enc.overflow == 9


def test_response_encoder_streams_one_block_behind():
    enc = ResponseEncoder(200, [], chunk_size=100)
    assert enc.feed(b"one") == []
    assert enc.feed(b"two") == [{"status": 200, "headers": [], "content": b"one", "more_content": True}]
    assert enc.feed(b"") == []
    assert enc.finish() == [{"content": b"two", "more_content": False}]


# -- responses ------------------------------------------------------------------------------

def test_validate_response_message():
    validate_response_message({"status": 200, "headers": [[b"a", b"b"]], "content": b"", "more_content": False},
                              first=True)
    validate_response_message({"content": b"x"}, first=False)
    cases = [
        ({"content": b""}, True, "status'] is missing"),
        ({"status": "200"}, True, "int from 200"),
        ({"status": 101}, True, "int from 200"),
        ({"status": True}, True, "int from 200"),
        ({"status": 200, "headers": [["a", b"b"]]}, True, r"headers'\]\[0\]"),
        ({"status": 200, "headers": [[b"a b", b"c"]]}, True, "not an HTTP token"),
        ({"status": 200, "headers": [[b"a", b"c\r\nx: y"]]}, True, "CR, LF or NUL"),
        ({"status": 200, "headers": "x"}, True, "headers"),
        ({"status": 200}, False, "only allowed in the first"),
        ({"headers": []}, False, "only allowed in the first"),
        ({"content": "text"}, False, "content"),
        ({"more_content": 1}, False, "more_content"),
        ({"status": 200, "body": b""}, True, "unknown key"),
        ("x", True, "must be a dict"),
    ]
    for message, first, words in cases:
        with pytest.raises(InvalidMessage, match=words):
            validate_response_message(message, first=first)


def test_parse_status_and_headers():
    assert parse_status("200 OK") == 200
    assert parse_status("404") == 404
    assert parse_status("599 Custom Reason") == 599
    for bad in ("OK", "20 OK", "200OK", 200, "100 Continue", "200 OK\r\nX: y"):
        with pytest.raises(ValueError):
            parse_status(bad)
    assert encode_response_headers([("Content-Type", "text/html"), ("X", "é")]) == [
        [b"Content-Type", b"text/html"], [b"X", b"\xe9"]]
    for bad in ((("A", "b"),), [("A",)], [("A", b"b")], [("A B", "c")], [("A", "b\nc")], [("A", "✓")]):
        with pytest.raises(ValueError):
            encode_response_headers(bad)  # type: ignore[arg-type]
    # Django's Set-Cookie values carry a leading space: surrounding whitespace is not part of a value.
    assert encode_response_headers([("Set-Cookie", " csrftoken=abc; Path=/"), ("X", "\tv \t")]) == [
        [b"Set-Cookie", b"csrftoken=abc; Path=/"], [b"X", b"v"]]


# -- websocket ------------------------------------------------------------------------------

def test_validate_websocket_send():
    for good in ({"text": "hi"}, {"bytes": b"\x00"}, {"close": True}, {"close": 4001}, {"accept": True},
                 {"accept": True, "subprotocol": "chat"}, {"text": "bye", "close": 1000},
                 {"accept": False}, {"text": "x", "bytes": None}):
        assert validate_websocket_send(good) is good
    cases = [
        ({"text": "a", "bytes": b"b"}, "both 'text' and 'bytes'"),
        ({"text": b"a"}, "text"),
        ({"bytes": "a"}, "bytes"),
        ({"close": 1005}, "close code"),
        ({"close": 99999}, "close code"),
        ({"close": "yes"}, "close"),
        ({"accept": 1}, "accept"),
        ({"accept": True, "subprotocol": 5}, "subprotocol"),
        ({"txt": "typo"}, "unknown key"),
        ({}, "does nothing"),
        ({"close": False}, "does nothing"),
        ([], "must be a dict"),
    ]
    for message, words in cases:
        with pytest.raises(InvalidMessage, match=words):
            validate_websocket_send(message)


def test_translation_is_strictly_typed():
    """The sans-IO modules pass ``mypy --strict`` (STYLE.md 5)."""
    import subprocess
    import sys
    from pathlib import Path

    import tempfile

    root = Path(__file__).parent.parent
    cache = Path(tempfile.gettempdir()) / "wsgi_channels-mypy-cache"
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
                           "--cache-dir", str(cache), "wsgi_channels/protocol/translation.py",
                           "wsgi_channels/protocol/responses.py", "wsgi_channels/tokens.py"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unix_socket_server_without_port():
    m = {"reply_channel": "r!x", "method": "GET", "http_version": "1.1", "path": "/", "headers": [],
         "scheme": "https", "server": ["/run/app.sock", None], "client": ["", None]}
    env = request_message_to_environ(m, io.BytesIO())
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("/run/app.sock", "443")
    assert "REMOTE_PORT" not in env
