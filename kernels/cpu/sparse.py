"""Numba CPU kernels for sparse graph ops: spmm, sddmm, csr_transpose, gcn_norm.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`. The public functions are thin:
they allocate outputs and call one njit kernel. Row-parallel kernels split the rows into chunks of
roughly equal work (stored entries plus rows) so that power-law graphs, where a few rows hold much of
the matrix, keep every thread busy.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

# Chunks per thread: enough slack for uneven rows, few enough that chunk overhead stays negligible.
_CHUNKS_PER_THREAD = 8


@numba.njit(cache=True)
def _row_chunks(indptr, n_chunks):
    """Row boundaries [n_chunks + 1] splitting rows into chunks of about equal ``nnz + rows``."""
    n_rows = len(indptr) - 1
    total = np.int64(indptr[n_rows]) + n_rows
    bounds = np.empty(n_chunks + 1, dtype=np.int64)
    bounds[0] = 0
    for c in range(1, n_chunks):
        target = (total * c) // n_chunks
        # First row r with indptr[r] + r >= target (binary search; the key is increasing in r).
        lo = bounds[c - 1]
        hi = n_rows
        while lo < hi:
            mid = (lo + hi) // 2
            if np.int64(indptr[mid]) + mid < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[c] = lo
    bounds[n_chunks] = n_rows
    return bounds


def _chunks(indptr):
    n_rows = len(indptr) - 1
    n_chunks = max(1, min(n_rows, numba.get_num_threads() * _CHUNKS_PER_THREAD))
    return _row_chunks(indptr, n_chunks)


@numba.njit(cache=True, parallel=True)
def _spmm_kernel(indptr, indices, data, x, out, bounds):
    F = x.shape[1]
    for c in prange(len(bounds) - 1):
        for i in range(bounds[c], bounds[c + 1]):
            yi = out[i]
            for f in range(F):
                yi[f] = 0
            for k in range(indptr[i], indptr[i + 1]):
                v = data[k]
                xj = x[indices[k]]
                for f in range(F):
                    yi[f] += v * xj[f]


@numba.njit(cache=True, parallel=True)
def _spmm_ones_kernel(indptr, indices, x, out, bounds):
    F = x.shape[1]
    for c in prange(len(bounds) - 1):
        for i in range(bounds[c], bounds[c + 1]):
            yi = out[i]
            for f in range(F):
                yi[f] = 0
            for k in range(indptr[i], indptr[i + 1]):
                xj = x[indices[k]]
                for f in range(F):
                    yi[f] += xj[f]


def spmm(indptr, indices, data, x, out=None):
    """Y = A @ X for CSR A [n_rows, n_cols] (``data=None``: all ones) and dense X [n_cols, F].

    Returns Y [n_rows, F] with X's dtype (written into ``out`` when given).
    """
    if out is None:
        out = np.empty((len(indptr) - 1, x.shape[1]), dtype=x.dtype)
    bounds = _chunks(indptr)
    if data is None:
        _spmm_ones_kernel(indptr, indices, x, out, bounds)
    else:
        _spmm_kernel(indptr, indices, data.astype(x.dtype, copy=False), x, out, bounds)
    return out
