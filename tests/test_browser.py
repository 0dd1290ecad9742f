"""In a real headless Chromium (Debian's ``chromium``, driven by Playwright from PyPI).

Playwright launches ``/usr/bin/chromium``; it never downloads a browser of its own.
A missing chromium FAILS these tests (``.ci/run`` installs it); it is never a skip.
"""
from __future__ import annotations

import os
import shutil
import signal

import pytest
import requests

import stack
from stack import EXAMPLES, env_for

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 15000


def find_chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("chromium is not installed: run `bash .ci/run` (it installs Debian's chromium) "
                       "or `apt-get install chromium`; the browser tests cannot run without it")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def procs():
    started: list = []
    yield started
    stack.stop_all(started)


@pytest.fixture
def context(browser):
    ctx = browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


def errors_of(page) -> list:
    errors: list = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_two_chat_pages_exchange_messages(procs, context, tmp_path):
    server = stack.runserver(EXAMPLES / "chat" / "chat.py", tmp_path, env_for(None))
    procs.append(server.start())
    server.wait_for_log("serving chat:app")
    url = f"http://127.0.0.1:{server.port}/chat/lobby/"
    pages = []
    second = context.browser.new_context()  # a separate cookie jar, so each page has its own session
    try:
        _chat(context, second, url, pages)
    finally:
        second.close()


def _chat(context, second, url, pages):
    for nick in ("ann", "ben"):
        page = second.new_page() if pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errs = errors_of(page)
        page.goto(url)
        page.wait_for_selector('#status[data-state="no-nick"]')
        page.fill("input[name=nick]", nick)
        page.click("#nickform button")
        page.wait_for_selector('#status[data-state="open"]')
        pages.append((page, errs))
    (ann, ann_errors), (ben, ben_errors) = pages
    ann.wait_for_selector("#log >> text=ben joined")
    # Who is in the room: the presence list, live on both pages.
    for page in (ann, ben):
        page.wait_for_function("() => [...document.querySelectorAll('#people li')].map((li) => li.dataset.user)"
                               ".join(',') === 'ann,ben'")
    ben.fill("#text", "hello from ben")
    ben.press("#text", "Enter")
    ann.wait_for_selector("#log >> text=ben: hello from ben")
    ann.fill("#text", "hi ben")
    ann.click("#say button")
    ben.wait_for_selector("#log >> text=ann: hi ben")
    # Chromium offers permessage-deflate; the sidecar agrees it without context takeover both ways,
    # and a long message goes compressed from ben's page and comes back as one shared deflated frame.
    extensions = ann.evaluate("""() => new Promise((done) => {
        const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws/chat/lobby/");
        ws.onopen = () => { done(ws.extensions); ws.close(); };
        ws.onerror = () => done("error");
    })""")
    assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions \
        and "client_no_context_takeover" in extensions, extensions
    long_line = "a long line of chat " * 50  # 1,000 characters: compressed both ways, within the chat's 2,000
    for suffix in ("once", "twice"):  # the second proves no state is carried between messages
        ben.fill("#text", long_line + suffix)
        ben.press("#text", "Enter")
        ann.wait_for_function("(text) => document.querySelector('#log').textContent.includes(text)",
                              arg="ben: " + long_line + suffix)
    ben.close()
    ann.wait_for_selector("#log >> text=ben left")
    # ben's socket closed: the sidecar removed his presence entry and ann's list dropped him.
    ann.wait_for_function("() => [...document.querySelectorAll('#people li')].map((li) => li.dataset.user)"
                          ".join(',') === 'ann'")
    assert ann_errors == [] and ben_errors == []


