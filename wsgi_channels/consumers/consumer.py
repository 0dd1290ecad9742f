"""Running one consumer on one message: deferred sends and bounded retries.

The worker and :mod:`wsgi_channels.testing` both go through
:func:`run_consumer`, so tests exercise exactly what production does:

- ``Channel.send``/``Group.send`` inside the consumer are collected and sent
  when it finishes, even if it raised (the sends it made before the error are
  real events the client should see), in the order they were made;
- a send to a full channel is retried with a short backoff until a deadline
  (``send_timeout``), then dropped and logged: a slow client can delay a
  worker by at most that long, never forever;
- a layer that is down (``LayerUnavailable``) is retried the same way;
- the message is this thread's current message while the consumer runs
  (:func:`wsgi_channels.presence.consuming`), so a presence entry added without
  a ``user`` gets the user of the connection it came from.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from ..channel import deferred_sends
from ..exceptions import ChannelFull, LayerUnavailable
from ..layers.base import BaseChannelLayer
from ..presence import consuming
from .message import Message

__all__ = ["run_consumer", "send_with_retry", "flush_sends", "hand_over_last", "use_reply_sender", "hold_replies",
           "use_slot", "given_up", "DEFAULT_SEND_TIMEOUT"]

log = logging.getLogger(__name__)

#: The state of the worker's time-limit slot (:class:`~wsgi_channels.worker.timelimit.Slot`) whose
#: message was given up. Defined here, where sends are guarded, and imported by the worker's
#: time limit: consumers never import the worker.
ABANDONED = "abandoned"

#: Seconds a reply may be retried against a full channel before it is dropped.
DEFAULT_SEND_TIMEOUT = 5.0
_FIRST_BACKOFF = 0.002
_MAX_BACKOFF = 0.1


class _ThreadState(threading.local):
    #: This thread's reply sender (see :func:`use_reply_sender`); a class default, since a
    #: ``getattr(..., None)`` that misses raises inside and costs microseconds per reply.
    sender: Any = None
    #: Messages handed over are only queued (the worker runs a batch: its responses go out
    #: together when it ends; see :meth:`~wsgi_channels.worker.reply_sender.ReplySender.take`).
    hold: bool = False
    #: The worker's :class:`~wsgi_channels.worker.timelimit.Slot` of this thread, when a time limit is on:
    #: sends go through it, so those of a message given up are dropped.
    slot: Any = None


_local = _ThreadState()


def use_slot(slot: Any) -> None:
    """Make ``slot`` (a :class:`~wsgi_channels.worker.timelimit.Slot`, or None) this thread's: the sends
    below then go through :meth:`~wsgi_channels.worker.timelimit.Slot.guard`."""
    _local.slot = slot


def given_up() -> bool:
    """True when the worker gave up the message this thread runs (it ran past the time limit): its
    client was answered already, and every send it makes now is dropped."""
    slot = _local.slot
    return slot is not None and slot.state is ABANDONED


def use_reply_sender(sender: Any) -> None:
    """Make ``sender`` (a :class:`~wsgi_channels.worker.reply_sender.ReplySender`, or None) this
    thread's sender for :func:`hand_over_last`; the worker sets it in each of its threads."""
    _local.sender = sender


def hold_replies(hold: bool) -> None:
    """While ``hold`` is True, messages this thread hands over are queued and not sent; the
    worker then flushes its sender (see :func:`use_reply_sender`)."""
    _local.hold = hold


def hand_over_last(layer: BaseChannelLayer, channel: str, content: dict, timeout: float) -> bool:
    """Give the last message a consumer sends on ``channel`` to this thread's batched sender.

    True when handed over (it is sent soon, with :func:`send_with_retry`'s rules, and
    nothing sent later on ``channel`` could overtake it because nothing is); False when
    this thread has no sender for ``layer``: send it yourself.
    """
    sender = _local.sender
    if sender is None or sender.layer is not layer:
        return False
    slot = _local.slot
    if slot is not None:
        # Dropped (the message was given up) counts as handed over: the caller must not send it.
        slot.guard(_put, channel, content, sender, timeout)
        return True
    sender.put(channel, content, timeout, _local.hold)
    return True


def _put(channel: str, content: dict, sender: Any, timeout: float) -> bool:
    sender.put(channel, content, timeout, _local.hold)
    return True


def send_with_retry(layer: BaseChannelLayer, channel: str, content: dict,
                    timeout: float = DEFAULT_SEND_TIMEOUT, kind: str = "send") -> bool:
    """``layer.send`` (or ``send_group``), retried on ChannelFull/LayerUnavailable until ``timeout``.

    Returns False (after logging) when the deadline passed, and (silently) when the
    worker gave up the message being run (see :mod:`wsgi_channels.worker.timelimit`); other
    errors (invalid or too large messages) propagate.
    """
    slot = _local.slot
    if slot is not None:
        return slot.guard(_send_with_retry, channel, content, layer, timeout, kind)
    return _send_with_retry(channel, content, layer, timeout, kind)


def _send_with_retry(channel: str, content: dict, layer: BaseChannelLayer, timeout: float, kind: str) -> bool:
    send = getattr(layer, kind)
    try:  # the fast path: one call, no clock reads
        send(channel, content)
        return True
    except (ChannelFull, LayerUnavailable) as e:
        error: Exception = e
    deadline = time.monotonic() + timeout
    delay = _FIRST_BACKOFF
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("gave up sending to %r after %.1fs: %s", channel, timeout, error,
                        extra={"channel": channel})
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_BACKOFF)
        try:
            send(channel, content)
            return True
        except (ChannelFull, LayerUnavailable) as e:
            error = e


def flush_sends(outbox: list, timeout: float = DEFAULT_SEND_TIMEOUT) -> int:
    """Send what a consumer queued, in order; returns how many were dropped.

    One deadline covers the whole batch, so a consumer that queued many
    messages for a dead client waits ``timeout`` once, not once per message.
    A message that cannot be sent at all (too large) is logged and skipped.
    """
    dropped = 0
    deadline = time.monotonic() + timeout
    for layer, kind, name, content in outbox:
        try:
            if not send_with_retry(layer, name, content, max(0.0, deadline - time.monotonic()), kind):
                dropped += 1
        except Exception:
            log.exception("could not send a consumer's message to %r", name)
            dropped += 1
    outbox.clear()
    return dropped


def run_consumer(consumer: Callable[..., Any], message: Message, kwargs: dict,
                 send_timeout: float = DEFAULT_SEND_TIMEOUT) -> Any:
    """Call ``consumer(message, **kwargs)`` and then make its sends; re-raises its exception."""
    with deferred_sends() as outbox:
        try:
            with consuming(message):
                return consumer(message, **kwargs)
        finally:
            if outbox:
                flush_sends(outbox, send_timeout)
