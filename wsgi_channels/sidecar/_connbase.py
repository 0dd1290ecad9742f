"""What the parts of a sidecar client connection share: states, limits, loggers.

:class:`~.connection.ClientConnection` is one object per client socket, written in
three modules so each stays readable: :mod:`.connection` (reading, writing,
closing, timers, HTTP requests answered by the sidecar itself),
:mod:`.connection_http` (HTTP mode: ``http.request`` and responses through the
layer) and :mod:`.connection_ws` (the WebSocket handshake and frames).
"""
from __future__ import annotations

import logging
from typing import Any

import gevent
from gevent.hub import Waiter

__all__ = ["HEAD", "HTTP_BODY", "CONNECTING", "OPEN", "CLOSING", "DONE", "LAYER_SLOT_TIMEOUT", "addr",
           "let_others_run"]

log = logging.getLogger("wsgi_channels.sidecar.connection")
access_log = logging.getLogger("wsgi_channels.sidecar.access")

# Connection states.
HEAD = "head"              # waiting for (the rest of) a request head
HTTP_BODY = "http-body"    # HTTP mode: request sent to the layer, body still arriving or response awaited
CONNECTING = "connecting"  # websocket.connect sent, waiting for the consumer's answer
OPEN = "open"              # WebSocket open
CLOSING = "closing"        # our close frame or final response sent; waiting for the peer / the flush
DONE = "done"

_RECV_SIZE = 65536
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20
_CLOSE_WAIT = 5.0
_LAYER_RETRY_SECONDS = 0.05
#: Work units of one connection's turn on the event loop: a byte received costs one, a request
#: answered by the sidecar itself a quarter of a turn (see connection.py). A turn is a fraction of
#: a millisecond: every step of another client's handshake may wait behind one.
_TURN = 64 * 1024
#: Frames a WebSocket handles per turn (WebSocketSession.process units: a frame, plus one per
#: 8 KiB of its payload); a small frame costs about 10 us.
_TURN_FRAMES = 16
#: Longest a connection at the end of its turn waits for the loop to be idle before it goes on.
_TURN_WAIT = 0.01
#: Seconds a connection waits for a free layer slot (``Sidecar.layer_slots``) before
#: treating the layer as unavailable.
LAYER_SLOT_TIMEOUT = 10.0



def addr(peer: Any) -> str:
    """``host:port`` of a peer address for logs."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "-")


def let_others_run() -> None:
    """Wait until the event loop has run every other ready greenlet (readable sockets, timers,
    callbacks), or :data:`_TURN_WAIT` at most when it is never idle.

    ``gevent.sleep(0)`` is not enough: it may resume the caller before the loop polls for I/O.
    An idle watcher runs only once nothing else is pending, so a busy connection's next turn
    comes after everyone else's; the timer bounds its wait under sustained load.
    """
    hub = gevent.get_hub()
    loop = hub.loop
    waiter = Waiter(hub)
    idle = loop.idle()
    timer = loop.timer(_TURN_WAIT)
    idle.start(waiter.switch, None)
    timer.start(waiter.switch, None)
    try:
        waiter.get()
    finally:
        idle.close()
        timer.close()
