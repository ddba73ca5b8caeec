"""Kernels: plain functions over arrays (numpy on the CPU, cupy on the GPU), no Tensors.

Each function here checks its arguments, then runs the kernel for the arrays' device through the
table in :mod:`tapegrad.kernels.registry` (Numba on the CPU; CuPy or Numba CUDA on the GPU). Pass
``backend=`` to pick an implementation explicitly. The implementations themselves live in
``kernels/cpu``, ``kernels/cuda`` and ``kernels/cupy`` with the same signatures, and
``kernels/reference.py`` holds the NumPy reference each is tested against.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import registry, validate
from .csr import CSR, transpose_arrays, widened_indices
from .registry import gpu_backend, set_gpu_backend

__all__ = [
    "CSR", "spmm", "sddmm", "csr_transpose", "gcn_norm",
    "lstm_cell_fwd", "lstm_cell_bwd", "rnn_cell_fwd", "rnn_cell_bwd",
    "set_gpu_backend", "gpu_backend",
]


def _backend(like: Any, backend: str | None) -> str:
    """The backend serving ``like``'s device, or the one named, if it can take arrays of that kind."""
    name = registry.backend_of(like, backend)
    on_host = isinstance(like, np.ndarray)
    if name == "cpu" and not on_host:
        raise ValueError("backend='cpu' needs numpy arrays, got GPU arrays")
    if name == "cupy" and on_host:
        raise ValueError("backend='cupy' needs cupy arrays, got numpy arrays (move them with cupy.asarray)")
    return name


def _check_csr_operand(indptr, indices, data, n_cols: int | None, like, n_cols_from: str) -> tuple[int, int]:
    n_rows, nnz = validate.csr_structure(indptr, indices, n_cols=n_cols, n_cols_from=n_cols_from)
    validate.same_device("indptr", indptr, like)
    validate.csr_values(data, nnz)
    if data is not None:
        validate.same_device("data", data, like)
        if data.dtype != like.dtype:
            raise TypeError(f"data has dtype {data.dtype} but x has {like.dtype}; use one float dtype")
    return n_rows, nnz


def spmm(indptr: Any, indices: Any, data: Any, x: Any, out: Any = None, backend: str | None = None) -> Any:
    """Y = A @ X for a CSR matrix A and a dense row-major X.

    indptr [n_rows+1], indices [nnz] (int32/int64), data [nnz] or None (all ones), x [n_cols, F]
    float32/float64 -> Y [n_rows, F] of x's dtype. Parallel over rows, balanced by nonzeros.
    Row i gathers: Y[i] = sum_k data[k] X[indices[k]] over row i's entries, so for message passing the
    rows are the receiving (target) nodes.
    """
    validate.float_array("x", x, 2)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (row-major)")
    n_rows, _ = _check_csr_operand(indptr, indices, data, x.shape[0], x, "x")
    if out is not None:
        validate.output("out", out, (n_rows, x.shape[1]), x.dtype, x)
        validate.no_overlap("out", out, x=x, data=data, indptr=indptr, indices=indices)
    return registry.call("spmm", _backend(x, backend), indptr, indices, data, x, out)


def sddmm(indptr: Any, indices: Any, a: Any, b: Any, out: Any = None, backend: str | None = None) -> Any:
    """out[k] = <a[row(k)], b[indices[k]]> on A's pattern: a [n_rows, F], b [n_cols, F] -> [nnz]."""
    validate.float_array("a", a, 2)
    validate.float_array("b", b, 2)
    if a.dtype != b.dtype or a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} {a.dtype} and b {b.shape} {b.dtype} need one dtype and one width")
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        raise ValueError("a and b must be C-contiguous")
    validate.same_device("b", b, a)
    n_rows, nnz = _check_csr_operand(indptr, indices, None, b.shape[0], a, "b")
    if a.shape[0] != n_rows:
        raise ValueError(f"a must have n_rows = {n_rows} rows, got {a.shape[0]}")
    if out is not None:
        validate.output("out", out, (nnz,), a.dtype, a)
        validate.no_overlap("out", out, a=a, b=b, indptr=indptr, indices=indices)
    return registry.call("sddmm", _backend(a, backend), indptr, indices, a, b, out)


def csr_transpose(indptr: Any, indices: Any, data: Any, n_cols: int, backend: str | None = None):
    """A^T in CSR: (indptr_t, indices_t, data_t or None, perm) with data_t = data[perm].

    indices_t holds A's row ids: it has indices' dtype when that holds n_rows - 1, else int32 (or int64
    when n_rows - 1 exceeds int32), so int8/int16 column ids of a tall matrix never wrap.
    """
    n_cols = validate.size("n_cols", n_cols, minimum=1)
    n_rows, nnz = validate.csr_structure(indptr, indices, n_cols=n_cols)
    validate.csr_values(data, nnz)
    if data is not None:
        validate.same_device("data", data, indptr)
    return transpose_arrays(_backend(indptr, backend), indptr, indices, data, n_rows, n_cols)


