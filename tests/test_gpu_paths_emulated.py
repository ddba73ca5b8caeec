"""The GPU tests' host side on any machine: tests/test_gpu_engine.py and tests/test_kernels_gpu.py run in a
child pytest against the numpy-backed cupy in tests/emulated_gpu (see its plugin for what it patches).

On the GPU the engine runs the same op code with ``xp = cupy``, and cupy differs from numpy where host
code goes wrong: it refuses numpy operands and implicit conversion to numpy, gives 0-d arrays where numpy
gives scalars, and lacks numpy-only functions (``numpy.lib.array_utils.byte_bounds`` raised on every
optimiser step of a GPU model until this test existed). The GPU kernels themselves run as the CPU kernels
here; the simulator tests and a real GPU check those.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

from child_pytest import REPO_ROOT, run_pytest

HERE = Path(__file__).resolve().parent
GPU_TESTS = ["tests/test_gpu_engine.py", "tests/test_kernels_gpu.py", "tests/test_cupy_rules.py"]


def _emulated_env() -> dict:
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # numba-cuda's own kernels cannot take the emulated arrays
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "emulated_gpu"), env.get("PYTHONPATH")]))
    return env


def test_gpu_tests_pass_on_the_emulated_cupy(tmp_path):
    report = tmp_path / "emulated.xml"
    code, _, counts = run_pytest(["-m", "gpu", "-p", "emulated_gpu_plugin", f"--junitxml={report}", *GPU_TESTS],
                                 _emulated_env())
    assert code == 0, f"GPU tests failed on the emulated cupy (exit {code}); output above"
    passed = collections.Counter(
        case.get("classname", "").rsplit(".", 1)[-1]
        for case in ElementTree.parse(report).iter("testcase") if not len(case))  # no skipped/failure child
    # the engine's, layers' and optimisers' GPU tests (the rest launch GPU kernels or the driver themselves,
    # or take numba-cuda, which the emulated arrays cannot reach); and the kernel wrappers' host side
    assert passed["test_gpu_engine"] >= 55, f"only {passed['test_gpu_engine']} engine GPU tests ran: {counts}"
    assert passed["test_kernels_gpu"] >= 200, f"only {passed['test_kernels_gpu']} kernel GPU tests ran: {counts}"
    assert passed["test_cupy_rules"] >= 5, f"the emulator's cupy rules did not all run: {counts}"


def test_the_gpu_benchmark_script_runs_its_recurrent_and_gcn_groups_on_the_emulated_cupy(tmp_path):
    """benchmarks/gpu_check.sh runs this script on a lent GPU machine with minutes to spare; a crash in its
    host code shows here first. (Its launch and SpMM groups need cuSPARSE and compiled kernels.)"""
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run([sys.executable, str(HERE / "emulated_gpu" / "run_emulated.py"), "benchmarks/gpu_bench.py",
                           "--quick", "--only", "rnn,gcn", "--json", str(out)],
                          cwd=REPO_ROOT, env=_emulated_env(), capture_output=True, text=True, timeout=600)
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    cases = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    recurrent = [name for name in cases if name.startswith(("lstm/", "rnn/"))]
    assert len(recurrent) == 4, log  # train and infer, LSTM and RNN, at the --quick size
    for name in recurrent:
        assert "error" not in cases[name] and cases[name]["rows"][cases[name]["ours"]]["median_s"] > 0, log
    gcn = cases["gcn/epoch/cora"]  # a fresh clone may have no ../shared/data beside it
    assert "rows" in gcn or "cora.npz not found" in gcn["error"], log
