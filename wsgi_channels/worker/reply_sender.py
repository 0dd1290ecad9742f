"""The worker's batched sends of the last message of HTTP responses (group commit).

A worker thread that has run a WSGI app sends the final ``http.response`` message
and waits for Redis before taking its next message: one round trip, a blocking read
and a GIL hand-over per request, on the worker (the usual bottleneck) and on Redis.
With :class:`ReplySender` the threads send those messages together: a thread that
hands one over while no send is in flight sends it at once (no added latency), and
keeps sending, in one ``layer.send_many`` pipeline per round, whatever the other
threads handed over meanwhile; those threads go on to their next message without
waiting. Under load many responses share one round trip. The worker thread that
runs a batch of messages holds their responses (``hold``) and, when the batch ends,
takes them (:meth:`ReplySender.take`) to send with its next receive, or sends them
(:meth:`ReplySender.flush`).

Only a response's *last* message is handed over (see
:func:`~wsgi_channels.consumers.consumer.hand_over_last`): the chunks before it were sent in
order by the consumer, and every HTTP reply channel serves one request, so nothing
can overtake it. A full channel or an unreachable layer is retried as
:func:`~wsgi_channels.consumers.consumer.send_with_retry` does, until the consumer's
``send_timeout``, by the thread that met it once it has given up the sending role,
so one slow client never holds back the other responses.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ..consumers.consumer import send_with_retry
from ..exceptions import ChannelFull, LayerUnavailable

__all__ = ["ReplySender", "MAX_BATCH"]

log = logging.getLogger(__name__)

#: Most messages in one pipeline.
MAX_BATCH = 256


class ReplySender:
    """Group commit of reply messages through ``layer.send_many``, run by the threads that hand them over."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._sending = False

    def put(self, channel: str, message: dict, timeout: float, hold: bool = False) -> None:
        """Send ``message`` now, or with the round after the one in flight (then return at once).

        ``hold``: only queue it; it goes with the next round (:meth:`flush`, or another put).
        """
        with self._lock:
            self._queue.append((channel, message, timeout))
            if self._sending or hold:
                return  # the sending thread takes it in its next round
            self._sending = True
        self._drain()

    def flush(self) -> None:
        """Send what is queued (held), unless a round is in flight, which takes it."""
        with self._lock:
            if self._sending or not self._queue:
                return
            self._sending = True
        self._drain()

    def take(self) -> list:
        """Everything queued (up to :data:`MAX_BATCH`), for a caller that sends it itself and then
        hands the outcomes to :meth:`settle` (the worker sends a batch's responses with its next
        receive)."""
        with self._lock:
            queue = self._queue
            return [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]

    def _drain(self) -> None:
        queue = self._queue
        failed: list = []
        try:
            while True:
                with self._lock:
                    if not queue:
                        self._sending = False
                        break
                    batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                failed += self._send(batch)
        except BaseException:
            with self._lock:
                self._sending = False  # never leave the role taken: the next put sends
            raise
        if failed:
            # Retried only now, with the sending role given up: a full channel (a slow client)
            # must not hold back the other threads' responses.
            self.retry(failed)

    def retry(self, failed: list) -> None:
        """Send again, with :func:`~wsgi_channels.consumers.consumer.send_with_retry`, what :meth:`settle` found
        failed (a full channel, an unreachable layer), until the latest of their deadlines."""
        deadline = time.monotonic() + max(timeout for _, _, timeout in failed)
        for channel, message, _ in failed:
            try:  # a give-up is logged there
                send_with_retry(self.layer, channel, message, max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("could not send a consumer's message to %r", channel)

    def _send(self, batch: list) -> list:
        """One pipeline for ``batch``; returns the items to retry (full channel, layer unreachable)."""
        try:
            outcomes = self.layer.send_many([(channel, message) for channel, message, _ in batch])
        except Exception as e:  # send_many reports per item; this is a bug
            log.exception("sending a batch of %d reply message(s) failed", len(batch))
            outcomes = [e] * len(batch)
        return self.settle(batch, outcomes)

    @staticmethod
    def settle(batch: list, outcomes: list) -> list:
        """Given the ``send_many`` outcomes of ``batch`` (items of :meth:`take`): log the messages that
        can never be sent, and return those to :meth:`retry`."""
        failed = []
        for item, outcome in zip(batch, outcomes):
            if outcome is None:
                continue
            if isinstance(outcome, (ChannelFull, LayerUnavailable)):
                failed.append(item)
            else:
                log.error("could not send a consumer's message to %r: %s", item[0], outcome,
                          extra={"channel": item[0]})
        return failed
