"""One connection to a Redis server, and how the Redis layer packs its commands.

redis-py makes each connection (TLS, AUTH, SELECT, its timeouts); :class:`Link` reads replies
with our own hiredis reader straight from the socket, and commands are packed by hiredis (the
hot ones once, see :func:`bulk`), which keeps a call to a few microseconds above the network
round trip. On a plain TCP socket the read and write timeouts are the kernel's
(``SO_RCVTIMEO``/``SO_SNDTIMEO``): a timeout then reads as ``BlockingIOError`` (``EAGAIN``),
which :meth:`.Shard.unavailable` names as the timeout it is.
"""
from __future__ import annotations

import hashlib
import re
import select
import socket
import struct
import sys
import time
from typing import Any, Sequence

import hiredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .entries import DEADLINE_DIGITS

__all__ = ["NOW", "packed", "bulk", "Script", "Link", "RUN_ID_UNKNOWN"]

_READ_SIZE = 65536

#: The last argument of a hot command, packed: a time on the server's clock in ms, now or (the
#: fan-out's) a deadline, which the fan-out puts in front of its entries as it came (13 digits
#: until 2286, the width of an entry's deadline).
NOW = b"$%d\r\n%%d\r\n" % DEADLINE_DIGITS

_pack = hiredis.pack_command  # packs a command in C; redis-py's own packer costs several microseconds


def packed(*args: Any) -> bytes:
    """The command ``args`` packed for the wire."""
    return _pack(args)


def bulk(*args: Any) -> bytes:
    """``args`` as RESP bulk strings, without the array header: the fixed part of a command packed once.

    A hot command is ``b"*%d\r\n" % count + bulk(fixed...)`` followed by its variable
    arguments packed in place, which costs a fraction of packing the whole command each time.
    """
    packed = _pack(args)
    return packed[packed.index(b"\r\n") + 2:]


def _kernel_timeouts(sock: Any) -> None:
    """Move a plain blocking socket's timeout into the kernel (``SO_RCVTIMEO``/``SO_SNDTIMEO``).

    Python enforces a socket timeout with a ``poll`` before every ``send`` and ``recv``;
    the kernel's timeouts bound the same calls with one system call each. TLS sockets and
    gevent's cooperative sockets keep Python's timeout (they need it to work as they do).
    """
    if type(sock).__module__ != "socket":
        return
    timeout = sock.gettimeout()
    if not timeout:
        return
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


