"""Signed connect tokens: a page on one origin opens a WebSocket to a sidecar on another.

Without nginx in front, the app (say gunicorn on port 8000) and the sidecar (port
8001) are different origins, and the sidecar's Origin check refuses the page's
WebSocket, as it must: that check is what stops another site's page from riding the
user's cookies into a socket. A connect token is the app's signed permission
instead: the app renders the sidecar's URL for one path with a short-lived token
(:func:`connect_url`; the adapters wrap it as ``channels_url``), and the sidecar
accepts a handshake from another origin only with a valid, unexpired token for that
path, signed with the secret it shares with the app (``--token-secret``).

The token is ``BASE64URL(claims JSON) "." BASE64URL(HMAC-SHA256)``, without padding,
so it fits a query string as it is. The MAC key is derived from the shared secret
for this one purpose, so a token can never be mistaken for another value signed
with the same secret (a Flask session cookie, a Django signed value). Claims:

``exp``, ``iat``
    expiry and issue time (Unix seconds). A token is refused from ``exp`` on, and
    when issued more than a minute in the future (clocks that disagree).
``path``
    the WebSocket path it opens, percent-decoded, as in ``websocket.connect``.
    Exact, or ending in ``*`` to allow every path starting with what precedes
    the ``*`` (``/ws/chat/*``).
``sub``
    the user id (``str`` or ``int``), or absent for an anonymous user; consumers
    read it as ``message.user_id``.
``groups``
    optional list of group names the app allows this socket to join; the
    consumer decides what to do with them.
``origin``
    optional: the page's origin (``https://app.example.com``). When present, a
    browser handshake must come from that origin, so a token rendered for one
    site is useless to a page on another.

Anything else given as ``extra`` travels too. The sidecar verifies the token,
removes the ``_wsc_token`` parameter from the ``query_string`` consumers see, and
puts the claims in ``websocket.connect`` under the reserved key ``__wsc_token``
(:attr:`wsgi_channels.Message.token_claims`).

HMAC-SHA256 and :func:`hmac.compare_digest` from the standard library are all this
needs: the token is verified by the same party (the app's operator) that signs it,
so there is no key distribution or algorithm negotiation for a JWT library to add.

Everything here is pure (no sockets, no clock unless ``now`` is omitted).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Optional, Sequence, Union
from urllib.parse import quote, unquote, unquote_to_bytes, urlencode, urlsplit

from .exceptions import ConfigurationError, InvalidToken, TokenExpired
from .protocol.origin import parse_origin
from .protocol.translation import InvalidRequest, split_target

__all__ = [
    "TOKEN_PARAM",
    "CLAIMS_KEY",
    "DEFAULT_MAX_AGE",
    "MAX_MAX_AGE",
    "sign_connect_token",
    "verify_connect_token",
    "connect_url",
    "sidecar_base_url",
    "split_token",
    "secrets_from",
    "token_secret",
    "Admission",
    "admit_handshake",
    "InvalidToken",
    "TokenExpired",
]

#: Query parameter carrying the token (the reserved ``_wsc`` prefix, CONTRACT.md section 5).
TOKEN_PARAM = "_wsc_token"
#: Key of the verified claims in ``websocket.connect`` (the reserved ``__wsc_`` prefix).
CLAIMS_KEY = "__wsc_token"
#: Seconds a token lives unless told otherwise: it only has to last until the handshake.
DEFAULT_MAX_AGE = 300
#: The longest lifetime :func:`sign_connect_token` accepts (a day).
MAX_MAX_AGE = 86400
#: Seconds a token's ``iat`` may lie in the future (the app's clock ahead of the sidecar's).
CLOCK_SKEW = 60
#: Longest token accepted; anything longer is refused before it is decoded.
MAX_TOKEN_LENGTH = 4096

Secret = Union[str, bytes]

_PURPOSE = b"wsgi_channels connect token v1"
_B64URL = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch ("$" also matches before a final newline)
_GROUP_RE = re.compile(r"[a-zA-Z0-9\-_.]{1,100}")  # the contract's group name rule; fullmatch
_RESERVED_CLAIMS = frozenset({"exp", "iat", "path", "sub", "groups", "origin"})
_TOKEN_PARAM_BYTES = TOKEN_PARAM.encode()
_TOKEN_PARAM_TAIL = b"wsc_token"  # also found when the leading '_' is percent-encoded


# -- signing and verifying ------------------------------------------------------------------------

@lru_cache(maxsize=32)
def _key(secret: bytes) -> bytes:
    # Purpose-bound key: a MAC made here is useless to anything else signing with the same secret.
    return hmac.new(secret, _PURPOSE, hashlib.sha256).digest()


def _secret_bytes(secret: Any) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise ConfigurationError("a connect token secret must be a non-empty str or bytes "
                                 "(the app's SECRET_KEY, or WSGI_CHANNELS_TOKEN_SECRET)")
    return bytes(secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def _check_path_claim(path: Any) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"connect token path must be a path starting with '/', got {path!r}")
    return path


def _normalize_origin(origin: str) -> str:
    """``HTTPS://App.example.com:443/`` -> ``https://app.example.com`` (the one Origin rule's canonical
    form, :mod:`wsgi_channels.protocol.origin`); ValueError when not an http(s) origin."""
    key = parse_origin(origin)
    if key is None or not key.startswith(("http://", "https://")) or "*" in key:
        raise ValueError(f"{origin!r} is not an origin like https://host[:port]")
    return key


def sign_connect_token(secret: Secret, path: str, *, user_id: Optional[Union[str, int]] = None,
                       groups: Optional[Iterable[str]] = None, origin: Optional[str] = None,
                       max_age: float = DEFAULT_MAX_AGE, extra: Optional[dict[str, Any]] = None,
                       now: Optional[float] = None) -> str:
    """A token allowing one WebSocket handshake to ``path`` until ``max_age`` seconds from now.

    ``path`` is the path the sidecar sees (percent-decoded), or a prefix ending in
    ``*``. Raises ``ValueError`` (``TypeError`` for a wrong type) naming the bad
    argument, :class:`~wsgi_channels.ConfigurationError` for an empty secret.
    """
    key = _key(_secret_bytes(secret))
    issued = int(time.time() if now is None else now)
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 1 <= max_age <= MAX_MAX_AGE:
        raise ValueError(f"connect token max_age must be 1 to {MAX_MAX_AGE} seconds, got {max_age!r}")
    claims: dict[str, Any] = {"path": _check_path_claim(path), "iat": issued, "exp": issued + int(max_age)}
    if user_id is not None:
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
            raise TypeError(f"connect token user_id must be a str or an int, got {type(user_id).__name__} "
                            "(pass str(user.pk) for a UUID key)")
        claims["sub"] = user_id
    if groups is not None:
        if isinstance(groups, str):
            raise TypeError("connect token groups must be a list of group names, not one string")
        groups = list(groups)
        for name in groups:
            if not isinstance(name, str) or not _GROUP_RE.fullmatch(name):
                raise ValueError(f"connect token group {name!r} is not a group name "
                                 "(1-100 of a-z, A-Z, 0-9, '-', '_', '.')")
        claims["groups"] = groups
    if origin is not None:
        claims["origin"] = _normalize_origin(origin)
    if extra:
        clash = sorted(set(extra) & _RESERVED_CLAIMS)
        if clash:
            raise ValueError(f"connect token extra claims may not use the names {', '.join(clash)}")
        claims.update(extra)
    try:
        payload = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as e:
        raise TypeError(f"connect token claims must be JSON values: {e}") from None
    return payload + "." + _mac(key, payload)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def path_allowed(claim: str, path: str) -> bool:
    """Whether a token for ``claim`` (exact, or a prefix ending in ``*``) opens ``path``."""
    if claim.endswith("*"):
        return path.startswith(claim[:-1])
    return path == claim


def verify_connect_token(token: Any, secrets: Union[Secret, Sequence[Secret]], *, path: Optional[str] = None,
                         origin: Optional[str] = None, now: Optional[float] = None) -> dict[str, Any]:
    """The claims of a valid token; raises :class:`InvalidToken` (or :class:`TokenExpired`) saying why not.

    ``secrets`` is one secret or several (any may have signed it: keys can be
    rotated). ``path`` is the handshake's path; ``origin`` its ``Origin`` header
    (None for a client that sent none, such as a script: it has no browser
    cookies to abuse). The MAC is checked in constant time before anything in the
    token is believed.
    """
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidToken("malformed", "the connect token is not ASCII") from None
    if not isinstance(token, str) or not token:
        raise InvalidToken("malformed", "the connect token is empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed", f"the connect token is longer than {MAX_TOKEN_LENGTH} characters")
    payload, dot, mac = token.partition(".")
    if not dot or not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(mac):
        raise InvalidToken("malformed", "the connect token is not PAYLOAD.SIGNATURE in URL-safe base64")
    keys = [_key(_secret_bytes(s)) for s in ([secrets] if isinstance(secrets, (str, bytes)) else secrets)]
    if not keys:
        raise ConfigurationError("no secret to verify connect tokens with")
    good = False
    for key in keys:  # every key is tried, so the time taken says nothing about which one matched
        good |= hmac.compare_digest(_mac(key, payload), mac)
    if not good:
        raise InvalidToken("signature", "the connect token's signature is wrong (tampered, or signed with "
                                        "another secret than the sidecar's --token-secret)")
    try:
        claims = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        raise InvalidToken("malformed", "the connect token's claims are not JSON") from None
    if not isinstance(claims, dict):
        raise InvalidToken("malformed", "the connect token's claims are not an object")
    exp, iat, claim_path = claims.get("exp"), claims.get("iat"), claims.get("path")
    if not (_is_int(exp) and _is_int(iat) and isinstance(claim_path, str)):
        raise InvalidToken("malformed", "the connect token lacks exp, iat or path")
    assert isinstance(exp, int) and isinstance(iat, int)
    t = time.time() if now is None else now
    if t >= exp:
        raise TokenExpired("expired", f"the connect token expired {int(t - exp) + 1} s ago")
    if iat > t + CLOCK_SKEW:
        raise InvalidToken("clock", f"the connect token was issued {int(iat - t)} s in the future "
                                    "(the app's and the sidecar's clocks disagree)")
    if path is not None and not path_allowed(claim_path, path):
        raise InvalidToken("path", f"the connect token is for {claim_path!r}, not {path!r}")
    wanted = claims.get("origin")
    if origin is not None and wanted is not None:
        try:
            given = _normalize_origin(origin)
        except ValueError:
            raise InvalidToken("origin", f"Origin {origin!r} is not a valid origin") from None
        if given != wanted:
            raise InvalidToken("origin", f"the connect token is for pages of {wanted}, not {given}")
    return claims


# -- the app side: URLs ---------------------------------------------------------------------------

def sidecar_base_url(url: Any, setting: str = "sidecar URL") -> str:
    """``http://host:8001`` -> ``ws://host:8001`` (``https``/``wss`` likewise; a path prefix is kept).

    Raises :class:`~wsgi_channels.ConfigurationError` naming ``setting``.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{setting} must be a URL like http://127.0.0.1:8001, got {url!r}")
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}.get(parts.scheme.lower())
    try:
        parts.port
    except ValueError as e:
        raise ConfigurationError(f"{setting} {url!r}: {e}") from None
    if scheme is None or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(f"{setting} must look like http(s)://host[:port][/prefix] or ws(s)://..., "
                                 f"got {url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def connect_url(sidecar_url: str, path: str, secret: Secret, *, user_id: Optional[Union[str, int]] = None,
                groups: Optional[Iterable[str]] = None, origin: Optional[str] = None,
                max_age: float = DEFAULT_MAX_AGE, extra: Optional[dict[str, Any]] = None, query: Optional[dict[str, Any]] = None,
                now: Optional[float] = None, setting: str = "sidecar URL") -> str:
    """The ``ws(s)://`` URL of ``path`` on the sidecar, with a token signed for exactly that path.

    ``path`` is the path as consumers see it, not percent-encoded
    (``"/ws/chat/tea & cake?/"``): every character is taken literally and
    encoded here. ``query`` adds parameters (a dict, URL-encoded before the
    token). A path prefix of ``sidecar_url`` (``https://example.com/realtime``)
    is part of the path the token is signed for, as the sidecar sees the whole
    path.
    """
    base = sidecar_base_url(sidecar_url, setting)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"channels_url: the WebSocket path must start with '/', got {path!r}")
    token = sign_connect_token(secret, unquote(urlsplit(base).path) + path, user_id=user_id, groups=groups,
                               origin=origin, max_age=max_age, extra=extra, now=now)
    params = urlencode(query) + "&" if query else ""
    return f"{base}{quote(path, safe='/')}?{params}{TOKEN_PARAM}={token}"


