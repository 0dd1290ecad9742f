"""HTTP requests <-> ``http.request`` messages <-> WSGI environs, as pure functions (sans-IO).

Nothing here touches a socket, gevent or a layer: the sidecar's HTTP side uses
:func:`build_request_message`, the consumer side :func:`request_message_to_environ`,
and both can be tested with plain values. What travels back (``http.response``
messages, :class:`ResponseEncoder`, WebSocket reply messages) lives in
:mod:`wsgi_channels.protocol.responses`, re-exported here so one import serves both directions; the message ``TypedDict``s
in :mod:`wsgi_channels.protocol.messages`.

The message shapes are CONTRACT.md sections 2 and 3. Where a rule is a choice
rather than a contract clause, the docstring says why:

- header names containing ``_`` are dropped on the way into an environ (as
  gunicorn and nginx do), because ``X_Forwarded_For`` and ``X-Forwarded-For``
  would otherwise both become ``HTTP_X_FORWARDED_FOR`` and a client could
  smuggle one past a proxy that only filters the other;
- repeated ``cookie`` headers (HTTP/2 splits them) are joined with ``"; "``,
  every other repeated header with ``","`` (RFC 9110 section 5.3, RFC 9113 8.2.3);
- a response is cut into chunks of at most ``chunk_size`` bytes and the last
  message carries ``more_content=False``; no empty message is sent after it.
"""
from __future__ import annotations

import re
import sys
from typing import IO, Any, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import unquote_to_bytes

from ..exceptions import ChannelsError, InvalidMessage
from . import responses
from .messages import BodyChunkMessage, HttpRequestMessage
from .responses import (
    DEFAULT_CHUNK_SIZE,
    FLOW_KEY,
    WEBSOCKET_SEND_KEYS,
    Header,
    ResponseFlow,
    response_flow,
    HttpResponseMessage,
    ResponseEncoder,
    check_header_pairs,
    encode_response_headers,
    parse_status,
    validate_response_message,
    validate_websocket_send,
)

__all__ = [
    "InvalidRequest",
    "HttpRequestMessage",
    "BodyChunkMessage",
    "HTTP_VERSIONS",
    "split_target",
    "target_authority",
    "target_path",
    "build_request_message",
    "environ_to_request_message",
    "request_message_to_environ",
    "validate_request_message",
    "validate_body_chunk",
]
__all__ += responses.__all__  # the outbound side, importable from here as before

#: ``http_version`` values the contract allows.
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2"})


class InvalidRequest(ChannelsError, ValueError):
    """An HTTP request cannot be expressed as an ``http.request`` message; answer 400.

    ``status`` is the HTTP status a server should answer with.
    """

    status = 400


# -- request target -------------------------------------------------------------------------

_ABSOLUTE_RE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)")
_BAD_TARGET_BYTES = re.compile(rb"[\x00-\x20\x7f]")
# The methods the contract accepts: upper-case letters and hyphens (GET, M-SEARCH, VERSION-CONTROL).
# Other RFC 9110 tokens ("G.T", "X_1") are refused with 400 rather than handed to applications.
_METHOD_RE = re.compile(r"^[A-Z][A-Z-]*\Z")


def _shown(data: bytes) -> str:
    """A client's bytes quoted for an error message: the text, never a ``b'...'`` repr."""
    return repr(data[:100].decode("latin-1"))


def target_authority(target: bytes) -> Optional[bytes]:
    """The authority (``host[:port]``) of an absolute-form target (``http://host/path``), else None.

    RFC 9112 3.2.2: a server that gets an absolute-form target uses its authority as the
    request's host and ignores the ``Host`` header.
    """
    if target[:1] == b"/":
        return None
    m = _ABSOLUTE_RE.match(target)
    return None if m is None else m.group(1)


