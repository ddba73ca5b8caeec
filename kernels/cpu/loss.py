"""Numba kernels for the softmax cross-entropy, forward and backward.

Same signatures and semantics as :func:`tapegrad.kernels.reference.cross_entropy_fwd` and
``cross_entropy_bwd``: one pass over each selected row, where the engine's array version made about
fifteen passes and temporaries (max, shift, exp, sum, log, take, where, ...). Rows are split over the
threads only when there is enough work to pay for waking them (an OpenMP wake-up costs tens of
microseconds on a small machine, about what a Cora-sized loss takes in all).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

_PARALLEL_MIN_WORK = 1 << 17  # rows x classes


@njit(cache=True, error_model="numpy", inline="always")
def _row_fwd(logits, target, ids, r, n, c, ignore_index, loss, zmax, logsum):
    """One row of the forward; returns (counted, bad target, bad row id) as 0/1."""
    nan = logits.dtype.type(np.nan)
    k = np.int64(r) if ids.shape[0] == 0 else np.int64(ids[r])  # prange's index is unsigned: no float unification
    if k < -n or k >= n:
        loss[r], zmax[r], logsum[r] = nan, nan, nan
        return 0, 0, 1
    i = k + n if k < 0 else k
    m = logits[i, 0] if c else logits.dtype.type(-np.inf)
    for j in range(1, c):
        if logits[i, j] > m or logits[i, j] != logits[i, j]:  # NaN wins, as numpy's max
            m = logits[i, j]
    s = 0.0  # float64 whatever the logits' dtype: float32 terms added one by one lose digits with C
    for j in range(c):
        s += np.exp(logits[i, j] - m)
    ls = logits.dtype.type(np.log(s))
    zmax[r], logsum[r] = m, ls
    t = target[i]
    if t == ignore_index:
        loss[r] = 0
        return 0, 0, 0
    if t < 0 or t >= c:
        loss[r] = nan
        return 1, 1, 0
    loss[r] = ls - (logits[i, t] - m)
    return 1, 0, 0


@njit(cache=True, error_model="numpy")
def _fwd_serial(logits, target, ids, m_rows, ignore_index, loss, zmax, logsum):
    n, c = logits.shape
    counted = bad_t = bad_row = 0
    for r in range(m_rows):
        a, b, d = _row_fwd(logits, target, ids, r, n, c, ignore_index, loss, zmax, logsum)
        counted += a
        bad_t += b
        bad_row += d
    return counted, bad_t, bad_row


@njit(cache=True, error_model="numpy", parallel=True)
def _fwd_parallel(logits, target, ids, m_rows, ignore_index, loss, zmax, logsum):
    n, c = logits.shape
    counted = bad_t = bad_row = 0
    for r in prange(m_rows):
        a, b, d = _row_fwd(logits, target, ids, r, n, c, ignore_index, loss, zmax, logsum)
        counted += a
        bad_t += b
        bad_row += d
    return counted, bad_t, bad_row


@njit(cache=True, error_model="numpy", inline="always")
def _row_bwd(logits, target, ids, r, n, c, zmax, logsum, scale, per_row, ignore_index, grad):
    k = np.int64(r) if ids.shape[0] == 0 else np.int64(ids[r])  # prange's index is unsigned: no float unification
    i = k + n if k < 0 else k
    t = target[i]
    if t == ignore_index:
        for j in range(c):
            grad[r, j] = 0
        return
    s = scale[r] if per_row else scale[0]
    m, ls = zmax[r], logsum[r]
    for j in range(c):
        p = np.exp((logits[i, j] - m) - ls)
        grad[r, j] = ((p - 1) if j == t else p) * s


@njit(cache=True, error_model="numpy")
def _bwd_serial(logits, target, ids, m_rows, zmax, logsum, scale, per_row, ignore_index, grad):
    n, c = logits.shape
    for r in range(m_rows):
        _row_bwd(logits, target, ids, r, n, c, zmax, logsum, scale, per_row, ignore_index, grad)


@njit(cache=True, error_model="numpy", parallel=True)
def _bwd_parallel(logits, target, ids, m_rows, zmax, logsum, scale, per_row, ignore_index, grad):
    n, c = logits.shape
    for r in prange(m_rows):
        _row_bwd(logits, target, ids, r, n, c, zmax, logsum, scale, per_row, ignore_index, grad)


_NO_ROWS = np.zeros(0, np.int64)


def _ids(rows):
    return _NO_ROWS if rows is None else rows


def cross_entropy_fwd(logits, target, rows, ignore_index, loss, zmax, logsum, stats):
    """See :func:`tapegrad.kernels.reference.cross_entropy_fwd`. logits must be C-contiguous (the engine's
    are); the ids and targets may be any integer dtype."""
    n, c = logits.shape
    m = n if rows is None else len(rows)
    run = _fwd_parallel if m * max(c, 1) >= _PARALLEL_MIN_WORK else _fwd_serial
    stats[:] = run(logits, target, _ids(rows), m, ignore_index, loss, zmax, logsum)


def cross_entropy_bwd(logits, target, rows, zmax, logsum, scale, ignore_index, grad):
    """See :func:`tapegrad.kernels.reference.cross_entropy_bwd`."""
    n, c = logits.shape
    m = n if rows is None else len(rows)
    scale = np.asarray(scale, dtype=logits.dtype)
    per_row = scale.ndim == 1
    run = _bwd_parallel if m * max(c, 1) >= _PARALLEL_MIN_WORK else _bwd_serial
    run(logits, target, _ids(rows), m, zmax, logsum, scale.reshape(-1), per_row, ignore_index, grad)