# -- the sidecar side -----------------------------------------------------------------------------

def split_token(query_string: bytes) -> tuple[bytes, list[str]]:
    """``(query_string without any _wsc_token, the tokens found)``; other parameters keep their bytes."""
    if _TOKEN_PARAM_TAIL not in query_string:
        return query_string, []
    kept, found = [], []
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == _TOKEN_PARAM_BYTES:
            found.append(unquote_to_bytes(value).decode("latin-1"))
        else:
            kept.append(part)
    return b"&".join(kept), found


def secrets_from(setting: str) -> list[str]:
    """The secrets in the sidecar's ``token_secret`` setting: one per line (a file may hold several)."""
    return [line.rstrip("\r") for line in setting.split("\n") if line.strip()]


@lru_cache(maxsize=8)
def _secrets(setting: str) -> tuple[str, ...]:
    return tuple(secrets_from(setting))


@dataclass
class Admission:
    """What the sidecar does with a handshake: refuse it (``refusal``), or go on with ``target``.

    ``target`` is the request target without the token; ``claims`` the verified
    claims (None without a token); ``outcome`` the handshake counter to bump on a
    refusal.
    """

    target: bytes
    claims: Optional[dict[str, Any]] = None
    refusal: Optional[str] = None
    outcome: str = "origin_refused"


