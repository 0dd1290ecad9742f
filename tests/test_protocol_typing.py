"""The sans-IO protocol and the sidecar type-check: ``mypy --strict`` on ``protocol/`` (STYLE.md 5),
``mypy`` at its default strictness on the whole ``sidecar/`` package (the connection's parts
declare every attribute they use; gevent's types come from types-gevent)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CACHE = Path(tempfile.gettempdir()) / "wsgi_channels-mypy-cache-protocol"

pytestmark = pytest.mark.timeout(300)


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)


def test_the_protocol_is_strictly_typed():
    proc = mypy("--strict", "--follow-imports=silent", "wsgi_channels/protocol/")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_sidecar_type_checks():
    proc = mypy("wsgi_channels/sidecar/", "wsgi_channels/protocol/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
