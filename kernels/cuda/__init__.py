"""Numba CUDA kernels (the numba-cuda package), with the signatures of the CPU kernels."""
import numpy as _np

# numba-cuda 0.30 registers an overload for np.row_stack the first time it compiles a kernel, and
# NumPy 2.5 removed that alias of np.vstack: without it every first compile raises AttributeError.
if not hasattr(_np, "row_stack"):
    _np.row_stack = _np.vstack
