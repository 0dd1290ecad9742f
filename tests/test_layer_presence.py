"""Presence in the layer (issue 19): entries, counts, limits, leases, sweeps, changes to the sidecars.

Parametrised over ``feature_backends.FEATURE_BACKENDS``. Leases last at least 5 s (the smallest
presence ttl), so the tests about lapsed owners wait that long once each.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from feature_backends import drain, feature_backend, feature_layer, stored_groups, sweep_concurrently  # noqa: F401
from wsgi_channels import Group, exceptions as exc
from wsgi_channels.layers.names import new_process_prefix
from wsgi_channels.layers.features import NOTICE_KEY, PRESENCE_KEY
from wsgi_channels.presence import conn_id, consuming

pytestmark = pytest.mark.timeout(120)

PRES = "group_presence=room.*:max_members=3:info_max_bytes=64:ttl=5&group_presence=hall.*:max_members=1000:" \
       "events_max=1000:ttl=5&group_presence=big.*:events_max=4:ttl=5&group_presence=quiet.*:join_leave=0"


def changes(layer, prefix):
    """The presence changes queued on ``prefix`` (one per member channel: kept once per version)."""
    seen = {}
    for _, m in drain(layer, [prefix]):
        if PRESENCE_KEY in m:
            seen.setdefault(m[PRESENCE_KEY]["v"], m[PRESENCE_KEY])
    return [seen[v] for v in sorted(seen)]


def test_add_update_remove_and_counts(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    group = Group("room.1", layer=layer)
    group.add(a, presence={"user": "alice", "info": {"color": "red"}})
    group.add(b, presence={"user": "alice"})
    group.add(c, presence={})  # no user: the current message's, and there is none here
    entries = group.presence()
    assert set(entries) == {conn_id(a), conn_id(b), conn_id(c)}
    assert entries[conn_id(a)]["user"] == "alice" and entries[conn_id(a)]["info"] == {"color": "red"}
    assert entries[conn_id(c)] == {"user": None, "info": None, "since": entries[conn_id(c)]["since"]}
    assert abs(entries[conn_id(a)]["since"] - time.time()) < 60
    assert group.presence_stats() == {"clients": 3, "users": 1}
    group.add(b, presence={"user": "bob"})  # an update: the user refcounts move
    assert group.presence_stats() == {"clients": 3, "users": 2}
    assert group.presence()[conn_id(b)]["since"] == entries[conn_id(b)]["since"]
    group.discard(a)
    assert group.presence_stats() == {"clients": 2, "users": 1}  # bob, and c without a user
    group.discard(b)
    assert group.presence_stats() == {"clients": 1, "users": 0}
    assert set(group.channels()) == {c}
    # reads hand out copies
    group.presence()[conn_id(c)]["info"] = "changed"
    assert group.presence()[conn_id(c)]["info"] is None


def test_max_members_raises_presence_full_and_changes_nothing(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    group = Group("room.full", layer=layer)
    for i in range(3):
        group.add(prefix + f"m{i}", presence={"user": f"u{i}"})
    drain(layer, [prefix])
    with pytest.raises(exc.PresenceFull, match=r"room\.full.*max_members 3 of 'room\.\*'"):
        group.add(prefix + "late", presence={"user": "late"})
    assert prefix + "late" not in group.channels()
    assert group.presence_stats() == {"clients": 3, "users": 3}
    assert drain(layer, [prefix]) == []  # no notice, no change
    group.add(prefix + "m1", presence={"user": "u1", "info": 1})  # an existing entry may still change
    assert group.presence()[conn_id(prefix + "m1")]["info"] == 1


def test_presence_arguments_are_checked(feature_layer):
    layer = feature_layer(PRES)
    group = Group("room.bad", layer=layer)
    with pytest.raises(exc.InvalidMessage, match="info_max_bytes=64 of 'room.\\*'"):
        group.add("some.member", presence={"info": "x" * 100})
    with pytest.raises(exc.InvalidMessage, match="unknown key"):
        group.add("some.member", presence={"user": "u", "color": 1})
    with pytest.raises(exc.InvalidMessage, match="user"):
        group.add("some.member", presence={"user": 42})
    with pytest.raises(exc.InvalidMessage, match=r"presence\['info'\]"):
        group.add("some.member", presence={"info": {1, 2}})
    assert group.channels() == []
    with pytest.raises(exc.PresenceNotEnabled, match="group_presence"):
        Group("nopattern", layer=layer).add("some.member", presence={"user": "u"})
    with pytest.raises(exc.PresenceNotEnabled):
        Group("nopattern", layer=layer).presence()
    with pytest.raises(LookupError):
        Group("nopattern", layer=layer).presence_stats()
    Group("room.plain", layer=layer).add("some.member")  # a plain add makes no entry
    assert Group("room.plain", layer=layer).presence() == {}
    assert stored_groups(layer)["presence"] <= {"room.plain"}


def test_user_from_the_message_being_consumed(feature_layer):
    layer = feature_layer(PRES)

    class User:
        is_authenticated = True
        pk = 7

    class Anonymous:
        is_authenticated = False

    class Msg:
        def __init__(self, user=None, user_id=None):
            self.user, self.user_id = user, user_id

    group = Group("room.who", layer=layer)
    with consuming(Msg(user=User())):
        group.add("c.one", presence={})
    with consuming(Msg(user=Anonymous(), user_id="tok")):
        group.add("c.two", presence={"info": 1})
    with consuming(Msg(user_id="sub-9")):
        group.add("c.three", presence={})
    entries = group.presence()
    assert [entries[conn_id(c)]["user"] for c in ("c.one", "c.two", "c.three")] == ["7", None, "sub-9"]


def test_conn_id_reveals_nothing_of_the_channel():
    prefix = new_process_prefix("sidecar")
    channel = prefix + "Abc123xyz789"
    cid = conn_id(channel)
    assert len(cid) == 16 and cid == conn_id(channel) and cid != conn_id(prefix + "Abc123xyz78A")
    for part in [prefix[:-1], prefix.split(".")[1][:-1], channel.split("!")[1]]:
        for i in range(len(part) - 4):
            assert part[i:i + 5] not in cid
    for i in range(len(cid) - 4):
        assert cid[i:i + 5] not in channel


def test_changes_reach_sidecar_members_only_with_notices(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    a, b = prefix + "a", prefix + "b"
    group = Group("room.ev", layer=layer)
    group.add("plain.observer")
    group.add(a, presence={"user": "alice", "info": {"i": 1}})
    got = drain(layer, [prefix])
    notice = got[0][1][NOTICE_KEY]
    assert got[0][0] == a and notice["g"] == "room.ev" and notice["a"] is True and notice["h"] is False
    p = notice["p"]
    assert (p["id"], p["ttl"], p["ev"], p["m"], p["u"], p["i"]) == (conn_id(a), 5.0, 100, "e", "alice", {"i": 1})
    change = got[1][1][PRESENCE_KEY]
    assert change["g"] == "room.ev" and change["c"] == 1 and change["u"] == 1 and change["m"] == "e"
    assert change["ev"] == [["j", conn_id(a), "alice", {"i": 1}, int(p["s"] * 1000)]]
    group.add(b, presence={"user": "bob"})
    group.add(a, presence={"user": "alice", "info": {"i": 1}})  # the same entry again: no change
    group.discard(a)
    evs = changes(layer, prefix)
    assert [e[:2] for ch in evs for e in ch["ev"]] == [["j", conn_id(b)], ["l", conn_id(a)]]
    assert [ch["v"] for ch in evs] == [change["v"] + 1, change["v"] + 2]
    assert drain(layer, ["plain.observer"]) == []  # raw members see nothing new


def test_count_mode_above_events_max(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    group = Group("big.1", layer=layer)  # events_max=4: count mode past 4, events again under 3.2
    for i in range(6):
        group.add(prefix + f"m{i}", presence={"user": f"u{i}"})
    evs = changes(layer, prefix)
    assert [(ch["m"], len(ch["ev"]), ch["c"]) for ch in evs] == [("e", 1, 1), ("e", 1, 2), ("e", 1, 3),
                                                                  ("e", 1, 4), ("c", 0, 5)]
    for i in range(3):
        group.discard(prefix + f"m{i}")
    evs = changes(layer, prefix)
    assert [(ch["m"], ch["c"], ch.get("stale", False)) for ch in evs] == [("e", 3, True)]
    quiet = Group("quiet.1", layer=layer)  # join_leave off: one count-mode change, then nothing
    quiet.add(prefix + "q1", presence={"user": "a"})
    quiet.add(prefix + "q2", presence={"user": "b"})
    assert [(ch["g"], ch["m"], ch["ev"]) for ch in changes(layer, prefix)] == [("quiet.1", "c", [])]
    assert quiet.presence_stats() == {"clients": 2, "users": 2}


def test_remove_is_idempotent_and_owner_bound(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    a = prefix + "a"
    layer.group_add("room.rm", a, presence={"user": "x"})
    assert layer.presence_remove("room.rm", new_process_prefix("sidecar"), [conn_id(a)]) is None  # not its owner
    change = layer.presence_remove("room.rm", prefix, [conn_id(a), "nosuchconn"])
    assert change.events == [["l", conn_id(a)]] and change.clients == 0
    assert layer.presence_remove("room.rm", prefix, [conn_id(a)]) is None
    layer.group_discard("room.rm", a)  # the worker's discard after the sidecar's removal: no second leave
    leaves = [e for ch in changes(layer, prefix) for e in ch["ev"] if e[0] == "l"]
    assert leaves == [["l", conn_id(a)]]


def test_reassert_makes_the_owner_entries_exactly_the_list(feature_layer):
    layer = feature_layer(PRES)
    prefix = new_process_prefix("sidecar")
    a, b = prefix + "a", prefix + "b"
    layer.group_add("hall.r", a, presence={"user": "a"})
    layer.group_add("hall.r", b, presence={"user": "b"})
    drain(layer, [prefix])
    since = time.time() - 100
    change = layer.presence_reassert(prefix, "hall.r", {conn_id(b): {"user": "b", "info": None, "since": since},
                                                        "cid-new-1": {"user": "n", "info": [1], "since": since}})
    assert sorted(e[:2] for e in change.events) == [["j", "cid-new-1"], ["l", conn_id(a)]]
    entries = layer.group_presence("hall.r")
    assert set(entries) == {conn_id(b), "cid-new-1"} and entries["cid-new-1"]["info"] == [1]
    assert layer.group_presence_stats("hall.r") == {"clients": 2, "users": 2}
    assert layer.presence_reassert(prefix, "hall.r", {conn_id(b): {"user": "b", "info": None, "since": since},
                                                      "cid-new-1": {"user": "n", "info": [1], "since": since}}) is None


def test_lapsed_owner_filtered_at_once_refresh_and_sweep(feature_layer):
    layer = feature_layer(PRES)
    live, dead = new_process_prefix("sidecar"), new_process_prefix("sidecar")
    layer.group_add("hall.l", live + "a", presence={"user": "live"})
    layer.group_add("hall.l", dead + "a", presence={"user": "dead"})
    assert layer.presence_refresh(live, ["hall.l", "hall.none"]) == [True, False]
    assert layer.presence_refresh("sidecar.unknown!", ["hall.l"]) == [False]
    deadline = time.monotonic() + 5.5
    while time.monotonic() < deadline:  # the live owner refreshes (every ttl/3), the dead one does not
        assert layer.presence_refresh(live, ["hall.l"]) == [True]
        time.sleep(0.5)
    assert set(layer.group_presence("hall.l")) == {conn_id(live + "a")}  # filtered before any sweep
    assert layer.group_presence_stats("hall.l") == {"clients": 2, "users": 2}  # counts until swept
    swept = layer.presence_sweep()
    assert [(c.group, c.events) for c in swept] == [("hall.l", [["l", conn_id(dead + "a")]])]
    assert layer.presence_sweep() == []
    assert layer.group_presence_stats("hall.l") == {"clients": 1, "users": 1}
    assert layer.presence_refresh(dead, ["hall.l"]) == [False]  # swept: the owner must reassert
    assert layer.presence_reassert(dead, "hall.l", {conn_id(dead + "a"): {"user": "dead", "since": 1.0}}).events[0][0] == "j"
    assert layer.presence_refresh(dead, ["hall.l"]) == [True]
    assert set(layer.group_presence("hall.l")) == {conn_id(live + "a"), conn_id(dead + "a")}


def test_three_racing_sweepers_make_exactly_one_leave_per_entry(feature_layer):
    layer = feature_layer(PRES)
    dead = [new_process_prefix("sidecar") for _ in range(3)]
    observer = new_process_prefix("sidecar")
    layer.group_add("hall.s", observer + "obs", presence={"user": "watcher"})
    for i in range(300):
        layer.group_add("hall.s", dead[i % 3] + f"c{i}", presence={"user": f"u{i % 50}"})
    drain(layer, [observer] + dead)
    time.sleep(5.2)
    # The observer is a live owner: it renews its lease while the sweepers race, as a sidecar does
    # (sweeper processes starting slowly on a loaded machine must not outlive its ttl).
    layer.presence_refresh(observer, ["hall.s"])
    sweeping = threading.Event()

    def keep_alive() -> None:
        while not sweeping.wait(0.5):
            layer.presence_refresh(observer, ["hall.s"])

    keeper = threading.Thread(target=keep_alive, daemon=True)
    keeper.start()
    try:
        results = sweep_concurrently(feature_layer, layer, PRES, sweepers=3)
    finally:
        sweeping.set()
        keeper.join(10)
    removed = [cid for one in results for cid in one]
    assert len(removed) == 300 and len(set(removed)) == 300, [len(r) for r in results]
    assert set(removed) == {conn_id(dead[i % 3] + f"c{i}") for i in range(300)}
    leaves = Counter(e[1] for ch in changes(layer, observer) for e in ch["ev"] if e[0] == "l")
    assert len(leaves) == 300 and set(leaves.values()) == {1}
    assert layer.group_presence_stats("hall.s") == {"clients": 1, "users": 1}
