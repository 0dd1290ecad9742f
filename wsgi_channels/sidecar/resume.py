"""Resume after reconnect and presence frames: what one WebSocket follows of its history groups.

A client opts in with the query parameter ``_wsc=1`` (``_wsc_r`` implies it); the sidecar
removes every ``_wsc*`` parameter from the ``query_string`` consumers see and from the access
log (:func:`split_options`). A client that does not opt in sees exactly the bytes it would
without these features: stamped keys are removed, notices and presence changes dropped.

For an opted-in client the sidecar adds **control frames**: text frames whose first character
is NUL (``"\\x00"``) followed by a JSON object with ``"t"``. An application text frame that
itself starts with NUL gets one more NUL in front (the client removes it), so the two never
mix; binary frames are never touched. Control frames (docs/protocol.md, "Resume and presence
frames"):

``{"t": "h", "g": group, "e": epoch, "o": offset}``
    the next message frame is message ``offset`` of ``group``'s stream ``epoch``.
``{"t": "recovered", "g", "e", "o", "n"}``
    a resume succeeded: the ``n`` missed messages (each after its ``"h"``) are delivered and
    ``o`` is the latest; every later message comes exactly once, in order. (A ``close`` sent to
    the group is never replayed.)
``{"t": "gap", "g", "e", "o", "why"}``
    a resume could not be honoured (``why``: ``epoch`` - the stream restarted, ``trimmed`` -
    missed messages are no longer kept, ``unavailable`` - the layer could not be read,
    ``timeout``, ``not-joined`` - the connection never joined the group; and without a resume,
    ``skipped`` - live copies never reached this socket: its channel was full): reload the state;
    ``e``/``o`` (when known) are the stream's current position.
``{"t": "j", "g": group}``
    the socket joined history group ``group`` without resuming it (sent at the accept, or when
    it joins later): a client that has no position of the group yet knows it is in it, and can
    tell its app that a later reconnect cannot resume it until a message (or the page) gives
    one.
``{"t": "p", "g", "v", "c", "u", "m", "ev", "stale"?}``
    a presence change of a group the connection is in (the layer's ``__wsc_p`` body).

Resume: ``_wsc_r=GROUP:EPOCH:OFFSET`` (repeatable; commas separate several too). Once the
connect consumer accepted and the membership notice (``__wsc_n``) of the group arrived,
:class:`Follower` reads the group's history after ``OFFSET``; messages of the group arriving
meanwhile are held, then merged by offset, so each message reaches the client exactly once,
in order; a different epoch or a trimmed history is a ``gap``, never a ``recovered``.
"""
from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Optional, Union
from urllib.parse import unquote_to_bytes

import gevent
import gevent.event

from ..layers.names import GROUP_NAME_RE, MAX_NAME_LENGTH
from ..layers.features import NOTICE_KEY, PRESENCE_KEY, STAMP_KEY, valid_epoch

if TYPE_CHECKING:  # pragma: no cover
    from .websocket_side import WebSocketSide

__all__ = ["Options", "split_options", "Follower", "HistoryReader", "control", "escape_text", "OPT_IN_PARAM", "RESUME_PARAM",
           "CONTROL_MARK", "MAX_RESUME_GROUPS", "has_reserved", "strip_stamp"]

log = logging.getLogger(__name__)

OPT_IN_PARAM = "_wsc"
RESUME_PARAM = "_wsc_r"
#: First character of a control frame (and escape of an app text frame starting with it).
CONTROL_MARK = "\x00"
#: Most groups one handshake may resume.
MAX_RESUME_GROUPS = 32
#: Messages read per history page while catching up.
_PAGE = 1000
_MAX_OFFSET = 2 ** 63 - 1


class Options:
    """What a handshake asked for: ``opted_in`` and ``resume`` (``{group: (epoch, offset)}``)."""

    __slots__ = ("opted_in", "resume")

    def __init__(self, opted_in: bool = False, resume: Optional[dict[str, tuple[str, int]]] = None) -> None:
        self.opted_in = opted_in
        self.resume = resume or {}


