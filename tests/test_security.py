"""Security: unguessable reply channels, clients that try to steer the sidecar, cross-site
WebSockets, Redis with a password and over TLS, encrypted messages with key rotation, no
traceback or secret reaching a client, proxy headers only when configured.

Real processes throughout: redis-server (plain, with ``requirepass``, and with a TLS port
and a certificate made at test time with ``cryptography``), the sidecar, the worker.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
import requests

import faultkit as fk
import stack
from fault_app import SECRET
from servers import RedisServer, free_port
from wsgi_channels.exceptions import ChannelsError, LayerUnavailable
from wsgi_channels.layers import from_url
from wsgi_channels.layers.names import new_process_prefix

PASSWORD = "pw-4b8e1c0d9a77-never-shown"


@pytest.fixture
def redis_url():
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def sidecar_and_app(redis_url, tmp_path):
    """A sidecar process on Redis with the test acting as the app (every message it sees)."""
    consumer = fk.LayerConsumer(redis_url).start()
    admin = free_port()
    side = stack.sidecar(stack.env_for(redis_url), tmp_path, None, "--admin-bind", f"127.0.0.1:{admin}",
                         "--ping-interval", "0", "--allowed-origins", "https://app.example").start()
    side.admin_port = admin
    yield side, consumer
    side.stop()
    consumer.stop()


# -- reply channels ---------------------------------------------------------------------------------

def _token_bits(token: str) -> float:
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), token
    return len(token) * 6  # one URL-safe base64 character = 6 bits


def test_reply_channel_names_carry_at_least_72_bits_from_a_csprng(sidecar_and_app):
    side, consumer = sidecar_and_app
    clients = [fk.RawClient(side.port) for _ in range(20)]
    for c in clients:
        assert c.handshake("/names")[0] == 101
    fk.wait_until(lambda: len(consumer.connects) == 20, 10, what="connects")
    names = list(consumer.connects)
    prefixes = {n.split("!")[0] for n in names}
    assert len(prefixes) == 1  # one process prefix; the part after "!" only routes inside it
    token = prefixes.pop().split(".", 1)[1]
    assert _token_bits(token) >= 72, names[0]
    for c in clients:
        c.close()
    # The same RNG seed in two processes still gives different names: a CSPRNG, not `random`.
    code = ("import random; random.seed(0); from wsgi_channels.layers.names import new_process_prefix; "
            "from wsgi_channels.layers.memory import MemoryChannelLayer; "
            "print(new_process_prefix('sidecar'), MemoryChannelLayer().new_channel('http.response?'))")
    env = dict(os.environ, PYTHONHASHSEED="0")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30).stdout
            for _ in range(2)]
    assert runs[0].strip() and runs[0] != runs[1], runs


def test_new_channel_and_prefix_tokens_look_uniform():
    layer = from_url("memory://")
    tokens = [layer.new_channel("x?")[2:] for _ in range(4000)] + \
        [new_process_prefix("p")[2:-1] for _ in range(1000)]
    assert len(set(tokens)) == len(tokens)
    assert min(_token_bits(t) for t in tokens) >= 72
    counts = Counter("".join(tokens))
    expected = sum(counts.values()) / 64
    chi2 = sum((counts.get(ch, 0) - expected) ** 2 / expected
               for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert chi2 < 63 + 6 * math.sqrt(2 * 63), chi2  # 63 degrees of freedom, six standard deviations


def test_a_forked_child_never_reuses_its_parents_random_bytes():
    """Tokens come from a pool of os.urandom bytes; gunicorn forks after import, so a child that
    kept its parent's pool would hand out the names the parent hands out next."""
    from wsgi_channels.layers.names import new_local_channel

    new_local_channel("p.x!")  # the parent's pool now holds unused bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, " ".join(new_local_channel("p.x!") for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_local_channel("p.x!") for _ in range(50)}
    assert len(child) == 50 and not child & parent, (sorted(child)[:3], sorted(parent)[:3])


