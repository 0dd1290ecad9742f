"""Which part of the package may import which (docs/architecture.md), kept by walking the imports.

Every ``import`` and ``from ... import`` in a module counts, also inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency. A rule names the modules it governs and
what they must not reach; ``transitive`` rules also follow the package's own imports, so a
sans-IO module cannot reach gevent through a helper either. Add a rule as a :class:`Rule` row.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "wsgi_channels"

#: What sits above the core and the layers: the parts that use them. Old and new module names
#: both (consumers/, worker/ and cli/ are packages after the restructure).
_ABOVE_LAYERS = ("wsgi_channels.sidecar", "wsgi_channels.worker", "wsgi_channels.consumers", "wsgi_channels.cli",
                 "wsgi_channels.adapters", "wsgi_channels.runserver", "wsgi_channels.tools",
                 "wsgi_channels.consumer", "wsgi_channels.generic", "wsgi_channels.wsgi", "wsgi_channels.routing",
                 "wsgi_channels.sessions", "wsgi_channels.message", "wsgi_channels.reply_sender",
                 "wsgi_channels.worker_metrics", "wsgi_channels.timelimit", "wsgi_channels.testing")
_IO = ("gevent", "greenlet", "socket", "threading", "redis", "select", "selectors", "asyncio", "multiprocessing",
       "subprocess")


@dataclass(frozen=True)
class Rule:
    """Modules under ``governs`` (dotted prefixes) must not import any of ``forbidden`` (dotted
    prefixes: ours or third-party), nor anything of ours outside ``allowed`` when it is given."""

    name: str
    governs: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    allowed: tuple[str, ...] | None = None
    transitive: bool = False


RULES = (
    Rule("the sans-IO protocol reaches no I/O, no layer and no server", ("wsgi_channels.protocol",),
         forbidden=_IO, allowed=("wsgi_channels.protocol", "wsgi_channels.exceptions"), transitive=True),
    Rule("the layers never import what uses them", ("wsgi_channels.layers",),
         forbidden=_ABOVE_LAYERS + ("wsgi_channels.protocol",)),
    # The core may use the sans-IO protocol (a leaf: it imports only itself and the exceptions),
    # e.g. channel.py checks a WebSocket-shaped push where it is made.
    Rule("the core imports no part above it",
         ("wsgi_channels.channel", "wsgi_channels.exceptions", "wsgi_channels.serialization", "wsgi_channels.config"),
         forbidden=_ABOVE_LAYERS),
    Rule("the exceptions import nothing of ours", ("wsgi_channels.exceptions",), allowed=("wsgi_channels.exceptions",)),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Dotted names ``path`` imports (relative imports resolved; ``from x import y`` gives ``x.y`` and ``x``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(rule: Rule, graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module in sorted(m for m in graph if _under(m, rule.governs)):
        seen: set[str] = set()
        todo = [(module, (module,))]
        while todo:
            current, path = todo.pop()
            for target in sorted(graph.get(current, ())):
                ours = target.startswith("wsgi_channels")
                bad = _under(target, rule.forbidden) or (
                    ours and rule.allowed is not None and not _under(target, rule.allowed))
                if bad:
                    found.append(" -> ".join(path + (target,)))
                elif rule.transitive and ours and target in graph and target not in seen:
                    seen.add(target)
                    todo.append((target, path + (target,)))
    return found


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_import_rule(rule):
    graph = _graph()
    assert any(_under(m, rule.governs) for m in graph), f"no module is governed by {rule.governs}"
    assert not violations(rule, graph), "\n".join(violations(rule, graph))


def test_the_walker_sees_a_forbidden_import():
    """The checker itself: a sans-IO module that reaches gevent through a helper of ours is caught."""
    graph = {"wsgi_channels.protocol.a": {"wsgi_channels.protocol.b", "re"},
             "wsgi_channels.protocol.b": {"wsgi_channels.sidecar.common"},
             "wsgi_channels.sidecar.common": {"gevent"}}
    assert violations(RULES[0], graph) == ["wsgi_channels.protocol.a -> wsgi_channels.protocol.b -> "
                                           "wsgi_channels.sidecar.common",
                                           "wsgi_channels.protocol.b -> wsgi_channels.sidecar.common"]
    # Relative imports are resolved, and imports under TYPE_CHECKING count.
    assert {"gevent", "wsgi_channels.sidecar.http_side", "wsgi_channels.sidecar.server",
            "wsgi_channels.protocol.close_codes"} <= _imports(PACKAGE / "sidecar" / "connection.py")
