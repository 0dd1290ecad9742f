"""The ASGI v1 channel-layer conformance suite of Django Channels 1.x, run unchanged on every backend.

``asgiref.conformance.ConformanceTestCase`` (asgiref 1.1.2, the last 1.x release) is
what asgi_redis, asgi_ipc and asgi_rabbitmq ran to call themselves ASGI v1 layers.
asgiref 1.x cannot be installed beside the asgiref 3 that Django needs, so the wheel
is fetched once into ``.ci/cache/`` (``pip download``) and its ``conformance.py`` is
loaded from it under another module name. Every one of its tests must pass; none
may be skipped. Layers are built the way asgi_redis' own tests built theirs:
``expiry=1, group_expiry=2, capacity=5``.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import unittest
import zipfile
from pathlib import Path


from wsgi_channels.layers import from_url

CACHE = Path(__file__).resolve().parent.parent / ".ci" / "cache" / "asgiref1"
WHEEL = "asgiref-1.1.2-py2.py3-none-any.whl"


def conformance_module():
    wheel = CACHE / WHEEL
    if not wheel.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "asgiref==1.1.2",
                               "-d", str(CACHE)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and wheel.exists(), f"could not fetch asgiref 1.1.2: {done.stderr[-2000:]}"
    source = CACHE / "conformance.py"
    if not source.exists():
        with zipfile.ZipFile(wheel) as z:
            source.write_bytes(z.read("asgiref/conformance.py"))
    spec = importlib.util.spec_from_file_location("asgiref1_conformance", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_asgiref_1_conformance_suite(layer_url):
    layer = from_url(layer_url, expiry=1, group_expiry=2, capacity=5)
    base = conformance_module().ConformanceTestCase

    class Conformance(base):  # type: ignore[misc, valid-type]
        channel_layer = layer
        expiry_delay = 1.1
        capacity_limit = 5

    suite = unittest.TestLoader().loadTestsFromTestCase(Conformance)
    result = unittest.TestResult()
    try:
        suite.run(result)
    finally:
        layer.close()
    problems = [f"{test.id()}:\n{text}" for test, text in result.failures + result.errors]
    assert not problems, "\n\n".join(problems)
    assert not result.skipped, result.skipped
    assert result.testsRun == 18, result.testsRun
