"""Connections to one Redis server for the Redis layer: a small fork-aware pool per shard.

redis-py makes each connection (TLS, AUTH, SELECT, its timeouts); commands are packed
by hiredis (the hot ones once, see :func:`bulk`) and replies read with our own
hiredis reader straight from the socket, which keeps a call to a few microseconds
above the network round trip. On a plain TCP or Unix socket the read and write
timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO`` on a blocking socket):
the same bound as Python's socket timeout, without its extra ``poll`` before every
``send`` and ``recv``.

Idle connections are closed after :data:`IDLE_CLOSE` seconds, so a burst of
concurrent calls does not leave its connections open for the life of the process.

Nothing is ever retried behind the caller's back: a resent ``send`` could deliver
twice. A network failure closes that connection and raises
:class:`~wsgi_channels.exceptions.LayerUnavailable`; the next call connects afresh,
so a Redis restart needs no process restart. A pooled connection that became
readable while idle (the server closed it: a restart) is replaced before use,
which is safe because nothing was sent on it.

Per-process state is dropped in a forked child (gunicorn forks after import): the
parent's sockets are abandoned there, never used or closed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Sequence
from urllib.parse import urlsplit

import redis
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ... import exceptions as exc
from .link import NOW, Link, Script, _pack, bulk, packed
from .wakeup import Doorbell

__all__ = ["Script", "Shard", "bulk", "packed", "run_everywhere", "fork_generation", "NETWORK_ERRORS", "IDLE_CLOSE",
           "NOW"]

log = logging.getLogger(__name__)

NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
#: Seconds a pooled connection may sit unused before it is closed (checked at most once a second).
IDLE_CLOSE = 30.0
#: A connection idle for longer than this is checked for a close by the server before use. A
#: connection used within the last moment skips the check (a system call): a server that closed
#: it in that moment is down or restarting, and the call fails as any call would then.
_STALE_CHECK_AFTER = 0.002

# Bumped in every forked child: per-process state compares it instead of calling getpid().
_fork_generation = 0


def fork_generation() -> int:
    """A number that changes in every forked child (cheaper than comparing ``os.getpid()``)."""
    return _fork_generation


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)

class Shard:
    """One Redis server: a small per-process connection pool and its wake-up listener.

    The server behind a shard may change: a Sentinel-watched service fails over to another
    primary (:mod:`.sentinel` calls :meth:`move`). Links carry the shard's :attr:`epoch` of
    when they were made; after a move, idle ones are closed at once and busy ones when they
    are given back, the doorbell reconnects, and blocking commands in flight on the old
    server are released (``CLIENT UNBLOCK``), so every caller goes on with the new server.
    A shard with a ``locator`` asks it where the server is before its first connection and
    checks at every connection (``ROLE``, in the same round trip as ``TIME``) that it reached
    a primary.
    """

    #: Key layout: the standalone one (``P:kind:{name}``); a Redis Cluster bucket has its own.
    cluster = False

    def __init__(self, url: str, options: dict[str, Any], key_prefix: str = "", locator: Any = None,
                 sharded_bell: bool = False, probe: bool = False) -> None:
        parts = urlsplit(url)
        pool = redis.ConnectionPool.from_url(url, **options)
        self.connection_class = pool.connection_class
        self.connection_kwargs = pool.connection_kwargs
        pool.disconnect()
        self._scheme = parts.scheme
        self._set_labels()
        self._p = key_prefix
        self._generation = _fork_generation
        self.clock_offset = 0.0  # Redis clock minus ours, in ms, from the latest connection
        self._free: deque = deque()  # idle links, most recently used on the right
        self._trimmed = time.monotonic()
        self._bell: Doorbell | None = None
        self._bell_lock = threading.Lock()
        self._sharded_bell = sharded_bell
        #: Whether the server has ``BLMPOP`` (Redis 7+): None until a batch receive tries it.
        self.blmpop: bool | None = None
        #: Bumped by every :meth:`move`: which server this shard stands for.
        self.epoch = 0
        self.locator = locator
        #: Whether the server behind this shard can change under it (a failover).
        self.fails_over = locator is not None
        self.located = locator is None
        self._connect_extra: tuple[bytes, ...] = (packed("ROLE"), packed("CLIENT", "ID")) if locator is not None else ()
        self._blocked: dict[Link, None] = {}  # links inside a blocking command (an ordered set)
        self._move_lock = threading.Lock()
        self._on_move: list = []
        self.closed = False
        #: Called by the doorbell when the server says its subscriptions' slot moved (Cluster).
        self.on_bell_moved: Any = None
        #: Whether the server is a Redis Cluster node: asked (``CLUSTER INFO``) with the first
        #: connection's ``TIME`` when ``probe``, else None.
        self.cluster_enabled: bool | None = None
        if probe:
            # CLUSTER INFO (ACL @slow, unlike INFO) answers on a Cluster node, and refuses elsewhere.
            self._connect_extra = (packed("CLUSTER", "INFO"),)

    def _set_labels(self) -> None:
        kw = self.connection_kwargs
        host, port = kw.get("host"), kw.get("port")
        self.address: tuple[str, int] = (str(host), int(port or 0))
        self.label = f"{self._scheme}://{host}:{port}/{kw.get('db', 0)}"
        self.identity = f"{host}:{port}/{kw.get('db', 0)}"

    def key(self, kind: str, name: str) -> bytes:
        """The key of ``name``'s ``kind`` (``q``, ``u``, ``m``, ``s``, ...): ``P:kind:{name}``."""
        return f"{self._p}{kind}:{{{name}}}".encode()

    def node(self) -> "Shard":
        """The server commands for this shard go to (itself; a Cluster bucket answers with its owner)."""
        return self

    @property
    def topology_epoch(self) -> int:
        return self.epoch

    def recheck(self) -> bool:
        """Ask again where the server is (after a failure); True when that moved this shard."""
        return self.locator is not None and self.locator.rediscover(self)

    # -- connections ------------------------------------------------------------------------

    def _new_connection(self) -> Any:
        if not self.located:
            self.locator.locate(self)
        return self.connection_class(**self.connection_kwargs)

    def _check_pid(self) -> None:
        if self._generation != _fork_generation:
            # Forked: the parent's sockets and listener stay the parent's (abandoned, never closed).
            self._generation = _fork_generation
            self._free = deque()
            self._bell = None
            self._bell_lock = threading.Lock()
            self._blocked = {}
            self._move_lock = threading.Lock()
            if self.locator is not None and self.located:
                self.locator.ensure_monitor(self)  # the parent's monitor thread does not exist here
    def acquire(self) -> Link:
        if self._generation != _fork_generation:
            self._check_pid()
        try:
            link = self._free.pop()
        except IndexError:
            epoch = self.epoch
            link = Link(self._new_connection(), epoch)
        else:
            if time.monotonic() - link.used < _STALE_CHECK_AFTER:
                return link
        try:
            if link.sock is None:
                self._connect(link)
            elif link.stale():
                # Nothing was sent on it yet, so a fresh connection is safe.
                link.disconnect()
                self._connect(link)
        except AuthenticationError as e:
            link.disconnect()
            raise exc.ConfigurationError(
                f"Redis at {self.label} refused authentication ({e}): check the password (and user name) "
                "in the layer URL"
            ) from None
        except _NotPrimary as e:
            link.disconnect()
            if self.recheck():  # the sentinels name another primary now: nothing was sent, go there
                return self.acquire()
            raise self.unavailable(e, sent=False) from None
        except ResponseError as e:
            link.disconnect()
            if "not allowed in cluster mode" in str(e):
                raise exc.ConfigurationError(
                    f"{self.label} is a Redis Cluster node, and a Redis Cluster has only database 0: use /0 in the "
                    "URL (or a redis+cluster:// URL)") from None
            raise exc.ConfigurationError(f"Redis at {self.label} refused the connection: {e}") from None
        except NETWORK_ERRORS as e:
            link.disconnect()
            raise self.unavailable(e, sent=False) from e
        return link

    def probe_cluster(self) -> bool:
        """Whether this server is a Redis Cluster node (learnt with its first connection)."""
        if self.cluster_enabled is None:
            self.release(self.acquire())
        return bool(self.cluster_enabled)

    def _connect(self, link: Link) -> None:
        self.clock_offset, extra = link.connect(self._connect_extra)
        if len(extra) == 1:  # the probe: "cluster support disabled" on a standalone server
            info = extra[0]
            self.cluster_enabled = isinstance(info, bytes) and b"cluster_state:" in info
            self._connect_extra = ()
        elif extra:
            role, client_id = extra
            if isinstance(role, ResponseError) and str(role).startswith(("NOPERM", "ERR unknown command")):
                pass  # ROLE is not allowed to this user (ACL @admin): a READONLY reply will tell instead
            elif isinstance(role, ResponseError) or not role or role[0] != b"master":
                raise _NotPrimary(f"{self.address[0]}:{self.address[1]} is not a primary "
                                  f"(ROLE: {role[0] if isinstance(role, list) and role else role!r})")
            link.client_id = client_id if isinstance(client_id, int) else None

    def release(self, link: Link) -> None:
        if self._generation != _fork_generation:
            return
        if link.epoch != self.epoch or self.closed:
            link.disconnect()  # made for the server this shard stood for before a move
            return
        now = link.used = time.monotonic()
        self._free.append(link)
        if now - self._trimmed > 1.0:
            self._trim(now)

    def _trim(self, now: float) -> None:
        """Close the links idle for more than :data:`IDLE_CLOSE` (the least recently used are on the left)."""
        self._trimmed = now
        free = self._free
        while len(free) > 1:
            try:
                oldest = free.popleft()
            except IndexError:  # taken by other threads meanwhile
                return
            if now - oldest.used < IDLE_CLOSE:
                free.appendleft(oldest)
                return
            oldest.disconnect()

    def idle_connections(self) -> int:
        """Connections of this process waiting in the pool (for tests and metrics)."""
        return len(self._free) if self._generation == _fork_generation else 0

    def now_ms(self) -> int:
        """Now on this server's clock, in ms (our clock plus the offset measured at connect)."""
        return int(time.time() * 1000 + self.clock_offset)

    def unavailable(self, error: BaseException, sent: bool = True) -> exc.LayerUnavailable:
        """The error a caller sees for ``error``. ``sent``: whether anything may have reached the
        server (False when the connection failed before a write: the call may then be retried
        elsewhere); kept on the exception as ``sent``."""
        host, port = self.address
        kw = self.connection_kwargs
        if isinstance(error, (RedisTimeoutError, TimeoutError, BlockingIOError)):
            # A blocking socket with a kernel timeout reports it as EAGAIN (BlockingIOError).
            if "connecting" in str(error):
                what = (f"did not accept a connection within {kw.get('socket_connect_timeout') or 0:g} s "
                        "(option socket_connect_timeout)")
            else:
                what = f"did not answer within {kw.get('socket_timeout') or 0:g} s (option socket_timeout)"
            text = f"Redis at {host}:{port} {what}; the call did not complete. The layer reconnects on the next call."
        else:
            text = (f"Redis at {self.label} is unavailable ({type(error).__name__}: {error}); "
                    "the call did not complete. The layer reconnects on the next call.")
        e = exc.LayerUnavailable(text)
        e.sent = sent  # type: ignore[attr-defined]  # read by the Cluster and Sentinel retry rules
        return e

    # -- a failover ---------------------------------------------------------------------------

    def on_move(self, callback: Any) -> None:
        """Call ``callback()`` (in the thread that noticed it) after every :meth:`move`."""
        self._on_move.append(callback)

    def move(self, host: str, port: int) -> bool:
        """Point this shard at the server at ``host:port`` (a new primary); True if that changed it.

        Idle links are closed now, busy ones when given back; blocking commands in flight on
        the old server are released with ``CLIENT UNBLOCK`` (the old primary, still up after
        a switch-over, would otherwise keep them waiting there, and pub/sub connections to it
        go silent rather than failing); the doorbell reconnects to the new server.
        """
        with self._move_lock:
            if self.located and (host, port) == self.address:
                return False
            first = not self.located
            old = self.connection_kwargs
            self.connection_kwargs = {**old, "host": host, "port": port}
            self._set_labels()
            self.located = True
            if first:
                return True
            self.epoch += 1
            free, self._free = self._free, deque()
            stuck = [link.client_id for link in list(self._blocked) if link.client_id is not None]
            bell = self._bell
        log.warning("Redis primary moved from %s:%s to %s:%s", old.get("host"), old.get("port"), host, port)
        for link in free:
            link.disconnect()
        if bell is not None:
            bell.reconnect(self.label)
        if stuck:
            self._unblock(old, stuck)
        for callback in list(self._on_move):
            try:
                callback()
            except Exception:  # pragma: no cover - a callback's own bug must not stop the others
                log.exception("topology change callback failed")
        return True

    def _unblock(self, kwargs: dict, client_ids: list[int]) -> None:
        """``CLIENT UNBLOCK`` each of ``client_ids`` on the server of ``kwargs`` (best effort, short timeouts)."""
        conn = self.connection_class(**{**kwargs, "socket_timeout": 1.0, "socket_connect_timeout": 0.5})
        try:
            conn.connect()
            conn.send_packed_command(b"".join(packed("CLIENT", "UNBLOCK", i) for i in client_ids), check_health=False)
            for _ in client_ids:
                conn.read_response()
        except Exception as e:  # a dead old primary: its blocked clients saw the connection end anyway
            log.debug("could not release %d blocked command(s) on %s:%s: %s", len(client_ids),
                      kwargs.get("host"), kwargs.get("port"), e)
        finally:
            conn.disconnect()

    # -- commands ---------------------------------------------------------------------------

    def _roundtrip(self, payload: bytes, count: int | None = None, blocking: bool = False,
                   fill: Sequence[bytes] = (), after: bytes = b"") -> Any:
        """Write ``payload`` on one pooled connection and read the reply (the list of ``count``
        replies when ``payload`` holds ``count`` packed commands). Error replies are returned.

        ``fill``: packed commands of a :attr:`.Script.run_id` script, written after ``payload``
        (then ``after``), each with the connection's ``run_id`` as its last argument
        (:meth:`.Link.with_run_id`); ``count`` counts them.

        A network failure raises ``LayerUnavailable``. A connection interrupted mid-exchange
        (a network error, a killed greenlet) is closed, never reused out of step. ``blocking``:
        the payload waits on the server (a blocking pop), and a :meth:`move` releases it.
        """
        link = self.acquire()
        if blocking:
            self._blocked[link] = None
        try:
            if fill:
                ask = link.run_id_arg is None
                link.write((link.ASK_RUN_ID if ask else b"") + payload + link.with_run_id(fill) + after)
                if ask:
                    link.learn_run_id()
            else:
                link.write(payload)
            reply = link.read() if count is None else [link.read() for _ in range(count)]
        except NETWORK_ERRORS as e:
            link.disconnect()
            raise self.unavailable(e) from e
        except BaseException:
            link.disconnect()
            raise
        finally:
            if blocking:
                self._blocked.pop(link, None)
        self.release(link)
        return reply

    def _send(self, script: Script, payloads: Sequence[bytes], count: int | None = None) -> Any:
        """``payloads`` (of ``script``) in one round trip: :meth:`_roundtrip`, filled when ``script``
        takes the ``run_id`` (``count`` None: one command, one reply)."""
        if script.run_id:
            return self._roundtrip(b"", count, fill=payloads)
        return self._roundtrip(payloads[0] if len(payloads) == 1 else b"".join(payloads), count)

    def call(self, script: Script, payload: bytes) -> Any:
        """Run ``payload``, an ``EVALSHA`` of ``script`` packed by the caller; error replies are raised.

        A server that does not know the script (it restarted) refuses it without running
        it: the script is loaded and the same command sent again.
        """
        reply = self._send(script, (payload,))
        if type(reply) is ResponseError:
            if self.fails_over and _demoted(reply):
                return self.call(script, payload) if self._moved_on(reply) else None
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            self.execute("SCRIPT", "LOAD", script.source)
            reply = self._send(script, (payload,))
            if type(reply) is ResponseError:
                raise _error(reply)
        return reply

    def _moved_on(self, reply: ResponseError) -> bool:
        """A command refused (not run) because this server is no longer the primary (``READONLY``,
        ``UNBLOCKED``): ask where the primary is now. True when that moved the shard, so the
        command may go again; otherwise ``LayerUnavailable`` is raised for a refused write."""
        if self.recheck():
            return True
        if str(reply).startswith("UNBLOCKED"):
            return False  # a blocking pop: the caller's wait goes on
        raise self.unavailable(RedisConnectionError(f"{reply} (a failover is under way)"), sent=False)

    def execute_packed(self, payload: bytes, blocking: bool = False) -> Any:
        """Run one command packed by the caller; error replies are raised. A blocking command
        released by a failover (``UNBLOCKED``) answers None, as if it had timed out."""
        reply = self._roundtrip(payload, blocking=blocking)
        if type(reply) is ResponseError:
            if self.fails_over and _demoted(reply):
                if self._moved_on(reply) and not blocking:
                    return self.execute_packed(payload)
                return None
            raise _error(reply)
        return reply

    def execute(self, *args: Any, now: bool = False) -> Any:
        """Run one command; network failures become ``LayerUnavailable``, error replies are raised.

        ``now=True`` appends the current time on this server's clock (ms) as the last argument.
        """
        reply = self._roundtrip(_pack(args + (self.now_ms(),) if now else args))
        if type(reply) is ResponseError:
            raise _error(reply)
        return reply

    def pipeline(self, payloads: Sequence[bytes], script: Script, then: bytes | None = None,
                 then_first: bool = False, tail: Sequence[bytes] = ()) -> list:
        """Run several packed ``EVALSHA`` commands of ``script`` with one write and one read of
        all their replies, in order.

        Returns one reply per command; an error reply is returned (not raised) in its place.
        Commands refused with ``NOSCRIPT`` (never run) are sent again once the script is
        loaded. A network failure raises ``LayerUnavailable`` for all of them (any may or
        may not have run; none is resent).

        ``then``: one more packed command (a blocking pop), written after them in the same round
        trip, or before them with ``then_first``; its reply (an error reply returned as it is)
        ends the list, or starts it. ``tail``: packed commands written right after the scripts
        (``WAIT``), whose replies follow theirs (before ``then``'s).
        """
        count = len(payloads)
        before = then if then is not None and then_first else b""
        after = b"".join(tail) if tail else b""
        if then is not None and not then_first:
            after += then
        total = count + len(tail) + (then is not None)
        if script.run_id:
            replies = self._roundtrip(before, total, blocking=then is not None, fill=payloads, after=after)
        else:
            replies = self._roundtrip(before + b"".join(payloads) + after, total, blocking=then is not None)
        if then is not None:
            other = replies.pop(0) if then_first else replies.pop()
        if tail:
            tail_replies = replies[count:]
            del replies[count:]
        if then is not None and self.fails_over and type(other) is ResponseError and _demoted(other):
            self.recheck()
            other = None  # released by a failover: nothing was popped
        if self.fails_over:
            demoted = [i for i, r in enumerate(replies) if type(r) is ResponseError and _demoted(r)]
            if demoted:  # refused by a replica, never run: to the new primary, or failed as not sent
                error: Exception = replies[demoted[0]]
                try:
                    moved = self._moved_on(replies[demoted[0]])
                except exc.LayerUnavailable as e:
                    moved, error = False, e
                if moved:
                    again = self._send(script, [payloads[i] for i in demoted], len(demoted))
                    for i, reply in zip(demoted, again):
                        replies[i] = reply
                else:
                    for i in demoted:
                        replies[i] = error
        refused = [i for i, r in enumerate(replies) if type(r) is ResponseError and str(r).startswith("NOSCRIPT")]
        if refused:
            self.execute("SCRIPT", "LOAD", script.source)
            again = self._send(script, [payloads[i] for i in refused], len(refused))
            for i, reply in zip(refused, again):
                replies[i] = reply
        result = [_error(r) if type(r) is ResponseError else r for r in replies]
        if tail:
            result += tail_replies
        if then is not None:
            result.insert(0, other) if then_first else result.append(other)
        return result

    def script(self, script: Script, keys: Sequence[Any], args: Sequence[Any], now: bool = False) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        return self.call(script, _pack(command + (self.now_ms(),) if now else command))

    def bell(self) -> Doorbell:
        self._check_pid()
        bell = self._bell
        if bell is None:
            with self._bell_lock:
                if self._bell is None:
                    self._bell = Doorbell(self._new_connection, self.label, sharded=self._sharded_bell,
                                          on_moved=self.on_bell_moved)
                bell = self._bell
        return bell

    def close(self) -> None:
        self.closed = True
        if self._bell is not None:
            self._bell.close()
            self._bell = None
        if self._generation == _fork_generation:
            while self._free:
                self._free.pop().disconnect()