def _poll_class() -> Any:
    """The operating system's ``select.poll``, even under gevent's monkey-patching.

    The stale-connection check polls with a zero timeout, so it never blocks and needs no
    cooperation; gevent's patched ``poll`` would cost about 30 microseconds a call (watchers,
    a hub round), the real one under one.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return select.poll


#: The last argument of a command of a :attr:`Script.run_id` script as its caller packs it: empty.
RUN_ID_UNKNOWN = b"$0\r\n\r\n"
_INFO_SERVER = packed("INFO", "server")
_RUN_ID = re.compile(rb"\brun_id:([0-9A-Za-z]+)\r\n")


class Script:
    """A Lua script known by its SHA1; loaded on demand (after a Redis restart too).

    ``run_id``: the script's last argument is the ``run_id`` of the server that runs it, which
    the caller packs empty (:data:`RUN_ID_UNKNOWN`) and the connection that writes the command
    fills in (:meth:`Link.with_run_id`); a script given it empty asks the server (``INFO``).
    """

    __slots__ = ("source", "sha", "run_id")

    def __init__(self, source: str, run_id: bool = False) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()
        self.run_id = run_id


class Link:
    """One connection: redis-py connects it (TLS, AUTH, SELECT); replies are read with our own
    hiredis reader straight from its socket, which keeps the per-call cost to a few microseconds."""

    __slots__ = ("conn", "sock", "reader", "poll", "used", "epoch", "client_id", "run_id_arg")

    def __init__(self, conn: Any, epoch: int = 0) -> None:
        self.conn = conn
        self.sock: Any = None
        self.reader: Any = None
        self.poll: Any = None
        self.used = 0.0  # time.monotonic() when last given back to the pool
        self.epoch = epoch  # the shard's epoch (which server it stands for) when this link was made
        self.client_id: int | None = None  # CLIENT ID, fetched at connect where a failover may need it
        #: The server's ``run_id`` packed as a command's last argument, learnt at the first use of a
        #: :attr:`Script.run_id` script on this connection; None until then (see :meth:`with_run_id`).
        self.run_id_arg: bytes | None = None

    def connect(self, extra: Sequence[bytes] = ()) -> tuple[float, list]:
        """Connect; returns the Redis clock's offset from ours in ms (measured around one ``TIME``)
        and the replies of the packed commands ``extra``, sent in the same round trip."""
        self.conn.connect()
        self.sock = self.conn._sock
        self.run_id_arg = None
        _kernel_timeouts(self.sock)
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.poll = _poll_class()()
        self.poll.register(self.sock.fileno(), select.POLLIN)
        before = time.time()
        self.sock.sendall(_pack(("TIME",)) + b"".join(extra))
        reply = self.read()
        after = time.time()
        others = [self.read() for _ in extra]
        if isinstance(reply, ResponseError):
            message = str(reply)
            if message.startswith(("NOAUTH", "WRONGPASS")):
                raise AuthenticationError(message)  # a password is required, or the given one is wrong
            raise reply
        seconds, micros = reply
        return int(seconds) * 1000 + int(micros) / 1000 - (before + after) * 500, others

    def with_run_id(self, commands: Sequence[bytes]) -> bytes:
        """``commands`` (of a :attr:`Script.run_id` script, each ending with :data:`RUN_ID_UNKNOWN`)
        joined, each with this connection's server ``run_id`` as its last argument; as they are
        while it is unknown (their scripts then ask ``INFO`` themselves; :data:`ASK_RUN_ID` and
        :meth:`learn_run_id` learn it).

        A connection cannot outlive its server process, and a process keeps its ``run_id``, so the
        one learnt here is exact for as long as the connection lives (:meth:`connect` forgets it).
        """
        arg = self.run_id_arg
        if arg is None or arg is RUN_ID_UNKNOWN:
            return b"".join(commands)
        cut = -len(RUN_ID_UNKNOWN)
        if len(commands) == 1:
            return commands[0][:cut] + arg
        return b"".join([c[:cut] + arg for c in commands])

    #: ``INFO server``, written in front of a payload while :attr:`run_id_arg` is None; its reply,
    #: read first, goes to :meth:`learn_run_id`.
    ASK_RUN_ID = _INFO_SERVER

    def learn_run_id(self) -> None:
        """Read the reply of the :attr:`ASK_RUN_ID` sent in front. A refusal (an ACL without ``INFO``)
        leaves it unknown for this connection: its scripts ask, and meet the same refusal."""
        reply = self.read()
        found = _RUN_ID.search(reply) if isinstance(reply, bytes) else None
        self.run_id_arg = RUN_ID_UNKNOWN if found is None else b"$%d\r\n%s\r\n" % (len(found[1]), found[1])

    def stale(self) -> bool:
        """Readable while idle: closed by the server (a restart) or out of step."""
        return bool(self.poll.poll(0))

    def disconnect(self) -> None:
        self.sock = self.poll = None
        self.conn.disconnect()

    def write(self, payload: bytes) -> None:
        """Send ``payload`` whole: one ``send()`` is the rule (gevent's ``sendall()`` adds a
        ``getsockopt`` per call), the rest, if any, with ``sendall()``."""
        sent = self.sock.send(payload)
        if sent < len(payload):
            self.sock.sendall(memoryview(payload)[sent:])

    def read(self) -> Any:
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            data = self.sock.recv(_READ_SIZE)
            if not data:
                raise RedisConnectionError("connection closed by the server")
            reader.feed(data)
            reply = reader.gets()
        return reply
