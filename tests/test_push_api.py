"""Channel/Group push API, get_layer (per URL, per process, per fork) and the operator commands."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import wsgi_channels
from wsgi_channels import Channel, Group, get_layer
from wsgi_channels import exceptions as exc
from wsgi_channels.channel import deferred_sends
from wsgi_channels.layers import from_url
from wsgi_channels.layers.memory import MemoryChannelLayer

CLI = [sys.executable, "-m", "wsgi_channels"]


def test_get_layer_defaults_to_the_users_ipc_store_and_caches(monkeypatch, tmp_path, caplog):
    """Nothing configured: the single-machine store every process of this user finds (it was
    memory://, where pushes from gunicorn's workers reached nobody), announced once."""
    import logging
    import tempfile

    from wsgi_channels import settings
    from wsgi_channels.layers.ipc import IpcChannelLayer

    monkeypatch.delenv("WSGI_CHANNELS_LAYER", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the store's directory: <tmp>/wsgi_channels-<uid>
    monkeypatch.setattr(settings, "_process_default", None)
    monkeypatch.setattr(settings, "_announced", False)
    with caplog.at_level(logging.INFO, logger="wsgi_channels.settings"):
        layer = get_layer()
        assert get_layer() is layer
    assert isinstance(layer, IpcChannelLayer)
    assert layer.path == str(tmp_path / f"wsgi_channels-{os.getuid()}" / "channels.db")
    assert get_layer("ipc://") is layer
    assert get_layer("memory://") is not layer
    announced = [r.getMessage() for r in caplog.records if r.name == "wsgi_channels.settings"]
    assert len(announced) == 1 and layer.path in announced[0] and "WSGI_CHANNELS_LAYER is unset" in announced[0]
    settings.set_process_default("memory://")  # what the test client does: memory:// when nothing is named
    assert isinstance(get_layer(), MemoryChannelLayer) and get_layer() is get_layer("memory://")


def test_env_var_names_default_layer(monkeypatch):
    monkeypatch.setenv("WSGI_CHANNELS_LAYER", "memory://from-env")
    assert get_layer() is get_layer("memory://from-env")


def test_bad_layer_urls_are_clear_errors():
    with pytest.raises(exc.ConfigurationError, match="unknown channel layer URL"):
        from_url("mysql://localhost")
    with pytest.raises(exc.ConfigurationError, match="only Redis URLs"):
        from_url("memory://,ipc:///tmp/x.db")
    with pytest.raises(exc.ConfigurationError, match="capacity"):
        from_url("memory://?capacity=lots")
    assert from_url("memory://?capacity=7&expiry=2.5").capacity == 7


def test_get_layer_after_fork_is_a_new_layer():
    parent = get_layer("memory://fork-test")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            child = get_layer("memory://fork-test")
            os.write(w, b"new" if child is not parent else b"same")
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 10)
    os.waitpid(pid, 0)
    assert answer == b"new"
    assert get_layer("memory://fork-test") is parent


def test_channel_and_group_send_with_names_or_objects():
    layer = MemoryChannelLayer()
    ch = Channel("push.one", layer=layer)
    group = Group("push.group", layer=layer)
    group.add(ch)
    group.add("push.two")
    assert sorted(group.channels()) == ["push.one", "push.two"]
    group.send({"text": "hello"})
    ch.send({"direct": True})
    assert layer.receive(["push.one"]) == ("push.one", {"text": "hello"})
    assert layer.receive(["push.one"]) == ("push.one", {"direct": True})
    assert layer.receive(["push.two"]) == ("push.two", {"text": "hello"})
    group.discard(ch)
    assert group.channels() == ["push.two"]
    assert str(ch) == "push.one" and Channel("push.one") == ch and repr(group) == "Group('push.group')"


def test_push_api_validates_eagerly():
    with pytest.raises(TypeError, match="channel name 'bad name'"):
        Channel("bad name")
    with pytest.raises(TypeError, match="group name 'a!b'"):
        Group("a!b")
    with pytest.raises(TypeError, match=r"message\['x'\]"):
        Channel("ok.name", layer=MemoryChannelLayer()).send({"x": object()})
    with pytest.raises(TypeError):
        Group("g", layer=MemoryChannelLayer()).add("no spaces allowed")


def test_deferred_sends_collect_copies_until_flushed():
    layer = MemoryChannelLayer()
    msg = {"n": [1]}
    with deferred_sends() as outbox:
        Channel("defer.a", layer=layer).send(msg)
        Group("defer.g", layer=layer).send({"g": 1})
        Channel("defer.now", layer=layer).send({"now": 1}, immediately=True)
        msg["n"].append(2)
        assert layer.receive(["defer.a"]) == (None, None)
        assert layer.receive(["defer.now"]) == ("defer.now", {"now": 1})
    assert [(k, n, m) for _, k, n, m in outbox] == [("send", "defer.a", {"n": [1]}), ("send_group", "defer.g", {"g": 1})]
    with pytest.raises(exc.MessageTooLarge):
        with deferred_sends():
            Channel("defer.a", layer=MemoryChannelLayer(max_message_size=100)).send({"b": b"x" * 200})


def test_a_deferred_send_is_encoded_once_and_sent_as_it_is(layer):
    # It used to be encoded (to check and copy it), decoded, and encoded again by the layer.
    from wsgi_channels.consumers.consumer import flush_sends
    from wsgi_channels.serialization import EncodedMessage, encode

    message = {"n": [1], "text": "x"}
    with deferred_sends() as outbox:
        Channel("once.a", layer=layer).send(message)
        Group("once.g", layer=layer).send({"g": 1})
    queued = [m for _, _, _, m in outbox]
    assert all(type(m) is EncodedMessage for m in queued)
    assert encode(queued[0], layer.max_message_size) is queued[0].data  # the layer takes its bytes
    assert queued[0] == message and dict(queued[0]) == message and len(queued[0]) == 2
    with pytest.raises(exc.MessageTooLarge):
        encode(queued[0], 5)  # still checked against the receiving layer's limit
    layer.group_add("once.g", "once.b")
    assert flush_sends(outbox) == 0
    assert layer.receive(["once.a"]) == ("once.a", message)
    assert layer.receive(["once.b"]) == ("once.b", {"g": 1})


def test_public_names():
    for name in ("Channel", "Group", "get_layer", "from_url", "ChannelFull", "MessageTooLarge", "LayerUnavailable"):
        assert name in wsgi_channels.__all__ and getattr(wsgi_channels, name)
    assert wsgi_channels.__version__


def run_cli(*args, env=None):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_cli_send_group_send_and_stats_over_redis(redis_server):
    layer = from_url(redis_server.url)
    layer.flush()
    layer.group_add("cli.group", "cli.member")
    r = run_cli("send", "cli.chan", '{"text": "hi", "raw": "b64:AAE="}', "--layer", redis_server.url)
    assert r.returncode == 0, r.stderr
    assert layer.receive(["cli.chan"]) == ("cli.chan", {"text": "hi", "raw": b"\x00\x01"})
    r = run_cli("group-send", "cli.group", '{"n": 1}', env={"WSGI_CHANNELS_LAYER": redis_server.url})
    assert r.returncode == 0, r.stderr
    assert layer.receive(["cli.member"]) == ("cli.member", {"n": 1})
    layer.send("cli.chan", {"pending": True})
    r = run_cli("stats", "cli.chan", "--layer", redis_server.url)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["cli.chan"]["messages_pending"] == 1
    layer.flush()
    layer.close()


def test_cli_errors_are_clear():
    r = run_cli("send", "bad name", "{}", "--layer", "ipc:///tmp/unused-by-test.db")
    assert r.returncode == 2 and "channel name 'bad name'" in r.stderr
    r = run_cli("send", "x", "[1]", "--layer", "redis://127.0.0.1:1/0")
    assert r.returncode == 2 and "JSON object" in r.stderr
    r = run_cli("send", "x", "{}", "--layer", "memory://")
    assert r.returncode == 3 and "private to one process" in r.stderr
    r = run_cli("send", "x", "{}", "--layer", "redis://127.0.0.1:1/0")
    assert r.returncode == 4 and "Traceback" not in r.stderr and "unavailable" in r.stderr


def test_pushes_held_for_a_commit_are_checked_when_queued():
    """The adapters' after-commit buffers make Group.send's caller-side checks when a push is
    queued, in the view, not after the commit in a log line."""
    from wsgi_channels.adapters._common import PushBuffer
    from wsgi_channels.exceptions import InvalidMessage

    buffer = PushBuffer("memory://")
    with pytest.raises(InvalidMessage, match="text"):
        buffer.group_send("feed", {"text": {"a": 1}})
    with pytest.raises(InvalidMessage, match="__wsc_"):
        buffer.send("news", {"__wsc_h": 1})
    buffer.group_send("feed", {"text": "fine"})
    assert len(buffer) == 1
