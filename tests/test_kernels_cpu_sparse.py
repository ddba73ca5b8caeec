"""The Numba CPU sparse kernels against the NumPy reference (and SciPy), including the edges."""
from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tapegrad.kernels import reference as ref
from tapegrad.kernels.cpu import sparse as cpu

# (index dtype, float dtype) pairs. Each distinct combination of argument dtypes compiles its own
# kernels, so the tests cover both index and both float dtypes with two pairs, not all four.
CASES = [(np.int32, np.float32), (np.int64, np.float64)]


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if np.dtype(dtype) == np.float32 else dict(rtol=1e-12, atol=1e-12)


def random_csr(n_rows, n_cols, density, rng, index_dtype=np.int64, dtype=np.float64, sort=True):
    """(indptr int64, indices, data) of a random CSR matrix without duplicate entries."""
    a = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng, dtype=np.float64)
    if sort:
        a.sort_indices()
    data = (a.data * 2 - 1).astype(dtype)  # signed values
    return a.indptr.astype(np.int64), a.indices.astype(index_dtype), data


def csr_from_edges(n, rows, cols, index_dtype=np.int64):
    """Sorted, duplicate-free CSR pattern (indptr, indices) of the given entries."""
    a = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    a.sum_duplicates()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(index_dtype)


