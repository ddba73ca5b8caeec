"""CuPy (CUDA C) persistent recurrent loops tiled over hidden units *and* batch rows, W_hh held in registers.

The whole-loop entries of :mod:`tapegrad.kernels.cupy.recurrent_step` (``lstm_seq_fwd`` and friends) run
here when a tiling fits; same buffers and step order (kernels/sequence.py).

Why: the warp-per-unit loops of recurrent_step read their rows of W_hh from L1/L2 at every step and walk
the batch 8 (or 32) rows at a time inside one block, so at B = 64 each step is 8 passes on half the SMs.
Here a block owns a tile of ``U`` hidden units and ``R`` batch rows for the whole launch:

* its slice of W_hh (the gate rows of its units, forward; their columns, backward) is loaded into
  registers once, each thread holding ``KS`` consecutive weights of one row, so the step's product
  reads nothing but the state rows;
* per step the block copies its ``R`` state rows (h_{t-1} forward, dz_{t+1} backward) from L2 into
  shared memory, every thread multiplies them with its weights (a partial dot product over its segment
  of K), the partials meet in shared memory, and ``R * U`` threads finish the sums and apply the cell;
* the cell state (forward) and dL/dc (backward) of a block's (row, unit) pairs never leave it, so they
  stay in registers from step to step;
* a grid barrier (kernels/cupy/_persistent.py) separates the steps: there are at most as many blocks as
  SMs.

Forward, LSTM (NG = 4 gates) or Elman (NG = 1): thread t owns column c = t % (NG U) of the block (gate
c / U of unit j0 + c % U) and segment s = t / (NG U) of K = H. Backward: thread t owns unit u = t % U
and segment s = t / U of K = NG H, reading the unit's row of W_hh^T.
"""
from __future__ import annotations

import functools
import os

import cupy
import numpy as np

from . import _compile as cc
from ._persistent import PERSISTENT_HELPERS
from ._tiling import MAX_KS, plan

ENABLED = os.environ.get("TAPEGRAD_TILED_LOOPS", "1") != "0"

