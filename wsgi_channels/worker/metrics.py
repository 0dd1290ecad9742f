"""Prometheus metrics of one worker process (``wsgi-channels worker --admin-bind HOST:PORT``).

The worker's hot path only bumps plain counters under one lock per message;
this collector turns them into Prometheus families when ``/metrics`` is
scraped. Channel labels are the worker's own channel names (a small fixed
set such as ``http.request``), never reply channels.

The endpoint answers with ``Server: wsgi-channels-worker``: no Python or
library version is announced (wsgiref's default would be
``WSGIServer/0.2 CPython/3.x.y``).
"""
from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: The ``Server`` header of the metrics endpoint (a name, never a version).
SERVER_NAME = "wsgi-channels-worker"

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
            timed_out = dict(w.timed_out_by_channel)
        for name, doc, values in (
            ("messages", "Messages handled, by channel", messages),
            ("consumer_errors", "Messages whose consumer raised, by channel", errors),
            ("consumer_seconds", "Time spent in consumers (including their sends), by channel", seconds),
            ("messages_timed_out", "Messages given up after running past the time limit, by channel", timed_out),
        ):
            family = CounterMetricFamily(f"wsgi_channels_worker_{name}", doc, labels=["channel"])
            for channel in w.channels:
                family.add_metric([channel], values.get(channel, 0))
            yield family
        yield CounterMetricFamily("wsgi_channels_worker_unrouted",
                                  "Messages no route matched, WebSocket handshakes refused for it included",
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
        yield GaugeMetricFamily("wsgi_channels_worker_abandoned_threads",
                                "Threads replaced after their message ran past the time limit, still running",
                                value=w.abandoned)
        yield GaugeMetricFamily("wsgi_channels_worker_time_limit_seconds",
                                "Seconds a message may run without sending before it is given up (0: no limit)",
                                value=w.time_limit)


def make_registry(worker: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(WorkerCollector(worker))  # type: ignore[arg-type]
    return registry


class _Handler(WSGIRequestHandler):
    """No access log; and the ``Server`` header of error pages (400, 414) names no version either."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return SERVER_NAME


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the worker's exit


def _named(app: Callable[..., Any]) -> Callable[..., Any]:
    """``app`` answering with our ``Server`` header (wsgiref adds its own, with versions, only when absent)."""

    def named(environ: dict, start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, [*headers, ("Server", SERVER_NAME)], exc_info)

        return app(environ, start)

    return named


def serve_metrics(worker: Any, host: str, port: int) -> tuple[str, int]:
    """Serve ``/metrics`` from a daemon thread; returns the bound ``(host, port)``."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    server: WSGIServer = make_server(str(sockaddr[0]), port, _named(make_wsgi_app(make_registry(worker))), server_class,
                         handler_class=_Handler)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    bound = server.server_address
    return str(bound[0]), int(bound[1])