def test_a_client_cannot_make_the_sidecar_send_to_a_channel_it_does_not_own(sidecar_and_app, redis_url):
    side, consumer = sidecar_and_app
    victim = fk.RawClient(side.port)
    assert victim.handshake("/victim")[0] == 101
    fk.wait_until(lambda: len(consumer.connects) == 1, 10, what="victim connect")
    victim_channel = consumer.connects[0]
    attacker = fk.RawClient(side.port)
    status, _, _ = attacker.handshake(f"/ws?reply_channel={victim_channel}&channel=http.request",
                                      extra=(f"Reply-Channel: {victim_channel}", "X-Channel: websocket.connect"))
    assert status == 101
    fk.wait_until(lambda: len(consumer.connects) == 2, 10, what="attacker connect")
    attacker_channel = consumer.connects[1]
    assert attacker_channel != victim_channel
    for payload in (json.dumps({"reply_channel": victim_channel, "text": "steal"}).encode(),
                    json.dumps({"__asgi_channel__": victim_channel, "accept": True}).encode()):
        attacker.send(fk.frame(fk.OP_TEXT, payload))
        attacker.send(fk.frame(fk.OP_BINARY, payload))
    import msgpack

    attacker.send(fk.frame(fk.OP_BINARY, msgpack.packb({"__asgi_channel__": victim_channel, "text": "x"})))
    # Everything the attacker sent came back to the attacker (the echo) and only to it.
    echoes = [attacker.read_frame() for _ in range(5)]  # the app echoes text and bytes
    assert all(op in (fk.OP_TEXT, fk.OP_BINARY) for op, _ in echoes)
    victim.sock.settimeout(1.0)
    with pytest.raises(OSError):
        victim.read_frame()  # the victim got nothing
    # No message reached a channel other than the app's own ones.
    layer = from_url(redis_url)
    try:
        for name in ("http.request", victim_channel, "websocket.connect"):
            assert layer.channel_statistics(name)["messages_pending"] == 0, name
    finally:
        layer.close()
    attacker.close()
    victim.close()


# -- cross-site WebSockets ---------------------------------------------------------------------

@pytest.mark.parametrize("origin, allowed", [
    ("https://app.example", True),
    ("https://APP.example:443", True),
    ("http://app.example", False),                # scheme matters
    ("https://app.example:8443", False),           # port matters
    ("https://app.example.evil.com", False),       # suffix tricks
    ("https://evil.example", False),
    ("null", False),                               # sandboxed iframes, file://
])
def test_origin_allow_list(sidecar_and_app, origin, allowed):
    side, consumer = sidecar_and_app
    c = fk.RawClient(side.port)
    try:
        status, _, body = c.handshake("/origin", origin=origin)
    finally:
        c.close()
    assert status == (101 if allowed else 403), body
    if not allowed:
        fk.wait_until(lambda: True, 0.3)
        assert consumer.connects == [], "a refused handshake must never reach the app"


def test_cross_site_refused_by_default(redis_url, tmp_path):
    side = stack.sidecar(stack.env_for(redis_url), tmp_path, None, "--ping-interval", "0",
                         "--connect-timeout", "0.3", "--connect-timeout-accept").start()
    try:
        c = fk.RawClient(side.port)
        # A browser sets Host from the URL it connects to, so a page of another site cannot make
        # Host and Origin agree; only the same site (same scheme, host and port) passes.
        for host, origin, expected in (
            (f"127.0.0.1:{side.port}", "http://evil.example", 403),
            (f"127.0.0.1:{side.port}", f"https://127.0.0.1:{side.port}", 403),   # scheme differs
            (f"127.0.0.1:{side.port}", "http://127.0.0.1:1", 403),               # port differs
            (f"127.0.0.1:{side.port}", f"http://127.0.0.1:{side.port}", 101),
            ("app.example", "http://app.example", 101),
        ):
            c = fk.RawClient(side.port)
            status, _, _ = c.handshake("/x", host=host, origin=origin)
            c.close()
            assert status == expected, (host, origin)
    finally:
        side.stop()


