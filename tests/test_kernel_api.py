"""The public kernel wrappers in tapegrad.kernels: results against the NumPy references, and input
validation that happens before any jitted kernel runs."""
import numpy as np
import pytest
import scipy.sparse as sp

from tapegrad import kernels
from tapegrad.kernels import reference, registry


def csr(n_rows=6, n_cols=5, density=0.4, seed=0, index_dtype=np.int64, dtype=np.float64):
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=dtype)
    return m.indptr.astype(index_dtype), m.indices.astype(index_dtype), m.data


def rand(*shape, seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.fixture
def no_kernel_calls(monkeypatch):
    """Fail the test if a kernel is dispatched: validation must reject the input first."""
    calls = []

    def spy(name, backend, *args, **kwargs):
        calls.append(name)
        raise AssertionError(f"kernel {name!r} ran on invalid input")
    monkeypatch.setattr(registry, "call", spy)
    return calls


# ---- results ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_spmm_matches_reference(index_dtype, dtype):
    indptr, indices, data = csr(index_dtype=index_dtype, dtype=dtype)
    x = rand(5, 3, dtype=dtype)
    expect = reference.spmm(indptr, indices, data, x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(kernels.spmm(indptr, indices, data, x), expect, rtol=tol, atol=tol)
    np.testing.assert_allclose(kernels.spmm(indptr, indices, None, x),
                               reference.spmm(indptr, indices, None, x), rtol=tol, atol=tol)
    out = np.full((6, 3), np.nan, dtype=dtype)
    assert kernels.spmm(indptr, indices, data, x, out=out) is out
    np.testing.assert_allclose(out, expect, rtol=tol, atol=tol)


def test_spmm_with_empty_rows_one_node_and_no_features():
    indptr = np.array([0, 0, 2, 2])
    indices = np.array([0, 2])
    x = rand(3, 4)
    np.testing.assert_allclose(kernels.spmm(indptr, indices, None, x), reference.spmm(indptr, indices, None, x))
    np.testing.assert_allclose(kernels.spmm(np.array([0, 1]), np.array([0]), np.array([2.0]), rand(1, 2)),
                               2 * rand(1, 2))
    assert kernels.spmm(indptr, indices, None, np.zeros((3, 0))).shape == (3, 0)


def test_sddmm_matches_reference():
    indptr, indices, _ = csr()
    a, b = rand(6, 4), rand(5, 4, seed=2)
    np.testing.assert_allclose(kernels.sddmm(indptr, indices, a, b), reference.sddmm(indptr, indices, a, b))
    out = np.empty(len(indices))
    kernels.sddmm(indptr, indices, a, b, out=out)
    np.testing.assert_allclose(out, reference.sddmm(indptr, indices, a, b))


def test_csr_transpose_matches_reference():
    indptr, indices, data = csr(index_dtype=np.int32)
    got = kernels.csr_transpose(indptr, indices, data, 5)
    expect = reference.csr_transpose(indptr, indices, data, 5)
    for g, e in zip(got, expect):
        np.testing.assert_array_equal(g, e)
    assert got[1].dtype == np.int32
    assert kernels.csr_transpose(indptr, indices, None, 5)[2] is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gcn_norm_matches_reference(dtype):
    indptr, indices, data = csr(6, 6, seed=3)
    got = kernels.gcn_norm(indptr, indices, data, 6, dtype=dtype)
    expect = reference.gcn_norm(indptr, indices, data, 6, dtype=dtype)
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_array_equal(got[1], expect[1])
    assert got[2].dtype == dtype
    np.testing.assert_allclose(got[2], expect[2], rtol=1e-6)


def test_recurrent_kernels_match_reference():
    z, c_prev = rand(3, 8), rand(3, 2, seed=2)
    got = kernels.lstm_cell_fwd(z, c_prev)
    expect = reference.lstm_cell_fwd(z, c_prev)
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    gates, c, _ = expect
    gh, gc = rand(3, 2, seed=3), rand(3, 2, seed=4)
    for g, e in zip(kernels.lstm_cell_bwd(gates, c_prev, c, gh, gc),
                    reference.lstm_cell_bwd(gates, c_prev, c, gh, gc)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    for relu in (False, True):
        h = kernels.rnn_cell_fwd(z, relu=relu)
        np.testing.assert_allclose(h, reference.rnn_cell_fwd(z, relu=relu), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(kernels.rnn_cell_bwd(h, z, relu=relu),
                                   reference.rnn_cell_bwd(h, z, relu=relu), rtol=1e-12, atol=1e-12)


# ---- validation ---------------------------------------------------------------------------------------------

IP, IX, DATA = csr()
X = rand(5, 3)


def ro(a):
    a = a.copy()
    a.flags.writeable = False
    return a


SPMM_BAD = [
    ("x_list", dict(x=X.tolist()), TypeError, "x must be a numpy or cupy array"),
    ("x_int", dict(x=X.astype(np.int64)), TypeError, "x must be float32 or float64"),
    ("x_float16", dict(x=X.astype(np.float16)), TypeError, "x must be float32 or float64"),
    ("x_1d", dict(x=X[:, 0].copy()), ValueError, "x must be 2-D"),
    ("x_strided", dict(x=np.asfortranarray(X)), ValueError, "x must be C-contiguous"),
    ("x_too_few_rows", dict(x=X[:3].copy()), ValueError, "x has too few rows: 3.*at least 5 rows"),
    ("indptr_float", dict(indptr=IP.astype(np.float64)), TypeError, "indptr must hold integers"),
    ("indptr_2d", dict(indptr=IP[None]), ValueError, "indptr must be 1-D"),
    ("indptr_bad_start", dict(indptr=IP + 1), ValueError, "indptr must start at 0"),
    ("indptr_decreasing", dict(indptr=np.array([0, 3, 2, 5, 5, 5, len(IX)])), ValueError, "non-decreasing"),
    ("indptr_bad_end", dict(indptr=np.append(IP[:-1], len(IX) + 1)), ValueError, "end at nnz"),
    ("indptr_strided", dict(indptr=np.repeat(IP, 2)[::2]), ValueError, "indptr must be C-contiguous"),
    ("indices_negative", dict(indices=-IX - 1), ValueError, "non-negative"),
    ("indices_strided", dict(indices=np.repeat(IX, 2)[::2]), ValueError, "indices must be C-contiguous"),
    ("data_int", dict(data=DATA.astype(np.int64)), TypeError, "data must be float32 or float64"),
    ("data_float16", dict(data=DATA.astype(np.float16)), TypeError, "data must be float32 or float64"),
    ("data_wrong_dtype", dict(data=DATA.astype(np.float32)), TypeError, "data has dtype float32"),
    ("data_wrong_length", dict(data=DATA[:-1].copy()), ValueError, "data must have length"),
    ("data_strided", dict(data=np.repeat(DATA, 2)[::2]), ValueError, "data must be C-contiguous"),
    ("out_shape", dict(out=np.empty((6, 2))), ValueError, "out must have shape"),
    ("out_dtype", dict(out=np.empty((6, 3), np.float32)), TypeError, "out must have dtype"),
    ("out_readonly", dict(out=ro(np.empty((6, 3)))), ValueError, "out is read-only"),
    ("out_strided", dict(out=np.empty((3, 6)).T), ValueError, "out must be C-contiguous"),
    ("out_list", dict(out=[[0.0] * 3] * 6), TypeError, "out must be a numpy or cupy array"),
    ("backend_unknown", dict(backend="tpu"), ValueError, "backend"),
    ("backend_cupy_for_numpy", dict(backend="cupy"), ValueError, "cupy arrays"),
]


@pytest.mark.parametrize("bad,exc,match", [c[1:] for c in SPMM_BAD], ids=[c[0] for c in SPMM_BAD])
def test_spmm_validates_before_any_kernel(no_kernel_calls, bad, exc, match):
    args = dict(indptr=IP, indices=IX, data=DATA, x=X, out=None, backend=None)
    args.update(bad)
    with pytest.raises(exc, match=match):
        kernels.spmm(**args)
    assert no_kernel_calls == []


def test_spmm_rejects_an_out_that_overlaps_x(no_kernel_calls):
    x = rand(6, 3)  # square A so that out and x have one shape
    ip, ix, d = csr(6, 6, seed=5)
    with pytest.raises(ValueError, match="shares memory with x"):
        kernels.spmm(ip, ix, d, x, out=x)
    assert no_kernel_calls == []


SDDMM_BAD = [
    ("a_int", dict(a=np.ones((6, 4), np.int64)), TypeError, "a must be float32 or float64"),
    ("b_1d", dict(b=np.ones(5)), ValueError, "b must be 2-D"),
    ("dtype_mismatch", dict(b=rand(5, 4, dtype=np.float32)), ValueError, "one dtype"),
    ("width_mismatch", dict(b=rand(5, 3)), ValueError, "one width"),
    ("a_rows", dict(a=rand(5, 4)), ValueError, "n_rows"),
    ("b_rows", dict(b=rand(2, 4)), ValueError, "b has too few rows: 2"),
    ("a_strided", dict(a=np.asfortranarray(rand(6, 4))), ValueError, "C-contiguous"),
    ("out_shape", dict(out=np.empty(3)), ValueError, "out must have shape"),
    ("out_readonly", dict(out=ro(np.empty(len(IX)))), ValueError, "read-only"),
    ("indices_negative", dict(indices=-IX - 1), ValueError, "non-negative"),
]


@pytest.mark.parametrize("bad,exc,match", [c[1:] for c in SDDMM_BAD], ids=[c[0] for c in SDDMM_BAD])
def test_sddmm_validates_before_any_kernel(no_kernel_calls, bad, exc, match):
    args = dict(indptr=IP, indices=IX, a=rand(6, 4), b=rand(5, 4), out=None)
    args.update(bad)
    with pytest.raises(exc, match=match):
        kernels.sddmm(**args)
    assert no_kernel_calls == []


def test_sddmm_rejects_an_out_that_overlaps_an_input(no_kernel_calls):
    a = rand(6, 4)
    b = rand(5, 4)
    nnz = len(IX)
    out_in_b = b.reshape(-1)[:nnz]
    with pytest.raises(ValueError, match="shares memory with b"):
        kernels.sddmm(IP, IX, a, b, out=out_in_b)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(n_cols=0), ValueError, "n_cols"),
    (dict(n_cols=2.5), TypeError, "n_cols must be an integer"),
    (dict(n_cols=None), TypeError, "n_cols must be an integer, got None"),
    (dict(n_cols="5"), TypeError, "n_cols must be an integer"),
    (dict(n_cols=3), ValueError, "indices must be < n_cols"),
    (dict(data=DATA.astype(np.float16)), TypeError, "data"),
    (dict(data=DATA[:2].copy()), ValueError, "data must have length"),
    (dict(indices=IX.astype(np.float32)), TypeError, "indices"),
    (dict(backend="cupy"), ValueError, "cupy arrays"),
])
def test_csr_transpose_validates_before_any_kernel(no_kernel_calls, bad, exc, match):
    args = dict(indptr=IP, indices=IX, data=DATA, n_cols=5)
    args.update(bad)
    with pytest.raises(exc, match=match):
        kernels.csr_transpose(**args)


SQ_IP, SQ_IX, SQ_DATA = csr(6, 6, seed=3)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(num_nodes=0), ValueError, "num_nodes"),
    (dict(num_nodes=5), ValueError, "indptr must have length"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dtype=np.float16), TypeError, "dtype"),
    (dict(data=SQ_DATA.astype(np.int32)), TypeError, "data"),
    (dict(indptr=SQ_IP[:-1].copy()), ValueError, "indptr"),
])
def test_gcn_norm_validates_before_any_kernel(no_kernel_calls, bad, exc, match):
    args = dict(indptr=SQ_IP, indices=SQ_IX, data=SQ_DATA, num_nodes=6)
    args.update(bad)
    with pytest.raises(exc, match=match):
        kernels.gcn_norm(**args)


