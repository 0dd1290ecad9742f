"""docs/architecture.md stays true to the code, so the map cannot rot silently when code moves.

Every module path and every dotted name (``sidecar.connection.ClientConnection.run``) written as
code in the page exists (imported, then looked up attribute by attribute); every module of the
package has its line there; the table of a sidecar connection's states is
:data:`wsgi_channels.sidecar.state.TRANSITIONS`; and the page's table of import rules names
exactly the rules the tests enforce: those of ``tests/test_import_rules.py`` and the ones below
(:data:`ARCH_RULES`, checked here with the same walker), with what each forbids. No module of
the package is over :data:`MAX_MODULE_LINES` lines, as the page says.
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from test_import_rules import _ABOVE_LAYERS, RULES, Rule, _graph, _under, violations
from wsgi_channels.sidecar.state import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wsgi_channels"
ADAPTERS = ROOT / "adapters"  # installed as wsgi_channels.adapters
PAGE = ROOT / "docs" / "architecture.md"


def _ours(*names: str) -> tuple[str, ...]:
    return tuple(f"wsgi_channels.{name}" for name in names)


# Old module names count as the part they moved to.
_CONSUMERS = _ours("consumers", "consumer", "generic", "wsgi", "routing", "sessions", "message")
_WORKER = _ours("worker", "reply_sender", "worker_metrics", "timelimit")
_SIDECAR = _ours("sidecar")
_CLI = _ours("cli", "runserver", "tools")
_OUTSIDE = _ours("adapters", "testing")
#: Every top-level module and package of ours but the command line (and ``__main__``, its entry).
_BELOW_CLI = tuple(sorted(
    f"wsgi_channels.{p.stem}" for p in PACKAGE.iterdir()
    if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.stem not in ("__init__", "__main__", "cli")))

#: The rules docs/architecture.md states beyond tests/test_import_rules.py's (all held when added).
ARCH_RULES = (
    Rule("the rest of the core imports no part above it", _ours("settings", "presence", "tokens", "exitcodes"),
         forbidden=_ABOVE_LAYERS),
    Rule("the consumers never import a server", _ours("consumers"), forbidden=_WORKER + _SIDECAR + _CLI + _OUTSIDE),
    Rule("the worker never imports the sidecar", _ours("worker"), forbidden=_SIDECAR + _CLI + _OUTSIDE),
    Rule("the sidecar never imports the consumers or the worker", _ours("sidecar"),
         forbidden=_CONSUMERS + _WORKER + _CLI + _OUTSIDE),
    Rule("no part below the command line imports it", _BELOW_CLI, forbidden=_CLI),
    Rule("nothing in the package imports the adapters", ("wsgi_channels",), forbidden=_ours("adapters")),
    Rule("only the adapters import a web framework", ("wsgi_channels",), forbidden=("flask", "django", "pyramid")),
)


@pytest.mark.parametrize("rule", ARCH_RULES, ids=[r.name for r in ARCH_RULES])
def test_architecture_import_rule(rule):
    graph = _graph()
    assert any(_under(m, rule.governs) for m in graph), f"no module is governed by {rule.governs}"
    assert not violations(rule, graph), "\n".join(violations(rule, graph))


# -- reading the page -----------------------------------------------------------------------------

#: Names of channels (CONTRACT.md), written as code in the page; the only dotted spans that are not Python.
CHANNEL_NAMES = frozenset({"websocket.connect", "websocket.receive", "websocket.disconnect", "http.request",
                           "http.response", "http.disconnect"})
_PATH = re.compile(r"(?:[\w.-]+/)*[\w.-]+\.(?:py|js|md)|(?:[\w.-]+/)+")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def _prose(text: str) -> str:
    """The page without its fenced blocks (the pictures)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def code_spans(text: str) -> list[str]:
    return re.findall(r"(?<!`)`([^`\n]+)`(?!`)", _prose(text))


