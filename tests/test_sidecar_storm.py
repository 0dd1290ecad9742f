"""A burst of handshakes on a real sidecar over ``ipc://`` (issue 18's reconnect storm, in small).

The ``websocket.connect`` channel holds 2 messages; 6 handshakes arrive at once and this test is
the slow consumer, answering one connect at a time. Each handshake that finds the channel full
waits in line until there is room (within ``--connect-timeout``), rather than 503 at once.
"""
from __future__ import annotations

import base64
import os
import socket
import sys
import time

from servers import ServerProcess, free_port, wait_for_port
from wsgi_channels.layers import from_url

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    return sock


def _status(sock: socket.socket) -> str:
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def test_handshakes_finding_websocket_connect_full_wait_in_line_for_room(tmp_path):
    url = f"ipc://{tmp_path}/channels.db?capacity=2"
    env = dict(os.environ, WSGI_CHANNELS_LAYER=url,
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    port = free_port()
    sidecar = ServerProcess([sys.executable, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{port}",
                             "--connect-timeout", "8", "--log-level", "info"], str(tmp_path / "sidecar.log"),
                            env=env, cwd=ROOT).start()
    layer = from_url(url)
    socks = []
    try:
        wait_for_port(port, proc=sidecar.proc, log=sidecar.log_path)
        socks = [_handshake(port) for _ in range(6)]
        answered = 0
        deadline = time.monotonic() + 8
        while answered < 6 and time.monotonic() < deadline:
            channel, message = layer.receive(["websocket.connect"], block=True, timeout=1.0)
            if channel is None:
                continue
            time.sleep(0.05)  # a slow consumer: the channel fills behind it
            layer.send(message["reply_channel"], {"accept": True})
            answered += 1
        statuses = [_status(s) for s in socks]
        assert statuses == ["HTTP/1.1 101 Switching Protocols"] * 6, (statuses, sidecar.log()[-2000:])
        assert answered == 6
        assert "503" not in sidecar.log()
    finally:
        for s in socks:
            s.close()
        sidecar.stop()
        layer.close()