def split_target(target: bytes) -> Tuple[str, bytes]:
    """Split a raw request target into ``(path, query_string)``.

    ``path`` is percent-decoded and UTF-8 decoded; ``query_string`` stays raw.
    Origin-form (``/a?b``), absolute-form (``http://host/a?b``, used towards
    proxies and allowed by RFC 9112 3.2.2) and asterisk-form (``*``) are
    accepted; a fragment is dropped. Anything else, control characters, a
    ``%00`` (which would put a NUL in ``PATH_INFO``), or a path that is not
    UTF-8 after decoding raises :class:`InvalidRequest`.
    """
    if not isinstance(target, (bytes, bytearray)):
        raise InvalidRequest(f"request target must be bytes, not {type(target).__name__}")
    target = bytes(target)
    if not target:
        raise InvalidRequest("empty request target")
    if _BAD_TARGET_BYTES.search(target):
        raise InvalidRequest(f"request target {_shown(target)} contains a space or control character")
    if target == b"*":
        return "*", b""
    raw = target
    if not raw.startswith(b"/"):
        m = _ABSOLUTE_RE.match(raw)
        if m is None:
            raise InvalidRequest(
                f"request target {_shown(target)} is neither origin-form (/path?query) "
                "nor absolute-form (http://host/path?query)"
            )
        raw = raw[m.end():]
        if not raw.startswith(b"/"):
            raw = b"/" + raw
    raw, _, _fragment = raw.partition(b"#")
    raw_path, _, query = raw.partition(b"?")
    decoded = unquote_to_bytes(raw_path)
    if b"\x00" in decoded:
        raise InvalidRequest(f"request path {_shown(raw_path)} holds %00: a NUL cannot be part of a path")
    try:
        path = decoded.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(
            f"request path {_shown(raw_path)} is not UTF-8 once percent-decoded ({e.reason} at byte {e.start})"
        ) from None
    return path, query


def target_path(target: bytes) -> bytes:
    """The raw (not percent-decoded) path of any request target form, for matching routes the
    server answers itself (health, static files): ``http://host/_health?x`` -> ``/_health``."""
    if target[:1] != b"/":
        m = _ABSOLUTE_RE.match(target)
        if m is not None:
            target = target[m.end():]
            if not target.startswith(b"/"):
                target = b"/" + target
    end = len(target)
    for sep in (b"?", b"#"):
        i = target.find(sep)
        if 0 <= i < end:
            end = i
    return target[:end]


# -- building and checking http.request -----------------------------------------------------

def _header_list(headers: Iterable[Sequence[bytes]], where: str) -> List[Header]:
    out: List[Header] = []
    for i, pair in enumerate(headers):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise InvalidMessage(f"{where}[{i}] must be a [name, value] pair, got {pair!r:.100}")
        name, value = pair
        if not isinstance(name, bytes) or not isinstance(value, bytes):
            raise InvalidMessage(f"{where}[{i}]: header name and value must be bytes, got {pair!r:.100}")
        out.append([name.lower(), value])
    return out


def _address(value: Any, key: str) -> Optional[List[Any]]:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], str)
            or not (value[1] is None or (isinstance(value[1], int) and not isinstance(value[1], bool)))):
        raise InvalidMessage(f"message[{key!r}] must be [host (str), port (int or None)] or None, got {value!r:.100}")
    return [value[0], value[1]]


def build_request_message(
    *,
    reply_channel: str,
    method: str | bytes,
    target: bytes,
    headers: Iterable[Sequence[bytes]],
    http_version: str,
    scheme: str = "http",
    client: Optional[Sequence[Any]] = None,
    server: Optional[Sequence[Any]] = None,
    root_path: str = "",
    body: bytes = b"",
    body_channel: Optional[str] = None,
    parsed: bool = False,
) -> HttpRequestMessage:
    """An ``http.request`` message from what an HTTP parser (h11) gives a server.

    Header names are lower-cased; order and duplicates are kept. Raises
    :class:`InvalidRequest` for a target that cannot be a path (answer 400) and
    :class:`InvalidMessage` for arguments of the wrong type (a server bug).

    ``parsed=True`` says the arguments come straight from h11 (bytes method and
    target, ``(bytes, bytes)`` header pairs with lower-case names) and addresses are
    fresh ``[str, int]`` lists: the type checks are skipped (the server's hot path),
    the target and method rules still apply.
    """
    path, query_string = split_target(target)
    if isinstance(method, bytes):
        method = method.decode("ascii", "replace")
    if not isinstance(method, str):
        raise InvalidMessage(f"method must be str or bytes, not {type(method).__name__}")
    method = method.upper()
    if not _METHOD_RE.match(method):
        raise InvalidRequest(f"request method {method[:40]!r} is not one of letters and hyphens")
    message: HttpRequestMessage = {
        "reply_channel": reply_channel,
        "http_version": http_version,
        "method": method,
        "scheme": scheme,
        "path": path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": [[n, v] for n, v in headers] if parsed else _header_list(headers, "headers"),
        "body": body,
        "body_channel": body_channel,
        "client": client if parsed else _address(client, "client"),  # type: ignore[typeddict-item]
        "server": server if parsed else _address(server, "server"),  # type: ignore[typeddict-item]
    }
    if not parsed:
        validate_request_message(message)
    return message


