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

__all__ = ["HEAD", "HTTP_BODY", "CONNECTING", "OPEN", "CLOSING", "DONE", "LAYER_SLOT_TIMEOUT", "addr"]

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
#: Seconds a connection waits for a free layer slot (``Sidecar.layer_slots``) before
#: treating the layer as unavailable.
LAYER_SLOT_TIMEOUT = 10.0



def addr(peer: Any) -> str:
    """``host:port`` of a peer address for logs."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "-")
