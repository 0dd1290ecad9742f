"""The documentation agrees with itself and with the code.

README's two commands are the ones the demo and CI really run; every ``wsgi-channels``
command line written in README.md, docs/deployment.md and examples/*/README.md uses flags that
its subcommand has; every ``WSGI_CHANNELS_*`` variable named there is one the code reads.
"""
from __future__ import annotations

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
                  "WSGI_CHANNELS_ALLOWED_ORIGINS", "WSGI_CHANNELS_SIDECAR_URL"}
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