def gcn_norm(indptr: Any, indices: Any, data: Any, num_nodes: int, add_self_loops: bool = True,
             fill_value: float = 1.0, dtype: Any = np.float32, backend: str | None = None):
    """P = D^-1/2 (A + fill_value I) D^-1/2 on a square CSR A: (indptr, indices, data of ``dtype``).

    Self-loops are added only where missing; D is the row sum of A + I; zero-degree rows stay zero.
    Rows are the receiving nodes (the rows :func:`spmm` gathers), so D holds in-degrees when
    A[target, source] is built from a PyG edge_index (``CSR.from_edge_index(ei, flow="source_to_target")``).
    The result's indices keep indices' dtype unless an added self-loop id (up to num_nodes - 1) does
    not fit it; then they are int32 (or int64).
    """
    dtype = np.dtype(dtype)
    if dtype not in validate.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    try:
        num_nodes = validate.size("num_nodes", num_nodes, minimum=1)
    except ValueError:
        raise ValueError(f"num_nodes must be a positive integer (a graph with zero nodes has no GCN), "
                         f"got {num_nodes!r}") from None
    _, nnz = validate.csr_structure(indptr, indices, n_rows=num_nodes, n_cols=num_nodes)
    validate.csr_values(data, nnz)
    if data is not None:
        validate.same_device("data", data, indptr)
    if add_self_loops:
        indices = widened_indices(indices, num_nodes)
    return registry.call("gcn_norm", _backend(indptr, backend), indptr, indices, data,
                         num_nodes, bool(add_self_loops), float(fill_value), dtype)


def _same_float(names: tuple, arrays: tuple, shapes: tuple) -> None:
    first = arrays[0]
    for name, a, shape in zip(names, arrays, shapes):
        validate.float_array(name, a, 2)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        if a.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {a.dtype}, expected {first.dtype} like {names[0]}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        validate.same_device(name, a, first)


def _check_outputs(names: tuple, outs: tuple, shapes: tuple, like) -> None:
    for name, out, shape in zip(names, outs, shapes):
        if out is not None:
            validate.output(name, out, shape, like.dtype, like)
    validate.distinct_outputs(**dict(zip(names, outs)))


def lstm_cell_fwd(z, c_prev, gates=None, c=None, h=None, backend: str | None = None):
    """One fused LSTM step: z [B, 4H] pre-activations (i, f, g, o), c_prev [B, H] -> (gates, c, h)."""
    validate.float_array("z", z, 2)
    b, four_h = z.shape
    if four_h % 4:
        raise ValueError(f"z must have 4H columns, got {four_h}")
    hsz = four_h // 4
    _same_float(("z", "c_prev"), (z, c_prev), ((b, four_h), (b, hsz)))
    _check_outputs(("gates", "c", "h"), (gates, c, h), ((b, four_h), (b, hsz), (b, hsz)), z)
    return registry.call("lstm_cell_fwd", _backend(z, backend), z, c_prev, gates, c, h)


def lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z=None, grad_c_prev=None, backend: str | None = None):
    """Backward of one LSTM step -> (grad_z [B, 4H], grad_c_prev [B, H])."""
    validate.float_array("gates", gates, 2)
    b, four_h = gates.shape
    if four_h % 4:
        raise ValueError(f"gates must have 4H columns, got {four_h}")
    hsz = four_h // 4
    _same_float(("gates", "c_prev", "c", "grad_h", "grad_c"), (gates, c_prev, c, grad_h, grad_c),
                ((b, four_h),) + ((b, hsz),) * 4)
    _check_outputs(("grad_z", "grad_c_prev"), (grad_z, grad_c_prev), ((b, four_h), (b, hsz)), gates)
    return registry.call("lstm_cell_bwd", _backend(gates, backend),
                         gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev)


def rnn_cell_fwd(z, h=None, relu: bool = False, backend: str | None = None):
    """One Elman step after the GEMMs: h = tanh(z) (or relu(z)); z [B, H]."""
    validate.float_array("z", z, 2)
    _same_float(("z",), (z,), (z.shape,))
    _check_outputs(("h",), (h,), (z.shape,), z)
    return registry.call("rnn_cell_fwd", _backend(z, backend), z, h, bool(relu))


def rnn_cell_bwd(h, grad_h, grad_z=None, relu: bool = False, backend: str | None = None):
    """grad_z = grad_h * act'(z), from the step's output h; [B, H]."""
    validate.float_array("h", h, 2)
    _same_float(("h", "grad_h"), (h, grad_h), (h.shape, h.shape))
    _check_outputs(("grad_z",), (grad_z,), (h.shape,), h)
    return registry.call("rnn_cell_bwd", _backend(h, backend), h, grad_h, grad_z, bool(relu))
