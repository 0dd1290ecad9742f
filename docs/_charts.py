"""Draw the performance page's charts (PNG) from the benchmark results committed in ``docs/_data/``.

Each benchmark used on the page writes its results with ``--json PATH``
(``benchmarks/_results.py`` gives the shape); this module reads those files and draws one
chart per benchmark, wsgi_channels beside the peer it is compared with, plus a short Markdown
note per benchmark (when, where and how it ran) that the page includes. The docs build calls
:func:`draw_all` (``docs/conf.py``), so the charts always match the committed figures and the
build needs matplotlib but none of the benchmarks' peers. By hand::

    python docs/_charts.py [DATA_DIR] [OUT_DIR]     # default docs/_data docs/_generated
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # no display: the docs build and CI have none

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.ticker  # noqa: E402

HERE = Path(__file__).resolve().parent

OURS = "#1f6fb4"
PEERS = ["#e07b39", "#9b9b9b", "#5aa469"]
LIMIT = "#d0d0d0"

#: benchmark name -> (title, draw function); filled by @chart below.
CHARTS: dict[str, tuple[str, Callable[[dict], Any]]] = {}


def chart(name: str, title: str) -> Callable:
    def register(fn: Callable[[dict], Any]) -> Callable[[dict], Any]:
        CHARTS[name] = (title, fn)
        return fn

    return register


def _label_bars(ax, bars, fmt: Callable[[float], str]) -> None:  # type: ignore[no-untyped-def]
    for bar in bars:
        height = bar.get_height()
        if height:
            ax.annotate(fmt(height), (bar.get_x() + bar.get_width() / 2, height), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)


def _grouped(ax, groups: list[str], series: list[tuple[str, list[float | None], str]],  # type: ignore[no-untyped-def]
             fmt: Callable[[float], str]) -> None:
    """Bars for each group (x), one per series, missing values left out."""
    width = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else 0 for v in values]
        bars = ax.bar(xs, heights, width, label=label, color=color)
        _label_bars(ax, bars, fmt)
    ax.set_xticks(range(len(groups)), groups)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _tidy(ax, legend=True)


def _tidy(ax, legend: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Room above the tallest bar for the legend (two columns, top left), no top or right spine."""
    ax.spines[["top", "right"]].set_visible(False)
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top * (1.4 if ax.get_yscale() == "linear" else 8))
    if legend:
        ax.legend(fontsize=8, frameon=False, ncol=2, loc="upper left")


def _thousands(v: float) -> str:
    return f"{v / 1000:.0f}k" if v >= 10_000 else f"{v:,.0f}"


@chart("layer_throughput", "Channel layer on one Redis: wsgi_channels beside channels_redis")
def layer_throughput(doc: dict) -> Any:
    rows = {r["name"]: r for r in doc["results"]["rows"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 2]})
    names = [("send (msg/s)", "send"), ("receive (msg/s)", "receive"),
             ("send-then-receive loop (msg/s)", "send, then receive")]
    picked = [rows[n] for n, _ in names]
    _grouped(left, [label for _, label in names], [
        ("wsgi_channels", [r["ours"] for r in picked], OURS),
        ("channels_redis (core)", [r["core"] for r in picked], PEERS[0]),
        ("channels_redis (pub/sub)", [r["pubsub"] for r in picked], PEERS[1]),
        ("raw Redis round trips", [r["limit"] for r in picked], LIMIT),
    ], _thousands)
    left.set_ylabel("messages/s (higher is better)")
    left.set_title("One synchronous caller", fontsize=10)
    latency = [rows["Group.send() p50, sync caller"], rows["Group.send() p99, sync caller"]]
    _grouped(right, ["p50", "p99"], [
        ("wsgi_channels", [r["ours"] * 1e6 for r in latency], OURS),
        ("channels_redis (core)", [r["core"] * 1e6 for r in latency], PEERS[0]),
        ("channels_redis (pub/sub)", [r["pubsub"] * 1e6 for r in latency], PEERS[1]),
    ], lambda v: f"{v:,.0f}")
    right.set_yscale("log")
    right.set_ylim(1, max(r["core"] for r in latency) * 1e6 * 8)
    right.set_ylabel("us, log scale (lower is better)")
    right.set_title("Group.send() from a synchronous caller", fontsize=10)
    return fig


