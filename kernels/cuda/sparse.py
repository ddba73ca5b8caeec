"""Numba CUDA kernels for sparse graph ops: spmm, sddmm, csr_transpose, gcn_norm.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`. Arrays may be cupy arrays, Numba
device arrays or host NumPy arrays; results come back in the kind of the leading input (see
:mod:`._device`). Every kernel is a grid-stride loop with a host launcher beside it, guards each load
and store, and is deterministic: no floating-point value is accumulated atomically, so two runs give the
same bits.

Work is split by stored entries, not by rows: ``spmm`` and ``sddmm`` cut the entry array into segments
of ``SPMM_SEGMENT`` / ``SDDMM_SEGMENT`` entries, so many short rows share one warp and a power-law row
with a million entries is spread over many warps. A row cut by segment boundaries leaves partial sums
that the lane finishing last adds up in segment order (an integer ticket says which lane that is).

The launch constants below are read at every launch, so tests can patch them small to hit block and
segment edges under the CUDA simulator.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import cuda

from . import _device as dv

BLOCK = 256          # threads per block (a multiple of 32 on a real GPU)
MAX_BLOCKS = 4096    # grid size cap; grid-stride loops cover the rest
SPMM_SEGMENT = 128   # stored entries per SpMM work item
SDDMM_SEGMENT = 32   # stored entries per SDDMM work item
SORT_TILE = 128      # entries ranked in place before the merge passes of csr_transpose
SCAN_THREADS = 512   # threads of the one-block prefix sum (few registers per thread even so)
USE_SHUFFLE = None   # warp-shuffle reductions: None means "on a real GPU, not in the simulator"

_FULL_MASK = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Device helpers

@cuda.jit(device=True)
def _row_of(indptr, n_rows, k):
    """The row r with indptr[r] <= k < indptr[r + 1]; needs 0 <= k < indptr[n_rows]."""
    lo = 1
    hi = n_rows
    while lo < hi:  # first i in [1, n_rows] with indptr[i] > k
        mid = (lo + hi) // 2
        if indptr[mid] > k:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


@cuda.jit
def _cast(src, dst):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < dst.shape[0]:
        if i < src.shape[0]:
            dst[i] = src[i]
        i += stride


def _as_dtype(dev, dtype, kind):
    """``dev`` (1-D device array) converted to ``dtype`` on the device; no copy when it already is."""
    dtype = np.dtype(dtype)
    if dev.dtype == dtype:
        return dev
    dst = dv.scratch((dev.shape[0],), dtype, kind)
    if dev.shape[0] > 0:
        blocks, threads = dv.launch_shape(dev.shape[0], BLOCK, MAX_BLOCKS)
        dv.launch(_cast, blocks, threads, kind, dev, dst)
    return dst


def _group_block(group):
    """Threads per block: BLOCK rounded up to whole groups (groups never straddle a block)."""
    return max(group, -(-int(BLOCK) // group) * group)


def _use_shuffle(block):
    if block % 32 != 0:
        return False  # a partial warp cannot use the full shuffle mask
    if USE_SHUFFLE is None:
        return not dv.is_simulator()
    return bool(USE_SHUFFLE)


@cuda.jit
def _exclusive_scan(counts, out, n):
    """out[0] = 0, out[i + 1] = counts[0] + ... + counts[i]. One block: each thread sums a contiguous
    chunk, the block scans the chunk sums in shared memory, then each thread writes its chunk."""
    buf = cuda.shared.array(0, dtype=numba.int64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    chunk = (n + nt - 1) // nt
    lo = min(tid * chunk, n)
    hi = min(lo + chunk, n)
    s = 0
    for i in range(lo, hi):
        s += counts[i]
    buf[tid] = s
    cuda.syncthreads()
    off = 1
    while off < nt:  # Hillis-Steele; every thread runs every step
        v = 0
        if tid >= off:
            v = buf[tid - off]
        cuda.syncthreads()
        buf[tid] += v
        cuda.syncthreads()
        off *= 2
    run = buf[tid] - s
    if tid == 0 and out.shape[0] > 0:
        out[0] = 0
    for i in range(lo, hi):
        run += counts[i]
        if i + 1 < out.shape[0]:
            out[i + 1] = run


def _scan(counts, out, n, st):
    threads = max(1, int(SCAN_THREADS))
    _exclusive_scan[1, threads, st, threads * 8](counts, out, n)


# --------------------------------------------------------------------------------------------------
# spmm

@cuda.jit
def _spmm_pass(indptr, indices, data, has_data, x, y, carry, tickets, n_rows, nnz, seg, group, n_tiles, zero,
               one):
    """Y = A X in one launch: a group of ``group`` lanes per (segment of ``seg`` entries, tile of ``group``
    features), lanes across features so that each x row is read coalesced.

    A row that starts and ends inside the segment goes to y. A row cut by segment edges leaves one piece
    per segment it touches in ``carry`` (carry[s, 1] in the segment it starts in, carry[s, 0] in the
    others); each lane then takes a ticket for its feature of the row (tickets[s0, f], s0 the segment the
    row starts in), and the lane that takes the last one adds the pieces in segment order (reading them
    with atomic adds of zero, which go to L2, where the other SMs' writes are) and resets the ticket. Empty
    rows, which no segment writes, get zeros in a grid-stride pass over the rows first (a thread per row,
    so that a long run of empty rows is spread over the grid).
    """
    F = x.shape[1]
    n_cols = x.shape[0]
    tid = cuda.grid(1)
    lane = tid % group
    g = tid // group
    n_groups = cuda.gridsize(1) // group
    n_seg = (nnz + seg - 1) // seg
    e = tid
    while e < n_rows:
        if indptr[e + 1] == indptr[e]:
            for j in range(F):
                y[e, j] = zero
        e += cuda.gridsize(1)
    while g < n_seg * n_tiles:
        s = g // n_tiles
        f = (g - s * n_tiles) * group + lane
        on = f < F
        start = s * seg
        end = min(start + seg, nnz)
        r = _row_of(indptr, n_rows, start)
        r_start = indptr[r]
        r_end = indptr[r + 1]
        acc = zero
        k = start
        while k < end:
            stop = min(r_end, end)
            while k < stop:
                c = indices[k]
                if on and c >= 0 and c < n_cols:
                    v = one
                    if has_data:
                        v = data[k]
                    acc += v * x[c, f]
                k += 1
            if r_start >= start and r_end <= end:
                if on:
                    y[r, f] = acc
            elif on:  # a piece of a row cut by segment edges
                if r_start >= start:
                    carry[s, 1, f] = acc
                else:
                    carry[s, 0, f] = acc
                s0 = r_start // seg
                last = (r_end - 1) // seg
                cuda.threadfence()  # the piece, before the ticket that may let another lane read it
                if cuda.atomic.add(tickets, (s0, f), 1) == last - s0:
                    cuda.threadfence()
                    total = cuda.atomic.add(carry, (s0, 1, f), zero)
                    for s2 in range(s0 + 1, last + 1):
                        total += cuda.atomic.add(carry, (s2, 0, f), zero)
                    y[r, f] = total
                    tickets[s0, f] = 0
            acc = zero
            if r_end <= end and k < end:  # next non-empty row
                r += 1
                while r + 1 < n_rows and indptr[r + 1] <= k:
                    r += 1
                r_start = indptr[r]
                r_end = indptr[r + 1]
        g += n_groups


@cuda.jit
def _fill(y, value):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = y.shape[0] * y.shape[1]
    while i < n:
        r = i // y.shape[1]
        y[r, i - r * y.shape[1]] = value
        i += stride


# cupy work's scratch, per (device, stream, dtype): (carry elements and uint32 tickets as flat arrays, views of
# them per shape), grown, never shrunk; the tickets are zero between calls (each call resets its own).
_SCRATCH: dict = {}


_cc = None  # tapegrad.kernels.cupy._compile, imported at the first call on cupy arrays


def _spmm_scratch(kind, n_seg, F, dtype):
    """(carry [n_seg, 2, F], tickets [n_seg, F] of zeros) for one call."""
    if kind != dv.CUPY:  # tests and the simulator: fresh arrays
        zeros = np.zeros((n_seg, F), np.uint32)
        return dv.scratch((n_seg, 2, F), dtype, kind), cuda.to_device(zeros)
    if _cc is None:
        _import_cc()
    key = (_cc.get_device(), _cc.stream_key(), dtype)
    buf = _SCRATCH.get(key)
    n_carry, n_tickets = n_seg * 2 * F, n_seg * F
    if buf is None or buf[0].size < n_carry or buf[1].size < n_tickets:
        old_c, old_t = (buf[0].size, buf[1].size) if buf is not None else (0, 0)
        buf = _SCRATCH[key] = (_cc.cupy.empty(max(n_carry, old_c), dtype),
                               _cc.cupy.zeros(max(n_tickets, old_t), np.uint32), {})
    views = buf[2].get((n_seg, F))
    if views is None:  # shaped views of the buffers, made once per shape
        views = buf[2][(n_seg, F)] = (buf[0][:n_carry].reshape(n_seg, 2, F), buf[1][:n_tickets].reshape(n_seg, F))
    return views


# Planned launches of spmm on cupy arrays (see _device.Planned), per (dtypes, sizes, launch constants,
# device, stream): a call that matches one passes the five arrays' addresses and nothing else. A plan
# keeps the scratch it was made with alive, so at most _MAX_SPMM_PLANS are kept (the oldest go first).
_SPMM_PLANS: dict = {}
_MAX_SPMM_PLANS = 64


def release_scratch() -> None:
    """Free spmm's planned launches and scratch buffers on cupy arrays (the next call makes them again)."""
    _SPMM_PLANS.clear()
    _SCRATCH.clear()


def spmm(indptr, indices, data, x, out=None):
    """Y = A @ X for CSR A (``data=None``: all ones) and dense X [n_cols, F]; Y [n_rows, F], X's dtype.

    The number of stored entries is taken as ``len(indices)`` (no device-to-host read of indptr).
    """
    n_rows = indptr.shape[0] - 1
    F = x.shape[1]
    key = None
    if dv.plannable(x, indptr, indices, data, out) and n_rows > 0 and F > 0 and indptr.ndim == indices.ndim == 1 \
            and x.ndim == 2 and (data is None or (data.ndim == 1 and data.size == indices.size)):
        # every value of the launch but the five addresses follows from these; out, when given, is checked
        # against them
        has_data = data is not None
        if _cc is None:
            _import_cc()
        ptr = _cc.current_stream().ptr
        key = (x.dtype, indices.dtype, indptr.dtype, data.dtype if has_data else None, n_rows, x.shape[0], F,
               indices.size, SPMM_SEGMENT, BLOCK, MAX_BLOCKS, _cc.get_device(), _cc.stream_key(ptr))
        planned = _SPMM_PLANS.get(key)
        if planned is not None:
            y = out if out is not None else _cc.cupy.empty((n_rows, F), x.dtype)
            if out is None or (y.shape == (n_rows, F) and y.dtype == x.dtype):
                if planned(ptr, indptr.data.ptr, indices.data.ptr, (data if has_data else x).data.ptr, x.data.ptr,
                           y.data.ptr):
                    return y
    kind = dv.kind_of(x)
    dtype = np.dtype(x.dtype)
    res = dv.Output((n_rows, F), dtype, kind, out)
    if n_rows <= 0 or F == 0:
        return res.result()
    nnz = indices.shape[0]
    ip, ix, xd = dv.as_device(indptr), dv.as_device(indices), dv.as_device(x)
    y = res.dev
    if nnz == 0:  # every row is empty
        blocks, threads = dv.launch_shape(n_rows * F, BLOCK, MAX_BLOCKS)
        dv.launch(_fill, blocks, threads, kind, y, dtype.type(0))
        return res.result()
    has_data = data is not None
    d = _as_dtype(dv.as_device(data), dtype, kind) if has_data else xd[0]
    seg = max(1, int(SPMM_SEGMENT))
    n_seg = -(-nnz // seg)
    group = min(32, dv.next_pow2(F))
    n_tiles = -(-F // group)
    carry, tickets = _spmm_scratch(kind, n_seg, F, dtype)
    blocks, threads = dv.launch_shape(n_seg * n_tiles * group, _group_block(group), MAX_BLOCKS)
    args = (ip, ix, d, has_data, xd, y, carry, tickets, n_rows, nnz, seg, group, n_tiles, dtype.type(0),
            dtype.type(1))
    # the next calls of these dtypes and sizes take this call's planned launch (d: x's first row stands in
    # for absent values, at x's address, which is what a planned call passes)
    dv.launch_and_plan(_SPMM_PLANS, key, _spmm_pass, blocks, threads, kind, args, (0, 1, 2, 4, 5),
                       (indptr, indices, data if has_data else x, x, y), _MAX_SPMM_PLANS)
    return res.result()


def _import_cc():
    global _cc
    from ..cupy import _compile as _cc


# --------------------------------------------------------------------------------------------------
# sddmm

@cuda.jit
def _sddmm_segments(indptr, indices, a, b, out, n_rows, nnz, seg, group, use_shuffle, zero):
    """A group of ``group`` lanes per segment of ``seg`` entries; for each entry the lanes split the
    feature dot product and reduce it (warp shuffles, or shared memory in the simulator).

    The outer loop is block-uniform and the inner one has a fixed trip count, so every thread of the
    block reaches every ``syncthreads``.
    """
    buf = cuda.shared.array(0, dtype=numba.float64)
    F = a.shape[1]
    n_cols = b.shape[0]
    tid = cuda.threadIdx.x
    lane = tid % group
    per_block = cuda.blockDim.x // group
    n_seg = (nnz + seg - 1) // seg
    base = cuda.blockIdx.x * per_block
    while base < n_seg:
        start = (base + tid // group) * seg
        end = min(start + seg, nnz)
        r = 0
        if start < end:
            r = _row_of(indptr, n_rows, start)
        for j in range(seg):
            k = start + j
            active = k < end
            part = zero
            if active:
                while r + 1 < n_rows and indptr[r + 1] <= k:
                    r += 1
                c = indices[k]
                if c >= 0 and c < n_cols:
                    f = lane
                    while f < F:
                        part += a[r, f] * b[c, f]
                        f += group
            if use_shuffle:
                off = group // 2
                while off > 0:
                    part += cuda.shfl_xor_sync(_FULL_MASK, part, off)
                    off //= 2
                if active and lane == 0:
                    out[k] = part
            else:
                buf[tid] = part
                cuda.syncthreads()
                off = group // 2
                while off > 0:
                    if lane < off:
                        buf[tid] += buf[tid + off]
                    cuda.syncthreads()
                    off //= 2
                if active and lane == 0:
                    out[k] = buf[tid]
        base += cuda.gridDim.x * per_block


def sddmm(indptr, indices, a, b, out=None):
    """out[k] = <a[row(k)], b[indices[k]]> on A's pattern; a [n_rows, F], b [n_cols, F]; [nnz]."""
    kind = dv.kind_of(a)
    nnz = indices.shape[0]
    dtype = np.dtype(a.dtype)
    res = dv.Output((nnz,), dtype, kind, out)
    if nnz == 0:
        return res.result()
    n_rows = indptr.shape[0] - 1
    F = a.shape[1]
    ip, ix, ad, bd = dv.as_device(indptr), dv.as_device(indices), dv.as_device(a), dv.as_device(b)
    seg = max(1, int(SDDMM_SEGMENT))
    n_seg = -(-nnz // seg)
    group = min(32, dv.next_pow2(max(F, 1)))
    block = _group_block(group)
    blocks, threads = dv.launch_shape(n_seg * group, block, MAX_BLOCKS)
    shuffle = _use_shuffle(threads)
    dv.launch(_sddmm_segments, blocks, threads, kind, ip, ix, ad, bd, res.dev, n_rows, nnz, seg, group, shuffle,
              dtype.type(0), shared=0 if shuffle else threads * 8)
    return res.result()


# --------------------------------------------------------------------------------------------------
# csr_transpose: a stable sort of the column ids (tile ranking, then merge passes), no atomics

@cuda.jit
def _sort_tiles(keys, keys_out, perm_out, n, tile):
    """Rank each key within its tile of ``tile`` entries (ties by position) and place it there."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        t0 = (i // tile) * tile
        t1 = min(t0 + tile, n)
        key = keys[i]
        rank = 0
        for j in range(t0, t1):
            kj = keys[j]
            if kj < key or (kj == key and j < i):
                rank += 1
        keys_out[t0 + rank] = key
        perm_out[t0 + rank] = i
        i += stride


@cuda.jit
def _merge_runs(keys, perm, keys_out, perm_out, n, width):
    """Merge sorted runs [lo, lo+width) and [lo+width, lo+2 width): each entry finds its place by a
    binary search in the other run (left run first on ties: stable)."""
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < n:
        lo = (i // (2 * width)) * (2 * width)
        mid = min(lo + width, n)
        hi = min(lo + 2 * width, n)
        key = keys[i]
        if i < mid:
            a = mid
            b = hi
            while a < b:  # right-run keys < key
                m = (a + b) // 2
                if keys[m] < key:
                    a = m + 1
                else:
                    b = m
            pos = i + (a - mid)
        else:
            a = lo
            b = mid
            while a < b:  # left-run keys <= key
                m = (a + b) // 2
                if keys[m] <= key:
                    a = m + 1
                else:
                    b = m
            pos = (i - mid) + a
        if pos < n:
            keys_out[pos] = key
            perm_out[pos] = perm[i]
        i += stride


@cuda.jit
def _transpose_gather(indptr, perm, data, has_data, rows_out, data_out, n_rows, nnz):
    p = cuda.grid(1)
    stride = cuda.gridsize(1)
    while p < nnz:
        k = perm[p]
        if k >= 0 and k < nnz:
            rows_out[p] = _row_of(indptr, n_rows, k)
            if has_data:
                data_out[p] = data[k]
        p += stride


@cuda.jit
def _indptr_from_sorted(keys, indptr_t, n_cols, nnz):
    """indptr_t[c] = number of sorted keys below c."""
    c = cuda.grid(1)
    stride = cuda.gridsize(1)
    while c <= n_cols:
        a = 0
        b = nnz
        while a < b:
            m = (a + b) // 2
            if keys[m] < c:
                a = m + 1
            else:
                b = m
        indptr_t[c] = a
        c += stride


def _stable_sort(keys, kind, st):
    """(sorted keys, perm) for a 1-D device array of keys: stable and deterministic. The keys are a
    device array; perm (int64) is a :class:`._device.Output`, so it comes back in the caller's kind."""
    n = keys.shape[0]
    k0, p0 = dv.scratch((n,), keys.dtype, kind), dv.Output((n,), np.int64, kind)
    if n == 0:
        return k0, p0
    tile = max(1, int(SORT_TILE))
    blocks, threads = dv.launch_shape(n, BLOCK, MAX_BLOCKS)
    _sort_tiles[blocks, threads, st](keys, k0, p0.dev, n, tile)
    if tile < n:
        k1, p1 = dv.scratch((n,), keys.dtype, kind), dv.Output((n,), np.int64, kind)
        width = tile
        while width < n:
            _merge_runs[blocks, threads, st](k0, p0.dev, k1, p1.dev, n, width)
            k0, p0, k1, p1 = k1, p1, k0, p0
            width *= 2
    return k0, p0


def csr_transpose(indptr, indices, data, n_cols):
    """A^T in CSR: (indptr_t [n_cols+1] int64, indices_t, data_t or None, perm [nnz] int64), rows of A
    ascending within each row of A^T (a stable sort by column)."""
    kind = dv.kind_of(indices)
    st = dv.stream(kind)
    n_rows = indptr.shape[0] - 1
    nnz = indices.shape[0]
    ip, ix = dv.as_device(indptr), dv.as_device(indices)
    keys, perm = _stable_sort(ix, kind, st)
    indptr_t = dv.Output((n_cols + 1,), np.int64, kind)
    blocks, threads = dv.launch_shape(n_cols + 1, BLOCK, MAX_BLOCKS)
    _indptr_from_sorted[blocks, threads, st](keys, indptr_t.dev, n_cols, nnz)
    rows_t = dv.Output((nnz,), ix.dtype, kind)
    has_data = data is not None
    # Without data, perm stands in for the unused data arrays (kernels take no None arguments).
    dd = dv.as_device(data) if has_data else perm.dev
    data_t = dv.Output((nnz,), dd.dtype, kind) if has_data else None
    if nnz > 0:
        blocks, threads = dv.launch_shape(nnz, BLOCK, MAX_BLOCKS)
        _transpose_gather[blocks, threads, st](ip, perm.dev, dd, has_data, rows_t.dev,
                                               data_t.dev if has_data else perm.dev, n_rows, nnz)
    return indptr_t.result(), rows_t.result(), None if data_t is None else data_t.result(), perm.result()


# --------------------------------------------------------------------------------------------------
# gcn_norm

@cuda.jit
def _gcn_rows(indptr, indices, data, has_data, n, n_stored, add_loops, fill, dis, missing, loop_pos, counts,
              zero64):
    """Per node: degree (float64, self-loop included), D^-1/2, whether a loop is missing, where it
    goes (before the row's first column id above the node, as the CPU kernel puts it) and the row's
    new length. Nodes past the stored rows (``n_stored``) have empty rows."""
    r = cuda.grid(1)
    stride = cuda.gridsize(1)
    while r < n:
        lo = 0
        hi = 0
        if r < n_stored:
            lo = indptr[r]
            hi = indptr[r + 1]
        deg = zero64
        has_loop = False
        pos = hi - lo
        found = False
        for k in range(lo, hi):
            c = indices[k]
            w = zero64 + 1
            if has_data:
                w = zero64 + data[k]
            deg += w
            if c == r:
                has_loop = True
            if c > r and not found:
                pos = k - lo
                found = True
        lacks = add_loops and not has_loop
        if lacks:
            deg += fill
        if deg > 0:
            dis[r] = 1.0 / math.sqrt(deg)
        else:
            dis[r] = 0.0
        missing[r] = 1 if lacks else 0
        loop_pos[r] = pos
        counts[r] = (hi - lo) + (1 if lacks else 0)
        r += stride


@cuda.jit
def _gcn_scatter(indptr, indices, data, has_data, new_indptr, dis, missing, loop_pos, out_indices, out_data,
                 n, n_stored, nnz, zero64):
    k = cuda.grid(1)
    stride = cuda.gridsize(1)
    while k < nnz:
        r = _row_of(indptr, n_stored, k)
        if r < n:
            local = k - indptr[r]
            pos = new_indptr[r] + local
            if missing[r] != 0 and local >= loop_pos[r]:
                pos += 1
            c = indices[k]
            w = zero64 + 1
            if has_data:
                w = zero64 + data[k]
            dc = zero64
            if c >= 0 and c < n:
                dc = dis[c]
            if pos < out_indices.shape[0]:
                out_indices[pos] = c
                out_data[pos] = dis[r] * w * dc
        k += stride


@cuda.jit
def _gcn_loops(new_indptr, dis, missing, loop_pos, out_indices, out_data, n, fill):
    r = cuda.grid(1)
    stride = cuda.gridsize(1)
    while r < n:
        if missing[r] != 0:
            pos = new_indptr[r] + loop_pos[r]
            if pos < out_indices.shape[0]:
                out_indices[pos] = r
                out_data[pos] = dis[r] * fill * dis[r]
        r += stride


def gcn_norm(indptr, indices, data, num_nodes, add_self_loops=True, fill_value=1.0, dtype=np.float32):
    """P = D^-1/2 (A + fill_value I) D^-1/2 on a square CSR A; (indptr int64, indices, data of dtype).

    A missing self-loop goes before the row's first column id above the node (as in the CPU kernel),
    so sorted rows stay sorted; the reference sorts every row, and the two agree whenever A's rows are
    sorted. Nodes past the rows of ``indptr`` have empty rows.
    """
    kind = dv.kind_of(indices)
    st = dv.stream(kind)
    dtype = np.dtype(dtype)
    n = int(num_nodes)
    nnz = indices.shape[0]
    n_stored = indptr.shape[0] - 1
    ip, ix = dv.as_device(indptr), dv.as_device(indices)
    has_data = data is not None
    dis = dv.scratch((n,), np.float64, kind)
    d = _as_dtype(dv.as_device(data), dtype, kind) if has_data else dis
    missing = dv.scratch((n,), np.int64, kind)
    loop_pos = dv.scratch((n,), np.int64, kind)
    counts = dv.scratch((n,), np.int64, kind)
    new_indptr = dv.Output((n + 1,), np.int64, kind)
    fill = np.float64(dtype.type(fill_value))  # rounded to dtype first, as the reference does
    zero64 = np.float64(0)
    if n > 0:
        blocks, threads = dv.launch_shape(n, BLOCK, MAX_BLOCKS)
        _gcn_rows[blocks, threads, st](ip, ix, d, has_data, n, n_stored, bool(add_self_loops), fill, dis,
                                       missing, loop_pos, counts, zero64)
    _scan(counts, new_indptr.dev, n, st)
    total = int(dv.to_host_scalar(new_indptr.dev, n, st))
    out_indices = dv.Output((total,), ix.dtype, kind)
    out_data = dv.Output((total,), dtype, kind)
    if nnz > 0:
        blocks, threads = dv.launch_shape(nnz, BLOCK, MAX_BLOCKS)
        _gcn_scatter[blocks, threads, st](ip, ix, d, has_data, new_indptr.dev, dis, missing, loop_pos,
                                          out_indices.dev, out_data.dev, n, n_stored, nnz, zero64)
    if add_self_loops and n > 0:
        blocks, threads = dv.launch_shape(n, BLOCK, MAX_BLOCKS)
        _gcn_loops[blocks, threads, st](new_indptr.dev, dis, missing, loop_pos, out_indices.dev, out_data.dev,
                                       n, fill)
    return new_indptr.result(), out_indices.result(), out_data.result()
