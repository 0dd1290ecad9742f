"""HTTP and WebSocket messages <-> WSGI, as pure functions (sans-IO).

Nothing here touches a socket, gevent or a layer: the sidecar's HTTP side uses
:func:`build_request_message` and :func:`validate_response_message`, the
consumer side uses :func:`request_message_to_environ` and
:class:`ResponseEncoder`, and both can be tested with plain values.

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
from typing import IO, Any, Iterable, List, Optional, Sequence, Tuple, TypedDict
from urllib.parse import unquote_to_bytes

from .exceptions import ChannelsError, InvalidMessage

__all__ = [
    "InvalidRequest",
    "HttpRequestMessage",
    "HttpResponseMessage",
    "BodyChunkMessage",
    "HTTP_VERSIONS",
    "DEFAULT_CHUNK_SIZE",
    "split_target",
    "build_request_message",
    "environ_to_request_message",
    "request_message_to_environ",
    "validate_request_message",
    "validate_body_chunk",
    "validate_response_message",
    "parse_status",
    "encode_response_headers",
    "ResponseEncoder",
    "validate_websocket_send",
    "WEBSOCKET_SEND_KEYS",
]

#: ``http_version`` values the contract allows.
HTTP_VERSIONS = frozenset({"1.0", "1.1", "2"})
#: Largest ``content`` of one response message made by :class:`ResponseEncoder` (bytes).
DEFAULT_CHUNK_SIZE = 256 * 1024

Header = List[bytes]  # [name, value]; tuples are accepted on input and arrive as lists from a layer


class InvalidRequest(ChannelsError, ValueError):
    """An HTTP request cannot be expressed as an ``http.request`` message; answer 400.

    ``status`` is the HTTP status a server should answer with.
    """

    status = 400


class HttpRequestMessage(TypedDict, total=False):
    reply_channel: str
    http_version: str
    method: str
    scheme: str
    path: str
    query_string: bytes
    root_path: str
    headers: List[Header]
    body: bytes
    body_channel: Optional[str]
    client: Optional[List[Any]]
    server: Optional[List[Any]]


class HttpResponseMessage(TypedDict, total=False):
    status: int
    headers: List[Header]
    content: bytes
    more_content: bool


class BodyChunkMessage(TypedDict, total=False):
    content: bytes
    more_content: bool
    closed: bool


# -- request target -------------------------------------------------------------------------

_ABSOLUTE_RE = re.compile(rb"^[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
_BAD_TARGET_BYTES = re.compile(rb"[\x00-\x20\x7f]")
# The methods the contract accepts: upper-case letters and hyphens (GET, M-SEARCH, VERSION-CONTROL).
# Other RFC 9110 tokens ("G.T", "X_1") are refused with 400 rather than handed to applications.
_METHOD_RE = re.compile(r"^[A-Z][A-Z-]*\Z")


def split_target(target: bytes) -> Tuple[str, bytes]:
    """Split a raw request target into ``(path, query_string)``.

    ``path`` is percent-decoded and UTF-8 decoded; ``query_string`` stays raw.
    Origin-form (``/a?b``), absolute-form (``http://host/a?b``, used towards
    proxies and allowed by RFC 9112 3.2.2) and asterisk-form (``*``) are
    accepted; a fragment is dropped. Anything else, control characters, or a
    path that is not UTF-8 after decoding raises :class:`InvalidRequest`.
    """
    if not isinstance(target, (bytes, bytearray)):
        raise InvalidRequest(f"request target must be bytes, not {type(target).__name__}")
    target = bytes(target)
    if not target:
        raise InvalidRequest("empty request target")
    if _BAD_TARGET_BYTES.search(target):
        raise InvalidRequest(f"request target {target[:100]!r} contains a space or control character")
    if target == b"*":
        return "*", b""
    raw = target
    if not raw.startswith(b"/"):
        m = _ABSOLUTE_RE.match(raw)
        if m is None:
            raise InvalidRequest(
                f"request target {target[:100]!r} is neither origin-form (/path?query) "
                "nor absolute-form (http://host/path?query)"
            )
        raw = raw[m.end():]
        if not raw.startswith(b"/"):
            raw = b"/" + raw
    raw, _, _fragment = raw.partition(b"#")
    raw_path, _, query = raw.partition(b"?")
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(
            f"request path {raw_path[:100]!r} is not UTF-8 once percent-decoded ({e.reason} at byte {e.start})"
        ) from None
    return path, query


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
    headers = message["headers"]
    if not isinstance(headers, (list, tuple)):
        raise InvalidMessage(f"message['headers'] must be a list of [bytes, bytes], got {type(headers).__name__}")
    for i, pair in enumerate(headers):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes)):
            raise InvalidMessage(f"message['headers'][{i}] must be [bytes, bytes], got {pair!r:.100}")
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


# -- responses ------------------------------------------------------------------------------

_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE = re.compile(rb"[\x00\r\n]")
_RESPONSE_KEYS = frozenset({"status", "headers", "content", "more_content"})


def _check_response_headers(headers: Any, where: str) -> None:
    if not isinstance(headers, (list, tuple)):
        raise InvalidMessage(f"{where} must be a list of [bytes, bytes], got {type(headers).__name__}")
    for i, pair in enumerate(headers):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not isinstance(pair[0], bytes) or not isinstance(pair[1], bytes)):
            raise InvalidMessage(f"{where}[{i}] must be [bytes, bytes], got {pair!r:.100}")
        if not _TOKEN_RE.match(pair[0]):
            raise InvalidMessage(f"{where}[{i}]: header name {pair[0]!r:.60} is not an HTTP token")
        if _BAD_VALUE_RE.search(pair[1]):
            raise InvalidMessage(f"{where}[{i}]: header value {pair[1]!r:.60} contains CR, LF or NUL")


def validate_response_message(message: Any, first: bool) -> HttpResponseMessage:
    """Check one ``http.response`` message; ``first`` says whether it starts the response.

    The first message needs ``status`` (int 200-999; 1xx cannot end a request)
    and may carry ``headers``; later ones may not carry either. ``content`` is
    bytes, ``more_content`` a bool; other keys are refused so typos surface.
    Raises :class:`InvalidMessage` naming the key.
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"an http.response message must be a dict, not {type(message).__name__}")
    unknown = set(message) - _RESPONSE_KEYS
    if unknown:
        raise InvalidMessage(f"http.response message has unknown key(s) {sorted(unknown)!r}; "
                             f"allowed: {sorted(_RESPONSE_KEYS)!r}")
    if first:
        if "status" not in message:
            raise InvalidMessage("message['status'] is missing: the first http.response message needs it")
        status = message["status"]
        if type(status) is not int or not 200 <= status <= 999:
            raise InvalidMessage(f"message['status'] must be an int from 200 to 999, got {status!r:.40}")
        _check_response_headers(message.get("headers", []), "message['headers']")
    else:
        for key in ("status", "headers"):
            if key in message:
                raise InvalidMessage(f"message[{key!r}] is only allowed in the first http.response message")
    content = message.get("content", b"")
    if not isinstance(content, bytes):
        raise InvalidMessage(f"message['content'] must be bytes, got {type(content).__name__}")
    more = message.get("more_content", False)
    if not isinstance(more, bool):
        raise InvalidMessage(f"message['more_content'] must be a bool, got {type(more).__name__}")
    return message  # type: ignore[return-value]


