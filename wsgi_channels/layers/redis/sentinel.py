"""Redis behind Sentinel: find the primary of a service, and follow it through a failover.

A ``redis+sentinel://`` URL names sentinels and a service. The layer's shard for it (a
:class:`~.connection.Shard` with a :class:`SentinelLocator`) learns the primary's address
from the sentinels before its first connection (``SENTINEL GET-MASTER-ADDR-BY-NAME``,
asking them in turn, the one that answered last first), and every connection checks with
``ROLE`` that it reached a primary (a sentinel can lag behind a failover).

A failover has to be followed actively: redis-py does not listen for it, and the old
primary neither fails nor refuses anything for a while. After a switch-over it stays a
primary, accepting writes, until a sentinel's periodic ``INFO`` demotes it (up to 10-20 s):
a pub/sub subscription there goes silent, a blocked ``BLPOP`` stays blocked, and writes
succeed and are lost when it resyncs. So one monitor thread per process (a greenlet under
gevent) subscribes to ``+switch-master`` on every sentinel given (the first announcement
wins; a dead sentinel costs nothing) and moves the shard at once (:meth:`.Shard.move`:
pooled connections, the doorbell and blocked pops go to the new primary). As a safety net
for an announcement missed while reconnecting, it asks one sentinel for the primary once a
second, and a connection failure or a ``READONLY`` reply makes the layer ask again too
(at most every 100 ms); a sentinel that still names the failing primary is then passed over
for the next one (it may not have heard yet of a failover its leader completed: sentinels tell
each other every 2 s), and the failing primary is kept only when every sentinel names it.
Questions use ``SENTINEL MASTER``, whose ``config-epoch`` grows with every failover: a
sentinel that has not heard of the latest one yet (it names the old primary, which still says
``ROLE master`` for a while), or is leading one (its leader names the old primary at the new
epoch until the end), is never followed back.

Writes that reach the old primary between its demotion and the move are lost with its
resync; the window is the announcement's latency (milliseconds), or at worst the one
second of the safety net.
"""
from __future__ import annotations

import logging
import select
import threading
import time
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import exceptions as exc
from .connection import fork_generation
from .urls import RedisTopologyURL

__all__ = ["SentinelLocator"]

log = logging.getLogger(__name__)

#: Seconds between the monitor's own questions to a sentinel (the safety net).
REASK_SECONDS = 1.0
#: Least seconds between two questions asked after failures.
REDISCOVER_INTERVAL = 0.1
_RETRY_CONNECT = 1.0
_SSL_OPTIONS = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
                "ssl_check_hostname", "ssl_min_version")


