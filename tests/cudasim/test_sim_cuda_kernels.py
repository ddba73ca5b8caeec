"""The Numba CUDA kernels against the NumPy references, run under the CUDA simulator.

The simulator must be switched on before numba.cuda is first imported, so this file only runs in a
process started with NUMBA_ENABLE_CUDASIM=1: tests/test_kernels_cudasim.py starts one. Collected in a
plain run it skips. Shapes are tiny (the simulator runs every CUDA thread as a Python thread), and the
launch constants are patched small so that blocks, grid-stride loops, SpMM/SDDMM segments, sort tiles
and the scan all wrap around several times.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("runs only with NUMBA_ENABLE_CUDASIM=1 (tests/test_kernels_cudasim.py starts it)",
                allow_module_level=True)

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from tapegrad import kernels  # noqa: E402
from tapegrad.kernels import reference as ref  # noqa: E402
from tapegrad.kernels.cuda import _device  # noqa: E402
from tapegrad.kernels.cuda import recurrent as rc  # noqa: E402
from tapegrad.kernels.cuda import sparse as sk  # noqa: E402

if not _device.is_simulator():
    pytest.skip("numba was imported before NUMBA_ENABLE_CUDASIM took effect", allow_module_level=True)


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(sk, "BLOCK", 32)
    monkeypatch.setattr(sk, "MAX_BLOCKS", 2)
    monkeypatch.setattr(sk, "SPMM_SEGMENT", 4)
    monkeypatch.setattr(sk, "SDDMM_SEGMENT", 3)
    monkeypatch.setattr(sk, "SORT_TILE", 4)
    monkeypatch.setattr(sk, "SCAN_THREADS", 8)
    monkeypatch.setattr(rc, "BLOCK", 32)
    monkeypatch.setattr(rc, "MAX_BLOCKS", 2)


def _csr(dense, idx_dtype, ptr_dtype, dtype):
    """CSR arrays (sorted columns) of a dense matrix's nonzeros."""
    rows, cols = np.nonzero(dense)
    indptr = np.zeros(dense.shape[0] + 1, dtype=ptr_dtype)
    np.cumsum(np.bincount(rows, minlength=dense.shape[0]), out=indptr[1:])
    return indptr, cols.astype(idx_dtype), dense[rows, cols].astype(dtype)


def _graph(name, rng):
    """Small matrices with the edges that break sparse kernels."""
    if name == "random_with_empty_rows":
        d = rng.random((13, 11)) * (rng.random((13, 11)) < 0.3)
        d[[2, 3, 12]] = 0
    elif name == "single_node":
        d = np.array([[0.5]])
    elif name == "no_entries":
        d = np.zeros((5, 4))
    elif name == "huge_row":  # one row spans many segments; first and last rows empty
        d = rng.random((12, 30)) * (rng.random((12, 30)) < 0.1)
        d[5] = rng.random(30) + 0.1
        d[[0, 11]] = 0
    elif name == "square_with_isolated_nodes":
        d = rng.random((9, 9)) * (rng.random((9, 9)) < 0.35)
        d[[1, 4]] = 0
        d[:, [1, 4]] = 0
        d[[0, 3]] = 0  # rows without entries that still have incoming edges
        d[5, 5] = 2.0  # an existing self-loop keeps its weight
        d[7, 7] = 0.0
    else:
        raise ValueError(name)
    return d


