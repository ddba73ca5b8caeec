"""CuPy (CUDA C) kernel for the optimisers' elementwise update (Adam, AdamW).

Same signature and semantics as :func:`tapegrad.kernels.reference.adam_step`: one launch per parameter
instead of the reference's nine CuPy operations, whose host cost (each 10-15 us to queue) was most of a
small model's optimiser step. The operations are the reference's, in its order, in the parameter's
precision; the compiler may contract a multiply and an add into one FMA, so the last bit can differ from
the CPU's.
"""
from __future__ import annotations

import functools

import cupy
import numpy as np

from .. import reference as ref
from . import _compile as cc

BLOCK = 256
MAX_BLOCKS = 4096

_ADAM = r"""
typedef $T T;
extern "C" __global__ void tapegrad_adam_step_$SFX(
        T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, long long n,
        T c1, T b2, T c2, T step_size, T bias2, T eps, T wd, T decay, int l2, int decoupled, int lerp_hi) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        T pi = p[i];
        if (decoupled) pi = pi * decay;
        T gi = g[i];
        if (l2) gi = gi + wd * pi;
        const T mi = lerp_hi ? gi - (gi - m[i]) * (T(1) - c1) : m[i] + (gi - m[i]) * c1;  // torch's lerp
        const T vi = v[i] * b2 + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = pi - step_size * (mi / (sqrt(vi) / bias2 + eps));
    }
}
"""


@functools.cache
def _source(dtype, vec):  # one element per thread whatever the alignment: vec is always 1 here
    sfx = cc.suffix(dtype)
    return cc.render(_ADAM, T=cc.ctype(dtype), SFX=sfx), sfx


def adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps, weight_decay=0.0,
              decay=1.0):
    """See :func:`tapegrad.kernels.reference.adam_step`. A strided gradient is copied to a contiguous one;
    a parameter or state that is not a C-contiguous cupy array, or mixed dtypes or shapes, take the
    reference's path (CuPy operations)."""
    dtype = param.dtype
    if type(grad) is cupy.ndarray and not grad.flags.c_contiguous:
        grad = cupy.ascontiguousarray(grad)  # a weight's gradient often comes out of a GEMM transposed
    arrays = (param, grad, exp_avg, exp_avg_sq)
    if dtype not in (np.float32, np.float64) or not cc.plain(arrays, dtype) or not (
            param.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape):
        return ref.adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps,
                             weight_decay, decay)
    n = param.size
    if n == 0:
        return None
    t = dtype.type
    scalars = (np.int64(n), t(1 - beta1), t(beta2), t(1 - beta2), t(step_size), t(bias2_sqrt), t(eps),
               t(weight_decay), t(decay), np.int32(bool(weight_decay)), np.int32(decay != 1.0),
               np.int32(t(1 - beta1) >= 0.5))
    cc.launch_elementwise(_source, "adam_step", dtype, 1, n, BLOCK, MAX_BLOCKS, arrays, scalars)
    return None
