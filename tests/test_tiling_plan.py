"""The tiling of the CuPy tiled persistent recurrent loops (kernels/cupy/_tiling.py), checked on any
machine: every plan it returns is one the kernels can run (each of them would otherwise leave cells
unwritten or the grid barrier waiting on blocks that never become resident)."""
from __future__ import annotations

import numpy as np
import pytest

from tapegrad.kernels.cupy import _tiling

hypothesis = pytest.importorskip("hypothesis")  # the test extra has it
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies


def _check(ng, B, H, dtype, sms, p):
    U, R, nt, ksf, ksb, smem = p
    dtype = np.dtype(dtype)
    assert nt in (32, 64, 128, 256) and nt <= _tiling.THREADS
    # the forward's threads are (gate column, segment of H) pairs, the backward's (unit, segment of NG H)
    assert ng * U <= nt and nt % (ng * U) == 0 and nt % U == 0
    assert (nt // (ng * U)) * ksf == H and (nt // U) * ksb == ng * H
    assert max(ksf, ksb) <= _tiling.MAX_KS[dtype]
    assert H % U == 0
    blocks = (H // U) * -(-B // R)
    assert 1 <= blocks <= sms  # one wave: every block resident for the grid barrier
    assert R * U <= nt and R <= _tiling.MAX_ROWS  # a thread per (row, unit) of the tile applies the cell
    assert smem == max(R * H, R * ng * H) * dtype.itemsize + nt * R * dtype.itemsize
    assert smem <= _tiling.SMEM_MAX_BYTES


@settings(max_examples=400, deadline=None)
@given(ng=st.sampled_from([1, 4]), B=st.integers(1, 300), H=st.integers(1, 700),
       dtype=st.sampled_from([np.float32, np.float64]), sms=st.integers(1, 200))
def test_every_plan_is_one_the_kernels_can_run(ng, B, H, dtype, sms):
    p = _tiling.plan(ng, B, H, np.dtype(dtype), sms)
    if p is not None:
        _check(ng, B, H, dtype, sms, p)


@pytest.mark.parametrize("ng,B,H,want", [
    (4, 64, 256, (16, 8, 256)),   # the LSTM of the benchmarks: 16 x 8 = 128 blocks on 132 SMs
    (4, 8, 256, (16, 1, 256)),
    (1, 64, 256, (64, 2, 256)),   # the RNN's
    (4, 128, 256, None),          # shared memory would exceed 48 KB: GEMM + cell steps instead
    (4, 8, 1024, None),           # more unit tiles than SMs at KS <= 64
])
def test_the_benchmark_shapes_on_132_sms(ng, B, H, want):
    p = _tiling.plan(ng, B, H, np.dtype(np.float32), 132)
    assert (None if p is None else p[:3]) == want