GRAPHS = ["random_with_empty_rows", "single_node", "no_entries", "huge_row", "square_with_isolated_nodes"]
TYPES = [(np.float32, np.int32, np.int64), (np.float64, np.int64, np.int32)]
TYPE_IDS = ["f32-i32-p64", "f64-i64-p32"]


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("segment", [1, 2, 5])
def test_spmm_random_graphs_with_empty_rows_at_segment_edges(monkeypatch, segment):
    """Rows cut by many segment edges (joined by the lane that takes the last ticket) and empty rows at
    the start, the end and segment starts; out starts as NaN so that a row left unwritten fails."""
    monkeypatch.setattr(sk, "SPMM_SEGMENT", segment)
    rng = np.random.default_rng(segment)
    for trial in range(6):
        n_rows, n_cols = int(rng.integers(2, 14)), int(rng.integers(1, 9))
        d = rng.random((n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < float(rng.choice([0.2, 0.6])))
        d[[0, n_rows - 1]] = 0
        if n_rows > 3:
            d[n_rows // 2] = rng.random(n_cols) + 0.1
        indptr, indices, data = _csr(d, np.int32, np.int64, np.float64)
        x = rng.standard_normal((n_cols, int(rng.choice([1, 3, 33]))))
        out = np.full((n_rows, x.shape[1]), np.nan)
        y = sk.spmm(indptr, indices, data, x, out)
        np.testing.assert_allclose(y, ref.spmm(indptr, indices, data, x), rtol=1e-12, atol=1e-12,
                                   err_msg=f"trial {trial}")


@pytest.mark.parametrize("types", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_spmm_matches_reference_on_edge_graphs(graph, types):
    dtype, idt, pdt = types
    rng = np.random.default_rng(0)
    dense = _graph(graph, rng)
    indptr, indices, data = _csr(dense, idt, pdt, dtype)
    for F in (3, 37):  # a narrow group of lanes; a full warp over two feature tiles
        x = rng.standard_normal((dense.shape[1], F)).astype(dtype)
        for d in (data, None):
            y = sk.spmm(indptr, indices, d, x)
            assert isinstance(y, np.ndarray) and y.dtype == dtype
            np.testing.assert_allclose(y, ref.spmm(indptr, indices, d, x), **_tol(dtype))


@pytest.mark.parametrize("types", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_sddmm_matches_reference_on_edge_graphs(graph, types):
    dtype, idt, pdt = types
    rng = np.random.default_rng(1)
    dense = _graph(graph, rng)
    indptr, indices, _ = _csr(dense, idt, pdt, dtype)
    for F in (5, 40):
        a = rng.standard_normal((dense.shape[0], F)).astype(dtype)
        b = rng.standard_normal((dense.shape[1], F)).astype(dtype)
        out = sk.sddmm(indptr, indices, a, b)
        assert out.dtype == dtype and out.shape == (len(indices),)
        np.testing.assert_allclose(out, ref.sddmm(indptr, indices, a, b), **_tol(dtype))


@pytest.mark.parametrize("types", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_csr_transpose_equals_reference_exactly(graph, types):
    dtype, idt, pdt = types
    dense = _graph(graph, np.random.default_rng(2))
    indptr, indices, data = _csr(dense, idt, pdt, dtype)
    for d in (data, None):
        got = sk.csr_transpose(indptr, indices, d, dense.shape[1])
        want = ref.csr_transpose(indptr, indices, d, dense.shape[1])
        for g, w in zip(got, want):
            if w is None:
                assert g is None
            else:
                assert g.dtype == w.dtype
                np.testing.assert_array_equal(g, w)


def test_csr_transpose_is_stable_with_duplicate_entries_across_sort_tiles():
    # Column 0 appears in every row, twice in some: the transpose must keep A's entry order.
    indptr = np.array([0, 3, 4, 7, 9, 12], dtype=np.int64)
    indices = np.array([0, 0, 2, 0, 1, 0, 0, 2, 0, 0, 0, 1], dtype=np.int32)
    data = np.arange(12, dtype=np.float64)
    got = sk.csr_transpose(indptr, indices, data, 3)
    for g, w in zip(got, ref.csr_transpose(indptr, indices, data, 3)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("types", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("graph", ["single_node", "square_with_isolated_nodes", "no_entries_square"])
def test_gcn_norm_matches_reference(graph, types):
    dtype, idt, pdt = types
    rng = np.random.default_rng(3)
    dense = np.zeros((6, 6)) if graph == "no_entries_square" else _graph(graph, rng)
    n = dense.shape[0]
    indptr, indices, data = _csr(dense, idt, pdt, np.float64)
    for add in (True, False):
        for d, fill in ((data, 1.0), (None, 2.0)):
            got = sk.gcn_norm(indptr, indices, d, n, add, fill, dtype)
            want = ref.gcn_norm(indptr, indices, d, n, add, fill, dtype)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[0].dtype == np.int64
            np.testing.assert_array_equal(got[1], want[1])
            assert got[1].dtype == indices.dtype
            assert got[2].dtype == np.dtype(dtype)
            np.testing.assert_allclose(got[2], want[2], **_tol(dtype))
            assert np.isfinite(got[2]).all()


def test_gcn_norm_places_a_missing_loop_like_the_cpu_kernel_and_pads_a_short_indptr():
    # Row 1 stores columns [2, 0] (unsorted): its added loop goes before its first column above 1.
    # indptr covers 2 of the 4 nodes: nodes 2 and 3 have empty rows and get only their loops.
    indptr = np.array([0, 1, 3], dtype=np.int64)
    indices = np.array([1, 2, 0], dtype=np.int32)
    new_indptr, new_indices, new_data = sk.gcn_norm(indptr, indices, None, 4)
    assert new_indptr.tolist() == [0, 2, 5, 6, 7]
    assert new_indices.tolist() == [0, 1, 1, 2, 0, 2, 3]
    want_indptr, want_indices, want_data = ref.gcn_norm(indptr, indices, None, 4)
    np.testing.assert_array_equal(new_indptr, want_indptr)
    rows = np.repeat(np.arange(4), np.diff(new_indptr))
    want_rows = np.repeat(np.arange(4), np.diff(want_indptr))
    got = dict(zip(zip(rows.tolist(), new_indices.tolist()), new_data.tolist()))
    want = dict(zip(zip(want_rows.tolist(), want_indices.tolist()), want_data.tolist()))
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,H", [(1, 1), (3, 5), (2, 33), (0, 4)])
def test_lstm_cell_fwd_and_bwd_match_reference(B, H, dtype):
    rng = np.random.default_rng(4)
    z = (3 * rng.standard_normal((B, 4 * H))).astype(dtype)
    c_prev, grad_h, grad_c = rng.standard_normal((3, B, H)).astype(dtype)
    got = rc.lstm_cell_fwd(z, c_prev)
    want = ref.lstm_cell_fwd(z, c_prev)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, **_tol(dtype))
    got = rc.lstm_cell_bwd(want[0], c_prev, want[1], grad_h, grad_c)
    for g, w in zip(got, ref.lstm_cell_bwd(want[0], c_prev, want[1], grad_h, grad_c)):
        np.testing.assert_allclose(g, w, **_tol(dtype))


def test_lstm_cell_fwd_writes_gates_over_z_when_aliased():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 12))
    c_prev = rng.standard_normal((4, 3))
    want = ref.lstm_cell_fwd(z.copy(), c_prev)
    c, h = np.empty((4, 3)), np.empty((4, 3))
    got = rc.lstm_cell_fwd(z, c_prev, gates=z, c=c, h=h)
    assert got[0] is z and got[1] is c and got[2] is h
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_outputs_may_alias_inputs_as_the_engine_uses_them():
    # The engine writes grad_c_prev over grad_c, and h over z, on device arrays.
    rng = np.random.default_rng(13)
    gates = ref.lstm_cell_fwd(rng.standard_normal((3, 8)), rng.standard_normal((3, 2)))[0]
    c_prev, c, grad_h, grad_c = rng.standard_normal((4, 3, 2))
    want = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    dc = cuda.to_device(grad_c)
    got = rc.lstm_cell_bwd(cuda.to_device(gates), cuda.to_device(c_prev), cuda.to_device(c),
                           cuda.to_device(grad_h), dc, grad_c_prev=dc)
    assert got[1] is dc
    np.testing.assert_allclose(got[0].copy_to_host(), want[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dc.copy_to_host(), want[1], rtol=1e-12, atol=1e-12)
    z = rng.standard_normal((4, 5))
    want_h = np.tanh(z)
    zd = cuda.to_device(z)
    assert rc.rnn_cell_fwd(zd, zd) is zd
    np.testing.assert_allclose(zd.copy_to_host(), want_h, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rnn_cell_fwd_and_bwd_match_reference(relu, dtype):
    rng = np.random.default_rng(6)
    z = (2 * rng.standard_normal((5, 7))).astype(dtype)
    z[0, 0] = 0.0
    grad_h = rng.standard_normal((5, 7)).astype(dtype)
    h = rc.rnn_cell_fwd(z, relu=relu)
    np.testing.assert_allclose(h, ref.rnn_cell_fwd(z, relu=relu), **_tol(dtype))
    out = np.full((5, 7), np.nan, dtype=dtype)
    g = rc.rnn_cell_bwd(h, grad_h, grad_z=out, relu=relu)
    assert g is out
    np.testing.assert_allclose(out, ref.rnn_cell_bwd(h, grad_h, relu=relu), **_tol(dtype))


def test_device_arrays_in_give_device_arrays_out():
    rng = np.random.default_rng(7)
    indptr, indices, data = _csr(_graph("random_with_empty_rows", rng), np.int32, np.int64, np.float32)
    x = rng.standard_normal((11, 6)).astype(np.float32)
    y = sk.spmm(cuda.to_device(indptr), cuda.to_device(indices), cuda.to_device(data), cuda.to_device(x))
    assert getattr(y, "__cuda_ndarray__", False)
    np.testing.assert_allclose(y.copy_to_host(), ref.spmm(indptr, indices, data, x), rtol=2e-5, atol=2e-6)
    out = cuda.device_array((13, 6), np.float32)
    assert sk.spmm(cuda.to_device(indptr), cuda.to_device(indices), None, cuda.to_device(x), out=out) is out
    np.testing.assert_allclose(out.copy_to_host(), ref.spmm(indptr, indices, None, x), rtol=2e-5, atol=2e-6)
    t = sk.csr_transpose(cuda.to_device(indptr), cuda.to_device(indices), None, 11)
    assert all(getattr(a, "__cuda_ndarray__", False) for a in (t[0], t[1], t[3])) and t[2] is None
    h = rc.rnn_cell_fwd(cuda.to_device(x))
    np.testing.assert_allclose(h.copy_to_host(), np.tanh(x), rtol=2e-6, atol=2e-6)


def test_spmm_values_are_cast_to_the_dtype_of_x():
    rng = np.random.default_rng(8)
    indptr, indices, data = _csr(_graph("huge_row", rng), np.int64, np.int64, np.float64)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    y = sk.spmm(indptr, indices, data, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref.spmm(indptr, indices, data, x), rtol=2e-5, atol=2e-6)


def test_one_block_grid_and_default_segments_still_cover_everything(monkeypatch):
    # One block of one warp walks every segment and row by itself: the grid-stride loops wrap a lot.
    monkeypatch.setattr(sk, "MAX_BLOCKS", 1)
    monkeypatch.setattr(sk, "SPMM_SEGMENT", 128)
    monkeypatch.setattr(sk, "SDDMM_SEGMENT", 32)
    monkeypatch.setattr(rc, "MAX_BLOCKS", 1)
    rng = np.random.default_rng(9)
    dense = _graph("huge_row", rng)
    indptr, indices, data = _csr(dense, np.int32, np.int64, np.float32)
    x = rng.standard_normal((30, 2)).astype(np.float32)
    np.testing.assert_allclose(sk.spmm(indptr, indices, data, x), ref.spmm(indptr, indices, data, x),
                               rtol=2e-5, atol=2e-6)
    a = rng.standard_normal((12, 2)).astype(np.float32)
    np.testing.assert_allclose(sk.sddmm(indptr, indices, a, x), ref.sddmm(indptr, indices, a, x),
                               rtol=2e-5, atol=2e-6)
    z = rng.standard_normal((3, 4 * 20)).astype(np.float32)
    c_prev = rng.standard_normal((3, 20)).astype(np.float32)
    for g, w in zip(rc.lstm_cell_fwd(z, c_prev), ref.lstm_cell_fwd(z, c_prev)):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_spmm_is_bitwise_deterministic():
    rng = np.random.default_rng(10)
    indptr, indices, data = _csr(_graph("huge_row", rng), np.int32, np.int64, np.float32)
    x = rng.standard_normal((30, 3)).astype(np.float32)
    y1 = sk.spmm(indptr, indices, data, x)
    y2 = sk.spmm(indptr, indices, data, x)
    assert y1.tobytes() == y2.tobytes()


@pytest.mark.parametrize("wd,decay", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.995)], ids=["plain", "l2", "decoupled"])
@pytest.mark.parametrize("beta1", [0.9, 0.3], ids=["b1=0.9", "b1=0.3"])
def test_adam_step_matches_reference(monkeypatch, wd, decay, beta1):
    from tapegrad.kernels.cuda import optim as cuda_optim
    monkeypatch.setattr(cuda_optim, "BLOCK", 32)
    monkeypatch.setattr(cuda_optim, "MAX_BLOCKS", 2)
    rng = np.random.default_rng(6)
    shape = (9, 11)  # 99 elements: a grid-stride loop over more than 2 blocks of 32
    p = rng.standard_normal(shape)
    m, v = np.zeros(shape), np.zeros(shape)
    want = [p.copy(), m.copy(), v.copy()]
    for step in range(1, 4):
        g = rng.standard_normal(shape)
        args = (beta1, 0.999, 1e-2 / (1 - beta1 ** step), np.sqrt(1 - 0.999 ** step), 1e-8, wd, decay)
        ref.adam_step(*want[:1], g, *want[1:], *args)
        cuda_optim.adam_step(p, g, m, v, *args)
        for got, w in zip((p, m, v), want):
            np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)


# ---- int8/uint8/int16 indices: the public entry points widen them, so row ids never wrap ----------------------
@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8])
def test_cuda_csr_transpose_through_the_public_entry_never_wraps_row_ids(index_dtype):
    n = int(np.iinfo(index_dtype).max) + 20  # more rows than the index dtype holds
    rng = np.random.default_rng(0)
    indptr, indices, data = np.arange(n + 1), rng.integers(0, 3, n).astype(index_dtype), rng.standard_normal(n)
    got = kernels.csr_transpose(indptr, indices, data, 3, backend="numba-cuda")
    want = ref.csr_transpose(indptr, indices, data, 3)
    assert got[1].dtype == want[1].dtype == np.int32
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert int(got[1].max()) == n - 1


def test_cuda_gcn_norm_through_the_public_entry_never_wraps_added_loops():
    n = 140
    indptr, indices = np.arange(n + 1), (np.arange(n) % 100).astype(np.int8)
    got = kernels.gcn_norm(indptr, indices, None, n, dtype=np.float64, backend="numba-cuda")
    want = ref.gcn_norm(indptr, indices, None, n, dtype=np.float64)
    assert got[1].dtype == want[1].dtype == np.int32
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-12)
