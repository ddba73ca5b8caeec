"""CSR: the sparse matrix type shared by the kernels, the engine and the GCN layers."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import registry, validate


class CSR:
    """A sparse matrix in compressed sparse row form.

    indptr: [n_rows + 1] integers, indices: [nnz] column ids (int32 or int64; a narrower integer dtype
    is accepted, and the transpose then gets int32/int64 ids when it cannot hold n_rows - 1), data:
    [nnz] float32/float64 values, or None meaning every stored value is 1 (an unweighted graph,
    stored without values). Index lists must hold integers (floats are refused, not truncated).
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
            shape = _shape(shape)
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
        """From any scipy.sparse matrix or array (converted to CSR; duplicates summed, columns sorted).

        The arrays are copied: ``m`` and the arrays it was built from are never changed, and later
        changes to them do not reach this (immutable, transpose-cached) matrix. float32/float64 values
        are kept; integer, bool and float16 values become float32; complex values raise TypeError.
        """
        import scipy.sparse as sp
        if not sp.issparse(m):
            raise TypeError(f"from_scipy needs a scipy.sparse matrix, got {type(m).__name__}")
        if m.dtype.kind == "c":
            raise TypeError(f"from_scipy needs real values, got {m.dtype} (take .real or abs() first)")
        # copy=True: sum_duplicates sorts and sums in place, and a csr input would otherwise be shared
        m = sp.csr_matrix(m, copy=True)
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
    def from_edge_index(cls, edge_index: Any, num_nodes: int | None = None, edge_weight: Any = None,
                        flow: str | None = None) -> "CSR":
        """A square CSR [N, N] from a PyG-style ``edge_index`` (row 0 the sources, row 1 the targets).

        Orientation, set by ``flow`` with PyG's names:

        - ``None`` (default): the adjacency matrix ``A[source, target] = weight``, as PyG's
          ``to_scipy_sparse_matrix`` builds it. Row i holds the edges leaving node i.
        - ``"source_to_target"`` (the flow of PyG's ``GCNConv`` and ``MessagePassing``):
          ``A[target, source] = weight``, the aggregation matrix: row i gathers the messages sent to i,
          which is what :func:`tapegrad.spmm` and :func:`tapegrad.gcn_norm` (rows are the receiving
          nodes) need to compute PyG's propagation on a directed graph.
        - ``"target_to_source"``: ``A[source, target]``, the same matrix as ``None``, named as in PyG.

        On an undirected (symmetric) ``edge_index`` all three give the same matrix.

        edge_index: [2, E] integers (numpy, cupy or a CPU torch tensor). ``num_nodes`` defaults to max id + 1.
        edge_weight: [E] or None (unweighted, every value 1); float32/float64 weights keep their dtype,
        integer (and float16) weights become float32, as ``GCNConv``'s path casts them. Duplicate edges
        are summed, self-loops included: two loops on node i of weights 2 and 3 become one loop of
        weight 5, which :func:`tapegrad.gcn_norm` keeps (PyG's ``add_remaining_self_loops`` on an
        uncoalesced edge_index keeps just one of them; ``torch_geometric.utils.coalesce`` first gives
        this result). An unweighted graph with duplicates gets float32 counts as values. Columns end
        up sorted within each row.
        """
        if flow not in (None, "source_to_target", "target_to_source"):
            raise ValueError(f"flow must be None, 'source_to_target' or 'target_to_source', got {flow!r}")
        ei = np.asarray(validate.on_host(edge_index))
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {ei.shape}")
        if ei.dtype.kind not in "iu":
            raise TypeError(f"edge_index must hold integers, got dtype {ei.dtype}")
        if num_nodes is None:
            if not ei.size:
                raise ValueError("num_nodes must be given for an edge_index without edges")
            n = int(ei.max()) + 1
        else:
            n = validate.size("num_nodes", num_nodes, minimum=1)
        if ei.size and (int(ei.min()) < 0 or int(ei.max()) >= n):
            raise ValueError(f"edge_index holds node ids outside [0, {n})")
        w = None
        if edge_weight is not None:
            w = np.asarray(validate.on_host(edge_weight))
            if w.shape != (ei.shape[1],):
                raise ValueError(f"edge_weight must have shape ({ei.shape[1]},), got {w.shape}")
            if w.dtype.kind not in "fiu":
                raise TypeError(f"edge_weight must be real numbers (float or integer), got {w.dtype}")
            if w.dtype not in validate.FLOAT_DTYPES:
                w = w.astype(np.float32)
        src, dst = (1, 0) if flow == "source_to_target" else (0, 1)
        rows, cols = ei[src].astype(np.int64), ei[dst].astype(np.int64)
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
        """A^T, computed by the csr_transpose kernel once and cached (the transpose of A^T is A). Its
        indices are A's row ids: int32 (or int64) when A's index dtype cannot hold n_rows - 1."""
        if self._transpose is None:
            indptr_t, indices_t, data_t, perm = transpose_arrays(
                registry.backend_of(self.indptr), self.indptr, self.indices, self.data, *self.shape)
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


def transpose_arrays(backend: str, indptr: Any, indices: Any, data: Any, n_rows: int, n_cols: int):
    """The csr_transpose kernel of ``backend`` on a checked pattern, with the indices first widened when
    their dtype cannot hold the row ids n_rows - 1 that A^T stores (int8 ids of a 200-row matrix would
    wrap). The GPU kernels give A^T the dtype of the indices they are passed, so the widening is done
    here, for every backend (the CPU kernel and the reference would also widen on their own)."""
    return registry.call("csr_transpose", backend, indptr, widened_indices(indices, n_rows), data, n_cols)


def widened_indices(indices: Any, n: int) -> Any:
    """``indices`` as a dtype that holds ids up to n - 1 (itself when its own dtype does)."""
    dtype = validate.index_dtype_for(indices.dtype, n)
    return indices if dtype == indices.dtype else indices.astype(dtype)


def _shape(shape: Any) -> tuple[int, int]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise TypeError(f"shape must be a pair of non-negative integers (n_rows, n_cols), got {shape!r}")
    if len(shape) != 2:
        raise ValueError(f"shape must be a pair of non-negative integers (n_rows, n_cols), got {shape!r}")
    try:
        return (validate.size("shape[0]", shape[0]), validate.size("shape[1]", shape[1]))
    except (TypeError, ValueError) as e:
        raise type(e)(f"shape must be a pair of non-negative integers (n_rows, n_cols), got {shape!r}: {e}") from None


def _as_index_array(name: str, a: Any, like: Any = None) -> Any:
    if isinstance(a, (list, tuple)):
        arr = np.asarray(a)
        # Python ints give an integer array; floats are refused below rather than truncated
        a = arr.astype(np.int64) if arr.size == 0 else arr
    validate.int_array(name, a)
    if like is not None:
        validate.same_device(name, a, like)
    if not a.flags.c_contiguous:
        a = validate._xp(a).ascontiguousarray(a)
    return a