def test_subdomain_wildcard_in_the_allow_list(redis_url, tmp_path):
    """``--allowed-origins 'http://*.example.com'`` used to be accepted and match only itself."""
    consumer = fk.LayerConsumer(redis_url).start()
    side = stack.sidecar(stack.env_for(redis_url), tmp_path, None, "--ping-interval", "0",
                         "--allowed-origins", "http://*.example.com", "https://app.example").start()
    try:
        for origin, expected in (
            ("http://chat.example.com", 101),
            ("http://a.b.example.com", 101),
            ("http://example.com", 403),              # the domain itself is not a subdomain
            ("http://evil-example.com", 403),         # suffix tricks
            ("http://example.com.evil.example", 403),
            ("http://chatexample.com", 403),
            ("https://chat.example.com", 403),        # scheme matters
            ("http://chat.example.com:8080", 403),    # port matters
            ("http://*.example.com", 403),            # the pattern is not an origin
            ("https://app.example", 101),
        ):
            c = fk.RawClient(side.port)
            status, _, _ = c.handshake("/wildcard", origin=origin)
            c.close()
            assert status == expected, origin
        fk.wait_until(lambda: len(consumer.connects) == 3, 5)
        assert len(consumer.connects) == 3, "only the allowed handshakes reached the app"
    finally:
        side.stop()
        consumer.stop()