def parse_status(status: Any) -> int:
    """The code of a WSGI status line such as ``"404 Not Found"``; ``ValueError`` if malformed."""
    if not isinstance(status, str):
        raise ValueError(f"WSGI status must be a str such as '200 OK', got {type(status).__name__}")
    code = status[:3]
    if len(status) < 3 or not code.isdigit() or (len(status) > 3 and status[3] != " "):
        raise ValueError(f"WSGI status {status!r:.60} is not 'NNN Reason'")
    value = int(code)
    if value < 200:
        raise ValueError(f"WSGI status {status!r:.60}: 1xx statuses cannot be a final response")
    if _BAD_VALUE_RE.search(status.encode("latin-1", "replace")):
        raise ValueError(f"WSGI status {status!r:.60} contains CR, LF or NUL")
    return value


def encode_response_headers(headers: Any) -> List[Header]:
    """WSGI ``[(name, value), ...]`` (latin-1 str) -> ``[[bytes, bytes], ...]``; ``ValueError`` if malformed."""
    if not isinstance(headers, list):
        raise ValueError(f"WSGI response headers must be a list, got {type(headers).__name__}")
    out: List[Header] = []
    for i, pair in enumerate(headers):
        if not isinstance(pair, tuple) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ValueError(f"WSGI response header {i} must be a (str, str) tuple, got {pair!r:.100}")
        try:
            name, value = pair[0].encode("latin-1"), pair[1].encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"WSGI response header {pair!r:.100} is not latin-1 (PEP 3333)") from None
        if not _TOKEN_RE.match(name):
            raise ValueError(f"WSGI response header name {pair[0]!r:.60} is not an HTTP token")
        if _BAD_VALUE_RE.search(value):
            raise ValueError(f"WSGI response header {pair[0]!r:.60} has CR, LF or NUL in its value")
        # Whitespace around a field value is not part of it (RFC 9110 5.5); Django's
        # Set-Cookie values start with a space, which HTTP/1.1 framers such as h11 refuse.
        out.append([name, value.strip(b" \t")])
    return out