def paths(text: str) -> list[str]:
    return [s for s in code_spans(text) if _PATH.fullmatch(s)]


def dotted_names(text: str) -> list[str]:
    return [s for s in code_spans(text) if not _PATH.fullmatch(s) and _DOTTED.fullmatch(s)
            and s not in CHANNEL_NAMES]


def path_exists(path: str) -> bool:
    """A path of the page: relative to ``wsgi_channels/`` or to the repository (``adapters/``, ``tests/``)."""
    return any((base / path).exists() for base in (PACKAGE, ROOT))


def resolve(name: str) -> object:
    """The object ``name`` names: the longest importable ``wsgi_channels.<prefix>``, then attributes.

    A module that exists but fails to import raises its error, never passes as "not a module".
    """
    parts = name.removeprefix("wsgi_channels.").split(".")
    for i in range(len(parts), -1, -1):
        module_name = ".".join(["wsgi_channels", *parts[:i]])
        try:
            obj: object = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                continue  # no such module: a shorter prefix, then attributes
            raise
        for attribute in parts[i:]:
            obj = getattr(obj, attribute)  # AttributeError names what is missing
        return obj
    raise AssertionError("unreachable: the package itself always imports")


def table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header line is ``header``."""
    lines = text.splitlines()
    assert header in lines, f"no table headed {header!r}"
    start = lines.index(header) + 2  # the header, then the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


STATE_HEADER = "| from | to | when |"
RULES_HEADER = "| rule (test id) | what it governs | may not import |"


def state_pairs(text: str) -> set[tuple[str, str]]:
    return {(row[0].strip("`"), row[1].strip("`")) for row in table(text, STATE_HEADER)}


def _path_of(prefix: str) -> str | None:
    """How the page writes one of our module prefixes (``consumers/``, ``testing.py``), None for a name
    that is no module of the package (the adapters live outside it) or only an old name of one."""
    rel = prefix.removeprefix("wsgi_channels.").replace(".", "/")
    if (PACKAGE / rel).is_dir():
        return f"`{rel}/`"
    module = PACKAGE / f"{rel}.py"
    if module.is_file() and not module.read_text().startswith('"""Moved to '):
        return f"`{rel}.py`"
    return None


def rule_row_problems(text: str, rules: tuple[Rule, ...]) -> list[str]:
    rows = {row[0]: row for row in table(text, RULES_HEADER)}
    unenforced = sorted(set(rows) - {r.name for r in rules})
    problems = [f"the page's rule {name!r} is enforced by no test" for name in unenforced]
    for rule in rules:
        row = rows.get(rule.name)
        if row is None:
            problems.append(f"the rule {rule.name!r} is not in the page's table")
            continue
        for prefix in (*rule.forbidden, *(rule.allowed or ())):
            shown = _path_of(prefix) if prefix.startswith("wsgi_channels.") else prefix
            if shown is not None and shown not in row[2]:
                problems.append(f"the page's row {rule.name!r} does not name {shown}")
    return problems


# -- the page against the code -----------------------------------------------------------------

TEXT = PAGE.read_text()


def test_the_page_names_code():
    assert len(dotted_names(TEXT)) >= 40 and len(paths(TEXT)) >= 60


def test_every_path_exists():
    missing = sorted(p for p in set(paths(TEXT)) if not path_exists(p))
    assert not missing, f"paths in docs/architecture.md in neither wsgi_channels/ nor the repository: {missing}"


def test_every_dotted_name_exists():
    missing = []
    for name in sorted(set(dotted_names(TEXT))):
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            missing.append(f"`{name}`: {type(e).__name__}: {e}")
    assert not missing, "names in docs/architecture.md that the code does not have:\n" + "\n".join(missing)


