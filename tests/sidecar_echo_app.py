"""A sidecar and a small consumer loop in one gevent process, on the in-memory layer.

Used by the sidecar tests before (and beside) the real worker: it runs
``Sidecar`` exactly as ``wsgi-channels sidecar`` does and a consumer greenlet
that answers ``websocket.*`` and ``http.request`` messages by path:

- ``/reject``: refuse the handshake; ``/silent``: never answer the connect;
  ``/sub``: accept choosing the last offered subprotocol; ``/close-4321``: accept then close 4321;
- anything else: accept and echo every frame; the text ``"flood N"`` answers with N frames,
  ``"join G"`` adds the socket to group G, ``"group G TEXT"`` sends TEXT to group G,
  ``"slowpoke S"`` sleeps S seconds in the consumer (to fill websocket.receive);
- connects and disconnects are recorded and can be read over HTTP at ``/_test/connects`` and
  ``/_test/disconnects``;
- HTTP (``--http layer``): ``/echo-body`` answers with the request body, ``/stream`` streams
  three chunks, ``/never`` never answers, ``/slowpoke?S`` blocks the consumer S seconds,
  ``/slow-reply?S`` answers after S seconds without blocking it; ``/headers`` answers with
  the request's headers as JSON pairs; anything else answers with a JSON summary of the request.
- Capacities: ``websocket.connect`` and ``http.request`` hold 5 messages, ``websocket.receive`` 100.

Usage: python tests/sidecar_echo_app.py PORT [sidecar flags...]
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from wsgi_channels.layers.memory import MemoryChannelLayer  # noqa: E402
from wsgi_channels.cli import sidecar as sidecar_cli  # noqa: E402
from wsgi_channels.sidecar.server import Sidecar  # noqa: E402

DISCONNECTS: list = []
CONNECTS: list = []
CAPACITIES = {"websocket.connect": 5, "websocket.receive": 100, "http.request": 5}


def consumer(layer, sidecar):
    bodies: dict = {}
    while True:
        channel, m = layer.receive(["websocket.connect", "websocket.receive", "websocket.disconnect",
                                    "http.request", "_test.http"], block=True, timeout=1)
        if channel is None:
            continue
        try:
            handle(layer, sidecar, channel, m, bodies)
        except Exception as e:  # keep serving
            print("consumer error", repr(e), file=sys.stderr)


def handle(layer, sidecar, channel, m, bodies):
    rc = m.get("reply_channel")
    if channel == "websocket.connect":
        path = m["path"]
        CONNECTS.append(path)
        if path == "/reject":
            layer.send(rc, {"close": True})
        elif path == "/silent":
            pass
        elif path == "/sub":
            layer.send(rc, {"accept": True, "subprotocol": m["subprotocols"][-1]})
        elif path == "/close-4321":
            layer.send(rc, {"accept": True})
            layer.send(rc, {"close": 4321})
        else:
            layer.send(rc, {"accept": True})
    elif channel == "websocket.receive":
        text = m.get("text")
        if text is not None and text.startswith("flood "):
            for i in range(int(text.split()[1])):
                layer.send(rc, {"text": "x" * 1000 + str(i)})
        elif text is not None and text.startswith("join "):
            layer.group_add(text.split()[1], rc)
            layer.send(rc, {"text": "joined"})
        elif text is not None and text.startswith("group "):
            _, group, payload = text.split(" ", 2)
            layer.send_group(group, {"text": payload})
        elif text is not None and text.startswith("slowpoke "):
            gevent.sleep(float(text.split()[1]))
        elif text is not None and text == "whoami":
            layer.send(rc, {"text": json.dumps({"order": m["order"], "path": m["path"], "reply_channel": rc})})
        else:
            layer.send(rc, {k: v for k, v in m.items() if k in ("text", "bytes")})
    elif channel == "websocket.disconnect":
        DISCONNECTS.append({"code": m["code"], "order": m["order"], "path": m["path"]})
    elif channel == "http.request":
        path = m["path"]
        if path in ("/_test/disconnects", "/_test/connects"):
            body = json.dumps(DISCONNECTS if path.endswith("disconnects") else CONNECTS).encode()
            layer.send(rc, {"status": 200, "headers": [[b"content-type", b"application/json"]], "content": body})
        elif path == "/echo-body":
            gevent.spawn(echo_body, layer, m)
        elif path == "/stream":
            layer.send(rc, {"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"one,",
                            "more_content": True})
            layer.send(rc, {"content": b"two,", "more_content": True})
            layer.send(rc, {"content": b"three", "more_content": False})
        elif path == "/never":
            pass
        elif path == "/headers":
            pairs = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in m["headers"]]
            layer.send(rc, {"status": 200, "headers": [[b"content-type", b"application/json"]],
                            "content": json.dumps(pairs).encode()})
        elif path == "/slowpoke":
            gevent.sleep(float(m["query_string"] or b"1"))
            layer.send(rc, {"status": 200, "content": b"finally"})
        elif path == "/slow-reply":
            gevent.spawn_later(float(m["query_string"] or b"1"), layer.send, rc, {"status": 200, "content": b"late"})
        else:
            info = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in m.items()
                    if k in ("method", "path", "query_string", "scheme", "client", "root_path", "http_version",
                             "reply_channel")}
            layer.send(rc, {"status": 200, "headers": [[b"content-type", b"application/json"]],
                            "content": json.dumps(info).encode()})


def echo_body(layer, m):
    body = m["body"]
    if m.get("body_channel"):
        while True:
            ch, chunk = layer.receive([m["body_channel"]], block=True, timeout=5)
            if ch is None:
                break
            body += chunk["content"]
            if not chunk.get("more_content"):
                break
    rc = m["reply_channel"]
    step = 512 * 1024  # messages are limited to 1 MiB: answer in chunks
    layer.send(rc, {"status": 200, "headers": [[b"x-body-length", str(len(body)).encode()],
                                               [b"content-length", str(len(body)).encode()]],
                    "content": body[:step], "more_content": len(body) > step})
    for i in range(step, len(body), step):
        layer.send(rc, {"content": body[i:i + step], "more_content": i + step < len(body)})


def main():
    port = sys.argv[1]
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sidecar_cli.register(sub)
    args = parser.parse_args(["sidecar", "--bind", f"127.0.0.1:{port}", *sys.argv[2:]])
    from wsgi_channels.cli import setup_logging

    setup_logging(args.log_level)
    config = sidecar_cli.build_config(args)
    sidecar_cli.setup_access_log(config.access_log)
    layer = MemoryChannelLayer(channel_capacity=CAPACITIES, capacity=100)
    sidecar = Sidecar(config, layer=layer)
    gevent.spawn(consumer, layer, sidecar)
    sys.exit(sidecar.serve_forever())


if __name__ == "__main__":
    main()
