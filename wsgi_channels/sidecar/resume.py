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
    a resume, or a hole in live messages, could not be honoured (``why``: ``epoch`` - the
    stream restarted, ``trimmed`` - missed messages are no longer kept, ``too_many`` - more than
    ``--max-replay`` are missing, ``unavailable`` - the layer could not be read, ``timeout``,
    ``not-joined`` - the connection never joined the group): reload the state; ``e``/``o`` (when
    known) are the stream's current position (for a hole: the offset before the next message).
``{"t": "j", "g": group, "e": epoch, "o": offset}``
    the socket joined history group ``group`` without resuming it (sent at the accept, or when
    it joins later), at position ``e``/``o`` (the layer's notice carries the group's position
    at the membership): every later message of the group comes to the socket, so a client
    with no position of the group yet takes this one and can resume from it. Without ``e``/``o``
    (a layer whose notice has no position) a reconnect cannot resume the group until a message
    (or the page) gives a position.
``{"t": "p", "g", "v", "c", "u", "m", "ev", "stale"?}``
    a presence change of a group the connection is in (the layer's ``__wsc_p`` body).

Resume: ``_wsc_r=GROUP:EPOCH:OFFSET`` (repeatable; commas separate several too). Once the
connect consumer accepted and the membership notice (``__wsc_n``) of the group arrived,
:class:`Follower` reads the group's history after ``OFFSET``; messages of the group arriving
meanwhile are held, then merged by offset, so each message reaches the client exactly once,
in order; a different epoch, a trimmed history or more than ``--max-replay`` missed messages is
a ``gap``, never a ``recovered``.

Live messages go out in offset order: one that comes ahead of a hole (cross-shard fan-out, or
copies the layer dropped because the sidecar's prefix was full) waits :data:`REORDER_WAIT` for
the missing copies, which are then read from the history; only what the history cannot give
is a ``gap``.
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
           "CONTROL_MARK", "MAX_RESUME_GROUPS", "REORDER_WAIT", "has_reserved", "strip_stamp"]

log = logging.getLogger(__name__)

OPT_IN_PARAM = "_wsc"
RESUME_PARAM = "_wsc_r"
#: First character of a control frame (and escape of an app text frame starting with it).
CONTROL_MARK = "\x00"
#: Most groups one handshake may resume.
MAX_RESUME_GROUPS = 32
#: Messages read per history page while catching up.
_PAGE = 1000
#: Seconds a live message that arrived ahead of its predecessor (offset 6 before 5: cross-shard
#: fan-out, or a copy dropped because the sidecar's prefix was full) waits for the missing ones
#: before they are read from the history.
REORDER_WAIT = 0.15
#: Live messages held ahead of a hole, per group and socket, past which the history is read at once.
MAX_AHEAD = 1000
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
                # Identical requests (the sockets of one group filling the same hole) are read once.
                requests = list(dict.fromkeys(request for request, _ in batch))
                pages: list[Union[Any, BaseException]]
                try:
                    pages = self.layer._history_read(requests)
                except Exception as e:  # the layer reports per request; this is an outage
                    pages = [e] * len(requests)
                answers = dict(zip(requests, pages))
                for request, result in batch:
                    result.set(answers[request])
        finally:
            self._running = False
            if queue:  # killed mid-way: never strand what is queued
                self._running = True
                gevent.spawn(self._flush)


class _Group:
    """One history group a connection follows: the last position delivered and, while a resume
    reads the history, the live messages held back (``held`` is None when live)."""

    __slots__ = ("epoch", "last", "held", "joined", "started", "ahead", "filling", "hole", "placed", "origin")

    def __init__(self) -> None:
        self.epoch: Optional[str] = None
        self.last = 0  # offset of the last message delivered in ``epoch`` (0: none)
        self.held: Optional[list[tuple[str, int, dict[str, Any]]]] = None
        self.joined = False
        self.started = 0.0  # monotonic time the history read started (0: none running)
        #: Live messages of ``epoch`` that came ahead of a hole after ``last``, by offset.
        self.ahead: dict[int, dict[str, Any]] = {}
        self.filling = False  # a history read fills the hole
        self.hole = 0  # counts holes opened: a timer of an older one does nothing
        #: ``last`` is a known position even at 0 (the join notice's): a later message is in order or a hole
        self.placed = False
        #: ``(epoch, offset)`` the socket joined at (the notice's), for the ``j`` frame
        self.origin: Optional[tuple[str, int]] = None


class Follower:
    """History and presence state of one WebSocket (:class:`~.websocket_side.WebSocketSide`).

    Only messages carrying reserved keys reach it; a socket's plain frames never do. Its
    ``presence`` (``{group: entry}``, from notices) is what the sidecar refreshes and removes.
    """

    __slots__ = ("side", "options", "groups", "wanted", "presence", "deadline", "pframes")

    def __init__(self, side: "WebSocketSide", options: Options) -> None:
        self.side = side
        self.options = options
        self.groups: dict[str, _Group] = {}
        self.wanted = dict(options.resume)  # resumes not started yet
        self.presence: dict[str, dict[str, Any]] = {}
        self.deadline = 0.0  # for ``wanted`` notices, set at the accept
        #: ``{group: [time the next presence frame may go, the merged frame waiting or None]}``.
        self.pframes: dict[str, list[Any]] = {}

    @property
    def opted_in(self) -> bool:
        return self.options.opted_in

    # -- messages with reserved keys --------------------------------------------------------

    def notice(self, body: Any) -> None:
        """``__wsc_n``: the connection joined (``a``) or left a history or presence group."""
        if not isinstance(body, dict) or not isinstance(body.get("g"), str):
            return
        group = body["g"]
        keeper = self.side.conn.sidecar.presence
        if not body.get("a"):
            self.groups.pop(group, None)
            keeper.uncount(self, group)
            self.pframes.pop(group, None)
            entry = self.presence.pop(group, None)
            if entry is not None:
                keeper.left(self, group, entry)
            return
        presence = body.get("p")
        if isinstance(presence, dict) and isinstance(presence.get("id"), str):
            self.presence[group] = presence
            keeper.joined(self, group, presence)
            if presence.get("m") == "c" and self.opted_in:  # no change will come: the counts are read
                keeper.count(self, group)
        history = body.get("h")
        if history and self.opted_in:
            state = self.groups.setdefault(group, _Group())
            if state.joined:
                return
            state.joined = True
            if group not in self.wanted:
                self._place(state, history)
            if self.side.session is not None:
                if group in self.wanted:
                    self._start(group)
                else:
                    self.side.write_control(self._joined(group, state))

    @staticmethod
    def _place(state: _Group, history: Any) -> None:
        """A join without a resume: the notice's ``[epoch, offset]`` (the group's position at the
        membership: every later message comes live) is where the socket's stream starts. A
        notice with ``True`` (a layer without positions) leaves it unknown."""
        if not isinstance(history, list) or len(history) != 2 or not valid_epoch(history[0]) \
                or type(history[1]) is not int or not 0 <= history[1] <= _MAX_OFFSET:
            return
        state.origin = (history[0], history[1])
        if state.epoch is None and not state.ahead:  # nothing of the group came before its notice
            state.epoch, state.last, state.placed = history[0], history[1], True

    @staticmethod
    def _joined(group: str, state: _Group) -> dict[str, Any]:
        """The ``j`` frame: with the position the socket joined at when the notice gave one."""
        if state.origin is None:
            return {"t": "j", "g": group}
        return {"t": "j", "g": group, "e": state.origin[0], "o": state.origin[1]}

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
                self.side.write_control(self._joined(group, state))

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
        return (True, (group, epoch, offset)) if self._live(group, state, epoch, offset, message) else (False, None)

    # -- live messages in offset order -------------------------------------------------------

    def _live(self, group: str, state: _Group, epoch: str, offset: int, message: dict[str, Any]) -> bool:
        """A live message of a group in step: True when it is the next one (the caller writes it);
        otherwise it was a duplicate (dropped), or came ahead of a hole (kept in ``ahead`` until the
        hole fills, from a late copy or the history, or is reported as a gap), or it filled the
        hole (written here, with the ones it unblocked)."""
        stats = self.side.conn.sidecar.stats
        if epoch != state.epoch or not (state.last or state.placed):
            if state.ahead:  # the stream restarted under messages held ahead: say so, go on from here
                state.ahead.clear()
                state.hole += 1
                self.side.write_control({"t": "gap", "g": group, "why": "epoch", "e": epoch, "o": offset - 1})
                stats.resumes["hole_gap_epoch"] += 1
            state.epoch, state.last = epoch, offset
            return True
        if offset <= state.last or offset in state.ahead:
            stats.resumes["duplicate_dropped"] += 1
            return False
        if offset == state.last + 1:
            if not state.ahead:
                state.last = offset
                return True
            self._write(group, state, offset, message)
            self._drain(group, state)
            return False
        state.ahead[offset] = message
        if len(state.ahead) == 1 and not state.filling:
            state.hole += 1
            gevent.spawn_later(REORDER_WAIT, self._repair, group, state, state.hole)
        elif len(state.ahead) > MAX_AHEAD and not state.filling:
            gevent.spawn(self._repair, group, state, state.hole)
        return False

    def _write(self, group: str, state: _Group, offset: int, message: dict[str, Any], kept: bool = False) -> None:
        """Write message ``offset`` (a ``close`` read from the history, ``kept``, is never acted on again)."""
        state.last = offset
        if not kept or message.get("text") is not None or message.get("bytes") is not None:
            self.side.write_message(message, (group, state.epoch or "", offset))

    def _drain(self, group: str, state: _Group) -> None:
        """Write the messages held ahead that follow ``last`` without a hole."""
        ahead = state.ahead
        stats = self.side.conn.sidecar.stats
        while state.last + 1 in ahead:
            self._write(group, state, state.last + 1, ahead.pop(state.last + 1))
            stats.resumes["reordered"] += 1
        if not ahead:
            state.hole += 1  # the waiting timer has nothing to do

    def _repair(self, group: str, state: _Group, hole: int) -> None:
        """The hole after ``last`` did not fill within :data:`REORDER_WAIT`: read the missing
        messages from the history and write everything in offset order; what the history cannot
        give (trimmed, another epoch, unreadable, more than ``--max-replay``) is a ``gap``."""
        side = self.side
        if self.groups.get(group) is not state or state.hole != hole or not state.ahead or state.filling \
                or side.session is None or not side.session.open:
            return
        stats = side.conn.sidecar.stats
        since, until = state.last, max(state.ahead)
        missing = until - since - len(state.ahead)
        why, found, page = "", {}, None
        if missing > self.max_replay:
            why = "too_many"
        else:
            state.filling = True
            try:
                page = side.conn.sidecar.history_reader.read(group, since, min(until - since, 10000), self.wait)
                if page.epoch != state.epoch:
                    why = "epoch"
                else:
                    found = dict(page.messages)
            except gevent.Timeout:
                why = "timeout"
            except Exception as e:
                log.info("filling a hole of %r for %s: history unavailable (%s)", group, side.conn.reply_channel, e)
                why = "unavailable"
            finally:
                state.filling = False
        if self.groups.get(group) is not state or side.session is None or not side.session.open:
            return
        ahead = state.ahead
        if why:
            first = min(ahead)
            body: dict[str, Any] = {"t": "gap", "g": group, "why": why, "e": state.epoch, "o": first - 1}
            if why == "epoch" and page is not None:
                body["e"], body["o"] = page.epoch, page.top
            side.write_control(body)
            stats.resumes[f"hole_gap_{why}"] += 1
            state.last = first - 1
        else:
            while ahead:
                offset = state.last + 1
                message, kept = ahead.pop(offset, None), False
                if message is None and offset in found:
                    message, kept = found[offset], True
                    stats.resumes["filled"] += 1
                if message is None:  # the history no longer has it: go on from what it has
                    later = [o for o in found if o > offset] + list(ahead)
                    first = min(later)
                    side.write_control({"t": "gap", "g": group, "why": "trimmed", "e": state.epoch, "o": first - 1})
                    stats.resumes["hole_gap_trimmed"] += 1
                    state.last = first - 1
                    continue
                self._write(group, state, offset, message, kept)
        self._drain(group, state)
        if ahead:  # messages came ahead of a new hole during the read
            state.hole += 1
            gevent.spawn_later(REORDER_WAIT, self._repair, group, state, state.hole)

    @property
    def max_replay(self) -> int:
        """Most missed messages a resume replays, or a hole is filled with (``--max-replay``)."""
        return int(getattr(self.side.conn.sidecar.config, "max_replay", 1000))

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
                if page.top - since > self.max_replay:  # never a partial replay presented as complete
                    why = "too_many"
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
        with self.side.conn.corked():  # the replay as one write (ClientConnection.corked)
            self._finish_now(group, messages, why, epoch, top)

    def _finish_now(self, group: str, messages: Optional[list[tuple[int, dict[str, Any]]]], why: str,
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
        if len({h[0] for h in held}) == 1:
            held.sort(key=lambda h: h[1])  # copies may have come out of order: _live sees them in order
        for h_epoch, offset, message in held:  # as live messages: duplicates dropped, holes repaired
            if self._live(group, state, h_epoch, offset, message):
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
            self.side.conn.sidecar.presence.frame(self, body)
