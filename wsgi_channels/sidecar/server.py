"""The sidecar process: listeners, the one layer receive loop, the sweeper, and draining.

Life of a sidecar (:meth:`Sidecar.serve_forever`)::

    listen on every --bind address         (one greenlet per client socket: ClientConnection.run)
    receive loop: layer.receive([prefix!]) -> batch -> connection.deliver(message)
    sweeper: every tick, each connection checks its deadlines (handshake, connect, HTTP, pings)
    state watch: a marker membership of our own; when the layer loses it (a Redis back
                 from a restart without its data) WebSockets get close 1012 to rejoin
    SIGTERM/SIGINT: stop accepting; WebSockets get close 1001; in-flight HTTP finishes;
                    after the grace period the rest is dropped; disconnects are sent; exit 0

Bounds: each connection takes its turn on the event loop (a flood on one socket leaves the
others' latency nearly alone), each client's queued output is bounded by
``max_outgoing_buffer`` and all of them together by ``max_outgoing_total``
(:meth:`Sidecar.shed_outgoing` closes the clients with the most queued first).

The process reads exactly one layer prefix, its own unguessable ``sidecar.XXXX!``;
every reply channel it hands out is that prefix plus a random suffix. While the layer
is unreachable the receive loop retries with backoff, open sockets stay up, new
handshakes and HTTP requests get 503, and service resumes by itself.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import signal
import socket
import stat
import time
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.server

from ..channel import default_layer_url
from ..config import parse_address
from ..exceptions import ConfigurationError
from ..layers import from_url
from ..layers.base import BaseChannelLayer
from ..layers.names import SIDECAR_PREFIX, new_local_channel, new_process_prefix
from ..protocol.close_codes import CLOSE_GOING_AWAY, CLOSE_SERVICE_RESTART
from ..protocol.http import raw_response
from .common import LAYER_SLOT_TIMEOUT
from .config import RECEIVE_OVERHEAD, SidecarConfig
from .connection import ClientConnection
from .metrics import SidecarStats, make_metrics_app, make_registry
from .presence import PresenceKeeper
from .resume import HistoryReader
from .sender import LayerSender
from .websocket_side import FrameCache

__all__ = ["Sidecar", "STATIC_DIR"]

log = logging.getLogger(__name__)

#: Most layer calls (sends) in flight at once from connection greenlets.
LAYER_CONCURRENCY = 16
#: Encoded frames kept for resumes' replays (a storm of clients replays the same history).
REPLAY_FRAMES = 4096
#: Environment variable: a file the sidecar writes a cProfile of its whole run to when it stops
#: (``python -m pstats FILE``); a diagnostic, off unless set.
PROFILE_ENV = "WSGI_CHANNELS_SIDECAR_PROFILE"
#: Seconds between checks that the layer still holds this sidecar's marker membership.
STATE_CHECK_SECONDS = 2.0

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


class Sidecar:
    """A WebSocket (and optional HTTP) server that speaks to the app through a channel layer."""

    STATIC_PREFIX = b"/_wsgi_channels/static/"

    def __init__(self, config: SidecarConfig, layer: BaseChannelLayer | None = None) -> None:
        self.config = config
        self.layer = layer if layer is not None else from_url(config.layer or default_layer_url())
        self._check_message_sizes()
        self.prefix = new_process_prefix(SIDECAR_PREFIX.rstrip("."))  # gets the layer's process_capacity
        self.stats = SidecarStats()
        #: The presence entries of this process's sockets (it owns them: see .presence).
        self.presence = PresenceKeeper(self)
        #: Resumes' history reads, coalesced (see .resume).
        self.history_reader = HistoryReader(self.layer)
        #: Bytes queued for all clients (what the kernel did not take yet); max_outgoing_total bounds it.
        self.queued_bytes = 0
        self.routes: dict[str, ClientConnection] = {}
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.layer_ok = True
        self._layer_down_since: float | None = None
        self._servers: list[gevent.server.StreamServer] = []
        self._unix_paths: list[str] = []
        self._admin: Any = None
        self._loops: list[gevent.Greenlet] = []
        self._stopped = gevent.event.Event()
        self._static = self._load_static()
        self.addresses: list[Any] = []
        self._frames = FrameCache()
        #: Frames of resumes' replays (history messages and their positions), shared by sockets.
        self.replay_frames = FrameCache(limit=REPLAY_FRAMES)
        #: Layer calls in flight from connection greenlets at once. Each call in flight holds a
        #: pooled layer connection, so this bounds the sidecar's Redis connections however
        #: many clients connect at the same moment (plus the receive loop's and the wake-ups').
        self.layer_slots = gevent.lock.BoundedSemaphore(LAYER_CONCURRENCY)
        #: Handshakes that found ``websocket.connect`` full wait for it in order (websocket_side.send_connect).
        self.connect_gate = gevent.lock.Semaphore(1)
        #: Sends coalesced into one round trip per batch when the layer's ``send_many`` batches
        #: (``send_many_batches``; the connections check ``sender.batching``).
        self.sender = LayerSender(self.layer, LAYER_SLOT_TIMEOUT)
        # A group and member of our own whose loss means the layer lost its state; connection
        # suffixes are 12 characters long, so the member channel (suffix "0") is never routed.
        self._state_marker = ("wsgi_channels.alive." + self.prefix.rstrip("!"), f"{self.prefix}0")
        # After a failover the layer re-adds recent memberships itself; the marker is checked at once.
        self._state_due = gevent.event.Event()
        self.layer.on_topology_change(self._state_due.set)

    def _check_message_sizes(self) -> None:
        """A client message at ``max_message_size`` must fit the layer with its path and keys."""
        config = self.config
        limit = getattr(self.layer, "max_message_size", None)
        need = config.max_message_size + config.max_header_size + RECEIVE_OVERHEAD
        if isinstance(limit, int) and need > limit:
            most = limit - config.max_header_size - RECEIVE_OVERHEAD
            raise ConfigurationError(
                f"sidecar max_message_size ({config.max_message_size}) plus max_header_size "
                f"({config.max_header_size}, the longest path a websocket.receive carries) plus {RECEIVE_OVERHEAD} "
                f"for its other keys is over the layer's max_message_size ({limit}): a client message at the "
                f"limit could not be passed on. Lower max_message_size to {most} or less, or raise the layer's "
                "max_message_size (a layer URL option)")

    # -- routing ----------------------------------------------------------------------------

    def route(self, conn: ClientConnection) -> str:
        """A new reply channel on this process's prefix, routed to ``conn``."""
        name = new_local_channel(self.prefix)
        while name in self.routes:  # 72 random bits: practically never
            name = new_local_channel(self.prefix)
        self.routes[name] = conn
        return name

    def unroute(self, name: str) -> None:
        self.routes.pop(name, None)

    def forget(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if conn.is_websocket:
                self.stats.websockets_open -= 1
            else:
                self.stats.http_open -= 1
        if conn.reply_channel is not None:
            self.routes.pop(conn.reply_channel, None)

    # -- output bounds ----------------------------------------------------------------------

    def shed_outgoing(self) -> None:
        """All queued output passed ``max_outgoing_total``: close the clients with the most queued
        (the slowest readers) until the total is under three quarters of it, so the next writes
        do not each close one more. Each is counted (``slow_closed``, ``dropped{outgoing_cap}``).
        An open WebSocket keeps the rest of the frame being written and a close frame; anything
        else (HTTP, a WebSocket already closing) is dropped at once, so the bound holds."""
        target = self.config.max_outgoing_total * 3 // 4
        queued = sorted((c for c in self.connections if c.out_bytes and not c.aborted),
                        key=lambda c: c.out_bytes, reverse=True)
        for conn in queued:
            if self.queued_bytes <= target:
                break
            try:
                conn.slow("outgoing_cap")
            except Exception:  # never the writing connection's problem
                log.exception("shedding %s failed", conn.peer)
                conn.abort()

    # -- the layer --------------------------------------------------------------------------

    def layer_failed(self, error: BaseException) -> None:
        """A layer operation failed: count it, and mark the layer down until the loop gets through."""
        self.stats.layer_errors += 1
        if self.layer_ok:
            self.layer_ok = False
            self.stats.layer_up = 0
            self._layer_down_since = time.monotonic()
            log.warning("channel layer unavailable (%s: %s); new connections get 503 until it is back",
                        type(error).__name__, error)

    def _layer_back(self) -> None:
        if not self.layer_ok:
            gap = time.monotonic() - (self._layer_down_since or time.monotonic())
            log.warning("channel layer is back after %.1fs", gap)
            self.layer_ok = True
            self.stats.layer_up = 1

    def _take_batch(self, first_timeout: float) -> list[tuple[str, dict]]:
        """Up to ``receive_batch`` messages (waiting at most ``first_timeout`` for the first).

        The layer's ``receive_batch`` hands over many messages per round trip where it can.
        The loop only frames what it gets and never changes it, so the members of one group
        message may share one dict (``shared``).
        """
        return self.layer.receive_batch([self.prefix], self.config.receive_batch, block=True,
                                        timeout=first_timeout, shared=True)

    def _receive_loop(self) -> None:
        """The only reader of this process's prefix: take batches, hand each message to its connection."""
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                batch = self._take_batch(1.0)
            except Exception as e:
                self.layer_failed(e)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self._layer_back()
            if not batch:
                continue
            self.stats.layer_messages += len(batch)
            # The last encoded frame is kept: the members of one group message arrive one after
            # another, and all their uncompressed sockets get the same bytes.
            frames = self._frames
            routes = self.routes
            for channel, message in batch:
                conn = routes.get(channel)
                if conn is None:
                    self.stats.dropped["no_connection"] += 1
                    continue
                try:
                    conn.deliver(message, frames)
                except Exception:
                    log.exception("delivering to %s failed", channel)
                    conn.abort()
            if len(batch) > 1:
                gevent.sleep(0)  # let readers and writers run between batches

    # -- timers -----------------------------------------------------------------------------

    def _tick(self) -> float:
        c = self.config
        candidates = [c.handshake_timeout, c.connect_timeout, c.http_timeout, c.ping_timeout]
        if c.ping_interval:
            candidates.append(c.ping_interval)
        return max(0.05, min(1.0, min(candidates) / 4))

    def _sweeper(self) -> None:
        tick = self._tick()
        while not self._stopped.is_set():
            gevent.sleep(tick)
            now = time.monotonic()
            for conn in list(self.connections):
                try:
                    conn.check_timers(now)
                except Exception:
                    log.exception("timer check failed for %s", conn.peer)
                    conn.abort()

    def _watch_layer_state(self) -> None:
        """Notice a layer that lost its state, and make clients rejoin.

        Group memberships live in the layer; a Redis that restarts without persistence
        comes back empty, and sockets that stay open would never hear from their groups
        again. The sidecar keeps one membership of its own (a channel on its prefix that
        never receives, stored beside its connections' memberships) and checks it every
        few seconds; when it is gone, every WebSocket is closed with 1012 ("service
        restart", a code the shipped client reconnects after), so the connect consumers
        run again and rejoin their groups.
        """
        group, marker = self._state_marker
        renewed = None
        while not self._stopped.is_set():
            try:
                if renewed is None:
                    self.layer.group_add(group, marker)
                    renewed = time.monotonic()
                elif marker not in self.layer.group_channels(group):
                    self._layer_state_lost()
                    self.layer.group_add(group, marker)
                    renewed = time.monotonic()
                elif time.monotonic() - renewed > self.layer.group_expiry / 4:
                    self.layer.group_add(group, marker)
                    renewed = time.monotonic()
            except Exception as e:  # the receive loop reports outages; try again next time
                log.debug("layer state check failed: %s", e)
            gevent.wait([self._stopped, self._state_due], timeout=STATE_CHECK_SECONDS, count=1)
            self._state_due.clear()

    def _layer_state_lost(self) -> None:
        sockets = [conn for conn in list(self.connections) if conn.is_websocket]
        log.warning("the channel layer lost its state (group memberships are gone); closing %d WebSocket(s) "
                    "with 1012 so clients reconnect and rejoin", len(sockets))
        self.stats.dropped["layer_state_lost"] += len(sockets)
        for conn in sockets:
            try:
                conn.send_ws_close(CLOSE_SERVICE_RESTART)
            except Exception:
                conn.abort()

    # -- accepting --------------------------------------------------------------------------

    def _handle(self, sock: socket.socket, peer: Any) -> None:
        limit = self.config.max_connections
        if self.draining or (limit and len(self.connections) >= limit):
            self.stats.dropped["connection_limit" if not self.draining else "draining"] += 1
            try:
                sock.sendall(raw_response(503))
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(1.0)
                sock.recv(65536)
            except OSError:
                pass
            sock.close()
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # unix sockets
        conn = ClientConnection(self, sock, peer)
        self.connections.add(conn)
        self.stats.http_open += 1
        conn.run()

    def _listen(self, address: str) -> gevent.server.StreamServer:
        host, port = parse_address(address)
        if host == "unix":
            path = str(port)
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)  # left by an earlier run; any other file is never removed
            except FileNotFoundError:
                pass
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
            except OSError as e:
                listener.close()
                raise OSError(e.errno, f"{e.strerror}: unix:{path}") from None
            listener.listen(4096)
            self._unix_paths.append(path)
            server = gevent.server.StreamServer(listener, self._handle)
        else:
            server = gevent.server.StreamServer((host, port), self._handle, backlog=4096)
        server.start()
        self.addresses.append(server.address)
        log.info("sidecar listening on %s", address if host == "unix" else "%s:%d" % server.address[:2])
        return server

    def start(self) -> None:
        """Listen, start the receive loop, the sweeper and the admin endpoint; return at once.

        The admin endpoint binds first, then every ``--bind`` address: once a client can
        connect to the main port, the metrics answer too (a client that saw the sidecar listen
        never gets "connection refused" from its admin port). When any address cannot be
        bound, nothing stays listening and the error is raised.
        """
        self.stats.tracked = lambda: len(self.connections)
        self.stats.queued = lambda: self.queued_bytes
        try:
            if self.config.admin_bind:
                from gevent.pywsgi import WSGIServer

                host, port = parse_address(self.config.admin_bind)
                self._admin = WSGIServer((host, port), make_metrics_app(make_registry(self.stats)), log=None)
                self._admin.start()
                log.info("metrics on http://%s:%d/metrics", host, self._admin.address[1])
            for address in self.config.bind:
                self._servers.append(self._listen(address))
        except BaseException:
            self._close_listeners()
            raise
        self._loops = [gevent.spawn(self._receive_loop), gevent.spawn(self._sweeper),
                       gevent.spawn(self._watch_layer_state), gevent.spawn(self.presence.run, self._stopped)]
        log.info("sidecar prefix %s, layer %s, http %s", self.prefix, type(self.layer).__name__, self.config.http)

    def serve_forever(self) -> int:
        """Run until SIGTERM or SIGINT, then drain; the exit status."""
        profile_path = os.environ.get(PROFILE_ENV) or ""
        profiler = None
        if profile_path:  # a diagnostic: every greenlet's time, written when the process stops
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
            gevent.spawn(self._log_load)
        self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self._on_signal, sig)
        self._stopped.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
            log.warning("profile written to %s (%s)", profile_path, PROFILE_ENV)
        return 0

    def _log_load(self) -> None:
        """With :data:`PROFILE_ENV`: every second, the connections by state and the sends queued."""
        while not self._stopped.is_set():
            gevent.sleep(1.0)
            states: dict[str, int] = {}
            for conn in list(self.connections):
                states[conn.state.name] = states.get(conn.state.name, 0) + 1
            log.warning("load: %s; sends queued %d; layer %s; handshakes %s; dropped %s; messages %d",
                        states, len(self.sender._queue), "up" if self.layer_ok else "down",
                        dict(self.stats.handshakes), dict(self.stats.dropped), self.stats.layer_messages)

    def _on_signal(self, sig: int) -> None:
        if not self.draining:
            log.info("signal %d: draining (grace period %.1fs)", sig, self.config.grace_period)
            gevent.spawn(self.stop)

    # -- stopping ---------------------------------------------------------------------------

    def _close_listeners(self) -> None:
        """Stop listening on every ``--bind`` address (the admin endpoint too when ``admin``)."""
        for server in self._servers:
            server.close()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._unix_paths.clear()
        if self._admin is not None and not self._loops:  # start() failed: nothing else will stop it
            self._admin.stop(timeout=1)
            self._admin = None

    def stop(self, grace_period: float | None = None) -> None:
        """Stop accepting, close WebSockets with 1001, let HTTP finish, then drop what is left."""
        grace = self.config.grace_period if grace_period is None else grace_period
        self.draining = True
        self._close_listeners()
        for conn in list(self.connections):
            try:
                conn.drain(CLOSE_GOING_AWAY)
            except Exception:
                conn.abort()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        deadline = time.monotonic() + 5.0
        while self.connections and time.monotonic() < deadline:
            gevent.sleep(0.05)  # readers send the disconnects
        if self._admin is not None:
            self._admin.stop(timeout=1)
        self._stopped.set()
        self.presence.stop()
        try:
            self.layer.group_discard(*self._state_marker)
        except Exception:  # the layer is down: the marker expires with group_expiry
            pass
        gevent.joinall(self._loops, timeout=3)
        log.info("sidecar stopped")

    # -- static files -----------------------------------------------------------------------

    @staticmethod
    def _load_static() -> dict[str, tuple[bytes, bytes]]:
        """The shipped browser client files, read once; only these names are ever served."""
        files: dict[str, tuple[bytes, bytes]] = {}
        if os.path.isdir(STATIC_DIR):
            for name in os.listdir(STATIC_DIR):
                path = os.path.join(STATIC_DIR, name)
                if os.path.isfile(path) and not name.startswith("."):
                    ctype = "text/javascript" if name.endswith((".js", ".mjs")) else (
                        mimetypes.guess_type(name)[0] or "application/octet-stream")
                    with open(path, "rb") as fh:
                        files[name] = (fh.read(), f"{ctype}; charset=utf-8".encode())
        return files

    def static_file(self, name: str) -> tuple[int, bytes, bytes]:
        entry = self._static.get(name)
        if entry is None:
            return 404, b"404 Not Found\n", b"text/plain; charset=utf-8"
        return 200, entry[0], entry[1]

