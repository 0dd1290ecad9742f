"""Runs the browser client's unit tests (``tests/js/*.test.mjs``) with ``node --test``.

A missing ``node`` fails this test: ``.ci/run`` installs Debian's ``nodejs``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLIENT = HERE.parent / "wsgi_channels" / "static" / "channels.js"


def test_client_js_unit_tests_pass_under_node():
    node = shutil.which("node") or shutil.which("nodejs")
    assert node, "node is not installed: run `bash .ci/run` or `apt-get install nodejs` (needed for the JS client tests)"
    tests = sorted(str(p) for p in (HERE / "js").glob("*.test.mjs"))
    assert tests, "no JS tests found under tests/js"
    proc = subprocess.run([node, "--test", *tests], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "# fail 0" in proc.stdout and "# pass " in proc.stdout, proc.stdout[-3000:]
    passed = int(proc.stdout.rsplit("# pass ", 1)[1].split()[0])
    assert passed >= 10, f"only {passed} JS tests ran"


def test_client_ships_as_package_data():
    import wsgi_channels

    shipped = Path(wsgi_channels.__file__).parent / "static" / "channels.js"
    assert shipped.is_file()
    text = CLIENT.read_text()
    assert "export function connect" in text and "export class ChannelSocket" in text
