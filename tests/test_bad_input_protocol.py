"""Bad input on the wire: each gets its documented status or close code, and the sidecar lives on.

One real sidecar process (``sidecar_echo_app.py``: the sidecar plus an echo consumer
on the in-memory layer) takes malformed HTTP, broken handshakes, header floods,
slow-drip requests and every kind of broken WebSocket frame from raw sockets. After
each case a good client still gets its echo, and at the end the process is still up
with nothing in its log that looks like a crash.
"""
from __future__ import annotations

import struct
import sys
import time

import pytest

import faultkit as fk
import stack

MAX_MESSAGE = 65536
HANDSHAKE_TIMEOUT = 1.0


def start_echo(log_dir):
    port = fk.free_port()
    admin = fk.free_port()
    proc = stack.Proc([sys.executable, fk.TESTS / "sidecar_echo_app.py", port, "--max-message-size", MAX_MESSAGE,
                       "--handshake-timeout", HANDSHAKE_TIMEOUT, "--max-header-size", 8192,
                       "--admin-bind", f"127.0.0.1:{admin}", "--http", "layer", "--ping-interval", "0"],
                      log_dir / "echo.log", stack.env_for(None, fk.TESTS), cwd=fk.TESTS, port=port)
    proc.admin_port = admin
    return proc.start()


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    proc = start_echo(tmp_path_factory.mktemp("bad-input"))
    yield proc
    alive = proc.running
    log = proc.log()
    proc.stop()
    assert alive, f"the sidecar died:\n{log[-4000:]}"
    assert "Traceback" not in log, log[-4000:]


def still_serves(echo) -> None:
    c = fk.RawClient(echo.port)
    try:
        status, _, _ = c.handshake("/echo")
        assert status == 101
        c.send(fk.frame(fk.OP_TEXT, b"still here"))
        assert c.read_frame() == (fk.OP_TEXT, b"still here")
        c.send(fk.close_frame(1000))
        assert c.read_until_close()[0] == 1000
    finally:
        c.close()
    assert echo.running


def http_status(echo, raw: bytes) -> int:
    c = fk.RawClient(echo.port)
    try:
        c.send(raw)
        status, _, body = c.read_head()
        assert b"Traceback" not in body and b'File "' not in body
        return status
    finally:
        c.close()


# -- malformed HTTP and handshakes ------------------------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                      # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\x00\r\n\r\n", 400),
    (b"G.T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),                      # a token, but no method
], ids=["garbage", "bad-header-line", "no-host", "negative-length", "two-lengths",
        "unknown-te", "nul-in-target", "nul-in-header", "odd-method"])
def test_malformed_http_gets_a_4xx_or_5xx_and_the_process_lives(echo, raw, status):
    assert http_status(echo, raw) == status
    still_serves(echo)


def test_unsupported_http_version_gets_505_without_a_traceback(tmp_path):
    proc = start_echo(tmp_path)
    try:
        assert http_status(proc, b"GET / HTTP/9.9\r\nHost: x\r\n\r\n") == 505
        still_serves(proc)
    finally:
        proc.stop()
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


@pytest.mark.parametrize("headers, status", [
    ({"Sec-WebSocket-Key": None}, 400),
    ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400),
    ({"Sec-WebSocket-Version": "8"}, 426),
    ({"Connection": "keep-alive"}, 400),
    ({"method": "POST"}, 400),
    ({"version": "HTTP/1.0"}, 400),
], ids=["no-key", "short-key", "version-8", "no-connection-upgrade", "post", "http-1.0"])
def test_broken_handshakes_are_refused_with_the_reason(echo, headers, status):
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    method = headers.pop("method", "GET") if "method" in headers else "GET"
    version = headers.pop("version", "HTTP/1.1") if "version" in headers else "HTTP/1.1"
    fields.update(headers)
    lines = [f"{method} /echo {version}"] + [f"{k}: {v}" for k, v in fields.items() if v is not None]
    c = fk.RawClient(echo.port)
    try:
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        got, response_headers, body = c.read_head()
        assert got == status, body
        assert body.strip(), "the refusal names its reason"
        if status == 426:
            assert response_headers.get("sec-websocket-version") == "13"
    finally:
        c.close()
    still_serves(echo)


def test_handshake_with_a_body_is_refused(echo):
    raw = fk.handshake_request("/echo").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
    assert http_status(echo, raw) == 400
    still_serves(echo)


@pytest.mark.parametrize("drip", [False, True], ids=["at-once", "dripped"])
def test_header_flood_gets_431(echo, drip):
    flood = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    raw = b"GET / HTTP/1.1\r\nHost: x\r\n" + flood + b"\r\n"
    c = fk.RawClient(echo.port)
    try:
        if drip:
            for i in range(0, len(raw), 4096):
                try:
                    c.send(raw[i:i + 4096])
                except OSError:
                    break  # the server already answered and closed
        else:
            c.send(raw)
        status, _, _ = c.read_head()
        assert status == 431
    finally:
        c.close()
    still_serves(echo)