_TILED = r"""
typedef $T T;
#define NG $NG
#define H $H
#define U $U
#define R $R
#define NT $NT
#define KSF $KSF
#define KSB $KSB
#define VEC $VEC
#define VG $VG
#define NUT (H / U)

$HELPERS
// n elements of src (rows other blocks wrote this launch: read through L2) into shared dst, VG per load
// (n % VG == 0), STAGE_UNROLL loads in flight per thread: a load waited for before the next would pay an
// L2 round trip each.
#define STAGE_UNROLL 8
__device__ __forceinline__ void tg_stage(const T* src, int n, T* dst) {
    __syncthreads();  // the block is done reading dst
    for (int e0 = threadIdx.x * VG; e0 < n; e0 += NT * VG * STAGE_UNROLL) {
        T v[STAGE_UNROLL][VG];
#pragma unroll
        for (int q = 0; q < STAGE_UNROLL; ++q) {
            const int e = e0 + q * NT * VG;
            if (e < n) tg_load_cg(src + e, v[q]);
        }
#pragma unroll
        for (int q = 0; q < STAGE_UNROLL; ++q) {
            const int e = e0 + q * NT * VG;
            if (e < n) tg_store<T, VG>(dst + e, v[q]);
        }
    }
    __syncthreads();
}

// acc[r] = <rows[r, k0:k0+KS], wr[0:KS]> for the block's rows r < nrows (row stride ld)
template <int KS>
__device__ __forceinline__ void tg_partials(const T* rows, int ld, int k0, int nrows, const T (&wr)[KS],
                                            T (&acc)[R]) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
        T a = T(0);
        if (r < nrows) {
            const T* x = rows + r * ld + k0;
#pragma unroll
            for (int k = 0; k < KS; k += VEC) {
                T xv[VEC];
                tg_load<T, VEC>(x + k, xv);
#pragma unroll
                for (int q = 0; q < VEC; ++q) a += xv[q] * wr[k + q];
            }
        }
        acc[r] = a;
    }
}

// n_steps forward steps; step s reads h_prev + s * hstep, writes h + s * hstep (c likewise, LSTM only);
// its pre-activations are z + s * zstep [B, NG H]: the LSTM writes its gates over them, the RNN only
// reads them.
extern "C" __global__ void __launch_bounds__(NT) tapegrad_tiled_fwd_$SFX(
        const T* h_prev, const T* __restrict__ w, T* z, const T* c_prev, T* c, T* h,
        int B, int relu, int n_steps, long long hstep, long long zstep, unsigned int* count) {
    extern __shared__ __align__(16) unsigned char tg_smem[];
    T* xs = reinterpret_cast<T*>(tg_smem);  // [R, H]: the step's rows of h_{t-1}
    T* part = xs + R * H;                   // [NT / (NG U), R, NG U]: partial dot products
    const int t = threadIdx.x;
    const int j0 = (blockIdx.x % NUT) * U, b0 = (blockIdx.x / NUT) * R;
    const int nrows = min(R, B - b0);
    const int col = t % (NG * U), seg = t / (NG * U);
    T wr[KSF];
    {
        const T* wrow = w + ((long long)(col / U) * H + j0 + col % U) * H + seg * KSF;
#pragma unroll
        for (int k = 0; k < KSF; ++k) wr[k] = wrow[k];
    }
    // the cell: thread t < R U owns (row b0 + t / U, unit j0 + t % U)
    const int cr = t / U, cu = t % U;
    const bool cell = t < R * U && cr < nrows;
    const long long e = (long long)(b0 + cr) * H + j0 + cu;      // in [B, H]
    const long long ez = (long long)(b0 + cr) * (NG * H) + j0 + cu;  // in [B, NG H]
#if NG == 4
    T cst = T(0);
    if (cell) cst = c_prev[e];
#endif
    for (int s = 0; s < n_steps; ++s) {
        T* zs = z + s * zstep;
        T zr[NG];
        if (cell) {
#pragma unroll
            for (int g = 0; g < NG; ++g) zr[g] = zs[ez + g * H];
        }
        tg_stage(h_prev + s * hstep + (long long)b0 * H, nrows * H, xs);
        T acc[R];
        tg_partials<KSF>(xs, H, seg * KSF, nrows, wr, acc);
#pragma unroll
        for (int r = 0; r < R; ++r) part[(seg * R + r) * (NG * U) + col] = acc[r];
        __syncthreads();
        if (cell) {
            T pre[NG];
#pragma unroll
            for (int g = 0; g < NG; ++g) {
                T v = zr[g];
                for (int q = 0; q < NT / (NG * U); ++q) v += part[(q * R + cr) * (NG * U) + g * U + cu];
                pre[g] = v;
            }
            T* hs = h + s * hstep;
#if NG == 4
            const T i = tg_sigmoid(pre[0]), f = tg_sigmoid(pre[1]), gg = tanh(pre[2]), o = tg_sigmoid(pre[3]);
            cst = f * cst + i * gg;
            zs[ez] = i;
            zs[ez + H] = f;
            zs[ez + 2 * H] = gg;
            zs[ez + 3 * H] = o;
            c[s * hstep + e] = cst;
            hs[e] = o * tanh(cst);
#else
            hs[e] = relu ? (pre[0] < T(0) ? T(0) : pre[0]) : tanh(pre[0]);
#endif
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}

// n_steps backward steps, last to first. Step s's dL/dh_t is dz_next W_hh (s = 0, when has_next), the
// previous step's grad_z W_hh, or grad_h; plus grad_out + s * hstep when has_out. LSTM: gates, c_prev,
// c advance with the steps and grad_c [B, H] ends as dL/dc of the initial state; RNN: `gates` is the
// output h_t (from which act'), c_prev / c / grad_c are not read.
extern "C" __global__ void __launch_bounds__(NT) tapegrad_tiled_bwd_$SFX(
        const T* dz_next, const T* __restrict__ w_t, const T* grad_h, const T* grad_out,
        const T* gates, const T* c_prev, const T* c, T* grad_c, T* grad_z,
        int B, int has_next, int has_out, int relu, int n_steps, long long hstep, long long zstep,
        unsigned int* count) {
    extern __shared__ __align__(16) unsigned char tg_smem[];
    T* xs = reinterpret_cast<T*>(tg_smem);  // [R, NG H]: the step's rows of dz_{t+1}
    T* part = xs + R * NG * H;              // [NT / U, R, U]
    const int t = threadIdx.x;
    const int j0 = (blockIdx.x % NUT) * U, b0 = (blockIdx.x / NUT) * R;
    const int nrows = min(R, B - b0);
    const int u = t % U, seg = t / U;
    T wr[KSB];
    {
        const T* wrow = w_t + (long long)(j0 + u) * (NG * H) + seg * KSB;
#pragma unroll
        for (int k = 0; k < KSB; ++k) wr[k] = wrow[k];
    }
    const int cr = t / U, cu = t % U;
    const bool cell = t < R * U && cr < nrows;
    const long long e = (long long)(b0 + cr) * H + j0 + cu;
    const long long ez = (long long)(b0 + cr) * (NG * H) + j0 + cu;
#if NG == 4
    T dc = T(0);
    if (cell) dc = grad_c[e];
#endif
    for (int s = 0; s < n_steps; ++s) {
        const bool next = s > 0 || has_next;
        // the step's elementwise operands, loaded ahead of the product
        T gh = T(0), gv[NG];
#if NG == 4
        T cp = T(0), cv = T(0);
#endif
        if (cell) {
            if (!next) gh = grad_h[e];
            if (has_out) gh += grad_out[s * hstep + e];
#if NG == 4
#pragma unroll
            for (int g = 0; g < NG; ++g) gv[g] = gates[s * zstep + ez + g * H];
            cp = c_prev[s * hstep + e];
            cv = c[s * hstep + e];
#else
            gv[0] = gates[s * hstep + e];
#endif
        }
        if (next) {  // uniform across the grid
            const T* dzn = s > 0 ? grad_z + (s - 1) * zstep : dz_next;
            tg_stage(dzn + (long long)b0 * (NG * H), nrows * NG * H, xs);
            T acc[R];
            tg_partials<KSB>(xs, NG * H, seg * KSB, nrows, wr, acc);
#pragma unroll
            for (int r = 0; r < R; ++r) part[(seg * R + r) * U + u] = acc[r];
            __syncthreads();
            if (cell) {
                for (int q = 0; q < NT / U; ++q) gh += part[(q * R + cr) * U + cu];
            }
        }
        if (cell) {
            T* gz = grad_z + s * zstep;
#if NG == 4
            const T i = gv[0], f = gv[1], g = gv[2], o = gv[3];
            const T tc = tanh(cv);
            dc += gh * o * (T(1) - tc * tc);
            gz[ez] = dc * g * i * (T(1) - i);
            gz[ez + H] = dc * cp * f * (T(1) - f);
            gz[ez + 2 * H] = dc * i * (T(1) - g * g);
            gz[ez + 3 * H] = gh * tc * o * (T(1) - o);
            dc *= f;
#else
            const T hv = gv[0];
            gz[ez] = relu ? (hv > T(0) ? gh : T(0) * gh) : gh * (T(1) - hv * hv);
#endif
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
#if NG == 4
    if (cell) grad_c[e] = dc;
#endif
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}
"""


