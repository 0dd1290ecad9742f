"""Mutation fuzzing of the real sidecar over real sockets.

``tests/test_fuzz.py`` runs atheris over the sans-IO protocol objects; this file
drives the real thing: one sidecar process (``sidecar_echo_app.py``, HTTP mode on,
the same ``ClientConnection`` code as ``wsgi-channels sidecar``) gets good requests
and handshakes mutated by hypothesis (bytes flipped, inserted, deleted, repeated,
spliced from another seed), cut into random chunks. After each input the client either half-closes (the sidecar
must then close its end promptly) or waits for an answer; whatever comes back must
start with a well-formed HTTP status line and never be a 500 or a traceback, and at the end it must still serve a good client with no
traceback in its log.
"""
from __future__ import annotations

import re
import socket
import zlib

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import faultkit as fk
from test_bad_input_protocol import echo, still_serves  # noqa: F401  - the module-scoped sidecar fixture

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _deflated(text: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


SEEDS = [
    b"GET /x?a=1&b=%C3%A9 HTTP/1.1\r\nHost: t\r\nCookie: a=1\r\n\r\n",
    b"POST /echo-body HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\nhello world",
    b"POST /echo-body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"GET /old HTTP/1.0\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    fk.handshake_request("/ws", key=KEY) + fk.frame(fk.OP_TEXT, b"hello") + fk.frame(fk.OP_BINARY, b"\x00\xff")
    + fk.close_frame(1000, b"bye"),
    fk.handshake_request("/ws", key=KEY, extra=("Sec-WebSocket-Protocol: a, b",))
    + fk.frame(fk.OP_TEXT, b"hel", fin=False) + fk.frame(0x9, b"ping") + fk.frame(0x0, b"lo")
    + fk.close_frame(None),
    fk.handshake_request("/ws", key=KEY, extra=("Sec-WebSocket-Extensions: permessage-deflate",))
    + fk.frame(fk.OP_TEXT, _deflated(b"squeeze me " * 20), rsv=4) + fk.close_frame(1001),
]

QUIET = 0.15
STATUS_LINE = re.compile(rb"^HTTP/1\.[01] [1-5]\d\d ")


@st.composite
def mutated(draw) -> tuple[bytes, int]:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    # Half the inputs keep the head intact, so the body and the WebSocket frames get mutated too.
    start = data.index(b"\r\n\r\n") + 4 if draw(st.booleans()) else 0
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "splice"]))
        pos = draw(st.integers(min(start, len(data)), len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif op == "repeat":
            piece = data[pos:pos + draw(st.integers(1, 60))]
            data[pos:pos] = piece * draw(st.integers(1, 5))
        elif op == "splice":
            other = draw(st.sampled_from(SEEDS))
            data[pos:] = other[draw(st.integers(0, len(other))):]
    return bytes(data), draw(st.integers(1, 600)), draw(st.booleans())


def exchange(port: int, data: bytes, chunk: int, half_close: bool) -> bytes:
    """Send ``data`` in ``chunk``-byte pieces and read what the sidecar answers.

    ``half_close``: shut down our sending side, which the sidecar takes as the client
    leaving, and read until it closes (it must, promptly). Otherwise read until it
    closes or has been quiet for 150 ms, as a client waiting for an answer would."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(0, len(data), chunk):
                sock.sendall(data[i:i + chunk])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the sidecar may refuse early and close; what it answered is still read below
        if not half_close:
            sock.settimeout(QUIET)
        got = b""
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                if half_close:
                    raise AssertionError(f"the sidecar kept the connection open 10 s after the client left; "
                                         f"input {data[:300]!r}, got {got[:300]!r}") from None
                break
            if not piece:
                break
            got += piece
        return got
    finally:
        sock.close()


@settings(max_examples=600, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_input_is_answered_or_closed_and_never_crashes(echo, case):  # noqa: F811
    data, chunk, half_close = case
    seen = len(echo.log())
    got = exchange(echo.port, data, chunk, half_close)
    event(f"answer {got[9:12].decode('latin-1') if got else 'none'}")  # --hypothesis-show-statistics
    if got:
        assert STATUS_LINE.match(got), f"not an HTTP status line: {got[:200]!r} for input {data[:300]!r}"
        assert b"Traceback" not in got and b'File "' not in got
        if got.startswith(b"HTTP/1.1 101 "):
            head, _, frames = got.partition(b"\r\n\r\n")
            assert frames == b"" or frames[0] & 0x70 in (0, 0x40), f"bad first frame {frames[:20]!r}"
        elif got[9:12] == b"500":
            raise AssertionError(f"500 for input {data[:300]!r}: {got[:300]!r}")
    log = echo.log()[seen:]  # what this input made the sidecar log
    assert echo.running and "Traceback" not in log, f"input {data[:300]!r} in {chunk}-byte pieces:\n{log[-3000:]}"


def test_the_sidecar_still_serves_after_the_fuzzing(echo):  # noqa: F811
    still_serves(echo)
    log = echo.log()
    assert "Traceback" not in log and "failed" not in log, log[-4000:]
