"""Many WebSocket clients in one gevent process, for the sidecar benchmarks.

Raw sockets and a minimal RFC 6455 client (masked frames out, unmasked frames in),
so thousands of clients cost little next to the server being measured. Speaks
either plain WebSocket (our sidecar) or Engine.IO v4 / Socket.IO v5 over WebSocket
(python-socketio), answering Engine.IO pings.

Run by the benchmark scripts as a subprocess::

    python benchmarks/_wsclients.py --url ws://127.0.0.1:8001/ --count 5000 [--join x] [--protocol ws|socketio]
                                    [--deflate]

``--deflate`` offers permessage-deflate, as every browser does, and inflates the
compressed frames it gets (one inflater per client, kept across messages, so it reads
servers with and without context takeover).

It prints ``READY <connected> <failed>`` when every client is connected (and joined),
then records, for every text message ``{"seq": n, "t": sent_time}`` (for Socket.IO:
an event whose single argument is that object), the arrival time minus ``t``.
On ``REPORT`` (stdin) it prints one JSON line ``{"latencies": {seq: [seconds...]},
"open": n}``; on ``QUIT`` it exits.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections import defaultdict  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.fileobject  # noqa: E402
import gevent.pool  # noqa: E402


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def mask_frame(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class Client:
    __slots__ = ("sock", "buf", "protocol", "inflater")

    def __init__(self, sock: socket.socket, protocol: str, deflate: bool = False) -> None:
        self.sock = sock
        self.buf = b""
        self.protocol = protocol
        self.inflater = zlib.decompressobj(-15) if deflate else None

    def send_text(self, text: str) -> None:
        self.sock.sendall(mask_frame(0x1, text.encode()))

    def frames(self):
        """Yield (opcode, payload) forever; raises ConnectionError at EOF."""
        while True:
            buf = self.buf
            while len(buf) >= 2:
                b1, b2 = buf[0], buf[1]
                n = b2 & 0x7F
                pos = 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n = struct.unpack("!H", buf[2:4])[0]
                    pos = 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n = struct.unpack("!Q", buf[2:10])[0]
                    pos = 10
                if len(buf) < pos + n:
                    break
                payload = buf[pos:pos + n]
                buf = buf[pos + n:]
                self.buf = buf
                if b1 & 0x40 and self.inflater is not None:  # RSV1: a deflated message (RFC 7692)
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                yield b1 & 0x0F, payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data


def open_client(host: str, port: int, path: str, protocol: str, deflate: bool = False) -> Client:
    sock = socket.create_connection((host, port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        head += chunk
    status = head.split(b" ", 2)[1]
    if status != b"101":
        raise ConnectionError(f"handshake status {status.decode()}")
    sock.settimeout(None)
    agreed = deflate and b"permessage-deflate" in head.split(b"\r\n\r\n", 1)[0].lower()
    client = Client(sock, protocol, agreed)
    client.buf = head.split(b"\r\n\r\n", 1)[1]
    return client


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--join", default="")
    parser.add_argument("--protocol", choices=["ws", "socketio"], default="ws")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight at once")
    parser.add_argument("--deflate", action="store_true", help="offer permessage-deflate, as browsers do")
    args = parser.parse_args()
    raise_nofile()
    u = urlsplit(args.url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    latencies: dict = defaultdict(list)
    clients: list[Client] = []
    failed = [0]
    reasons: dict = defaultdict(int)

    def reader(client: Client, ready: gevent.event.Event) -> None:
        try:
            for opcode, payload in client.frames():
                now = time.time()
                if opcode == 0x9:  # ping
                    client.sock.sendall(mask_frame(0xA, payload))
                    continue
                if opcode != 0x1:
                    if opcode == 0x8:
                        return
                    continue
                text = payload.decode()
                if client.protocol == "socketio":
                    if text == "2":  # Engine.IO ping
                        client.send_text("3")
                        continue
                    if text.startswith("0"):  # Engine.IO open: join the default namespace
                        client.send_text("40")
                        continue
                    if text.startswith("40"):
                        ready.set()
                        continue
                    if not text.startswith("42"):
                        continue
                    data = json.loads(text[2:])[1]
                else:
                    if text.startswith("joined"):
                        ready.set()
                        continue
                    if not text.startswith("{"):
                        continue
                    data = json.loads(text)
                latencies[data["seq"]].append(now - data["t"])
        except (OSError, ConnectionError, ValueError):
            return

    def start(_: int) -> None:
        try:
            client = open_client(u.hostname, u.port, path, args.protocol, args.deflate)
        except (OSError, ConnectionError) as e:
            failed[0] += 1
            reasons[str(e)[:60]] += 1
            return
        ready = gevent.event.Event()
        clients.append(client)
        gevent.spawn(reader, client, ready)
        if args.protocol == "ws" and args.join:
            client.send_text("join " + args.join)
        elif args.protocol == "ws":
            ready.set()
        if not ready.wait(60):
            failed[0] += 1

    pool = gevent.pool.Pool(args.concurrency)
    for i in range(args.count):
        pool.spawn(start, i)
    pool.join()
    if reasons:
        print(f"connection failures: {dict(reasons)}", file=sys.stderr, flush=True)
    print(f"READY {len(clients)} {failed[0]}", flush=True)
    for line in gevent.fileobject.FileObject(sys.stdin, "r"):
        command = line.strip()
        if command == "REPORT":
            print(json.dumps({"latencies": latencies, "open": len(clients)}), flush=True)
        elif command == "QUIT":
            break
    for client in clients:
        try:
            client.sock.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
