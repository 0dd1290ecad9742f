"""Prometheus metrics of one sidecar process.

The hot paths only bump plain integers on :class:`SidecarStats` (no lock, no
label lookup per frame: one greenlet runs at a time); :class:`StatsCollector`
turns them into Prometheus families when the admin endpoint is scraped.
Names follow the ``wsgi_channels_`` prefix, base units and ``_total`` for counters.
"""
from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Callable, Iterator

from greenlet import greenlet

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app

__all__ = ["SidecarStats", "StatsCollector", "make_registry", "make_metrics_app"]


class SidecarStats:
    """Counters and gauges of a sidecar, as plain attributes."""

    def __init__(self) -> None:
        self.websockets_open = 0
        self.http_open = 0
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.slow_closed = 0
        self.dead_closed = 0
        self.layer_errors = 0
        self.layer_up = 1
        self.layer_messages = 0
        self.handshakes: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.http_responses: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        #: Resumes after reconnect by outcome (``recovered``, ``gap_<why>``, ``duplicate_dropped``), live
        #: messages put back in order (``reordered``: after a late copy; ``filled``: read from the
        #: history; ``hole_gap_<why>``), presence upkeep (``presence_refresh_commands``,
        #: ``presence_reasserted``, ``presence_swept``, ``presence_removed``, ``presence_count_reads``)
        #: and presence frames (``presence_frames`` written, ``presence_merged`` changes merged).
        self.resumes: Counter[str] = Counter()
        #: Connections the server tracks (set by the server; compared with the gauges in leak tests).
        self.tracked: Callable[[], int] = lambda: 0
        #: Bytes queued for all clients (set by the server).
        self.queued: Callable[[], int] = lambda: 0

    def snapshot(self) -> dict[str, Any]:
        """Plain dict of everything (used by tests and the health endpoint)."""
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if isinstance(v, int)}
        out["handshakes"] = dict(self.handshakes)
        out["dropped"] = dict(self.dropped)
        out["http_responses"] = dict(self.http_responses)
        out["resumes"] = dict(self.resumes)
        return out


class StatsCollector:
    """A prometheus_client collector reading :class:`SidecarStats` at scrape time."""

    def __init__(self, stats: SidecarStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator:
        s = self.stats
        g = GaugeMetricFamily("wsgi_channels_sidecar_open_connections", "Open client connections", labels=["kind"])
        g.add_metric(["websocket"], s.websockets_open)
        g.add_metric(["http"], s.http_open)
        yield g
        yield GaugeMetricFamily("wsgi_channels_sidecar_tracked_connections",
                                "Client connections the server holds state for", value=s.tracked())
        # Walking the heap costs milliseconds: fine at scrape time, never on a hot path. The type is
        # asked of type(), never of the object: isinstance() reads ``__class__``, which a lazy proxy
        # (Django's settings-backed objects, in a process that embeds the sidecar) answers by loading.
        yield GaugeMetricFamily("wsgi_channels_sidecar_greenlets", "Live greenlets in the process",
                                value=sum(1 for o in gc.get_objects() if issubclass(type(o), greenlet) and not o.dead))
        yield GaugeMetricFamily("wsgi_channels_sidecar_layer_up", "1 while the channel layer answers",
                                value=s.layer_up)
        yield GaugeMetricFamily("wsgi_channels_sidecar_queued_bytes",
                                "Bytes queued for clients that the kernel has not taken yet", value=s.queued())
        for name, doc, value in (
            ("frames_received", "WebSocket messages received from clients", s.frames_in),
            ("frames_sent", "WebSocket messages sent to clients", s.frames_out),
            ("received_bytes", "Bytes received from clients", s.bytes_in),
            ("sent_bytes", "Bytes written to clients", s.bytes_out),
            ("slow_closed", "Connections closed because the client did not read fast enough (its own bound, "
                            "or the slowest when all queues together passed theirs; see dropped)", s.slow_closed),
            ("dead_closed", "WebSockets closed because they did not answer a ping in time", s.dead_closed),
            ("layer_errors", "Channel layer operations that failed (unreachable or erroring)", s.layer_errors),
            ("layer_messages", "Messages taken from this process's channel prefix", s.layer_messages),
        ):
            yield CounterMetricFamily(f"wsgi_channels_sidecar_{name}", doc, value=value)
        for name, doc, label, counter in (
            ("handshakes", "WebSocket handshakes by outcome", "outcome", s.handshakes),
            ("dropped", "Connections or messages dropped, by reason", "reason", s.dropped),
            ("http_responses", "HTTP responses by status class", "status", s.http_responses),
            ("history", "Resumes after reconnect by outcome, and presence upkeep", "outcome", s.resumes),
        ):
            c = CounterMetricFamily(f"wsgi_channels_sidecar_{name}", doc, labels=[label])
            for label_value, value in sorted(counter.items()):
                c.add_metric([str(label_value)], value)
            yield c
        c = CounterMetricFamily("wsgi_channels_sidecar_closes", "WebSocket closes by close code", labels=["code"])
        for key, value in sorted(s.closes.items()):
            c.add_metric([str(key)], value)
        yield c


def make_registry(stats: SidecarStats) -> CollectorRegistry:
    """A registry of this sidecar's own (so several sidecars in one test process never clash)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatsCollector(stats))  # type: ignore[arg-type]
    return registry


def make_metrics_app(registry: CollectorRegistry) -> Callable:
    """The WSGI app serving ``/metrics`` in the Prometheus text format."""
    return make_wsgi_app(registry)
