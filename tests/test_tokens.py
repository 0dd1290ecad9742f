"""Signed connect tokens (``wsgi_channels.tokens``): the token itself, then handshakes over a real sidecar.

The sidecar tests run a real ``wsgi-channels sidecar`` process with a token secret
and a real worker (``apps.token_routing``) on an ``ipc://`` layer; clients are raw
sockets sending the ``Origin`` of another site, as a page on the app's port would.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

import faultkit as fk
import stack
from servers import free_port
from wsgi_channels import ConfigurationError, InvalidToken, TokenExpired
from wsgi_channels import tokens as t

SECRET = "app-secret-for-token-tests"
OLD_SECRET = "the-secret-before-rotation"
APP_ORIGIN = "http://127.0.0.1:8000"
NOW = 1_800_000_000


def sign(path="/ws/room/", **kw):
    kw.setdefault("now", NOW)
    return t.sign_connect_token(kw.pop("secret", SECRET), path, **kw)


# -- the token -------------------------------------------------------------------------------------

def test_round_trip_carries_every_claim():
    token = sign("/ws/room/", user_id=42, groups=["room-1", "news"], origin="HTTP://127.0.0.1:8000/",
                 max_age=120, extra={"role": "editor"})
    claims = t.verify_connect_token(token, SECRET, path="/ws/room/", origin=APP_ORIGIN, now=NOW + 119)
    assert claims == {"path": "/ws/room/", "iat": NOW, "exp": NOW + 120, "sub": 42, "groups": ["room-1", "news"],
                      "origin": APP_ORIGIN, "role": "editor"}
    assert t.verify_connect_token(sign(user_id="u-7"), SECRET, now=NOW)["sub"] == "u-7"
    assert "sub" not in t.verify_connect_token(sign(), SECRET, now=NOW)  # anonymous


def test_token_is_compact_and_url_safe():
    token = sign("/ws/room/", user_id=123456, groups=["a"], origin=APP_ORIGIN)
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token), token
    assert quote(token, safe="") == token  # travels in a query string as it is
    assert len(token) < 220, len(token)


def test_expired_token_is_refused_from_its_expiry_on():
    token = sign(max_age=60)
    t.verify_connect_token(token, SECRET, now=NOW + 59)
    for later in (NOW + 60, NOW + 3600):
        with pytest.raises(TokenExpired, match="expired") as info:
            t.verify_connect_token(token, SECRET, now=later)
        assert info.value.reason == "expired"
    assert issubclass(TokenExpired, InvalidToken) and issubclass(InvalidToken, ValueError)


def test_tampered_tokens_are_refused():
    token = sign("/ws/room/", user_id=1)
    payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = 2  # a user promoting themselves, keeping the old signature
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + mac
    flipped_mac = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    for bad in (forged, flipped_mac, payload + "." + mac[:-2]):
        with pytest.raises(InvalidToken, match="signature") as info:
            t.verify_connect_token(bad, SECRET, now=NOW)
        assert info.value.reason == "signature"
    with pytest.raises(InvalidToken, match="signature"):
        t.verify_connect_token(token, "another secret", now=NOW)


def test_the_mac_key_is_bound_to_this_purpose():
    """A plain HMAC of the payload with the app's secret (what other signers make) is no token."""
    payload = sign().split(".")[0]
    plain = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="signature"):
        t.verify_connect_token(payload + "." + plain.rstrip(b"=").decode(), SECRET, now=NOW)


def test_secrets_rotate_any_listed_secret_verifies():
    old = sign(secret=OLD_SECRET)
    assert t.verify_connect_token(old, [SECRET, OLD_SECRET], now=NOW)["path"] == "/ws/room/"
    assert t.verify_connect_token(old, t.secrets_from(f"{SECRET}\n{OLD_SECRET}\n"), now=NOW)
    with pytest.raises(InvalidToken):
        t.verify_connect_token(old, [SECRET], now=NOW)


