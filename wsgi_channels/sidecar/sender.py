"""The sidecar's sends to the layer, coalesced: many connections' messages in one round trip.

Every connection greenlet sends its own messages (``http.request``, body chunks,
``websocket.connect``/``receive``/``disconnect``) and waits for the outcome, as it
would with a plain ``layer.send``. When the layer has ``send_many`` (Redis), the
messages of all connections that send at about the same moment go out together:
a few flusher greenlets each take everything queued, send it as one pipeline (one
write, one read) and hand every connection its own outcome. Under load this turns
one round trip per request into one per batch, on the sidecar and on Redis alike;
a lone send waits only for the next turn of the event loop.

Per-connection order is kept: a connection has at most one send in flight (it waits
for the outcome before its next one). Nothing is resent: a batch whose round trip
fails reports ``LayerUnavailable`` for each of its messages, as a lone send would.
At most :data:`FLUSHERS` batches are in flight at once, which also bounds the
sidecar's Redis connections used for sending.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Any

import gevent
import gevent.event

__all__ = ["LayerSender", "FLUSHERS", "MAX_BATCH"]

log = logging.getLogger(__name__)

#: Batches in flight at once (each holds one layer connection while it waits for Redis).
FLUSHERS = 2
#: Most messages in one batch.
MAX_BATCH = 256


class LayerSender:
    """Coalesce :meth:`send` calls from many greenlets into ``layer.send_many`` batches."""

    def __init__(self, layer: Any, result_timeout: float) -> None:
        self.layer = layer
        self.send_many = getattr(layer, "send_many", None)
        self.result_timeout = result_timeout
        self._queue: deque = deque()
        self._flushers = 0

    @property
    def batching(self) -> bool:
        return self.send_many is not None

    def send(self, channel: str, message: dict) -> BaseException | None:
        """Queue one message and wait for its outcome: ``None`` when sent, else the exception.

        The wait is bounded: a batch that takes longer than ``result_timeout`` (the layer's
        own socket timeouts normally end it first) reports ``TimeoutError``.
        """
        result = gevent.event.AsyncResult()
        self._queue.append((channel, message, result))
        if self._flushers < FLUSHERS:
            self._flushers += 1
            gevent.spawn(self._flush)  # starts on the next loop turn: what else is ready joins the batch
        try:
            return result.get(timeout=self.result_timeout)
        except gevent.Timeout:
            return TimeoutError(f"no answer from the channel layer within {self.result_timeout:g}s")

    def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
                try:
                    outcomes = self.send_many([(channel, message) for channel, message, _ in batch])
                except Exception as e:  # send_many reports per item; this is a bug or a kill
                    log.exception("sending a batch of %d message(s) failed", len(batch))
                    outcomes = [e] * len(batch)
                for (_, _, result), outcome in zip(batch, outcomes):
                    result.set(outcome)
        finally:
            self._flushers -= 1
            if queue and self._flushers == 0:  # killed mid-way: never strand what is queued
                self._flushers += 1
                gevent.spawn(self._flush)
