"""CuPy (CUDA C RawModule) kernels for sparse graph ops: spmm, sddmm, csr_transpose, gcn_norm.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`; arrays are cupy arrays (NumPy
inputs are copied to the device) and results are cupy arrays. The algorithms are those of
:mod:`tapegrad.kernels.cuda.sparse`, written in CUDA C so that each lane loads a float4 / double2 of
features at a time when the feature width allows it, and reductions use warp shuffles:

* spmm: the stored entries are cut into segments of ``SPMM_SEGMENT``; a group of lanes (a warp, or
  fewer for narrow X) walks one segment for one tile of features, writing rows that lie inside it and
  leaving a piece of each row cut by segment edges in a scratch buffer; the group that writes a row's
  last piece (an atomic ticket says which) adds the pieces in segment order. Short rows share a warp,
  power-law rows are split, no value is accumulated atomically, and results are bitwise reproducible.
  Empty rows are zeroed by a grid-stride pass over the rows in the same launch, so a call is one launch.
* sddmm: a group of lanes per segment of ``SDDMM_SEGMENT`` entries, one shuffle reduction per entry.
* csr_transpose: a stable ``cupy.argsort`` of the column ids, then gather kernels.
* gcn_norm: per-row degree kernel, ``cupy.cumsum`` for the new row pointer, scatter kernels.

The launch constants are read at every launch (tests patch them small).
"""
from __future__ import annotations

import functools

import cupy
import numpy as np

from .. import direct_launch as dl
from . import _compile as cc

BLOCK = 256          # threads per block (rounded up to a multiple of 32 where shuffles need it)
MAX_BLOCKS = 4096    # grid size cap; grid-stride loops cover the rest
SPMM_SEGMENT = 128   # stored entries per SpMM work item
SDDMM_SEGMENT = 32   # stored entries per SDDMM work item

