"""Plain NumPy references for every kernel.

These define what each kernel computes. They are slow and obvious on purpose: the tests compare the
Numba CPU, Numba CUDA and CuPy kernels against them. Same signatures as the kernels (``out``
arguments are accepted and filled when given).
"""
from __future__ import annotations

import numpy as np

from .validate import index_dtype_for


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
    """A^T in CSR. Returns (indptr_t [n_cols+1] int64, indices_t [nnz] of indices' dtype, or int32 /
    int64 when that cannot hold the row ids up to n_rows - 1, data_t [nnz] or None, perm [nnz] int64)
    with data_t = data[perm]. Within each row of A^T the column ids (rows of A) are ascending: the
    transpose is a stable counting sort.
    """
    r = _rows(indptr)
    perm = np.argsort(indices, kind="stable").astype(np.int64)
    counts = np.bincount(indices, minlength=n_cols)
    indptr_t = np.zeros(n_cols + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr_t[1:])
    indices_t = r[perm].astype(index_dtype_for(indices.dtype, len(indptr) - 1))
    data_t = None if data is None else data[perm]
    return indptr_t, indices_t, data_t, perm


def gcn_norm(indptr, indices, data, num_nodes, add_self_loops=True, fill_value=1.0, dtype=np.float32):
    """P = D^-1/2 (A + fill_value * I) D^-1/2 on a square CSR A.

    Self-loops are added only to nodes that have none (an existing self-loop keeps its weight, as
    PyG's add_remaining_self_loops does). D is the row sum of A + I. A node of zero degree gives a
    zero row (never inf/NaN). Returns (indptr int64, indices of indices' dtype, or int32 / int64 when an
    added loop's id does not fit it, data of ``dtype``), columns sorted within each row when A's were.
    """
    n = num_nodes
    r = _rows(indptr)
    vals = _values(indptr, data, dtype)
    rows, cols, w = r, np.asarray(indices).astype(np.int64), vals  # int64: added loop ids never wrap
    if add_self_loops:
        has_loop = np.zeros(n, dtype=bool)
        has_loop[rows[rows == cols]] = True
        missing = np.nonzero(~has_loop)[0]
        rows = np.concatenate([rows, missing])
        cols = np.concatenate([cols, missing])
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
    out_dtype = index_dtype_for(indices.dtype, n) if add_self_loops else indices.dtype
    return new_indptr, cols.astype(out_dtype), w


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


# ---- whole recurrent steps: the recurrent GEMM and the cell in one kernel (the GPU loops use them) ----

def lstm_step_fwd(h_prev, w_hh, z, c_prev, c, h):
    """One LSTM step with its recurrent GEMM: z += h_prev W_hh^T, then :func:`lstm_cell_fwd` with the
    activated gates written over z.

    h_prev [B, H], w_hh [4H, H], z [B, 4H] (in: the step's input projection; out: the gates),
    c_prev [B, H]; c and h [B, H] are written. Returns (z, c, h).
    """
    z += h_prev @ w_hh.T
    return lstm_cell_fwd(z, c_prev, z, c, h)


def lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c, grad_c, grad_z):
    """One LSTM backward step with the recurrent GEMM of the step after it.

    dL/dh_t = dz_next W_hh (= dz_next @ w_t.T, w_t = W_hh^T [H, 4H]) when ``dz_next`` [B, 4H] (the
    pre-activation gradient of step t + 1) is given, else ``grad_h`` [B, H]; plus ``grad_out`` [B, H]
    when given (the loss's gradient at output t). Then :func:`lstm_cell_bwd` writes grad_z [B, 4H] and
    replaces grad_c [B, H] (dL/dc_t in, dL/dc_{t-1} out). Returns (grad_z, grad_c).
    """
    gh = (dz_next @ w_t.T) if dz_next is not None else grad_h.copy()
    if grad_out is not None:
        gh = gh + grad_out
    return lstm_cell_bwd(gates, c_prev, c, gh, grad_c, grad_z, grad_c)