class SentinelLocator:
    """Where the primary of one Sentinel-watched service is, for one shard, and the monitor that
    moves the shard when the sentinels announce a new one."""

    def __init__(self, parsed: RedisTopologyURL, socket_timeout: float, connect_timeout: float,
                 connection_options: dict[str, Any]) -> None:
        self.service = parsed.service_name or ""
        self.sentinels = list(parsed.nodes)
        self.label = str(parsed)
        ssl = {k: v for k, v in connection_options.items() if k in _SSL_OPTIONS} if parsed.sentinel_tls else {}
        self._kwargs = []
        for host, port in self.sentinels:
            pool = redis.ConnectionPool.from_url(
                parsed.sentinel_url(host, port), socket_timeout=min(socket_timeout, 2.0),
                socket_connect_timeout=min(connect_timeout, 1.0), retry=Retry(NoBackoff(), 0), protocol=2, **ssl)
            self._kwargs.append((pool.connection_class, pool.connection_kwargs))
            pool.disconnect()
        self._preferred = 0
        self._asked = float("-inf")
        #: Highest config-epoch seen in an answer, and the least an answer must have to move the
        #: shard (raised past the last answer's by every announcement, which carries none).
        self._epoch_seen = -1
        self._min_epoch = -1
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._generation = fork_generation()
        self._closed = False

    def _connection(self, index: int) -> Any:
        cls, kwargs = self._kwargs[index]
        return cls(**kwargs)

    # -- asking ----------------------------------------------------------------------------

    def ask(self, keep: dict | None = None, failing: tuple[str, int] | None = None) -> tuple[str, int]:
        """The primary's address as the sentinels name it; ``LayerUnavailable`` when none does, or
        none knows of the latest failover announced. ``keep``: a dict in which the connection to
        the sentinel that answered is kept for the next question (the monitor's, once a second).
        ``failing``: the address a call just failed on; a sentinel that still names it is passed
        over for the next one (it may not have heard of a failover that another, its leader, has
        already completed: sentinels tell each other every 2 s), and it is the answer only when
        every sentinel names it."""
        problems = []
        count = len(self.sentinels)
        same: int | None = None  # the first sentinel that named the failing address
        for k in range(count):
            i = (self._preferred + k) % count
            host, port = self.sentinels[i]
            conn = keep.pop(i, None) if keep is not None else None
            try:
                if conn is None:
                    conn = self._connection(i)
                    conn.connect()
                conn.send_command("SENTINEL", "MASTER", self.service, check_health=False)
                reply = conn.read_response()
            except Exception as e:
                problems.append(f"{host}:{port}: {type(e).__name__}: {e}")
                if conn is not None:
                    conn.disconnect()
                continue
            if keep is not None:
                keep[i] = conn
            else:
                conn.disconnect()
            fields = dict(zip(map(_text, reply[::2]), map(_text, reply[1::2]))) if isinstance(reply, list) else {}
            if "ip" not in fields:
                problems.append(f"{host}:{port} does not monitor {self.service!r}")
                continue
            epoch = int(fields.get("config-epoch", 0))
            if epoch < self._min_epoch or "failover_in_progress" in fields.get("flags", ""):
                # Not heard of the latest failover yet, or leading one: its leader names the old
                # primary at the new config-epoch until the very end.
                problems.append(f"{host}:{port} is behind a failover in progress")
                continue
            self._epoch_seen = max(self._epoch_seen, epoch)
            address = (fields["ip"], int(fields["port"]))
            if address != failing:
                self._preferred = i
                return address
            if same is None:
                same = i
        if same is not None and failing is not None:
            self._preferred = same
            return failing
        raise exc.LayerUnavailable(f"no sentinel of {self.label} named a primary for {self.service!r} "
                                   f"({'; '.join(problems)}); the call did not complete")

    def locate(self, shard: Any) -> None:
        """Point ``shard`` at the primary before its first connection, and start the monitor."""
        with self._lock:
            if not shard.located:
                shard.move(*self.ask())
        self.ensure_monitor(shard)

    def rediscover(self, shard: Any) -> bool:
        """Ask again after a failure (at most every :data:`REDISCOVER_INTERVAL`); True when that moved
        ``shard`` to another primary."""
        now = time.monotonic()
        if now - self._asked < REDISCOVER_INTERVAL:
            return False
        self._asked = now
        try:
            address = self.ask(failing=shard.address if shard.located else None)
        except exc.LayerUnavailable as e:
            log.debug("%s", e)
            return False
        return bool(shard.move(*address))

    # -- the monitor ----------------------------------------------------------------------------

    def ensure_monitor(self, shard: Any) -> None:
        if self._closed:
            return
        if self._generation != fork_generation():  # forked: the parent's thread does not exist here
            self._generation, self._thread, self._lock = fork_generation(), None, threading.Lock()
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._thread = threading.Thread(target=self._run, args=(shard, fork_generation()), daemon=True,
                                            name=f"wsgi-channels-sentinel {self.service}")
            self._thread.start()

    def close(self) -> None:
        self._closed = True

    def _run(self, shard: Any, generation: int) -> None:
        subscribed: dict[int, tuple[Any, Any]] = {}  # sentinel index -> (connection, reader)
        asking: dict[int, Any] = {}  # the connection the once-a-second question goes on
        retry_at: dict[int, float] = {}
        last_ask = time.monotonic()
        try:
            while not self._closed and generation == fork_generation() and not shard.closed:
                now = time.monotonic()
                for i in range(len(self.sentinels)):
                    if i not in subscribed and now >= retry_at.get(i, 0.0):
                        try:
                            subscribed[i] = self._subscribe(i)
                        except Exception as e:
                            log.debug("sentinel %s:%s: %s", *self.sentinels[i], e)
                            retry_at[i] = now + _RETRY_CONNECT
                socks = {conn._sock: i for i, (conn, _) in subscribed.items()}
                timeout = max(0.0, last_ask + REASK_SECONDS - now)
                ready = [s for s in socks if getattr(s, "pending", lambda: 0)()]  # TLS bytes already read
                if not ready:
                    if socks:
                        ready = select.select(list(socks), [], [], timeout)[0]
                    else:
                        time.sleep(min(timeout, 0.2))
                for sock in ready:
                    i = socks[sock]
                    conn, reader = subscribed[i]
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        conn.disconnect()
                        del subscribed[i]
                        retry_at[i] = time.monotonic() + 0.2
                        continue
                    reader.feed(data)
                    reply = reader.gets()
                    while reply is not False:
                        self._announced(shard, reply)
                        reply = reader.gets()
                if time.monotonic() - last_ask >= REASK_SECONDS:
                    last_ask = time.monotonic()
                    self._asked = last_ask
                    try:
                        address = self.ask(asking)
                    except exc.LayerUnavailable as e:
                        log.debug("%s", e)
                    else:
                        if shard.move(*address):
                            log.warning("the sentinels name %s:%s as the primary of %r (no announcement seen)",
                                        address[0], address[1], self.service)
        except Exception:  # pragma: no cover - the monitor must never die silently
            log.exception("sentinel monitor of %r stopped", self.service)
        finally:
            for conn in [c for c, _ in subscribed.values()] + list(asking.values()):
                try:
                    conn.disconnect()
                except Exception:  # pragma: no cover
                    pass

    def _subscribe(self, index: int) -> tuple[Any, Any]:
        conn = self._connection(index)
        conn.connect()
        conn.send_command("SUBSCRIBE", "+switch-master", check_health=False)
        return conn, hiredis.Reader()

    def _announced(self, shard: Any, reply: Any) -> None:
        """``+switch-master <service> <old-ip> <old-port> <new-ip> <new-port>``: move to the new primary."""
        if not isinstance(reply, list) or len(reply) < 3 or reply[0] != b"message":
            return
        parts = _text(reply[2]).split()
        if len(parts) == 5 and parts[0] == self.service:
            if shard.move(parts[3], int(parts[4])):
                self._min_epoch = self._epoch_seen + 1


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
