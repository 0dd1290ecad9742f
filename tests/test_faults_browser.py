"""The shipped browser client, in a real Chromium, through a Redis that comes back empty.

The liveblog example in production shape (gunicorn + sidecar + worker on a Redis
with no persistence). Redis is SIGKILLed and started again empty: the page's
group membership is gone, the sidecar notices and closes the socket with 1012,
and the client (``wsgi_channels/static/channels.js``) reconnects by itself; its
connect consumer rejoins the group, so the next post appears without a reload.
"""
from __future__ import annotations

import signal
import time

import pytest
import requests

import stack
from servers import RedisServer
from stack import EXAMPLES, env_for
from test_browser import CHROMIUM_ARGS, TIMEOUT_MS, find_chromium


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            ctx = browser.new_context()
            ctx.set_default_timeout(TIMEOUT_MS)
            yield ctx.new_page()
        finally:
            browser.close()


def test_browser_client_rejoins_after_redis_comes_back_empty(page, tmp_path):
    redis_server = RedisServer().start()
    liveblog = EXAMPLES / "liveblog"
    side_port = stack.free_port()
    procs: list = []
    try:
        layer = redis_server.url
        web = stack.gunicorn("liveblog:app", liveblog, env_for(layer, liveblog, LIVEBLOG_DB=str(tmp_path / "b.db"),
                             LIVEBLOG_WS_URL=f"ws://127.0.0.1:{side_port}/ws/liveblog/"), tmp_path, workers=1)
        work = stack.worker("liveblog:routing", liveblog, env_for(layer, liveblog), tmp_path, threads=2)
        origin = f"http://127.0.0.1:{web.port}"
        side = stack.sidecar(env_for(layer), tmp_path, side_port, "--allowed-origins", origin)
        for p in (web, work, side):
            procs.append(p.start())
        work.wait_for_log("worker serving", timeout=20)
        errors: list = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(origin + "/")
        page.wait_for_selector('#status[data-state="open"]')
        page.evaluate("() => { window.__closes = []; "
                      "window.liveblogSocket.on('close', (d) => window.__closes.push(d.code)); }")
        r = requests.post(origin + "/posts", json={"title": "Before"}, timeout=10)
        page.wait_for_selector(f"#post-{r.json()['id']} >> text=Before")

        redis_server.stop(signal.SIGKILL)
        time.sleep(0.5)
        redis_server.start()  # empty: the page's group membership is gone
        deadline = time.monotonic() + 20
        closes: list = []
        while 1012 not in closes and time.monotonic() < deadline:
            page.wait_for_timeout(100)
            closes = page.evaluate("() => window.__closes")
        assert 1012 in closes, f"the sidecar did not close with 1012 (closes seen: {closes})"
        page.wait_for_selector('#status[data-state="open"]', timeout=20000)
        # The connect consumer ran again: a new post reaches the page without a reload.
        deadline = time.monotonic() + 20
        post = None
        while time.monotonic() < deadline:
            resp = requests.post(origin + "/posts", json={"title": "After empty restart"}, timeout=10)
            if resp.status_code == 201:
                post = resp.json()
                break
            time.sleep(0.2)
        assert post is not None, "gunicorn could not publish after Redis came back"
        page.wait_for_selector(f"#post-{post['id']} >> text=After empty restart", timeout=15000)
        assert errors == []
        assert side.running and work.running and web.running
    finally:
        stack.stop_all(procs)
        redis_server.stop()
