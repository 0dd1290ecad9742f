"""The ``wsgi-channels`` command as a new user meets it: help, and bad input at start-up.

Every mistake (a bad layer URL, an unusable ipc:// file, a port already taken, a bad routing)
must end in one line on stderr naming the problem and a non-zero exit status, never a
traceback. Each case runs the real console script in a subprocess.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPT = os.path.join(os.path.dirname(sys.executable), "wsgi-channels")


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("WSGI_CHANNELS_LAYER", None)
    return subprocess.run([SCRIPT, *argv], capture_output=True, text=True, timeout=timeout, cwd=EXAMPLES, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *words: str) -> None:
    err = result.stderr
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err and "File \"" not in err, err
    last = err.strip().splitlines()[-1]
    for word in words:
        assert word in last, (word, err)


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_help_of_every_subcommand():
    top = run("--help")
    assert top.returncode == 0
    for command in ("worker", "sidecar", "runserver", "send", "group-send", "stats"):
        assert command in top.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "usage: wsgi-channels " + command in sub.stdout, sub.stderr
    missing = run()
    assert missing.returncode == 2 and "required: COMMAND" in missing.stderr


@pytest.mark.parametrize("argv", [["worker", "demo:routing"], ["sidecar"], ["runserver", "demo:app"],
                                  ["send", "chan", "{}"], ["group-send", "grp", "{}"], ["stats"]],
                         ids=lambda argv: argv[0])
def test_a_mistyped_option_shows_the_subcommands_usage(argv):
    """``wsgi-channels sidecar --bnd`` printed the top-level usage (COMMAND ...), which names no option."""
    result = run(argv[0], "--bnd=127.0.0.1:8001", *argv[1:])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"usage: wsgi-channels {argv[0]} [-h]"), result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"wsgi-channels {argv[0]}: error: unrecognized arguments: --bnd=127.0.0.1:8001", result.stderr


BAD_LAYERS = [
    ("bogus://x", "scheme must be one of"),
    ("redis://127.0.0.1:notaport/0", "notaport"),
    ("redis://127.0.0.1:6379/abc", "database 'abc'"),
    ("redis://[::1", "IPv6"),
    ("ipc:///proc/no-such-dir/channels.db", "/proc/no-such-dir"),
]


@pytest.mark.parametrize("url, words", BAD_LAYERS)
@pytest.mark.parametrize("command", [
    ["send", "chan", '{"text": "hi"}'],
    ["worker", "demo:routing"],
    ["sidecar", "--bind", "127.0.0.1:0"],
    ["runserver", "demo:app", "--routing", "demo:routing", "--bind", "127.0.0.1:0"],
])
def test_bad_layer_url_is_one_line(command, url, words):
    result = run(*command, "--layer", url)
    assert_one_line_error(result, 3, words)


def test_unreachable_redis_for_a_one_shot_command():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    url = f"redis://127.0.0.1:{port.getsockname()[1]}/0"  # bound, never listening: refused
    try:
        result = run("send", "--layer", url, "chan", '{"text": "hi"}')
    finally:
        port.close()
    assert_one_line_error(result, 4, "unavailable", url)


def test_port_in_use(taken_port, tmp_path):
    layer = f"ipc://{tmp_path}/channels.db"
    address = f"127.0.0.1:{taken_port}"
    assert_one_line_error(run("runserver", "demo:app", "--routing", "demo:routing", "--bind", address),
                          3, "cannot listen", str(taken_port))
    assert_one_line_error(run("sidecar", "--layer", layer, "--bind", address), 3, "cannot listen")
    assert_one_line_error(run("sidecar", "--layer", layer, "--bind", "127.0.0.1:0", "--admin-bind", address),
                          3, "cannot listen")
    assert_one_line_error(run("worker", "demo:routing", "--layer", layer, "--admin-bind", address),
                          3, str(taken_port))


def test_bad_routing_and_app(tmp_path):
    layer = f"ipc://{tmp_path}/channels.db"
    assert_one_line_error(run("worker", "nosuchmodule:routes", "--layer", layer), 3, "nosuchmodule")
    assert_one_line_error(run("worker", "json:dumps", "--layer", layer), 3, "routing must be a list")
    assert_one_line_error(run("runserver", "nosuchmodule:app", "--bind", "127.0.0.1:0"), 3, "nosuchmodule")
    assert_one_line_error(run("worker", "demo:routing", "--layer", "memory://"), 3, "memory://")
    assert_one_line_error(run("sidecar", "--bind", "127.0.0.1:0", "--layer", "memory://"), 3, "private to one process")
    layer = f"ipc://{tmp_path}/channels.db"
    missing_dir = tmp_path / "no" / "such" / "dir" / "s.sock"
    assert_one_line_error(run("sidecar", "--bind", f"unix:{missing_dir}", "--layer", layer), 3, str(missing_dir))
    not_a_socket = tmp_path / "precious.txt"
    not_a_socket.write_text("keep me")
    assert_one_line_error(run("sidecar", "--bind", f"unix:{not_a_socket}", "--layer", layer), 3, str(not_a_socket))
    assert not_a_socket.read_text() == "keep me", "a file that is not a socket is never removed"


def test_bad_message_and_names():
    assert_one_line_error(run("send", "--layer", "memory://", "chan", "{not json"), 2, "not valid JSON")
    assert_one_line_error(run("send", "--layer", "memory://", "chan", "[1]"), 2, "JSON object")
    assert_one_line_error(run("send", "--layer", "ipc:///tmp/wsgi_channels-cli-test.db", "bad name!", "{}"),
                          2, "bad name!")


def test_channel_globs_do_not_swallow_the_routing():
    """`--only-channels GLOB ROUTING` works: each flag takes one value (repeatable, commas allowed)."""
    from wsgi_channels.cli import build_parser
    from wsgi_channels.cli.worker import _flat

    args = build_parser().parse_args(["worker", "--only-channels", "websocket.*", "chat:routing",
                                      "--only-channels", "http.request,http.disconnect"])
    assert args.routing == "chat:routing"
    assert _flat(args.only_channels) == ["websocket.*", "http.request", "http.disconnect"]
    result = run("worker", "--exclude-channels", "websocket.*", "demo:routing", "--layer", "memory://")
    assert_one_line_error(result, 3, "memory://")  # got past argparse: ROUTING was seen


def test_flags_replace_the_environment_for_repeatable_options(monkeypatch):
    """WSGI_CHANNELS_BIND=a with --bind b listens on b only (argparse's append would keep a too)."""
    from wsgi_channels.cli import build_parser
    from wsgi_channels.cli.worker import _flat

    monkeypatch.setenv("WSGI_CHANNELS_BIND", "127.0.0.1:9000")
    monkeypatch.setenv("WSGI_CHANNELS_EXCLUDE_CHANNELS", "http.*")
    parser = build_parser()
    assert parser.parse_args(["sidecar", "--bind", "127.0.0.1:9001"]).bind == ["127.0.0.1:9001"]
    assert parser.parse_args(["sidecar"]).bind == ["127.0.0.1:9000"]
    assert _flat(parser.parse_args(["worker", "x:y"]).exclude_channels) == ["http.*"]
    assert _flat(parser.parse_args(["worker", "x:y", "--exclude-channels", "a.*"]).exclude_channels) == ["a.*"]


def test_a_bad_environment_value_only_stops_the_command_that_reads_it(tmp_path):
    layer = f"ipc://{tmp_path}/channels.db"
    env_bad = {"WSGI_CHANNELS_THREADS": "abc", "WSGI_CHANNELS_PING_INTERVAL": "soon"}
    old = {k: os.environ.get(k) for k in env_bad}
    os.environ.update(env_bad)
    try:
        assert run("send", "--layer", layer, "chan", '{"n": 1}').returncode == 0  # neither is send's
        assert_one_line_error(run("worker", "demo:routing", "--layer", layer), 2, "WSGI_CHANNELS_THREADS='abc'")
        assert_one_line_error(run("sidecar", "--layer", layer), 2, "WSGI_CHANNELS_PING_INTERVAL='soon'")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_worker_refuses_nonsense_numbers_and_levels():
    for flag, value in (("--send-timeout", "-1"), ("--grace", "abc"), ("--log-level", "loud"), ("--threads", "0")):
        result = run("worker", "demo:routing", flag, value, "--layer", "memory://")
        assert_one_line_error(result, 2, flag)


def test_unopenable_access_log_is_one_line(tmp_path):
    result = run("sidecar", "--layer", f"ipc://{tmp_path}/channels.db", "--bind", "127.0.0.1:0",
                 "--access-log", "/proc/no-such-dir/access.log")
    assert_one_line_error(result, 3, "/proc/no-such-dir/access.log")


def test_send_reads_a_message_from_stdin(tmp_path):
    """`-` takes the JSON from stdin: messages longer than one argument may be (and pipes)."""
    from wsgi_channels.layers import from_url

    url = f"ipc://{tmp_path}/channels.db"
    env = {**os.environ}
    ok = subprocess.run([SCRIPT, "send", "--layer", url, "stdin.chan", "-"], input='{"text": "piped"}',
                        capture_output=True, text=True, timeout=30, env=env)
    assert ok.returncode == 0, ok.stderr
    layer = from_url(url)
    try:
        assert layer.receive(["stdin.chan"]) == ("stdin.chan", {"text": "piped"})
    finally:
        layer.close()
    big = subprocess.run([SCRIPT, "send", "--layer", url, "stdin.chan", "-"], input='{"text": "%s"}' % ("x" * 1_100_000),
                         capture_output=True, text=True, timeout=30, env=env)
    assert_one_line_error(big, 1, "over the limit")


def test_ctrl_c_during_start_up_is_quiet(tmp_path):
    """SIGINT while the routing is still importing: exit 130 and one line, no KeyboardInterrupt traceback."""
    import signal
    import time

    marker = tmp_path / "importing"
    (tmp_path / "slow_routing.py").write_text(f"import time\nopen({str(marker)!r}, 'w').close()\n"
                                              "time.sleep(30)\nroutes = []\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen([SCRIPT, "worker", "slow_routing:routes", "--layer", f"ipc://{tmp_path}/c.db"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:  # inside the routing's import
        time.sleep(0.05)
    assert marker.exists(), "the worker never imported the routing"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err


# -- --group-history / --group-presence ---------------------------------------------------------------

FEATURE_COMMANDS = [["worker", "demo:routing"], ["sidecar", "--bind", "127.0.0.1:0"],
                    ["runserver", "demo:app", "--routing", "demo:routing", "--bind", "127.0.0.1:0"],
                    ["send", "chan", "{}"], ["group-send", "grp", "{}"], ["stats"]]


@pytest.mark.parametrize("command", FEATURE_COMMANDS, ids=lambda argv: argv[0])
def test_bad_history_or_presence_flags_stop_every_command_at_start(command, tmp_path):
    layer = ["--layer", f"ipc://{tmp_path}/channels.db"] if command[0] != "runserver" else []
    result = run(*command, *layer, "--group-history", "chat.*:size=0")
    assert_one_line_error(result, 2, "argument --group-history: group_history 'chat.*': size=0 must be from 1 to 10000")
    result = run(*command, *layer, "--group-presence", "room.*:colour=blue")
    assert_one_line_error(result, 2, "argument --group-presence: group_presence 'room.*': unknown field(s) colour")
    env = {**os.environ, "WSGI_CHANNELS_GROUP_PRESENCE": "room.*:ttl=1"}
    env.pop("WSGI_CHANNELS_LAYER", None)
    result = subprocess.run([SCRIPT, *command, *layer], capture_output=True, text=True, timeout=30, cwd=EXAMPLES,
                            env=env)
    assert_one_line_error(result, 2, "WSGI_CHANNELS_GROUP_PRESENCE='room.*:ttl=1'", "ttl=1 must be at least 5")


def test_group_send_keeps_history_with_the_flag(tmp_path):
    """The flag reaches the command's layer: its messages to a history group are numbered and kept."""
    from wsgi_channels.layers import from_url

    url = f"ipc://{tmp_path}/channels.db"
    for n in (1, 2):
        result = run("group-send", "--layer", url, "--group-history", "news.*:size=3", "news.a",
                     f'{{"text": "post {n}"}}')
        assert result.returncode == 0, result.stderr
    layer = from_url(url + "?group_history=news.*:size=3")
    try:
        page = layer.group_history("news.a", 0)
        assert (page.top, page.messages) == (2, [(1, {"text": "post 1"}), (2, {"text": "post 2"})])
    finally:
        layer.close()


def test_feature_flags_are_added_to_the_layer_url_after_its_own_items(monkeypatch):
    from wsgi_channels.cli import build_parser
    from wsgi_channels.cli.layer_options import layer_url_with_features
    from wsgi_channels.cli.sidecar import build_config

    monkeypatch.delenv("WSGI_CHANNELS_LAYER", raising=False)
    parser = build_parser()
    args = parser.parse_args(["sidecar", "--layer", "ipc:///tmp/s.db?group_history=chat.vip", "--group-history",
                              "chat.*:size=10", "--group-history", "news.* blog.*:ttl=60",
                              "--group-presence", "room.*:max_members=5:join_leave=0"])
    assert build_config(args).layer == ("ipc:///tmp/s.db?group_history=chat.vip&group_history=chat.*:size=10"
                                        "&group_history=news.*&group_history=blog.*:ttl=60"
                                        "&group_presence=room.*:max_members=5:join_leave=0")
    assert build_config(parser.parse_args(["sidecar"])).layer == ""  # no flags: the default layer, as before
    monkeypatch.setenv("WSGI_CHANNELS_GROUP_HISTORY", "a.* b.*:size=2")
    args = build_parser().parse_args(["worker", "x:y"])
    assert layer_url_with_features("redis://h:6379/0?capacity=5,redis://k:6379/0", args) == \
        "redis://h:6379/0?capacity=5,redis://k:6379/0?group_history=a.*&group_history=b.*:size=2"


def test_sidecar_max_replay_flag_environment_and_bad_value(monkeypatch):
    from wsgi_channels.cli import build_parser
    from wsgi_channels.cli.sidecar import build_config
    from wsgi_channels.exceptions import ConfigurationError

    assert build_config(build_parser().parse_args(["sidecar"])).max_replay == 1000
    assert build_config(build_parser().parse_args(["sidecar", "--max-replay", "5"])).max_replay == 5
    monkeypatch.setenv("WSGI_CHANNELS_MAX_REPLAY", "0")  # 0: a resume that missed anything is a gap
    assert build_config(build_parser().parse_args(["sidecar"])).max_replay == 0
    with pytest.raises(ConfigurationError, match="max_replay must not be negative"):
        build_config(build_parser().parse_args(["sidecar", "--max-replay", "-1"]))


def test_runserver_serves_history_groups_with_the_flag(tmp_path):
    """``wsgi-channels runserver --group-history``: the app, the worker and the sidecar share the layer."""
    import requests

    from servers import ServerProcess, free_port, wait_for_port

    tests = os.path.dirname(os.path.abspath(__file__))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": tests}
    env.pop("WSGI_CHANNELS_LAYER", None)
    proc = ServerProcess([SCRIPT, "runserver", "apps.presence_apps:position_wsgi", "--bind", f"127.0.0.1:{port}",
                          "--group-history", "chat.*:size=5"], str(tmp_path / "runserver.log"), env=env,
                         cwd=tests).start()
    try:
        wait_for_port(port, proc=proc.proc, log=proc.log_path, timeout=20)
        base = f"http://127.0.0.1:{port}"
        first = requests.get(f"{base}/", timeout=10).json()
        assert first["offset"] == 0 and len(first["epoch"]) == 8
        assert requests.post(f"{base}/", timeout=10).status_code == 204
        assert requests.get(f"{base}/", timeout=10).json() == {"epoch": first["epoch"], "offset": 1}
    finally:
        assert proc.stop() == 0


def test_runserver_serves_the_layer_the_app_folded_its_options_into(tmp_path):
    """A Flask app with ``WSGI_CHANNELS_OPTIONS`` (group history) under ``runserver``: its layer URL is
    runserver's plus the options, and runserver serves that one layer, so the app's push reaches the
    socket (before, the app pushed to a second in-memory layer no socket read)."""
    import json

    import requests
    import websocket

    from servers import ServerProcess, free_port, wait_for_port

    tests = os.path.dirname(os.path.abspath(__file__))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": tests}
    env.pop("WSGI_CHANNELS_LAYER", None)
    proc = ServerProcess([SCRIPT, "runserver", "apps.presence_apps:flask_app", "--routing",
                          "apps.presence_apps:flask_routing", "--bind", f"127.0.0.1:{port}"],
                         str(tmp_path / "runserver.log"), env=env, cwd=tests).start()
    try:
        wait_for_port(port, proc=proc.proc, log=proc.log_path, timeout=20)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/", timeout=10,
                                         origin=f"http://127.0.0.1:{port}")
        try:
            assert requests.post(f"http://127.0.0.1:{port}/post", timeout=10).status_code == 204
            assert ws.recv() == "posted"
        finally:
            ws.close()
        assert json.loads(requests.get(f"http://127.0.0.1:{port}/page", timeout=10).text)["offset"] == 1
        assert "runserver serves" not in proc.log()
    finally:
        assert proc.stop() == 0