class _NotPrimary(Exception):
    """A connection reached a server that is not (or no longer) a primary."""


def _demoted(reply: ResponseError) -> bool:
    """Whether an error reply says the server is not a primary (any more): not run."""
    text = str(reply)
    return text.startswith(("READONLY", "UNBLOCKED")) or "-READONLY" in text[:200]


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return reply


def run_everywhere(shards: Sequence[Shard], script: Script, payloads: Sequence[bytes],
                   tail: bytes | None = None) -> list:
    """Run the packed ``EVALSHA`` of ``script`` in ``payloads[i]`` on ``shards[i]``, all at once:
    write to every shard, then read every reply (one round trip of latency).

    ``tail``: one more packed command (``WAIT``) written after each payload; its reply then
    follows each script's in the list (script, tail, script, tail, ...).
    """
    if len(shards) == 1 and tail is None:
        return [shards[0].call(script, payloads[0])]
    per = 1 if tail is None else 2
    links: list[Link] = []
    replies: list = []
    failed: Shard | None = None
    error: BaseException | None = None
    try:
        for shard in shards:
            failed = shard
            links.append(shard.acquire())
        for shard, link, payload in zip(shards, links, payloads):
            failed = shard
            link.write(payload if tail is None else payload + tail)
        for shard, link in zip(shards, links):
            failed = shard
            for _ in range(per):
                replies.append(link.read())
    except exc.LayerUnavailable:
        for link in links:
            link.disconnect()
        raise
    except NETWORK_ERRORS as e:
        error = e
    except BaseException:
        for link in links:
            link.disconnect()
        raise
    if error is not None:
        for link in links:
            link.disconnect()
        raise failed.unavailable(error) from error  # type: ignore[union-attr]
    for shard, link in zip(shards, links):
        shard.release(link)
    for i in range(0, len(replies), per):
        reply = replies[i]
        if type(reply) is ResponseError:
            if not str(reply).startswith("NOSCRIPT"):
                raise reply
            replies[i] = shards[i // per].call(script, payloads[i // per])
    return replies
