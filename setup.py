"""Packaging for wsgi_channels.

``adapters/`` lives at the top of the repository but is installed as
``wsgi_channels.adapters`` (``package_dir``), so it is never importable as a
top-level ``adapters`` package.
"""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*parts):
    with open(os.path.join(HERE, *parts), encoding="utf-8") as fh:
        return fh.read()


VERSION = re.search(r'^__version__ = "([^"]+)"', read("wsgi_channels", "__init__.py"), re.M).group(1)

core_packages = find_packages(include=["wsgi_channels", "wsgi_channels.*"])
adapter_packages = ["wsgi_channels.adapters"] + [
    "wsgi_channels.adapters." + p for p in find_packages(where="adapters")
]

#: What the documentation build needs (docs/conf.py): Sphinx, its theme, Markdown pages, the charts.
DOCS_REQUIRES = [
    "sphinx>=7.2",
    "furo>=2024.1",
    "myst-parser>=2.0",  # the pages stay Markdown (as GitHub shows them); MyST lets Sphinx read them
    "matplotlib>=3.8",  # docs/_charts.py draws the performance charts from docs/_data/*.json
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-xdist>=3.5",  # CI runs the suite on two processes (-n 2 --dist loadfile): most tests wait on servers
    "hypothesis>=6.100",
    "requests>=2.31",
    "websocket-client>=1.7",
    "cryptography>=42",
    "flask>=3.0",
    "flask-login>=0.6.3",  # tests/test_adapter_flask.py: the presence user from Flask-Login's current_user
    "pyramid>=2.0",
    "pyramid_tm>=2.5",
    "transaction>=4.0",
    "django>=4.2",
    "gunicorn>=22",
    "playwright>=1.40",  # drives Debian's /usr/bin/chromium; never downloads a browser
    "mypy>=1.10",  # tests/test_translation.py: the sans-IO module is strictly typed
    "types-gevent",  # tests/test_protocol_typing.py: mypy on the sidecar (gevent ships no annotations)
    "types-greenlet",
    "atheris>=2.3",  # tests/fuzz: coverage-guided fuzzing of the sidecar's input path
    "six>=1.16",  # asgiref 1.1.2's conformance suite (tests/test_asgiref_conformance.py) imports it
    *DOCS_REQUIRES,  # tests/test_docs.py builds the documentation with warnings as errors
]

#: What the examples need on top of the core (README's demo command installs it).
EXAMPLES_REQUIRES = [
    "flask>=3.0",
    "pyramid>=2.0",
    "pyramid_tm>=2.5",
    "transaction>=4.0",
    "django>=4.2",
    "gunicorn>=22",  # the examples' production shape (examples/*/README.md)
]

BENCH_REQUIRES = [
    "channels_redis>=4.2,<5",
    "channels>=4.0,<5",
    "python-socketio[client]>=5.11",
    "flask-socketio>=5.3",  # the peer in benchmarks/push_fanout.py
    "tabulate>=0.9",
]

setup(
    name="wsgi_channels",
    version=VERSION,
    description="Real-time messaging (channel layers, WebSockets, workers) for WSGI apps",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=core_packages + adapter_packages,
    package_dir={"wsgi_channels.adapters": "adapters"},
    package_data={"wsgi_channels": ["py.typed", "static/*"]},
    include_package_data=True,
    install_requires=[
        "msgpack>=1.0",
        "redis[hiredis]>=5.0",
        "gevent>=24.2",
        "wsproto>=1.2",
        "h11>=0.14",
        "werkzeug>=3.0",
        "webob>=1.8",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "crypto": ["cryptography>=42"],
        "test": TEST_REQUIRES,
        "examples": EXAMPLES_REQUIRES,
        "benchmark": BENCH_REQUIRES,
        "docs": DOCS_REQUIRES,
    },
    entry_points={"console_scripts": ["wsgi-channels = wsgi_channels.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Flask",
        "Framework :: Pyramid",
        "Framework :: Django",
        "Topic :: Internet :: WWW/HTTP :: WSGI",
    ],
)
