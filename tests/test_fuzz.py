"""The atheris harness of the sidecar's input path, run bounded (a few thousand inputs, at most ~20 s).

The harness (``tests/fuzz/fuzz_sidecar_input.py``) runs in a subprocess, because
libFuzzer ends the process when it is done. The checked-in seed corpora are copied
first, so new inputs and crash files land in the test's temporary directory.
``benchmarks/reliability.py`` runs the same harness for longer.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent / "fuzz"
HARNESS = FUZZ / "fuzz_sidecar_input.py"


def run_fuzzer(work: Path, runs: int, seconds: int, seed: int = 1) -> dict:
    """Run the harness; ``{"runs": inputs tried, "crashed": bool, "output": tail}``."""
    import atheris  # noqa: F401  - a missing atheris must fail here, loudly

    corpora = []
    for name in ("corpus_http", "corpus_ws"):
        target = work / name
        shutil.copytree(FUZZ / name, target, dirs_exist_ok=True)
        corpora.append(str(target))
    proc = subprocess.run(
        [sys.executable, str(HARNESS), f"-runs={runs}", f"-max_total_time={seconds}", f"-seed={seed}",
         f"-artifact_prefix={work}/", "-print_final_stats=1", *corpora],
        capture_output=True, text=True, timeout=seconds + 120, cwd=str(work))
    output = proc.stdout + proc.stderr
    crash = output.find("Uncaught Python exception")
    done = re.search(r"Done (\d+) runs", output)
    stat = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    executed = int(done.group(1)) if done else int(stat.group(1)) if stat else 0
    return {"runs": executed, "crashed": proc.returncode != 0 or crash >= 0,
            "returncode": proc.returncode, "output": output[crash:crash + 4000] if crash >= 0 else output[-4000:],
            "artifacts": sorted(p.name for p in work.glob("crash-*"))}


def test_sidecar_input_path_survives_bounded_fuzzing(tmp_path):
    result = run_fuzzer(tmp_path, runs=20000, seconds=20)
    assert not result["crashed"], result["output"]
    assert result["runs"] >= 1000, result["output"]