def _parse_resume(value: str, into: dict[str, tuple[str, int]]) -> None:
    for item in value.split(","):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"{RESUME_PARAM} item {item[:80]!r} is not GROUP:EPOCH:OFFSET")
        group, epoch, offset = parts
        if not group or len(group) > MAX_NAME_LENGTH or not GROUP_NAME_RE.match(group):
            raise ValueError(f"{RESUME_PARAM}: {group[:80]!r} is not a group name (letters, digits, '-', '_', '.')")
        if not valid_epoch(epoch):
            raise ValueError(f"{RESUME_PARAM}: epoch {epoch[:40]!r} of group {group!r} is not an epoch "
                             "(1 to 16 of A-Z a-z 0-9 - _)")
        if not offset.isdigit() or len(offset) > 19 or int(offset) > _MAX_OFFSET:
            raise ValueError(f"{RESUME_PARAM}: offset {offset[:40]!r} of group {group!r} is not an integer >= 0")
        if group in into:
            raise ValueError(f"{RESUME_PARAM}: group {group!r} is given twice")
        into[group] = (epoch, int(offset))
        if len(into) > MAX_RESUME_GROUPS:
            raise ValueError(f"{RESUME_PARAM}: more than {MAX_RESUME_GROUPS} groups")


def split_options(target: bytes) -> tuple[bytes, Options]:
    """``(target without any _wsc* parameter, the options they asked for)``; other parameters keep
    their bytes. Raises ``ValueError`` naming a bad ``_wsc``/``_wsc_r`` value."""
    path, q, query = target.partition(b"?")
    options = Options()
    if not q or b"_wsc" not in query:
        return target, options
    kept: list[bytes] = []
    for part in query.split(b"&"):
        name_raw, _, value_raw = part.partition(b"=")
        name = unquote_to_bytes(name_raw.replace(b"+", b" "))
        if not name.startswith(b"_wsc"):
            kept.append(part)
            continue
        value = unquote_to_bytes(value_raw.replace(b"+", b" ")).decode("latin-1")
        if name == OPT_IN_PARAM.encode():
            if value not in ("1", ""):
                raise ValueError(f"{OPT_IN_PARAM}={value[:40]!r}: use {OPT_IN_PARAM}=1 to opt in")
            options.opted_in = True
        elif name == RESUME_PARAM.encode():
            _parse_resume(value, options.resume)
            options.opted_in = True
        # any other _wsc* parameter (a newer client's) is removed and ignored
    return path + (b"?" + b"&".join(kept) if kept else b""), options


def control(body: dict[str, Any]) -> str:
    """The text of a control frame."""
    return CONTROL_MARK + json.dumps(body, separators=(",", ":"))


def escape_text(text: str) -> str:
    """An app text frame for an opted-in client: one more NUL in front when it starts with one."""
    return CONTROL_MARK + text if text.startswith(CONTROL_MARK) else text


def has_reserved(message: Any) -> bool:
    """Whether a message for a socket carries a key of history or presence."""
    return STAMP_KEY in message or NOTICE_KEY in message or PRESENCE_KEY in message


