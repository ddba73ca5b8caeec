"""Property-based fuzzing of the public API: malformed input gets a clear ValueError/TypeError, valid input
matches the NumPy reference. About 2,400 generated cases in CI; TAPEGRAD_FUZZ=long multiplies that by 20."""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tapegrad as tg  # noqa: E402
from tapegrad.kernels import reference as ref  # noqa: E402

SCALE = 20 if os.environ.get("TAPEGRAD_FUZZ") == "long" else 1
CASES = 300 * SCALE
fuzz = settings(max_examples=CASES, deadline=None, derandomize=os.environ.get("TAPEGRAD_FUZZ") != "long")

CLEAR = (ValueError, TypeError)


@st.composite
def csr_parts(draw, allow_bad=True):
    """A CSR pattern, sometimes broken in one of the ways users break them."""
    n_rows = draw(st.integers(1, 7))
    n_cols = draw(st.integers(1, 7))
    counts = draw(st.lists(st.integers(0, n_cols), min_size=n_rows, max_size=n_rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(counts)
    nnz = int(indptr[-1])
    idx_dtype = draw(st.sampled_from([np.int32, np.int64]))
    indices = np.array(draw(st.lists(st.integers(0, n_cols - 1), min_size=nnz, max_size=nnz)), dtype=idx_dtype)
    data = draw(st.one_of(st.none(), st.just("ones")))
    data = None if data is None else np.asarray(draw(st.lists(
        st.floats(-3, 3, allow_nan=False, width=32), min_size=nnz, max_size=nnz)), dtype=np.float32)
    bad = draw(st.sampled_from([None] * 4 + [
        "indptr_start", "indptr_decreasing", "indptr_short", "indptr_end", "index_negative",
        "index_range", "data_length", "data_float16", "data_int", "indptr_float"])) if allow_bad else None
    if bad == "indptr_start":
        indptr = indptr + 1
    elif bad == "indptr_decreasing" and n_rows >= 2 and nnz > 0:
        k = int(np.argmax(np.diff(indptr) > 0))
        indptr = indptr.copy()
        indptr[k + 1] = indptr[k] - 1 if indptr[k] > 0 else indptr[-1] + 1
    elif bad == "indptr_short" and counts[-1] > 0:  # with an empty last row it is still a valid CSR
        indptr = indptr[:-1]
    elif bad == "indptr_end":
        indptr = indptr.copy()
        indptr[-1] += 1
    elif bad == "index_negative" and nnz:
        indices = indices.copy()
        indices[draw(st.integers(0, nnz - 1))] = -1
    elif bad == "index_range" and nnz:
        indices = indices.copy()
        indices[draw(st.integers(0, nnz - 1))] = n_cols + draw(st.integers(0, 5))
    elif bad == "data_length":
        data = np.ones(nnz + 1, dtype=np.float32)
    elif bad == "data_float16":
        data = np.ones(nnz, dtype=np.float16)
    elif bad == "data_int":
        data = np.ones(nnz, dtype=np.int64)
    elif bad == "indptr_float":
        indptr = indptr.astype(np.float64)
    else:
        bad = None
    return indptr, indices, data, (n_rows, n_cols), bad


@fuzz
@given(csr_parts())
def test_csr_construction_rejects_malformed_and_keeps_valid(parts):
    indptr, indices, data, shape, bad = parts
    if bad is None:
        A = tg.CSR(indptr, indices, data, shape)
        dense = np.zeros(shape, dtype=np.float64)
        np.add.at(dense, (np.repeat(np.arange(shape[0]), np.diff(indptr)), indices),
                  1.0 if data is None else data.astype(np.float64))
        # duplicates are summed in float32 by scipy: cancellation needs an absolute tolerance
        np.testing.assert_allclose(A.toarray(), dense, rtol=1e-6, atol=1e-5)
    else:
        with pytest.raises(CLEAR):
            tg.CSR(indptr, indices, data, shape)


@fuzz
@given(csr_parts(), st.integers(1, 5), st.sampled_from([np.float32, np.float64]),
       st.sampled_from([None, "ok", "float16_x", "int_x", "noncontig_x", "bad_rows_x", "readonly_out",
                        "bad_out_shape", "bad_out_dtype", "x_1d"]))
def test_kernel_spmm_matches_reference_or_raises_clearly(parts, width, dtype, x_case):
    indptr, indices, data, (n_rows, n_cols), bad = parts
    rng = np.random.default_rng(n_rows * 31 + width)
    x = rng.standard_normal((n_cols, width)).astype(dtype)
    if data is not None and data.dtype.kind == "f" and data.dtype.itemsize >= 4:
        data = data.astype(dtype)
    out = None
    if x_case == "float16_x":
        x = x.astype(np.float16)
    elif x_case == "int_x":
        x = x.astype(np.int32)
    elif x_case == "noncontig_x":
        x = np.asfortranarray(np.repeat(x, 2, axis=1))[:, ::2]
    elif x_case == "bad_rows_x":
        # the raw kernel reads the column count off x: too few rows for the largest column id is the error
        top = int(indices.max()) if len(indices) and indices.dtype.kind in "iu" else -1
        if top > 0:
            x = rng.standard_normal((top, width)).astype(dtype)
        else:
            x_case = "ok"
    elif x_case == "x_1d":
        x = x[:, 0].copy()
    elif x_case == "readonly_out":
        out = np.empty((n_rows, width), dtype=dtype)
        out.flags.writeable = False
    elif x_case == "bad_out_shape":
        out = np.empty((n_rows + 1, width), dtype=dtype)
    elif x_case == "bad_out_dtype":
        out = np.empty((n_rows, width), dtype=np.float64 if dtype == np.float32 else np.float32)
    malformed = bad is not None or x_case not in (None, "ok")
    if x_case == "noncontig_x" and x.flags.c_contiguous:
        malformed = bad is not None
    if not malformed:
        y = tg.kernels.spmm(indptr, indices, data, x)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, ref.spmm(indptr, indices, data, x), rtol=tol, atol=tol)
    else:
        with pytest.raises(CLEAR):
            tg.kernels.spmm(indptr, indices, data, x, out)


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 8))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=3 * n))
    ei = np.array(edges, dtype=np.int64).T.reshape(2, -1)
    weighted = draw(st.booleans())
    w = None
    if weighted and ei.shape[1]:
        w = np.asarray(draw(st.lists(st.floats(0.1, 3.0), min_size=ei.shape[1], max_size=ei.shape[1])))
    return n, ei, w