@functools.cache
def _sm_count(dev: int) -> int:
    return int(cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"])


def fits(ng: int, B: int, H: int, dtype) -> bool:
    """Whether the tiled loops run this shape (they are on, and a tiling fits this device)."""
    return ENABLED and B > 0 and H > 0 and _plan_here(ng, B, H, dtype) is not None


def _plan_here(ng, B, H, dtype):
    if np.dtype(dtype) not in MAX_KS:
        return None
    return plan(ng, B, H, np.dtype(dtype), _sm_count(cupy.cuda.runtime.getDevice()))


@functools.cache
def _source(ng, H, U, R, nt, ksf, ksb, dtype, vec, vg):
    sfx = f"{cc.suffix(dtype)}_g{ng}_h{H}_u{U}_r{R}_t{nt}_v{vec}_{vg}"
    return cc.render(_TILED, T=cc.ctype(dtype), NG=ng, H=H, U=U, R=R, NT=nt, KSF=ksf, KSB=ksb, VEC=vec, VG=vg,
                     SFX=sfx, HELPERS=PERSISTENT_HELPERS), sfx


def _widest(dtype, *counts):
    """The widest vector (16, else 8 bytes) whose element count divides every count, else 1."""
    itemsize = np.dtype(dtype).itemsize
    for width in (16 // itemsize, 8 // itemsize):
        if width > 1 and all(n % width == 0 for n in counts):
            return width
    return 1


def launch(direction: str, ng: int, B: int, H: int, dtype, args) -> None:
    """Launch the tiled ``direction`` ('fwd' or 'bwd') loop; the caller checked :func:`fits`."""
    dtype = np.dtype(dtype)
    U, R, nt, ksf, ksb, smem = _plan_here(ng, B, H, dtype)
    # shared-memory loads: every segment and row start aligned; global loads of the staged rows: every
    # row start (a multiple of H from an array's base) and every base pointer aligned
    vec = _widest(dtype, ksf, ksb, H)
    ptrs = [a.data.ptr // dtype.itemsize for a in args if isinstance(a, cupy.ndarray)]
    source, sfx = _source(ng, H, U, R, nt, ksf, ksb, dtype, vec, _widest(dtype, H, *ptrs))
    blocks = (H // U) * -(-B // R)
    cc.kernel(source, f"tapegrad_tiled_{direction}_{sfx}")((blocks,), (nt,), args, shared_mem=smem)