_SPMM = r"""
typedef $T T; typedef $I I; typedef $P P;
#define VEC $VEC
// Fixed per launch plan, so that a call passes few arguments (each costs the host time at the launch).
#define TG_F $F
#define TG_SEG $SEG
#define TG_GROUP $GROUP
#define TG_HAS_DATA $HAS_DATA
#define TG_N_TILES ((TG_F + TG_GROUP * VEC - 1) / (TG_GROUP * VEC))

// The lanes of this lane's group (`group` a power of two <= 32, groups aligned within the warp).
__device__ __forceinline__ unsigned int tg_group_mask(int group) {
    if (group >= 32) return 0xffffffffu;
    const unsigned int base = (unsigned int)((threadIdx.x & 31) & ~(group - 1));
    return ((1u << group) - 1u) << base;
}

// One launch. A group of `group` lanes per (segment of `seg` entries, tile of group * VEC features):
// * a row ending inside the segment that also starts in it goes straight to y;
// * a row cut by segment edges leaves one piece per segment it touches in `carry` (the piece of the
//   segment it starts in at carry[s][1], the others at carry[s][0]); every group that wrote a piece
//   takes a ticket for the row (tickets[s0 * n_tiles + tile], s0 the segment the row starts in), and
//   the group that takes the last one adds the pieces in segment order, so the sum (and the result's
//   bits) never depends on which group finished last; it resets the ticket for the next call;
// * empty rows, which no segment writes, get zeros in a grid-stride pass over the rows first (a thread per
//   row, so a long run of empty rows is spread over the grid).
// carry: the pieces [n_seg, 2, F]; tickets [n_seg * n_tiles], zero on entry and on exit.
extern "C" __global__ void tapegrad_spmm_$SFX(
        const P* __restrict__ indptr, const I* __restrict__ indices, const T* __restrict__ data,
        const T* __restrict__ x, T* __restrict__ y, T* __restrict__ carry, unsigned int* __restrict__ tickets,
        long long n_rows, long long n_cols, long long nnz) {
    const long long F = TG_F, seg = TG_SEG, n_tiles = TG_N_TILES;
    const int group = TG_GROUP, has_data = TG_HAS_DATA;
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x % group;
    const unsigned int mask = tg_group_mask(group);
    const long long n_groups = ((long long)gridDim.x * blockDim.x) / group;
    const long long n_seg = (nnz + seg - 1) / seg;
    for (long long r = tid; r < n_rows; r += (long long)gridDim.x * blockDim.x) {
        if (indptr[r + 1] == indptr[r]) {
            T z[VEC];
#pragma unroll
            for (int q = 0; q < VEC; ++q) z[q] = T(0);
            for (long long f = 0; f < F; f += VEC) tg_store<T, VEC>(y + r * F + f, z);
        }
    }
    for (long long g = tid / group; g < n_seg * n_tiles; g += n_groups) {
        const long long s = g / n_tiles, tile = g - s * n_tiles;
        const long long f = (tile * group + lane) * VEC;
        const bool on = f < F;
        const long long start = s * seg;
        const long long end = min(start + seg, nnz);
        long long r = tg_row_of(indptr, n_rows, start);
        long long r_start = indptr[r], r_end = indptr[r + 1];
        T acc[VEC];
#pragma unroll
        for (int q = 0; q < VEC; ++q) acc[q] = T(0);
        long long k = start;
        while (k < end) {
            const long long stop = min(r_end, end);
            for (; k < stop; ++k) {
                const long long c = indices[k];
                if (on && c >= 0 && c < n_cols) {
                    const T v = has_data ? data[k] : T(1);
                    T xv[VEC];
                    tg_load<T, VEC>(x + c * F + f, xv);
#pragma unroll
                    for (int q = 0; q < VEC; ++q) acc[q] += v * xv[q];
                }
            }
            const bool whole = r_start >= start && r_end <= end;
            if (whole) {
                if (on) tg_store<T, VEC>(y + r * F + f, acc);
            } else {  // a piece of a row cut by segment edges
                if (on) tg_store<T, VEC>(carry + (2 * s + (r_start >= start ? 1 : 0)) * F + f, acc);
                const long long s0 = r_start / seg, last = (r_end - 1) / seg;
                __threadfence();  // the piece, before the ticket that may let another group read it
                __syncwarp(mask);
                unsigned int ticket = 0;
                if (lane == 0) ticket = atomicAdd(tickets + s0 * n_tiles + tile, 1u);
                ticket = __shfl_sync(mask, ticket, 0, group);
                if (ticket == (unsigned int)(last - s0)) {  // every other piece is written
                    __threadfence();
                    if (on) {  // the pieces come through L2: other SMs wrote them this launch
                        T sum[VEC];
                        const T* first = carry + (2 * s0 + 1) * F + f;
#pragma unroll
                        for (int q = 0; q < VEC; ++q) sum[q] = __ldcg(first + q);
                        for (long long s2 = s0 + 1; s2 <= last; ++s2) {
                            const T* piece = carry + (2 * s2) * F + f;
#pragma unroll
                            for (int q = 0; q < VEC; ++q) sum[q] += __ldcg(piece + q);
                        }
                        tg_store<T, VEC>(y + r * F + f, sum);
                    }
                    if (lane == 0) tickets[s0 * n_tiles + tile] = 0u;
                }
            }
#pragma unroll
            for (int q = 0; q < VEC; ++q) acc[q] = T(0);
            if (r_end <= end && k < end) {  // next non-empty row
                ++r;
                while (r + 1 < n_rows && indptr[r + 1] <= k) ++r;
                r_start = indptr[r];
                r_end = indptr[r + 1];
            }
        }
    }
}
"""

