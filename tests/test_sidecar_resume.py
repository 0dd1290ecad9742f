"""Resume after reconnect through a real sidecar and worker on an ``ipc://`` store (issue 18).

A real ``wsgi-channels sidecar`` process and a real worker (``resume_app:routing``), real
WebSocket clients (websocket-client), the test publishing to history groups through the same
store: every message missed while disconnected arrives exactly once, in order, then the live
ones; a new epoch or a trimmed history is reported as a gap; a client that does not opt in sees
the bytes it always saw; a bad ``_wsc_r`` is refused with a 400 naming the problem.
"""
from __future__ import annotations

import json
import os
import time

import pytest
import websocket

import stack
from servers import free_port

TESTS = stack.ROOT / "tests"
OPTIONS = "group_history=chat.*:size=50:ttl=300&group_history=small.*:size=3:ttl=300&group_presence=room.*:ttl=5"


class Client:
    """A websocket-client connection that splits control frames from message frames."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=5)
        self.raw: list = []
        self.joined: list = []  # groups announced by {"t": "j"} frames (not returned by next())
        self.joins: list = []  # those frames

    def next(self, timeout: float = 5.0):
        """The next frame: ``("control", dict)``, ``("text", str)`` or ``("bytes", bytes)``."""
        self.ws.settimeout(timeout)
        while True:
            opcode, data = self.ws.recv_data()
            self.raw.append((opcode, data))
            if opcode == websocket.ABNF.OPCODE_BINARY:
                return "bytes", data
            text = data.decode()
            if text.startswith("\x00\x00"):
                return "text", text[1:]
            if not text.startswith("\x00"):
                return "text", text
            body = json.loads(text[1:])
            if body["t"] != "j":
                return "control", body
            self.joined.append(body["g"])
            self.joins.append(body)

    def join_frame(self, group: str, timeout: float = 5.0) -> dict:
        """The ``{"t": "j"}`` frame of ``group`` (waiting for it; nothing else may come first)."""
        self.ws.settimeout(timeout)
        while not any(j["g"] == group for j in self.joins):
            opcode, data = self.ws.recv_data()
            self.raw.append((opcode, data))
            body = json.loads(data[1:]) if data.startswith(b"\x00") and not data.startswith(b"\x00\x00") else None
            assert body is not None and body["t"] == "j", f"{data!r} came before the join frame of {group}"
            self.joined.append(body["g"])
            self.joins.append(body)
        return next(j for j in self.joins if j["g"] == group)

    def messages(self, n: int, timeout: float = 5.0) -> list:
        """Frames until ``n`` message frames came: ``[(position or None, payload)]`` plus controls."""
        out: list = []
        position = None
        got = 0
        while got < n:
            kind, value = self.next(timeout)
            if kind == "control" and value["t"] == "h":
                position = (value["g"], value["e"], value["o"])
                continue
            if kind == "control":
                out.append(("control", value))
                continue
            out.append((position, value))
            position = None
            got += 1
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


class ResumeStack:
    def __init__(self, tmp_path, store: str | None = None) -> None:
        self.tmp_path = tmp_path
        self.store = store or str(tmp_path / "channels.db")
        self.url = f"ipc://{self.store}?{OPTIONS}"
        self.env = stack.env_for(self.url, TESTS)
        self.port = free_port()
        self.procs: list = []

    def start(self) -> "ResumeStack":
        side = stack.sidecar(self.env, self.tmp_path, self.port, "--ping-interval", "0", "--connect-timeout", "1.5")
        work = stack.worker("resume_app:routing", TESTS, self.env, self.tmp_path)
        self.procs += [side.start(), work.start()]
        work.wait_for_log("worker serving", timeout=30)
        from wsgi_channels.layers import from_url
        self.layer = from_url(self.url)
        return self

    def stop(self) -> None:
        stack.stop_all(self.procs)
        self.procs = []
        self.layer.close()

    @property
    def sidecar(self):
        return self.procs[0]

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def publish(self, group: str, *texts: str) -> None:
        for text in texts:
            self.layer.send_group(group, {"text": text})

    def wait_members(self, group: str, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.layer.group_channels(group)) != n:
            assert time.monotonic() < deadline, f"{group} has {self.layer.group_channels(group)}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def rs(tmp_path_factory):
    s = ResumeStack(tmp_path_factory.mktemp("resume")).start()
    yield s
    s.stop()


def connect(rs, group: str, query: str = "", members: int = 1) -> Client:
    c = Client(rs.ws(f"/ws/{group}" + (f"?{query}" if query else "")))
    rs.wait_members(group, members)
    return c


def test_reconnect_with_position_gets_every_missed_message_once_in_order_then_live(rs):
    group = "chat.one"
    c = connect(rs, group, "_wsc=1")
    rs.publish(group, "a1", "a2")
    got = c.messages(2)
    assert [v for _, v in got] == ["a1", "a2"]
    assert c.joined == [group]  # joined without a resume: announced at the accept
    (g, epoch, last) = got[-1][0]
    assert g == group and got[0][0][2] == last - 1
    c.close()
    rs.wait_members(group, 0)
    rs.publish(group, *[f"b{i}" for i in range(20)])  # while nobody is connected
    c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
    got = c.messages(20)
    controls = [v for k, v in got if k == "control"]
    payloads = [v for k, v in got if k != "control"]
    offsets = [k[2] for k, v in got if k != "control"]
    assert payloads == [f"b{i}" for i in range(20)]
    assert offsets == list(range(last + 1, last + 21))
    kind, value = c.next()
    assert kind == "control" and value == {"t": "recovered", "g": group, "e": epoch, "o": last + 20, "n": 20}, value
    assert not controls
    rs.publish(group, "live1", "live2")
    assert [v for _, v in c.messages(2)] == ["live1", "live2"]
    c.close()


def test_a_socket_that_left_before_any_message_resumes_from_its_join_position(rs):
    """The join frame carries the group's position at the membership: a client that joined and
    dropped before any message of the group resumes from it, with exactly what it missed."""
    group = "chat.early"
    rs.publish(group, "before1", "before2")  # published before the join: never delivered to it
    c = connect(rs, group, "_wsc=1")
    joined = c.join_frame(group)
    epoch, offset = rs.layer.group_position(group)
    assert joined == {"t": "j", "g": group, "e": epoch, "o": offset} and offset == 2
    c.close()
    rs.wait_members(group, 0)
    rs.publish(group, *[f"m{i}" for i in range(5)])
    c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{joined['e']}:{joined['o']}"))
    got = c.messages(5)
    assert [v for k, v in got if k != "control"] == [f"m{i}" for i in range(5)]
    assert [k[2] for k, v in got if k != "control"] == [3, 4, 5, 6, 7]
    assert not [v for k, v in got if k == "control"]
    kind, value = c.next()
    assert kind == "control" and value == {"t": "recovered", "g": group, "e": epoch, "o": 7, "n": 5}, value
    rs.publish(group, "live")
    assert c.messages(1) == [((group, epoch, 8), "live")]
    c.close()


def test_messages_published_during_the_resume_are_merged_exactly_once(rs):
    """Publish continuously while clients reconnect: every offset exactly once, in order."""
    import threading

    group = "chat.merge"
    c = connect(rs, group, "_wsc=1")
    rs.publish(group, "m0")
    (_, epoch, last) = c.messages(1)[0][0]
    c.close()
    rs.wait_members(group, 0)
    stop = threading.Event()
    sent: list = []

    def publisher() -> None:
        from wsgi_channels.layers import from_url
        layer = from_url(rs.url)
        i = 1
        while not stop.is_set() and i <= 40:
            layer.send_group(group, {"text": f"m{i}"})
            sent.append(i)
            i += 1
            time.sleep(0.005)
        layer.close()

    rs.publish(group, "m-missed")
    t = threading.Thread(target=publisher)
    t.start()
    c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
    t.join(10)
    total = 1 + len(sent)
    got = c.messages(total)
    payloads = [v for k, v in got if k != "control"]
    offsets = [k[2] for k, v in got if k != "control"]
    assert offsets == list(range(last + 1, last + 1 + total)), offsets
    assert len(set(payloads)) == total and payloads[0] == "m-missed"
    assert sorted(payloads[1:], key=lambda s: int(s[1:])) == payloads[1:]
    assert any(v.get("t") == "recovered" for k, v in got if k == "control") or c.next()[1]["t"] == "recovered"
    c.close()


def test_trimmed_history_is_a_gap_never_a_recovery(rs):
    group = "small.trim"
    c = connect(rs, group, "_wsc=1")
    rs.publish(group, "x1")
    (_, epoch, last) = c.messages(1)[0][0]
    c.close()
    rs.wait_members(group, 0)
    rs.publish(group, *[f"y{i}" for i in range(6)])  # size=3: y0..y2 are gone
    c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
    kind, value = c.next()
    assert kind == "control" and value == {"t": "gap", "g": group, "why": "trimmed", "e": epoch, "o": last + 6}
    rs.publish(group, "after")
    got = c.messages(1)
    assert got == [((group, epoch, last + 7), "after")]
    c.close()


def test_unknown_epoch_is_a_gap(rs):
    group = "chat.epoch"
    c = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:AAAAAAAA:3"))
    kind, value = c.next()
    assert kind == "control" and value["t"] == "gap" and value["why"] == "epoch" and value["e"] != "AAAAAAAA"
    c.close()


def test_a_client_that_does_not_opt_in_sees_unchanged_bytes(rs):
    group = "chat.raw"
    c = connect(rs, group, "hello=1")
    kind, value = c.next()
    assert (kind, value) == ("text", "query=hello=1")
    rs.publish(group, "plain", "\x00starts-with-nul")
    frames = [c.ws.recv_data(), c.ws.recv_data()]
    assert frames == [(websocket.ABNF.OPCODE_TEXT, b"plain"), (websocket.ABNF.OPCODE_TEXT, b"\x00starts-with-nul")]
    c.ws.send_binary(b"\x00\x01")
    assert c.ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"\x00\x01")
    c.close()


def test_opted_in_client_gets_app_nul_text_escaped_and_binary_unchanged(rs):
    group = "chat.esc"
    c = connect(rs, group, "_wsc=1&hello=1&_wsc_future=x")
    assert c.next() == ("text", "query=hello=1")  # no _wsc* reached the consumer
    c.ws.send("\x00app")
    assert c.next() == ("text", "\x00app")
    assert c.raw[-1][1] == b"\x00\x00app"
    c.ws.send_binary(b"\x00{}")
    assert c.next() == ("bytes", b"\x00{}")
    c.close()
    time.sleep(0.2)
    log = rs.sidecar.log()
    assert "WSCONNECT /ws/chat.esc" in log and "_wsc" not in log, log[-2000:]


@pytest.mark.parametrize("value, words", [
    ("chat.x", "GROUP:EPOCH:OFFSET"),
    ("chat.x:e!:1", "is not an epoch"),
    ("chat.x:AAAA:-1", "not an integer"),
    ("bad group:AAAA:1", "not a group name"),
    ("chat.x:AAAA:1,chat.x:AAAA:2", "given twice"),
])
def test_bad_resume_parameter_is_refused_with_400_naming_it(rs, value, words):
    from urllib.parse import quote
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(rs.ws(f"/ws/chat.bad?_wsc_r={quote(value)}"), timeout=5)
    assert info.value.status_code == 400
    assert words in info.value.resp_body.decode(), info.value.resp_body
    assert rs.sidecar.running


def test_new_store_after_a_restart_is_a_gap(tmp_path):
    """The sidecar, worker and store restart (a fresh ipc store): the old position is reported as a gap."""
    store = str(tmp_path / "store" / "channels.db")
    os.makedirs(os.path.dirname(store))
    s = ResumeStack(tmp_path, store).start()
    try:
        group = "chat.restart"
        c = connect(s, group, "_wsc=1")
        s.publish(group, "before")
        (_, epoch, last) = c.messages(1)[0][0]
        c.close()
    finally:
        s.stop()
    for name in os.listdir(os.path.dirname(store)):
        path = os.path.join(os.path.dirname(store), name)
        if os.path.isfile(path):
            os.unlink(path)
    s = ResumeStack(tmp_path, store).start()
    try:
        s.publish(group, "new1")
        c = Client(s.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
        kind, value = c.next()
        assert kind == "control" and value["t"] == "gap" and value["why"] == "epoch", value
        assert value["e"] != epoch and value["o"] == 1
        c.close()
    finally:
        s.stop()


def test_resuming_a_group_the_socket_never_joins_is_a_gap_after_the_connect_timeout(rs):
    c = Client(rs.ws("/ws/chat.joined?_wsc_r=chat.other:AAAAAAAA:5"))
    t0 = time.monotonic()
    kind, value = c.next(timeout=5)
    assert (kind, value) == ("control", {"t": "gap", "g": "chat.other", "why": "not-joined"})
    assert 1.0 < time.monotonic() - t0 < 3.5
    assert c.joined == ["chat.joined"]
    c.close()


@pytest.mark.parametrize("target, kept, opted_in, resume", [
    (b"/ws/x", b"/ws/x", False, {}),
    (b"/ws/x?a=1&_wsc=1&b=2", b"/ws/x?a=1&b=2", True, {}),
    (b"/ws/x?_wsc_r=chat.a:Ep-_1:0,chat.b:E:12&_wsc_r=c:F:3", b"/ws/x", True,
     {"chat.a": ("Ep-_1", 0), "chat.b": ("E", 12), "c": ("F", 3)}),
    (b"/ws/x?%5Fwsc=1&_wsc_new=zz&x=%5Fwsc", b"/ws/x?x=%5Fwsc", True, {}),
])
def test_split_options_removes_every_wsc_parameter(target, kept, opted_in, resume):
    from wsgi_channels.sidecar.resume import split_options

    out, options = split_options(target)
    assert (out, options.opted_in, options.resume) == (kept, opted_in, resume)


@pytest.mark.parametrize("query, words", [
    (b"_wsc=yes", "use _wsc=1"),
    (b"_wsc_r=" + b",".join(b"g%d:E:1" % i for i in range(33)), "more than 32 groups"),
    (b"_wsc_r=g:E:99999999999999999999", "not an integer"),
    (b"_wsc_r=g:" + b"E" * 17 + b":1", "is not an epoch"),
])
def test_split_options_names_a_bad_value(query, words):
    from wsgi_channels.sidecar.resume import split_options

    with pytest.raises(ValueError, match=words):
        split_options(b"/ws/x?" + query)


def test_many_clients_resuming_at_once_each_get_every_missed_message_once(rs):
    """100 sockets reconnect together (as after a sidecar restart): their history reads are coalesced,
    and each gets the 30 missed messages exactly once, in order, then recovered."""
    from concurrent.futures import ThreadPoolExecutor

    group = "chat.many"
    c = connect(rs, group, "_wsc=1")
    rs.publish(group, "seed")
    (_, epoch, last) = c.messages(1)[0][0]
    c.close()
    rs.wait_members(group, 0)
    rs.publish(group, *[f"n{i}" for i in range(30)])

    def resume(_):
        client = Client(rs.ws(f"/ws/{group}?_wsc_r={group}:{epoch}:{last}"))
        try:
            got = client.messages(30, timeout=10)
            return [k[2] for k, v in got if k != "control"], client.next(timeout=10)
        finally:
            client.close()

    with ThreadPoolExecutor(100) as pool:
        results = list(pool.map(resume, range(100)))
    for offsets, final in results:
        assert offsets == list(range(last + 1, last + 31))
        assert final == ("control", {"t": "recovered", "g": group, "e": epoch, "o": last + 30, "n": 30})
