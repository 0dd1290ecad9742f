"""The documentation agrees with itself and with the code.

README's two commands are the ones the demo and CI really run; every ``wsgi-channels``
command line written in README.md, docs/deployment.md and examples/*/README.md uses flags that
its subcommand has; every ``WSGI_CHANNELS_*`` variable named there is one the code reads.
The Sphinx site in ``docs/`` builds with warnings as errors, every page in a toctree, its tutorials'
code included from tested files and its charts drawn from the committed benchmark results.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wsgi_channels.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "deployment.md", *sorted((ROOT / "examples").glob("**/README.md"))]


def sh_blocks(path: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)


def readme_commands() -> list[str]:
    return [block.strip() for block in sh_blocks(ROOT / "README.md")]


def test_readme_first_command_is_the_demo_everywhere():
    first = readme_commands()[0]
    assert first == ("python3 -m venv .venv && .venv/bin/pip install -e '.[examples]' && "
                     ".venv/bin/python examples/demo.py")
    assert first in (ROOT / "examples" / "README.md").read_text()
    assert first in (ROOT / "examples" / "demo.py").read_text()


def test_readme_second_command_is_what_ci_runs():
    second = readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    ci_command = ci_lines[-1].replace('"$PYTHON"', "python3")
    assert second == ci_command
    assert readme_commands()[-1] == second  # "Run the whole test suite" at the end says the same


def subparsers() -> dict:
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def command_lines() -> list[tuple[str, str, str]]:
    """``(doc, subcommand, rest of the line)`` for every ``wsgi-channels SUB ...`` written in the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"wsgi-channels (worker|sidecar|runserver|send|group-send|stats)\b([^`\n]*)", text):
            found.append((doc.relative_to(ROOT).as_posix(), match.group(1), match.group(2)))
    return found


def test_docs_name_many_command_lines():
    assert len(command_lines()) >= 20


@pytest.mark.parametrize("doc, command, rest", command_lines())
def test_documented_flags_exist(doc, command, rest):
    known = {s for action in subparsers()[command]._actions for s in action.option_strings}
    rest = rest.split("#")[0]
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
        assert flag in known, f"{doc}: `wsgi-channels {command} ... {flag}`: no such flag"


def test_documented_environment_variables_are_read():
    flags = {s for p in subparsers().values() for a in p._actions for s in a.option_strings}
    from_flags = {"WSGI_CHANNELS_" + f[2:].upper().replace("-", "_") for f in flags}
    # Flask config keys (README "Flask") are spelled like the variables on purpose.
    flask_keys = {"WSGI_CHANNELS_LAYER", "WSGI_CHANNELS_ROUTING", "WSGI_CHANNELS_OPTIONS",
                  "WSGI_CHANNELS_ALLOWED_ORIGINS", "WSGI_CHANNELS_SIDECAR_URL", "WSGI_CHANNELS_PRESENCE_AUTHORIZE"}
    source = (ROOT / "adapters" / "flask.py").read_text()
    for key in flask_keys:
        assert key in source, key
    for doc in DOCS:
        for name in set(re.findall(r"WSGI_CHANNELS_[A-Z_]*[A-Z]", doc.read_text())):
            if name in ("WSGI_CHANNELS_<FLAG", "WSGI_CHANNELS_"):
                continue
            assert name in from_flags | flask_keys, f"{doc.name}: {name} is read by nothing"


def test_readme_sidecar_flag_table_matches_the_parser():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| flag (env `WSGI_CHANNELS_<FLAG>`)"):]
    table = table[:table.index("\n\n")]
    documented = set(re.findall(r"`(--[a-z-]+)`", table))
    known = {s for a in subparsers()["sidecar"]._actions for s in a.option_strings} - {"-h", "--help"}
    assert documented == known, (sorted(known - documented), sorted(documented - known))


# -- the Sphinx site (docs/) -------------------------------------------------------------------

SITE = ROOT / "docs"
CHARTS = ("layer_throughput", "push_fanout", "sidecar_broadcast", "sidecar_http", "history_presence")


def site_pages() -> dict[str, Path]:
    """Every source page of the site, by document name (``tutorials/flask``)."""
    pages = {}
    for path in sorted(SITE.rglob("*")):
        rel = path.relative_to(SITE)
        if path.suffix in (".md", ".rst") and not any(part.startswith(("_", ".")) for part in rel.parts):
            pages[rel.with_suffix("").as_posix()] = path
    return pages


def toctree_entries(path: Path) -> list[str]:
    """Document names listed in the page's toctrees (MyST ```{toctree}``` or reST ``.. toctree::``)."""
    text = path.read_text()
    if path.suffix == ".md":
        bodies = re.findall(r"```\{toctree\}\n(.*?)```", text, re.S)
    else:
        bodies = re.findall(r"^\.\. toctree::\n((?:[ \t]+.*\n|\n)*)", text, re.M)
    entries = []
    for body in bodies:
        for line in body.splitlines():
            line = line.strip()
            if line and not line.startswith(":"):
                entries.append((path.parent.relative_to(SITE) / line).as_posix().lstrip("./"))
    return entries