Z, C = rand(3, 8), rand(3, 2, seed=2)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: kernels.lstm_cell_fwd(Z[:, :7].copy(), C), ValueError, "4H"),
    (lambda: kernels.lstm_cell_fwd(Z, C[:, :1].copy()), ValueError, "c_prev must have shape"),
    (lambda: kernels.lstm_cell_fwd(Z, C.astype(np.float32)), TypeError, "c_prev has dtype"),
    (lambda: kernels.lstm_cell_fwd(Z.astype(np.int64), C), TypeError, "z must be float32"),
    (lambda: kernels.lstm_cell_fwd(np.asfortranarray(Z), C), ValueError, "z must be C-contiguous"),
    (lambda: kernels.lstm_cell_fwd(Z, C, h=ro(np.empty((3, 2)))), ValueError, "h is read-only"),
    (lambda: kernels.lstm_cell_fwd(Z, C, c=np.empty((3, 3))), ValueError, "c must have shape"),
    (lambda: kernels.lstm_cell_fwd(Z, C, gates=np.empty((8, 3)).T), ValueError, "gates must be C-contiguous"),
    (lambda: kernels.lstm_cell_bwd(Z[:, :6].copy(), rand(3, 1), rand(3, 1), rand(3, 1), rand(3, 1)),
     ValueError, "4H"),
    (lambda: kernels.lstm_cell_bwd(Z, C, C, C, C[:2].copy()), ValueError, "grad_c must have shape"),
    (lambda: kernels.lstm_cell_bwd(Z, C, C, C, C, grad_z=np.empty((3, 8), np.float32)), TypeError, "grad_z"),
    (lambda: kernels.rnn_cell_fwd(Z[0].copy()), ValueError, "z must be 2-D"),
    (lambda: kernels.rnn_cell_fwd(Z, h=np.empty((3, 7))), ValueError, "h must have shape"),
    (lambda: kernels.rnn_cell_bwd(C, C.astype(np.float32)), TypeError, "grad_h has dtype"),
    (lambda: kernels.rnn_cell_bwd(C, C, grad_z=ro(np.empty((3, 2)))), ValueError, "read-only"),
    (lambda: kernels.rnn_cell_fwd(Z, backend="cupy"), ValueError, "cupy arrays"),
])
def test_recurrent_wrappers_validate_before_any_kernel(no_kernel_calls, call, exc, match):
    with pytest.raises(exc, match=match):
        call()
    assert no_kernel_calls == []