def _require(message: Any, key: str, types: Any, what: str) -> Any:
    if key not in message:
        raise InvalidMessage(f"message[{key!r}] is missing: an http.request needs {what}")
    value = message[key]
    if not isinstance(value, types):
        raise InvalidMessage(f"message[{key!r}] must be {what}, got {type(value).__name__} {value!r:.80}")
    return value


def _optional(message: Any, key: str, types: Any, what: str) -> Any:
    value = message.get(key)
    if value is not None and not isinstance(value, types):
        raise InvalidMessage(f"message[{key!r}] must be {what}, got {type(value).__name__} {value!r:.80}")
    return value


def validate_request_message(message: Any) -> HttpRequestMessage:
    """Check an ``http.request`` message; return it, or raise :class:`InvalidMessage` naming the bad key.

    Unknown keys are allowed (forward compatibility, as in ASGI); missing
    optional keys take the contract's defaults when the message is used.
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"an http.request message must be a dict, not {type(message).__name__}")
    reply = _require(message, "reply_channel", str, "the reply channel name (str)")
    if not reply:
        raise InvalidMessage("message['reply_channel'] is empty")
    method = _require(message, "method", str, "an upper-case method (str)")
    if not _METHOD_RE.match(method):
        raise InvalidMessage(f"message['method'] must be an upper-case token such as 'GET', got {method!r:.40}")
    version = _require(message, "http_version", str, "'1.0', '1.1' or '2'")
    if version not in HTTP_VERSIONS:
        raise InvalidMessage(f"message['http_version'] must be '1.0', '1.1' or '2', got {version!r:.20}")
    _require(message, "path", str, "the percent-decoded path (str)")
    if "headers" not in message:
        raise InvalidMessage("message['headers'] is missing: an http.request needs a list of [name, value] pairs")
    check_header_pairs(message["headers"], "message['headers']")
    _optional(message, "scheme", str, "a str such as 'http'")
    _optional(message, "query_string", bytes, "the raw query string (bytes)")
    _optional(message, "root_path", str, "a str")
    _optional(message, "body", bytes, "bytes")
    _optional(message, "body_channel", str, "a channel name (str) or None")
    _address(message.get("client"), "client")
    _address(message.get("server"), "server")
    return message  # type: ignore[return-value]


def validate_body_chunk(message: Any) -> BodyChunkMessage:
    """Check a request body chunk (``content``, ``more_content``, ``closed``)."""
    if not isinstance(message, dict):
        raise InvalidMessage(f"a request body chunk must be a dict, not {type(message).__name__}")
    _optional(message, "content", bytes, "bytes")
    _optional(message, "more_content", bool, "a bool")
    _optional(message, "closed", bool, "a bool")
    return message  # type: ignore[return-value]


# -- environ <-> message --------------------------------------------------------------------

def _wsgi_str(text: str) -> str:
    """PEP 3333 "bytes as latin-1 str" form of a UTF-8 path."""
    return text.encode("utf-8").decode("latin-1")


def _from_wsgi_str(value: str, key: str) -> str:
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"environ[{key!r}] holds characters outside latin-1, which PEP 3333 forbids") from None
    except UnicodeDecodeError:
        raise InvalidRequest(f"environ[{key!r}] = {value!r:.100} is not UTF-8") from None


def _split_root(path: str, root_path: str) -> Tuple[str, str]:
    """``(SCRIPT_NAME, PATH_INFO)``: the path minus ``root_path`` when it starts with it.

    A proxy that already stripped the prefix sends a path without it; then the
    whole path is ``PATH_INFO`` (as Channels 1.x did).
    """
    root = root_path.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return root, path[len(root):]
    return root, path


def request_message_to_environ(message: HttpRequestMessage | dict[str, Any], wsgi_input: IO[bytes] | Any,
                               errors: Any = None) -> dict[str, Any]:
    """A PEP 3333 environ for an ``http.request`` message (CONTRACT.md section 2).

    ``wsgi_input`` is the body stream; it must return ``b""`` at the end of the
    body, so ``wsgi.input_terminated`` is set and apps may read without a
    ``Content-Length`` (chunked uploads). The message is not validated here:
    call :func:`validate_request_message` first.
    """
    script_name, path_info = _split_root(message["path"], message.get("root_path") or "")
    scheme = message.get("scheme") or "http"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": message["method"],
        "SCRIPT_NAME": _wsgi_str(script_name),
        "PATH_INFO": _wsgi_str(path_info),
        "QUERY_STRING": (message.get("query_string") or b"").decode("latin-1"),
        "SERVER_PROTOCOL": "HTTP/" + ("2.0" if message["http_version"] == "2" else message["http_version"]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": wsgi_input,
        "wsgi.errors": errors if errors is not None else sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }
    host_header = None
    for name, value in message["headers"]:
        if name == b"content-type":
            key = "CONTENT_TYPE"
        elif name == b"content-length":
            key = "CONTENT_LENGTH"
        elif b"_" in name:
            continue  # see the module docstring: header smuggling via '_' vs '-'
        else:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if name == b"host":
                host_header = value
        text = value.decode("latin-1")
        if key in environ:
            environ[key] += ("; " if name == b"cookie" else ",") + text
        else:
            environ[key] = text
    server = message.get("server")
    if server:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else (
            "443" if scheme in ("https", "wss") else "80")  # a unix socket has no port
    else:
        host, port = _host_port(host_header, scheme)
        environ["SERVER_NAME"], environ["SERVER_PORT"] = host, port
    client = message.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
        if client[1] is not None:
            environ["REMOTE_PORT"] = str(client[1])
    return environ


def _host_port(host_header: Optional[bytes], scheme: str) -> Tuple[str, str]:
    default_port = "443" if scheme in ("https", "wss") else "80"
    if not host_header:
        return "localhost", default_port
    host = host_header.decode("latin-1")
    if host.startswith("["):  # [::1]:8000
        end = host.find("]")
        name, rest = host[: end + 1], host[end + 1:]
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    return name or "localhost", port if port.isdigit() else default_port


def environ_to_request_message(environ: dict[str, Any], reply_channel: str, body: bytes = b"",
                               body_channel: Optional[str] = None) -> HttpRequestMessage:
    """An ``http.request`` message for a WSGI environ (the reverse of :func:`request_message_to_environ`).

    ``path`` is ``SCRIPT_NAME + PATH_INFO`` and ``root_path`` is ``SCRIPT_NAME``;
    headers come from ``CONTENT_TYPE``, ``CONTENT_LENGTH`` and ``HTTP_*`` in
    environ order (a WSGI server has already joined repeated headers).
    """
    script_name = _from_wsgi_str(environ.get("SCRIPT_NAME", ""), "SCRIPT_NAME")
    path_info = _from_wsgi_str(environ.get("PATH_INFO", ""), "PATH_INFO")
    headers: List[Header] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-")
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if not value:
                continue
            name = key.lower().replace("_", "-")
        else:
            continue
        headers.append([name.encode("latin-1"), str(value).encode("latin-1")])
    protocol = environ.get("SERVER_PROTOCOL", "HTTP/1.1")
    version = protocol[5:] if protocol.upper().startswith("HTTP/") else protocol
    version = {"2.0": "2", "0.9": "1.0"}.get(version, version)
    if version not in HTTP_VERSIONS:
        raise InvalidRequest(f"environ['SERVER_PROTOCOL'] = {protocol!r} is not HTTP/1.0, HTTP/1.1 or HTTP/2")
    client = None
    if environ.get("REMOTE_ADDR"):
        port = environ.get("REMOTE_PORT")
        client = [environ["REMOTE_ADDR"], int(port) if port and str(port).isdigit() else None]
    server = None
    if environ.get("SERVER_NAME"):
        port = environ.get("SERVER_PORT")
        server = [environ["SERVER_NAME"], int(port) if port and str(port).isdigit() else None]
    message: HttpRequestMessage = {
        "reply_channel": reply_channel,
        "http_version": version,
        "method": str(environ.get("REQUEST_METHOD", "GET")).upper(),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "path": script_name + path_info,
        "query_string": str(environ.get("QUERY_STRING", "")).encode("latin-1"),
        "root_path": script_name,
        "headers": headers,
        "body": body,
        "body_channel": body_channel,
        "client": client,
        "server": server,
    }
    return validate_request_message(message)
