"""CuPy (CUDA C) kernels for the softmax cross-entropy, forward and backward.

Same signatures and semantics as :func:`tapegrad.kernels.reference.cross_entropy_fwd` and
``cross_entropy_bwd``. The forward gives each selected row a warp: its lanes stride over the classes,
combine the row's max and sum of exponentials with shuffles, and lane 0 writes the row's loss and adds to
the three counts. The backward is one thread per gradient element. One launch each way, where the
engine's array version made about twenty CuPy operations, each 10-20 us of host time to queue.
"""
from __future__ import annotations

import functools

import cupy
import numpy as np

from . import _compile as cc

BLOCK = 256
MAX_BLOCKS = 4096

_SOURCE = r"""
typedef $T T;

// Rows r of warp w, w + warps, ...: a row's 32 lanes stay together, so the shuffles see a full warp.
extern "C" __global__ void tapegrad_cross_entropy_fwd_$SFX(
        const T* __restrict__ z, const long long* __restrict__ target, const long long* __restrict__ rows,
        T* __restrict__ loss, T* __restrict__ zmax, T* __restrict__ logsum, unsigned long long* stats,
        int has_rows, long long m_rows, long long n, long long c, long long ignore_index) {
    const int lane = threadIdx.x & 31;
    const long long warps = (long long)gridDim.x * (blockDim.x >> 5);
    const T nan_t = (T)__longlong_as_double(0x7ff8000000000000ULL);  // NVRTC defines no NAN / INFINITY
    const T minus_inf = (T)__longlong_as_double(0xfff0000000000000ULL);
    for (long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < m_rows; r += warps) {
        const long long k = has_rows ? rows[r] : r;
        if (k < -n || k >= n) {
            if (lane == 0) {
                loss[r] = nan_t; zmax[r] = nan_t; logsum[r] = nan_t;
                atomicAdd(&stats[2], 1ULL);
            }
            continue;
        }
        const T* row = z + (k < 0 ? k + n : k) * c;
        T mx = minus_inf;
        for (long long j = lane; j < c; j += 32) {
            const T v = row[j];
            if (v > mx || v != v) mx = v;  // NaN wins, as numpy's max
        }
        for (int off = 16; off > 0; off >>= 1) {
            const T o = __shfl_xor_sync(0xffffffffu, mx, off);
            if (o > mx || o != o) mx = o;
        }
        double s = 0.0;
        for (long long j = lane; j < c; j += 32) s += (double)exp(row[j] - mx);
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0) {
            const T ls = (T)log(s);
            zmax[r] = mx;
            logsum[r] = ls;
            const long long t = target[k < 0 ? k + n : k];
            if (t == ignore_index) {
                loss[r] = T(0);
            } else {
                atomicAdd(&stats[0], 1ULL);
                if (t < 0 || t >= c) {
                    loss[r] = nan_t;
                    atomicAdd(&stats[1], 1ULL);
                } else {
                    loss[r] = ls - (row[t] - mx);
                }
            }
        }
    }
}

extern "C" __global__ void tapegrad_cross_entropy_bwd_$SFX(
        const T* __restrict__ z, const long long* __restrict__ target, const long long* __restrict__ rows,
        const T* __restrict__ zmax, const T* __restrict__ logsum, const T* __restrict__ scale, T* __restrict__ grad,
        int has_rows, int per_row, long long m_rows, long long n, long long c, long long ignore_index) {
    const long long total = m_rows * c;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const long long r = e / c;
        const long long j = e - r * c;
        const long long k = has_rows ? rows[r] : r;
        const long long i = k < 0 ? k + n : k;
        const long long t = target[i];
        if (t == ignore_index) {
            grad[e] = T(0);
        } else {
            T p = exp((z[i * c + j] - zmax[r]) - logsum[r]);
            if (j == t) p -= T(1);
            grad[e] = p * (per_row ? scale[r] : scale[0]);
        }
    }
}
"""


@functools.cache
def _source(dtype):
    sfx = cc.suffix(dtype)
    return cc.render(_SOURCE, T=cc.ctype(dtype), SFX=sfx), sfx


def _kernel(dtype, which):
    source, sfx = _source(np.dtype(dtype))
    return cc.kernel(source, f"tapegrad_cross_entropy_{which}_{sfx}")


def _ids(a):
    a = cupy.asarray(a)
    return a if a.dtype == np.int64 and a.flags.c_contiguous else cupy.ascontiguousarray(a, dtype=np.int64)


def cross_entropy_fwd(logits, target, rows, ignore_index, loss, zmax, logsum, stats):
    """See :func:`tapegrad.kernels.reference.cross_entropy_fwd`. Cupy arrays; logits C-contiguous, the
    outputs C-contiguous of logits' dtype, ``stats`` int64 starting at zero (the kernel adds to it)."""
    n, c = logits.shape
    m = n if rows is None else len(rows)
    if m == 0:
        return
    logits, target = cc.contiguous(logits), _ids(target)
    ids = target if rows is None else _ids(rows)  # unread when every row is used
    blocks, threads = cc.launch_shape(m * 32, BLOCK, MAX_BLOCKS)
    _kernel(logits.dtype, "fwd")((blocks,), (threads,), (
        logits, target, ids, loss, zmax, logsum, stats, np.int32(rows is not None), np.int64(m), np.int64(n),
        np.int64(c), np.int64(ignore_index)))


def cross_entropy_bwd(logits, target, rows, zmax, logsum, scale, ignore_index, grad):
    """See :func:`tapegrad.kernels.reference.cross_entropy_bwd`. Cupy arrays, ``grad`` C-contiguous."""
    n, c = logits.shape
    m = n if rows is None else len(rows)
    if m * c == 0:
        return
    logits, target = cc.contiguous(logits), _ids(target)
    ids = target if rows is None else _ids(rows)
    scale = cc.contiguous(scale.reshape(-1))
    blocks, threads = cc.launch_shape(m * c, BLOCK, MAX_BLOCKS)
    _kernel(logits.dtype, "bwd")((blocks,), (threads,), (
        logits, target, ids, zmax, logsum, scale, grad, np.int32(rows is not None), np.int32(scale.size != 1),
        np.int64(m), np.int64(n), np.int64(c), np.int64(ignore_index)))
