"""Many resuming WebSocket clients in one gevent process, for ``history_presence.py storm``.

Each client opts in (``_wsc=1``) on ``/ws/<group>``, reads control frames (text frames starting
with NUL, docs/protocol.md "Resume and presence frames"), and follows the group's offsets: the
``h`` frame before each message gives its offset, so it counts duplicates (an offset at or below
the last one it had) and gaps (an offset more than one above it), and among the gaps the silent
ones: no ``gap`` frame came before them. When its connection ends it
reconnects every 100-300 ms (random, as browsers' back-off does) with
``_wsc_r=<group>:<epoch>:<last offset>`` until the server answers 101.

Messages are text ``{"s": n, "t": publish time}``. After a reconnect each client keeps
``(publish time, arrival)`` of the messages it gets, so the report can say when it had every
message published before a given moment.

    python benchmarks/_resume_clients.py --port 8001 --group storm.x --count 1000 [--no-resume]

``--no-resume``: reconnect with ``_wsc=1`` only (no positions), the baseline of a reconnect
storm without history: the clients miss what was published while they were away (counted as
gaps).

Prints ``READY <connected> <failed>``; on stdin ``REPORT <t_listen> <top> <timeout>`` it waits
(up to ``timeout`` s) until every client has offset ``top``, then prints one JSON line with a
summary per client; ``QUIT`` exits.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.fileobject  # noqa: E402
import gevent.pool  # noqa: E402

from _wsclients import mask_frame, open_client, raise_nofile  # noqa: E402


class Follower:
    __slots__ = ("path", "group", "client", "epoch", "last", "first", "received", "dups", "gaps", "gap_frames",
                 "recovered", "recovered_at", "reconnected_at", "lost_at", "attempts", "after", "epochs",
                 "pending", "failures", "closed", "resume", "replayed", "announced", "silent")

    def __init__(self, path: tuple, group: str, resume: bool = True) -> None:
        self.path, self.group, self.resume = path, group, resume
        self.client = None
        self.epoch: str | None = None
        self.last = 0
        self.first: int | None = None
        self.received = self.dups = self.gaps = self.gap_frames = self.recovered = self.attempts = 0
        self.recovered_at: float | None = None
        self.reconnected_at: float | None = None
        self.lost_at: float | None = None
        self.after: list = []  # (publish time, arrival) after the last reconnect
        self.epochs: set = set()
        self.pending: int | None = None  # the offset the last "h" frame announced
        self.failures: dict = {}
        self.closed = False
        self.replayed = 0  # the "n" of the recovered frames: messages replayed from history
        self.announced = False  # a gap frame came since the last message
        self.silent = 0  # offsets skipped without a gap frame before them: a hole nobody was told of

    def handle(self, text: str, now: float) -> None:
        if text.startswith("\x00") and not text.startswith("\x00\x00"):
            body = json.loads(text[1:])
            kind = body.get("t")
            if kind == "h":
                self.pending = body["o"]
                if self.epoch is not None and body["e"] != self.epoch:
                    self.epochs.add(body["e"])
                self.epoch = body["e"]
            elif kind == "recovered":
                self.recovered += 1
                self.replayed += body.get("n", 0)
                self.recovered_at = now
            elif kind == "gap":
                self.gap_frames += 1
                self.announced = True
                why = str(body.get("why"))
                self.failures["gap:" + why] = self.failures.get("gap:" + why, 0) + 1
            return
        offset, self.pending = self.pending, None
        if offset is None:
            return  # not a history message (the app's own frames)
        data = json.loads(text[1:] if text.startswith("\x00") else text)
        self.received += 1
        if self.first is None:
            self.first = offset
        elif offset <= self.last:
            self.dups += 1
            return
        elif offset > self.last + 1:
            self.gaps += offset - self.last - 1
            if not self.announced:
                self.silent += offset - self.last - 1
        self.announced = False
        self.last = offset
        if self.reconnected_at is not None:
            self.after.append((data["t"], now))

    def run_once(self, query: str, ready) -> bool:
        """Read one connection to its end; False when the handshake failed."""
        host, port = self.path
        try:
            self.client = open_client(host, port, f"/ws/{self.group}?{query}", "ws")
        except (OSError, ConnectionError) as e:
            reason = str(e)[:40]
            self.failures[reason] = self.failures.get(reason, 0) + 1
            return False
        if self.lost_at is not None:
            self.reconnected_at = time.time()
        ready()
        try:
            for opcode, payload in self.client.frames():
                if opcode == 0x1:
                    self.handle(payload.decode(), time.time())
                elif opcode == 0x9:
                    self.client.sock.sendall(mask_frame(0xA, payload))
                elif opcode == 0x8:
                    break
        except (OSError, ConnectionError, ValueError):
            pass
        try:
            self.client.sock.close()
        except OSError:
            pass
        return True

    def loop(self, ready) -> None:
        query = "_wsc=1"
        connected_once = False
        while not self.closed:
            ok = self.run_once(query, ready)
            connected_once = connected_once or ok
            if self.closed:
                return
            if ok:
                self.lost_at = time.time()
                self.reconnected_at = None
                self.after = []
            if self.epoch is not None and self.resume:
                query = f"_wsc_r={self.group}:{self.epoch}:{self.last}"
            gevent.sleep(random.uniform(0.1, 0.3) if ok or connected_once else 0.2)
            self.attempts += 1

    def summary(self, t_listen: float) -> dict:
        caught = next((arrival for t, arrival in self.after if t >= t_listen), None)
        return {"first": self.first, "last": self.last, "received": self.received, "dups": self.dups,
                "gaps": self.gaps, "silent_gaps": self.silent, "gap_frames": self.gap_frames,
                "recovered": self.recovered, "replayed": self.replayed,
                "epoch_changes": len(self.epochs), "attempts": self.attempts, "failures": self.failures,
                "reconnect_s": (self.reconnected_at - t_listen) if self.reconnected_at else None,
                "recovered_s": (self.recovered_at - t_listen) if self.recovered_at else None,
                "caught_up_s": (caught - t_listen) if caught is not None else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50, help="first handshakes in flight at once")
    parser.add_argument("--no-resume", action="store_true", help="reconnect without positions (the baseline)")
    args = parser.parse_args()
    raise_nofile()
    followers = [Follower(("127.0.0.1", args.port), args.group, not args.no_resume) for _ in range(args.count)]
    pool = gevent.pool.Pool(args.concurrency)
    events = [gevent.event.Event() for _ in followers]

    def start(f: Follower, ev: gevent.event.Event) -> None:
        gevent.spawn(f.loop, ev.set)
        ev.wait(60)  # the pool slot is held until the handshake is done

    for f, ev in zip(followers, events):
        pool.spawn(start, f, ev)
    pool.join()
    ok = sum(1 for ev in events if ev.is_set())
    print(f"READY {ok} {args.count - ok}", flush=True)
    for line in gevent.fileobject.FileObject(sys.stdin, "r"):
        words = line.split()
        if words and words[0] == "REPORT":
            t_listen, top, timeout = float(words[1]), int(words[2]), float(words[3])
            deadline = time.time() + timeout
            while time.time() < deadline and any(f.last < top for f in followers):
                gevent.sleep(0.1)
            print(json.dumps([f.summary(t_listen) for f in followers]), flush=True)
        elif words and words[0] == "QUIT":
            break
    for f in followers:
        f.closed = True
        try:
            f.client.sock.close()
        except (OSError, AttributeError):
            pass


if __name__ == "__main__":
    main()
