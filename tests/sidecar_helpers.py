"""Helpers for the sidecar tests: start sidecar processes, raw WebSocket clients on real sockets."""
from __future__ import annotations

import os
import socket
import sys
import time

import requests
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, Request

from servers import ServerProcess, free_port, wait_for_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "sidecar_echo_app.py")


class Harness:
    """``tests/sidecar_echo_app.py`` (sidecar + in-process consumer on memory://) on a free port."""

    def __init__(self, tmp_path, *flags: str, admin: bool = True) -> None:
        self.port = free_port()
        self.admin_port = free_port() if admin else None
        args = [sys.executable, HARNESS, str(self.port), "--log-level", "info", *flags]
        if admin:
            args += ["--admin-bind", f"127.0.0.1:{self.admin_port}"]
        self.proc = ServerProcess(args, str(tmp_path / f"sidecar-{self.port}.log"), cwd=ROOT)

    def start(self) -> "Harness":
        self.proc.start()
        wait_for_port(self.port, proc=self.proc.proc, log=self.proc.log_path)
        return self

    def stop(self) -> None:
        self.proc.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return requests.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample from ``/metrics`` (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def log(self) -> str:
        return self.proc.log()


class RawClient:
    """A WebSocket client on a plain socket (wsproto): sees every frame, answers nothing by itself."""

    def __init__(self, port: int, path: str = "/", headers: list | None = None, rcvbuf: int | None = None,
                 timeout: float = 5.0, extensions: list | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target=path,
                                               extra_headers=headers or [], extensions=extensions or [])))
        self.bytes_in = 0
        self.accepted = None
        self.status = None
        self.events: list = []
        while self.accepted is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.accepted = True
                elif isinstance(event, RejectConnection):
                    self.accepted = False
                    self.status = event.status_code
                else:
                    self.events.append(event)

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def read_events(self, until: float = 2.0, stop=None) -> tuple[list, bool]:
        """Events for up to ``until`` seconds; second item True when the server closed the TCP connection."""
        deadline = time.monotonic() + until
        events = list(self.events)
        self.events = []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                return events, True
            if not data:
                return events, True
            self.bytes_in += len(data)
            self.ws.receive_data(data)
            for event in self.ws.events():
                events.append(event)
                if stop is not None and stop(event):
                    return events, False
        return events, False

    def close(self) -> None:
        self.sock.close()


def raw_request(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout); the response bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return out


def close_codes(events) -> list[int]:
    return [e.code for e in events if isinstance(e, CloseConnection)]


def pings(events) -> list:
    return [e for e in events if isinstance(e, Ping)]
