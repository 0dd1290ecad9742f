"""Resume after reconnect in a real headless Chromium (the shipped client, a real sidecar and worker).

The page and the client script are served by a small HTTP server of the test (another origin,
allowed with ``--allowed-origins``); the WebSocket goes to the real sidecar. It starts from a position rendered as ``channels_position``
would, so a message published between render and connect is shown; then the sidecar restarts,
messages are published while it is down, and the page shows each exactly once, in order.
"""
from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import stack
from servers import free_port
from test_browser import TIMEOUT_MS, browser, context, errors_of, procs  # noqa: F401 (fixtures)

TESTS = stack.ROOT / "tests"

PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title>
<ul id="log"></ul><p id="status" data-state="connecting"></p>
<script type="module">
import { connect } from "/channels.js";
const log = (text) => { const li = document.createElement("li"); li.textContent = text; document.querySelector("#log").append(li); };
const socket = connect("SIDECAR/ws/chat.browser", { baseDelay: 100, maxDelay: 500, positions: POSITIONS });
socket.on("open", () => { document.querySelector("#status").dataset.state = "open"; });
socket.on("close", () => { document.querySelector("#status").dataset.state = "reconnecting"; });
socket.on("message", (data) => log("msg " + data));
socket.on("recovered", ({ group, count }) => log(`recovered ${group} ${count}`));
socket.on("gap", ({ group, reason }) => log(`gap ${group} ${reason}`));
window.resumeSocket = socket;
</script>"""


def serve_page() -> ThreadingHTTPServer:
    """A page server: ``/channels.js`` (the shipped client) and, at any other path, ``server.html``."""
    script = (stack.ROOT / "wsgi_channels" / "static" / "channels.js").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, ctype = (script, "text/javascript") if self.path == "/channels.js" else \
                (self.server.html.encode(), "text/html")
            self.send_response(200)
            self.send_header("Content-Type", ctype + "; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.html = ""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_page_resumes_from_its_rendered_position_and_after_a_sidecar_restart(procs, context, tmp_path):
    url = f"ipc://{tmp_path}/channels.db?group_history=chat.*:size=100:ttl=300"
    env = stack.env_for(url, TESTS)
    port = free_port()
    web = serve_page()
    origin = f"http://127.0.0.1:{web.server_address[1]}"
    side = stack.sidecar(env, tmp_path, port, "--allowed-origins", origin)
    work = stack.worker("resume_app:routing", TESTS, env, tmp_path, threads=2)
    procs.extend([side.start(), work.start()])
    work.wait_for_log("worker serving", timeout=20)
    from wsgi_channels.layers import from_url

    layer = from_url(url)
    try:
        group = "chat.browser"
        layer.send_group(group, {"text": "old"})
        epoch, offset = layer.group_position(group)  # what channels_position renders in the view
        layer.send_group(group, {"text": "between render and connect"})
        web.html = PAGE.replace("POSITIONS", json.dumps({group: {"epoch": epoch, "offset": offset}})).replace(
            "SIDECAR", f"ws://127.0.0.1:{port}")
        page = context.new_page()
        errors = errors_of(page)
        page.goto(origin + "/")
        page.wait_for_selector("#log >> text=recovered chat.browser 1")
        assert page.inner_text("#log").split("\n") == ["msg between render and connect", "recovered chat.browser 1"]
        layer.send_group(group, {"text": "live"})
        page.wait_for_selector("#log >> text=msg live")

        side.stop(signal.SIGTERM)  # 1001: the client reconnects
        page.wait_for_selector('#status[data-state="reconnecting"]', state="attached")
        for i in range(3):
            layer.send_group(group, {"text": f"while down {i}"})
        side2 = stack.sidecar(env, tmp_path, port, "--allowed-origins", origin)
        procs.append(side2.start())
        page.wait_for_selector("#log >> text=recovered chat.browser 3", timeout=30000)
        layer.send_group(group, {"text": "after"})
        page.wait_for_selector("#log >> text=msg after")
        assert page.inner_text("#log").split("\n") == [
            "msg between render and connect", "recovered chat.browser 1", "msg live",
            "msg while down 0", "msg while down 1", "msg while down 2", "recovered chat.browser 3", "msg after"]
        assert page.evaluate("window.resumeSocket.position('chat.browser')") == {"epoch": epoch, "offset": offset + 6}
        assert errors == []
    finally:
        layer.close()
        web.shutdown()


def test_liveblog_pages_get_every_post_once_across_a_sidecar_kill(procs, context, tmp_path):
    """The live blog example in production shape (gunicorn + sidecar + worker on the ipc:// layer), two
    pages open; the sidecar is killed with SIGKILL, posts are published while it is down, and it starts
    again on the same port: both pages show every post, none twice, with no reload."""
    from stack import EXAMPLES

    liveblog = EXAMPLES / "liveblog"
    side_port = free_port()
    env = stack.env_for(f"ipc://{tmp_path}/channels.db", liveblog, LIVEBLOG_DB=str(tmp_path / "blog.db"),
                        LIVEBLOG_WS_URL=f"ws://127.0.0.1:{side_port}/ws/liveblog/")
    web = stack.gunicorn("liveblog:app", liveblog, env, tmp_path, workers=2)
    work = stack.worker("liveblog:routing", liveblog, env, tmp_path, threads=2)
    procs.extend([web.start(), work.start()])
    origin = f"http://127.0.0.1:{web.port}"
    side = stack.sidecar(env, tmp_path, side_port, "--allowed-origins", origin)
    procs.append(side.start())
    work.wait_for_log("worker serving", timeout=20)

    def publish(title: str) -> int:
        r = requests.post(origin + "/posts", json={"title": title, "body": "resume"}, timeout=10)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    first = publish("rendered with the page")
    pages = []
    for _ in range(2):
        page = context.new_page()
        pages.append((page, errors_of(page)))
        page.goto(origin + "/")
        page.wait_for_selector('#status[data-state="open"]')
    ids = [publish("live")]
    for page, _ in pages:
        page.wait_for_selector(f"#post-{ids[0]}")

    side.stop(signal.SIGKILL)
    for page, _ in pages:
        page.wait_for_selector('#status[data-state="reconnecting"]')
    ids += [publish(f"while the sidecar is down {i}") for i in range(3)]
    side2 = stack.sidecar(env, tmp_path, side_port, "--allowed-origins", origin)
    procs.append(side2.start())
    for page, _ in pages:
        page.wait_for_selector(f"#post-{ids[-1]}", timeout=30000)
    ids.append(publish("after"))
    for page, errors in pages:
        page.wait_for_selector(f"#post-{ids[-1]}")
        # Each post came over the socket exactly once, in order; the page rendered the first itself.
        assert page.evaluate("window.liveblogReceived") == ids
        shown = page.eval_on_selector_all("#posts article", "(els) => els.map((e) => e.id)")
        assert shown == [f"post-{i}" for i in reversed([first, *ids])]
        assert page.evaluate("window.liveblogSocket.position('liveblog').offset") == len(ids) + 1
        assert errors == []
