"""Per-connection state: ``@channel_session`` and ``@enforce_ordering``.

Both key their state by the message's ``reply_channel`` and keep it in the
layer's own key-value store (``session_get``/``session_set``/``session_delete``,
beside the queues: in Redis for the Redis layer), so any worker process can
pick up the next message of a connection.

``@channel_session`` gives ``message.channel_session``, a dict saved after the
consumer returns (also when it raised) if it changed, and deleted after a
``websocket.disconnect`` consumer.

``@enforce_ordering`` runs a connection's ``websocket.*`` messages in their
``order``. A message that comes early is parked on a wait channel and resent
once its predecessor has run. If the predecessor never comes (it was
dropped), the connection is not stalled: after ``timeout`` seconds the gap is
skipped with a warning and the parked messages run. A message older than a
skip is dropped with a warning.

The ordering state is one number per connection in the layer's key-value store: the
order of the next message to run. Every change of it is atomic on every layer
(``session_compare_and_set``), in every process, so:

- it only moves forward: a message that finished raises it to one past its own order
  unless it is higher already, and a skip moves it from the value its parked messages
  saw to the lowest of them, only if nobody moved it meanwhile;
- a parked message never waits for the timeout when its predecessor has finished: the
  consumer that parks it reads the state again afterwards, and if it moved, takes the
  parked messages back and resends them (the predecessor's own release may have come
  just before the message was parked);
- each message runs at most once: the layer delivers it once, and a parked message is
  taken off its wait channel by one reader only.

What ``timeout`` trades away: a predecessor still *running* after ``timeout`` counts as
missing, so the messages parked behind it run while it finishes (as a lost one would be
skipped); give ``timeout`` more than the longest consumer. The ``websocket.disconnect``
consumer deletes the state; a skipped consumer finishing after it writes the state once
more, and it expires after ``ttl``.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import threading
from typing import Any, Callable, Optional

from ..channel import Channel
from .message import TOKEN_CLAIMS_KEY
from ..serialization import decode, encode

__all__ = ["channel_session", "enforce_ordering", "ChannelSession", "DEFAULT_SESSION_TTL",
           "DEFAULT_ORDERING_TIMEOUT"]

log = logging.getLogger(__name__)

#: Seconds a channel session lives after its last save.
DEFAULT_SESSION_TTL = 86400.0
#: Seconds an out-of-order message waits for its predecessor before the gap is skipped.
DEFAULT_ORDERING_TIMEOUT = 5.0
_DISCONNECTS = ("websocket.disconnect", "http.disconnect")


class ChannelSession(dict):
    """A dict that knows whether it changed; ``save()`` writes it back now."""

    def __init__(self, layer: Any, key: str, ttl: float, data: Optional[dict] = None) -> None:
        super().__init__(data or {})
        self._layer = layer
        self._key = key
        self._ttl = ttl
        self.modified = False

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.modified = True

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self.modified = True

    def _mutator(name: str) -> Callable:  # type: ignore[misc]
        def method(self: "ChannelSession", *args: Any, **kwargs: Any) -> Any:
            self.modified = True
            return getattr(dict, name)(self, *args, **kwargs)
        method.__name__ = name
        return method

    update = _mutator("update")
    pop = _mutator("pop")
    popitem = _mutator("popitem")
    clear = _mutator("clear")
    setdefault = _mutator("setdefault")
    del _mutator

    @property
    def session_key(self) -> str:
        return self._key

    def save(self) -> None:
        """Store the session (values must be message-compatible: str, bytes, numbers, lists, dicts)."""
        self._layer.session_set(self._key, encode(dict(self), None), self._ttl)
        self.modified = False

    def delete(self) -> None:
        self._layer.session_delete(self._key)
        super().clear()
        self.modified = False


def _session_key(reply_channel: str) -> str:
    return "session:" + reply_channel


def _load_session(message: Any, ttl: float) -> ChannelSession:
    reply = message.content.get("reply_channel")
    if not isinstance(reply, str):
        raise ValueError(f"channel_session needs a message with a reply_channel; {message!r} has none")
    key = _session_key(reply)
    raw = message.channel_layer.session_get(key)
    return ChannelSession(message.channel_layer, key, ttl, decode(raw) if raw else None)


def channel_session(func: Optional[Callable] = None, *, ttl: float = DEFAULT_SESSION_TTL) -> Any:
    """Decorate a consumer to give it ``message.channel_session`` (use bare or with ``ttl=``)."""
    if func is None:
        return functools.partial(channel_session, ttl=ttl)

    @functools.wraps(func)
    def wrapper(message: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(message.channel_session, ChannelSession):  # already loaded (stacked decorators)
            return func(message, *args, **kwargs)
        session = message.channel_session = _load_session(message, ttl)
        claims = message.content.get(TOKEN_CLAIMS_KEY)
        if claims is not None and session.get(TOKEN_CLAIMS_KEY) != claims:
            session[TOKEN_CLAIMS_KEY] = claims  # later frames of the socket: message.token_claims
        try:
            return func(message, *args, **kwargs)
        finally:
            if message.channel.name in _DISCONNECTS:
                session.delete()
            elif session.modified:
                session.save()

    return wrapper


# -- ordering -------------------------------------------------------------------------------

def _order_key(reply: str) -> str:
    return "order:" + reply


def _wait_channel(reply: str) -> str:
    return "wsgi_channels.wait." + hashlib.sha256(reply.encode()).hexdigest()[:32]


def _expected(layer: Any, reply: str) -> int:
    raw = layer.session_get(_order_key(reply))
    return int(raw) if raw else 0


#: Attempts of a compare-and-set before giving up (each failure means another process moved
#: the state forward meanwhile, so this is never reached in practice).
_CAS_ATTEMPTS = 50


def _advance(layer: Any, reply: str, to: int, ttl: float) -> None:
    """Raise the connection's next expected order to ``to``, never lowering it (atomic)."""
    key = _order_key(reply)
    for _ in range(_CAS_ATTEMPTS):
        raw = layer.session_get(key)
        if raw and int(raw) >= to:
            return
        if layer.session_compare_and_set(key, raw, str(to).encode(), ttl):
            return
    log.warning("ordering: could not record that message %d of %r ran (the state kept changing)", to - 1, reply)


