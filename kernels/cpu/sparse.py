"""Numba CPU kernels for sparse graph ops: spmm, sddmm, csr_transpose, gcn_norm.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`. Each public function is thin: it
allocates the outputs and calls one njit kernel; ``data=None`` (every stored value 1) compiles a
specialisation of the same kernel rather than allocating ones.

Row-parallel kernels split the rows into chunks of about equal work (stored entries plus rows), so
that on power-law graphs, where a few rows hold much of the matrix, every thread gets its share (a
single row is never split). The hot loops index flat C-contiguous views with unsigned integers: no
view is created inside the parallel loop, which lets Numba mark the arrays ``noalias`` (no runtime
overlap checks), and unsigned indices skip the negative-index wraparound on every load.

spmm adds entries in CSR order, like the reference, but as fused multiply-adds: one rounding per
entry instead of two, so it differs from the reference by a few ulps of the summed terms (and is
bitwise equal to it for ``data=None``).
"""
from __future__ import annotations

import mmap
import sys
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types, uint64
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ..validate import index_dtype_for

# Chunks per thread: enough slack for uneven rows, few enough that chunk overhead stays negligible.
_CHUNKS_PER_THREAD = 8
# Below this many multiply-adds a row-parallel kernel runs on the calling thread alone: waking the
# OpenMP workers (asleep between calls under libgomp's default wait policy) costs tens of
# microseconds, more on a virtual machine, which is more than such a call's work.
_PARALLEL_MIN_WORK = 1 << 20
# Most lanes sddmm accumulates in parallel; a power of two.
_SDDMM_MAX_LANES = 32
# Byte alignment of the outputs spmm allocates: one cache line.
_ALIGN = 64
# spmm prefetches the X rows of the entries this many bytes of X ahead of the ones it adds (about 4 KB
# ran fastest on R-MAT 2^20 at widths 32 to 128 on a 2-core Xeon VM: 1.1-1.25x) ...
_PREFETCH_AHEAD_BYTES = 4096
# ... when X is larger than this: a smaller X sits in cache, where the extra instructions only cost.
_PREFETCH_MIN_X_BYTES = 32 << 20


def _weight(data, k):
    """data[k], or 1 where data is None (a CSR pattern whose stored values are all 1)."""


