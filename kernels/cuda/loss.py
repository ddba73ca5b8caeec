"""Numba CUDA kernels for the softmax cross-entropy, forward and backward.

Same signatures and semantics as :func:`tapegrad.kernels.reference.cross_entropy_fwd` and
``cross_entropy_bwd``. The forward gives each selected row 32 threads: they stride over the classes
and combine the row's max and sum of exponentials in shared memory, and the first writes the row's loss
and adds to the three counts. The backward is one thread per gradient element. One launch each way, where
the engine's array version made about twenty CuPy operations on a GPU.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from . import _device as dv

WARPS_PER_BLOCK = 8
_RED_SIZE = WARPS_PER_BLOCK * 32  # a constant the kernel's shared array can take (an expression there is not one)
BLOCK = 256
MAX_BLOCKS = 4096


@cuda.jit
def _fwd(logits, target, rows, has_rows, m_rows, ignore_index, loss, zmax, logsum, stats):
    red = cuda.shared.array(_RED_SIZE, numba.float64)
    tid = cuda.threadIdx.x
    lane = tid % 32
    base = tid - lane
    r = cuda.blockIdx.x * WARPS_PER_BLOCK + tid // 32
    n, c = logits.shape
    k = i = 0
    live = False
    if r < m_rows:
        k = rows[r] if has_rows else r
        live = -n <= k < n
        i = k + n if k < 0 else k
    # no thread returns early: every one reaches every syncthreads below
    m = -math.inf
    if live:
        for j in range(lane, c, 32):
            v = logits[i, j]
            if v > m or v != v:  # NaN wins, as numpy's max
                m = v
    red[tid] = m
    cuda.syncthreads()
    for off in (16, 8, 4, 2, 1):
        if lane < off:
            o = red[tid + off]
            if o > red[tid] or o != o:
                red[tid] = o
        cuda.syncthreads()
    m = red[base]
    cuda.syncthreads()
    s = 0.0
    if live:
        for j in range(lane, c, 32):
            s += math.exp(logits[i, j] - m)
    red[tid] = s
    cuda.syncthreads()
    for off in (16, 8, 4, 2, 1):
        if lane < off:
            red[tid] += red[tid + off]
        cuda.syncthreads()
    if lane == 0 and r < m_rows:
        if not live:
            loss[r] = zmax[r] = logsum[r] = math.nan
            cuda.atomic.add(stats, 2, 1)
        else:
            ls = math.log(red[base])
            zmax[r] = m
            logsum[r] = ls
            t = target[i]
            if t == ignore_index:
                loss[r] = 0
            else:
                cuda.atomic.add(stats, 0, 1)
                if t < 0 or t >= c:
                    loss[r] = math.nan
                    cuda.atomic.add(stats, 1, 1)
                else:
                    loss[r] = ls - (logits[i, t] - m)


@cuda.jit
def _bwd(logits, target, rows, has_rows, m_rows, zmax, logsum, scale, per_row, ignore_index, grad):
    n, c = logits.shape
    e = cuda.grid(1)
    stride = cuda.gridsize(1)
    while e < m_rows * c:
        r = e // c
        j = e - r * c
        k = rows[r] if has_rows else r
        i = k + n if k < 0 else k
        t = target[i]
        if t == ignore_index:
            grad[r, j] = 0
        else:
            p = math.exp((logits[i, j] - zmax[r]) - logsum[r])
            if j == t:
                p -= 1
            grad[r, j] = p * (scale[r] if per_row else scale[0])
        e += stride


def _rows_arg(rows, target_d, logits):
    """The row ids as the kernels take them, with a flag; when every row is used the targets stand in
    (an int64 array the kernels never read as ids), so nothing is allocated per call."""
    if rows is not None:
        return dv.as_device(rows), True, len(rows)
    return target_d, False, logits.shape[0]


def cross_entropy_fwd(logits, target, rows, ignore_index, loss, zmax, logsum, stats):
    """See :func:`tapegrad.kernels.reference.cross_entropy_fwd`. logits C-contiguous; target and rows
    int64 (the engine's); ``stats`` starts at zero (the kernel adds to it)."""
    kind = dv.kind_of(logits)
    target_d = dv.as_device(target)
    rows_d, has_rows, m = _rows_arg(rows, target_d, logits)
    dtype = np.dtype(logits.dtype)
    outs = [dv.Output((m,), dtype, kind, a) for a in (loss, zmax, logsum)]
    counts = dv.Output((3,), np.int64, kind, stats)
    if dv.kind_of(stats) == dv.HOST:  # a host array's copy on the device starts from its values
        counts.dev = cuda.to_device(np.ascontiguousarray(stats))
    if m:
        blocks = -(-m // WARPS_PER_BLOCK)
        dv.launch(_fwd, blocks, WARPS_PER_BLOCK * 32, kind, dv.as_device(logits), target_d, rows_d,
                  has_rows, m, np.int64(ignore_index), *(o.dev for o in outs), counts.dev)
    for o in (*outs, counts):
        o.result()


def cross_entropy_bwd(logits, target, rows, zmax, logsum, scale, ignore_index, grad):
    """See :func:`tapegrad.kernels.reference.cross_entropy_bwd`."""
    kind = dv.kind_of(logits)
    target_d = dv.as_device(target)
    rows_d, has_rows, m = _rows_arg(rows, target_d, logits)
    c = logits.shape[1]
    out = dv.Output((m, c), np.dtype(logits.dtype), kind, grad)
    if m * c:
        per_row = scale.ndim == 1
        blocks, threads = dv.launch_shape(m * c, BLOCK, MAX_BLOCKS)
        dv.launch(_bwd, blocks, threads, kind, dv.as_device(logits), target_d, rows_d, has_rows, m,
                  dv.as_device(zmax), dv.as_device(logsum), dv.as_device(scale.reshape(-1)), per_row,
                  np.int64(ignore_index), out.dev)
    out.result()
