"""One close-code policy (``wsgi_channels/protocol/close_codes.py``): the browser client, the docs
and the code that closes sockets all agree with it."""
from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

from wsgi_channels.protocol import close_codes
from wsgi_channels.protocol.close_codes import CLOSE_RULES, STOP_CODES, markdown_table, should_reconnect

ROOT = Path(__file__).parent.parent
CLIENT_JS = ROOT / "wsgi_channels" / "static" / "channels.js"


def test_the_browser_clients_stop_codes_are_the_tables():
    source = CLIENT_JS.read_text()
    m = re.search(r"export const STOP_CODES = Object\.freeze\(\[([0-9,\s]*)\]\);", source)
    assert m, "STOP_CODES not found in channels.js"
    assert sorted(int(c) for c in m.group(1).split(",") if c.strip()) == sorted(STOP_CODES)


def test_the_browser_client_reconnects_exactly_where_the_table_says():
    """channels.js's own shouldReconnect(), run by node for every code from 1000 to 4999."""
    node = shutil.which("node")
    assert node, "node is needed for the browser client's tests (apt-get install nodejs)"
    script = ("const m = await import(process.argv[1]); const out = [];"
              "for (let c = 1000; c < 5000; c++) if (!m.shouldReconnect(c)) out.push(c);"
              "console.log(JSON.stringify(out));")
    proc = subprocess.run([node, "--input-type=module", "-e", script, CLIENT_JS.as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stops = json.loads(proc.stdout)
    assert stops == [c for c in range(1000, 5000) if not should_reconnect(c)]


def test_docs_protocol_close_codes_section_is_the_table():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert markdown_table() in doc
    m = re.search(r"stops for good on ([0-9, and-]+?) and (\d+)-(\d+), and reconnects", doc.replace("\n", " "))
    assert m, "the sentence naming the browser client's stop codes is missing"
    assert [int(c) for c in re.findall(r"\d+", m.group(1))] == list(STOP_CODES)
    assert (int(m.group(2)), int(m.group(3))) == close_codes.APP_STOP_RANGE


def test_the_policy():
    by_code = {rule.code: rule for rule in CLOSE_RULES}
    assert len(by_code) == len(CLOSE_RULES)
    # Slow readers and a full receive channel: try again later (the client reconnects).
    assert by_code[1013].reconnect and "slow" in by_code[1013].when
    assert by_code[1006].reconnect and "slow" not in by_code[1006].when
    assert not should_reconnect(1008) and not should_reconnect(4003) and should_reconnect(4500)
    assert should_reconnect(3000) and should_reconnect(1012)


def _close_codes_used(path: Path) -> set[int]:
    """Close codes a module sends: ``CLOSE_*`` names it takes from the table, and literal codes
    in ``{"close": N}`` messages or ``close(N)`` calls (which the table must also know)."""
    tree = ast.parse(path.read_text())
    used: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith("close_codes"):
            used |= {getattr(close_codes, alias.name) for alias in node.names if alias.name.startswith("CLOSE_")}
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "close" and isinstance(value, ast.Constant) \
                        and type(value.value) is int:
                    used.add(value.value)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "close" and node.args \
                and isinstance(node.args[0], ast.Constant) and type(node.args[0].value) is int:
            used.add(node.args[0].value)
    return used


def test_every_close_code_the_code_sends_is_in_the_table():
    known = {rule.code for rule in CLOSE_RULES}
    used: dict[int, list[str]] = {}
    for path in sorted([*(ROOT / "wsgi_channels").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")]):
        for code in _close_codes_used(path):
            used.setdefault(code, []).append(str(path.relative_to(ROOT)))
    assert {1000, 1001, 1009, 1011, 1012, 1013} <= set(used), used  # the table is what the code uses
    unknown = {code: where for code, where in used.items() if code not in known and not 3000 <= code <= 4999}
    assert not unknown, f"close codes sent but not in protocol/close_codes.py: {unknown}"
