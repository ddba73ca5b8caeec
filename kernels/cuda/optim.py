"""Numba CUDA kernel for the optimisers' elementwise update (Adam, AdamW).

Same signature and semantics as :func:`tapegrad.kernels.reference.adam_step`, one launch per parameter
(see :mod:`tapegrad.kernels.cupy.optim` for why). Arrays may be cupy arrays, Numba device arrays or host
NumPy arrays, updated in place.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import _device as dv

BLOCK = 256
MAX_BLOCKS = 4096


@cuda.jit
def _adam(p, g, m, v, c1, omc1, b2, c2, step_size, bias2, eps, wd, decay, l2, decoupled, lerp_hi):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < p.shape[0]:
        pi = p[i]
        if decoupled:
            pi = pi * decay
        gi = g[i]
        if l2:
            gi = gi + wd * pi
        if lerp_hi:  # torch's lerp above a weight of 1/2
            mi = gi - (gi - m[i]) * omc1
        else:
            mi = m[i] + (gi - m[i]) * c1
        vi = v[i] * b2 + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * (mi / (math.sqrt(vi) / bias2 + eps))
        i += stride


def adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps, weight_decay=0.0,
              decay=1.0):
    """See :func:`tapegrad.kernels.reference.adam_step`. The arrays must be of one float dtype and one shape;
    a strided cupy gradient is copied to a contiguous one, and a strided cupy parameter or state takes the
    reference's path (CuPy operations)."""
    dtype = np.dtype(param.dtype)
    if dv.kind_of(param) == dv.CUPY and any(np.dtype(a.dtype) != dtype for a in (grad, exp_avg, exp_avg_sq)):
        from .. import reference as ref  # mixed dtypes: CuPy operations, as the other backends do
        return ref.adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps,
                             weight_decay, decay)
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if tuple(a.shape) != tuple(param.shape) or np.dtype(a.dtype) != dtype:
            raise ValueError(f"{name} has shape {tuple(a.shape)} and dtype {a.dtype}, expected "
                             f"{tuple(param.shape)} and {dtype}")
    n = int(np.prod(param.shape))
    if n == 0:
        return None
    kind = dv.kind_of(param)
    if dv.kind_of(grad) == dv.CUPY and not grad.flags.c_contiguous:
        import cupy
        grad = cupy.ascontiguousarray(grad)  # a weight's gradient often comes out of a GEMM transposed
    if kind == dv.CUPY and not all(dv.kind_of(a) == dv.CUPY and a.flags.c_contiguous
                                   for a in (param, grad, exp_avg, exp_avg_sq)):
        from .. import reference as ref  # CuPy operations, in place on any layout
        return ref.adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps,
                             weight_decay, decay)
    flat = []
    back = []
    for a in (param, grad, exp_avg, exp_avg_sq):
        if dv.kind_of(a) == dv.HOST:
            dev = cuda.to_device(np.ascontiguousarray(a).reshape(-1))
            back.append((dev, a))
            flat.append(dev)
        else:
            flat.append(dv.as_device(a).reshape(n))
    t = dtype.type
    blocks, threads = dv.launch_shape(n, BLOCK, MAX_BLOCKS)
    c1 = t(1 - beta1)
    dv.launch(_adam, blocks, threads, kind, *flat, c1, t(1) - c1, t(beta2), t(1 - beta2), t(step_size),
              t(bias2_sqrt), t(eps), t(weight_decay), t(decay), bool(weight_decay), decay != 1.0,
              bool(c1 >= 0.5))
    for dev, host in back:
        host[...] = dev.copy_to_host().reshape(host.shape)
    return None
