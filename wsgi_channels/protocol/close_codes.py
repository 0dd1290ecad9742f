"""The WebSocket close-code policy, as one table: situation -> close code -> whether the
browser client reconnects.

Everything that closes a socket takes its code from here: the sidecar (protocol errors,
limits, draining, a layer that lost its state), the consumers' helpers (a JSON consumer given
something else, the worker's time limit, the adapters' refusals), the shipped browser client
(``static/channels.js``'s ``STOP_CODES``, checked against :data:`STOP_CODES` by the tests) and
``docs/protocol.md``'s table (:func:`markdown_table`, checked by the tests too).

"Reconnect" is the browser client's choice after that close: the codes that mean "a retry
would be refused again" (the app closed on purpose, a protocol or policy violation, a
message too big) stop it; the ones that mean "try again later" (a restart, a full channel,
a slow reader, a network loss) make it reconnect with backoff. Application codes: 4000-4499
stop, 3000-3999 and 4500-4999 reconnect.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "CloseRule", "CLOSE_RULES", "STOP_CODES", "APP_STOP_RANGE", "should_reconnect", "markdown_table",
    "CLOSE_NORMAL", "CLOSE_GOING_AWAY", "CLOSE_PROTOCOL_ERROR", "CLOSE_UNSUPPORTED_DATA", "CLOSE_NO_STATUS",
    "CLOSE_ABNORMAL", "CLOSE_INVALID_PAYLOAD", "CLOSE_POLICY", "CLOSE_TOO_BIG", "CLOSE_MANDATORY_EXTENSION",
    "CLOSE_INTERNAL", "CLOSE_SERVICE_RESTART", "CLOSE_TRY_AGAIN", "CLOSE_BAD_GATEWAY", "CLOSE_TLS",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_MANDATORY_EXTENSION = 1010
CLOSE_INTERNAL = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_BAD_GATEWAY = 1014
CLOSE_TLS = 1015

#: Application close codes (3000-4999) in this range stop the browser client; the rest reconnect.
APP_STOP_RANGE = (4000, 4499)


class CloseRule(NamedTuple):
    """One row of the policy: a close ``code``, who sends it, when, and whether the browser
    client reconnects after it."""

    code: int
    reconnect: bool
    sent_by: str
    when: str


#: The policy, one row per code (RFC 6455 section 7.4.1 and the IANA registry). Codes that
#: are never on the wire (1005, 1006, 1015) are what a client reports for such closes.
CLOSE_RULES: tuple[CloseRule, ...] = (
    CloseRule(CLOSE_NORMAL, False, "sidecar, for your app",
              'a consumer sent `{"close": True}`'),
    CloseRule(CLOSE_GOING_AWAY, True, "sidecar",
              "SIGTERM: the sidecar is draining"),
    CloseRule(CLOSE_PROTOCOL_ERROR, False, "sidecar",
              "the client broke the protocol (a bad frame)"),
    CloseRule(CLOSE_UNSUPPORTED_DATA, False, "your app",
              "a kind of data the endpoint cannot take"),
    CloseRule(CLOSE_NO_STATUS, True, "nobody (never on the wire)",
              "a close frame without a code"),
    CloseRule(CLOSE_ABNORMAL, True, "nobody (never on the wire)",
              "the TCP connection ended without a close frame: network loss, or a client that did not "
              "answer pings within `--ping-timeout`"),
    CloseRule(CLOSE_INVALID_PAYLOAD, False, "sidecar; your app",
              "invalid UTF-8 in a text message; a JSON consumer given a binary frame or text that is not JSON"),
    CloseRule(CLOSE_POLICY, False, "sidecar; your app",
              "more than `--control-frame-rate` pings, pongs or tiny fragments a second; an adapter's "
              "refusal (authentication, Origin) on an open socket"),
    CloseRule(CLOSE_TOO_BIG, False, "sidecar",
              "a client message over `--max-message-size`"),
    CloseRule(CLOSE_MANDATORY_EXTENSION, False, "a client",
              "the server did not agree an extension the client needs"),
    CloseRule(CLOSE_INTERNAL, True, "your app; the worker",
              "an internal error; a `websocket.connect` or `websocket.receive` consumer over the worker's "
              "`--time-limit`"),
    CloseRule(CLOSE_SERVICE_RESTART, True, "sidecar",
              "the layer came back without its data (a Redis restarted empty): group memberships are gone, "
              "so sockets reconnect and the connect consumers rejoin"),
    CloseRule(CLOSE_TRY_AGAIN, True, "sidecar",
              "try again later: the `websocket.receive` channel is full, or the client reads too slowly "
              "(`--max-outgoing-buffer`, `--max-outgoing-total`)"),
    CloseRule(CLOSE_BAD_GATEWAY, True, "a proxy",
              "a gateway got a bad answer upstream"),
    CloseRule(CLOSE_TLS, True, "nobody (never on the wire)",
              "the TLS handshake failed"),
)

_BY_CODE = {rule.code: rule for rule in CLOSE_RULES}

#: Codes of 1000-2999 after which the browser client stops (``channels.js``'s ``STOP_CODES``).
STOP_CODES: tuple[int, ...] = tuple(rule.code for rule in CLOSE_RULES if not rule.reconnect)


def should_reconnect(code: int) -> bool:
    """Whether the browser client reconnects after a close with ``code``."""
    rule = _BY_CODE.get(code)
    if rule is not None:
        return rule.reconnect
    return not APP_STOP_RANGE[0] <= code <= APP_STOP_RANGE[1]


def markdown_table() -> str:
    """The policy as the Markdown table of ``docs/protocol.md`` (its "Close codes" section)."""
    lines = ["| code | sent by | when | the browser client |", "|---|---|---|---|"]
    for rule in CLOSE_RULES:
        lines.append(f"| {rule.code} | {rule.sent_by} | {rule.when} | "
                     f"{'reconnects' if rule.reconnect else 'stops'} |")
    low, high = APP_STOP_RANGE
    lines.append(f"| 3000-4999 | your app | application codes | {low}-{high} stop; 3000-{low - 1} and "
                 f"{high + 1}-4999 reconnect |")
    return "\n".join(lines) + "\n"