@overload(_weight, inline="always")
def _weight_impl(data, k):
    if isinstance(data, types.NoneType):
        # float32 1 is exact in either float dtype; LLVM folds fma(1, x, y) to x + y.
        return lambda data, k: np.float32(1.0)
    return lambda data, k: data[k]


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c with one rounding (``llvm.fma``, vectorised as vfmadd). Not fastmath: the result is
    exactly defined, only more accurate than a separate multiply and add."""
    if not all(isinstance(t, types.Float) for t in (a, b, c)):
        return None
    ty = types.float64 if types.float64 in (a, b, c) else types.float32

    def codegen(context, builder, sig, args):
        llty = context.get_value_type(ty)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(llty, [llty] * 3), f"llvm.fma.f{ty.bitwidth}")
        return builder.call(fn, [context.cast(builder, v, t, ty) for v, t in zip(args, sig.args)])

    return ty(a, b, c), codegen


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to start loading the cache line of ``arr[idx]`` (``llvm.prefetch``: read, keep in
    all cache levels). It never faults, so any index is safe; nothing is returned."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, high locality, data cache
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@numba.njit(inline="always")
def _prefetch_rows(indices, x1, p, stop, uF, line):
    """Prefetch the X rows (``uF`` elements, ``line`` per cache line) of entries p .. stop-1; returns
    the next entry to prefetch."""
    while p < stop:
        base = uint64(indices[p]) * uF
        for f in range(uint64(0), uF, line):
            _prefetch(x1, base + f)
        p += uint64(1)
    return p


@numba.njit(cache=True)
def _row_chunks(indptr, n_chunks):
    """Row boundaries [n_chunks + 1] splitting the rows into chunks of about equal ``nnz + rows``."""
    n_rows = len(indptr) - 1
    total = np.int64(indptr[n_rows]) + n_rows
    bounds = np.empty(n_chunks + 1, dtype=np.int64)
    bounds[0] = 0
    for c in range(1, n_chunks):
        target = (total * c) // n_chunks
        # First row r with indptr[r] + r >= target; the key increases with r.
        lo = bounds[c - 1]
        hi = n_rows
        while lo < hi:
            mid = (lo + hi) // 2
            if np.int64(indptr[mid]) + mid < target:
                lo = mid + 1
            else:
                hi = mid
        bounds[c] = lo
    bounds[n_chunks] = n_rows
    return bounds


# Outputs of at least this many bytes come from a small pool of anonymous mappings that are reused once
# nothing refers to them any more: a fresh output of that size is fresh memory from the kernel, whose
# first touch inside the kernel faulted in every page (25 ms of a 160 ms SpMM on R-MAT 2^20 at width 64
# with huge pages, several times that when the kernel had no huge page to give).
_POOL_MIN_BYTES = 32 << 20
_POOL_PER_SIZE = 2  # buffers kept per size
_POOL_MAX_BYTES = 2 << 30  # in all
_pool: dict = {}
_pool_lock = threading.Lock()
# A mapping is known to be free from its reference count, which CPython keeps exactly only with the GIL
# (a free-threaded build may defer counts): elsewhere every output is fresh memory.
_POOL_USABLE = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()


def _pooled_buffer_locked(nbytes: int):
    """A writable mapping of ``nbytes`` that no array uses, or None when the pool is full; the caller holds
    _pool_lock. An array made from it with np.frombuffer has the mapping as its base, and so have all its
    views (numpy collapses a view's base to the first non-array owner); the mapping is free again when its
    reference count drops back to the pool's own reference."""
    bufs = _pool.setdefault(nbytes, [])
    for m in bufs:
        if sys.getrefcount(m) == 3:  # the list, this loop's name, getrefcount's argument
            return m
    if len(bufs) >= _POOL_PER_SIZE or sum(k * len(v) for k, v in _pool.items()) + nbytes > _POOL_MAX_BYTES:
        return None
    m = mmap.mmap(-1, nbytes)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    bufs.append(m)
    return m


def release_pool() -> None:
    """Let go of the pooled output buffers (arrays still using one keep it alive)."""
    with _pool_lock:
        _pool.clear()


def _empty_aligned(shape, dtype):
    """np.empty on a 64-byte boundary, so that rows of whole cache lines do not straddle one more; large
    ones from the pool (see _POOL_MIN_BYTES), page-aligned."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    if nbytes >= _POOL_MIN_BYTES and _POOL_USABLE:
        with _pool_lock:  # held until the array refers to the mapping, so no other thread takes it meanwhile
            m = _pooled_buffer_locked(nbytes)
            if m is not None:
                return np.frombuffer(m, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)
    buf = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = -buf.ctypes.data % _ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def _run_on_row_chunks(kernel, work, indptr, *args):
    """kernel(indptr, *args, bounds) with the rows split into chunks of about equal work.

    Work below ``_PARALLEL_MIN_WORK`` runs with one thread, set for this call only (Numba's thread
    count belongs to the calling thread, and is restored).
    """
    threads = numba.get_num_threads()
    if threads > 1 and work < _PARALLEL_MIN_WORK:
        numba.set_num_threads(1)
        try:
            return kernel(indptr, *args, _row_chunks(indptr, 1))
        finally:
            numba.set_num_threads(threads)
    n_chunks = max(1, min(len(indptr) - 1, threads * _CHUNKS_PER_THREAD))
    return kernel(indptr, *args, _row_chunks(indptr, n_chunks))


# --------------------------------------------------------------------------------------------------
# spmm
# --------------------------------------------------------------------------------------------------

def _make_spmm_kernel(width):
    """The spmm kernel for X of ``width`` columns (0: any width, read from ``F`` at run time).

    A width known at compile time turns each pass over a row into straight-line vector code, with no
    loop control or remainder handling; that pays off on graphs whose rows hold few entries.

    The kernel may close over plain numbers only: Numba's on-disk cache keys a closure by its pickled
    cell contents, and a captured jitted function pickles differently in every process (a cache miss
    and a recompile in each new process).
    """
    @numba.njit(cache=True, parallel=True)
    def spmm_kernel(indptr, indices, data, x1, y1, F, ahead, bounds):
        """y1[i*F:(i+1)*F] = sum_k data[k] * x1[indices[k]*F:(indices[k]+1)*F] over row i.

        x1, y1: flat views of C-contiguous X and Y; ``data`` None compiles a specialisation that
        adds rows without multiplying. Entries are taken in CSR order, four per pass over the row
        (the first pass writes the row, later ones add to it), so the running sum is loaded and
        stored once per four entries, as chained fused multiply-adds.

        ``ahead`` > 0: before each pass, the X rows of the entries up to ``ahead`` past it (within the
        chunk, across row ends) are prefetched, each once. The gathered rows are in random order,
        which the hardware prefetchers cannot follow; 0 turns this off.
        """
        uF = uint64(F) if width == 0 else uint64(width)
        u1 = uint64(1)
        u2 = uint64(2)
        u3 = uint64(3)
        u4 = uint64(4)
        line = uint64(max(1, _ALIGN // x1.itemsize))  # elements of X per cache line
        uA = uint64(ahead)
        for c in prange(len(bounds) - 1):
            kend = uint64(indptr[bounds[c + 1]])
            # Next entry whose X row to prefetch; the chunk's end when prefetching is off.
            p = uint64(indptr[bounds[c]]) if ahead > 0 else kend
            for i in range(bounds[c], bounds[c + 1]):
                yb = uint64(i) * uF
                k = uint64(indptr[i])
                hi = uint64(indptr[i + 1])
                m = hi - k
                if m == 0:
                    for f in range(uF):
                        y1[yb + f] = 0
                    continue
                if p < kend:
                    p = _prefetch_rows(indices, x1, p, min(k + u4 + uA, kend), uF, line)
                v0 = _weight(data, k)
                a0 = uint64(indices[k]) * uF
                if m == u1:
                    for f in range(uF):
                        y1[yb + f] = v0 * x1[a0 + f]
                    continue
                v1 = _weight(data, k + u1)
                a1 = uint64(indices[k + u1]) * uF
                if m == u2:
                    for f in range(uF):
                        y1[yb + f] = _fma(v1, x1[a1 + f], v0 * x1[a0 + f])
                    continue
                v2 = _weight(data, k + u2)
                a2 = uint64(indices[k + u2]) * uF
                if m == u3:
                    for f in range(uF):
                        y1[yb + f] = _fma(v2, x1[a2 + f], _fma(v1, x1[a1 + f], v0 * x1[a0 + f]))
                    continue
                v3 = _weight(data, k + u3)
                a3 = uint64(indices[k + u3]) * uF
                for f in range(uF):
                    t = _fma(v1, x1[a1 + f], v0 * x1[a0 + f])
                    y1[yb + f] = _fma(v3, x1[a3 + f], _fma(v2, x1[a2 + f], t))
                k += u4
                while k + u4 <= hi:
                    if p < kend:
                        p = _prefetch_rows(indices, x1, p, min(k + u4 + uA, kend), uF, line)
                    v0, v1 = _weight(data, k), _weight(data, k + u1)
                    v2, v3 = _weight(data, k + u2), _weight(data, k + u3)
                    a0, a1 = uint64(indices[k]) * uF, uint64(indices[k + u1]) * uF
                    a2, a3 = uint64(indices[k + u2]) * uF, uint64(indices[k + u3]) * uF
                    for f in range(uF):
                        t = _fma(v1, x1[a1 + f], _fma(v0, x1[a0 + f], y1[yb + f]))
                        y1[yb + f] = _fma(v3, x1[a3 + f], _fma(v2, x1[a2 + f], t))
                    k += u4
                while k < hi:
                    v0 = _weight(data, k)
                    a0 = uint64(indices[k]) * uF
                    for f in range(uF):
                        y1[yb + f] = _fma(v0, x1[a0 + f], y1[yb + f])
                    k += u1

    return spmm_kernel


# Feature widths with a kernel compiled for that width; any other width uses the generic kernel.
_SPMM_KERNELS = {width: _make_spmm_kernel(width) for width in (0, 16, 32, 64, 128)}


def _prefetch_ahead(x):
    """Entries spmm prefetches ahead for X (0: none). Only the fixed-width kernels prefetch: the
    generic one (every other width) got slower with it at width 256 at every distance tried."""
    F = x.shape[1]
    if F not in _SPMM_KERNELS or F == 0 or x.nbytes <= _PREFETCH_MIN_X_BYTES:
        return 0
    return max(1, _PREFETCH_AHEAD_BYTES // (F * x.itemsize))


def spmm(indptr, indices, data, x, out=None):
    """Y = A @ X for CSR A [n_rows, n_cols] (``data=None``: every stored value is 1), X [n_cols, F].

    Y[i] = sum_{k in row i} data[k] * X[indices[k]], summed in CSR order. Returns Y [n_rows, F] with
    X's dtype, written into ``out`` when given.
    """
    indptr = np.asarray(indptr, dtype=np.int64)  # one compiled variant fewer; indptr is short
    n_rows = len(indptr) - 1
    F = x.shape[1]
    x = np.ascontiguousarray(x)
    y = out
    if y is None or not y.flags.c_contiguous or np.may_share_memory(y, x):
        y = _empty_aligned((n_rows, F), x.dtype)
    if data is not None:
        data = np.ascontiguousarray(data, dtype=x.dtype)
    kernel = _SPMM_KERNELS.get(F, _SPMM_KERNELS[0])
    work = (len(indices) + n_rows) * F
    _run_on_row_chunks(kernel, work, indptr, indices, data, x.reshape(-1), y.reshape(-1), F,
                       _prefetch_ahead(x))
    if out is not None and y is not out:
        out[...] = y
        return out
    return y


# --------------------------------------------------------------------------------------------------
# sddmm
# --------------------------------------------------------------------------------------------------

@numba.njit(cache=True, parallel=True)
def _sddmm_kernel(indptr, indices, a1, b1, out, F, lanes, bounds):
    """out[k] = sum_f a1[row(k)*F + f] * b1[indices[k]*F + f]; a1, b1 flat C views.

    A float sum does not vectorise without fastmath, so each dot keeps ``lanes`` (a power of two
    <= F) partial sums, updated by an elementwise loop LLVM vectorises, then halved pairwise.
    ``lanes`` is a runtime value so that LLVM vectorises the lane loop instead of unrolling it.
    """
    uF = uint64(F)
    uL = uint64(lanes)
    FL = uF - uF % uL
    one = uint64(1)
    for c in prange(len(bounds) - 1):
        acc = np.empty(lanes, dtype=a1.dtype)
        for i in range(bounds[c], bounds[c + 1]):
            ab = uint64(i) * uF
            for k in range(uint64(indptr[i]), uint64(indptr[i + 1])):
                bb = uint64(indices[k]) * uF
                for f in range(uL):
                    acc[f] = a1[ab + f] * b1[bb + f]
                for f0 in range(uL, FL, uL):
                    for f in range(uL):
                        acc[f] += a1[ab + f0 + f] * b1[bb + f0 + f]
                w = uL
                while w > one:
                    w = w >> one
                    for f in range(w):
                        acc[f] += acc[f + w]
                s = acc[0]
                for f in range(FL, uF):
                    s += a1[ab + f] * b1[bb + f]
                out[k] = s


def sddmm(indptr, indices, a, b, out=None):
    """Sampled dense-dense product on A's pattern: out[k] = <a[row(k)], b[indices[k]]>.

    a: [n_rows, F], b: [n_cols, F] (same dtype). Returns [nnz] with a's dtype, written into ``out``
    when given. With a = dL/dY and b = X this is dL/dA for Y = A @ X.
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    nnz = int(indptr[-1])
    F = a.shape[1]
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b, dtype=a.dtype)
    res = out
    if res is None or not res.flags.c_contiguous:
        res = np.empty(nnz, dtype=a.dtype)
    if F == 0:
        res[...] = 0
    else:
        lanes = 1 << (min(F, _SDDMM_MAX_LANES).bit_length() - 1)
        a1, b1 = a.reshape(-1), b.reshape(-1)
        _run_on_row_chunks(_sddmm_kernel, nnz * F, indptr, indices, a1, b1, res, F, lanes)
    if out is not None and res is not out:
        out[...] = res
        return out
    return res