@chart("push_fanout", "Push fan-out through gunicorn: wsgi_channels beside Flask-SocketIO")
def push_fanout(doc: dict) -> Any:
    stacks = [s for s in doc["results"]["stacks"] if "failed" not in s]
    labels = [s["stack"].replace(" (gunicorn", "\n(gunicorn") for s in stacks]
    colors = [OURS if s["stack"].startswith("wsgi_channels") else PEERS[0] for s in stacks]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    xs = range(len(stacks))
    p50 = left.bar([x - width / 2 for x in xs], [s["p50_s"] * 1000 for s in stacks], width, color=colors,
                   label="p50")
    p95 = left.bar([x + width / 2 for x in xs], [s["p95_s"] * 1000 for s in stacks], width, color=colors, alpha=0.55,
                   label="p95")
    _label_bars(left, p50, lambda v: f"{v:.1f}")
    _label_bars(left, p95, lambda v: f"{v:.1f}")
    left.set_xticks(list(xs), labels, fontsize=8)
    left.set_ylabel("ms, POST to arrival (lower is better)")
    left.set_title(f"Latency, one push at a time (p50, p95 lighter), {doc['results']['clients']} clients",
                   fontsize=10)
    bars = right.bar(list(xs), [s["burst_deliveries_per_s"] for s in stacks], 0.6, color=colors)
    _label_bars(right, bars, lambda v: f"{v:,.0f}")
    right.set_xticks(list(xs), labels, fontsize=8)
    right.set_ylabel("deliveries/s (higher is better)")
    right.set_title(f"Burst of {doc['results']['pushes']} pushes from 4 threads", fontsize=10)
    left.legend(handles=[matplotlib.patches.Patch(color=OURS, label="wsgi_channels"),
                         matplotlib.patches.Patch(color=PEERS[0], label="Flask-SocketIO")], fontsize=8,
                frameon=False, ncol=2, loc="upper left")
    for ax in (left, right):
        _tidy(ax)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    return fig


@chart("sidecar_broadcast", "One group message to many sockets: wsgi_channels beside python-socketio")
def sidecar_broadcast(doc: dict) -> Any:
    res = doc["results"]
    ours, peer = res["ours_peer_count"], res["python_socketio_peer_count"]
    rounds = [f"round {r['round'] + 1}" for r in ours]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _grouped(left, rounds, [
        ("wsgi_channels sidecar", [r["all_ms"] for r in ours], OURS),
        ("python-socketio (gevent, Redis queue)", [r["all_ms"] for r in peer], PEERS[0]),
    ], lambda v: f"{v:,.0f}")
    left.set_ylabel("ms until all have it (lower is better)")
    left.set_title(f"{res['peer_count']:,} sockets, both servers", fontsize=10)
    big = res["ours"]
    _grouped(right, [f"round {r['round'] + 1}" for r in big], [
        ("p50", [r["p50_ms"] for r in big], OURS),
        ("p99", [r["p99_ms"] for r in big], "#7fb2dc"),
        ("all have it", [r["all_ms"] for r in big], "#0b3d66"),
    ], lambda v: f"{v:,.0f}")
    right.set_ylabel("ms after the send (lower is better)")
    lost = sum(r["lost"] for r in big)
    right.set_title(f"wsgi_channels alone, {res['count']:,} sockets ({lost} lost)", fontsize=10)
    return fig