_SDDMM = r"""
typedef $T T; typedef $I I; typedef $P P;
#define VEC $VEC

// A group of `group` lanes (a power of two <= 32) per segment of `seg` entries; the lanes split each
// entry's dot product over the features and reduce it with shuffles. The outer loop is block-uniform
// and the inner one has a fixed trip count, so whole warps reach every shuffle.
extern "C" __global__ void tapegrad_sddmm_$SFX(
        const P* __restrict__ indptr, const I* __restrict__ indices, const T* __restrict__ a,
        const T* __restrict__ b, T* __restrict__ out, long long n_rows, long long n_cols, long long F,
        long long nnz, long long seg, int group) {
    const int lane = threadIdx.x % group;
    const long long per_block = blockDim.x / group;
    const long long n_seg = (nnz + seg - 1) / seg;
    const long long step = (long long)gridDim.x * per_block;
    for (long long base = (long long)blockIdx.x * per_block; base < n_seg; base += step) {
        const long long start = (base + threadIdx.x / group) * seg;
        const long long end = min(start + seg, nnz);
        long long r = start < end ? tg_row_of(indptr, n_rows, start) : 0;
        for (long long j = 0; j < seg; ++j) {
            const long long k = start + j;
            const bool active = k < end;
            T part = T(0);
            if (active) {
                while (r + 1 < n_rows && indptr[r + 1] <= k) ++r;
                const long long c = indices[k];
                if (c >= 0 && c < n_cols) {
                    for (long long f = (long long)lane * VEC; f < F; f += (long long)group * VEC) {
                        T av[VEC], bv[VEC];
                        tg_load<T, VEC>(a + r * F + f, av);
                        tg_load<T, VEC>(b + c * F + f, bv);
#pragma unroll
                        for (int q = 0; q < VEC; ++q) part += av[q] * bv[q];
                    }
                }
            }
            for (int off = group >> 1; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
            if (active && lane == 0) out[k] = part;
        }
    }
}
"""

_TRANSPOSE = r"""
typedef $T T; typedef $I I; typedef $P P;

// For output position p: the row of A that entry perm[p] lies in, and its value.
extern "C" __global__ void tapegrad_transpose_gather_$SFX(
        const P* __restrict__ indptr, const long long* __restrict__ perm, const T* __restrict__ data,
        int has_data, I* __restrict__ rows_out, T* __restrict__ data_out, long long n_rows, long long nnz) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < nnz; p += stride) {
        const long long k = perm[p];
        if (k >= 0 && k < nnz) {
            rows_out[p] = (I)tg_row_of(indptr, n_rows, k);
            if (has_data) data_out[p] = data[k];
        }
    }
}

// indptr_t[c] = number of sorted column ids below c.
extern "C" __global__ void tapegrad_transpose_indptr_$SFX(
        const I* __restrict__ keys, long long* __restrict__ indptr_t, long long n_cols, long long nnz) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c <= n_cols; c += stride) {
        long long lo = 0, hi = nnz;
        while (lo < hi) {
            const long long m = (lo + hi) >> 1;
            if ((long long)keys[m] < c) lo = m + 1; else hi = m;
        }
        indptr_t[c] = lo;
    }
}
"""

_CSR_STATS = r"""
typedef $I I; typedef $P P;

// What a CSR pattern's checks need, in one pass and one read back: out[0] = indptr[0], out[1] = 1 where
// some indptr[r + 1] < indptr[r], out[2] = indptr[n_rows], out[3] = 1 where an index is negative, out[4] =
// 1 + the largest non-negative index (0 if none). out[1], out[3] and out[4] start at 0. Whole warps.
extern "C" __global__ void tapegrad_csr_stats_$SFX(
        const P* __restrict__ indptr, const I* __restrict__ indices, long long n_rows, long long nnz,
        unsigned long long* __restrict__ out) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long decreasing = 0, negative = 0, top = 0;
    for (long long r = start; r < n_rows; r += stride)
        if ((long long)indptr[r + 1] < (long long)indptr[r]) decreasing = 1;
    for (long long k = start; k < nnz; k += stride) {
        const long long v = (long long)indices[k];
        if (v < 0) negative = 1;
        else if ((unsigned long long)v + 1 > top) top = (unsigned long long)v + 1;
    }
    for (int o = 16; o > 0; o >>= 1) {  // one atomic per warp
        decreasing |= __shfl_down_sync(0xffffffffu, decreasing, o);
        negative |= __shfl_down_sync(0xffffffffu, negative, o);
        const unsigned long long t = __shfl_down_sync(0xffffffffu, top, o);
        if (t > top) top = t;
    }
    if ((threadIdx.x & 31) == 0) {
        if (decreasing) atomicMax(&out[1], 1ull);
        if (negative) atomicMax(&out[3], 1ull);
        if (top) atomicMax(&out[4], top);
    }
    if (start == 0) {
        out[0] = (unsigned long long)(long long)indptr[0];
        out[2] = (unsigned long long)(long long)indptr[n_rows];
    }
}
"""