# --------------------------------------------------------------------------------------------------
# csr_transpose
# --------------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _csr_transpose_kernel(indptr, indices, data, indptr_t, indices_t, data_t, perm):
    """Stable counting sort of the entries by column: entry k of row i goes to row indices[k] of A^T.
    ``data`` and ``data_t`` are both arrays or both None."""
    n_rows = len(indptr) - 1
    n_cols = len(indptr_t) - 1
    counts = np.zeros(n_cols + 1, dtype=np.int64)
    for k in range(indptr[n_rows]):
        counts[indices[k] + 1] += 1
    indptr_t[0] = 0
    for c in range(n_cols):
        indptr_t[c + 1] = indptr_t[c] + counts[c + 1]
    nxt = indptr_t[:n_cols].copy()
    for i in range(n_rows):
        for k in range(indptr[i], indptr[i + 1]):
            c = indices[k]
            p = nxt[c]
            nxt[c] = p + 1
            indices_t[p] = i
            perm[p] = k
            if data is not None:
                data_t[p] = data[k]


def csr_transpose(indptr, indices, data, n_cols):
    """A^T in CSR for A [n_rows, n_cols]: a stable counting sort of the entries by column.

    Returns (indptr_t [n_cols+1] int64, indices_t [nnz] with indices' dtype (int32 / int64 when that
    cannot hold the row ids up to n_rows - 1), data_t [nnz] or None, perm [nnz] int64) with
    data_t = data[perm]; within each row of A^T the column ids (rows of A) ascend.
    """
    nnz = int(indptr[-1])
    indptr_t = np.empty(n_cols + 1, dtype=np.int64)
    indices_t = np.empty(nnz, dtype=index_dtype_for(indices.dtype, len(indptr) - 1))
    perm = np.empty(nnz, dtype=np.int64)
    data_t = None if data is None else np.empty(nnz, dtype=data.dtype)
    _csr_transpose_kernel(indptr, indices, data, indptr_t, indices_t, data_t, perm)
    return indptr_t, indices_t, data_t, perm


