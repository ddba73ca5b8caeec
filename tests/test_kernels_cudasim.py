"""The Numba CUDA kernels under the CUDA simulator, on any machine (no GPU needed).

NUMBA_ENABLE_CUDASIM has to be set before numba.cuda is first imported, and this pytest process has
already imported numba without it, so the simulator tests (tests/cudasim/) run in a child pytest with
the variable set. This test passes when the child passes and actually ran tests.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from child_pytest import run_pytest

INNER = Path(__file__).resolve().parent / "cudasim"


def test_numba_cuda_kernels_match_reference_under_the_simulator():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator is already on in this process, so tests/cudasim ran here directly")
    if importlib.util.find_spec("numba_cuda") is None and importlib.util.find_spec("numba.cuda") is None:
        pytest.skip("numba-cuda is not installed (pip install numba-cuda)")
    code, output, counts = run_pytest([str(INNER)], dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
    if code == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0:
        pytest.skip(f"the simulator tests skipped themselves: {output.strip().splitlines()[-1]}")
    assert code == 0, f"simulator tests failed (exit {code}); output above"
    assert counts.get("passed", 0) > 0, "the simulator run passed no tests"