def rnn_step_fwd(h_prev, w_hh, p, h, relu=False):
    """One Elman step with its recurrent GEMM: h = act(p + h_prev W_hh^T); p [B, H] (the input
    projection, not written), w_hh [H, H], h [B, H] written and returned."""
    return rnn_cell_fwd(p + h_prev @ w_hh.T, h, relu)


def rnn_step_bwd(dz_next, w_t, grad_h, grad_out, h, grad_z, relu=False):
    """One Elman backward step: dL/dh_t as in :func:`lstm_step_bwd` (w_t = W_hh^T [H, H]), then
    grad_z = dL/dh_t * act'(z_t) from the output h [B, H]. Returns grad_z [B, H]."""
    gh = (dz_next @ w_t.T) if dz_next is not None else grad_h
    if grad_out is not None:
        gh = gh + grad_out
    return rnn_cell_bwd(h, gh, grad_z, relu)


def lstm_seq_fwd(hs, w_hh, gates, cs, reverse=False):
    """Every step of an LSTM over the engine's buffers (see :mod:`tapegrad.kernels.sequence`): hs, cs
    [T + 1, B, H] (row 0, or row T when reverse, holds the initial state), gates [T, B, 4H] (in: the
    input projections; out: the gates). Written in place."""
    from .sequence import lstm_seq_fwd as loop
    loop(lstm_step_fwd, hs, w_hh, gates, cs, reverse)


def lstm_seq_bwd(dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse=False):
    """The LSTM's backward over all steps: dz [T, B, 4H] written; grad_h [B, H] = dL/dh of the last state;
    grad_out [T, B, H] or None; grad_c [B, H] in: dL/dc of the last state, out: of the initial state."""
    from .sequence import lstm_seq_bwd as loop
    loop(lstm_step_bwd, dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse)


def rnn_seq_fwd(hs, w_hh, p, reverse=False, relu=False):
    """Every step of an Elman RNN: hs [T + 1, B, H] written but for the initial row; p [T, B, H] read."""
    from .sequence import rnn_seq_fwd as loop
    loop(rnn_step_fwd, hs, w_hh, p, reverse, relu)


def rnn_seq_bwd(dz, w_t, grad_h, grad_out, hs, reverse=False, relu=False):
    """The Elman RNN's backward over all steps: dz [T, B, H] written (see :func:`lstm_seq_bwd`)."""
    from .sequence import rnn_seq_bwd as loop
    loop(rnn_step_bwd, dz, w_t, grad_h, grad_out, hs, reverse, relu)


def adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps, weight_decay=0.0,
              decay=1.0):
    """One Adam update in place, PyTorch's single-tensor rule, each operation rounded to param's dtype:

    p <- p * decay (AdamW's decoupled decay); g <- g + weight_decay * p (Adam's L2, when nonzero);
    m <- m + (g - m)(1 - beta1) (for beta1 < 1/2: g - (g - m) beta1, as torch's lerp); v <- v beta2 + (1 - beta2) g g;
    p <- p - step_size m / (sqrt(v) / bias2_sqrt + eps),
    with step_size = lr / (1 - beta1^t) and bias2_sqrt = sqrt(1 - beta2^t) worked out by the caller.
    All arrays have param's shape and dtype; param, exp_avg and exp_avg_sq are written."""
    adam_moments(param, grad, exp_avg, exp_avg_sq, beta1, beta2, weight_decay, decay)
    t = param.dtype.type
    denom = np.sqrt(exp_avg_sq) / t(bias2_sqrt) + t(eps)
    param -= t(step_size) * (exp_avg / denom)