# --------------------------------------------------------------------------------------------------
# gcn_norm
# --------------------------------------------------------------------------------------------------

@numba.njit(cache=True, parallel=True)
def _gcn_degrees(indptr, indices, data, add_self_loops, fill, dis, row_len):
    """Pass 1: dis[i] = deg_i^-1/2 (0 where deg_i <= 0) with deg = row sums of A + fill*I in float64,
    and row_len[i] = stored entries of row i of the result (one more where a loop is added). Row sums
    add the entries in CSR order, then the added loop, as the reference does (same rounding).
    """
    n = len(indptr) - 1
    for i in prange(n):
        s = 0.0
        has_loop = False
        for k in range(indptr[i], indptr[i + 1]):
            s += np.float64(_weight(data, k))
            if indices[k] == i:
                has_loop = True
        add = add_self_loops and not has_loop
        if add:
            s += fill
        dis[i] = 1.0 / np.sqrt(s) if s > 0 else 0.0
        row_len[i] = indptr[i + 1] - indptr[i] + (1 if add else 0)


@numba.njit(cache=True, parallel=True)
def _gcn_fill(indptr, indices, data, fill, dis, new_indptr, new_indices, new_data):
    """Pass 2: write dis_i * w_ij * dis_j; an added loop goes before the first column > i (its
    sorted place when the row's columns are sorted)."""
    n = len(indptr) - 1
    for i in prange(n):
        p = new_indptr[i]
        lo = indptr[i]
        hi = indptr[i + 1]
        pending = new_indptr[i + 1] - p > hi - lo  # this row gets an added loop
        di = dis[i]
        for k in range(lo, hi):
            j = indices[k]
            if pending and j > i:
                new_indices[p] = i
                new_data[p] = (di * fill) * di
                p += 1
                pending = False
            w = np.float64(_weight(data, k))
            new_indices[p] = j
            new_data[p] = (di * w) * dis[j]
            p += 1
        if pending:
            new_indices[p] = i
            new_data[p] = (di * fill) * di