def _release(layer: Any, reply: str) -> list:
    """Take every parked message of ``reply`` off its wait channel."""
    wait = _wait_channel(reply)
    parked: list[dict[str, Any]] = []
    while True:
        channel, content = layer.receive([wait], block=False)
        if channel is None:
            return parked
        parked.append(content)


def _resend(layer: Any, parked: list) -> None:
    for item in sorted(parked, key=lambda p: p["content"].get("order", 0)):
        Channel(item["channel"], layer=layer).send(item["content"])


def _recheck(layer: Any, reply: str, expected: int, ttl: float) -> None:
    """Timer: resend the parked messages; if the state has not moved since parking, skip the gap first.

    The skip is a compare-and-set from the state the parked message saw, so it never undoes
    progress made in the meantime (by another process too).
    """
    try:
        parked = _release(layer, reply)
        if not parked:
            return
        key = _order_key(reply)
        raw = layer.session_get(key)
        lowest = min(p["content"].get("order", 0) for p in parked)
        if (int(raw) if raw else 0) == expected and lowest > expected \
                and layer.session_compare_and_set(key, raw, str(lowest).encode(), ttl):
            log.warning("ordering: messages %d..%d of %r never arrived after waiting; skipping them",
                        expected, lowest - 1, reply)
        for item in sorted(parked, key=lambda p: p["content"].get("order", 0)):
            layer.send(item["channel"], item["content"])
    except Exception:
        log.exception("ordering re-check for %r failed", reply)


def enforce_ordering(func: Optional[Callable] = None, *, timeout: float = DEFAULT_ORDERING_TIMEOUT,
                     ttl: float = DEFAULT_SESSION_TTL, slight: bool = False) -> Any:
    """Decorate a ``websocket.*`` consumer so one connection's messages run in ``order``.

    ``timeout``: seconds to wait for a missing message before skipping it.
    ``slight=True`` (Channels 1.x's ``slight`` ordering) only holds messages
    until ``websocket.connect`` (order 0) has run, the common need.
    """
    if func is None:
        return functools.partial(enforce_ordering, timeout=timeout, ttl=ttl, slight=slight)

    @functools.wraps(func)
    def wrapper(message: Any, *args: Any, **kwargs: Any) -> Any:
        order = message.content.get("order")
        reply = message.content.get("reply_channel")
        if type(order) is not int or not isinstance(reply, str):
            raise ValueError("enforce_ordering needs messages with an int 'order' and a 'reply_channel' "
                             f"(WebSocket messages); got {message!r}")
        layer = message.channel_layer
        expected = _expected(layer, reply)
        if slight and expected >= 1:
            expected = order
        if order < expected:
            log.warning("ordering: message %d of %r arrived after it was skipped; dropped", order, reply)
            return None
        if order > expected:
            layer.send(_wait_channel(reply), {"channel": message.channel.name, "content": message.content})
            if _expected(layer, reply) != expected:
                # Moved while this was being parked: the release that ran meanwhile may have missed
                # it, so take the parked messages back now rather than after the timeout.
                parked = _release(layer, reply)
                if parked:
                    _resend(layer, parked)
                return None
            timer = threading.Timer(timeout, _recheck, (layer, reply, expected, ttl))
            timer.daemon = True
            timer.start()
            return None
        try:
            return func(message, *args, **kwargs)
        finally:
            if message.channel.name in _DISCONNECTS:
                layer.session_delete(_order_key(reply))
            else:
                _advance(layer, reply, order + 1, ttl)
            parked = _release(layer, reply)
            if parked:
                _resend(layer, parked)

    return wrapper
