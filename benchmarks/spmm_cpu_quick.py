"""Quick CPU SpMM benchmark: tapegrad's Numba kernel vs scipy.sparse and torch.sparse.mm.

Run from anywhere (OpenBLAS variables unset so that no peer is pinned to odd settings)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/spmm_cpu_quick.py [--rmat] [--width 64]

Prints the median time of each implementation over ``--reps`` runs after a warm-up, and the ratio
peer / ours (above 1 means tapegrad is faster). Graphs: PubMed (structure only) and, with ``--rmat``,
an R-MAT power-law graph with 2^20 nodes and about 16M stored entries (a=0.57, b=c=0.19), cached in
the temp folder after the first build.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
import scipy.sparse as sp

from tapegrad.kernels.cpu import sparse as cpu

PUBMED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "pubmed.npz")


def load_pubmed(path):
    d = np.load(path, allow_pickle=False)
    return d["adj_indptr"], d["adj_indices"]


def rmat(scale=20, n_edges=18_000_000, a=0.57, b=0.19, c=0.19, seed=0):
    """R-MAT edges, duplicates merged, as CSR (indptr int64, indices int32)."""
    cache = os.path.join(tempfile.gettempdir(), f"tapegrad_rmat_{scale}_{n_edges}_{seed}.npz")
    if os.path.exists(cache):
        d = np.load(cache)
        return d["indptr"], d["indices"]
    rng = np.random.default_rng(seed)
    n = 1 << scale
    row = np.zeros(n_edges, dtype=np.int64)
    col = np.zeros(n_edges, dtype=np.int64)
    for level in range(scale):
        u = rng.random(n_edges, dtype=np.float32)
        bit = np.int64(1) << (scale - 1 - level)
        # Quadrants: a = (0,0), b = (0,1), c = (1,0), d = (1,1).
        right = ((u >= a) & (u < a + b)) | (u >= a + b + c)
        down = u >= a + b
        row += down * bit
        col += right * bit
    key = np.unique(row * n + col)
    row, col = key // n, key % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    indices = col.astype(np.int32)
    np.savez(cache, indptr=indptr, indices=indices)
    return indptr, indices


def median_times(fns, reps):
    """Median seconds of each function; runs are interleaved so that load from other processes
    on the machine hits every implementation alike."""
    for fn in fns.values():
        fn()
        fn()
    ts = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in ts.items()}


def bench(name, indptr, indices, width, reps, dtype=np.float32):
    import torch

    n = len(indptr) - 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, width)).astype(dtype)
    data = rng.random(len(indices)).astype(dtype)
    out = np.empty((n, width), dtype=dtype)
    a = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    with warnings.catch_warnings():  # "beta" and invariant-check notices
        warnings.simplefilter("ignore")
        ta = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices.astype(np.int64)),
                                     torch.from_numpy(data), size=(n, n))
    tx = torch.from_numpy(x)
    ref = a @ x
    np.testing.assert_allclose(cpu.spmm(indptr, indices, data, x), ref, rtol=1e-4, atol=1e-4)
    t = median_times({
        "ours": lambda: cpu.spmm(indptr, indices, data, x, out),
        "ones": lambda: cpu.spmm(indptr, indices, None, x, out),
        "scipy": lambda: a @ x,
        "torch": lambda: torch.sparse.mm(ta, tx),
    }, reps)
    t_ours, t_ones, t_scipy, t_torch = t["ours"], t["ones"], t["scipy"], t["torch"]
    print(f"{name}: n={n} nnz={len(indices)} F={width} {np.dtype(dtype).name}  "
          f"threads numba={cpu.numba.get_num_threads()} torch={torch.get_num_threads()}")
    print(f"  tapegrad spmm (data)   {t_ours * 1e3:9.3f} ms")
    print(f"  tapegrad spmm (None)   {t_ones * 1e3:9.3f} ms")
    print(f"  scipy csr @ X          {t_scipy * 1e3:9.3f} ms   ratio scipy/ours {t_scipy / t_ours:6.2f}x")
    print(f"  torch.sparse.mm (csr)  {t_torch * 1e3:9.3f} ms   ratio torch/ours {t_torch / t_ours:6.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--rmat", action="store_true", help="also run the 2^20-node R-MAT graph")
    p.add_argument("--pubmed", default=PUBMED)
    args = p.parse_args()
    bench("pubmed", *load_pubmed(args.pubmed), args.width, args.reps)
    if args.rmat:
        t0 = time.perf_counter()
        indptr, indices = rmat()
        print(f"(R-MAT graph ready in {time.perf_counter() - t0:.1f} s)")
        bench("rmat-2^20", indptr, indices, args.width, max(5, args.reps // 4))


if __name__ == "__main__":
    main()