def admit_handshake(target: bytes, headers: Sequence[tuple[bytes, bytes]], origin_refusal: Optional[str],
                    token_secret: str, now: Optional[float] = None) -> Admission:
    """The sidecar's decision on a WebSocket handshake, after its Origin check.

    - a ``_wsc_token`` parameter is always removed from the target;
    - with a token and a ``token_secret``, the token is verified for the
      handshake's path and Origin; a bad one refuses the handshake (even from
      the app's own origin: the app asked for it to be checked);
    - a handshake the Origin check refused (``origin_refusal``) is accepted only
      with a valid token;
    - a token without a ``token_secret`` is ignored (no claims) where the Origin
      check passed, and named in the refusal where it did not.
    """
    raw_path, q, query = bytes(target).partition(b"?")
    found: list[str] = []
    if q and _TOKEN_PARAM_TAIL in query:
        query, found = split_token(query)
        target = raw_path + (b"?" + query if query else b"")  # the token reaches no log line and no consumer
    if not found:
        if origin_refusal is None:
            return Admission(target)
        if token_secret:
            return Admission(target, refusal=f"{origin_refusal}, and there is no connect token "
                                             f"({TOKEN_PARAM}) to allow it", outcome="token_refused")
        return Admission(target, refusal=origin_refusal)
    if len(found) > 1:
        return Admission(target, refusal=f"{TOKEN_PARAM} is given {len(found)} times", outcome="token_refused")
    if not token_secret:
        if origin_refusal is None:
            return Admission(target)
        return Admission(target, refusal=f"{origin_refusal}; a connect token was given but the sidecar has no "
                                         "--token-secret to check it")
    try:
        path = split_target(target)[0]
    except InvalidRequest:  # connect_message() answers 400 for a bad target
        return Admission(target, refusal=origin_refusal)
    origin = next((v for n, v in headers if n == b"origin"), None)
    try:
        claims = verify_connect_token(found[0], _secrets(token_secret), path=path,
                                      origin=origin.decode("latin-1") if origin is not None else None, now=now)
    except InvalidToken as e:
        return Admission(target, refusal=f"connect token refused: {e}", outcome="token_refused")
    return Admission(target, claims=claims)


def token_secret(secret: str, secret_file: str) -> str:
    """The sidecar's ``token_secret`` from ``--token-secret`` or ``--token-secret-file`` (one, not both).

    Raises :class:`~wsgi_channels.ConfigurationError` naming the flag.
    """
    if secret and secret_file:
        raise ConfigurationError("give --token-secret or --token-secret-file (WSGI_CHANNELS_TOKEN_SECRET or "
                                 "WSGI_CHANNELS_TOKEN_SECRET_FILE), not both")
    if not secret_file:
        return secret
    try:
        with open(secret_file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigurationError(f"--token-secret-file {secret_file!r} cannot be read: {e}") from None
    if not secrets_from(text):
        raise ConfigurationError(f"--token-secret-file {secret_file!r} holds no secret")
    return text