def test_engine_and_wrappers_dispatch_through_the_registry(monkeypatch):
    seen = []
    real = registry.call

    def spy(name, backend, *args, **kwargs):
        seen.append((name, backend))
        return real(name, backend, *args, **kwargs)
    monkeypatch.setattr(registry, "call", spy)
    kernels.spmm(IP, IX, DATA, X)
    assert seen == [("spmm", "cpu")]


def test_gpu_backend_choice_is_validated():
    with pytest.raises(ValueError):
        kernels.set_gpu_backend("cpu")
    assert kernels.gpu_backend() in ("cupy", "numba-cuda")


# ---- audit fixes ----------------------------------------------------------------------------------------------

def _tall(index_dtype, n, n_cols=3, seed=0):
    """n rows of one entry each, column ids small enough for index_dtype, row ids beyond it."""
    rng = np.random.default_rng(seed)
    return np.arange(n + 1), rng.integers(0, n_cols, n).astype(index_dtype), rng.standard_normal(n)


@pytest.mark.parametrize("index_dtype,n,wide", [(np.int8, 200, np.int32), (np.uint8, 300, np.int32),
                                                (np.int16, 40000, np.int32), (np.uint16, 70000, np.int32)])
def test_csr_transpose_widens_small_indices_before_any_backend_sees_them(monkeypatch, index_dtype, n, wide):
    ip, ix, data = _tall(index_dtype, n)
    passed = []
    real = registry.call

    def spy(name, backend, *args, **kwargs):
        passed.append(args[1].dtype)  # the indices the backend gets: every backend widens alike
        return real(name, backend, *args, **kwargs)
    monkeypatch.setattr(registry, "call", spy)
    indptr_t, indices_t, data_t, perm = kernels.csr_transpose(ip, ix, data, 3)
    assert passed == [np.dtype(wide)] and indices_t.dtype == wide
    at = sp.csr_matrix((data, ix.astype(np.int64), ip), shape=(n, 3)).T.tocsr()
    at.sort_indices()
    np.testing.assert_array_equal(indptr_t, at.indptr)
    np.testing.assert_array_equal(indices_t, at.indices)  # row ids up to n - 1, none wrapped
    np.testing.assert_array_equal(data_t, at.data)
    np.testing.assert_array_equal(data[perm], data_t)