_GCN = r"""
typedef $T T; typedef $I I; typedef $P P;

// Per node: degree in double (the self-loop included), D^-1/2, whether a loop is missing, where it goes
// (before the row's first column id above the node, as the CPU kernel puts it) and the row's new
// length. Nodes past the stored rows (n_stored) have empty rows.
extern "C" __global__ void tapegrad_gcn_rows_$SFX(
        const P* __restrict__ indptr, const I* __restrict__ indices, const T* __restrict__ data,
        int has_data, long long n, long long n_stored, int add_loops, double fill, double* __restrict__ dis,
        long long* __restrict__ missing, long long* __restrict__ loop_pos, long long* __restrict__ counts) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += stride) {
        const long long lo = r < n_stored ? (long long)indptr[r] : 0;
        const long long hi = r < n_stored ? (long long)indptr[r + 1] : 0;
        double deg = 0.0;
        bool has_loop = false;
        long long pos = hi - lo;
        for (long long k = lo; k < hi; ++k) {
            const long long c = indices[k];
            deg += has_data ? (double)data[k] : 1.0;
            has_loop |= (c == r);
            if (c > r && pos == hi - lo) pos = k - lo;
        }
        const bool lacks = add_loops && !has_loop;
        if (lacks) deg += fill;
        dis[r] = deg > 0.0 ? 1.0 / sqrt(deg) : 0.0;
        missing[r] = lacks;
        loop_pos[r] = pos;
        counts[r] = (hi - lo) + (lacks ? 1 : 0);
    }
}

extern "C" __global__ void tapegrad_gcn_scatter_$SFX(
        const P* __restrict__ indptr, const I* __restrict__ indices, const T* __restrict__ data,
        int has_data, const long long* __restrict__ new_indptr, const double* __restrict__ dis,
        const long long* __restrict__ missing, const long long* __restrict__ loop_pos,
        I* __restrict__ out_indices, T* __restrict__ out_data, long long n, long long n_stored, long long nnz,
        long long total) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < nnz; k += stride) {
        const long long r = tg_row_of(indptr, n_stored, k);
        if (r >= n) continue;
        const long long local = k - (long long)indptr[r];
        long long pos = new_indptr[r] + local;
        if (missing[r] && local >= loop_pos[r]) ++pos;
        const long long c = indices[k];
        const double w = has_data ? (double)data[k] : 1.0;
        const double dc = (c >= 0 && c < n) ? dis[c] : 0.0;
        if (pos < total) {
            out_indices[pos] = (I)c;
            out_data[pos] = (T)(dis[r] * w * dc);
        }
    }
}

extern "C" __global__ void tapegrad_gcn_loops_$SFX(
        const long long* __restrict__ new_indptr, const double* __restrict__ dis,
        const long long* __restrict__ missing, const long long* __restrict__ loop_pos,
        I* __restrict__ out_indices, T* __restrict__ out_data, long long n, double fill, long long total) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x; r < n; r += stride) {
        if (missing[r]) {
            const long long pos = new_indptr[r] + loop_pos[r];
            if (pos < total) {
                out_indices[pos] = (I)r;
                out_data[pos] = (T)(dis[r] * fill * dis[r]);
            }
        }
    }
}
"""


@functools.cache
def _source(template, dtype, itype, ptype, vec):
    sfx = f"{cc.suffix(dtype)}_{cc.suffix(itype)}_p{cc.suffix(ptype)[1:]}_v{vec}"
    return cc.render(template, T=cc.ctype(dtype), I=cc.ctype(itype), P=cc.ctype(ptype), VEC=vec, SFX=sfx), sfx


def _kernel(template, name, dtype, itype, ptype, vec=1):
    source, sfx = _source(template, np.dtype(dtype), np.dtype(itype), np.dtype(ptype), vec)
    return cc.kernel(source, f"tapegrad_{name}_{sfx}")


def _i64(v):
    return np.int64(v)


def _launch(n):
    return cc.launch_shape(n, BLOCK, MAX_BLOCKS)


_contig = cc.contiguous


def _result(out, shape, dtype):
    """(array to write, caller's out): a fresh array unless out is C-contiguous and can be written."""
    if out is None:
        return cupy.empty(shape, dtype), None
    if type(out) is cc.ndarray and out._c_contiguous and out.shape == shape and out.dtype == dtype:
        return out, out  # the engine's case, checked first
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"out must have shape {tuple(shape)} and dtype {np.dtype(dtype)}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    if type(out) is cupy.ndarray and out._c_contiguous:
        return out, out
    return cupy.empty(shape, dtype), out