def gcn_norm(indptr, indices, data, num_nodes, add_self_loops=True, fill_value=1.0, dtype=np.float32):
    """P = D^-1/2 (A + fill_value * I) D^-1/2 on a square CSR A [num_nodes, num_nodes].

    Loops are added only to nodes without one (an existing loop keeps its weight); D = row sums of
    A + fill_value * I in float64; a node of degree <= 0 gets a zero row (never inf/NaN). Returns
    (indptr [num_nodes+1] int64, indices with the input's dtype (int32 / int64 when an added loop's id
    does not fit it), data of ``dtype``), columns sorted within each row when A's were. ``data=None``
    means every stored value is 1.
    """
    dtype = np.dtype(dtype)
    indptr = np.asarray(indptr)
    if len(indptr) - 1 < num_nodes:  # trailing nodes without stored rows are empty rows
        pad = np.full(num_nodes + 1 - len(indptr), indptr[-1], dtype=indptr.dtype)
        indptr = np.concatenate([indptr, pad])
    vals = None if data is None else np.asarray(data).astype(dtype, copy=False)
    # The reference stores the added loops' weight in ``dtype`` before normalising.
    fill = float(dtype.type(fill_value))
    dis = np.empty(num_nodes, dtype=np.float64)
    row_len = np.empty(num_nodes, dtype=np.int64)
    _gcn_degrees(indptr, indices, vals, bool(add_self_loops), fill, dis, row_len)
    new_indptr = np.empty(num_nodes + 1, dtype=np.int64)
    new_indptr[0] = 0
    np.cumsum(row_len, out=new_indptr[1:])
    nnz = int(new_indptr[-1])
    index_dtype = index_dtype_for(indices.dtype, num_nodes) if add_self_loops else indices.dtype
    new_indices = np.empty(nnz, dtype=index_dtype)
    new_data = np.empty(nnz, dtype=dtype)
    _gcn_fill(indptr, indices, vals, fill, dis, new_indptr, new_indices, new_data)
    return new_indptr, new_indices, new_data