def test_csr_transpose_keeps_indices_that_hold_every_row_id(monkeypatch):
    ip, ix, data = _tall(np.int8, 128)  # row ids up to 127 fit int8
    assert kernels.csr_transpose(ip, ix, data, 3)[1].dtype == np.int8


def test_gcn_norm_added_self_loops_never_wrap_small_indices():
    # 200 nodes, int8 column ids below 128, loops added on nodes up to 199
    n = 200
    rows = np.arange(n)
    cols = (rows * 7) % 100
    m = sp.csr_matrix((np.ones(n), (rows, cols)), shape=(n, n))
    m.sort_indices()
    ip, ix = m.indptr.astype(np.int64), m.indices.astype(np.int8)
    got = kernels.gcn_norm(ip, ix, None, n, dtype=np.float64)
    assert got[1].dtype == np.int32 and int(got[1].min()) >= 0
    expect = reference.gcn_norm(ip, ix.astype(np.int64), None, n, dtype=np.float64)
    np.testing.assert_array_equal(got[0], expect[0])
    np.testing.assert_array_equal(got[1], expect[1])
    np.testing.assert_allclose(got[2], expect[2], rtol=1e-12)
    # without added loops no new id appears: the dtype stays
    assert kernels.gcn_norm(ip, ix, None, n, add_self_loops=False)[1].dtype == np.int8


