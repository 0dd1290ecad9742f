"""What the parts of a sidecar client connection share: turns on the event loop, waits and
bounds, the access log.

A :class:`~.connection.ClientConnection` owns its parts: an
:class:`~.http_side.HttpSide` (requests before any upgrade, and HTTP mode) and, once a
handshake goes to the layer, a :class:`~.websocket_side.WebSocketSide`.
"""
from __future__ import annotations

import logging
from typing import Any

import gevent
from gevent.hub import Waiter

__all__ = ["LAYER_SLOT_TIMEOUT", "CLOSE_WAIT", "LAYER_RETRY_SECONDS", "LINGER_BYTES", "TURN", "TURN_FRAMES",
           "REQUEST_COST", "access_log", "addr", "let_others_run"]

access_log = logging.getLogger("wsgi_channels.sidecar.access")

#: Seconds a connection whose last bytes are out waits for the peer to close (``CLOSING``).
CLOSE_WAIT = 5.0
#: Seconds between retries of a send to a full channel that must not be dropped.
LAYER_RETRY_SECONDS = 0.05
#: Bytes a closing connection reads and discards (see the lingering close).
LINGER_BYTES = 1 << 20
#: Work units of one connection's turn on the event loop: a byte received costs one, a request
#: answered by the sidecar itself a quarter of a turn (:data:`REQUEST_COST`). A turn is a
#: fraction of a millisecond: every step of another client's handshake may wait behind one.
TURN = 64 * 1024
#: Work units of a request the sidecar answers itself (health, static files, errors): about
#: 40 us of parsing and answering; 4 of them make a turn.
REQUEST_COST = TURN // 4
#: Frames a WebSocket handles per turn (WebSocketSession.process units: a frame, plus one per
#: 8 KiB of its payload); a small frame costs about 10 us.
TURN_FRAMES = 16
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
    waiter: Waiter[Any] = Waiter(hub)
    idle = loop.idle()
    timer = loop.timer(_TURN_WAIT)
    idle.start(waiter.switch, None)
    timer.start(waiter.switch, None)
    try:
        waiter.get()
    finally:
        idle.close()
        timer.close()