def test_liveblog_page_shows_a_new_post_without_reload(procs, context, tmp_path):
    server = stack.runserver(EXAMPLES / "liveblog" / "liveblog.py", tmp_path,
                             env_for(None, LIVEBLOG_DB=str(tmp_path / "blog.db")))
    procs.append(server.start())
    server.wait_for_log("serving liveblog:app")
    page = context.new_page()
    errors = errors_of(page)
    page.goto(f"http://127.0.0.1:{server.port}/")
    page.wait_for_selector('#status[data-state="open"]')
    page.evaluate("window.__marker = 'same page'")  # gone if the page reloads
    r = requests.post(f"http://127.0.0.1:{server.port}/posts", json={"title": "Pushed title", "body": "no reload"},
                      timeout=10)
    assert r.status_code == 201
    page.wait_for_selector(f"#post-{r.json()['id']} >> text=Pushed title")
    assert page.evaluate("window.__marker") == "same page"
    # Publishing from the page's own form works too (this one is a normal form post + redirect).
    other = context.new_page()
    other.goto(f"http://127.0.0.1:{server.port}/")
    other.fill("input[name=title]", "From the form")
    other.click("form button")
    page.wait_for_selector("#posts >> text=From the form")
    assert errors == []


def test_client_reconnects_after_the_sidecar_restarts(procs, context, tmp_path):
    """gunicorn serves the page, a separate sidecar the WebSocket; the sidecar is stopped and started again."""
    layer = f"ipc://{tmp_path}/channels.db"
    liveblog = EXAMPLES / "liveblog"
    side_port = stack.free_port()
    web_env = env_for(layer, liveblog, LIVEBLOG_DB=str(tmp_path / "blog.db"),
                      LIVEBLOG_WS_URL=f"ws://127.0.0.1:{side_port}/ws/liveblog/")
    web = stack.gunicorn("liveblog:app", liveblog, web_env, tmp_path, workers=1)
    work = stack.worker("liveblog:routing", liveblog, env_for(layer, liveblog), tmp_path, threads=2)
    procs.extend([web.start(), work.start()])
    origin = f"http://127.0.0.1:{web.port}"
    side_env = env_for(layer)
    side = stack.sidecar(side_env, tmp_path, side_port, "--allowed-origins", origin)
    procs.append(side.start())
    work.wait_for_log("worker serving", timeout=20)

    page = context.new_page()
    errors = errors_of(page)
    page.goto(origin + "/")
    page.wait_for_selector('#status[data-state="open"]')
    side.stop(signal.SIGTERM)  # closes sockets with 1001 "going away": a code the client retries
    page.wait_for_selector('#status[data-state="reconnecting"]')
    side2 = stack.sidecar(side_env, tmp_path, side_port, "--allowed-origins", origin)
    procs.append(side2.start())
    page.wait_for_selector('#status[data-state="open"]', timeout=30000)
    r = requests.post(origin + "/posts", json={"title": "After restart"}, timeout=10)
    assert r.status_code == 201
    page.wait_for_selector(f"#post-{r.json()['id']} >> text=After restart")
    assert errors == []