def literalincludes() -> list[tuple[str, Path, dict[str, str]]]:
    """``(page, included file, options)`` for every literalinclude of the site."""
    found = []
    for name, page in site_pages().items():
        text = page.read_text()
        blocks = re.findall(r"```\{literalinclude\} (\S+)\n((?::[\w-]+:.*\n)*)", text)
        blocks += re.findall(r"^\.\. literalinclude:: (\S+)\n((?:[ \t]+:[\w-]+:.*\n)*)", text, re.M)
        for target, opts in blocks:
            options = dict(re.findall(r":([\w-]+):[ \t]*(.*)", opts))
            found.append((name, (page.parent / target).resolve(), options))
    return found


def test_every_page_is_in_a_toctree():
    pages = site_pages()
    reachable, todo = {"index"}, ["index"]
    while todo:
        for entry in toctree_entries(pages[todo.pop()]):
            assert entry in pages, f"a toctree names {entry!r}, which is not a page of docs/"
            if entry not in reachable:
                reachable.add(entry)
                todo.append(entry)
    assert set(pages) - reachable == set(), "pages in no toctree (unreachable from the index)"
    for needed in ("tutorials/flask", "tutorials/pyramid", "tutorials/django", "deployment", "reliability",
                   "protocol", "performance", "architecture", "api/index"):
        assert needed in reachable, needed


def test_tutorial_code_is_included_from_tested_files():
    """Each included file exists, and is an example with a smoke test, a test file or a README whose
    commands this file checks; a ``:pyobject:`` names a top-level function or class of it."""
    import ast

    smoke_tested = (ROOT / "tests" / "test_examples.py").read_text()
    includes = literalincludes()
    for page in ("tutorials/flask", "tutorials/pyramid", "tutorials/django"):
        assert any(p == page and f.suffix == ".py" for p, f, _ in includes), f"{page} includes no tested code"
    for page, target, options in includes:
        assert target.is_file(), f"docs/{page}: literalinclude of a missing file {target}"
        rel = target.relative_to(ROOT)
        if rel.parts[0] == "examples":
            assert rel.parts[1] in smoke_tested, f"docs/{page}: {rel} belongs to no example tests/test_examples.py runs"
        else:
            assert rel.parts[0] == "tests" or target in DOCS or rel.as_posix() == "README.md", \
                f"docs/{page}: {rel} is neither an example, a test nor a checked README"
        if "pyobject" in options:
            tree = ast.parse(target.read_text())
            names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
            assert options["pyobject"] in names, f"docs/{page}: no {options['pyobject']} in {rel}"
        for key in ("start-at", "start-after", "end-at", "end-before"):
            if key in options:
                assert options[key] in target.read_text(), f"docs/{page}: {key} {options[key]!r} not in {rel}"


def test_benchmark_results_for_every_chart_are_committed():
    for name in CHARTS:
        doc = json.loads((SITE / "_data" / f"{name}.json").read_text())
        assert doc["benchmark"] == name and doc["results"]
        assert doc["date"] and doc["machine"]["cores"] and doc["machine"]["cpu"], "the page states machine and date"
        assert "--json" in doc["command"] and doc["command"].startswith(f"benchmarks/{name}.py")


def test_sphinx_build_with_warnings_as_errors(tmp_path):
    """The site builds with ``-W``: every page in a toctree, every include and reference found,
    every autodoc import working, and the charts drawn from docs/_data/."""
    import subprocess
    import sys

    missing = []
    for module in ("sphinx", "furo", "myst_parser", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    assert not missing, f"the docs build needs {missing}: pip install -e '.[docs]' (the test extra has them)"
    out = tmp_path / "html"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(SITE), str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"sphinx-build -W failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    index = (out / "index.html").read_text()
    assert "furo" in index, "the theme is furo"
    for name in CHARTS:
        png = out / "_images" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", f"chart {name} not drawn"
    performance = (out / "performance.html").read_text()
    assert performance.count("<em>Run:</em>") == len(CHARTS), "each chart states its machine and date"
    flask = (out / "tutorials" / "flask.html").read_text()
    assert "channels.group_send" in flask and "routing_for" in flask, "the Flask tutorial shows the example's code"
    api = (out / "api" / "push.html").read_text()
    assert 'id="wsgi_channels.Group"' in api, "the API reference documents wsgi_channels.Group"


def test_readme_points_at_the_docs_site():
    readme = (ROOT / "README.md").read_text()
    assert "[docs/](docs/)" in readme and "sphinx-build docs docs/_build/html" in readme
    assert "'.[docs]'" in readme


def test_charted_benchmarks_write_json(tmp_path):
    """Each charted script takes ``--json PATH`` and writes through ``benchmarks/_results.py``,
    whose files hold the machine and date and no NaN (JSON has none)."""
    import sys

    for name in CHARTS:
        source = (ROOT / "benchmarks" / f"{name}.py").read_text()
        assert '"--json"' in source and f'_results.write(args.json, "{name}"' in source, name
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _results
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    path = tmp_path / "out" / "x.json"
    _results.write(str(path), "x", {"p50": float("nan"), "rows": [{"rate": 1234.56789123}]}, peers=("redis",))
    doc = json.loads(path.read_text())
    assert doc["results"] == {"p50": None, "rows": [{"rate": 1234.57}]}
    assert doc["benchmark"] == "x" and doc["date"].endswith("Z") and doc["machine"]["cores"] >= 1
    assert "redis-py" in doc["versions"] and doc["versions"]["wsgi_channels"]