@chart("sidecar_http", "HTTP through the sidecar and a worker, beside gunicorn serving the app directly")
def sidecar_http(doc: dict) -> Any:
    res = doc["results"]
    rounds = res["rounds"]
    labels = [f"round {i + 1}" for i in range(len(rounds))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _grouped(left, labels, [
        ("wsgi_channels (sidecar + worker, Redis)", [r["ours"]["rps"] for r in rounds], OURS),
        ("gunicorn gthread -w 2 (direct)", [r["gunicorn"]["rps"] for r in rounds], PEERS[0]),
    ], lambda v: f"{v:,.0f}")
    left.set_ylabel("requests/s (higher is better)")
    left.set_title(f"wrk, {res['connections']} keep-alive connections, GET {res['path']}", fontsize=10)
    _grouped(right, labels, [
        ("wsgi_channels", [sum(r["ours"]["cpu_us"].values()) for r in rounds], OURS),
        ("gunicorn", [sum(r["gunicorn"]["cpu_us"].values()) for r in rounds], PEERS[0]),
    ], lambda v: f"{v:,.0f}")
    right.set_ylabel("CPU us per request (lower is better)")
    right.set_title("CPU of all server processes, per request", fontsize=10)
    return fig


@chart("history_presence", "Group history and presence on ipc://: their cost, and a sidecar kill-restart storm")
def history_presence(doc: dict) -> Any:
    res = doc["results"]
    rows = res["send"]["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    _grouped(left, [f"{r['members']} members\n{r['kind']}" for r in rows], [
        ("history off", [r["off_p50_s"] * 1e6 for r in rows], PEERS[1]),
        ("history on", [r["on_p50_s"] * 1e6 for r in rows], OURS),
    ], lambda v: f"{v:,.0f}")
    left.set_yscale("log")
    left.set_ylim(1, max(r["on_p50_s"] for r in rows) * 1e6 * 8)
    left.set_ylabel("us, log scale (lower is better)")
    left.set_title("Group.send() p50, history off and on, same run", fontsize=10)
    for label in left.get_xticklabels():
        label.set_fontsize(7)
    storms = [s for s in res.get("storm", []) if s.get("resume")]
    base = {(s["sockets"], s["rate"]): s for s in res.get("storm", []) if not s.get("resume")}
    groups = [f"{s['connected']:,} sockets\n{s['rate']:g} msg/s" for s in storms]
    _grouped(right, groups, [
        ("resumed: caught up p50", [s["caught_up_p50_s"] for s in storms], OURS),
        ("resumed: p99", [s["caught_up_p99_s"] for s in storms], "#7fb2dc"),
        ("no positions: live again p50", [base.get((s["sockets"], s["rate"]), {}).get("caught_up_p50_s")
                                          for s in storms], PEERS[1]),
    ], lambda v: f"{v:.1f}")
    right.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    right.set_ylabel("s after the sidecar listens again (lower is better)")
    wrong = sum(s["dups"] + s["gaps"] + s["gap_frames"] for s in storms)
    right.set_title(f"kill -9 the sidecar, start it again ({wrong} duplicates or gaps)", fontsize=10)
    return fig


# -- the notes the page includes ----------------------------------------------------------------


def _secs(value: float | None) -> str:
    """Seconds as the notes print them; ``-`` when the run had none (no client got there)."""
    return "-" if value is None else f"{value:.1f} s"


