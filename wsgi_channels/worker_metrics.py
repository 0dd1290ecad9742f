"""Prometheus metrics of one worker process (``wsgi-channels worker --admin-bind HOST:PORT``).

The worker's hot path only bumps plain counters under one lock per message;
this collector turns them into Prometheus families when ``/metrics`` is
scraped. Channel labels are the worker's own channel names (a small fixed
set such as ``http.request``), never reply channels.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["WorkerCollector", "make_registry", "serve_metrics"]


class WorkerCollector:
    """Reads a :class:`~wsgi_channels.worker.Worker`'s counters at scrape time."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        w = self.worker
        with w._stats_lock:
            stats = dict(w.stats)
            messages = dict(w.by_channel)
            errors = dict(w.errors_by_channel)
            seconds = dict(w.seconds_by_channel)
        for name, doc, values in (
            ("messages", "Messages handled, by channel", messages),
            ("consumer_errors", "Messages whose consumer raised, by channel", errors),
            ("consumer_seconds", "Time spent in consumers (including their sends), by channel", seconds),
        ):
            family = CounterMetricFamily(f"wsgi_channels_worker_{name}", doc, labels=["channel"])
            for channel in w.channels:
                family.add_metric([channel], values.get(channel, 0))
            yield family
        yield CounterMetricFamily("wsgi_channels_worker_unrouted", "Messages no route matched",
                                  value=stats["unrouted"])
        yield CounterMetricFamily("wsgi_channels_worker_thread_restarts", "Worker threads replaced after dying",
                                  value=stats["restarts"])
        yield CounterMetricFamily("wsgi_channels_worker_batches_handed_out",
                                  "Batches whose message in progress ran so long that the rest went to other threads",
                                  value=stats["handed_out"])
        yield GaugeMetricFamily("wsgi_channels_worker_layer_up", "1 while the channel layer answers",
                                value=1 if w.layer_up else 0)
        yield GaugeMetricFamily("wsgi_channels_worker_concurrency", "Executor threads or greenlets",
                                value=w.concurrency)


def make_registry(worker: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(WorkerCollector(worker))  # type: ignore[arg-type]
    return registry


def serve_metrics(worker: Any, host: str, port: int) -> tuple[str, int]:
    """Serve ``/metrics`` from a daemon thread; returns the bound ``(host, port)``."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=make_registry(worker))
    bound = server.server_address
    return str(bound[0]), int(bound[1])
