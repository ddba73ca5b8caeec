"""Plain NumPy references for every kernel.

These define what each kernel computes. They are slow and obvious on purpose: the tests compare the
Numba CPU, Numba CUDA and CuPy kernels against them. Same signatures as the kernels (``out``
arguments are accepted and filled when given).
"""
from __future__ import annotations

import numpy as np


def _rows(indptr: np.ndarray) -> np.ndarray:
    """Row id of every stored entry: [nnz]."""
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def _values(indptr, data, dtype):
    nnz = int(indptr[-1])
    return np.ones(nnz, dtype=dtype) if data is None else np.asarray(data, dtype=dtype)


def spmm(indptr, indices, data, x, out=None):
    """Y = A @ X.

    A: CSR with ``len(indptr) - 1`` rows; ``data=None`` means every stored value is 1.
    x: [n_cols, F] dense. Returns Y: [n_rows, F] with x's dtype.
    """
    n_rows = len(indptr) - 1
    vals = _values(indptr, data, x.dtype)
    y = np.zeros((n_rows, x.shape[1]), dtype=x.dtype)
    np.add.at(y, _rows(indptr), vals[:, None] * x[indices])
    if out is not None:
        out[...] = y
        return out
    return y


def sddmm(indptr, indices, a, b, out=None):
    """Sampled dense-dense product on A's pattern: out[k] = <a[row(k)], b[indices[k]]>.

    a: [n_rows, F], b: [n_cols, F]. Returns [nnz]. This is dL/dA_ij for Y = A @ X with a = dL/dY, b = X.
    """
    r = _rows(indptr)
    y = np.einsum("kf,kf->k", a[r], b[indices]).astype(a.dtype)
    if out is not None:
        out[...] = y
        return out
    return y


def csr_transpose(indptr, indices, data, n_cols):
    """A^T in CSR. Returns (indptr_t [n_cols+1] int64, indices_t [nnz] same dtype as indices,
    data_t [nnz] or None, perm [nnz] int64) with data_t = data[perm]. Within each row of A^T the
    column ids (rows of A) are ascending: the transpose is a stable counting sort.
    """
    r = _rows(indptr)
    perm = np.argsort(indices, kind="stable").astype(np.int64)
    counts = np.bincount(indices, minlength=n_cols)
    indptr_t = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr_t[1:])
    indices_t = r[perm].astype(indices.dtype)
    data_t = None if data is None else data[perm]
    return indptr_t, indices_t, data_t, perm


def gcn_norm(indptr, indices, data, num_nodes, add_self_loops=True, fill_value=1.0, dtype=np.float32):
    """P = D^-1/2 (A + fill_value * I) D^-1/2 on a square CSR A.

    Self-loops are added only to nodes that have none (an existing self-loop keeps its weight, as
    PyG's add_remaining_self_loops does). D is the row sum of A + I. A node of zero degree gives a
    zero row (never inf/NaN). Returns (indptr int64, indices same dtype, data of ``dtype``), columns
    sorted within each row when A's were.
    """
    n = num_nodes
    r = _rows(indptr)
    vals = _values(indptr, data, dtype)
    rows, cols, w = r, np.asarray(indices), vals
    if add_self_loops:
        has_loop = np.zeros(n, dtype=bool)
        has_loop[rows[rows == cols]] = True
        missing = np.nonzero(~has_loop)[0]
        rows = np.concatenate([rows, missing])
        cols = np.concatenate([cols, missing.astype(cols.dtype)])
        w = np.concatenate([w, np.full(len(missing), fill_value, dtype=dtype)])
    deg = np.zeros(n, dtype=np.float64)
    np.add.at(deg, rows, w.astype(np.float64))
    with np.errstate(divide="ignore"):
        dis = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    w = (dis[rows] * w * dis[cols]).astype(dtype)
    order = np.lexsort((cols, rows))
    rows, cols, w = rows[order], cols[order], w[order]
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=new_indptr[1:])
    return new_indptr, cols.astype(indices.dtype), w


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_cell_fwd(z, c_prev, gates=None, c=None, h=None):
    """One LSTM step after the GEMMs.

    z: [B, 4H] pre-activations in PyTorch's gate order (i, f, g, o), i.e. x W_ih^T + h W_hh^T + biases.
    c_prev: [B, H]. Returns (gates [B, 4H] = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); c [B, H];
    h [B, H]) with c = f * c_prev + i * g and h = o * tanh(c). ``gates`` may alias ``z``.
    """
    H = c_prev.shape[1]
    i = _sigmoid(z[:, :H])
    f = _sigmoid(z[:, H:2 * H])
    g = np.tanh(z[:, 2 * H:3 * H])
    o = _sigmoid(z[:, 3 * H:])
    c_new = f * c_prev + i * g
    h_new = o * np.tanh(c_new)
    act = np.concatenate([i, f, g, o], axis=1)
    gates = act if gates is None else _fill(gates, act)
    c = c_new if c is None else _fill(c, c_new)
    h = h_new if h is None else _fill(h, h_new)
    return gates, c, h


def lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z=None, grad_c_prev=None):
    """Backward of one LSTM step.

    gates: [B, 4H] activated gates from the forward; c_prev, c: [B, H]; grad_h: dL/dh_t (from the output
    and from the next step); grad_c: dL/dc_t arriving from the next step. Returns (grad_z [B, 4H],
    grad_c_prev [B, H]).
    """
    H = c.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tc = np.tanh(c)
    dc = grad_c + grad_h * o * (1.0 - tc * tc)
    gz = np.concatenate([
        dc * g * i * (1.0 - i),
        dc * c_prev * f * (1.0 - f),
        dc * i * (1.0 - g * g),
        grad_h * tc * o * (1.0 - o),
    ], axis=1)
    gcp = dc * f
    grad_z = gz if grad_z is None else _fill(grad_z, gz)
    grad_c_prev = gcp if grad_c_prev is None else _fill(grad_c_prev, gcp)
    return grad_z, grad_c_prev


def rnn_cell_fwd(z, h=None, relu=False):
    """Elman step after the GEMMs: h = tanh(z) (or relu(z)). z: [B, H]."""
    out = np.maximum(z, 0) if relu else np.tanh(z)
    return out if h is None else _fill(h, out)


def rnn_cell_bwd(h, grad_h, grad_z=None, relu=False):
    """grad_z = grad_h * act'(z), written in terms of the output h: 1 - h^2 for tanh, [h > 0] for relu."""
    g = grad_h * (h > 0) if relu else grad_h * (1.0 - h * h)
    return g if grad_z is None else _fill(grad_z, g)


def _fill(out, value):
    out[...] = value
    return out
