"""The Numba CUDA kernels under the CUDA simulator, on any machine (no GPU needed).

NUMBA_ENABLE_CUDASIM has to be set before numba.cuda is first imported, and this pytest process has
already imported numba without it, so the simulator tests (tests/cudasim/) run in a child pytest with
the variable set. This test passes when the child passes and actually ran tests.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
INNER = HERE / "cudasim"


def _summary_counts(output: str) -> dict[str, int]:
    """{'passed': n, 'failed': n, 'skipped': n, ...} from pytest's last summary line."""
    pattern = re.compile(r"\d+ (passed|failed|skipped|error)")
    lines = [line for line in output.strip().splitlines() if pattern.search(line)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def test_numba_cuda_kernels_match_reference_under_the_simulator():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator is already on in this process, so tests/cudasim ran here directly")
    if importlib.util.find_spec("numba_cuda") is None and importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install numba-cuda)")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", str(INNER)],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=900,
    )
    output = proc.stdout + proc.stderr
    print(output[-20000:])
    counts = _summary_counts(proc.stdout)
    if proc.returncode == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0:
        pytest.skip(f"the simulator tests skipped themselves: {output.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"simulator tests failed (exit {proc.returncode}); output above"
    assert counts.get("passed", 0) > 0, "the simulator run passed no tests"