@pytest.mark.parametrize("pattern", ["http://*", "https://a*.example.com", "https://*.*.example.com", "*.example.com"])
def test_an_origin_pattern_that_cannot_work_is_refused_at_start(tmp_path, pattern):
    from wsgi_channels.exitcodes import EXIT_CONFIG

    result = subprocess.run([sys.executable, "-m", "wsgi_channels", "sidecar", "--layer",
                             f"ipc://{tmp_path / 'layer.db'}", "--allowed-origins", pattern],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "allowed origin" in result.stderr and pattern in result.stderr


# -- proxy headers -----------------------------------------------------------------------------

@pytest.mark.parametrize("trusted", [False, True])
def test_proxy_headers_trusted_only_when_configured(redis_url, tmp_path, trusted):
    layer = from_url(redis_url)
    side = stack.sidecar(stack.env_for(redis_url), tmp_path, None, "--ping-interval", "0",
                         "--connect-timeout", "0.5", "--connect-timeout-accept",
                         *(["--proxy-headers"] if trusted else [])).start()
    try:
        c = fk.RawClient(side.port)
        assert c.handshake("/p", extra=("X-Forwarded-For: 6.6.6.6, 10.9.8.7", "X-Forwarded-Proto: https",
                                        "X-Forwarded-Port: 4443"))[0] == 101
        channel, m = layer.receive(["websocket.connect"], block=True, timeout=5)
        assert channel == "websocket.connect"
        c.close()
        if trusted:
            assert m["client"] == ["10.9.8.7", 4443] and m["scheme"] == "wss"
        else:
            assert m["client"][0] == "127.0.0.1" and m["scheme"] == "ws"
        http = requests.get(f"http://127.0.0.1:{side.port}/_health", headers={"X-Forwarded-For": "1.2.3.4"},
                            timeout=5)
        assert http.status_code == 200
    finally:
        side.stop()
        layer.flush()
        layer.close()


# -- no traceback, stack frame or secret reaches a client ----------------------------------------

LEAKS = ("Traceback", 'File "', SECRET, "RuntimeError", PASSWORD)


def test_app_failures_reach_clients_without_tracebacks_or_secrets(redis_url, tmp_path):
    with fk.Stack(redis_url, tmp_path, sidecar_args=("--http", "layer", "--http-timeout", "5"), threads=2) as st:
        r = requests.get(f"http://127.0.0.1:{st.port}/boom", timeout=10)
        assert r.status_code == 500
        assert not any(leak in r.text for leak in LEAKS), r.text
        assert not any(leak in json.dumps(dict(r.headers)) for leak in LEAKS)
        c = fk.RawClient(st.port)
        assert c.handshake("/ws/secure")[0] == 101
        c.send(fk.frame(fk.OP_TEXT, b"boom"))  # the consumer raises with the secret in the message
        c.send(fk.frame(fk.OP_TEXT, b"after"))
        seen = b""
        c.sock.settimeout(3)
        try:
            while b"after" not in seen:
                op, payload = c.read_frame()
                seen += payload
        except OSError:
            pass
        c.close()
        assert not any(leak.encode() in seen for leak in LEAKS), seen
        worker_log = st.workers[0].log()
    assert SECRET in worker_log, "the failure is logged on the server side"


def test_layer_down_answers_without_revealing_the_redis_url_or_password(tmp_path):
    server = RedisServer(password=PASSWORD).start()
    side = stack.sidecar(stack.env_for(server.url), tmp_path, None, "--http", "layer", "--ping-interval", "0").start()
    try:
        server.stop()
        fk.wait_until(lambda: requests.get(f"http://127.0.0.1:{side.port}/_health", timeout=5).status_code == 503,
                      15, what="the sidecar noticing the outage")
        for raw in (fk.handshake_request("/x"), b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n"):
            c = fk.RawClient(side.port)
            c.send(raw)
            status, headers, body = c.read_head()
            c.close()
            assert status == 503
            text = body.decode("latin-1") + json.dumps(headers)
            assert PASSWORD not in text and str(server.port) not in text and "redis" not in text.lower(), text
    finally:
        side.stop()
    assert PASSWORD not in side.log(), "the password must never be logged"


# -- Redis with a password and over TLS -------------------------------------------------------

@pytest.fixture
def password_redis():
    server = RedisServer(password=PASSWORD).start()
    yield server
    server.stop()


def test_redis_missing_or_wrong_password_is_a_clear_error(password_redis):
    server = password_redis
    no_auth = from_url(server.url.replace(f":{PASSWORD}@", ""))
    wrong = from_url(server.url.replace(PASSWORD, "wrong-" + PASSWORD))
    for layer in (no_auth, wrong):
        try:
            with pytest.raises(ChannelsError) as e:
                layer.send("sec.test", {"n": 1})
            message = str(e.value)
            assert PASSWORD not in message and "auth" in message.lower(), message
            assert PASSWORD not in repr(layer)
        finally:
            layer.close()


def test_redis_password_works_and_is_never_shown(password_redis):
    server = password_redis
    try:
        good = from_url(server.url)
        good.send("sec.test", {"n": 1})
        assert good.receive(["sec.test"], block=True, timeout=2) == ("sec.test", {"n": 1})
        assert PASSWORD not in repr(good)
        good.close()
    finally:
        server.stop()


def make_certificates(directory) -> dict:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("wsgi_channels test CA")).issuer_name(name("wsgi_channels test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


@pytest.fixture
def tls_redis(tmp_path):
    certs = make_certificates(tmp_path)
    port = free_port()
    server = RedisServer(port=port, password=PASSWORD, extra_args=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["cert"]),
        "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no"])
    server.start()
    yield server, certs
    server.stop()


def test_redis_over_tls_with_a_password(tls_redis):
    server, certs = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
    layer = from_url(url, connection_options={"ssl_ca_certs": str(certs["ca"])})
    try:
        layer.send("tls.test", {"bytes": b"\x00secret"})
        assert layer.receive(["tls.test"], block=True, timeout=2) == ("tls.test", {"bytes": b"\x00secret"})
        layer.group_add("tls.group", "tls.member")
        layer.send_group("tls.group", {"n": 1})
        assert layer.receive(["tls.member"], block=True, timeout=2) == ("tls.member", {"n": 1})
    finally:
        layer.flush()
        layer.close()
    # Plain text to the TLS port, or TLS without trusting the CA: a clear failure, never a silent downgrade.
    for bad in (from_url(url.replace("rediss://", "redis://")), from_url(url)):
        with pytest.raises(LayerUnavailable) as e:
            bad.send("tls.test", {"n": 1})
        assert PASSWORD not in str(e.value)
        bad.close()


def test_sidecar_and_app_over_tls(tls_redis, tmp_path):
    """Real processes on rediss://: the sidecar trusts the test CA through SSL_CERT_FILE."""
    server, certs = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
    consumer_layer = {"connection_options": {"ssl_ca_certs": str(certs["ca"])}}
    env = stack.env_for(url, SSL_CERT_FILE=str(certs["ca"]))
    side = stack.sidecar(env, tmp_path, None, "--ping-interval", "0").start()
    layer = from_url(url, **consumer_layer)
    try:
        c = fk.RawClient(side.port)
        c.send(fk.handshake_request("/tls"))
        channel, m = layer.receive(["websocket.connect"], block=True, timeout=10)
        assert channel == "websocket.connect", side.log()[-2000:]
        layer.send(m["reply_channel"], {"accept": True})
        assert c.read_head()[0] == 101
        layer.send(m["reply_channel"], {"text": "over tls"})
        assert c.read_frame() == (fk.OP_TEXT, b"over tls")
        c.close()
    finally:
        side.stop()
        layer.close()
    assert PASSWORD not in side.log()


def test_tls_options_in_the_layer_url(tls_redis):
    server, certs = tls_redis
    layer = from_url(f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca']}")
    try:
        layer.send("tls.url", {"n": 1})
        assert layer.receive(["tls.url"], block=True, timeout=2)[0] == "tls.url"
    finally:
        layer.close()


# -- encryption at rest ------------------------------------------------------------------------

def _all_values(url: str) -> bytes:
    import redis

    client = redis.Redis.from_url(url)
    out = b""
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"list":
                out += b"".join(client.lrange(key, 0, -1))
            elif kind == b"string":
                out += client.get(key) or b""
            elif kind == b"hash":
                out += b"".join(k + v for k, v in client.hgetall(key).items())
            elif kind == b"zset":
                out += b"".join(client.zrange(key, 0, -1))
            elif kind == b"set":
                out += b"".join(client.smembers(key))
            elif kind == b"stream":
                out += repr(client.xrange(key)).encode()
    finally:
        client.close()
    return out


def test_messages_at_rest_are_encrypted_and_keys_rotate(redis_url):
    old = from_url(redis_url, symmetric_encryption_keys=["key-2025"])
    rotated = from_url(redis_url, symmetric_encryption_keys=["key-2026", "key-2025"])
    retired = from_url(redis_url, symmetric_encryption_keys=["key-2026"])
    try:
        old.send("enc.a", {"text": "plaintext-marker-1", "bytes": b"binary-marker-1"})
        old.group_add("enc.g", "enc.p!x")
        old.send_group("enc.g", {"text": "plaintext-marker-2"})
        rotated.send("enc.b", {"text": "plaintext-marker-3"})
        stored = _all_values(redis_url)
        assert stored and not any(m in stored for m in (b"plaintext-marker", b"binary-marker"))
        # Step 1 of a rotation: readers know both keys, old writers still work.
        assert rotated.receive(["enc.a"], block=True, timeout=2)[1]["bytes"] == b"binary-marker-1"
        assert rotated.receive(["enc.p!"], block=True, timeout=2) == ("enc.p!x", {"text": "plaintext-marker-2"})
        # Step 2: writers use the new key; a reader without the old key reads them.
        assert retired.receive(["enc.b"], block=True, timeout=2) == ("enc.b", {"text": "plaintext-marker-3"})
        # A message under a key the reader does not have fails clearly, never as garbage.
        old.send("enc.c", {"n": 1})
        with pytest.raises(ChannelsError, match="decrypt"):
            retired.receive(["enc.c"], block=True, timeout=2)
        # And the reader keeps working afterwards.
        rotated.send("enc.c", {"n": 2})
        assert retired.receive(["enc.c"], block=True, timeout=2) == ("enc.c", {"n": 2})
    finally:
        for layer in (old, rotated, retired):
            layer.flush()
            layer.close()


def test_encryption_keys_in_the_layer_url(redis_url):
    layer = from_url(redis_url + "?symmetric_encryption_keys=key-2026,key-2025")
    try:
        layer.send("enc.url", {"text": "plaintext-marker-url"})
        assert b"plaintext-marker-url" not in _all_values(redis_url)
    finally:
        layer.flush()
        layer.close()
