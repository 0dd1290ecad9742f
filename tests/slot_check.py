"""Static checks that the Redis layer's scripts can run on a Redis Cluster.

Two checks, both without a server:

``one_slot_violations(calls, ...)``
    For many random channel, process-prefix and group names (10,000 by default), build
    the KEYS of every script call with the layer's own key-naming code and check that they
    map to one slot (``redis.crc.key_slot``). ``calls`` maps a call's name to a function of
    a :class:`Names` sample that returns the keys that call passes, so the check is pointed
    at whatever names the keys: today's ``RedisChannelLayer._key`` family, later the new
    codec.
``undeclared_keys(source)``
    Scan a Lua script for ``redis.call``/``redis.pcall`` whose key argument is not taken
    from ``KEYS``: directly, or through names bound only to ``KEYS[...]`` or to other such
    names (locals, and helper functions' parameters through the arguments of every call of
    the helper). A key the script builds itself is reported: Redis Cluster cannot route it,
    and a ``#!lua`` script may only touch its declared slot. Scopes are not told apart, so
    a name bound to a key in one place and to anything else in another is reported where it
    is used as a key: conservative, never silent. ``PUBLISH`` is reported too: in a cluster
    it goes to every node (``SPUBLISH`` stays in the slot).

A finding names the call, an example and the slots, so a failure says what to fix.
"""
from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

from redis.crc import key_slot

__all__ = ["Names", "random_names", "one_slot_violations", "Finding", "undeclared_keys"]

_NAME_CHARS = string.ascii_letters + string.digits + "-_."


@dataclass(frozen=True)
class Names:
    """One random sample of the names a call may be made with."""

    channel: str  # a plain channel ("chat.room-1")
    reply: str  # a single-reader channel ("http.response?Ab3...")
    prefix: str  # a process prefix ("sidecar.x7!")
    local: str  # a process-local channel of that prefix ("sidecar.x7!c42")
    group: str
    receive: tuple[str, ...]  # a channel list one receive asks for (plain, single-reader, a prefix)


def _name(rng: random.Random, low: int = 1, high: int = 60) -> str:
    return "".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(low, high)))


def random_names(count: int = 10_000, seed: int = 17) -> Iterator[Names]:
    """``count`` reproducible samples of names, as the contract allows them (up to 100 characters)."""
    rng = random.Random(seed)
    for _ in range(count):
        prefix = rng.choice(["sidecar.", "worker.", ""]) + _name(rng, 1, 40) + "!"
        reply = _name(rng, 1, 40) + "?" + _name(rng, 12, 20)
        channel = _name(rng, 1, 100)
        receive = tuple(rng.sample([channel, reply, prefix, _name(rng), _name(rng)], rng.randint(1, 5)))
        yield Names(channel=channel, reply=reply, prefix=prefix, local=prefix + _name(rng, 1, 20),
                    group=_name(rng, 1, 100), receive=receive)


KeyFunction = Callable[[Names], Sequence[bytes]]


def one_slot_violations(calls: Mapping[str, KeyFunction], count: int = 10_000,
                        seed: int = 17) -> dict[str, tuple[int, Names, dict[int, list[bytes]]]]:
    """Calls whose keys did not all map to one slot: name -> (how many of ``count`` samples failed,
    the first failing sample, its keys by slot). A call with no keys for a sample is skipped."""
    failed: dict[str, tuple[int, Names, dict[int, list[bytes]]]] = {}
    for names in random_names(count, seed):
        for call, keys_of in calls.items():
            keys = list(keys_of(names))
            slots: dict[int, list[bytes]] = {}
            for key in keys:
                slots.setdefault(key_slot(key), []).append(key)
            if len(slots) > 1:
                n, first, by_slot = failed.get(call, (0, names, slots))
                failed[call] = (n + 1, first, by_slot)
    return failed


# -- Lua ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    line: int
    command: str
    key: str  # the key argument as written
    reason: str


#: Commands whose every argument is a key; the others here take their key first.
_ALL_KEYS = {"DEL", "UNLINK", "EXISTS", "TOUCH", "MGET", "WATCH"}
#: Commands with no key.
_NO_KEY = {"TIME", "PING", "ECHO", "INFO", "DBSIZE", "SCRIPT", "CLUSTER", "READONLY", "READWRITE", "ROLE"}
_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'\s*(?:,|\))")
_LOCAL = re.compile(r"\blocal\s+([A-Za-z_][\w\s,]*?)\s*=\s*([^\n]+)")
_KEYS_REF = re.compile(r"^KEYS\[\s*(?:\d+|[A-Za-z_]\w*(?:\s*[-+]\s*\d+)?)\s*\]$")