class ResponseEncoder:
    """Turns a WSGI response into ``http.response`` messages (sans-IO).

    ``feed(data)`` and ``finish()`` return the messages to send now. Content is
    cut into pieces of at most ``chunk_size`` bytes. The last message carries
    ``more_content=False`` and is never empty unless the whole body is, which
    means one block is held back until the next arrives or the body ends
    (except with ``Content-Length``, whose last byte ends the response at once).
    Bytes beyond a declared ``Content-Length`` are dropped and counted in
    ``overflow``.
    """

    __slots__ = ("status", "headers", "chunk_size", "started", "finished", "overflow",
                 "_pending", "_remaining")

    def __init__(self, status: int, headers: List[Header], chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.status = status
        self.headers = headers
        self.chunk_size = chunk_size
        self.started = False
        self.finished = False
        self.overflow = 0
        self._pending = b""
        self._remaining: Optional[int] = None
        for name, value in headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                self._remaining = int(value)

    def _message(self, content: bytes, more: bool) -> HttpResponseMessage:
        if self.started:
            return {"content": content, "more_content": more}
        self.started = True
        return {"status": self.status, "headers": self.headers, "content": content, "more_content": more}

    def _emit(self, data: bytes, out: List[HttpResponseMessage], last: bool) -> None:
        size = self.chunk_size
        view = memoryview(data)
        n = len(data)
        start = 0
        while n - start > size:
            out.append(self._message(bytes(view[start:start + size]), True))
            start += size
        chunk = data if start == 0 else bytes(view[start:])
        out.append(self._message(chunk, not last))

    def feed(self, data: bytes) -> List[HttpResponseMessage]:
        """Add body bytes; returns the messages that can be sent now."""
        if self.finished:
            self.overflow += len(data)
            return []
        if self._remaining is not None:
            if len(data) > self._remaining:
                self.overflow += len(data) - self._remaining
                data = data[: self._remaining]
            self._remaining -= len(data)
            if self._remaining == 0:
                return self.finish(data)
        if not data:
            return []
        out: List[HttpResponseMessage] = []
        if self._pending:
            self._emit(self._pending, out, last=False)
        size = self.chunk_size
        if len(data) > size:
            # Send all full pieces but one, keeping the tail back as the candidate last message.
            keep = len(data) % size or size
            self._emit(data[:-keep], out, last=False)
            data = data[-keep:]
        self._pending = data
        return out

    def finish(self, data: bytes = b"") -> List[HttpResponseMessage]:
        """End the body (optionally with last bytes); returns the final messages."""
        if self.finished:
            return []
        self.finished = True
        out: List[HttpResponseMessage] = []
        if self._pending and data:
            self._emit(self._pending, out, last=False)
            self._pending = b""
        self._emit(self._pending + data if self._pending else data, out, last=True)
        self._pending = b""
        return out


# -- WebSocket ------------------------------------------------------------------------------

#: Keys allowed in a message sent to a WebSocket reply channel.
WEBSOCKET_SEND_KEYS = frozenset({"text", "bytes", "close", "accept", "subprotocol"})


def validate_websocket_send(message: Any) -> dict[str, Any]:
    """Check a message sent to a WebSocket reply channel (CONTRACT.md section 3); return it.

    ``text`` (str) or ``bytes`` (bytes) sends a frame, not both; ``close`` is
    True/False or a close code a server may send (RFC 6455 7.4); ``accept`` is a bool,
    ``subprotocol`` a str or None. Unknown keys, or a message that does
    nothing, raise :class:`InvalidMessage`.
    """
    if not isinstance(message, dict):
        raise InvalidMessage(f"a WebSocket reply message must be a dict, not {type(message).__name__}")
    unknown = set(message) - WEBSOCKET_SEND_KEYS
    if unknown:
        raise InvalidMessage(f"WebSocket reply message has unknown key(s) {sorted(unknown)!r}; "
                             f"allowed: {sorted(WEBSOCKET_SEND_KEYS)!r}")
    text, data = message.get("text"), message.get("bytes")
    if text is not None and data is not None:
        raise InvalidMessage("WebSocket reply message has both 'text' and 'bytes': send one frame per message")
    if text is not None and not isinstance(text, str):
        raise InvalidMessage(f"message['text'] must be a str, got {type(text).__name__}")
    if data is not None and not isinstance(data, bytes):
        raise InvalidMessage(f"message['bytes'] must be bytes, got {type(data).__name__}")
    close = message.get("close")
    if close is not None and not isinstance(close, bool):
        if type(close) is not int or not (1000 <= close <= 1003 or 1007 <= close <= 1014 or 3000 <= close <= 4999):
            raise InvalidMessage(f"message['close'] must be True or a close code a server may send "
                                 f"(1000-1003, 1007-1014, 3000-4999), got {close!r:.40}")
    accept = message.get("accept")
    if accept is not None and not isinstance(accept, bool):
        raise InvalidMessage(f"message['accept'] must be a bool, got {type(accept).__name__}")
    sub = message.get("subprotocol")
    if sub is not None and not isinstance(sub, str):
        raise InvalidMessage(f"message['subprotocol'] must be a str or None, got {type(sub).__name__}")
    if text is None and data is None and close in (None, False) and accept is None:
        raise InvalidMessage("WebSocket reply message does nothing: give 'text', 'bytes', 'close' or 'accept'")
    return message