def power_law_graph(n, rng, index_dtype=np.int64):
    """Random graph with power-law degrees plus one hub row (row 7) linked to 3/4 of the nodes."""
    deg = np.minimum((rng.pareto(1.5, n) + 1).astype(np.int64), n)
    rows = np.repeat(np.arange(n), deg)
    cols = rng.integers(0, n, len(rows))
    hub = rng.permutation(n)[: 3 * n // 4]
    rows = np.concatenate([rows, np.full(len(hub), 7)])
    cols = np.concatenate([cols, hub])
    return csr_from_edges(n, rows, cols, index_dtype)


def empty_rows_graph(index_dtype=np.int64):
    """6 nodes; rows 0, 3 and 5 are empty, node 5 is isolated, nodes 2 and 4 have self-loops."""
    rows = np.array([1, 1, 2, 2, 4, 4, 4, 4, 4])
    cols = np.array([0, 2, 2, 4, 0, 1, 2, 3, 4])
    return csr_from_edges(6, rows, cols, index_dtype)


def dense(indptr, indices, data, n_cols):
    n_rows = len(indptr) - 1
    vals = np.ones(len(indices)) if data is None else data
    return sp.csr_matrix((vals, indices, indptr), shape=(n_rows, n_cols)).toarray()


# ------------------------------------------------------------------------------------------ spmm

@pytest.mark.parametrize("index_dtype, dtype", CASES)
@pytest.mark.parametrize("with_data", [True, False])
def test_spmm_matches_reference_on_random_csr(index_dtype, dtype, with_data):
    rng = np.random.default_rng(0)
    indptr, indices, data = random_csr(120, 90, 0.08, rng, index_dtype, dtype)
    d = data if with_data else None
    for width in (1, 3, 67):
        x = rng.standard_normal((90, width)).astype(dtype)
        got = cpu.spmm(indptr, indices, d, x)
        assert got.dtype == dtype and got.shape == (120, width)
        np.testing.assert_allclose(got, ref.spmm(indptr, indices, d, x), **tol(dtype))


@pytest.mark.parametrize("width", [16, 32, 64, 128])
def test_spmm_kernels_compiled_for_a_width_match_reference(width):
    assert width in cpu._SPMM_KERNELS
    rng = np.random.default_rng(width)
    indptr, indices, data = random_csr(60, 50, 0.15, rng, np.int32, np.float32)
    x = rng.standard_normal((50, width)).astype(np.float32)
    np.testing.assert_allclose(cpu.spmm(indptr, indices, data, x), ref.spmm(indptr, indices, data, x),
                               **tol(np.float32))


@pytest.mark.parametrize("width", [16, 64, 128])
def test_spmm_prefetching_gives_bitwise_the_same_result(width, monkeypatch):
    """Prefetching is only a hint: forced on for small inputs (at several distances, across row ends,
    chunk ends and empty rows), the result is bitwise the one without it."""
    rng = np.random.default_rng(40 + width)
    indptr, indices = power_law_graph(300, rng, np.int32)
    rows = np.repeat(np.arange(300), np.diff(indptr))
    keep = rows // 50 != 3  # rows 150..199 left empty
    indptr, indices = csr_from_edges(300, rows[keep], indices[keep], np.int32)
    assert (np.diff(indptr)[150:200] == 0).all()
    data = rng.standard_normal(len(indices)).astype(np.float32)
    x = rng.standard_normal((300, width)).astype(np.float32)
    monkeypatch.setattr(cpu, "_PREFETCH_MIN_X_BYTES", -1)
    assert cpu._prefetch_ahead(x) == 4096 // (width * 4)
    for d in (data, None):
        with_default = cpu.spmm(indptr, indices, d, x)
        np.testing.assert_allclose(with_default, dense(indptr, indices, d, 300) @ x, rtol=1e-4, atol=1e-4)
        for ahead in (0, 1, 3, 1000):
            monkeypatch.setattr(cpu, "_prefetch_ahead", lambda x, ahead=ahead: ahead)
            np.testing.assert_array_equal(cpu.spmm(indptr, indices, d, x), with_default)


def test_spmm_prefetches_only_large_inputs_of_a_compiled_width():
    def x_of(n, width, dtype):  # a large X without the memory: every row is the same one
        row = np.zeros(width, dtype)
        return np.lib.stride_tricks.as_strided(row, (n, width), (0, row.itemsize))

    assert x_of(1 << 20, 64, np.float32).nbytes > cpu._PREFETCH_MIN_X_BYTES
    assert cpu._prefetch_ahead(x_of(1 << 20, 64, np.float32)) == 16  # 4 KB of X ahead
    assert cpu._prefetch_ahead(x_of(1 << 20, 64, np.float64)) == 8
    assert cpu._prefetch_ahead(x_of(1 << 20, 128, np.float32)) == 8
    assert cpu._prefetch_ahead(x_of(1000, 64, np.float32)) == 0  # 256 KB: in cache
    assert cpu._prefetch_ahead(x_of(1 << 20, 256, np.float32)) == 0  # the generic kernel


def test_spmm_without_data_adds_rows_exactly_as_the_reference():
    rng = np.random.default_rng(18)
    indptr, indices, _ = random_csr(200, 150, 0.1, rng, np.int32)
    for width in (3, 32):
        x = rng.standard_normal((150, width)).astype(np.float32)
        np.testing.assert_array_equal(cpu.spmm(indptr, indices, None, x), ref.spmm(indptr, indices, None, x))


@pytest.mark.parametrize("index_dtype, dtype", CASES)
def test_spmm_matches_scipy_product(index_dtype, dtype):
    rng = np.random.default_rng(1)
    indptr, indices, data = random_csr(300, 200, 0.05, rng, index_dtype, dtype)
    width = 64 if dtype == np.float32 else 67  # 67: a kernel the other tests compiled already
    x = rng.standard_normal((200, width)).astype(dtype)
    a = sp.csr_matrix((data, indices, indptr), shape=(300, 200))
    np.testing.assert_allclose(cpu.spmm(indptr, indices, data, x), a @ x, **tol(dtype))


def test_spmm_int32_indptr_and_indices():
    rng = np.random.default_rng(2)
    indptr, indices, data = random_csr(50, 40, 0.2, rng, np.int32, np.float32)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    got = cpu.spmm(indptr.astype(np.int32), indices, data, x)
    np.testing.assert_allclose(got, ref.spmm(indptr, indices, data, x), **tol(np.float32))


@pytest.mark.parametrize("with_data", [True, False])
def test_spmm_writes_into_given_out(with_data):
    rng = np.random.default_rng(3)
    indptr, indices, data = random_csr(30, 30, 0.2, rng, np.int32, np.float32)
    x = rng.standard_normal((30, 5)).astype(np.float32)
    out = np.full((30, 5), np.nan, dtype=np.float32)
    d = data if with_data else None
    got = cpu.spmm(indptr, indices, d, x, out=out)
    assert got is out
    np.testing.assert_allclose(out, ref.spmm(indptr, indices, d, x), **tol(np.float32))


def test_spmm_out_aliasing_x_gives_the_out_of_place_result():
    rng = np.random.default_rng(4)
    indptr, indices, data = random_csr(20, 20, 0.3, rng)
    x = rng.standard_normal((20, 4))
    expected = ref.spmm(indptr, indices, data, x)
    got = cpu.spmm(indptr, indices, data, x, out=x)
    assert got is x
    np.testing.assert_allclose(x, expected, **tol(np.float64))


def test_spmm_non_contiguous_out_is_filled():
    rng = np.random.default_rng(5)
    indptr, indices, data = random_csr(10, 12, 0.3, rng)
    x = rng.standard_normal((12, 3))
    buf = np.zeros((3, 10))
    got = cpu.spmm(indptr, indices, data, x, out=buf.T)
    np.testing.assert_allclose(buf.T, ref.spmm(indptr, indices, data, x), **tol(np.float64))
    assert got.base is buf


def test_spmm_casts_data_to_x_dtype():
    rng = np.random.default_rng(6)
    indptr, indices, data = random_csr(15, 15, 0.3, rng, np.int32, np.float64)
    x = rng.standard_normal((15, 4)).astype(np.float32)
    got = cpu.spmm(indptr, indices, data, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.spmm(indptr, indices, data, x), **tol(np.float32))


@pytest.mark.parametrize("index_dtype, dtype", CASES)
def test_spmm_empty_rows_and_isolated_nodes_give_zero_rows(index_dtype, dtype):
    indptr, indices = empty_rows_graph(index_dtype)
    x = np.random.default_rng(7).standard_normal((6, 5)).astype(dtype)
    out = np.full((6, 5), np.nan, dtype=dtype)
    got = cpu.spmm(indptr, indices, None, x, out=out)
    np.testing.assert_allclose(got, ref.spmm(indptr, indices, None, x), **tol(dtype))
    assert np.all(got[[0, 3, 5]] == 0)


def test_spmm_single_node_and_no_entries():
    x = np.array([[2.0, -1.0]])
    one = (np.array([0, 1]), np.array([0]))
    np.testing.assert_array_equal(cpu.spmm(*one, np.array([3.0]), x), [[6.0, -3.0]])
    none = (np.array([0, 0]), np.array([], dtype=np.int64))
    np.testing.assert_array_equal(cpu.spmm(*none, None, x), [[0.0, 0.0]])
    indptr = np.zeros(5, dtype=np.int64)
    no_entries = (indptr, np.array([], dtype=np.int64), np.array([]))
    got = cpu.spmm(*no_entries, np.ones((3, 7)), out=np.full((4, 7), 9.0))
    np.testing.assert_array_equal(got, np.zeros((4, 7)))


def test_spmm_power_law_graph_with_a_hub_row():
    rng = np.random.default_rng(8)
    indptr, indices = power_law_graph(2000, rng, np.int32)
    assert np.diff(indptr).max() > 0.2 * indptr[-1]
    data = rng.standard_normal(len(indices)).astype(np.float32)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    a = sp.csr_matrix((data, indices, indptr), shape=(2000, 2000))
    for d, expected in ((data, a @ x), (None, ref.spmm(indptr, indices, None, x))):
        np.testing.assert_allclose(cpu.spmm(indptr, indices, d, x), expected, rtol=1e-5, atol=1e-4)


@pytest.fixture
def many_chunks(monkeypatch):
    """Run even small problems on every thread, in many chunks (they run on one thread otherwise)."""
    monkeypatch.setattr(cpu, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(cpu, "_CHUNKS_PER_THREAD", 64)


@pytest.mark.parametrize("index_dtype, dtype", CASES)
def test_parallel_chunks_give_the_single_thread_result(many_chunks, index_dtype, dtype):
    rng = np.random.default_rng(19)
    indptr, indices = power_law_graph(1500, rng, index_dtype)
    data = rng.standard_normal(len(indices)).astype(dtype)
    x = rng.standard_normal((1500, 67)).astype(dtype)
    g = rng.standard_normal((1500, 67)).astype(dtype)
    threads = numba.get_num_threads()
    for d in (data, None):
        got = cpu.spmm(indptr, indices, d, x)
        cpu._PARALLEL_MIN_WORK = 1 << 62
        np.testing.assert_array_equal(got, cpu.spmm(indptr, indices, d, x))
        cpu._PARALLEL_MIN_WORK = 0
        np.testing.assert_allclose(got, ref.spmm(indptr, indices, d, x), rtol=tol(dtype)["rtol"],
                                   atol=50 * tol(dtype)["atol"])
    got = cpu.sddmm(indptr, indices, g, x)
    cpu._PARALLEL_MIN_WORK = 1 << 62
    np.testing.assert_array_equal(got, cpu.sddmm(indptr, indices, g, x))
    assert numba.get_num_threads() == threads  # the one-thread path restores the count


def test_row_chunks_cover_every_row_once_and_balance_entries():
    rng = np.random.default_rng(9)
    indptr, _ = power_law_graph(3000, rng)
    for n_chunks in (1, 2, 7, 16, 64):
        b = cpu._row_chunks(indptr, n_chunks)
        assert b[0] == 0 and b[-1] == 3000 and len(b) == n_chunks + 1
        assert np.all(np.diff(b) >= 0)
    indptr = np.arange(0, 4001, 4)  # 1000 rows of 4 entries
    b = cpu._row_chunks(indptr, 8)
    assert np.all(np.abs(np.diff(b) - 125) <= 1)
    assert list(cpu._row_chunks(np.array([0, 3]), 4)) == [0, 1, 1, 1, 1]


# ----------------------------------------------------------------------------------------- sddmm

@pytest.mark.parametrize("index_dtype, dtype", CASES)
@pytest.mark.parametrize("width", [1, 3, 16, 67])
def test_sddmm_matches_reference_on_random_csr(index_dtype, dtype, width):
    rng = np.random.default_rng(10 + width)
    indptr, indices, _ = random_csr(80, 60, 0.1, rng, index_dtype)
    a = rng.standard_normal((80, width)).astype(dtype)
    b = rng.standard_normal((60, width)).astype(dtype)
    got = cpu.sddmm(indptr, indices, a, b)
    assert got.dtype == dtype and got.shape == (indptr[-1],)
    # A float32 dot of length F carries about sqrt(F) ulps of its terms' magnitude.
    scale = np.abs(a)[np.repeat(np.arange(80), np.diff(indptr))] @ np.ones(width) * np.abs(b).max()
    np.testing.assert_allclose(got, ref.sddmm(indptr, indices, a, b), rtol=tol(dtype)["rtol"],
                               atol=tol(dtype)["atol"] * scale.max())


def test_sddmm_is_the_gradient_of_spmm_with_respect_to_the_values():
    rng = np.random.default_rng(11)
    indptr, indices, _ = random_csr(25, 20, 0.2, rng)
    x = rng.standard_normal((20, 6))
    grad_y = rng.standard_normal((25, 6))
    got = cpu.sddmm(indptr, indices, grad_y, x)
    dense_grad = grad_y @ x.T  # dL/dA for L = sum(grad_y * (A @ x))
    rows = np.repeat(np.arange(25), np.diff(indptr))
    np.testing.assert_allclose(got, dense_grad[rows, indices], **tol(np.float64))


def test_sddmm_writes_into_given_out_and_handles_edges():
    indptr, indices = empty_rows_graph(np.int32)
    rng = np.random.default_rng(12)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    out = np.full(len(indices), np.nan, dtype=np.float32)
    assert cpu.sddmm(indptr, indices, a, b, out=out) is out
    np.testing.assert_allclose(out, ref.sddmm(indptr, indices, a, b), **tol(np.float32))
    empty = cpu.sddmm(np.zeros(4, dtype=np.int64), np.array([], dtype=np.int32), a[:3], b)
    assert empty.shape == (0,)
    single = cpu.sddmm(np.array([0, 1]), np.array([0]), np.array([[2.0, 3.0]]), np.array([[4.0, 5.0]]))
    np.testing.assert_array_equal(single, [23.0])
    inf_free = cpu.sddmm(np.array([0, 1]), np.array([0]), np.zeros((1, 0)), np.zeros((1, 0)))
    np.testing.assert_array_equal(inf_free, [0.0])


# --------------------------------------------------------------------------------- csr_transpose

def assert_same_transpose(got, expected):
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("index_dtype, dtype", CASES)
@pytest.mark.parametrize("with_data", [True, False])
def test_csr_transpose_matches_reference_and_scipy(index_dtype, dtype, with_data):
    rng = np.random.default_rng(13)
    indptr, indices, data = random_csr(70, 90, 0.07, rng, index_dtype, dtype)
    d = data if with_data else None
    got = cpu.csr_transpose(indptr, indices, d, 90)
    assert_same_transpose(got, ref.csr_transpose(indptr, indices, d, 90))
    at = sp.csr_matrix((data, indices, indptr), shape=(70, 90)).T.tocsr()
    at.sort_indices()
    np.testing.assert_array_equal(got[0], at.indptr)
    np.testing.assert_array_equal(got[1], at.indices)
    np.testing.assert_array_equal(data[got[3]], at.data)


def test_csr_transpose_twice_is_the_identity_and_is_stable_on_duplicates():
    rng = np.random.default_rng(14)
    indptr, indices, data = random_csr(40, 40, 0.15, rng)
    t = cpu.csr_transpose(indptr, indices, data, 40)
    tt = cpu.csr_transpose(t[0], t[1], t[2], 40)
    np.testing.assert_array_equal(tt[0], indptr)
    np.testing.assert_array_equal(tt[1], indices)
    np.testing.assert_array_equal(tt[2], data)
    # Duplicate entries keep their order (stable), as the reference's argsort does.
    dup = (np.array([0, 3, 4]), np.array([1, 1, 0, 1]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert_same_transpose(cpu.csr_transpose(*dup, 2), ref.csr_transpose(*dup, 2))


def test_csr_transpose_edges():
    indptr, indices = empty_rows_graph(np.int32)
    assert_same_transpose(cpu.csr_transpose(indptr, indices, None, 6),
                          ref.csr_transpose(indptr, indices, None, 6))
    # More columns than the largest index: trailing empty rows in A^T.
    got = cpu.csr_transpose(np.array([0, 1]), np.array([0]), np.array([5.0]), 3)
    assert_same_transpose(got, (np.array([0, 1, 1, 1]), np.array([0]), np.array([5.0]), np.array([0])))
    empty = cpu.csr_transpose(np.zeros(3, dtype=np.int64), np.array([], dtype=np.int64), np.array([]), 4)
    assert_same_transpose(empty, ref.csr_transpose(np.zeros(3, dtype=np.int64), np.array([], dtype=np.int64),
                                                   np.array([]), 4))


# -------------------------------------------------------------------------------------- gcn_norm

def symmetric_graph(n, density, rng, index_dtype, loops=False):
    a = sp.random(n, n, density=density, format="csr", random_state=rng)
    a = ((a + a.T) > 0).astype(np.float64).tocsr()
    if not loops:
        a.setdiag(0)
        a.eliminate_zeros()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(index_dtype)


def assert_same_gcn_norm(got, expected, dtype):
    assert got[0].dtype == np.int64 and got[1].dtype == expected[1].dtype and got[2].dtype == dtype
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)


@pytest.mark.parametrize("index_dtype, dtype", CASES)
@pytest.mark.parametrize("with_data", [True, False])
def test_gcn_norm_matches_reference_on_sorted_input(index_dtype, dtype, with_data):
    rng = np.random.default_rng(15)
    indptr, indices = symmetric_graph(60, 0.05, rng, index_dtype)
    data = rng.random(len(indices)) + 0.5 if with_data else None
    got = cpu.gcn_norm(indptr, indices, data, 60, dtype=dtype)
    assert_same_gcn_norm(got, ref.gcn_norm(indptr, indices, data, 60, dtype=dtype), dtype)


@pytest.mark.parametrize("add_self_loops, fill_value", [(False, 1.0), (True, 2.0), (True, 0.0)])
def test_gcn_norm_options_match_reference(add_self_loops, fill_value):
    rng = np.random.default_rng(16)
    indptr, indices = symmetric_graph(40, 0.08, rng, np.int64)
    data = rng.random(len(indices)).astype(np.float32)  # cast to the output dtype first
    kw = dict(add_self_loops=add_self_loops, fill_value=fill_value, dtype=np.float64)
    got = cpu.gcn_norm(indptr, indices, data, 40, **kw)
    assert_same_gcn_norm(got, ref.gcn_norm(indptr, indices, data, 40, **kw), np.float64)
    assert np.all(np.isfinite(got[2]))


def test_gcn_norm_keeps_existing_self_loops_and_adds_the_missing_ones():
    indptr, indices = empty_rows_graph(np.int64)  # nodes 2 and 4 have loops
    data = np.arange(1, len(indices) + 1, dtype=np.float64)
    got = cpu.gcn_norm(indptr, indices, data, 6, dtype=np.float64)
    assert_same_gcn_norm(got, ref.gcn_norm(indptr, indices, data, 6, dtype=np.float64), np.float64)
    p = dense(*got, 6)
    a = dense(indptr, indices, data, 6)
    a_hat = a + np.diag([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])  # no second loop on nodes 2 and 4
    deg = a_hat.sum(axis=1)
    np.testing.assert_allclose(p, a_hat / np.sqrt(np.outer(deg, deg)), rtol=1e-14)
    assert got[0][-1] == len(indices) + 4


def test_gcn_norm_zero_degree_gives_a_zero_row_without_nan():
    indptr, indices = empty_rows_graph(np.int32)
    got = cpu.gcn_norm(indptr, indices, None, 6, add_self_loops=False)
    assert np.all(np.isfinite(got[2]))
    p = dense(*got, 6)
    assert np.all(p[[0, 3, 5]] == 0)
    # Weights cancelling to a zero row sum, and a negative one: zero rows there too.
    w = cpu.gcn_norm(np.array([0, 2, 3]), np.array([0, 1, 1]), np.array([1.0, -1.0, -2.0]), 2,
                     add_self_loops=False, dtype=np.float64)
    np.testing.assert_array_equal(w[2], [0.0, 0.0, 0.0])


def test_gcn_norm_single_node_and_no_entries():
    got = cpu.gcn_norm(np.array([0, 0]), np.array([], dtype=np.int32), None, 1)
    assert_same_gcn_norm(got, (np.array([0, 1]), np.array([0], dtype=np.int32), np.array([1.0])), np.float32)
    no_entries = (np.zeros(4, dtype=np.int64), np.array([], dtype=np.int32), None)
    got = cpu.gcn_norm(*no_entries, 3, fill_value=4.0)
    np.testing.assert_allclose(dense(*got, 3), np.eye(3))
    got = cpu.gcn_norm(*no_entries, 3, add_self_loops=False)
    assert got[0].tolist() == [0, 0, 0, 0] and len(got[1]) == 0 and len(got[2]) == 0


@pytest.mark.parametrize("index_dtype, dtype", CASES)
def test_gcn_norm_unsorted_columns_give_the_same_matrix(index_dtype, dtype):
    rng = np.random.default_rng(17)
    indptr, indices = symmetric_graph(50, 0.1, rng, index_dtype)
    data = (rng.random(len(indices)) + 0.1).astype(dtype)
    perm = np.concatenate([lo + rng.permutation(hi - lo) for lo, hi in itertools.pairwise(indptr)])
    got = cpu.gcn_norm(indptr, indices[perm], data[perm], 50, dtype=dtype)
    expected = ref.gcn_norm(indptr, indices, data, 50, dtype=dtype)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_allclose(dense(*got, 50), dense(*expected, 50),
                               rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_gcn_norm_pads_rows_missing_from_a_short_indptr():
    got = cpu.gcn_norm(np.array([0, 1]), np.array([0]), None, 3, dtype=np.float64)
    np.testing.assert_allclose(dense(*got, 3), np.eye(3))


# ---------------------------------------------------------------------------------- properties

@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 9), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_kernels_agree_with_reference_on_small_random_matrices(n_rows, n_cols, width, density, seed):
    rng = np.random.default_rng(seed)
    indptr, indices, data = random_csr(n_rows, n_cols, density, rng)
    x = rng.standard_normal((n_cols, width))
    g = rng.standard_normal((n_rows, width))
    np.testing.assert_allclose(cpu.spmm(indptr, indices, data, x), ref.spmm(indptr, indices, data, x),
                               **tol(np.float64))
    np.testing.assert_allclose(cpu.sddmm(indptr, indices, g, x), ref.sddmm(indptr, indices, g, x),
                               **tol(np.float64))
    assert_same_transpose(cpu.csr_transpose(indptr, indices, data, n_cols),
                          ref.csr_transpose(indptr, indices, data, n_cols))
    if n_rows == n_cols:
        assert_same_gcn_norm(cpu.gcn_norm(indptr, indices, data, n_rows, dtype=np.float64),
                             ref.gcn_norm(indptr, indices, data, n_rows, dtype=np.float64), np.float64)


def test_cached_kernels_close_over_plain_values_only():
    """Numba's disk cache keys a closure by its pickled cell contents; a captured jitted function
    pickles differently in every process, so such a kernel would be recompiled by every new process."""
    from tapegrad.kernels.cpu import recurrent

    plain = (int, float, bool, str, type(None))
    kernels = list(cpu._SPMM_KERNELS.values())
    kernels += [v for m in (cpu, recurrent) for v in vars(m).values()
                if isinstance(v, numba.core.dispatcher.Dispatcher)]
    assert len(kernels) > len(cpu._SPMM_KERNELS)
    for k in kernels:
        for cell in k.py_func.__closure__ or ():
            assert isinstance(cell.cell_contents, plain), (k.py_func.__qualname__, cell.cell_contents)


def test_large_outputs_reuse_pooled_memory_only_once_nothing_uses_it(monkeypatch):
    """Outputs past _POOL_MIN_BYTES come from reused mappings: never one an array (or a view of it) still
    uses, and spmm writes every element of one that held an earlier result."""
    monkeypatch.setattr(cpu, "_POOL_MIN_BYTES", 1 << 12)
    monkeypatch.setattr(cpu, "_pool", {})
    shape = (64, 32)  # 8 KB of float32
    a = cpu._empty_aligned(shape, np.float32)
    addr = a.ctypes.data
    v = a[3:5]
    del a
    b = cpu._empty_aligned(shape, np.float32)  # v still uses the first mapping
    assert b.ctypes.data != addr
    b_addr = b.ctypes.data
    del v, b
    c = cpu._empty_aligned(shape, np.float32)
    assert c.ctypes.data in (addr, b_addr) and c.flags.writeable and c.flags.c_contiguous
    c[...] = np.nan  # an earlier result's garbage
    c_addr = c.ctypes.data
    del c
    rng = np.random.default_rng(0)
    A = sp.random(64, 40, density=0.1, format="lil", random_state=1, dtype=np.float32)
    A[[0, 7, 63]] = 0  # empty rows must come out as zeros, not the garbage
    A = A.tocsr()
    A.eliminate_zeros()
    x = rng.standard_normal((40, 32)).astype(np.float32)
    y = cpu.spmm(A.indptr, A.indices, A.data, x)
    assert y.ctypes.data in (addr, b_addr, c_addr)
    np.testing.assert_allclose(y, A @ x, rtol=1e-5, atol=1e-6)
    cpu.release_pool()


# ------------------------------------------------------- small index dtypes: row ids must never wrap

@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8, np.int16])
def test_csr_transpose_kernel_and_reference_give_row_ids_a_dtype_that_holds_them(index_dtype):
    n = int(np.iinfo(index_dtype).max) + 60  # more rows than the index dtype holds
    rng = np.random.default_rng(21)
    indptr, indices = np.arange(n + 1), rng.integers(0, 4, n).astype(index_dtype)
    data = rng.standard_normal(n)
    got = cpu.csr_transpose(indptr, indices, data, 4)
    expect = ref.csr_transpose(indptr, indices, data, 4)
    assert got[1].dtype == expect[1].dtype == np.int32
    assert_same_transpose(got, expect)
    at = sp.csr_matrix((data, indices.astype(np.int64), indptr), shape=(n, 4)).T.tocsr()
    at.sort_indices()
    np.testing.assert_array_equal(got[1], at.indices)


def test_gcn_norm_kernel_and_reference_give_added_loops_a_dtype_that_holds_them():
    n = 300
    indptr = np.arange(n + 1)
    indices = (np.arange(n) % 200).astype(np.uint8)  # column ids fit uint8, loop ids up to 299 do not
    got = cpu.gcn_norm(indptr, indices, None, n, dtype=np.float64)
    expect = ref.gcn_norm(indptr, indices, None, n, dtype=np.float64)
    assert got[1].dtype == expect[1].dtype == np.int32
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_array_equal(got[1], expect[1])
    np.testing.assert_allclose(got[2], expect[2], rtol=1e-12)
    a = np.zeros((n, n))
    a[np.arange(n), indices.astype(np.int64)] = 1
    np.fill_diagonal(a, np.where(np.diag(a) != 0, np.diag(a), 1.0))
    dis = 1 / np.sqrt(a.sum(1))
    p = sp.csr_matrix((got[2], got[1], got[0]), shape=(n, n)).toarray()
    np.testing.assert_allclose(p, dis[:, None] * a * dis[None, :], rtol=1e-12)