@pytest.mark.parametrize("num_nodes,exc,match", [
    (None, TypeError, "num_nodes must be an integer, got None"),
    (6.0, TypeError, "num_nodes must be an integer"),
    ("6", TypeError, "num_nodes must be an integer"),
    (0, ValueError, "num_nodes must be a positive integer"),
])
def test_gcn_norm_num_nodes_must_be_an_integer(no_kernel_calls, num_nodes, exc, match):
    with pytest.raises(exc, match=match):
        kernels.gcn_norm(SQ_IP, SQ_IX, SQ_DATA, num_nodes)


@pytest.mark.parametrize("outs,names", [
    (lambda b: dict(c=b[0], h=b[0]), "c and h"),
    (lambda b: dict(gates=b[1], c=b[1].reshape(-1)[6:12].reshape(3, 2)), "gates and c"),
    (lambda b: dict(gates=b[1], h=b[1].reshape(-1)[:6].reshape(3, 2)), "gates and h"),
])
def test_lstm_cell_fwd_refuses_outputs_that_share_memory(no_kernel_calls, outs, names):
    bufs = (np.empty((3, 2)), np.empty((3, 8)))
    with pytest.raises(ValueError, match=f"outputs {names} share memory"):
        kernels.lstm_cell_fwd(Z, C, **outs(bufs))


def test_lstm_cell_bwd_refuses_outputs_that_share_memory(no_kernel_calls):
    gz = np.empty((3, 8))
    with pytest.raises(ValueError, match="outputs grad_z and grad_c_prev share memory"):
        kernels.lstm_cell_bwd(Z, C, C, C, C, grad_z=gz, grad_c_prev=gz.reshape(-1)[2:8].reshape(3, 2))


def test_lstm_cell_fwd_still_allows_outputs_over_its_inputs():
    z, c_prev = Z.copy(), C.copy()
    expect = reference.lstm_cell_fwd(Z, C)
    h = np.empty((3, 2))
    got = kernels.lstm_cell_fwd(z, c_prev, gates=z, c=c_prev, h=h)  # in place over z and c_prev
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
