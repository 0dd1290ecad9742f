"""The sidecar's sends to the layer, coalesced: many connections' messages in one round trip.

Every connection greenlet sends its own messages (``http.request``, body chunks,
``websocket.connect``/``receive``/``disconnect``) and waits for the outcome, as it
would with a plain ``layer.send``. When the layer's ``send_many`` batches
(``send_many_batches``: Redis, one pipeline per shard), or its sends may wait (``ipc://``:
its ``send_many`` sends one by one, but back to back, a flusher taking the store lock
again without waiting for a turn of the loop, and the connections queue in order), the
messages of all connections that send at about the same moment go out together:
a few flusher greenlets each take everything queued, send it as one pipeline (one
write, one read) and hand every connection its own outcome. Under load this turns
one round trip per request into one per batch, on the sidecar and on Redis alike;
a lone send waits only for the next turn of the event loop.

Per-connection order is kept: a connection has at most one send in flight (it waits
for the outcome before its next one). A connection whose message is its last until
the answer arrives (a whole HTTP request) need not wait: :meth:`send_nowait` queues
it and calls back only if it failed, which spares the request a wait, a wake-up and
two greenlet switches. Nothing is resent: a batch whose round trip fails reports
``LayerUnavailable`` for each of its messages, as a lone send would.
At most :data:`FLUSHERS` batches are in flight at once, which also bounds the
sidecar's Redis connections used for sending.

Every wait for an outcome is bounded by ``result_timeout``, enforced by one watchdog
greenlet per sender (started with the first batch) rather than a timer per send,
which would cost a timer start and stop on every request.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

import gevent
import gevent.event

__all__ = ["LayerSender", "FLUSHERS", "MAX_BATCH", "SERIAL_BATCH"]

log = logging.getLogger(__name__)

#: Batches in flight at once (each holds one layer connection while it waits for Redis).
FLUSHERS = 2
#: Most messages in one batch.
MAX_BATCH = 256
#: Most messages in one batch of a layer whose ``send_many`` sends one by one (``ipc://``): the
#: flusher lets the loop run between such batches, or it would keep the store's lock from the
#: receive loop (a lock released and taken again at once is never handed to its waiters).
SERIAL_BATCH = 16


class LayerSender:
    """Coalesce :meth:`send` calls from many greenlets into ``layer.send_many`` batches.

    Every layer has ``send_many`` (:class:`~wsgi_channels.layers.base.BaseChannelLayer`);
    :attr:`batching` tells the connections whether to use this sender (every layer but the
    memory layer, whose ``sends_may_wait`` is False) or to call ``layer.send`` themselves.
    """

    def __init__(self, layer: Any, result_timeout: float) -> None:
        self.layer = layer
        self.send_many = layer.send_many
        # A layer that pipelines send_many (Redis), and one whose sends may wait (ipc: a store lock
        # other processes take too, waited for by sleeping): a flusher's sends follow one another
        # without giving the loop a turn between them, where one greenlet per connection, each
        # woken in turn, managed about one send per loop turn under a reconnect storm (issue 18).
        # Only the memory layer's sends, which never wait, are made by the connections themselves.
        self._batching: bool = layer.send_many_batches or layer.sends_may_wait
        self.result_timeout = result_timeout
        self._queue: deque = deque()
        self._flushers = 0
        self._in_flight: dict[int, tuple[float, list]] = {}  # id -> (started, batch) being sent
        self._watchdog: gevent.Greenlet | None = None

    @property
    def batching(self) -> bool:
        return self._batching

    def send(self, channel: str, message: Any) -> BaseException | None:
        """Queue one message and wait for its outcome: ``None`` when sent, else the exception.

        The wait is bounded: a batch that takes longer than ``result_timeout`` (the layer's
        own socket timeouts normally end it first) reports ``TimeoutError``.
        """
        result: gevent.event.AsyncResult[BaseException | None] = gevent.event.AsyncResult()
        self._enqueue((channel, message, result))
        return result.get()  # bounded by the watchdog

    def send_nowait(self, channel: str, message: Any, on_error: Callable[[BaseException], None]) -> None:
        """Queue one message without waiting; ``on_error(exception)`` is called (from the flusher)
        only if it was not sent, within the same ``result_timeout`` bound as :meth:`send`."""
        self._enqueue((channel, message, _Callback(on_error)))

    def _enqueue(self, item: tuple) -> None:
        self._queue.append(item)
        if self._flushers < FLUSHERS:
            self._flushers += 1
            gevent.spawn(self._flush)  # starts on the next loop turn: what else is ready joins the batch

    def _flush(self) -> None:
        queue = self._queue
        if self._watchdog is None:
            self._watchdog = gevent.spawn(self._watch)
        key = id(gevent.getcurrent())
        try:
            serial = not self.layer.send_many_batches
            most = SERIAL_BATCH if serial else MAX_BATCH
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), most))]
                self._in_flight[key] = (time.monotonic(), batch)
                try:
                    outcomes = self.send_many([(channel, message) for channel, message, _ in batch])
                except Exception as e:  # send_many reports per item; this is a bug
                    log.exception("sending a batch of %d message(s) failed", len(batch))
                    outcomes = [e] * len(batch)
                for (_, _, result), outcome in zip(batch, outcomes):
                    if not result.ready():  # the watchdog may have answered already
                        result.set(outcome)
                if serial and queue:
                    # Sends one by one take the store's lock one after another: give the others
                    # who wait for it (the receive loop above all) their turn between batches.
                    self._in_flight.pop(key, None)
                    gevent.sleep(0)
        finally:
            entry = self._in_flight.pop(key, None)
            if entry is not None:  # killed mid-batch: nobody waits forever
                _answer(entry[1], TimeoutError("the channel layer send was interrupted"))
            self._flushers -= 1
            if queue and self._flushers == 0:  # killed mid-way: never strand what is queued
                self._flushers += 1
                gevent.spawn(self._flush)

    def _watch(self) -> None:
        """Answer ``TimeoutError`` to the senders of any batch in flight for over ``result_timeout``;
        ends when no batch is being sent (the next flusher starts it again)."""
        tick = max(0.05, min(1.0, self.result_timeout / 4))
        try:
            while self._in_flight or self._flushers:
                gevent.sleep(tick)
                limit = time.monotonic() - self.result_timeout
                for started, batch in list(self._in_flight.values()):
                    if started < limit:
                        _answer(batch, TimeoutError(
                            f"no answer from the channel layer within {self.result_timeout:g}s"))
        finally:
            self._watchdog = None


class _Callback:
    """The outcome slot of a :meth:`LayerSender.send_nowait` message: like the ``AsyncResult`` of
    :meth:`LayerSender.send` (``ready``/``set``), but calls back instead of waking a waiter,
    and only on failure."""

    __slots__ = ("on_error", "done")

    def __init__(self, on_error: Callable[[BaseException], None]) -> None:
        self.on_error = on_error
        self.done = False

    def ready(self) -> bool:
        return self.done

    def set(self, outcome: BaseException | None) -> None:
        self.done = True
        if outcome is not None:
            try:
                self.on_error(outcome)
            except Exception:  # one connection's handler must not cost the rest of the batch
                log.exception("handling a failed layer send failed")


def _answer(batch: list, error: BaseException) -> None:
    for _, _, result in batch:
        if not result.ready():
            result.set(error)
