"""bench/gpu_smoke.sh, the check for a real GPU: its CPU mode runs, and a failed part fails the script.

The full CPU mode takes minutes (it runs the engine tests, kill-and-resume, compile); here a
quick subset of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def smoke(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_smoke.sh"), *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_the_smoke_script_s_cpu_mode_passes_a_quick_subset():
    done = smoke("--device", "cpu", "--synthetic", "--only", "versions,bf16-nll")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "device cpu:" in done.stdout and "torch " in done.stdout
    summary = done.stdout.split("== summary")[1]
    assert "PASS versions" in summary and "PASS bf16-nll" in summary


def test_a_failed_part_fails_the_smoke_script_and_a_wrong_part_is_a_usage_error():
    done = smoke("--device", "cpu", "--only", "versions", python="false")  # an interpreter that always fails
    assert done.returncode == 1 and "FAIL versions" in done.stdout.split("== summary")[1]
    done = smoke("--only", "versions,nonsense")
    assert done.returncode == 2 and "no part 'nonsense'" in done.stderr
