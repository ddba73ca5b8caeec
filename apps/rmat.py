"""R-MAT power-law graphs (Chakrabarti, Zhan & Faloutsos, SDM 2004) for benchmarks and tests.

Each edge picks its (row, column) one bit at a time: at every level of the 2^scale x 2^scale
adjacency matrix it falls into the top-left, top-right, bottom-left or bottom-right quadrant with
probabilities a, b, c and d = 1 - a - b - c. With a > d the degrees follow a power law: a few hubs
(nodes whose ids have many zero bits) hold much of the matrix, as in web and citation graphs.

The default (a, b, c) = (0.57, 0.19, 0.19) is the Graph500 setting. The graph is directed (not
symmetrised) unless asked; a directed graph makes A^T a different matrix from A, so an SpMM backward
benchmark on it is not a second forward. Node ids are not permuted, so the hubs sit at small ids;
pass ``permute=True`` to relabel nodes at random as Graph500 does.
"""
from __future__ import annotations

import numpy as np

from ..kernels.csr import CSR

# Edges drawn per pass: small enough that the per-level work stays in cache, large enough that
# numpy's per-call overhead is negligible.
_CHUNK = 1 << 18


def rmat(scale: int, edge_factor: int = 16, a: float = 0.57, b: float = 0.19, c: float = 0.19,
         seed: int = 0, symmetric: bool = False, permute: bool = False) -> CSR:
    """An unweighted R-MAT graph with n = 2^scale nodes, as a square CSR.

    Draws ``edge_factor * n`` directed edges, then merges duplicates (a stored entry means "at least one
    edge", so the matrix stays unweighted: ``data`` is None, every value 1). Self-loops are kept. The
    result is directed (not symmetric) unless ``symmetric=True``, which adds every edge's reverse before
    merging, roughly doubling the stored entries. Duplicates make nnz a little below
    ``edge_factor * n`` with the default probabilities: 9% below at scale 16, 4% at scale 20.
    ``permute=True`` relabels the nodes by a random permutation (the same edges, hubs scattered).

    Returns a :class:`tapegrad.CSR` with int64 indptr and int32 indices, columns sorted within each row.
    Deterministic for a given ``seed``. Scale 20 (16.8M edges drawn) takes a few seconds.
    """
    _check(scale, a, b, c)
    if int(edge_factor) != edge_factor or edge_factor < 0:
        raise ValueError(f"edge_factor must be a non-negative integer, got {edge_factor!r}")
    scale, n = int(scale), 1 << int(scale)
    rng = np.random.default_rng(seed)
    keys = _edge_keys(scale, int(edge_factor) * n, a, b, c, rng)
    if permute:
        perm = rng.permutation(n).astype(np.uint64)
        row, col = perm[keys >> np.uint64(scale)], perm[keys & np.uint64(n - 1)]
        keys = (row << np.uint64(scale)) | col
    if symmetric:
        row, col = keys >> np.uint64(scale), keys & np.uint64(n - 1)
        keys = np.concatenate([keys, (col << np.uint64(scale)) | row])
    keys.sort()
    if len(keys):
        first = np.empty(len(keys), dtype=bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        keys = keys[first]
    rows = keys >> np.uint64(scale)
    indices = (keys & np.uint64(n - 1)).astype(np.int32)  # scale <= 31, so ids < 2^31
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows.astype(np.int64), minlength=n), out=indptr[1:])
    return CSR(indptr, indices, None, (n, n))


def rmat_edges(scale: int, n_edges: int, a: float = 0.57, b: float = 0.19, c: float = 0.19,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The raw R-MAT edge list, duplicates and all: (rows, cols), int64 [n_edges] each, in draw order.

    The same draws as :func:`rmat` makes for ``n_edges = edge_factor * 2^scale`` with the same seed.
    """
    _check(scale, a, b, c)
    if int(n_edges) != n_edges or n_edges < 0:
        raise ValueError(f"n_edges must be a non-negative integer, got {n_edges!r}")
    keys = _edge_keys(int(scale), int(n_edges), a, b, c, np.random.default_rng(seed))
    mask = np.uint64((1 << int(scale)) - 1)
    return (keys >> np.uint64(scale)).astype(np.int64), (keys & mask).astype(np.int64)


def _check(scale: int, a: float, b: float, c: float) -> None:
    if int(scale) != scale or not 0 <= scale <= 31:
        raise ValueError(f"scale must be an integer in [0, 31], got {scale!r}")
    if min(a, b, c) < 0 or a + b + c > 1.0 + 1e-9:
        raise ValueError(f"a, b, c must be non-negative with a + b + c <= 1, got {a}, {b}, {c}")


def _edge_keys(scale: int, m: int, a: float, b: float, c: float, rng: np.random.Generator) -> np.ndarray:
    """m edges as uint64 keys row << scale | col."""
    t_a, t_ab, t_abc = np.float32(a), np.float32(a + b), np.float32(a + b + c)
    keys = np.empty(m, dtype=np.uint64)
    for start in range(0, m, _CHUNK):
        k = min(_CHUNK, m - start)
        row = np.zeros(k, dtype=np.uint32)
        col = np.zeros(k, dtype=np.uint32)
        u = np.empty(k, dtype=np.float32)
        bit = np.empty(k, dtype=bool)
        tmp = np.empty(k, dtype=bool)
        for _ in range(scale):
            rng.random(out=u, dtype=np.float32)
            # Quadrants a=(0,0), b=(0,1), c=(1,0), d=(1,1): the row bit is u >= a+b; the column bit is
            # set for b and d, i.e. when an odd number of the thresholds a, a+b, a+b+c are <= u.
            # Bits go in most significant first: id = 2 id + bit.
            np.greater_equal(u, t_ab, out=bit)
            np.add(row, row, out=row)
            np.add(row, bit, out=row)
            np.greater_equal(u, t_a, out=tmp)
            np.logical_xor(bit, tmp, out=bit)
            np.greater_equal(u, t_abc, out=tmp)
            np.logical_xor(bit, tmp, out=bit)
            np.add(col, col, out=col)
            np.add(col, bit, out=col)
        out = keys[start:start + k]
        np.left_shift(row.astype(np.uint64), np.uint64(scale), out=out)
        out |= col
    return keys
