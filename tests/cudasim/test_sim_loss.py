"""The Numba CUDA cross-entropy kernels (kernels/cuda/loss.py) against the NumPy reference, under the CUDA
simulator (see test_sim_cuda_kernels.py for how this file runs). Blocks are patched small so that rows
and elements wrap around the grid."""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("runs only with NUMBA_ENABLE_CUDASIM=1 (tests/test_kernels_cudasim.py starts it)",
                allow_module_level=True)

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from loss_cases import cases, check_against_reference  # noqa: E402
from tapegrad.kernels.cuda import _device  # noqa: E402
from tapegrad.kernels.cuda import loss as kl  # noqa: E402

if not _device.is_simulator():
    pytest.skip("numba was imported before NUMBA_ENABLE_CUDASIM took effect", allow_module_level=True)

CASES = list(cases(sizes=((20, 7, 10), (9, 40, None), (5, 2, 0))))


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(kl, "BLOCK", 32)
    monkeypatch.setattr(kl, "MAX_BLOCKS", 2)


@pytest.mark.parametrize("name,z,t,rows", CASES, ids=[c[0] for c in CASES])
def test_cross_entropy_kernels_match_the_reference(name, z, t, rows):
    check_against_reference(kl.cross_entropy_fwd, kl.cross_entropy_bwd, z, t, rows)