# Launch plans of spmm, per (dtypes, shapes, pointer alignment, launch constants, device, stream): what a
# call needs besides its arrays (the kernel, its launch shape and scalar arguments, its scratch), worked
# out once, since a call's host time is otherwise mostly Python. At most _MAX_SPMM_PLANS are kept.
_SPMM_PLANS: dict = {}
# Per (device, stream, dtype): spmm's scratch, (carry pieces, tickets); a larger call replaces it with a
# larger one (plans made before keep theirs). The calls of one stream run one after the other, and
# the tickets are zero between calls: the kernel resets the ones it uses.
_SPMM_SCRATCH: dict = {}


def release_scratch() -> None:
    """Free spmm's launch plans and scratch buffers (the next call makes them again). Not while a CUDA
    graph that recorded an spmm call is still to be replayed: the graph keeps the buffers' addresses."""
    _SPMM_PLANS.clear()
    _SPMM_SCRATCH.clear()


_MAX_SPMM_PLANS = 64  # least recently made dropped first (with the scratch they hold)


def _spmm_scratch(dev, stream, dtype, n_carry, n_tickets):
    """(carry pieces, tickets) with room for n_carry elements and n_tickets tickets; the tickets are zero
    (zeroed once, and each call leaves the ones it uses as it found them). Two buffers, so that no call's
    pieces ever land where another call's tickets are."""
    key = (dev, stream, dtype)
    s = _SPMM_SCRATCH.get(key)
    if s is None or s[0].size < n_carry or s[1].size < n_tickets:
        old_c, old_t = (s[0].size, s[1].size) if s is not None else (0, 0)
        s = _SPMM_SCRATCH[key] = (cupy.empty(max(n_carry, old_c, 1), dtype),
                                  cupy.zeros(max(n_tickets, old_t, 1), np.uint32))
    return s


@functools.cache
def _spmm_source(dtype, itype, ptype, vec, F, seg, group, has_data):
    sfx = (f"{cc.suffix(dtype)}_{cc.suffix(itype)}_p{cc.suffix(ptype)[1:]}_v{vec}_f{F}_s{seg}_g{group}"
           f"_d{int(has_data)}")
    return cc.render(_SPMM, T=cc.ctype(dtype), I=cc.ctype(itype), P=cc.ctype(ptype), VEC=vec, F=F, SEG=seg,
                     GROUP=group, HAS_DATA=int(has_data), SFX=sfx), sfx


