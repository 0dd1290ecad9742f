"""The consumers, the worker, the command line, the settings and the framework adapters type-check
at mypy's default strictness (the layers and the core: test_layer_typing.py).

``adapters/`` is installed as ``wsgi_channels.adapters`` (``package_dir`` in setup.py), which mypy
cannot see from the source tree: it checks a tree of symbolic links in which the adapters sit
inside the package, as they do once installed.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CACHE = Path(tempfile.gettempdir()) / "wsgi_channels-mypy-cache-package"

pytestmark = pytest.mark.timeout(300)

CHECKED = ["wsgi_channels/consumers", "wsgi_channels/worker", "wsgi_channels/cli", "wsgi_channels/adapters",
           "wsgi_channels/settings.py", "wsgi_channels/exitcodes.py", "wsgi_channels/config.py",
           "wsgi_channels/testing.py"]


def test_consumers_worker_cli_settings_and_adapters_type_check(tmp_path):
    package = tmp_path / "wsgi_channels"
    package.mkdir()
    for entry in (ROOT / "wsgi_channels").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "adapters").symlink_to(ROOT / "adapters")
    (tmp_path / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    # Only the modules above report: the sidecar's own typing is another test's.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(CACHE), "--follow-imports=silent",
                           *CHECKED], cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
