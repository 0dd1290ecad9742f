"""With nothing configured, every process uses the same store; and which layer wins when several are named.

Issue 20's first silent failure: with ``WSGI_CHANNELS_LAYER`` missing, the app pushed into its own
``memory://`` and nothing ever arrived. Now gunicorn's workers, the sidecar and the worker all take
the user's single-machine store (``ipc://``) when nothing names a layer. Each test points the
processes' temporary directory (``TMPDIR``, where that store lives) at its own directory, so it
never shares a store with another test or with a developer's running stack.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import requests
import websocket

import stack
from stack import EXAMPLES, env_for
from wsgi_channels.layers import from_url

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def procs():
    started: list = []
    yield started
    stack.stop_all(started)


@pytest.fixture
def private_tmp():
    """A short temporary directory for the processes: the store's wake-up sockets live under it, and
    a Unix socket path holds at most 107 bytes (pytest's tmp_path is too deep for them)."""
    directory = Path(tempfile.mkdtemp(prefix="wsc-", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_gunicorn_sidecar_and_worker_meet_with_no_layer_setting(procs, tmp_path, private_tmp):
    """``gunicorn -w 4`` + ``wsgi-channels sidecar`` + ``wsgi-channels worker`` on one machine, no Redis
    and no WSGI_CHANNELS_LAYER anywhere: a post made through any gunicorn worker reaches the socket."""
    liveblog = EXAMPLES / "liveblog"
    tmp = private_tmp
    env = env_for(None, liveblog, LIVEBLOG_DB=str(tmp_path / "blog.db"), TMPDIR=str(tmp))
    assert "WSGI_CHANNELS_LAYER" not in env
    web = stack.gunicorn("liveblog:app", liveblog, env, tmp_path, workers=4)
    work = stack.worker("liveblog:routing", liveblog, env, tmp_path, threads=2)
    side = stack.sidecar(env, tmp_path)
    procs.extend([web.start(), work.start(), side.start()])
    work.wait_for_log("worker serving", timeout=20)
    store = tmp / f"wsgi_channels-{os.getuid()}" / "channels.db"
    for proc in (work, side):  # each says once which store it took, and it is the same one
        proc.wait_for_log(f"using ipc://, the single-machine store {store}", timeout=10)
    assert store.is_file()

    sock = websocket.create_connection(f"ws://127.0.0.1:{side.port}/ws/liveblog/", timeout=10)
    try:
        time.sleep(0.3)  # the connect consumer adds the socket to the group; the 101 may come first
        ids = set()
        for i in range(8):  # sync workers: the posts land on several of the four processes
            r = requests.post(f"http://127.0.0.1:{web.port}/posts", json={"title": f"post {i}"}, timeout=10)
            assert r.status_code == 201, r.text
            ids.add(r.json()["id"])
        got = {json.loads(sock.recv())["id"] for _ in ids}
        assert got == ids
    finally:
        sock.close()


APP = '''
import os

from flask import Flask

from wsgi_channels.adapters.flask import Channels, routing_for

channels = Channels()
app = Flask(__name__)
if os.environ.get("APP_LAYER"):
    app.config["WSGI_CHANNELS_LAYER"] = os.environ["APP_LAYER"]
channels.init_app(app)


@channels.consumer("precedence.ping")
def ping(message):
    message.reply_channel.send({"pong": True})


routing = routing_for(app)
'''


def _answers(url: str, timeout: float = 15.0) -> bool:
    """Whether a worker serves ``precedence.ping`` on the layer at ``url``."""
    layer = from_url(url)
    try:
        reply = layer.new_channel("precedence.reply?")
        deadline = time.monotonic() + timeout
        layer.send("precedence.ping", {"reply_channel": reply})
        while time.monotonic() < deadline:
            channel, message = layer.receive([reply], block=True, timeout=1)
            if channel is not None:
                return message == {"pong": True}
        return False
    finally:
        layer.flush()
        layer.close()


@pytest.mark.parametrize("command", ["wsgi-channels worker", "flask channels worker"])
def test_the_worker_serves_the_apps_layer_over_the_environment_and_a_flag_over_both(procs, tmp_path, private_tmp,
                                                                                   command):
    """Which wins when several name a layer: ``--layer`` > the app's own setting (``routing_for(app)``
    carries it) > ``WSGI_CHANNELS_LAYER`` > the default. Before, the worker read only the flag and the
    environment, so an app configured in ``app.config`` pushed where no worker listened."""
    (tmp_path / "precedence_app.py").write_text(textwrap.dedent(APP))
    app_layer, env_layer, flag_layer = (f"ipc://{tmp_path}/{name}.db" for name in ("app", "env", "flag"))
    env = env_for(env_layer, tmp_path, APP_LAYER=app_layer, TMPDIR=str(private_tmp),
                  FLASK_APP="precedence_app")
    if command == "wsgi-channels worker":
        argv = [stack.PY, "-m", "wsgi_channels", "worker", "precedence_app:routing", "--threads", "1"]
    else:
        argv = [stack.BIN / "flask", "channels", "worker", "--threads", "1"]
    worker = stack.Proc(argv, tmp_path / "worker-app.log", env, tmp_path)
    procs.append(worker.start())
    worker.wait_for_log("worker serving", timeout=20)
    assert f"WSGI_CHANNELS_LAYER={env_layer!r} is not used: the app's own setting names the layer " \
           f"{app_layer!r}" in worker.log()
    assert _answers(app_layer)
    assert not _answers(env_layer, timeout=2)
    worker.stop()

    flagged = stack.Proc(argv + ["--layer", flag_layer], tmp_path / "worker-flag.log", env, tmp_path)
    procs.append(flagged.start())
    flagged.wait_for_log("worker serving", timeout=20)
    assert _answers(flag_layer)
    assert not _answers(app_layer, timeout=2)