def adam_moments(param, grad, exp_avg, exp_avg_sq, beta1, beta2, weight_decay=0.0, decay=1.0):
    """The first half of :func:`adam_step` (the decays and both moments, in place), shared with AMSGrad
    (layers/optim.py), whose update divides by the running maximum of exp_avg_sq instead."""
    t = param.dtype.type
    if decay != 1.0:
        param *= t(decay)
    if weight_decay:
        grad = grad + t(weight_decay) * param
    w = t(1 - beta1)
    if w < 0.5:  # torch's lerp: start + w (end - start) below a weight of 1/2, else end - (1 - w)(end - start)
        exp_avg += (grad - exp_avg) * w
    else:
        exp_avg[...] = grad - (grad - exp_avg) * (t(1) - w)
    exp_avg_sq *= t(beta2)
    exp_avg_sq += t(1 - beta2) * grad * grad


def cross_entropy_fwd(logits, target, rows, ignore_index, loss, zmax, logsum, stats):
    """Softmax cross-entropy of the rows ``rows`` of ``logits``, one value per row.

    logits [N, C] float32/float64; target [N] integer class ids; rows [M] integer row ids in [-N, N)
    (negative from the end), or None for every row (M = N). With i = rows[r], z = logits[i], t = target[i]:
        zmax[r] = max_j z_j,   logsum[r] = log sum_j exp(z_j - zmax[r]),   loss[r] = logsum[r] - (z_t - zmax[r]),
    and loss[r] = 0 where t == ignore_index. loss, zmax, logsum ([M], logits' dtype) and stats ([3] int64)
    are written: stats holds the number of rows whose target is not ignore_index, how many of those have a
    target outside [0, C), and how many row ids are outside [-N, N). Nothing is read out of bounds: loss
    is NaN for such a row (and zmax, logsum too for a bad row id); the caller reports stats.
    """
    n, c = logits.shape
    m = n if rows is None else len(rows)
    ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows).astype(np.int64)
    bad_row = (ids < -n) | (ids >= n)
    i = np.where(bad_row, 0, ids + np.where(ids < 0, n, 0))
    t = np.asarray(target)[i].astype(np.int64) if n else np.zeros(m, np.int64)
    counted = (t != ignore_index) & ~bad_row
    bad_t = counted & ((t < 0) | (t >= c))
    ok = counted & ~bad_t
    z = logits[i] if n else np.zeros((m, c), logits.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        zm = z.max(axis=1) if c and m else np.full(m, -np.inf, logits.dtype)
        shifted = z - zm[:, None]
        ls = np.log(np.exp(shifted).sum(axis=1))
        picked = np.take_along_axis(shifted, np.where(ok, t, 0)[:, None], axis=1)[:, 0] if c else np.zeros(m, z.dtype)
    out = np.where(ok, ls - picked, 0).astype(logits.dtype)
    out[bad_t | bad_row] = np.nan
    zm, ls = zm.astype(logits.dtype), ls.astype(logits.dtype)
    zm[bad_row], ls[bad_row] = np.nan, np.nan
    loss[...], zmax[...], logsum[...] = out, zm, ls
    stats[...] = (int(counted.sum()), int(bad_t.sum()), int(bad_row.sum()))


def cross_entropy_bwd(logits, target, rows, zmax, logsum, scale, ignore_index, grad):
    """The gradient of :func:`cross_entropy_fwd`'s loss[r] with respect to logits[rows[r]], times scale:

        grad[r, j] = (exp((z_j - zmax[r]) - logsum[r]) - [j == t]) * scale_r

    for rows whose target t is not ignore_index, 0 for the others. scale: an array of shape () (one
    factor, mean's 1/count times the incoming gradient) or [M] (reduction 'none'), logits' dtype.
    grad [M, C] (logits' dtype) is written. The ids and targets are in range (the forward checked them).
    """
    n, c = logits.shape
    ids = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows).astype(np.int64)
    i = ids + np.where(ids < 0, n, 0)
    t = np.asarray(target)[i].astype(np.int64)
    counted = t != ignore_index
    g = np.exp((logits[i] - zmax[:, None]) - logsum[:, None])
    g[np.arange(len(i))[counted], t[counted]] -= 1
    g *= counted[:, None]
    s = np.asarray(scale)
    g *= s if s.ndim == 0 else s[:, None]
    grad[...] = g
