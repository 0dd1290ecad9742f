"""The core and the layers type-check: ``mypy --strict`` on ``layers/base.py`` (the contract a backend
author reads), ``mypy`` at its default strictness on the rest of the core and every layer."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CACHE = Path(tempfile.gettempdir()) / "wsgi_channels-mypy-cache-layers"

pytestmark = pytest.mark.timeout(300)


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=280)


def test_the_layer_contract_is_strictly_typed():
    proc = mypy("--strict", "--follow-imports=silent", "wsgi_channels/layers/base.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_core_and_the_layers_type_check():
    proc = mypy("wsgi_channels/layers/", "wsgi_channels/serialization.py", "wsgi_channels/channel.py",
                "wsgi_channels/exceptions.py", "wsgi_channels/consumers/sessions.py", "wsgi_channels/consumers/message.py",
                "wsgi_channels/testing.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