def test_slow_drip_request_gets_408_after_the_handshake_timeout(echo):
    c = fk.RawClient(echo.port)
    try:
        t0 = time.monotonic()
        head = b"GET /echo HTTP/1.1\r\nHost: x\r\n"
        for byte in head:
            try:
                c.send(bytes([byte]))
            except OSError:
                break  # the server answered 408 and closed (it does not wait for the rest)
            time.sleep(HANDSHAKE_TIMEOUT / 8)
            if time.monotonic() - t0 > HANDSHAKE_TIMEOUT * 4:
                break
        status, _, _ = c.read_head()
        assert status == 408
        assert c.eof(5)
        assert time.monotonic() - t0 < HANDSHAKE_TIMEOUT * 6
    finally:
        c.close()
    still_serves(echo)


def test_silent_connection_is_closed_after_the_handshake_timeout(echo):
    c = fk.RawClient(echo.port)
    try:
        t0 = time.monotonic()
        assert c.eof(HANDSHAKE_TIMEOUT * 6)
        assert time.monotonic() - t0 >= HANDSHAKE_TIMEOUT * 0.9
    finally:
        c.close()


# -- broken WebSocket frames -----------------------------------------------------------------------

def ws(echo) -> fk.RawClient:
    c = fk.RawClient(echo.port)
    status, _, _ = c.handshake("/echo")
    assert status == 101
    return c


def close_code_after(echo, data: bytes) -> tuple[int | None, list]:
    c = ws(echo)
    try:
        c.send(data)
        return c.read_until_close()
    finally:
        c.close()


BIG = MAX_MESSAGE + 1

FRAME_CASES = {
    "invalid-utf8-text": (fk.frame(fk.OP_TEXT, b"caf\xc3"), 1007),
    "invalid-utf8-fragmented": (fk.frame(fk.OP_TEXT, b"ok\xed\xa0", fin=False)
                                + fk.frame(fk.OP_CONT, b"\x80"), 1007),
    "oversized-single": (fk.frame(fk.OP_BINARY, b"x" * BIG), 1009),
    "oversized-fragments": (b"".join(fk.frame(fk.OP_BINARY if i == 0 else fk.OP_CONT, b"y" * 8192, fin=False)
                                     for i in range(9)), 1009),
    "length-2-to-63": (fk.frame(fk.OP_BINARY, b"", length=(1 << 63) - 1)[:-4] + b"\0" * 4 + b"w" * BIG, 1009),
    "continuation-first": (fk.frame(fk.OP_CONT, b"orphan"), 1002),
    "new-message-mid-fragment": (fk.frame(fk.OP_TEXT, b"a", fin=False) + fk.frame(fk.OP_TEXT, b"b"), 1002),
    "fragmented-ping": (fk.frame(fk.OP_PING, b"p", fin=False), 1002),
    "ping-over-125": (fk.frame(fk.OP_PING, b"p" * 126), 1002),
    "unmasked": (fk.frame(fk.OP_TEXT, b"hi", mask=False), 1002),
    "rsv-bits": (fk.frame(fk.OP_TEXT, b"hi", rsv=0b100), 1002),
    "unknown-opcode": (fk.frame(0x3, b"?"), 1002),
    "close-999": (fk.close_frame(999), 1002),
    "close-1004": (fk.close_frame(1004), 1002),
    "close-1005": (fk.close_frame(1005), 1002),
    "close-1006": (fk.close_frame(1006), 1002),
    "close-1015": (fk.close_frame(1015), 1002),
    "close-5000": (fk.close_frame(5000), 1002),
    "close-one-byte": (fk.frame(fk.OP_CLOSE, b"\x03"), 1002),
    "close-reason-not-utf8": (fk.close_frame(1000, b"\xff\xfe"), 1007),
}


@pytest.mark.parametrize("case", sorted(FRAME_CASES))
def test_broken_frames_close_with_the_rfc_code(echo, case):
    data, expected = FRAME_CASES[case]
    code, _ = close_code_after(echo, data)
    assert code == expected
    still_serves(echo)


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4000, 4999])
def test_valid_close_codes_are_echoed(echo, code):
    assert close_code_after(echo, fk.close_frame(code))[0] == code


def test_no_status_close_is_answered_with_an_empty_close(echo):
    assert close_code_after(echo, fk.close_frame(None))[0] in (1000, 1005)


def test_fragments_with_interleaved_pings_arrive_as_one_message(echo):
    c = ws(echo)
    try:
        c.send(fk.frame(fk.OP_TEXT, "caf".encode(), fin=False) + fk.frame(fk.OP_PING, b"hb")
               + fk.frame(fk.OP_CONT, "é ".encode()[:1], fin=False) + fk.frame(fk.OP_CONT, "é ".encode()[1:]))
        assert c.read_frame() == (fk.OP_PONG, b"hb")
        assert c.read_frame() == (fk.OP_TEXT, "café ".encode())
        c.send(fk.close_frame(1000))
        assert c.read_until_close()[0] == 1000
    finally:
        c.close()


def test_message_just_under_the_limit_is_accepted(echo):
    c = ws(echo)
    try:
        payload = b"z" * MAX_MESSAGE
        c.send(fk.frame(fk.OP_BINARY, payload))
        assert c.read_frame() == (fk.OP_BINARY, payload)
    finally:
        c.close()


def test_garbage_after_handshake_and_abrupt_resets(echo):
    for junk in (b"\xff" * 64, b"\x81", b"\x81\xfe\x00"):
        c = ws(echo)
        c.send(junk)
        c.close()  # half a frame, then gone
    import socket as _socket

    c = ws(echo)
    c.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    still_serves(echo)
