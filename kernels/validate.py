"""Input checks run before any jitted kernel sees an array.

A kernel trusts its arguments (checking inside the hot loop costs speed), so every public entry point
checks here first, with vectorised O(n) tests, and raises a ValueError/TypeError naming the argument.
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _xp(a: Any):
    if type(a).__module__.startswith("cupy"):
        import cupy
        return cupy
    return np


def on_host(a: Any) -> Any:
    """``a`` itself, or for a cupy array its copy in host memory (graph construction runs on the host;
    cupy refuses ``np.asarray``)."""
    return a.get() if type(a).__module__.startswith("cupy") else a


def is_array(a: Any) -> bool:
    return isinstance(a, np.ndarray) or type(a).__module__.startswith("cupy")


def array(name: str, a: Any, ndim: int | None = None) -> Any:
    if not is_array(a):
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(a).__name__}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return a


def float_array(name: str, a: Any, ndim: int | None = None) -> Any:
    array(name, a, ndim)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    return a


def int_array(name: str, a: Any, ndim: int = 1) -> Any:
    array(name, a, ndim)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    return a


def size(name: str, v: Any, minimum: int = 0) -> int:
    """A size or count (n_cols, num_nodes, a shape entry): a Python or numpy integer, not a float, a
    string or a bool (none of them is silently truncated); returns it as an int."""
    if isinstance(v, (bool, np.bool_, float, np.floating)):
        raise TypeError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
    try:
        n = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {v!r} ({type(v).__name__})") from None
    if n < minimum:
        need = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {need}, got {n}")
    return n


def index_dtype_for(dtype: Any, n: int) -> np.dtype:
    """An integer dtype for ids 0 .. n - 1: ``dtype`` when it holds n - 1, else int32 when that does,
    else int64 (a transpose or relabelling writes row ids into column ids, which must never wrap)."""
    dtype = np.dtype(dtype)
    if n <= 1 or np.iinfo(dtype).max >= n - 1:
        return dtype
    return np.dtype(np.int32) if n - 1 <= np.iinfo(np.int32).max else np.dtype(np.int64)


def output(name: str, out: Any, shape: tuple, dtype: Any, like: Any) -> Any:
    """An ``out=`` array must be writable, C-contiguous, of the right shape, dtype and device."""
    array(name, out)
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if isinstance(out, np.ndarray) and not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    same_device(name, out, like)
    return out


def contiguous(name: str, a: Any) -> Any:
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (pass numpy.ascontiguousarray({name}))")
    return a


def distinct_outputs(**outs: Any) -> None:
    """Output arrays of one kernel call must not share memory with each other (each would overwrite
    the other's result)."""
    given = [(k, a) for k, a in outs.items() if a is not None]
    for i, (name, a) in enumerate(given):
        xp = _xp(a)
        for other_name, b in given[i + 1:]:
            if xp.may_share_memory(a, b):
                raise ValueError(f"outputs {name} and {other_name} share memory; pass separate arrays")


def no_overlap(name: str, out: Any, **inputs: Any) -> None:
    """An ``out=`` array must not share memory with an input the kernel still reads while writing."""
    if out is None:
        return
    xp = _xp(out)
    for other_name, a in inputs.items():
        if a is not None and xp.may_share_memory(out, a):
            raise ValueError(f"{name} shares memory with {other_name}; pass a separate output array")


def same_device(name: str, a: Any, like: Any) -> None:
    if isinstance(a, np.ndarray) != isinstance(like, np.ndarray):
        raise ValueError(f"{name} is on a different device than the other operands")


def csr_structure(indptr: Any, indices: Any, n_rows: int | None = None, n_cols: int | None = None,
                  n_cols_from: str | None = None) -> tuple[int, int]:
    """Check a CSR pattern; returns (n_rows, nnz). ``n_cols_from`` names the dense operand whose row
    count ``n_cols`` is (x of spmm): a column id beyond it is then reported as that operand's fault."""
    int_array("indptr", indptr)
    int_array("indices", indices)
    contiguous("indptr", indptr)
    contiguous("indices", indices)
    same_device("indices", indices, indptr)
    xp = _xp(indptr)
    if len(indptr) < 1:
        raise ValueError("indptr must have length n_rows + 1 >= 1, got an empty array")
    rows = len(indptr) - 1
    if n_rows is not None and rows != n_rows:
        raise ValueError(f"indptr must have length n_rows + 1 = {n_rows + 1}, got {len(indptr)}")
    if rows == 0:
        raise ValueError("the matrix has zero rows (a graph with zero nodes)")
    if xp is not np and indptr.dtype.itemsize in (4, 8) and indices.dtype.itemsize in (4, 8) \
            and indptr.dtype.kind == indices.dtype.kind == "i":
        return _csr_structure_on_gpu(indptr, indices, rows, n_cols, n_cols_from)
    if int(indptr[0]) != 0:
        raise ValueError(f"indptr must start at 0, got {int(indptr[0])}")
    if rows and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    nnz = int(indptr[-1])
    if nnz != len(indices):
        raise ValueError(f"indptr must end at nnz = len(indices) = {len(indices)}, got {nnz}")
    if nnz:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0:
            raise ValueError(f"indices must be non-negative, got {lo}")
        if n_cols is not None and hi >= n_cols:
            raise ValueError(_cols_message(n_cols, hi, n_cols_from))
    return rows, nnz


def _cols_message(n_cols: int, top: int, n_cols_from: str | None) -> str:
    if n_cols_from is None:
        return f"indices must be < n_cols = {n_cols}, got {top}"
    return (f"{n_cols_from} has too few rows: {n_cols}, but the matrix's column ids (indices) go up to {top}, "
            f"so {n_cols_from} needs at least {top + 1} rows")


def _csr_structure_on_gpu(indptr: Any, indices: Any, rows: int, n_cols: int | None,
                          n_cols_from: str | None = None) -> tuple[int, int]:
    """csr_structure's value checks for cupy arrays, with one host sync (kernels/cupy/sparse.csr_stats);
    the same errors, in the same order."""
    from .cupy.sparse import csr_stats
    first, decreasing, nnz, negative, top = csr_stats(indptr, indices)
    if first != 0:
        raise ValueError(f"indptr must start at 0, got {first}")
    if decreasing:
        raise ValueError("indptr must be non-decreasing")
    if nnz != len(indices):
        raise ValueError(f"indptr must end at nnz = len(indices) = {len(indices)}, got {nnz}")
    if nnz:
        if negative:
            raise ValueError(f"indices must be non-negative, got {int(indices.min())}")
        if n_cols is not None and top - 1 >= n_cols:
            raise ValueError(_cols_message(n_cols, top - 1, n_cols_from))
    return rows, nnz


def csr_values(data: Any, nnz: int) -> Any:
    if data is None:
        return None
    float_array("data", data, 1)
    contiguous("data", data)
    if len(data) != nnz:
        raise ValueError(f"data must have length nnz = {nnz}, got {len(data)}")
    return data
