"""Quick CPU SpMM benchmark: tapegrad's Numba kernel vs scipy.sparse and torch.sparse.mm.

Run from the repository root (OpenBLAS variables unset so no peer runs with odd settings)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/spmm_cpu_quick.py [--rmat] [--width 64]

Prints the median time of each implementation over three blocks of ``--reps`` calls (each block
after a warm-up), and the ratio peer / ours (above 1: tapegrad is faster). All multiply the same
arrays.
X is benchmarked twice: 2 MiB aligned, and at numpy's default placement (16 bytes past a cache line
for large arrays, so every 256-byte row of float32 x 64 touches five lines instead of four; all
implementations pay for it). Both lie almost wholly on transparent huge pages (NumPy advises them for
large arrays; the share is printed), so the gap between the two is the extra cache line per row:
R-MAT 2^20 at width 64 took 161 ms against 127 ms, in the ratio of 5 lines to 4.

Graphs: PubMed (structure only) and, with ``--rmat``, an R-MAT power-law graph with 2^20 nodes and
about 17M stored entries (a=0.57, b=c=0.19), cached in the temp folder after the first build.

On a shared machine other processes distort timings: the script waits (up to a minute) for the
CPUs to go idle before each measurement, repeats a measurement that others disturbed (up to ten
times) and prints the share of CPU time others used during the one it kept.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

# torch first: its bundled libgomp then serves Numba's OpenMP threads too, so both run on the same
# runtime. (Numba alone loads the system libgomp, whose workers fall asleep between back-to-back
# calls; on a virtual machine waking them adds ~0.1 ms to every call: use OMP_WAIT_POLICY=active.)
import torch  # noqa: I001

import numba
import numpy as np
import scipy.sparse as sp

from tapegrad.kernels.cpu import sparse as cpu

PUBMED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "pubmed.npz")


def load_pubmed(path):
    d = np.load(path, allow_pickle=False)
    return d["adj_indptr"], d["adj_indices"]


def rmat(scale=20, n_edges=18_000_000, a=0.57, b=0.19, c=0.19, seed=0):
    """R-MAT edges with duplicates merged, as CSR (indptr int64, indices int32)."""
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
        # Quadrants: a = top-left, b = top-right, c = bottom-left, d = bottom-right.
        row += (u >= a + b) * bit
        col += (((u >= a) & (u < a + b)) | (u >= a + b + c)) * bit
    key = np.unique(row * n + col)
    row, col = key // n, key % n
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
    indices = col.astype(np.int32)
    np.savez(cache, indptr=indptr, indices=indices)
    return indptr, indices


def aligned_copy(a, align=2 << 20):
    """Copy of ``a`` starting on an ``align``-byte boundary (default 2 MiB: a transparent huge page,
    which numpy requests for large arrays, can then back all of it)."""
    buf = np.empty(a.nbytes + align, dtype=np.uint8)
    start = -buf.ctypes.data % align
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def huge_page_share(a):
    """Share of ``a``'s bytes in memory mappings backed by transparent huge pages (Linux; None elsewhere).

    Summed over every mapping that overlaps ``a``: NumPy's huge-page advice splits a large array's
    mapping in two (the first page, which also holds malloc's header, is not advised), so the mapping
    that holds ``a``'s first byte alone says little.
    """
    lo_a = a.ctypes.data
    hi_a = lo_a + a.nbytes
    huge = 0
    try:
        with open("/proc/self/smaps") as f:
            overlap = 0
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(v, 16) for v in head.split("-"))
                    overlap = max(0, min(hi, hi_a) - max(lo, lo_a))
                elif overlap and head == "AnonHugePages:":
                    huge += min(overlap, int(line.split()[1]) * 1024)
    except OSError:
        return None
    return huge / a.nbytes if a.nbytes else None


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(t) for t in f.readline().split()[1:9]]
    with open("/proc/self/stat") as f:
        s = f.read().rsplit(")", 1)[1].split()
    return sum(v), v[3] + v[4], int(s[11]) + int(s[12])  # total, idle, this process (all threads)


def others_share(fn):
    """Run fn(); return the share of the machine's CPU time that other processes used meanwhile."""
    t0, i0, m0 = _cpu_times()
    fn()
    t1, i1, m1 = _cpu_times()
    total = t1 - t0
    return max(0.0, (total - (i1 - i0) - (m1 - m0)) / total) if total else 0.0


def wait_for_idle_cpus(limit_s=60.0, share=0.1):
    t = time.time()
    while time.time() - t < limit_s and others_share(lambda: time.sleep(1.0)) > share:
        pass


def median_times(fns, reps, rounds=3, attempts=10):
    """Median seconds of each function over ``rounds`` blocks of ``reps`` back-to-back calls.

    Calls run in blocks, not interleaved: an OpenMP pool (torch's, Numba's) keeps spinning for a
    while after a call and would slow whichever implementation ran next. Each block starts with
    at least 30 ms of untimed calls, which outlasts that spinning. Nothing sleeps in between: on a
    virtual machine an idle CPU can take a while to come back at full speed.
    """
    ts = {name: [] for name in fns}

    def run():
        for _ in range(rounds):
            for name, fn in fns.items():
                t_end = time.perf_counter() + 0.03
                fn()
                while time.perf_counter() < t_end:
                    fn()
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    ts[name].append(time.perf_counter() - t0)

    for _ in range(attempts):  # retry a run that other processes disturbed
        for t in ts.values():
            t.clear()
        wait_for_idle_cpus()
        share = others_share(run)
        if share <= 0.1:
            break
    return {name: float(np.median(t)) for name, t in ts.items()}, share


def bench(name, indptr, indices, width, reps, dtype):
    n = len(indptr) - 1
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((n, width)).astype(dtype)
    data = rng.random(len(indices)).astype(dtype)
    out = cpu._empty_aligned((n, width), dtype)
    a = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    with warnings.catch_warnings():  # torch's "beta" and invariant-check notices
        warnings.simplefilter("ignore")
        ta = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices.astype(np.int64)),
                                     torch.from_numpy(data), size=(n, n))
        ta32 = torch.sparse_csr_tensor(torch.from_numpy(indptr.astype(np.int32)),
                                       torch.from_numpy(indices.astype(np.int32)),
                                       torch.from_numpy(data), size=(n, n))
    print(f"{name}: n={n} nnz={len(indices)} max row={np.diff(indptr).max()} F={width} "
          f"{np.dtype(dtype).name}, threads numba={numba.get_num_threads()} torch={torch.get_num_threads()}")
    xs = (("x 2 MiB aligned", aligned_copy(x_np)), (f"x numpy default (+{x_np.ctypes.data % 64} B)", x_np))
    for label, x in xs:
        label += f", {huge_page_share(x) or 0:.0%} of it on huge pages"
        np.testing.assert_allclose(cpu.spmm(indptr, indices, data, x), a @ x, rtol=1e-4, atol=1e-4)
        tx = torch.from_numpy(x)
        t, share = median_times({
            "ours": lambda x=x: cpu.spmm(indptr, indices, data, x, out),
            "ours, new out": lambda x=x: cpu.spmm(indptr, indices, data, x),
            "ours, data None": lambda x=x: cpu.spmm(indptr, indices, None, x, out),
            "scipy": lambda x=x: a @ x,
            "torch, int64 idx": lambda tx=tx: torch.sparse.mm(ta, tx),
            "torch, int32 idx": lambda tx=tx: torch.sparse.mm(ta32, tx),
        }, reps)
        print(f"  {label}; median of 3 x {reps}; other processes used {share:.0%} of the CPUs meanwhile")
        for impl, s in t.items():
            ratio = "" if impl.startswith("ours") else f"   peer/ours {s / t['ours']:5.2f}x"
            print(f"    {impl:16s} {s * 1e3:9.3f} ms{ratio}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--rmat", action="store_true", help="also run the 2^20-node R-MAT graph")
    p.add_argument("--pubmed", default=PUBMED)
    args = p.parse_args()
    bench("pubmed", *load_pubmed(args.pubmed), args.width, args.reps, np.dtype(args.dtype))
    if args.rmat:
        t0 = time.perf_counter()
        graph = rmat()
        print(f"(R-MAT graph ready in {time.perf_counter() - t0:.1f} s)")
        bench("rmat-2^20", *graph, args.width, max(5, args.reps // 4), np.dtype(args.dtype))


if __name__ == "__main__":
    main()
