"""CSR: the sparse matrix type shared by the kernels, the engine and the GCN layers."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import registry, validate


class CSR:
    """A sparse matrix in compressed sparse row form.

    indptr: [n_rows + 1] integers, indices: [nnz] column ids (int32 or int64), data: [nnz] float32/float64
    values, or None meaning every stored value is 1 (an unweighted graph, stored without values).
    ``shape`` defaults to square when every column id is below n_rows (an adjacency matrix), else to
    (n_rows, max column id + 1). Arrays are numpy or cupy and are validated once, on construction; the
    matrix is treated as immutable, so its transpose is computed once and cached.
    """

    __slots__ = ("indptr", "indices", "data", "shape", "_transpose", "_perm", "__weakref__")

    def __init__(self, indptr: Any, indices: Any, data: Any = None, shape: tuple[int, int] | None = None) -> None:
        indptr = _as_index_array("indptr", indptr)
        indices = _as_index_array("indices", indices, like=indptr)
        n_rows, nnz = validate.csr_structure(indptr, indices)
        if shape is None:
            top = int(indices.max()) + 1 if nnz else 0
            shape = (n_rows, n_rows if top <= n_rows else top)
        else:
            if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
                raise ValueError(f"shape must be two non-negative integers, got {shape!r}")
            shape = (int(shape[0]), int(shape[1]))
            validate.csr_structure(indptr, indices, n_rows=shape[0], n_cols=shape[1])
        if data is not None:
            if isinstance(data, (list, tuple)):
                data = np.asarray(data, dtype=np.float32)
            validate.array("data", data)
            if not data.flags.c_contiguous:  # a strided view: the GPU kernels index it as dense
                data = validate._xp(data).ascontiguousarray(data)
            validate.csr_values(data, nnz)
            validate.same_device("data", data, indptr)
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = shape
        self._transpose: CSR | None = None
        self._perm = None

    # ---- basic facts ----------------------------------------------------------------------------------------
    @property
    def nnz(self) -> int:
        return len(self.indices)

    @property
    def dtype(self):
        """The values' dtype, or None for an unweighted (all-ones) matrix."""
        return None if self.data is None else self.data.dtype

    @property
    def device(self) -> str:
        return "cpu" if isinstance(self.indptr, np.ndarray) else "cuda"

    def __repr__(self) -> str:
        kind = "unweighted" if self.data is None else str(self.data.dtype)
        return f"CSR(shape={self.shape}, nnz={self.nnz}, {kind}, indices={self.indices.dtype}, device='{self.device}')"

    # ---- conversion --------------------------------------------------------------------------------------------
    @classmethod
    def from_scipy(cls, m: Any) -> "CSR":
        """From any scipy.sparse matrix or array (converted to CSR; duplicates summed)."""
        import scipy.sparse as sp
        if not sp.issparse(m):
            raise TypeError(f"from_scipy needs a scipy.sparse matrix, got {type(m).__name__}")
        m = sp.csr_matrix(m)
        m.sum_duplicates()
        data = m.data if m.data.dtype in validate.FLOAT_DTYPES else m.data.astype(np.float32)
        return cls(m.indptr, m.indices, data, m.shape)

    def to_scipy(self):
        """A scipy.sparse.csr_matrix (on the host); an unweighted matrix gets float32 ones."""
        import scipy.sparse as sp
        host = self.to("cpu")
        data = host.data if host.data is not None else np.ones(host.nnz, dtype=np.float32)
        # copied: scipy would otherwise share this (immutable, transpose-cached) matrix's arrays
        return sp.csr_matrix((data, host.indices, host.indptr), shape=self.shape, copy=True)

    def toarray(self) -> np.ndarray:
        return self.to_scipy().toarray()

    @classmethod
    def from_edge_index(cls, edge_index: Any, num_nodes: int | None = None, edge_weight: Any = None) -> "CSR":
        """The adjacency A with A[edge_index[0, e], edge_index[1, e]] = edge_weight[e] (1 when None).

        edge_index: [2, E] integers (numpy or a CPU torch tensor). Duplicate edges are summed; columns
        end up sorted within each row. ``num_nodes`` defaults to max id + 1.
        """
        ei = np.asarray(edge_index)
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {ei.shape}")
        if ei.dtype.kind not in "iu":
            raise TypeError(f"edge_index must hold integers, got dtype {ei.dtype}")
        n = int(ei.max()) + 1 if num_nodes is None and ei.size else num_nodes
        if n is None or int(n) <= 0:
            raise ValueError(f"num_nodes must be positive, got {n}")
        n = int(n)
        if ei.size and (int(ei.min()) < 0 or int(ei.max()) >= n):
            raise ValueError(f"edge_index holds node ids outside [0, {n})")
        w = None
        if edge_weight is not None:
            w = np.asarray(edge_weight)
            if w.shape != (ei.shape[1],):
                raise ValueError(f"edge_weight must have shape ({ei.shape[1]},), got {w.shape}")
            if w.dtype not in validate.FLOAT_DTYPES:
                raise TypeError(f"edge_weight must be float32 or float64, got {w.dtype}")
        rows, cols = ei[0].astype(np.int64), ei[1].astype(np.int64)
        key = rows * n + cols
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        uniq = key[first]
        data = None
        if w is not None:
            data = np.add.reduceat(w[order], np.nonzero(first)[0]) if len(key) else w[:0]
        elif not first.all():
            # duplicates in an unweighted graph: the summed entries are no longer all ones
            counts = np.diff(np.append(np.nonzero(first)[0], len(key)))
            data = counts.astype(np.float32)
        urows, ucols = uniq // n, uniq % n
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(urows, minlength=n), out=indptr[1:])
        index_dtype = np.int32 if n < 2**31 else np.int64
        return cls(indptr, ucols.astype(index_dtype), data, (n, n))

    def to(self, device: str) -> "CSR":
        """This matrix on another device ('cpu' or 'cuda'); itself when already there."""
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        device = "cpu" if device == "cpu" else "cuda"
        if device == self.device:
            return self
        if device == "cpu":
            move = lambda a: a.get()  # noqa: E731
        else:
            import cupy
            move = cupy.asarray
        data = None if self.data is None else move(self.data)
        return CSR(move(self.indptr), move(self.indices), data, self.shape)

    def astype(self, dtype: Any) -> "CSR":
        """The same pattern with values of ``dtype`` (ones materialised for an unweighted matrix)."""
        dtype = np.dtype(dtype)
        xp = validate._xp(self.indptr)
        data = xp.ones(self.nnz, dtype=dtype) if self.data is None else self.data.astype(dtype)
        return CSR(self.indptr, self.indices, data, self.shape)

    # ---- transpose ---------------------------------------------------------------------------------------------
    def transpose(self) -> "CSR":
        """A^T, computed by the csr_transpose kernel once and cached (the transpose of A^T is A)."""
        if self._transpose is None:
            backend = registry.backend_of(self.indptr)
            indptr_t, indices_t, data_t, perm = registry.call(
                "csr_transpose", backend, self.indptr, self.indices, self.data, self.shape[1])
            t = CSR.__new__(CSR)
            t.indptr, t.indices, t.data = indptr_t, indices_t, data_t
            t.shape = (self.shape[1], self.shape[0])
            t._transpose, t._perm = self, None
            self._transpose, self._perm = t, perm
        return self._transpose

    @property
    def T(self) -> "CSR":
        return self.transpose()

    def transpose_permutation(self):
        """perm with A^T.data == A.data[perm]: maps a gradient on A^T's values back to A's order."""
        t = self.transpose()
        if self._perm is None:
            # self was made as the transpose of t (t._transpose is self): invert t's permutation
            perm = t.transpose_permutation()
            xp = validate._xp(perm)
            inv = xp.empty_like(perm)
            inv[perm] = xp.arange(len(perm), dtype=perm.dtype)
            self._perm = inv
        return self._perm


def _as_index_array(name: str, a: Any, like: Any = None) -> Any:
    if isinstance(a, (list, tuple)):
        a = np.asarray(a, dtype=np.int64)
    validate.int_array(name, a)
    if like is not None:
        validate.same_device(name, a, like)
    if not a.flags.c_contiguous:
        a = validate._xp(a).ascontiguousarray(a)
    return a