def test_path_is_exact_or_a_prefix_pattern():
    with pytest.raises(InvalidToken, match="is for '/ws/room/', not '/ws/other/'") as info:
        t.verify_connect_token(sign("/ws/room/"), SECRET, path="/ws/other/", now=NOW)
    assert info.value.reason == "path"
    with pytest.raises(InvalidToken):
        t.verify_connect_token(sign("/ws/room/"), SECRET, path="/ws/room/x", now=NOW)
    pattern = sign("/ws/chat/*")
    for ok in ("/ws/chat/", "/ws/chat/tea & cake/"):
        t.verify_connect_token(pattern, SECRET, path=ok, now=NOW)
    with pytest.raises(InvalidToken):
        t.verify_connect_token(pattern, SECRET, path="/ws/news/", now=NOW)


def test_origin_claim_binds_browser_handshakes_to_the_page_origin():
    token = sign(origin=APP_ORIGIN)
    t.verify_connect_token(token, SECRET, origin="http://127.0.0.1:8000", now=NOW)
    t.verify_connect_token(token, SECRET, origin=None, now=NOW)  # a script: no browser cookies to ride
    with pytest.raises(InvalidToken, match="for pages of http://127.0.0.1:8000, not https://evil.example") as info:
        t.verify_connect_token(token, SECRET, origin="https://evil.example", now=NOW)
    assert info.value.reason == "origin"


def test_token_from_the_future_is_refused_beyond_the_clock_skew():
    t.verify_connect_token(sign(now=NOW + 30), SECRET, now=NOW)
    with pytest.raises(InvalidToken, match="in the future") as info:
        t.verify_connect_token(sign(now=NOW + 600), SECRET, now=NOW)
    assert info.value.reason == "clock"


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "a b.c", "é.x", b"\xff.x", "x" * 5000 + ".y", 12, None])
def test_malformed_tokens_are_clear_errors(bad):
    with pytest.raises(InvalidToken) as info:
        t.verify_connect_token(bad, SECRET, now=NOW)
    assert info.value.reason == "malformed", info.value


def test_signed_garbage_claims_are_refused():
    key = t._key(SECRET.encode())
    for claims in (b"[1]", b"not json", b'{"path": "/x"}', b'{"path": "/x", "iat": 1, "exp": true}'):
        payload = t._b64(claims)
        with pytest.raises(InvalidToken, match="claims|lacks") as info:
            t.verify_connect_token(payload + "." + t._mac(key, payload), SECRET, now=NOW)
        assert info.value.reason == "malformed"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_age": 0}, ValueError, "max_age"),
    ({"max_age": 86401}, ValueError, "max_age"),
    ({"user_id": True}, TypeError, "user_id"),
    ({"user_id": 1.5}, TypeError, "user_id"),
    ({"groups": "news"}, TypeError, "list of group names"),
    ({"groups": ["bad group!"]}, ValueError, "'bad group!' is not a group name"),
    ({"origin": "example.com"}, ValueError, "not an origin"),
    ({"extra": {"sub": 1}}, ValueError, "may not use the names sub"),
    ({"extra": {"x": object()}}, TypeError, "JSON"),
    ({"secret": ""}, ConfigurationError, "secret"),
])
def test_signing_mistakes_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        sign(**kwargs)
    with pytest.raises(ValueError, match="starting with '/'"):
        sign("ws/room/")


def test_connect_url_encodes_the_path_and_signs_what_the_sidecar_will_see():
    url = t.connect_url("http://127.0.0.1:8001/", "/ws/chat/tea & cake?/", SECRET, user_id=5, now=NOW)
    base, token = url.split("?_wsc_token=")
    assert base == "ws://127.0.0.1:8001/ws/chat/tea%20%26%20cake%3F/"
    assert t.verify_connect_token(token, SECRET, path="/ws/chat/tea & cake?/", now=NOW)["sub"] == 5
    url = t.connect_url("https://example.com/realtime", "/ws/news/", SECRET, query={"since": 3, "q": "a b"}, now=NOW)
    assert url.startswith("wss://example.com/realtime/ws/news/?since=3&q=a+b&_wsc_token=")
    token = url.rsplit("=", 1)[1]
    assert t.verify_connect_token(token, SECRET, path="/realtime/ws/news/", now=NOW)


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8001", "ftp://x", "http://", "http://h:99999", "http://h/?q=1"])
def test_bad_sidecar_urls_name_the_setting(bad):
    with pytest.raises(ConfigurationError, match="WSGI_CHANNELS_SIDECAR_URL"):
        t.sidecar_base_url(bad, "WSGI_CHANNELS_SIDECAR_URL")


