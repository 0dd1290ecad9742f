"""Coverage-guided fuzzing (atheris) of the sidecar's input path: bytes from a client, sans-IO.

Two targets, chosen by the first byte of each input (see :func:`one_input`):

- ``http``: bytes, cut into chunks at fuzzer-chosen points, go into
  :class:`~wsgi_channels.protocol.http.HttpConnection`; every event is handled the way
  the sidecar's connection handles it (upgrade checks, origin check, proxy headers,
  ``websocket.connect`` / ``http.request`` building, responses, keep-alive, the switch to
  a WebSocket session that gets the trailing bytes);
- ``ws``: bytes go straight into an accepted
  :class:`~wsgi_channels.protocol.websocket.WebSocketSession` (with or without
  permessage-deflate and a small size limit).

Only the exception the sidecar turns into a 400 (``InvalidRequest``) may escape a
step; anything else (``InvalidMessage`` from well-typed arguments included) is a
crash. Invariants are checked too: messages are within the size limit, built messages
pass the contract's validator, and a closed session reports a close code a client may
legally see. ``tests/test_fuzz_wire.py`` mutates input against a real sidecar process.

Run: ``python tests/fuzz/fuzz_sidecar_input.py -runs=5000 tests/fuzz/corpus_http``
(``tests/test_fuzz.py`` does, bounded; ``benchmarks/reliability.py`` runs it longer).
"""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["wsgi_channels", "h11", "wsproto"]):
    import h11
    from wsproto.extensions import PerMessageDeflate

    from wsgi_channels.protocol import http as shttp
    from wsgi_channels.protocol import websocket as sws
    from wsgi_channels.protocol.translation import InvalidRequest, build_request_message, validate_request_message

MAX_MESSAGE = 4096
ORIGIN_LISTS = ([], ["*"], ["https://app.example"])
#: Codes a session may report for ``websocket.disconnect``: the RFC 6455 codes an endpoint may
#: send, plus 1005 (the peer's close frame had no code) and 1006 (no close frame at all).
LEGAL_CLOSE_CODES = {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def chunks(flags: int, body: bytes) -> list[bytes]:
    """Cut ``body`` the way the network might: 1 to 528 bytes at a time, chosen by the flags byte."""
    size = 1 + (flags >> 3) * 17
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


def check_session(session: sws.WebSocketSession, pieces: list[bytes]) -> None:
    for piece in pieces:
        out, messages = session.receive_data(piece)
        assert isinstance(out, bytes)
        for m in messages:
            assert isinstance(m, (str, bytes))
            size = len(m.encode()) if isinstance(m, str) else len(m)
            assert size <= MAX_MESSAGE, f"a {size}-byte message passed a {MAX_MESSAGE}-byte limit"
        if session.closed:
            code = session.close_code
            assert code is not None and (code in LEGAL_CLOSE_CODES or 3000 <= code <= 4999), code
            break
    session.send_message("reply")
    session.ping()
    session.close(1000)
    session.receive_data(None)


def fuzz_http(flags: int, body: bytes) -> None:
    proxy = bool(flags & 1)
    compression = bool(flags & 2)
    allowed = ORIGIN_LISTS[(flags >> 3) % len(ORIGIN_LISTS)]
    pieces = chunks(flags, body)
    conn = shttp.HttpConnection(max_header_size=4096)
    for i, piece in enumerate(pieces):
        conn.receive_data(piece)
        for _ in range(50):  # events per feed are bounded; a loop here would be a hang
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, shttp.HttpError):
                conn.respond(event.status, shttp.simple_body(event.status, event.reason), close=True)
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                if handle_request(conn, event, proxy, allowed, compression, pieces[i + 1:]):
                    return


def handle_request(conn, request, proxy, allowed, compression, rest) -> bool:
    """True when the connection is done (answered with close, or switched to WebSocket)."""
    headers = list(request.headers)
    target = bytes(request.target)
    if request.http_version not in (b"1.0", b"1.1"):
        conn.respond(505, b"", close=True)  # as the sidecar does: h11 parses any HTTP/d.d
        return True
    info = shttp.request_info(headers, ("127.0.0.1", 40000), ("127.0.0.1", 8001), proxy)
    if sws.is_upgrade(headers):
        upgrade = sws.check_upgrade(request.method, request.http_version, headers)
        if isinstance(upgrade, str):
            conn.respond(400, shttp.simple_body(400, upgrade), close=True)
            return True
        if sws.check_origin(headers, info.scheme, info.host, allowed) is not None:
            conn.respond(403, b"", close=True)
            return True
        try:
            message = shttp.connect_message(reply_channel="sidecar.fuzz!1", target=target, headers=headers,
                                            info=info, root_path="", subprotocols=upgrade.subprotocols)
        except InvalidRequest:
            conn.respond(400, b"", close=True)
            return True
        assert message["order"] == 0 and isinstance(message["path"], str)
        if not isinstance(conn.next_event(), h11.EndOfMessage):
            return True
        chosen = upgrade.subprotocols[0] if upgrade.subprotocols else None
        response_headers, extensions = sws.accept_headers(upgrade, chosen, compression)
        _, trailing = conn.switch_protocols(response_headers)
        session = sws.WebSocketSession(extensions, max_message_size=MAX_MESSAGE)
        check_session(session, [trailing, *rest])
        return True
    try:
        message = build_request_message(
            reply_channel="sidecar.fuzz!2", method=request.method, target=target, headers=headers,
            http_version=request.http_version.decode("ascii"), scheme=info.scheme, client=info.client,
            server=info.server, root_path="")
    except InvalidRequest:  # answered 400 by the sidecar (a method like "G.T", a bad target)
        conn.respond(400, b"", close=True)
        return True
    validate_request_message(message)
    conn.respond(200, b"ok")
    if conn.keep_alive:
        conn.start_next_cycle()
    return conn.must_close


def fuzz_ws(flags: int, body: bytes) -> None:
    extensions = [PerMessageDeflate()] if flags & 2 else []
    if extensions:
        # Agree on the extension the way a handshake would, so the session can inflate.
        sws.accept_headers(sws.Upgrade(key=b"dGhlIHNhbXBsZSBub25jZQ==", extension_offers=["permessage-deflate"]),
                           None, True)
        extensions[0].finalize("permessage-deflate")
    session = sws.WebSocketSession(extensions, max_message_size=MAX_MESSAGE)
    check_session(session, chunks(flags, body))


def one_input(data: bytes) -> None:
    """First byte: bit 2 picks the target (1 = http), bit 0 proxy headers, bit 1 compression,
    the high bits the chunk size and the origin allow-list; the rest is what the client sent."""
    if not data:
        return
    flags, body = data[0], data[1:]
    if flags & 4:
        fuzz_http(flags, body)
    else:
        fuzz_ws(flags, body)


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
