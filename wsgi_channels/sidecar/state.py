"""The states of a sidecar client connection and the transitions between them, as data.

One connection (:class:`~.connection.ClientConnection`) goes through::

    HEAD ──request──▶ HTTP_BODY ──response ends, keep-alive──▶ HEAD
     │ │                 │
     │ │                 └──final response / error──▶ CLOSING ──▶ DONE
     │ └──answered by the sidecar (400, 403, 426, 503, ...), keep-alive ends, draining──▶ CLOSING
     │ upgrade
     ▼
    CONNECTING ──accept──▶ OPEN ──close frame / slow reader──▶ CLOSING
     └──reject (403/503)──▶ CLOSING

    HEAD, HTTP_BODY, CONNECTING, OPEN ──the peer left / the socket failed──▶ DONE

which is :data:`TRANSITIONS`, pair for pair (``CLOSING ──▶ DONE``: the peer closed, or the
close wait passed; ``DONE`` is final). Every change goes through
:meth:`ClientConnection.set_state`, which looks the pair up in :data:`TRANSITIONS`
(only when the state changes: setting the state it already has is no transition and costs
one comparison).

An illegal transition is a bug in the sidecar, never the client's doing. With
``WSGI_CHANNELS_STRICT_STATES=1`` in the environment (the test suite sets it) it raises
:class:`IllegalTransition`, which ends that one connection with a logged stack; otherwise it
is logged at ERROR level with the stack and the transition happens anyway, so a production
sidecar keeps serving while the log says where the table and the code disagree.
"""
from __future__ import annotations

import enum
import logging
import os

__all__ = ["State", "TRANSITIONS", "IllegalTransition", "illegal_transition", "STRICT"]

log = logging.getLogger(__name__)


class State(enum.Enum):
    """Where a client connection is."""

    #: Waiting for (the rest of) a request head.
    HEAD = "head"
    #: HTTP mode: the request went to the layer; its body still arrives or its response is awaited.
    HTTP_BODY = "http-body"
    #: ``websocket.connect`` sent: the handshake waits for the consumer's answer.
    CONNECTING = "connecting"
    #: The WebSocket is open.
    OPEN = "open"
    #: Our close frame or final response is out; waiting for the peer or the flush.
    CLOSING = "closing"
    #: Finished: the reader sends the disconnect and closes the socket.
    DONE = "done"


_S = State
#: Every allowed change of state: from -> the states it may go to.
TRANSITIONS: dict[State, frozenset[State]] = {
    _S.HEAD: frozenset({_S.HTTP_BODY, _S.CONNECTING, _S.CLOSING, _S.DONE}),
    _S.HTTP_BODY: frozenset({_S.HEAD, _S.CLOSING, _S.DONE}),
    _S.CONNECTING: frozenset({_S.OPEN, _S.CLOSING, _S.DONE}),
    _S.OPEN: frozenset({_S.CLOSING, _S.DONE}),
    _S.CLOSING: frozenset({_S.DONE}),
    _S.DONE: frozenset(),
}

#: Raise on an illegal transition instead of logging it (tests; see the module docstring).
STRICT = os.environ.get("WSGI_CHANNELS_STRICT_STATES", "") not in ("", "0")


class IllegalTransition(RuntimeError):
    """A connection was asked to go from one state to another that :data:`TRANSITIONS` does not allow."""


def illegal_transition(old: State, new: State, where: str) -> None:
    """Report ``old -> new`` as the bug it is: raise when :data:`STRICT`, else log loudly."""
    message = f"illegal connection state transition {old.name} -> {new.name} ({where})"
    if STRICT:
        raise IllegalTransition(message)
    log.error(message, stack_info=True)
