"""The sidecar's HTTP-mode bounds (issue 21): what one client can make it hold, and how a big
response reaches fast, slow and stalled readers.

    python benchmarks/http_bounds.py [--flood-seconds 10] [--http-timeout 12]

Redis, one worker (``WsgiConsumer`` over the small app below, 4 threads) and
``wsgi-channels sidecar --http layer``. Scenarios, each on a raw socket:

- *pipelined flood*: ``GET /sleep?S`` and then 64 KiB blocks of junk on the same socket for
  ``--flood-seconds`` while the response is pending: the bytes the sidecar took from the
  client, its RSS and CPU meanwhile, and the latency of another client's ``GET /`` halfway;
- *fast reader*: 50 MB streamed (chunked) read at 20 MB/s;
- *slow reader*: 20 MB read at 2 MB/s;
- *stalled reader*: 200 MB of which the client reads 1 MB and then nothing: when the sidecar
  gives up on it and what the client has then.

Run it on two checkouts to compare them (the script only needs the ``wsgi_channels`` beside
it). Timings are noisy on a shared machine; the byte counts are not.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

from wsgi_channels import route
from wsgi_channels.consumers.wsgi import WsgiConsumer


def app(environ, start_response):
    """``/sleep?S`` answers after S seconds; ``/bytes?N`` streams N bytes; anything else says hello."""
    path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
    if path == "/bytes":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _blocks(int(query or 0))
    if path == "/sleep":
        time.sleep(float(query or 1))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello\n"]


def _blocks(n: int):
    block = bytes(range(256)) * 256
    for start in range(0, n, len(block)):
        yield block[: min(len(block), n - start)]


routing = [route("http.request", WsgiConsumer(app))]


# -- the client side ------------------------------------------------------------------------------

def _request(port: int, target: str, close: bool = True) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: bench\r\n{'Connection: close' if close else 'X-Keep: alive'}"
              f"\r\n\r\n".encode())
    return s


def _read(s: socket.socket, rate: float = 0.0, stop_after: int | None = None) -> tuple[int, bool, float]:
    """Read the response (at ``rate`` bytes/s, or until ``stop_after`` bytes): (bytes, ended with
    the chunked terminator, seconds)."""
    got, tail, started = 0, b"", time.monotonic()
    while stop_after is None or got < stop_after:
        try:
            chunk = s.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        got += len(chunk)
        tail = (tail + chunk)[-5:]
        if rate:
            ahead = got / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return got, tail == b"0\r\n\r\n", time.monotonic() - started


def flood(stack, seconds: float) -> list[str]:
    from _sidecar_stack import cpu_seconds, rss_bytes

    pid = stack.sidecar_pid
    _read(_request(stack.port, "/"))
    rss0, cpu0 = rss_bytes(pid), cpu_seconds(pid)
    s = _request(stack.port, f"/sleep?{seconds + 2:g}", close=False)  # kept alive: what follows is pipelined
    s.settimeout(0.2)
    probe: list[float] = []

    def prober() -> None:
        time.sleep(seconds / 2)
        t = time.monotonic()
        _read(_request(stack.port, "/"))
        probe.append(time.monotonic() - t)

    t = threading.Thread(target=prober)
    t.start()
    sent, block, started = 0, b"x" * 65536, time.monotonic()
    closed = ""
    while time.monotonic() < started + seconds:
        try:
            sent += s.send(block)
        except socket.timeout:
            pass
        except OSError as e:
            closed = f" (the sidecar closed the socket after {time.monotonic() - started:.1f} s: {e.strerror})"
            break
    t.join()
    rss1, cpu1 = rss_bytes(pid), cpu_seconds(pid)
    s.close()
    return [f"| pipelined flood ({seconds:g} s of 64 KiB blocks behind a pending response) | "
            f"{sent / 2**20:.1f} MiB taken from the client{closed}; sidecar RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, "
            f"CPU {cpu1 - cpu0:.1f} s; another client's GET / took {probe[0] * 1000:.0f} ms |"]


def readers(stack, size_fast: int, size_slow: int) -> list[str]:
    rows = []
    got, ended, took = _read(_request(stack.port, f"/bytes?{size_fast}"), rate=20e6)
    rows.append(f"| fast reader ({size_fast / 1e6:g} MB at 20 MB/s) | {got / 1e6:.1f} MB in {took:.1f} s, "
                f"{'complete' if ended else 'CUT OFF'} |")
    got, ended, took = _read(_request(stack.port, f"/bytes?{size_slow}"), rate=2e6)
    rows.append(f"| slow reader ({size_slow / 1e6:g} MB at 2 MB/s) | {got / 1e6:.1f} MB in {took:.1f} s, "
                f"{'complete' if ended else 'CUT OFF'} |")
    return rows


def stalled(stack, http_timeout: float, admin_port: int) -> list[str]:
    import requests

    def closes() -> float:
        text = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("wsgi_channels_sidecar_dropped_total")
                   and ("http_response_stalled" in line or "slow_client" in line))

    before = closes()
    s = _request(stack.port, "/bytes?200000000")
    got, _, _ = _read(s, stop_after=1_000_000)
    stopped = time.monotonic()
    closed_after = None
    while time.monotonic() - stopped < http_timeout * 2 + 10:
        if closes() > before:
            closed_after = time.monotonic() - stopped
            break
        time.sleep(0.1)
    rest, ended, _ = _read(s)
    s.close()
    when = f"closed {closed_after:.1f} s after the client stopped reading" if closed_after is not None \
        else "NOT closed"
    return [f"| stalled reader (200 MB, reads 1 MB then nothing; --http-timeout {http_timeout:g}) | {when}; "
            f"the client then read {(got + rest) / 1e6:.1f} MB, "
            f"{'complete' if ended else 'without the last chunk'} |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--http-timeout", type=float, default=12.0)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _sidecar_stack import Stack, free_port

    admin = free_port()
    stack = Stack(workers=1, threads=4, routing="benchmarks.http_bounds:routing",
                  sidecar_flags=("--http", "layer", "--http-timeout", str(args.http_timeout),
                                 "--admin-bind", f"127.0.0.1:{admin}")).start()
    try:
        rows = ["| scenario | figure |", "|---|---|"]
        rows += flood(stack, args.flood_seconds)
        rows += readers(stack, 50_000_000, 20_000_000)
        rows += stalled(stack, args.http_timeout, admin)
    finally:
        stack.stop()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
