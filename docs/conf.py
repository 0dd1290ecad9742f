"""Sphinx configuration of the wsgi_channels documentation.

Build it (``pip install -e '.[docs]'`` first)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

``tests/test_docs.py`` runs the same build, so the suite (and ``.ci/run``) fails on any
warning. The pages are Markdown read by MyST (the same files GitHub shows), except the API
reference, which is reStructuredText for autodoc. The performance charts are drawn at each
build from the benchmark results committed in ``docs/_data/`` (``docs/_charts.py``), so the
build needs matplotlib but none of the benchmarks' peers.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))  # _charts; wsgi_channels itself is imported as installed (pip install -e)

project = "wsgi_channels"
author = "the wsgi_channels authors"
copyright = "the wsgi_channels authors"
release = re.search(r'^__version__ = "([^"]+)"', (ROOT / "wsgi_channels" / "__init__.py").read_text(), re.M).group(1)
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]

# Markdown: ``#anchor`` links to headings down to ###.
myst_heading_anchors = 3

# Autodoc documents the public names where users import them (wsgi_channels.Group, ...).
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
add_module_names = True

html_theme = "furo"
html_title = f"wsgi_channels {release}"
html_static_path: list[str] = []
pygments_style = "friendly"
pygments_dark_style = "monokai"


def _draw_charts(app) -> None:  # type: ignore[no-untyped-def]
    import _charts

    _charts.draw_all(DOCS / "_data", DOCS / "_generated")


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("builder-inited", _draw_charts)
    return {"parallel_read_safe": True}