def _split_args(text: str) -> list[str]:
    """Top-level comma-separated expressions of ``text`` up to its closing parenthesis."""
    args, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                args.append(text[start:i].strip())
                return [a for a in args if a]
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
    args.append(text[start:].strip())
    return [a for a in args if a]


#: ``a = ...`` or ``a, b = ..., ...`` at the start of a statement (``local`` declarations are read apart).
_ASSIGN = re.compile(r"(?m)(?:^|\bthen\b|\bdo\b|\belse\b|;)[ \t]*((?:[A-Za-z_]\w*[ \t]*,[ \t]*)*[A-Za-z_]\w*)"
                     r"[ \t]*=(?!=)[ \t]*([^\n]+)")
_FUNCTION = re.compile(r"(?:local\s+)?function\s+([A-Za-z_][\w.:]*)\s*\(([^)]*)\)")


def _bindings(source: str) -> dict[str, list[str]]:
    """Every value each name is bound to: ``local`` declarations and assignments, and for a function's
    parameters the arguments of every call of that function (scopes are not told apart)."""
    bound: dict[str, list[str]] = {}
    for match in _LOCAL.finditer(source):
        if match.group(1).strip().startswith("function"):
            continue
        names = [n.strip() for n in match.group(1).split(",")]
        values = _split_args(match.group(2) + ")")
        for i, name in enumerate(names):
            bound.setdefault(name, []).append(values[i] if i < len(values) else "nil")
    for match in _ASSIGN.finditer(source):
        names = [n.strip() for n in match.group(1).split(",")]
        values = _split_args(match.group(2) + ")")
        for i, name in enumerate(names):
            bound.setdefault(name, []).append(values[i] if i < len(values) else "nil")
    for match in re.finditer(r"\bfor\s+([\w\s,]+?)\s+in\s+([^\n]+?)\s+do\b", source):
        names = [n.strip() for n in match.group(1).split(",")]
        over_keys = re.fullmatch(r"ipairs\(\s*KEYS\s*\)", match.group(2).strip()) is not None
        for i, name in enumerate(names):
            bound.setdefault(name, []).append("KEYS[i]" if over_keys and i == 1 else match.group(2))
    for match in _FUNCTION.finditer(source):
        params = [p.strip() for p in match.group(2).split(",") if p.strip()]
        short = match.group(1).replace(":", ".").rsplit(".", 1)[-1]
        for param in params:
            bound.setdefault(param, [])
        # every call of the function, however it is reached (C.trim(...), common().trim(...))
        calls = [m for m in re.finditer(r"(?:(?<=[.:])|(?<![\w.:]))" + re.escape(short) + r"\s*\(", source)
                 if not (match.start() <= m.start() < match.end())]
        for call in calls:
            args = _split_args(source[call.end():])
            for i, param in enumerate(params):
                bound[param].append(args[i] if i < len(args) else "nil")
    return bound


def _declared(source: str) -> set[str]:
    """Names whose every binding is ``KEYS[...]``, ``nil`` (an optional key left out) or another such
    name: the greatest fixpoint, so names that only pass keys around among themselves (a local
    handed to a helper's parameter of the same name) stay declared."""
    bound = _bindings(source)
    declared = {name for name, values in bound.items() if values}
    changed = True
    while changed:
        changed = False
        for name in list(declared):
            if not all(_KEYS_REF.match(v) or v == "nil" or v in declared for v in bound[name]):
                declared.discard(name)
                changed = True
    return declared


def undeclared_keys(source: str) -> list[Finding]:
    """Key arguments of ``redis.call``/``redis.pcall`` in ``source`` that do not come from ``KEYS``."""
    declared = _declared(source)
    findings: list[Finding] = []
    for match in _CALL.finditer(source):
        command = match.group(1).upper()
        line = source.count("\n", 0, match.start()) + 1
        if command in _NO_KEY:
            continue
        if command == "PUBLISH":
            findings.append(Finding(line, command, "", "PUBLISH goes to every node of a cluster: use SPUBLISH"))
            continue
        args = _split_args(source[match.end():]) if source[match.end() - 1] == "," else []
        keys = args if command in _ALL_KEYS else args[:1]
        if not keys:
            findings.append(Finding(line, command, "", "no key argument found"))
        for key in keys:
            if _KEYS_REF.match(key) or key in declared:
                continue
            if key.startswith("unpack(KEYS"):
                continue
            reason = "built in the script" if ".." in key or "(" in key else \
                "not a local taken only from KEYS (a parameter or another value)"
            findings.append(Finding(line, command, key, reason))
    return findings
