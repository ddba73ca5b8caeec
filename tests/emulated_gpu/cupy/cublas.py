"""cupy.cublas: gemm only (what tapegrad calls), as its documented contract: out = alpha op(a) op(b) + beta out."""
from __future__ import annotations

import numpy as np

from ._core import ndarray


def _op(x, t):
    t = t.upper() if isinstance(t, str) else {0: "N", 1: "T", 2: "H"}[t]
    return x if t == "N" else (x.T if t == "T" else x.conj().T)


def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    for name, x in (("a", a), ("b", b)) + ((("out", out),) if out is not None else ()):
        if not isinstance(x, ndarray):
            raise TypeError(f"cublas.gemm: {name} must be a cupy.ndarray, got {type(x)}")
    r = alpha * (_op(a._a, transa) @ _op(b._a, transb))
    if out is None:
        return ndarray._of(np.ascontiguousarray(r))
    if out.dtype != a.dtype or a.dtype != b.dtype:
        raise TypeError("cublas.gemm: dtypes differ")
    if beta == 0:
        out._a[...] = r
    else:
        out._a[...] = r + beta * out._a
    return out
