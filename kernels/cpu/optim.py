"""Numba kernel for the optimisers' elementwise update (Adam, AdamW).

Same signature and semantics as :func:`tapegrad.kernels.reference.adam_step`, in one pass over the
elements instead of the reference's nine array operations (each a pass over memory, most with a
temporary). Every operation is rounded to the parameter's dtype in the reference's order and nothing is
contracted into an FMA (no fastmath), so the results are the reference's bits.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .. import reference as ref


# error_model "numpy": a division by zero gives inf / nan as numpy's does, instead of a check per
# element that raises, which also keeps the loop from vectorising.
@njit(cache=True, error_model="numpy")
def _adam(p, g, m, v, c1, omc1, b2, c2, step_size, bias2, eps, wd, decay, l2, decoupled, lerp_hi):
    for i in range(p.shape[0]):  # the flags are the same for every element: LLVM hoists the tests
        pi = p[i] * decay if decoupled else p[i]
        gi = g[i] + wd * pi if l2 else g[i]
        mi = gi - (gi - m[i]) * omc1 if lerp_hi else m[i] + (gi - m[i]) * c1
        vi = v[i] * b2 + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * (mi / (np.sqrt(vi) / bias2 + eps))


def adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps, weight_decay=0.0,
              decay=1.0):
    """See :func:`tapegrad.kernels.reference.adam_step`. A strided gradient is copied to a contiguous one;
    a strided parameter or state, or mixed dtypes, take the reference's path."""
    if type(grad) is np.ndarray and not grad.flags.c_contiguous:
        grad = np.ascontiguousarray(grad)  # a weight's gradient often comes out of a GEMM transposed
    arrays = (param, grad, exp_avg, exp_avg_sq)
    t = param.dtype.type
    if not all(type(a) is np.ndarray and a.flags.c_contiguous and a.dtype == param.dtype
               and a.shape == param.shape for a in arrays) or param.dtype not in (np.float32, np.float64):
        return ref.adam_step(param, grad, exp_avg, exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps,
                             weight_decay, decay)
    c1 = t(1 - beta1)
    _adam(param.reshape(-1), grad.reshape(-1), exp_avg.reshape(-1), exp_avg_sq.reshape(-1), c1, t(1) - c1, t(beta2),
          t(1 - beta2), t(step_size), t(bias2_sqrt), t(eps), t(weight_decay), t(decay), bool(weight_decay),
          decay != 1.0, bool(c1 >= 0.5))