def strip_stamp(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message`` without ``__wsc_h`` (the delivered dict may be shared: never changed)."""
    return {k: v for k, v in message.items() if k != STAMP_KEY}


class HistoryReader:
    """The history reads of all resuming sockets of a sidecar, coalesced: everything asked while a
    read is in flight goes out as one ``_history_read`` (one round trip per shard on Redis), so a
    thousand clients resuming after a sidecar restart cost a few round trips, not a thousand
    concurrent ones. One batch in flight at a time; each waiter is bounded by its own timeout."""

    MAX_BATCH = 256

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self._queue: deque[tuple[tuple[str, int, int], gevent.event.AsyncResult[Any]]] = deque()
        self._running = False

    def read(self, group: str, since: int, limit: int, timeout: float) -> Any:
        """The :class:`~wsgi_channels.layers.features.HistoryPage` of ``group`` after ``since``;
        raises what the read raised, or ``gevent.Timeout`` after ``timeout`` seconds (the read
        itself is never interrupted: its answer is dropped)."""
        result: gevent.event.AsyncResult[Any] = gevent.event.AsyncResult()
        self._queue.append(((group, since, limit), result))
        if not self._running:
            self._running = True
            gevent.spawn(self._flush)
        page = result.get(timeout=timeout)
        if isinstance(page, BaseException):
            raise page
        return page

    def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self.MAX_BATCH))]
                pages: list[Union[Any, BaseException]]
                try:
                    pages = self.layer._history_read([request for request, _ in batch])
                except Exception as e:  # the layer reports per request; this is an outage
                    pages = [e] * len(batch)
                for (_, result), page in zip(batch, pages):
                    result.set(page)
        finally:
            self._running = False
            if queue:  # killed mid-way: never strand what is queued
                self._running = True
                gevent.spawn(self._flush)


class _Group:
    """One history group a connection follows: the last position delivered and, while a resume
    reads the history, the live messages held back (``held`` is None when live)."""

    __slots__ = ("epoch", "last", "held", "joined", "started")

    def __init__(self) -> None:
        self.epoch: Optional[str] = None
        self.last = 0  # offset of the last message delivered in ``epoch`` (0: none)
        self.held: Optional[list[tuple[str, int, dict[str, Any]]]] = None
        self.joined = False
        self.started = 0.0  # monotonic time the history read started (0: none running)


class Follower:
    """History and presence state of one WebSocket (:class:`~.websocket_side.WebSocketSide`).

    Only messages carrying reserved keys reach it; a socket's plain frames never do. Its
    ``presence`` (``{group: entry}``, from notices) is what the sidecar refreshes and removes.
    """

    __slots__ = ("side", "options", "groups", "wanted", "presence", "deadline")

    def __init__(self, side: "WebSocketSide", options: Options) -> None:
        self.side = side
        self.options = options
        self.groups: dict[str, _Group] = {}
        self.wanted = dict(options.resume)  # resumes not started yet
        self.presence: dict[str, dict[str, Any]] = {}
        self.deadline = 0.0  # for ``wanted`` notices, set at the accept

    @property
    def opted_in(self) -> bool:
        return self.options.opted_in

    # -- messages with reserved keys --------------------------------------------------------

    def notice(self, body: Any) -> None:
        """``__wsc_n``: the connection joined (``a``) or left a history or presence group."""
        if not isinstance(body, dict) or not isinstance(body.get("g"), str):
            return
        group = body["g"]
        if not body.get("a"):
            self.groups.pop(group, None)
            entry = self.presence.pop(group, None)
            if entry is not None:
                self.side.conn.sidecar.presence.left(self, group, entry)
            return
        presence = body.get("p")
        if isinstance(presence, dict) and isinstance(presence.get("id"), str):
            self.presence[group] = presence
            self.side.conn.sidecar.presence.joined(self, group, presence)
        if body.get("h") and self.opted_in:
            state = self.groups.setdefault(group, _Group())
            if state.joined:
                return
            state.joined = True
            if self.side.session is not None:
                if group in self.wanted:
                    self._start(group)
                else:
                    self.side.write_control({"t": "j", "g": group})

    def accepted(self) -> None:
        """The socket is open: start the resumes whose notice already came; announce the other
        history groups it joined."""
        if self.wanted:
            self.deadline = time.monotonic() + self.wait
        for group, state in list(self.groups.items()):
            if not state.joined:
                continue
            if group in self.wanted:
                self._start(group)
            else:
                self.side.write_control({"t": "j", "g": group})

    @property
    def wait(self) -> float:
        """Seconds a resume waits for the membership notice after the accept, and for the history
        read: the sidecar's ``connect_timeout`` (the time the connect consumer has anyway)."""
        return float(self.side.conn.sidecar.config.connect_timeout)

    def stamped(self, message: dict[str, Any], stamp: Any) -> tuple[bool, Optional[tuple[str, str, int]]]:
        """A history message for this socket: ``(deliver, position)``; not delivered when a
        duplicate, or held while the history is read; ``position`` is announced before its frame."""
        try:
            group, epoch, offset = stamp
            offset = int(offset)
            if not isinstance(group, str) or not isinstance(epoch, str):
                raise TypeError(group)
        except (TypeError, ValueError):
            return True, None  # not a stamp the layer makes: delivered without a position
        state = self.groups.get(group)
        if state is None:
            state = self.groups[group] = _Group()
        if state.held is not None:
            state.held.append((epoch, offset, message))
            return False, None
        if group in self.wanted:  # before the notice or the accept: the resume reads it later
            state.held = [(epoch, offset, message)]
            return False, None
        if epoch == state.epoch and offset <= state.last:
            self.side.conn.sidecar.stats.resumes["duplicate_dropped"] += 1
            return False, None
        if epoch == state.epoch and state.last and offset > state.last + 1:
            # Copies this socket never got (its channel was full, or its membership lapsed): say so.
            self.side.conn.sidecar.stats.resumes["gap_skipped"] += 1
            self.side.write_control({"t": "gap", "g": group, "why": "skipped", "e": epoch, "o": offset - 1})
        state.epoch, state.last = epoch, offset
        return True, (group, epoch, offset)

    # -- resume -----------------------------------------------------------------------------

    def _start(self, group: str) -> None:
        epoch, since = self.wanted.pop(group)
        state = self.groups.setdefault(group, _Group())
        if state.held is None:
            state.held = []
        state.started = time.monotonic()
        gevent.spawn(self._read, group, epoch, since)

    def _read(self, group: str, epoch: str, since: int) -> None:
        """Read what ``group`` kept after ``since`` (pages up to its top), then merge it."""
        reader = self.side.conn.sidecar.history_reader
        deadline = time.monotonic() + self.wait
        messages: list[tuple[int, dict[str, Any]]] = []
        cursor = since
        why = ""
        page: Any = None
        try:
            while True:
                page = reader.read(group, cursor, _PAGE, max(0.0, deadline - time.monotonic()))
                if page.epoch != epoch or since > page.top:
                    why = "epoch"
                    break
                if cursor < page.top and (not page.messages or page.messages[0][0] != cursor + 1):
                    why = "trimmed"
                    break
                messages.extend(page.messages)
                if not page.messages or page.messages[-1][0] >= page.top:
                    break
                cursor = page.messages[-1][0]
        except gevent.Timeout:
            why = "timeout"
            page = None
        except Exception as e:
            log.info("resume of %r for %s: history unavailable (%s)", group, self.side.conn.reply_channel, e)
            why = "unavailable"
            page = None
        if why:
            known = page is not None and not isinstance(page, BaseException)
            self._finish(group, None, why, page.epoch if known else None, page.top if known else None)
        else:
            self._finish(group, messages, "", epoch, max(since, messages[-1][0] if messages else since))

    def _finish(self, group: str, messages: Optional[list[tuple[int, dict[str, Any]]]], why: str,
                epoch: Optional[str], top: Optional[int]) -> None:
        """Deliver the read (or report the gap), then what was held, and go live. Once per resume:
        the first of the read and its timeout decides."""
        state = self.groups.get(group)
        if state is None or state.held is None:
            return
        held, state.held, state.started = state.held, None, 0.0
        side = self.side
        if side.session is None or not side.session.open or side.conn.aborted:
            return
        stats = side.conn.sidecar.stats
        if messages is not None and epoch is not None and top is not None:
            count = 0
            for offset, message in messages:
                if message.get("text") is None and message.get("bytes") is None:
                    continue  # a close (or accept) sent to the group is never replayed: it acted once
                side.write_message(message, (group, epoch, offset))
                count += 1
            state.epoch, state.last = epoch, top
            side.write_control({"t": "recovered", "g": group, "e": epoch, "o": top, "n": count})
            stats.resumes["recovered"] += 1
        else:
            body: dict[str, Any] = {"t": "gap", "g": group, "why": why}
            if epoch is not None:
                body["e"], body["o"] = epoch, top
            side.write_control(body)
            state.epoch, state.last = epoch, 0
            stats.resumes[f"gap_{why}"] += 1
        for h_epoch, offset, message in held:
            if h_epoch == state.epoch and offset <= state.last:
                continue  # delivered from the history
            state.epoch, state.last = h_epoch, offset
            side.write_message(message, (group, h_epoch, offset))

    def check(self, now: float) -> None:
        """Timeouts (called by the sweeper): a notice that never came, a read that never answered."""
        wait = self.wait
        if self.wanted and self.deadline and now > self.deadline and self.side.session is not None:
            for group in list(self.wanted):
                del self.wanted[group]
                state = self.groups.setdefault(group, _Group())
                if state.held is None:
                    state.held = []
                self._finish(group, None, "not-joined", None, None)
        for group, state in list(self.groups.items()):
            if state.started and now - state.started > wait:
                self._finish(group, None, "timeout", None, None)

    def presence_change(self, body: Any) -> None:
        """``__wsc_p``: forward a presence change of a group this socket is in."""
        if self.opted_in and isinstance(body, dict):
            self.side.write_control({"t": "p", **body})
