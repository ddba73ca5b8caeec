"""Sparse ops on the tape: spmm (Y = A X) and gcn_norm."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import registry
from ..kernels import gcn_norm as _gcn_norm_kernel
from ..kernels.csr import CSR
from .backend import array_module, to_device
from .ops import as_tensor, reshape
from .tensor import Tensor, make_result


def _values_as(data: Any, dtype) -> Any:
    return data if data is None or data.dtype == dtype else data.astype(dtype)


def _on_device_of(A: CSR, x: Any) -> Any:
    """A Tensor as it is; a host array or list as a constant on a GPU matrix's device, as host constants
    follow GPU tensors in the dense ops (anything else on another device is refused below)."""
    if x is None or isinstance(x, Tensor):
        return x
    x = as_tensor(x)
    return Tensor(to_device(x.data, "cuda")) if A.device == "cuda" and x.device == "cpu" else x


def spmm(A: CSR, x: Any, values: Tensor | None = None) -> Tensor:
    """Y = A @ X with A sparse (CSR) and X dense.

    A: [N, M] CSR; x: [M, F] (or [M]) tensor -> [N, F] (or [N]). ``values`` ([nnz] tensor of x's dtype)
    replaces A's stored values and may require grad. Backward: dX = A^T dY through A's cached transpose
    (a gather: deterministic, no write races); dvalues_k = <dY_i, X_j> for entry k = (i, j), an SDDMM.

    Row i gathers, Y[i] = sum_j A[i, j] X[j]: in message passing the rows of A are the receiving
    (target) nodes. For a PyG ``edge_index`` that is ``CSR.from_edge_index(ei, flow="source_to_target")``
    (A[target, source]); the default ``CSR.from_edge_index(ei)`` is A[source, target], which on a
    directed graph sends messages from targets to sources.
    """
    if not isinstance(A, CSR):
        raise TypeError(f"spmm needs a tapegrad.CSR as A, got {type(A).__name__}")
    x, values = _on_device_of(A, x), _on_device_of(A, values)
    if x.ndim == 1:
        return reshape(spmm(A, reshape(x, (-1, 1)), values), (-1,))
    if x.ndim != 2:
        raise ValueError(f"x must be 1-D or 2-D, got shape {x.shape}")
    if x.shape[0] != A.shape[1]:
        raise ValueError(f"A has {A.shape[1]} columns but x has {x.shape[0]} rows")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if x.device != A.device:
        raise ValueError(f"A is on {A.device} but x is on {x.device}")
    xp = array_module(x.data)
    dtype = x.dtype
    xd = x.data if x.data.flags.c_contiguous else xp.ascontiguousarray(x.data)
    backend = registry.backend_of(xd)
    if values is not None:
        values = as_tensor(values)
        if values.shape != (A.nnz,):
            raise ValueError(f"values must have shape ({A.nnz},), got {values.shape}")
        if values.device != x.device:
            raise ValueError(f"values are on {values.device} but x is on {x.device}")
        if values.dtype != dtype:  # as torch: no silent cast, whose gradient would come back in the other dtype
            raise TypeError(f"values have dtype {values.dtype} but x has {dtype}; use one float dtype")
        vals = _values_as(values.data, dtype)
    else:
        vals = _values_as(A.data, dtype)
    out = registry.call("spmm", backend, A.indptr, A.indices, vals, xd, None)
    parents = (x,) if values is None else (x, values)

    def backward(g):
        g = g if g.flags.c_contiguous else xp.ascontiguousarray(g)
        grad_x = None
        if x.requires_grad:
            At = A.transpose()
            vals_t = _values_as(At.data, dtype) if values is None else vals[A.transpose_permutation()]
            grad_x = registry.call("spmm", backend, At.indptr, At.indices, vals_t, g, None)
        if values is None:
            return (grad_x,)
        grad_v = registry.call("sddmm", backend, A.indptr, A.indices, g, xd, None) if values.requires_grad else None
        return grad_x, grad_v
    return make_result(out, parents, backward, "spmm")


def gcn_norm(A: CSR, add_self_loops: bool = True, improved: bool = False, dtype: Any = None) -> CSR:
    """P = D^-1/2 (A + I) D^-1/2 (Kipf & Welling), with 2I when ``improved``.

    Self-loops are added only to nodes without one (an existing loop keeps its weight); D is the row
    sum of A + I; a node of zero degree gives a zero row. Edge weights (A's values) are respected.
    ``dtype`` of the result defaults to A's value dtype, or float32 for an unweighted A.

    Rows are the receiving nodes, as :func:`spmm` gathers along rows: PyG's ``gcn_norm`` / ``GCNConv``
    on a directed ``edge_index`` (in-degrees, messages source -> target) is
    ``gcn_norm(CSR.from_edge_index(ei, flow="source_to_target"))``. The default
    ``CSR.from_edge_index(ei)`` is A[source, target] (PyG's ``to_scipy_sparse_matrix``), whose row sums
    are out-degrees; the two agree on undirected graphs.
    """
    if not isinstance(A, CSR):
        raise TypeError(f"gcn_norm needs a tapegrad.CSR, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"gcn_norm needs a square adjacency matrix, got shape {A.shape}")
    if dtype is not None:
        dtype = np.dtype(dtype)
    else:  # spelled out: a dtype's truth value is not "is there one" in every numpy version
        dtype = A.dtype if A.dtype is not None else np.dtype(np.float32)
    indptr, indices, data = _gcn_norm_kernel(A.indptr, A.indices, _values_as(A.data, dtype), A.shape[0],
                                             add_self_loops, 2.0 if improved else 1.0, dtype)
    return CSR(indptr, indices, data, A.shape)
