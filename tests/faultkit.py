"""Tools for the fault, bad-input, churn and security tests (and ``benchmarks/reliability.py``).

- a raw WebSocket client over a plain socket that can send anything, valid or not
  (masked frames built by hand), and an asyncio handshake-and-close churner;
- measurements of a running process from ``/proc/<pid>`` (fds, RSS) and of the
  sidecar from its Prometheus endpoint, and of Redis (keys);
- :class:`Stack`: gunicorn + sidecar + worker running ``fault_app`` on one layer.

Nothing here mocks anything: every helper talks to real sockets and processes.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import struct
import time
from pathlib import Path

import requests

import stack
from servers import free_port

TESTS = Path(__file__).resolve().parent

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- raw frames and handshakes ------------------------------------------------------------------

def handshake_request(path: str = "/ws/faults", host: str = "127.0.0.1", origin: str | None = None,
                      extra: tuple = (), key: bytes | None = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append(f"Origin: {origin}")
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One client frame; ``length`` may lie about the payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None = 1000, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


class RawClient:
    """A blocking socket speaking (or breaking) HTTP/WebSocket by hand."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_head(self) -> tuple[int, dict, bytes]:
        """Status, headers (lower-case names) and the body (by Content-Length) of one HTTP response."""
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head; got {self.buf[:200]!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers and status != 101:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                if not self._fill():
                    break
            body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def handshake(self, path: str = "/ws/faults", **kw) -> tuple[int, dict, bytes]:
        self.send(handshake_request(path, **kw))
        return self.read_head()

    def read_frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; ConnectionError at EOF."""
        while len(self.buf) < 2:
            if not self._fill():
                raise ConnectionError("closed")
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            while len(self.buf) < 4:
                if not self._fill():
                    raise ConnectionError("closed")
            n = struct.unpack("!H", self.buf[2:4])[0]
            pos = 4
        elif n == 127:
            while len(self.buf) < 10:
                if not self._fill():
                    raise ConnectionError("closed")
            n = struct.unpack("!Q", self.buf[2:10])[0]
            pos = 10
        while len(self.buf) < pos + n:
            if not self._fill():
                raise ConnectionError("closed")
        payload = self.buf[pos:pos + n]
        self.buf = self.buf[pos + n:]
        return b0 & 0x0F, payload

    def read_until_close(self, limit: int = 100000) -> tuple[int | None, list]:
        """Frames up to and including the close: (close code or None at EOF, data payloads)."""
        data = []
        for _ in range(limit):
            try:
                op, payload = self.read_frame()
            except (ConnectionError, OSError):
                return None, data
            if op == OP_CLOSE:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005), data
            if op in (OP_TEXT, OP_BINARY):
                data.append(payload)
        raise AssertionError("no close")

    def eof(self, timeout: float = 5.0) -> bool:
        """True when the server closes the socket within ``timeout`` (data before it is discarded)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- churn: many concurrent handshake+close cycles --------------------------------------------------

async def _cycle(port: int, path: str, timeout: float) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(handshake_request(path))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"101":
            return f"status {status.decode()}"
        writer.write(close_frame(1000))
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(64), timeout)
        if not rest or rest[0] & 0x0F != OP_CLOSE:
            return "no close frame"
        return "ok"
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError) as e:
        return type(e).__name__
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def churn(port: int, cycles: int, concurrency: int = 50, path: str = "/ws/churn", timeout: float = 20.0) -> dict:
    """Run ``cycles`` handshake+close cycles, ``concurrency`` at a time; outcome counts and seconds."""

    async def run() -> dict:
        counts: dict = {}
        todo = iter(range(cycles))

        async def lane() -> None:
            for _ in todo:
                outcome = await _cycle(port, path, timeout)
                counts[outcome] = counts.get(outcome, 0) + 1

        t0 = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        counts["seconds"] = time.monotonic() - t0
        return counts

    return asyncio.run(run())


# -- measurements ----------------------------------------------------------------------------------

def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_sockets(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of each TCP socket the process holds (by inode, from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                out.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def metrics(port: int) -> dict:
    """Prometheus text from ``http://127.0.0.1:port/metrics`` as ``{"name{labels}": value}``."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = re.match(r"^(\S+)\s+(\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def redis_keys(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


# -- the stack -------------------------------------------------------------------------------------

class Stack:
    """gunicorn (``fault_app:app``) + sidecar + worker (``fault_app:routing``) on one layer URL."""

    def __init__(self, layer: str, log_dir: Path, sidecar_args: tuple = (), gunicorn_workers: int = 0,
                 workers: int = 1, threads: int = 4, **env_extra: str) -> None:
        self.layer = layer
        self.log_dir = Path(log_dir)
        self.env = stack.env_for(layer, TESTS, **env_extra)
        self.admin_port = free_port()
        self.sidecar = stack.sidecar(self.env, self.log_dir, None, "--admin-bind", f"127.0.0.1:{self.admin_port}",
                                     *sidecar_args)
        self.web = stack.gunicorn("fault_app:app", TESTS, self.env, self.log_dir, gunicorn_workers) \
            if gunicorn_workers else None
        self.workers = [stack.worker("fault_app:routing", TESTS, self.env, self.log_dir, threads)
                        for _ in range(workers)]
        self.procs: list = []

    @property
    def port(self) -> int:
        return self.sidecar.port

    def start(self) -> "Stack":
        try:
            for p in [self.sidecar, *self.workers] + ([self.web] if self.web else []):
                self.procs.append(p.start())
            for w in self.workers:
                w.wait_for_log("worker serving", timeout=30)
            if self.web:
                self.web.wait_for_log("Booting worker", timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def metrics(self) -> dict:
        return metrics(self.admin_port)

    def stop(self) -> None:
        stack.stop_all(self.procs)
        self.procs = []

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LayerConsumer:
    """The test as the app: a thread answering ``websocket.*`` on a real layer, recording everything.

    Accepts every connect, echoes text frames (``"flood N SIZE"`` answers with N frames of
    SIZE bytes instead), and records disconnects by reply channel.
    """

    def __init__(self, url: str) -> None:
        import threading

        from wsgi_channels.layers import from_url

        self.layer = from_url(url)
        self.connects: list = []
        self.disconnects: list = []
        self.received = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LayerConsumer":
        self.thread.start()
        return self

    def _run(self) -> None:
        layer = self.layer
        while not self.stopping.is_set():
            try:
                channel, m = layer.receive(["websocket.connect", "websocket.receive", "websocket.disconnect"],
                                           block=True, timeout=0.5)
            except Exception:
                time.sleep(0.1)
                continue
            if channel == "websocket.connect":
                self.connects.append(m["reply_channel"])
                layer.send(m["reply_channel"], {"accept": True})
            elif channel == "websocket.receive":
                self.received += 1
                text = m.get("text") or ""
                if text.startswith("flood "):
                    _, n, size = text.split()
                    for i in range(int(n)):
                        try:
                            layer.send(m["reply_channel"], {"bytes": b"f" * int(size)})
                        except Exception:
                            time.sleep(0.01)
                else:
                    reply = {"text": text} if m.get("text") is not None else {"bytes": m.get("bytes") or b""}
                    try:
                        layer.send(m["reply_channel"], reply)
                    except Exception:
                        pass
            elif channel == "websocket.disconnect":
                self.disconnects.append((m["reply_channel"], m["code"]))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.layer.close()
