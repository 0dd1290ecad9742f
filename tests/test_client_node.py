"""The shipped browser client in Node 20+ against a real sidecar that is killed and restarted.

``tests/js/node_client.mjs`` runs ``channels.js`` with Node's global WebSocket (``node
--experimental-websocket`` on Node 20; Node 22 has it built in) and prints each of the client's
events as a JSON line. The sidecar is killed with SIGKILL; while it is down, messages are
published and the client's reconnect attempts are refused (Node 20 then fires ``error`` and never
``close``: the client must keep trying). When the sidecar listens again on the same port, the
client reconnects, resumes, and gets every message published meanwhile exactly once, in order.
"""
from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import time

import pytest

import stack
from servers import free_port

TESTS = stack.ROOT / "tests"
SCRIPT = TESTS / "js" / "node_client.mjs"


def node_command() -> list[str]:
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "node is not installed: run `bash .ci/run` or `apt-get install nodejs` (needed for the JS client tests)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(version.lstrip("v").split(".")[0])
    assert major >= 20, f"the client needs Node 20+ (a global WebSocket), found {version}"
    return [node, "--experimental-websocket"] if major < 22 else [node]


class NodeClient:
    """The Node script as a subprocess; its JSON lines arrive on a queue."""

    def __init__(self, url: str, positions: dict) -> None:
        self.proc = subprocess.Popen([*node_command(), str(SCRIPT), url, json.dumps(positions)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events: list[dict] = []
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def wait_for(self, predicate, timeout: float = 20.0) -> dict:
        """The first new event matching ``predicate`` (every event is kept in ``events``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self._lines.get(timeout=max(0.0, left))
            except queue.Empty:
                event = None
            if event is None:
                stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"no matching event within {timeout}s; events: {self.events[-30:]} {stderr}")
            self.events.append(event)
            if predicate(event):
                return event

    def finish(self) -> dict:
        self.proc.stdin.close()
        last = self.wait_for(lambda e: e["ev"] == "position", timeout=10)
        self.proc.wait(10)
        return last

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def procs():
    started: list = []
    yield started
    stack.stop_all(started)


def test_node_client_retries_refused_reconnects_and_resumes_exactly_once(procs, tmp_path):
    url = f"ipc://{tmp_path}/channels.db?group_history=chat.*:size=100:ttl=300"
    env = stack.env_for(url, TESTS)
    port = free_port()
    side = stack.sidecar(env, tmp_path, port)
    work = stack.worker("resume_app:routing", TESTS, env, tmp_path, threads=2)
    procs.extend([side.start(), work.start()])
    work.wait_for_log("worker serving", timeout=20)
    from wsgi_channels.layers import from_url

    layer = from_url(url)
    group = "chat.node"
    client = None
    try:
        layer.send_group(group, {"text": "before render"})
        epoch, offset = layer.group_position(group)  # what the page (here: the script) starts from
        layer.send_group(group, {"text": "between render and connect"})
        client = NodeClient(f"ws://127.0.0.1:{port}/ws/{group}", {group: {"epoch": epoch, "offset": offset}})
        client.wait_for(lambda e: e["ev"] == "resume")
        layer.send_group(group, {"text": "live"})
        client.wait_for(lambda e: e == {"ev": "message", "data": "live"})

        side.stop(signal.SIGKILL)  # no close frame: the client sees the TCP connection drop
        client.wait_for(lambda e: e["ev"] == "close")
        for i in range(5):
            layer.send_group(group, {"text": f"while down {i}"})
        # Reconnects are refused while the port is closed: Node 20 fires error without close.
        refused_at = len(client.events)
        client.wait_for(lambda e: e["ev"] == "reconnecting" and len(client.events) > refused_at + 3)
        client.wait_for(lambda e: e["ev"] == "reconnecting")
        refused = [e for e in client.events[refused_at:] if e["ev"] == "error"]
        assert len(refused) >= 2, client.events[refused_at:]

        side2 = stack.sidecar(env, tmp_path, port)
        procs.append(side2.start())
        client.wait_for(lambda e: e["ev"] == "resume", timeout=30)
        layer.send_group(group, {"text": "after"})
        client.wait_for(lambda e: e == {"ev": "message", "data": "after"})
        last = client.finish()
        messages = [e["data"] for e in client.events if e["ev"] == "message"]
        assert messages == ["between render and connect", "live"] + [f"while down {i}" for i in range(5)] + ["after"]
        resumes = [e for e in client.events if e["ev"] == "resume"]
        assert resumes == [{"ev": "resume", "group": group, "recovered": True, "reason": None}] * 2
        assert last["position"] == {"epoch": epoch, "offset": offset + 8}
        assert not [e for e in client.events if e["ev"] == "stop"]
    finally:
        if client is not None:
            client.kill()
        layer.close()