def _summary(doc: dict) -> str:
    res = doc["results"]
    name = doc["benchmark"]
    if name == "layer_throughput":
        rows = {r["name"]: r for r in res["rows"]}
        loop = rows["send-then-receive loop (msg/s)"]
        lat = rows["Group.send() p50, sync caller"]
        return (f"Send-then-receive loop: {loop['ours'] / loop['core']:.1f}x channels_redis core, "
                f"{loop['ours'] / loop['pubsub']:.1f}x its pub/sub layer, {loop['ours'] / loop['limit']:.0%} of "
                f"the raw round-trip limit. `Group.send()` p50: {lat['ours'] * 1e6:.0f} us against "
                f"{lat['core'] * 1e6:,.0f} us (core). Median of {res['repeats']} runs per figure.")
    if name == "push_fanout":
        ok = {s["stack"]: s for s in res["stacks"] if "failed" not in s}
        failed = [s["stack"] for s in res["stacks"] if "failed" in s]
        peer = next((s for n, s in ok.items() if not n.startswith("wsgi_channels")), None)
        parts = []
        for n, s in ok.items():
            if s is peer:
                continue
            text = f"{n}: p50 {s['p50_s'] * 1000:.1f} ms, burst {s['burst_deliveries_per_s']:,.0f} deliveries/s"
            if peer:
                text += f" ({s['burst_deliveries_per_s'] / peer['burst_deliveries_per_s']:.1f}x Flask-SocketIO's)"
            parts.append(text)
        if failed:
            parts.append("failed in this run: " + ", ".join(failed))
        return "; ".join(parts) + f". {res['clients']} clients, {res['pushes']} pushes."
    if name == "sidecar_broadcast":
        ours = statistics.median(r["all_ms"] for r in res["ours_peer_count"])
        peer = statistics.median(r["all_ms"] for r in res["python_socketio_peer_count"])
        big = res["ours"]
        return (f"{res['peer_count']:,} sockets: every client had the message after {ours:,.0f} ms (median of "
                f"{res['rounds']} rounds) against {peer:,.0f} ms for python-socketio ({peer / ours:.1f}x). "
                f"{res['count']:,} sockets: worst p99 {max(r['p99_ms'] for r in big):,.0f} ms, "
                f"{sum(r['lost'] for r in big)} lost.")
    if name == "sidecar_http":
        kept = [r for r in res["rounds"] if r["gunicorn"].get("balanced", True)]
        ratio = statistics.median(r["ours"]["rps"] / r["gunicorn"]["rps"] for r in kept) if kept else None
        diff = statistics.median(r["ours"]["p50"] - r["gunicorn"]["p50"] for r in kept) if kept else None
        if ratio is None:
            return "No round had gunicorn running on both of its workers: no ratio."
        return (f"Throughput {ratio:.0%} of gunicorn's, p50 {diff:+.2f} ms (medians of {len(kept)} alternating "
                f"rounds of {res['duration']} s).")
    if name == "history_presence":
        rows = res["send"]["rows"]
        ratios = [r["ratio_p50"] for r in rows]
        met = sum(1 for r in rows if r["target_met"])
        mem = res["memory"]
        pres = res["presence"]
        stats = pres["stats"]
        text = (f"`Group.send()` p50 with history {min(ratios):.2f}x to {max(ratios):.2f}x the same send without "
                f"(target <= 1.3x: met in {met} of {len(rows)} cases). {mem['bytes_per_message']:,.0f} bytes per "
                f"stored message of {mem['serialised_bytes']} bytes ({mem['measured']}). `group_presence()` of "
                f"{pres['presence_1000']['entries']:,} members: p50 {pres['presence_1000']['p50_s'] * 1e3:.1f} ms, "
                f"p99 {pres['presence_1000']['p99_s'] * 1e3:.1f} ms; `group_presence_stats()` p50 "
                + ", ".join(f"{s['p50_s'] * 1e6:.0f} us at {s['clients']:,}" for s in stats) + ".")
        storms = res.get("storm", [])
        if storms:
            text += ("\n\n| sockets | msg/s | reconnect | caught up p50 | p99 | within 10 s | messages | replayed "
                     "| duplicates | gaps | of them silent | `gap` frames |\n" + "|---" * 12 + "|\n")
            for s in storms:
                mode = "with positions" if s.get("resume") else "no positions"
                text += (f"| {s['connected']:,} | {s['rate']:g} | {mode} | {_secs(s['caught_up_p50_s'])} | "
                         f"{_secs(s['caught_up_p99_s'])} | {s['within_10s']:,} | "
                         f"{s['received']:,} of {s['expected']:,} | {s['replayed']:,} | {s['dups']} | {s['gaps']:,} | "
                         f"{s['silent_gaps']:,} | {s['gap_frames']} |\n")
            text += ("\n(A gap is an offset a client never got; a silent one came without a `gap` frame before "
                     "it. Without positions the clients miss, silently, what was published while they were away.)")
        return text
    return ""


def note(doc: dict) -> str:
    """Markdown: what the run showed, and when, where and how it ran."""
    m = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in doc.get("versions", {}).items() if v)
    return (f"{_summary(doc)}\n\n"
            f"*Run:* {doc['date'].replace('T', ' ').replace('Z', ' UTC')}, `{doc['command']}` "
            f"({doc['duration_s']:.0f} s), on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
            f"{m['os']}, Python {m['python']}, Redis {m['redis']}; {versions}.\n")


def draw_all(data_dir: Path, out_dir: Path) -> list[Path]:
    """Draw every chart whose results are in ``data_dir``; a missing or broken file raises (the build fails)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, draw) in CHARTS.items():
        source = data_dir / f"{name}.json"
        try:
            doc = json.loads(source.read_text())
            fig = draw(doc)
            fig.suptitle(title, fontsize=11)
            fig.tight_layout()
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            plt.close(fig)
            (out_dir / f"{name}.md").write_text(note(doc))
        except Exception as e:
            raise RuntimeError(f"cannot draw the {name} chart from {source}: {type(e).__name__}: {e}") from e
        written += [out_dir / f"{name}.png", out_dir / f"{name}.md"]
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data = Path(args[0]) if args else HERE / "_data"
    out = Path(args[1]) if len(args) > 1 else HERE / "_generated"
    for path in draw_all(data, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
