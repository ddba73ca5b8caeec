"""The CuPy and Numba CUDA kernels against the NumPy references on a real GPU, on realistic shapes.

Every test is marked ``gpu`` and skips without cupy or a usable CUDA device. Each kernel runs through
the registry on both GPU backends, on a power-law graph (a hub row and a hub column spanning many
work segments, empty rows, isolated nodes), for float32 and float64 and int32 and int64 indices.
Float32 sums are checked against a float64 reference within a bound proportional to the sum of the
absolute terms, since the GPU adds in a different order from ``np.add.at``.
"""
from __future__ import annotations

import numpy as np
import pytest

from tapegrad.kernels import reference as ref
from tapegrad.kernels import registry

pytestmark = pytest.mark.gpu


@pytest.fixture
def backend(gpu_kernel_backend):  # `cp` and `gpu_kernel_backend` live in tests/conftest.py
    return gpu_kernel_backend


def _kernel(name, backend):
    return registry.get(name, backend)


def _power_law_csr(n_rows, n_cols, seed, idx_dtype=np.int32, ptr_dtype=np.int64):
    """Sorted, duplicate-free CSR with Zipf row degrees, one hub row, one hub column, empty rows."""
    import scipy.sparse as sp
    rng = np.random.default_rng(seed)
    deg = np.minimum(rng.zipf(2.1, n_rows), n_cols)
    deg[rng.choice(n_rows, n_rows // 20, replace=False)] = 0  # empty rows
    deg[n_rows // 3] = min(n_cols, 15_000)  # a hub row spanning many SpMM segments
    rows = np.repeat(np.arange(n_rows), deg)
    cols = rng.integers(0, n_cols, rows.size)
    cols[rng.random(rows.size) < 0.2] = 7  # a hub column: a long row of A^T
    A = sp.csr_matrix((rng.random(rows.size) + 0.1, (rows, cols)), shape=(n_rows, n_cols))
    A.sum_duplicates()
    A.sort_indices()
    return A.indptr.astype(ptr_dtype), A.indices.astype(idx_dtype), A.data


def _check_sum(got, want64, bound64, dtype):
    """|got - exact| <= c * sum(|terms|): the error of any summation order, in the dtype's precision."""
    c = 1e-4 if dtype == np.float32 else 1e-11
    err = np.abs(got.astype(np.float64) - want64)
    worst = np.max(err - c * bound64 - c) if err.size else 0.0
    assert worst <= 0, f"error exceeds the summation bound by {worst}"


def _to(cp, *arrays):
    return [None if a is None else cp.asarray(a) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F", [1, 7, 16, 64, 130])
def test_spmm_matches_reference_on_power_law_graph(cp, backend, F, dtype):
    indptr, indices, data = _power_law_csr(20_000, 18_000, seed=F)
    rng = np.random.default_rng(F)
    x = rng.standard_normal((18_000, F)).astype(dtype)
    d = data.astype(dtype)
    y = _kernel("spmm", backend)(*_to(cp, indptr, indices, d, x))
    assert isinstance(y, cp.ndarray) and y.dtype == dtype and y.shape == (20_000, F)
    want = ref.spmm(indptr, indices, d.astype(np.float64), x.astype(np.float64))
    bound = ref.spmm(indptr, indices, np.abs(d).astype(np.float64), np.abs(x).astype(np.float64))
    _check_sum(cp.asnumpy(y), want, bound, dtype)
    y1 = _kernel("spmm", backend)(*_to(cp, indptr, indices, None, x))
    _check_sum(cp.asnumpy(y1), ref.spmm(indptr, indices, None, x.astype(np.float64)),
               ref.spmm(indptr, indices, None, np.abs(x).astype(np.float64)), dtype)


def test_spmm_with_int64_indices_int32_indptr_and_misaligned_x(cp, backend):
    indptr, indices, data = _power_law_csr(5_000, 4_000, seed=1, idx_dtype=np.int64, ptr_dtype=np.int32)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4_000, 32)).astype(np.float32)
    buf = cp.empty(x.size + 1, np.float32)
    x_gpu = buf[1:].reshape(x.shape)  # 4-byte aligned only: no float4 loads possible
    x_gpu[...] = cp.asarray(x)
    y = _kernel("spmm", backend)(*_to(cp, indptr, indices, data.astype(np.float32)), x_gpu)
    _check_sum(cp.asnumpy(y), ref.spmm(indptr, indices, data, x.astype(np.float64)),
               ref.spmm(indptr, indices, data, np.abs(x).astype(np.float64)), np.float32)


def test_spmm_is_bitwise_deterministic_and_fills_out(cp, backend):
    indptr, indices, data = _power_law_csr(20_000, 20_000, seed=2)
    x = np.random.default_rng(2).standard_normal((20_000, 64)).astype(np.float32)
    args = _to(cp, indptr, indices, data.astype(np.float32), x)
    y1 = _kernel("spmm", backend)(*args)
    out = cp.full((20_000, 64), cp.nan, dtype=cp.float32)
    y2 = _kernel("spmm", backend)(*args, out)
    assert y2 is out
    assert cp.asnumpy(y1).tobytes() == cp.asnumpy(out).tobytes()


@pytest.mark.parametrize("segment", [1, 3, 8, 128])
def test_spmm_zeroes_empty_rows_anywhere_and_joins_rows_cut_by_segments(cp, backend, monkeypatch, segment):
    """Empty rows first, last, in runs, and where a segment starts; rows cut by many segment edges; no
    stored entries at all. ``out`` starts as NaN, so a row left unwritten fails. The CuPy kernel's
    tickets are back at zero after every call."""
    import scipy.sparse as sp
    from tapegrad.kernels.cupy import sparse as cupy_sparse
    pkg = "cupy" if backend == "cupy" else "cuda"
    import importlib
    monkeypatch.setattr(importlib.import_module(f"tapegrad.kernels.{pkg}.sparse"), "SPMM_SEGMENT", segment)
    rng = np.random.default_rng(segment)
    for trial in range(12):
        n_rows, n_cols, F = int(rng.integers(1, 60)), int(rng.integers(1, 50)), int(rng.choice([1, 5, 8, 33]))
        A = sp.random(n_rows, n_cols, density=float(rng.choice([0.0, 0.05, 0.3])), format="lil",
                      random_state=int(rng.integers(1 << 30)))
        A[0, :] = 0
        A[n_rows - 1, :] = 0
        if n_rows > 4:
            A[n_rows // 2, :] = rng.random(n_cols) + 0.5  # a row across several segments
            A[1:3, :] = 0
        A = A.tocsr()
        A.eliminate_zeros()
        A.sort_indices()
        x = rng.standard_normal((n_cols, F))
        out = cp.full((n_rows, F), cp.nan)
        y = _kernel("spmm", backend)(*_to(cp, A.indptr, A.indices, A.data, x), out)
        assert y is out
        np.testing.assert_allclose(cp.asnumpy(y), A @ x, rtol=1e-12, atol=1e-12, err_msg=f"trial {trial}")
        if backend == "cupy":
            assert all(not bool(t.any()) for _, t in cupy_sparse._SPMM_SCRATCH.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("F", [1, 7, 64, 130])
def test_sddmm_matches_reference_on_power_law_graph(cp, backend, F, dtype):
    indptr, indices, _ = _power_law_csr(20_000, 18_000, seed=10 + F)
    rng = np.random.default_rng(F)
    a = rng.standard_normal((20_000, F)).astype(dtype)
    b = rng.standard_normal((18_000, F)).astype(dtype)
    out = _kernel("sddmm", backend)(*_to(cp, indptr, indices, a, b))
    assert out.dtype == dtype and out.shape == indices.shape
    want = ref.sddmm(indptr, indices, a.astype(np.float64), b.astype(np.float64))
    bound = ref.sddmm(indptr, indices, np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    _check_sum(cp.asnumpy(out), want, bound, dtype)


def test_numba_sddmm_shared_memory_reduction_matches_shuffles(cp, monkeypatch):
    pytest.importorskip("numba.cuda")
    from tapegrad.kernels.cuda import sparse as nk
    indptr, indices, _ = _power_law_csr(8_000, 8_000, seed=3)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, 8_000, 24))
    args = _to(cp, indptr, indices, a, b)
    monkeypatch.setattr(nk, "USE_SHUFFLE", True)
    with_shuffles = cp.asnumpy(nk.sddmm(*args))
    monkeypatch.setattr(nk, "USE_SHUFFLE", False)
    with_shared = cp.asnumpy(nk.sddmm(*args))
    np.testing.assert_allclose(with_shared, with_shuffles, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(with_shared, ref.sddmm(indptr, indices, a, b), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_csr_transpose_equals_reference_exactly(cp, backend, idx_dtype):
    indptr, indices, data = _power_law_csr(30_000, 25_000, seed=4, idx_dtype=idx_dtype)
    for d in (data, None):
        got = _kernel("csr_transpose", backend)(*_to(cp, indptr, indices, d), 25_000)
        want = ref.csr_transpose(indptr, indices, d, 25_000)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(cp.asnumpy(g), w)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gcn_norm_matches_reference(cp, backend, dtype):
    indptr, indices, data = _power_law_csr(20_000, 20_000, seed=5)
    for add, d, fill in ((True, data, 1.0), (True, None, 2.0), (False, data, 1.0)):
        got = _kernel("gcn_norm", backend)(*_to(cp, indptr, indices, d), 20_000, add, fill, dtype)
        want = ref.gcn_norm(indptr, indices, d, 20_000, add, fill, dtype)
        np.testing.assert_array_equal(cp.asnumpy(got[0]), want[0])
        np.testing.assert_array_equal(cp.asnumpy(got[1]), want[1])
        assert got[2].dtype == np.dtype(dtype)
        tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(cp.asnumpy(got[2]), want[2], **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(64, 256), (32, 130), (7, 33)])
def test_lstm_cell_matches_reference(cp, backend, B, H, dtype):
    rng = np.random.default_rng(H)
    z = (3 * rng.standard_normal((B, 4 * H))).astype(dtype)
    c_prev, grad_h, grad_c = rng.standard_normal((3, B, H)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    want = ref.lstm_cell_fwd(z, c_prev)
    got = _kernel("lstm_cell_fwd", backend)(*_to(cp, z, c_prev))
    for g, w in zip(got, want):
        np.testing.assert_allclose(cp.asnumpy(g), w, **tol)
    z_gpu = cp.asarray(z)
    gates = _kernel("lstm_cell_fwd", backend)(z_gpu, cp.asarray(c_prev), z_gpu)[0]  # gates written over z
    assert gates is z_gpu
    np.testing.assert_allclose(cp.asnumpy(z_gpu), want[0], **tol)
    got = _kernel("lstm_cell_bwd", backend)(*_to(cp, want[0], c_prev, want[1], grad_h, grad_c))
    for g, w in zip(got, ref.lstm_cell_bwd(want[0], c_prev, want[1], grad_h, grad_c)):
        np.testing.assert_allclose(cp.asnumpy(g), w, **tol)


def test_recurrent_outputs_may_alias_inputs_as_the_engine_uses_them(cp, backend):
    rng = np.random.default_rng(13)
    gates = ref.lstm_cell_fwd(rng.standard_normal((16, 4 * 64)), rng.standard_normal((16, 64)))[0]
    c_prev, c, grad_h, grad_c = rng.standard_normal((4, 16, 64))
    want = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    dc = cp.asarray(grad_c)
    got = _kernel("lstm_cell_bwd", backend)(*_to(cp, gates, c_prev, c, grad_h), dc, None, dc)
    assert got[1] is dc
    np.testing.assert_allclose(cp.asnumpy(got[0]), want[0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(cp.asnumpy(dc), want[1], rtol=1e-12, atol=1e-13)
    z = rng.standard_normal((16, 64))
    want_h = np.tanh(z)
    zd = cp.asarray(z)
    assert _kernel("rnn_cell_fwd", backend)(zd, zd, False) is zd
    np.testing.assert_allclose(cp.asnumpy(zd), want_h, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rnn_cell_matches_reference(cp, backend, relu, dtype):
    rng = np.random.default_rng(11)
    z = (2 * rng.standard_normal((128, 300))).astype(dtype)
    grad_h = rng.standard_normal((128, 300)).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    h = _kernel("rnn_cell_fwd", backend)(cp.asarray(z), None, relu)
    np.testing.assert_allclose(cp.asnumpy(h), ref.rnn_cell_fwd(z, relu=relu), **tol)
    g = _kernel("rnn_cell_bwd", backend)(h, cp.asarray(grad_h), None, relu)
    np.testing.assert_allclose(cp.asnumpy(g), ref.rnn_cell_bwd(cp.asnumpy(h), grad_h, relu=relu), **tol)


@pytest.mark.parametrize("name", ["sparse", "recurrent"])
def test_small_launch_constants_on_real_hardware(cp, backend, name, monkeypatch):
    """Both GPU backends with tiny blocks, grids and segments: every block and segment edge is hit."""
    import importlib
    pkg = "cupy" if backend == "cupy" else "cuda"
    mod = importlib.import_module(f"tapegrad.kernels.{pkg}.{name}")
    for attr, value in (("BLOCK", 64), ("MAX_BLOCKS", 3), ("SPMM_SEGMENT", 5), ("SDDMM_SEGMENT", 3),
                        ("SORT_TILE", 8), ("SCAN_THREADS", 64)):
        if hasattr(mod, attr):
            monkeypatch.setattr(mod, attr, value)
    rng = np.random.default_rng(12)
    if name == "sparse":
        indptr, indices, data = _power_law_csr(3_000, 3_000, seed=12)
        x = rng.standard_normal((3_000, 20))
        y = _kernel("spmm", backend)(*_to(cp, indptr, indices, data, x))
        np.testing.assert_allclose(cp.asnumpy(y), ref.spmm(indptr, indices, data, x), rtol=1e-10, atol=1e-10)
        a = rng.standard_normal((3_000, 20))
        s = _kernel("sddmm", backend)(*_to(cp, indptr, indices, a, x))
        np.testing.assert_allclose(cp.asnumpy(s), ref.sddmm(indptr, indices, a, x), rtol=1e-10, atol=1e-10)
        t = _kernel("csr_transpose", backend)(*_to(cp, indptr, indices, data), 3_000)
        for g, w in zip(t, ref.csr_transpose(indptr, indices, data, 3_000)):
            np.testing.assert_array_equal(cp.asnumpy(g), w)
        gn = _kernel("gcn_norm", backend)(*_to(cp, indptr, indices, data), 3_000, True, 1.0, np.float64)
        for g, w in zip(gn, ref.gcn_norm(indptr, indices, data, 3_000, True, 1.0, np.float64)):
            np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-13, atol=1e-15)
    else:
        z = rng.standard_normal((9, 4 * 50))
        c_prev = rng.standard_normal((9, 50))
        for g, w in zip(_kernel("lstm_cell_fwd", backend)(*_to(cp, z, c_prev)), ref.lstm_cell_fwd(z, c_prev)):
            np.testing.assert_allclose(cp.asnumpy(g), w, rtol=1e-12, atol=1e-13)


# ---- fused recurrent steps (GEMM + cell in one launch) ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(8, 256), (13, 37), (64, 128), (1, 2)])
def test_lstm_step_matches_reference(cp, backend, B, H, dtype):
    rng = np.random.default_rng(B * 1000 + H)
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)  # noqa: E731
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    h_prev, w, z, c_prev = r(B, H), r(4 * H, H), r(B, 4 * H), r(B, H)
    want = ref.lstm_step_fwd(h_prev.astype(np.float64), w.astype(np.float64), z.astype(np.float64),
                             c_prev.astype(np.float64), np.empty((B, H)), np.empty((B, H)))
    gz_dev, c_dev, h_dev = cp.asarray(z), cp.full((B, H), cp.nan, dtype), cp.full((B, H), cp.nan, dtype)
    _kernel("lstm_step_fwd", backend)(cp.asarray(h_prev), cp.asarray(w), gz_dev, cp.asarray(c_prev), c_dev, h_dev)
    for g, w_ in zip((gz_dev, c_dev, h_dev), want):
        np.testing.assert_allclose(cp.asnumpy(g), w_, **tol)
    gates, c_now = (a.astype(dtype) for a in want[:2])
    w_t = np.ascontiguousarray(w.T)
    for has_next in (False, True):
        for has_out in (False, True):
            dz_next = r(B, 4 * H) if has_next else None
            grad_h, grad_out, grad_c = r(B, H), (r(B, H) if has_out else None), r(B, H)
            wz, wc = ref.lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c_now, grad_c.copy(),
                                       np.empty((B, 4 * H), dtype))
            gz, gc = cp.full((B, 4 * H), cp.nan, dtype), cp.asarray(grad_c)
            _kernel("lstm_step_bwd", backend)(*_to(cp, dz_next, w_t, grad_h, grad_out, gates, c_prev, c_now), gc, gz)
            np.testing.assert_allclose(cp.asnumpy(gz), wz, **tol)
            np.testing.assert_allclose(cp.asnumpy(gc), wc, **tol)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(8, 256), (40, 37), (1, 1)])
def test_rnn_step_matches_reference(cp, backend, B, H, relu, dtype):
    rng = np.random.default_rng(B + H)
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(dtype)  # noqa: E731
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    h_prev, w, p = r(B, H), r(H, H), r(B, H)
    h = cp.full((B, H), cp.nan, dtype)
    _kernel("rnn_step_fwd", backend)(cp.asarray(h_prev), cp.asarray(w), cp.asarray(p), h, relu)
    want_h = ref.rnn_step_fwd(h_prev, w, p, np.empty((B, H), dtype), relu)
    np.testing.assert_allclose(cp.asnumpy(h), want_h, **tol)
    w_t = np.ascontiguousarray(w.T)
    for has_next in (False, True):
        for has_out in (False, True):
            dz_next = r(B, H) if has_next else None
            grad_h, grad_out = r(B, H), (r(B, H) if has_out else None)
            gz = cp.full((B, H), cp.nan, dtype)
            _kernel("rnn_step_bwd", backend)(*_to(cp, dz_next, w_t, grad_h, grad_out, want_h), gz, relu)
            np.testing.assert_allclose(cp.asnumpy(gz), ref.rnn_step_bwd(dz_next, w_t, grad_h, grad_out, want_h,
                                                                        None, relu), **tol)


@pytest.mark.parametrize("persistent,stage,tiled", [(True, True, True), (True, True, False), (True, False, False),
                                                    (False, True, False)],
                         ids=["tiled", "persistent-staged", "persistent-unstaged", "per-step-staged"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(8, 256), (19, 33), (3, 600), (40, 64), (64, 256), (5, 12), (9, 40), (13, 100)])
def test_seq_kernels_match_reference(cp, backend, monkeypatch, persistent, stage, tiled, reverse, dtype, B, H):
    """Whole loops: tiled persistent loops (CuPy, where a tiling fits), warp-per-unit persistent loops,
    or a launch per step, rows staged in shared memory or not (and not when they exceed it: H = 600 in
    float64), against the reference loop."""
    from tapegrad.kernels.cupy import recurrent_step, recurrent_tiled
    if backend != "cupy" and (persistent, stage, tiled) != (False, True, False):
        pytest.skip("the persistent, tiled and staging switches are the CuPy kernels'; numba-cuda has one loop")
    monkeypatch.setattr(recurrent_step, "PERSISTENT", persistent)
    monkeypatch.setattr(recurrent_step, "STAGE", stage)
    monkeypatch.setattr(recurrent_tiled, "ENABLED", tiled)
    if backend == "cupy" and tiled and dtype == np.float32 and (B, H) in ((8, 256), (64, 256), (13, 100)):
        # the shapes of the benchmarks take the tiled kernels (on any GPU of at least 32 SMs)
        assert recurrent_step.tiled_loops(4, B, H, dtype)
        assert recurrent_step.tiled_loops(1, B, H, dtype) == (H == 256)
    T = 12
    rng = np.random.default_rng(B + H + reverse)
    r = lambda *s: (rng.standard_normal(s) * 0.4).astype(dtype)  # noqa: E731
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    hs, cs, gates = r(T + 1, B, H), r(T + 1, B, H), r(T, B, 4 * H)
    w = (r(4 * H, H) / np.sqrt(H)).astype(dtype)
    want = [hs.copy(), cs.copy(), gates.copy()]
    ref.lstm_seq_fwd(want[0], w, want[2], want[1], reverse)
    got = [cp.asarray(a) for a in (hs, cs, gates)]
    _kernel("lstm_seq_fwd", backend)(got[0], cp.asarray(w), got[2], got[1], reverse)
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(cp.asnumpy(g), w_, **tol)
    w_t = np.ascontiguousarray(w.T)
    for grad_out in (None, r(T, B, H)):
        grad_h, grad_c = r(B, H), r(B, H)
        dz_want, gc_want = np.empty((T, B, 4 * H), dtype), grad_c.copy()
        ref.lstm_seq_bwd(dz_want, w_t, grad_h, grad_out, want[2], want[1], gc_want, reverse)
        dz, gc = cp.full((T, B, 4 * H), cp.nan, dtype), cp.asarray(grad_c)
        _kernel("lstm_seq_bwd", backend)(dz, *_to(cp, w_t, grad_h, grad_out, want[2], want[1]), gc, reverse)
        np.testing.assert_allclose(cp.asnumpy(dz), dz_want, **tol)
        np.testing.assert_allclose(cp.asnumpy(gc), gc_want, **tol)
    # the Elman RNN
    wr, p = (r(H, H) / np.sqrt(H)).astype(dtype), r(T, B, H)
    for relu in (False, True):
        hs_want = hs.copy()
        ref.rnn_seq_fwd(hs_want, wr, p, reverse, relu)
        hs_got = cp.asarray(hs)
        _kernel("rnn_seq_fwd", backend)(hs_got, cp.asarray(wr), cp.asarray(p), reverse, relu)
        np.testing.assert_allclose(cp.asnumpy(hs_got), hs_want, **tol)
        grad_out, grad_h = r(T, B, H), r(B, H)
        dz_want = np.empty((T, B, H), dtype)
        ref.rnn_seq_bwd(dz_want, np.ascontiguousarray(wr.T), grad_h, grad_out, hs_want, reverse, relu)
        dz = cp.full((T, B, H), cp.nan, dtype)
        _kernel("rnn_seq_bwd", backend)(dz, *_to(cp, np.ascontiguousarray(wr.T), grad_h, grad_out, hs_want), reverse,
                                        relu)
        np.testing.assert_allclose(cp.asnumpy(dz), dz_want, **tol)
    # repeated persistent launches reuse the barrier's counter, which each launch leaves at zero
    if backend == "cupy" and persistent:
        for _ in range(3):
            _kernel("rnn_seq_fwd", backend)(cp.asarray(hs), cp.asarray(wr), cp.asarray(p), reverse, False)
        assert int(recurrent_step._counter()[0]) == 0


def test_numba_fast_launch_matches_numba_launch_and_is_used(cp, monkeypatch):
    """The numba-cuda kernels launched through the driver directly (kernels/cuda/_device.py) give the
    bits Numba's own launch gives, for arrays (contiguous and strided), ints, floats, bools and dynamic
    shared memory, and the lean path is the one taken after the first call."""
    from tapegrad.kernels.cuda import _device as dv
    from tapegrad.kernels.cuda import recurrent as nrec
    from tapegrad.kernels.cuda import sparse as nsp
    rng = np.random.default_rng(3)
    B, H = 7, 33
    z, c = cp.asarray(rng.standard_normal((B, 4 * H))), cp.asarray(rng.standard_normal((B, H)))
    wide = cp.asarray(rng.standard_normal((B, 2 * H)).astype(np.float32))
    strided = wide[:, ::2]  # not contiguous: Numba's 'A' layout, strides passed through
    indptr, indices, data = _power_law_csr(500, 400, seed=3)
    x = cp.asarray(rng.standard_normal((400, 24)))
    a = cp.asarray(rng.standard_normal((500, 24)))
    sp_args = _to(cp, indptr, indices, data)
    calls = {
        "lstm_cell_fwd": lambda: nrec.lstm_cell_fwd(z, c),
        "rnn_cell_fwd relu": lambda: nrec.rnn_cell_fwd(strided, None, True),
        "rnn_cell_fwd tanh": lambda: nrec.rnn_cell_fwd(strided, None, False),
        "spmm": lambda: nsp.spmm(*sp_args, x),
        "sddmm": lambda: nsp.sddmm(sp_args[0], sp_args[1], a, x),
    }
    monkeypatch.setattr(dv, "FAST_LAUNCH", False)
    want = {k: f() for k, f in calls.items()}
    monkeypatch.setattr(dv, "FAST_LAUNCH", True)
    dv._plans.clear()
    for _ in range(3):  # the first call plans, the others take the lean path
        for k, f in calls.items():
            got = f()
            for g, w in zip(got if isinstance(got, tuple) else (got,), want[k] if isinstance(got, tuple) else (want[k],)):
                assert cp.asnumpy(g).tobytes() == cp.asnumpy(w).tobytes(), k
    planned = {key[0] for key, plan in dv._plans.items() if plan is not None}
    for kernel in (nrec._lstm_fwd, nrec._rnn_fwd, nsp._spmm_pass, nsp._sddmm_segments):
        assert kernel in planned, kernel


@pytest.mark.parametrize("idx,ptr", [(np.int32, np.int64), (np.int64, np.int32)])
def test_csr_stats_match_numpy(cp, idx, ptr):
    """The one-launch CSR checks (kernels/cupy/sparse.csr_stats) against numpy: a valid power-law pattern,
    then one decreasing step, a negative index, a start off zero, an empty pattern and one row."""
    from tapegrad.kernels.cupy import sparse as csp

    def want(ip, ix):
        neg = bool((ix < 0).any())
        top = int(ix[ix >= 0].max()) + 1 if (ix >= 0).any() else 0
        return int(ip[0]), bool((np.diff(ip) < 0).any()), int(ip[-1]), neg, top
    indptr, indices, _ = _power_law_csr(3000, 2500, seed=9, idx_dtype=idx, ptr_dtype=ptr)
    cases = [(indptr, indices)]
    dec = indptr.copy()
    dec[1700] = dec[1701] + 1
    cases.append((dec, indices))
    neg = indices.copy()
    neg[-1] = -4
    cases.append((indptr, neg))
    cases.append((indptr + 2, indices))
    cases.append((np.zeros(6, ptr), np.zeros(0, idx)))
    cases.append((np.array([0, 3], ptr), np.array([9, 2, 0], idx)))
    cases.append((np.array([0, 2], ptr), np.array([np.iinfo(idx).max, 1], idx)))  # the bound past int64's top
    for ip, ix in cases:
        assert csp.csr_stats(cp.asarray(ip), cp.asarray(ix)) == want(ip, ix)


@pytest.mark.parametrize("case", ["start", "decreasing", "end", "negative", "too_few_cols"])
def test_public_kernels_reject_bad_gpu_csr_as_on_the_cpu(cp, case):
    """tapegrad.kernels.spmm checks a cupy CSR pattern (one launch and one read back) and raises the error
    it raises for the same pattern on the host."""
    from tapegrad import kernels
    indptr, indices, data = _power_law_csr(400, 300, seed=2)
    x = np.random.default_rng(2).standard_normal((300, 8))
    if case == "start":
        indptr = indptr + 1
    elif case == "decreasing":
        indptr = indptr.copy()
        indptr[200] = indptr[201] + 1
    elif case == "end":
        indptr = indptr.copy()
        indptr[-1] += 1
    elif case == "negative":
        indices = indices.copy()
        indices[5] = -3
    else:
        x = x[:100].copy()
    with pytest.raises(ValueError) as on_cpu:
        kernels.spmm(indptr, indices, data, x)
    with pytest.raises(ValueError) as on_gpu:
        kernels.spmm(*_to(cp, indptr, indices, data, x))
    assert str(on_gpu.value) == str(on_cpu.value)


def test_numba_planned_launches_match_numba_launch_and_are_used(cp, monkeypatch):
    """The engine's calls of the numba-cuda spmm and cell kernels (every array given, C-contiguous) take
    planned launches (kernels/cuda/_device.py::Planned) from their third call on, and give the bits
    Numba's own launch gives: spmm with and without values and out, at two index widths, the four cell
    kernels, float32 and float64. A call of other sizes gets a plan of its own."""
    from tapegrad.kernels.cuda import _device as dv
    from tapegrad.kernels.cuda import recurrent as nrec
    from tapegrad.kernels.cuda import sparse as nsp
    rng = np.random.default_rng(8)
    calls = {}
    for dtype in (np.float32, np.float64):
        for B, H in ((3, 20), (6, 33)):
            z = cp.asarray(rng.standard_normal((B, 4 * H)).astype(dtype))
            c0, gh = (cp.asarray(rng.standard_normal((B, H)).astype(dtype)) for _ in range(2))
            o = {k: cp.empty(s, dtype) for k, s in (("g", (B, 4 * H)), ("c", (B, H)), ("h", (B, H)),
                                                    ("dz", (B, 4 * H)), ("dc", (B, H)), ("r", (B, H)))}
            name = f"{np.dtype(dtype).name} B={B}"
            calls[f"lstm fwd {name}"] = lambda z=z, c0=c0, o=o: [a.copy() for a in nrec.lstm_cell_fwd(
                z, c0, o["g"], o["c"], o["h"])]
            calls[f"lstm bwd {name}"] = lambda z=z, c0=c0, gh=gh, o=o: [a.copy() for a in nrec.lstm_cell_bwd(
                z, c0, gh, gh, c0, o["dz"], o["dc"])]
            for relu in (True, False):
                calls[f"rnn fwd {relu} {name}"] = lambda c0=c0, o=o, relu=relu: nrec.rnn_cell_fwd(
                    c0, o["r"], relu).copy()
                calls[f"rnn bwd {relu} {name}"] = lambda c0=c0, gh=gh, o=o, relu=relu: nrec.rnn_cell_bwd(
                    c0, gh, o["r"], relu).copy()
        for idx, ptr in ((np.int32, np.int64), (np.int64, np.int32)):
            indptr, indices, data = _power_law_csr(700, 600, seed=6, idx_dtype=idx, ptr_dtype=ptr)
            ip, ix, d = _to(cp, indptr, indices, data.astype(dtype))
            x = cp.asarray(rng.standard_normal((600, 40)).astype(dtype))
            y = cp.empty((700, 40), dtype)
            name = f"{np.dtype(dtype).name} {np.dtype(idx).name}"
            calls[f"spmm {name}"] = lambda ip=ip, ix=ix, d=d, x=x: nsp.spmm(ip, ix, d, x)
            calls[f"spmm ones out= {name}"] = lambda ip=ip, ix=ix, x=x, y=y: nsp.spmm(ip, ix, None, x, y).copy()
    monkeypatch.setattr(dv, "FAST_LAUNCH", False)
    want = {k: f() for k, f in calls.items()}
    monkeypatch.setattr(dv, "FAST_LAUNCH", True)
    for plans in (nsp._SPMM_PLANS, nrec._PLANS):
        plans.clear()
    taken = [0]
    call = dv.Planned.__call__

    def counted(self, *arrays):
        ok = call(self, *arrays)
        taken[0] += ok
        return ok
    monkeypatch.setattr(dv.Planned, "__call__", counted)
    for round_ in range(4):
        before = taken[0]
        for k, f in calls.items():
            got, w = f(), want[k]
            got, w = (got, w) if isinstance(got, (list, tuple)) else ((got,), (w,))
            for g, ww in zip(got, w):
                assert cp.asnumpy(g).tobytes() == cp.asnumpy(ww).tobytes(), (k, round_)
        if round_ >= 2:  # first call: Numba compiles; second: plans; then every call is planned
            assert taken[0] - before == len(calls), (round_, taken[0] - before, len(calls))
    assert None not in nrec._PLANS.values() and None not in nsp._SPMM_PLANS.values()


def test_cupy_direct_launch_matches_cupy_launch_and_is_used(cp, monkeypatch):
    """The CuPy kernels launched through the driver directly (kernels/cupy/_compile.py::Launch) give the
    bits CuPy's own RawKernel call gives: spmm with and without values, at int32 and int64 indices and a
    misaligned X, the four cell kernels and Adam, in float32 and float64; and every one of those calls
    went through the driver, none through CuPy's call."""
    from cupy_backends.cuda.api import driver

    from tapegrad.kernels.cupy import _compile as cc
    from tapegrad.kernels.cupy import optim as copt
    from tapegrad.kernels.cupy import recurrent as crec
    from tapegrad.kernels.cupy import sparse as csp
    rng = np.random.default_rng(11)
    calls = {}
    for dtype in (np.float32, np.float64):
        B, H = 5, 24
        z = cp.asarray(rng.standard_normal((B, 4 * H)).astype(dtype))
        c0 = cp.asarray(rng.standard_normal((B, H)).astype(dtype))
        gh = cp.asarray(rng.standard_normal((B, H)).astype(dtype))
        outs = {k: cp.empty(s, dtype) for k, s in (("g", (B, 4 * H)), ("c", (B, H)), ("h", (B, H)),
                                                      ("dz", (B, 4 * H)), ("dc", (B, H)), ("r", (B, H)))}
        for idx, ptr in ((np.int32, np.int64), (np.int64, np.int32)):
            indptr, indices, data = _power_law_csr(600, 500, seed=4, idx_dtype=idx, ptr_dtype=ptr)
            ip, ix, d = _to(cp, indptr, indices, data.astype(dtype))
            buf = cp.empty(500 * 12 + 1, dtype)
            x = buf[1:].reshape(500, 12)  # misaligned: scalar loads
            x[...] = cp.asarray(rng.standard_normal((500, 12)).astype(dtype))
            x16 = cp.asarray(rng.standard_normal((500, 16)).astype(dtype))
            y = cp.empty((600, 16), dtype)
            name = f"{np.dtype(dtype).name} {np.dtype(idx).name}"
            calls[f"spmm {name}"] = lambda ip=ip, ix=ix, d=d, x=x: csp.spmm(ip, ix, d, x)
            calls[f"spmm ones out= {name}"] = lambda ip=ip, ix=ix, x16=x16, y=y: csp.spmm(ip, ix, None, x16, y).copy()
        o = outs
        calls[f"lstm fwd {dtype}"] = lambda z=z, c0=c0, o=o: [a.copy() for a in crec.lstm_cell_fwd(
            z, c0, o["g"], o["c"], o["h"])]
        calls[f"lstm bwd {dtype}"] = lambda z=z, c0=c0, gh=gh, o=o: [a.copy() for a in crec.lstm_cell_bwd(
            z, c0, gh, gh, c0, o["dz"], o["dc"])]
        calls[f"rnn fwd relu {dtype}"] = lambda c0=c0, o=o: crec.rnn_cell_fwd(c0, o["r"], True).copy()
        calls[f"rnn fwd tanh {dtype}"] = lambda c0=c0, o=o: crec.rnn_cell_fwd(c0, o["r"], False).copy()
        calls[f"rnn bwd {dtype}"] = lambda c0=c0, gh=gh, o=o: crec.rnn_cell_bwd(c0, gh, o["r"], False).copy()

        def adam(dtype=dtype):
            r = np.random.default_rng(2)
            p, g = cp.asarray(r.standard_normal(50).astype(dtype)), cp.asarray(r.standard_normal(50).astype(dtype))
            m, v = cp.zeros(50, dtype), cp.zeros(50, dtype)
            p0 = p.copy()
            for step in (1, 2):
                copt.adam_step(p, g, m, v, 0.9, 0.999, 0.01 / (1 - 0.9 ** step), (1 - 0.999 ** step) ** 0.5, 1e-8)
            return p0, p, m, v
        calls[f"adam {dtype}"] = adam
    monkeypatch.setattr(cc, "DIRECT_LAUNCH", False)
    want = {k: f() for k, f in calls.items()}
    monkeypatch.setattr(cc, "DIRECT_LAUNCH", True)
    direct = [0]
    launch = driver.launchKernel

    def counted(*args):
        direct[0] += 1
        return launch(*args)
    monkeypatch.setattr(driver, "launchKernel", counted)
    cc._PLANS.clear()  # plans bind the driver's launch when made: make them again, counted
    csp.release_scratch()
    fallback = [0]
    call = cc.Launch.__call__

    def no_fallback(self, stream, *values):
        before = direct[0]
        launched = call(self, stream, *values)
        fallback[0] += direct[0] == before
        return launched
    monkeypatch.setattr(cc.Launch, "__call__", no_fallback)
    for _ in range(2):
        for k, f in calls.items():
            got, w = f(), want[k]
            got, w = (got, w) if isinstance(got, (list, tuple)) else ((got,), (w,))
            for g, ww in zip(got, w):
                assert cp.asnumpy(g).tobytes() == cp.asnumpy(ww).tobytes(), k
    assert direct[0] > 0 and fallback[0] == 0, (direct, fallback)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd,decay", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.995)], ids=["plain", "l2", "decoupled"])
@pytest.mark.parametrize("beta1", [0.9, 0.3], ids=["b1=0.9", "b1=0.3"])
def test_adam_step_matches_reference(cp, backend, dtype, wd, decay, beta1):
    """Several Adam updates in place on the GPU against the reference on the host (the GPU may contract
    a multiply-add into an FMA: close, not bitwise), also with a transposed gradient; a strided parameter
    takes the reference's path."""
    rng = np.random.default_rng(5)
    shape = (300, 7)
    p = rng.standard_normal(shape).astype(dtype)
    m, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    pg, mg, vg = cp.asarray(p), cp.asarray(m), cp.asarray(v)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for step in range(1, 5):
        g = rng.standard_normal(shape).astype(dtype)
        args = (beta1, 0.999, 1e-2 / (1 - beta1 ** step), np.sqrt(1 - 0.999 ** step), 1e-8, wd, decay)
        ref.adam_step(p, g, m, v, *args)
        _kernel("adam_step", backend)(pg, cp.asarray(g), mg, vg, *args)
        for got, want in ((pg, p), (mg, m), (vg, v)):
            np.testing.assert_allclose(cp.asnumpy(got), want, **tol)
    g = rng.standard_normal(shape[::-1]).astype(dtype).T  # a transposed GEMM's gradient: not C-contiguous
    args = (beta1, 0.999, 1e-2 / (1 - beta1 ** 5), np.sqrt(1 - 0.999 ** 5), 1e-8, wd, decay)
    ref.adam_step(p, g, m, v, *args)
    _kernel("adam_step", backend)(pg, cp.asarray(np.ascontiguousarray(g.T)).T, mg, vg, *args)
    for got, want in ((pg, p), (mg, m), (vg, v)):
        np.testing.assert_allclose(cp.asnumpy(got), want, **tol)
    strided = cp.asarray(np.ones((300, 14), dtype))[:, ::2]
    want = np.ones(shape, dtype)
    ref.adam_step(want, np.ones(shape, dtype), np.zeros(shape, dtype), np.zeros(shape, dtype), *args)
    _kernel("adam_step", backend)(strided, cp.ones(shape, dtype), cp.zeros(shape, dtype), cp.zeros(shape, dtype),
                                  *args)
    np.testing.assert_allclose(cp.asnumpy(strided), want, **tol)


# ---- the softmax cross-entropy -------------------------------------------------------------------------------
from loss_cases import cases as _ce_cases  # noqa: E402
from loss_cases import check_against_reference as _ce_check  # noqa: E402

_CE_CASES = list(_ce_cases(sizes=((20, 7, 10), (9, 40, None), (6, 70, 4), (5, 2, 0), (3000, 5, 700),
                                  (257, 1100, None))))


@pytest.mark.parametrize("name,z,t,rows", _CE_CASES, ids=[c[0] for c in _CE_CASES])
def test_cross_entropy_kernels_match_reference(cp, backend, name, z, t, rows):
    _ce_check(_kernel("cross_entropy_fwd", backend), _kernel("cross_entropy_bwd", backend), z, t, rows, xp=cp,
              dev=cp.asarray, host=cp.asnumpy)