def test_split_token_keeps_the_other_parameters_byte_for_byte():
    assert t.split_token(b"a=1&_wsc_token=XYZ&b=%20+&&c") == (b"a=1&b=%20+&&c", ["XYZ"])
    assert t.split_token(b"%5Fwsc_token=XYZ") == (b"", ["XYZ"])
    assert t.split_token(b"a=_wsc_token") == (b"a=_wsc_token", [])
    assert t.split_token(b"plain=1") == (b"plain=1", [])
    assert t.split_token(b"_wsc_token=a&x=1&_wsc_token=b") == (b"x=1", ["a", "b"])


def _admit(query, origin_refusal=None, secret=SECRET, origin=APP_ORIGIN, now=NOW):
    headers = [(b"host", b"127.0.0.1:8001")] + ([(b"origin", origin.encode())] if origin else [])
    return t.admit_handshake(b"/ws/room/" + (b"?" + query if query else b""), headers, origin_refusal, secret,
                             now=now)


def test_admission_rules():
    good = sign("/ws/room/", user_id=3, origin=APP_ORIGIN).encode()
    refused = "Origin http://127.0.0.1:8000 is not this site (http://127.0.0.1:8001)"
    # No token: the Origin check alone decides, as before.
    assert _admit(b"x=1") == t.Admission(b"/ws/room/?x=1")
    a = _admit(b"x=1", refused)
    assert a.refusal.startswith(refused) and "no connect token" in a.refusal and a.outcome == "token_refused"
    assert _admit(b"", refused, secret="").refusal == refused
    # A valid token admits another origin, and leaves the query string without it.
    a = _admit(b"x=1&_wsc_token=" + good, refused)
    assert a.refusal is None and a.target == b"/ws/room/?x=1" and a.claims["sub"] == 3
    assert _admit(b"_wsc_token=" + good, refused).target == b"/ws/room/"
    a = _admit(b"_wsc_token=" + good + b"&y=2&_wsc_token=" + good)
    assert a.refusal == "_wsc_token is given 2 times" and a.target == b"/ws/room/?y=2"
    # A bad token is refused even from an allowed origin: the app asked for it to be checked.
    a = _admit(b"_wsc_token=" + good[:-3] + b"abc")
    assert a.refusal.startswith("connect token refused:") and a.outcome == "token_refused"
    assert "expired" in _admit(b"_wsc_token=" + good, refused, now=NOW + 301).refusal
    # Without a secret the token cannot be checked: no claims, and no cross-origin admission.
    a = _admit(b"_wsc_token=" + good, secret="")
    assert a.refusal is None and a.claims is None and a.target == b"/ws/room/"
    assert "--token-secret" in _admit(b"_wsc_token=" + good, refused, secret="").refusal


