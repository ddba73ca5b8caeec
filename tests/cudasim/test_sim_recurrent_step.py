"""The fused recurrent-step kernels (recurrent GEMM + cell in one launch) of the Numba CUDA backend
against the NumPy references, under the CUDA simulator (see test_sim_cuda_kernels.py for how this file
runs). Two warps per block, so that grids have several blocks and a partial last one; batches of 3 and
11 rows, so that the 8-row passes of the LSTM kernels end part-way."""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("runs only with NUMBA_ENABLE_CUDASIM=1 (tests/test_kernels_cudasim.py starts it)",
                allow_module_level=True)

pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from tapegrad.kernels import reference as ref  # noqa: E402
from tapegrad.kernels.cuda import _device  # noqa: E402
from tapegrad.kernels.cuda import recurrent_step as rs  # noqa: E402

if not _device.is_simulator():
    pytest.skip("numba was imported before NUMBA_ENABLE_CUDASIM took effect", allow_module_level=True)


@pytest.fixture(autouse=True)
def two_warps(monkeypatch):
    monkeypatch.setattr(rs, "WARPS", 2)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(3, 5), (11, 3)])
def test_lstm_step_matches_reference(dtype, B, H):
    rng = np.random.default_rng(B * 10 + H)
    r = lambda *s: (rng.standard_normal(s) * 0.7).astype(dtype)  # noqa: E731
    h_prev, w, z, c_prev = r(B, H), r(4 * H, H), r(B, 4 * H), r(B, H)
    want = ref.lstm_step_fwd(h_prev, w, z.copy(), c_prev, np.empty((B, H), dtype), np.empty((B, H), dtype))
    got_z, c, h = z.copy(), np.full((B, H), np.nan, dtype), np.full((B, H), np.nan, dtype)
    rs.lstm_step_fwd(h_prev, w, got_z, c_prev, c, h)
    for g, w_ in zip((got_z, c, h), want):
        np.testing.assert_allclose(g, w_, **_tol(dtype))

    gates, c_now = want[0], want[1]
    w_t = np.ascontiguousarray(w.T)
    for has_next in (False, True):
        for has_out in (False, True):
            dz_next = r(B, 4 * H) if has_next else None
            grad_h, grad_out, grad_c = r(B, H), (r(B, H) if has_out else None), r(B, H)
            wz, wc = ref.lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c_now, grad_c.copy(),
                                       np.empty((B, 4 * H), dtype))
            gz, gc = np.full((B, 4 * H), np.nan, dtype), grad_c.copy()
            rs.lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c_now, gc, gz)
            np.testing.assert_allclose(gz, wz, **_tol(dtype))
            np.testing.assert_allclose(gc, wc, **_tol(dtype))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("B,H", [(3, 5), (35, 3)])
def test_rnn_step_matches_reference(relu, B, H):
    dtype = np.float64
    rng = np.random.default_rng(B + H)
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    h_prev, w, p = r(B, H), r(H, H), r(B, H)
    h = np.full((B, H), np.nan)
    rs.rnn_step_fwd(h_prev, w, p, h, relu)
    want_h = ref.rnn_step_fwd(h_prev, w, p, np.empty((B, H)), relu)
    np.testing.assert_allclose(h, want_h, **_tol(dtype))
    w_t = np.ascontiguousarray(w.T)
    for has_next in (False, True):
        for has_out in (False, True):
            dz_next = r(B, H) if has_next else None
            grad_h, grad_out = r(B, H), (r(B, H) if has_out else None)
            gz = np.full((B, H), np.nan)
            rs.rnn_step_bwd(dz_next, w_t, grad_h, grad_out, want_h, gz, relu)
            np.testing.assert_allclose(gz, ref.rnn_step_bwd(dz_next, w_t, grad_h, grad_out, want_h, None, relu),
                                       **_tol(dtype))


def test_shape_and_dtype_are_checked():
    B, H = 2, 3
    z = np.zeros((B, 4 * H))
    with pytest.raises(ValueError, match="w_hh"):
        rs.lstm_step_fwd(np.zeros((B, H)), np.zeros((4 * H, H + 1)), z, np.zeros((B, H)), np.zeros((B, H)),
                         np.zeros((B, H)))
    with pytest.raises(ValueError, match="h"):
        rs.rnn_step_fwd(np.zeros((B, H)), np.zeros((H, H)), np.zeros((B, H)), np.zeros((B, H), np.float32))


@pytest.mark.parametrize("reverse", [False, True])
def test_seq_loops_match_reference(reverse):
    T, B, H = 3, 9, 4
    rng = np.random.default_rng(int(reverse))
    r = lambda *s: rng.standard_normal(s) * 0.5  # noqa: E731
    hs, cs, gates, w = r(T + 1, B, H), r(T + 1, B, H), r(T, B, 4 * H), r(4 * H, H)
    want = [hs.copy(), cs.copy(), gates.copy()]
    ref.lstm_seq_fwd(want[0], w, want[2], want[1], reverse)
    got = [hs.copy(), cs.copy(), gates.copy()]
    rs.lstm_seq_fwd(got[0], w, got[2], got[1], reverse)
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_, **_tol(np.float64))
    grad_out, grad_h, grad_c = r(T, B, H), r(B, H), r(B, H)
    dz_want, gc_want = np.empty((T, B, 4 * H)), grad_c.copy()
    ref.lstm_seq_bwd(dz_want, np.ascontiguousarray(w.T), grad_h, grad_out, want[2], want[1], gc_want, reverse)
    dz, gc = np.full((T, B, 4 * H), np.nan), grad_c.copy()
    rs.lstm_seq_bwd(dz, np.ascontiguousarray(w.T), grad_h, grad_out, want[2], want[1], gc, reverse)
    np.testing.assert_allclose(dz, dz_want, **_tol(np.float64))
    np.testing.assert_allclose(gc, gc_want, **_tol(np.float64))
    wr, p = r(H, H), r(T, B, H)
    hs_want, hs_got = hs.copy(), hs.copy()
    ref.rnn_seq_fwd(hs_want, wr, p, reverse)
    rs.rnn_seq_fwd(hs_got, wr, p, reverse)
    np.testing.assert_allclose(hs_got, hs_want, **_tol(np.float64))
    dz_want, dz = np.empty((T, B, H)), np.full((T, B, H), np.nan)
    ref.rnn_seq_bwd(dz_want, np.ascontiguousarray(wr.T), grad_h, None, hs_want, reverse)
    rs.rnn_seq_bwd(dz, np.ascontiguousarray(wr.T), grad_h, None, hs_want, reverse)
    np.testing.assert_allclose(dz, dz_want, **_tol(np.float64))
