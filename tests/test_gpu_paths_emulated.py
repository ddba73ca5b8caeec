"""The GPU tests' host side on any machine: tests/test_gpu_engine.py and tests/test_kernels_gpu.py run in a
child pytest against the numpy-backed cupy in tests/emulated_gpu (see its plugin for what it patches).

On the GPU the engine runs the same op code with ``xp = cupy``, and cupy differs from numpy where host
code goes wrong: it refuses numpy operands and implicit conversion to numpy, gives 0-d arrays where numpy
gives scalars, and lacks numpy-only functions (``numpy.lib.array_utils.byte_bounds`` raised on every
optimiser step of a GPU model until this test existed). The GPU kernels themselves run as the CPU kernels
here; the simulator tests and a real GPU check those.
"""
from __future__ import annotations

import os
from pathlib import Path

from child_pytest import run_pytest

HERE = Path(__file__).resolve().parent
GPU_TESTS = ["tests/test_gpu_engine.py", "tests/test_kernels_gpu.py"]


def test_gpu_tests_pass_on_the_emulated_cupy():
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # numba-cuda's own kernels cannot take the emulated arrays
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "emulated_gpu"), env.get("PYTHONPATH")]))
    code, _, counts = run_pytest(["-m", "gpu", "-p", "emulated_gpu_plugin", *GPU_TESTS], env)
    assert code == 0, f"GPU tests failed on the emulated cupy (exit {code}); output above"
    # most of the engine's and layers' GPU tests run here; the rest launch GPU kernels or the driver themselves
    assert counts.get("passed", 0) >= 250, f"only {counts.get('passed', 0)} GPU tests ran on the emulated cupy"