def test_token_secret_from_flag_or_file(tmp_path):
    assert t.token_secret("s", "") == "s"
    f = tmp_path / "secret"
    f.write_text(f"{SECRET}\n{OLD_SECRET}\n")
    assert t.secrets_from(t.token_secret("", str(f))) == [SECRET, OLD_SECRET]
    with pytest.raises(ConfigurationError, match="not both"):
        t.token_secret("s", str(f))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        t.token_secret("", str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n \n")
    with pytest.raises(ConfigurationError, match="holds no secret"):
        t.token_secret("", str(tmp_path / "empty"))


# -- handshakes over a real sidecar ----------------------------------------------------------------

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def token_stack(tmp_path_factory):
    """A sidecar (secrets from a file: current and previous) and a worker running apps.token_routing."""
    tmp = tmp_path_factory.mktemp("tokens")
    layer = f"ipc://{tmp}/channels.db"
    secret_file = tmp / "token-secret"
    secret_file.write_text(f"{SECRET}\n{OLD_SECRET}\n")
    admin = free_port()
    side = stack.sidecar(stack.env_for(layer), tmp, None, "--token-secret-file", str(secret_file),
                         "--admin-bind", f"127.0.0.1:{admin}", "--ping-interval", "0")
    work = stack.worker("apps.token_routing:routing", TESTS, stack.env_for(layer, TESTS), tmp, threads=2)
    procs = [side.start(), work.start()]
    side.admin_port = admin
    try:
        work.wait_for_log("worker serving", timeout=30)
        yield side
    finally:
        stack.stop_all(procs)


def handshake(side, path, token=None, origin=APP_ORIGIN, query="a=1&b=%20"):
    client = fk.RawClient(side.port)
    q = query + (f"&_wsc_token={token}" if token is not None else "")
    status, _headers, body = client.handshake(f"{path}?{q}", host=f"127.0.0.1:{side.port}", origin=origin)
    return client, status, body


def _refused_with_log(side, path, token, expected):
    client, status, body = handshake(side, path, token)
    client.close()
    assert status == 403, body
    assert expected in body.decode()
    fk.wait_until(lambda: expected in side.log(), 5, what=f"log line with {expected!r}")
    assert re.search(r"WebSocket from 127\.0\.0\.1:\d+ refused: .*" + re.escape(expected), side.log())


def test_valid_token_opens_a_cross_origin_socket_and_reaches_the_consumer(token_stack):
    token = t.sign_connect_token(SECRET, "/ws/room/", user_id=42, groups=["room-1"], origin=APP_ORIGIN)
    client, status, _ = handshake(token_stack, "/ws/room/", token)
    assert status == 101
    op, payload = client.read_frame()
    report = json.loads(payload)
    assert report["user_id"] == 42 and report["path"] == "/ws/room/"
    assert report["claims"]["groups"] == ["room-1"] and report["claims"]["origin"] == APP_ORIGIN
    assert report["query_string"] == "a=1&b=%20"  # the token is gone, the rest byte for byte
    client.send(fk.frame(fk.OP_TEXT, b"hello"))
    later = json.loads(client.read_frame()[1])  # a later frame: the claims come from the channel session
    assert later == {"user_id": 42, "claims": report["claims"], "said": "hello"}
    client.close()


def test_token_signed_with_the_previous_secret_still_opens(token_stack):
    token = t.sign_connect_token(OLD_SECRET, "/ws/room/", user_id="old", origin=APP_ORIGIN)
    client, status, _ = handshake(token_stack, "/ws/room/", token)
    assert status == 101 and json.loads(client.read_frame()[1])["user_id"] == "old"
    client.close()


def test_expired_token_is_refused_with_403_and_a_log_line(token_stack):
    token = t.sign_connect_token(SECRET, "/ws/room/", origin=APP_ORIGIN, max_age=60, now=time.time() - 61)
    _refused_with_log(token_stack, "/ws/room/", token, "connect token refused: the connect token expired")


def test_tampered_token_is_refused_with_403_and_a_log_line(token_stack):
    token = t.sign_connect_token(SECRET, "/ws/room/", user_id=1, origin=APP_ORIGIN)
    payload, mac = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = 0
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode() + "." + mac
    _refused_with_log(token_stack, "/ws/room/", forged, "connect token refused: the connect token's signature is wrong")


def test_token_for_another_path_is_refused_with_403_and_a_log_line(token_stack):
    token = t.sign_connect_token(SECRET, "/ws/room/", origin=APP_ORIGIN)
    _refused_with_log(token_stack, "/ws/admin/", token, "is for '/ws/room/', not '/ws/admin/'")


def test_missing_token_is_refused_with_403_and_a_log_line(token_stack):
    _refused_with_log(token_stack, "/ws/room/", None, "and there is no connect token (_wsc_token) to allow it")


def test_token_used_from_another_site_is_refused(token_stack):
    token = t.sign_connect_token(SECRET, "/ws/room/", origin=APP_ORIGIN)
    client, status, body = handshake(token_stack, "/ws/room/", token, origin="https://evil.example")
    client.close()
    assert status == 403 and b"for pages of http://127.0.0.1:8000, not https://evil.example" in body


def test_garbage_tokens_never_hurt_the_sidecar(token_stack):
    for junk in ("%FF%00", "a.b", "." * 3, "x" * 5000, "%5F", ""):
        client, status, _ = handshake(token_stack, "/ws/room/", junk)
        client.close()
        assert status == 403, junk
    # Still serving, and counting the refusals apart from plain Origin refusals.
    token = t.sign_connect_token(SECRET, "/ws/room/", user_id=9, origin=APP_ORIGIN)
    client, status, _ = handshake(token_stack, "/ws/room/", token)
    assert status == 101 and json.loads(client.read_frame()[1])["user_id"] == 9
    client.close()
    metrics = fk.metrics(token_stack.admin_port)
    assert metrics['wsgi_channels_sidecar_handshakes_total{outcome="token_refused"}'] >= 6
    assert "Traceback" not in token_stack.log()


def test_same_origin_handshake_needs_no_token(token_stack):
    client, status, _ = handshake(token_stack, "/ws/room/", None, origin=f"http://127.0.0.1:{token_stack.port}")
    assert status == 101
    report = json.loads(client.read_frame()[1])
    assert report["user_id"] is None and report["claims"] is None
    client.close()


@pytest.mark.parametrize("args, message", [
    (["--token-secret", "x", "--token-secret-file", "/etc/hostname"], "not both"),
    (["--token-secret-file", "/nonexistent/secret"], "cannot be read"),
])
def test_sidecar_token_flag_mistakes_exit_3(args, message, tmp_path):
    env = stack.env_for(f"ipc://{tmp_path}/channels.db")
    done = subprocess.run([sys.executable, "-m", "wsgi_channels", "sidecar", "--bind", f"127.0.0.1:{free_port()}",
                           *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_connect_url_for_a_path_with_spaces_and_punctuation_opens(token_stack):
    url = t.connect_url(f"http://127.0.0.1:{token_stack.port}", "/ws/chat/tea & cake?/", SECRET, user_id="ann",
                        origin=APP_ORIGIN)
    target = url.split(str(token_stack.port), 1)[1]
    client = fk.RawClient(token_stack.port)
    status, _, _ = client.handshake(target, host=f"127.0.0.1:{token_stack.port}", origin=APP_ORIGIN)
    assert status == 101
    report = json.loads(client.read_frame()[1])
    assert report["path"] == "/ws/chat/tea & cake?/" and report["user_id"] == "ann" and report["query_string"] == ""
    client.close()


@pytest.mark.parametrize("front_door, secret", [
    (["flask", "--app", "apps.token_flask_app", "channels", "sidecar"], "flask-app-secret"),
    (["django", "runsidecar"], "django-site-secret"),
])
def test_framework_sidecar_commands_share_the_app_secret(front_door, secret, tmp_path):
    """`flask channels sidecar` and `manage.py runsidecar` give the sidecar the secret the app signs with."""
    port = free_port()
    env = stack.env_for(None, TESTS, TOKEN_TEST_LAYER=f"ipc://{tmp_path}/channels.db",
                        DJANGO_SETTINGS_MODULE="apps.django_token_settings")
    env.pop("WSGI_CHANNELS_TOKEN_SECRET", None)
    program = [stack.BIN / "flask"] if front_door[0] == "flask" else [sys.executable, "-m", "django"]
    side = stack.Proc([*program, *front_door[1:], "--bind", f"127.0.0.1:{port}", "--",
                       "--connect-timeout", "0.5", "--connect-timeout-accept"],
                      tmp_path / "sidecar.log", env, TESTS, port)
    if front_door[0] == "flask":  # click passes unknown options on; no "--" needed
        side.args = [a for a in side.args if a != "--"]
    side.start()
    try:
        token = t.sign_connect_token(secret, "/ws/room/", origin=APP_ORIGIN)
        client, status, body = handshake(side, "/ws/room/", token)  # no worker: accepted at the timeout
        client.close()
        assert status == 101, (body, side.log()[-2000:])
        client, status, _ = handshake(side, "/ws/room/", t.sign_connect_token("other", "/ws/room/"))
        client.close()
        assert status == 403
        assert secret not in side.log()
    finally:
        side.stop()