def _spmm_plan(key, indptr, indices, x, y, dtype, n_rows, F, nnz, has_data, dev, stream):
    seg = max(1, int(SPMM_SEGMENT))
    n_seg = -(-nnz // seg)
    vec = cc.vec_width(dtype, F, x, y)
    group = min(32, cc.next_pow2(-(-F // vec)))
    n_tiles = -(-F // (group * vec))
    block = max(group, -(-int(BLOCK) // group) * group)
    blocks, threads = cc.launch_shape(n_seg * n_tiles * group, block, MAX_BLOCKS)
    source, sfx = _spmm_source(np.dtype(dtype), np.dtype(indices.dtype), np.dtype(indptr.dtype), vec, F, seg, group,
                               has_data)
    fn = cc.kernel(source, f"tapegrad_spmm_{sfx}")
    carry, tickets = _spmm_scratch(dev, stream, dtype, n_seg * 2 * F, n_seg * n_tiles)
    tail = (carry, tickets, _i64(n_rows), _i64(x.shape[0]), _i64(nnz))
    dl.evict_oldest(_SPMM_PLANS, _MAX_SPMM_PLANS)
    plan = _SPMM_PLANS[key] = cc.Launch(fn, (blocks,), (threads,), (indptr, indices, x, x, y), tail)
    return plan



def spmm(indptr, indices, data, x, out=None):
    """Y = A @ X for CSR A (``data=None``: all ones) and dense X [n_cols, F]; Y [n_rows, F], X's dtype.

    The number of stored entries is taken as ``len(indices)`` (no device-to-host read of indptr). One
    launch; deterministic (see the kernel: pieces of long rows are added in a fixed order).
    """
    nd = cc.ndarray  # the engine's calls pass C-contiguous cupy arrays: checked inline, no conversion
    if not (type(x) is nd and x._c_contiguous):
        x = _contig(x)
    if not (type(indptr) is nd and indptr._c_contiguous):
        indptr = _contig(indptr)
    if not (type(indices) is nd and indices._c_contiguous):
        indices = _contig(indices)
    dtype = x.dtype
    n_x, F = x.shape
    n_rows = indptr.shape[0] - 1
    y, user = _result(out, (n_rows, F), dtype)
    nnz = indices.shape[0]
    if n_rows <= 0 or F == 0:
        return cc.finish(y, user)
    if nnz == 0:  # every row is empty
        y.fill(0)
        return cc.finish(y, user)
    has_data = data is not None
    if not has_data:
        d = x  # not read
    elif type(data) is nd and data.dtype == dtype and data._c_contiguous:
        d = data
    else:
        d = _contig(data).astype(dtype, copy=False)
    dev = cc.get_device()
    ptr = cc.current_stream().ptr
    stream = cc.stream_key(ptr)
    x_at, y_at = x.data.ptr, y.data.ptr
    key = (dtype, indices.dtype, indptr.dtype, n_rows, n_x, F, nnz, has_data, (x_at | y_at) & 15,
           SPMM_SEGMENT, BLOCK, MAX_BLOCKS, dev, stream)
    plan = _SPMM_PLANS.get(key)
    if plan is None:
        plan = _spmm_plan(key, indptr, indices, x, y, dtype, n_rows, F, nnz, has_data, dev, stream)
    plan(ptr, indptr.data.ptr, indices.data.ptr, d.data.ptr, x_at, y_at)
    return y if user is None or user is y else cc.finish(y, user)


def sddmm(indptr, indices, a, b, out=None):
    """out[k] = <a[row(k)], b[indices[k]]> on A's pattern; a [n_rows, F], b [n_cols, F]; [nnz]."""
    a, b = _contig(a), _contig(b)
    dtype = a.dtype
    indptr, indices = _contig(indptr), _contig(indices)
    nnz = indices.shape[0]
    res, user = _result(out, (nnz,), dtype)
    if nnz == 0:
        return cc.finish(res, user)
    n_rows = indptr.shape[0] - 1
    F = a.shape[1]
    seg = max(1, int(SDDMM_SEGMENT))
    n_seg = -(-nnz // seg)
    vec = cc.vec_width(dtype, F, a, b)
    group = min(32, cc.next_pow2(max(1, -(-F // vec))))
    block = max(32, -(-int(BLOCK) // 32) * 32)  # whole warps: the shuffles use the full mask
    blocks, threads = cc.launch_shape(n_seg * group, block, MAX_BLOCKS)
    _kernel(_SDDMM, "sddmm", dtype, indices.dtype, indptr.dtype, vec)(
        (blocks,), (threads,),
        (indptr, indices, a, b, res, _i64(n_rows), _i64(b.shape[0]), _i64(F), _i64(nnz), _i64(seg),
         np.int32(group)))
    return cc.finish(res, user)


def csr_transpose(indptr, indices, data, n_cols):
    """A^T in CSR: (indptr_t [n_cols+1] int64, indices_t, data_t or None, perm [nnz] int64), rows of A
    ascending within each row of A^T (``cupy.argsort`` is stable)."""
    indptr, indices = _contig(indptr), _contig(indices)
    nnz = indices.shape[0]
    n_rows = indptr.shape[0] - 1
    perm = cupy.argsort(indices, kind="stable").astype(np.int64, copy=False)
    keys = indices[perm]
    has_data = data is not None
    d = _contig(data) if has_data else cupy.empty(1, np.float32)
    args = (d.dtype, indices.dtype, indptr.dtype)
    indptr_t = cupy.empty(n_cols + 1, np.int64)
    blocks, threads = _launch(n_cols + 1)
    _kernel(_TRANSPOSE, "transpose_indptr", *args)(
        (blocks,), (threads,), (keys, indptr_t, _i64(n_cols), _i64(nnz)))
    rows_t = cupy.empty(nnz, indices.dtype)
    data_t = cupy.empty(nnz, d.dtype) if has_data else None
    if nnz > 0:
        blocks, threads = _launch(nnz)
        _kernel(_TRANSPOSE, "transpose_gather", *args)(
            (blocks,), (threads,),
            (indptr, perm, d, np.int32(has_data), rows_t, data_t if has_data else d, _i64(n_rows), _i64(nnz)))
    return indptr_t, rows_t, data_t, perm


_STATS_BLOCK = 256  # whole warps: the kernel reduces with full-mask shuffles


def csr_stats(indptr, indices):
    """What :func:`tapegrad.kernels.validate.csr_structure` checks, for a CSR pattern on the GPU, in one
    launch and one read back (instead of a host sync per check): (indptr[0], whether indptr decreases
    anywhere, indptr[-1], whether an index is negative, 1 + the largest non-negative index or 0).
    indptr [n_rows + 1] with n_rows >= 0, indices [nnz]; both C-contiguous integer cupy arrays."""
    n_rows, nnz = indptr.shape[0] - 1, indices.shape[0]
    out = cupy.zeros(5, np.uint64)
    blocks, threads = cc.launch_shape(max(n_rows, nnz, 1), _STATS_BLOCK, MAX_BLOCKS)
    source, sfx = _source(_CSR_STATS, np.dtype(np.float32), np.dtype(indices.dtype), np.dtype(indptr.dtype), 1)
    cc.kernel(source, f"tapegrad_csr_stats_{sfx}")((blocks,), (threads,), (indptr, indices, _i64(n_rows), _i64(nnz),
                                                                           out))
    u = out.get()
    v = u.view(np.int64)  # indptr's ends as signed values; the index bound stays unsigned (up to 2^63)
    return int(v[0]), bool(v[1]), int(v[2]), bool(v[3]), int(u[4])


def gcn_norm(indptr, indices, data, num_nodes, add_self_loops=True, fill_value=1.0, dtype=np.float32):
    """P = D^-1/2 (A + fill_value I) D^-1/2 on a square CSR A; (indptr int64, indices, data of dtype).

    A missing self-loop goes before the row's first column id above the node (as in the CPU kernel),
    so sorted rows stay sorted; the reference sorts every row, and the two agree whenever A's rows are
    sorted. Nodes past the rows of ``indptr`` have empty rows.
    """
    dtype = np.dtype(dtype)
    n = int(num_nodes)
    indptr, indices = _contig(indptr), _contig(indices)
    nnz = indices.shape[0]
    n_stored = indptr.shape[0] - 1
    has_data = data is not None
    d = _contig(data).astype(dtype, copy=False) if has_data else cupy.empty(1, dtype)
    args = (dtype, indices.dtype, indptr.dtype)
    dis = cupy.empty(n, np.float64)
    missing = cupy.empty(n, np.int64)
    loop_pos = cupy.empty(n, np.int64)
    counts = cupy.empty(n, np.int64)
    fill = np.float64(dtype.type(fill_value))  # rounded to dtype first, as the reference does
    if n > 0:
        blocks, threads = _launch(n)
        _kernel(_GCN, "gcn_rows", *args)(
            (blocks,), (threads,),
            (indptr, indices, d, np.int32(has_data), _i64(n), _i64(n_stored), np.int32(bool(add_self_loops)),
             fill, dis, missing, loop_pos, counts))
    new_indptr = cupy.zeros(n + 1, np.int64)
    if n > 0:
        cupy.cumsum(counts, out=new_indptr[1:])
    total = int(new_indptr[n])
    out_indices = cupy.empty(total, indices.dtype)
    out_data = cupy.empty(total, dtype)
    if nnz > 0:
        blocks, threads = _launch(nnz)
        _kernel(_GCN, "gcn_scatter", *args)(
            (blocks,), (threads,),
            (indptr, indices, d, np.int32(has_data), new_indptr, dis, missing, loop_pos, out_indices, out_data,
             _i64(n), _i64(n_stored), _i64(nnz), _i64(total)))
    if add_self_loops and n > 0:
        blocks, threads = _launch(n)
        _kernel(_GCN, "gcn_loops", *args)(
            (blocks,), (threads,),
            (new_indptr, dis, missing, loop_pos, out_indices, out_data, _i64(n), fill, _i64(total)))
    return new_indptr, out_indices, out_data