def test_two_ports_without_a_proxy_the_page_connects_with_a_signed_token(procs, context, tmp_path):
    """README's two-port setup: gunicorn on one port, the sidecar on another, no nginx, no --allowed-origins.

    The page (Flask, under gunicorn) renders ``channels.url("/ws/liveblog/")``: the sidecar's URL
    with a connect token signed with the secret both processes share; the sidecar admits the
    page's cross-origin handshake because of the token, and the group message arrives.
    """
    layer = f"ipc://{tmp_path}/channels.db"
    liveblog = EXAMPLES / "liveblog"
    side_port = stack.free_port()
    shared = {"WSGI_CHANNELS_TOKEN_SECRET": "two-ports-" + os.urandom(8).hex()}
    web = stack.gunicorn("liveblog:app", liveblog,
                         env_for(layer, liveblog, LIVEBLOG_DB=str(tmp_path / "blog.db"),
                                 WSGI_CHANNELS_SIDECAR_URL=f"http://127.0.0.1:{side_port}", **shared),
                         tmp_path, workers=2)
    work = stack.worker("liveblog:routing", liveblog, env_for(layer, liveblog), tmp_path, threads=2)
    side = stack.sidecar(env_for(layer, **shared), tmp_path, side_port)
    procs.extend([web.start(), work.start(), side.start()])
    work.wait_for_log("worker serving", timeout=20)
    origin = f"http://127.0.0.1:{web.port}"

    page = context.new_page()
    errors = errors_of(page)
    page.goto(origin + "/")
    page.wait_for_selector('#status[data-state="open"]')
    url = page.evaluate("window.liveblogSocket.url")
    assert url.startswith(f"ws://127.0.0.1:{side_port}/ws/liveblog/?_wsc_token="), url
    r = requests.post(origin + "/posts", json={"title": "Across two ports", "body": "no proxy"}, timeout=10)
    assert r.status_code == 201
    page.wait_for_selector(f"#post-{r.json()['id']} >> text=Across two ports")
    side.wait_for_log("WSCONNECT /ws/liveblog/")
    # The token is what let the page in: without it, or with it changed, the sidecar refuses (403, logged).
    open_socket = """(url) => new Promise((done) => {
        const ws = new WebSocket(url);
        ws.onopen = () => { done("open"); ws.close(); };
        ws.onclose = (e) => done(e.code);
    })"""
    assert page.evaluate(open_socket, f"ws://127.0.0.1:{side_port}/ws/liveblog/") == 1006
    side.wait_for_log("and there is no connect token (_wsc_token) to allow it")
    assert page.evaluate(open_socket, url[:-4] + ("AAAA" if not url.endswith("AAAA") else "BBBB")) == 1006
    side.wait_for_log("connect token refused: the connect token's signature is wrong")
    assert page.evaluate(open_socket, url) == "open"  # the rendered URL still works (until it expires)
    token = url.split("_wsc_token=")[1]
    assert token[:40] not in side.log() and token[:40] not in web.log()  # never logged
    assert errors == []


def test_chat_enter_before_a_nickname_keeps_the_page_and_any_room_name_works(procs, context, tmp_path):
    """The chat's Send form never reloads the page (Enter before a nickname used to), and a room
    name with spaces and punctuation is a room like any other (percent-encoded in both URLs)."""
    from urllib.parse import quote, unquote

    server = stack.runserver(EXAMPLES / "chat" / "chat.py", tmp_path, env_for(None))
    procs.append(server.start())
    server.wait_for_log("serving chat:app")
    room = "tea & cake!? #1"
    url = f"http://127.0.0.1:{server.port}/chat/{quote(room, safe='')}/"
    page = context.new_page()
    errors = errors_of(page)
    page.goto(url)
    page.wait_for_selector('#status[data-state="no-nick"]')
    assert page.inner_text("h1") == f"Room {room}"
    page.evaluate("window.__marker = 'same page'")  # gone if the page reloads
    page.fill("#text", "too early")
    page.press("#text", "Enter")
    page.wait_for_selector("#hint >> text=Choose a nickname first.")
    page.click("#say button")
    assert page.evaluate("window.__marker") == "same page" and page.url == url
    assert page.evaluate("document.activeElement.id") == "nick"
    page.fill("#nick", "ann")
    page.press("#nick", "Enter")  # the nickname form does post (and comes back to the room)
    page.wait_for_selector('#status[data-state="open"]')
    assert unquote(page.url) == unquote(url)  # back in the room (Pyramid may encode fewer characters)
    second = context.browser.new_context()
    try:
        other = second.new_page()
        other.set_default_timeout(TIMEOUT_MS)
        other_errors = errors_of(other)
        other.goto(url)
        other.fill("#nick", "ben")
        other.click("#nickform button")
        other.wait_for_selector('#status[data-state="open"]')
        page.wait_for_selector("#log >> text=ben joined")
        other.fill("#text", "hello from ben")
        other.press("#text", "Enter")
        page.wait_for_selector("#log >> text=hello from ben")
        assert page.inner_text("#log .message") == "ben: hello from ben"
        assert other.input_value("#text") == ""
        # The socket is really on the room's percent-encoded path, and the room is its own group.
        socket_url = page.evaluate("window.chatSocket.url")
        assert "%3F%20%231/" in socket_url and unquote(socket_url).endswith(f"/ws/chat/{room}/"), socket_url
        assert other_errors == []
    finally:
        second.close()
    assert errors == []