def test_every_module_has_its_line():
    """Each module of the package (and each package folder, and each adapter) is named by its path."""
    named = set(paths(TEXT))
    wanted = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    wanted |= {p.parent.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.rglob("*/__init__.py")}
    wanted |= {"__init__.py"}
    wanted |= {f"adapters/{p.name}" + ("/" if p.is_dir() else "") for p in ADAPTERS.iterdir()
               if p.name not in ("__init__.py", "__pycache__")}
    assert not sorted(wanted - named), f"modules without a line in docs/architecture.md: {sorted(wanted - named)}"


#: The most lines a module of the package may have ("one module, one job"; the page states it).
MAX_MODULE_LINES = 600


def long_modules(package: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    """``"path: N lines"`` for every module under ``package`` over ``limit`` lines, longest first."""
    counts = {p.relative_to(package).as_posix(): len(p.read_text().splitlines()) for p in package.rglob("*.py")}
    return [f"{path}: {n} lines" for path, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            if n > limit]


def test_no_module_is_over_the_line_limit():
    assert f"over {MAX_MODULE_LINES} lines" in TEXT, "docs/architecture.md no longer states the module size limit"
    too_long = long_modules(PACKAGE)
    assert not too_long, (f"modules of wsgi_channels/ over {MAX_MODULE_LINES} lines (split each along a seam, "
                          "see docs/architecture.md):\n" + "\n".join(too_long))


def test_the_line_limit_names_every_long_module(tmp_path):
    """The checker itself: every module over the limit is named (nested ones too), none at it."""
    (tmp_path / "sub").mkdir()
    for name, lines in (("ok.py", 600), ("long.py", 601), ("sub/longer.py", 750), ("notes.txt", 900)):
        (tmp_path / name).write_text("x = 1\n" * lines)
    assert long_modules(tmp_path) == ["sub/longer.py: 750 lines", "long.py: 601 lines"]


def test_state_table_is_the_transition_table():
    code = {(old.name, new.name) for old, targets in TRANSITIONS.items() for new in targets}
    page = state_pairs(TEXT)
    assert page == code, f"only in the page: {sorted(page - code)}; only in sidecar/state.py: {sorted(code - page)}"


def test_rule_table_is_the_enforced_rules():
    problems = rule_row_problems(TEXT, RULES + ARCH_RULES)
    assert not problems, "\n".join(problems)


def test_the_checks_see_rot():
    """The checkers themselves: a moved function, a deleted module, a lost transition, an unenforced or
    misdescribed rule are each caught."""
    with pytest.raises(AttributeError):
        resolve("sidecar.connection.ClientConnection.no_such_method")
    with pytest.raises(AssertionError, match="no table headed"):
        state_pairs("# a page without the table\n")
    with pytest.raises(AttributeError):
        resolve("sidecar.no_such_module.Thing")
    assert resolve("Group.send") is resolve("channel.Group.send")
    assert not path_exists("sidecar/no_such_module.py") and path_exists("layers/redis/")
    assert dotted_names("see `a.b` and `websocket.receive` and `x.py`\n```\n`c.d`\n```\n") == ["a.b"]
    lost = TEXT.replace("| `CLOSING` | `DONE` |", "| `CLOSING` | `HEAD` |")
    assert ("CLOSING", "DONE") not in state_pairs(lost) and ("CLOSING", "HEAD") in state_pairs(lost)
    extra = Rule("a rule the page does not state", ("wsgi_channels.protocol",), forbidden=("gevent",))
    assert rule_row_problems(TEXT, RULES + ARCH_RULES + (extra,)) == [
        "the rule 'a rule the page does not state' is not in the page's table"]
    assert rule_row_problems(TEXT, RULES) == [f"the page's rule {r.name!r} is enforced by no test"
                                              for r in sorted(ARCH_RULES, key=lambda r: r.name)]
    blurred = TEXT.replace("| flask, django, pyramid |", "| flask, django |")
    assert rule_row_problems(blurred, RULES + ARCH_RULES) == [
        "the page's row 'only the adapters import a web framework' does not name pyramid"]