@fuzz
@given(graphs(), st.booleans(), st.booleans())
def test_gcn_norm_matches_reference_and_stays_finite(graph, add_loops, improved):
    n, ei, w = graph
    A = tg.CSR.from_edge_index(ei, n, None if w is None else w.astype(np.float64))
    P = tg.gcn_norm(A, add_self_loops=add_loops, improved=improved, dtype=np.float64)
    expect = ref.gcn_norm(A.indptr, A.indices, A.data, n, add_loops, 2.0 if improved else 1.0, np.float64)
    dense_ref = tg.CSR(*expect, shape=(n, n)).toarray()
    assert np.isfinite(P.toarray()).all()
    np.testing.assert_allclose(P.toarray(), dense_ref, rtol=1e-12, atol=1e-12)


@fuzz
@given(st.lists(st.integers(1, 3), min_size=0, max_size=3), st.lists(st.integers(1, 3), min_size=0, max_size=3),
       st.sampled_from(["add", "sub", "mul", "div"]))
def test_broadcasting_ops_match_numpy_or_raise_clearly(shape_a, shape_b, op):
    rng = np.random.default_rng(len(shape_a) * 7 + len(shape_b))
    a = rng.uniform(0.5, 2.0, shape_a)
    b = rng.uniform(0.5, 2.0, shape_b)
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    try:
        expect = fn(a, b)
    except ValueError:
        with pytest.raises(ValueError):
            getattr(tg, op)(tg.tensor(a, requires_grad=True), tg.tensor(b))
        return
    ta, tb = tg.tensor(a, requires_grad=True), tg.tensor(b, requires_grad=True)
    out = getattr(tg, op)(ta, tb)
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-12)
    out.sum().backward()
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape


@fuzz
@given(st.integers(1, 6), st.integers(1, 5), st.lists(st.integers(-3, 8), min_size=0, max_size=8),
       st.one_of(st.none(), st.lists(st.integers(-8, 8), max_size=6)))
def test_cross_entropy_checks_targets_and_index(n, c, targets, index):
    rng = np.random.default_rng(n * 10 + c)
    logits = tg.tensor(rng.standard_normal((n, c)), requires_grad=True)
    y = np.array(targets, dtype=np.int64)
    idx = None if index is None else np.array(index, dtype=np.int64)
    rows = np.arange(n) if idx is None else idx
    valid = (len(y) == n and (idx is None or (len(idx) > 0 and ((idx >= -n) & (idx < n)).all())))
    if valid:
        ys = y[rows]
        valid = bool(((ys >= 0) & (ys < c)).all())
    if not valid:
        with pytest.raises(CLEAR):
            tg.cross_entropy(logits, y, index=idx)
        return
    loss = tg.cross_entropy(logits, y, index=idx)
    z = logits.numpy()[rows]
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    np.testing.assert_allclose(loss.item(), np.mean(lse - z[np.arange(len(rows)), y[rows]]), rtol=1e-10)


@fuzz
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from(["ok", "lengths_zero", "lengths_long", "lengths_shape", "lengths_float", "bad_input_size",
                        "bad_h0", "empty_seq"]))
def test_lstm_validates_shapes_and_lengths(t, b, i, h, case):
    from tapegrad.layers.rnn import LSTM
    lstm = LSTM(i, h, dtype=np.float64)
    rng = np.random.default_rng(t * 100 + b * 10 + i)
    x = rng.standard_normal((t, b, i))
    lengths = rng.integers(1, t + 1, size=b)
    hx = None
    if case == "lengths_zero":
        lengths[0] = 0
    elif case == "lengths_long":
        lengths[-1] = t + 1
    elif case == "lengths_shape":
        lengths = np.ones(b + 1, dtype=np.int64)
    elif case == "lengths_float":
        lengths = lengths.astype(np.float64) + 0.5
    elif case == "bad_input_size":
        x = rng.standard_normal((t, b, i + 1))
    elif case == "bad_h0":
        hx = (np.zeros((1, b + 1, h)), np.zeros((1, b + 1, h)))
    elif case == "empty_seq":
        x = np.zeros((0, b, i))
    if case == "ok":
        out, (hn, cn) = lstm(x, lengths=lengths)
        assert out.shape == (t, b, h) and hn.shape == (1, b, h)
        for k in range(b):
            assert np.all(out.numpy()[lengths[k]:, k] == 0)
            np.testing.assert_allclose(out.numpy()[lengths[k] - 1, k], hn.numpy()[0, k], rtol=1e-12)
    else:
        with pytest.raises(CLEAR):
            lstm(x, hx, lengths=lengths)


@fuzz
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from(["ok", "bad_c", "odd_z", "f16", "readonly", "mixed"]))
def test_lstm_cell_kernel_validates(b, h, case):
    rng = np.random.default_rng(b * 10 + h)
    z = rng.standard_normal((b, 4 * h))
    c_prev = rng.standard_normal((b, h))
    gates = None
    if case == "bad_c":
        c_prev = rng.standard_normal((b, h + 1))
    elif case == "odd_z":
        z = rng.standard_normal((b, 4 * h + 1))
    elif case == "f16":
        z = z.astype(np.float16)
    elif case == "readonly":
        gates = np.empty_like(z)
        gates.flags.writeable = False
    elif case == "mixed":
        c_prev = c_prev.astype(np.float32)
    if case == "ok":
        got = tg.kernels.lstm_cell_fwd(z.copy(), c_prev)
        for g_arr, r_arr in zip(got, ref.lstm_cell_fwd(z, c_prev)):
            np.testing.assert_allclose(g_arr, r_arr, rtol=1e-12, atol=1e-14)
    else:
        with pytest.raises(CLEAR):
            tg.kernels.lstm_cell_fwd(z, c_prev, gates)
