"""CuPy (CUDA C) kernels for a whole recurrent step: the recurrent GEMM and the cell in one launch.

Same signatures and semantics as the ``*_step_*`` functions of :mod:`tapegrad.kernels.reference`.

Why: in a step loop replayed as a CUDA graph, every node costs the GPU a few microseconds whatever its
work, and at a small batch a step's work is tiny (B = 8, H = 256: 2 MFLOP). A step made of a GEMM node
and a cell node, or three nodes backward (add, cell, GEMM), is bound by node count. Here each step is
one node.

Layout: one warp per hidden unit j, ``WARPS`` warps per block, so the grid has ceil(H / WARPS) blocks.

* LSTM forward: lane (g, r) = (lane / 8, lane % 8) computes the pre-activation of gate g for batch row
  b0 + r: z[b, gH + j] + <h_prev[b], W_hh[gH + j]>, a dot product over H read along both rows
  (vector loads when H and the pointers allow). The four gates of a row meet in shared memory, and
  lane (0, r) applies the cell. Rows are taken 8 at a time.
* LSTM backward: lane (q, r) computes the q-th quarter of dL/dh_t[b, j] = <dz_{t+1}[b], W_hh[:, j]>,
  i.e. <dz_{t+1}[b, qH:(q+1)H], W_hh^T[j, qH:(q+1)H]> (W_hh^T is passed, so that both rows are
  contiguous); lane (0, r) sums the quarters, adds the output's gradient and applies the cell backward.
* RNN: lane r computes row b0 + r (32 rows at a time) whole.

No reduction crosses warps, so no block-level synchronisation is needed; outputs of a step never
overlap the inputs other warps read (h_prev vs h, dz_{t+1} vs dz_t).
"""
from __future__ import annotations

import functools
import os

import cupy
import numpy as np

from .. import sequence as seq
from . import _compile as cc
from ._persistent import PERSISTENT_HELPERS
from . import recurrent_tiled as tiled

WARPS = 4  # warps (hidden units) per block

_STEP = r"""
typedef $T T;
#define VEC $VEC
#define TG_WARPS $WARPS
#define TG_STAGE $STAGE

$HELPERS
#if TG_STAGE
// The rows a pass of the block reads (n elements of the state or gradient the previous step wrote), copied
// once into shared memory through L2, instead of every warp fetching them from L2 in its dot products:
// an L2 round trip per load was the latency each step paid. Every thread of the block calls it.
__device__ __forceinline__ const T* tg_stage(const T* src, long long n, T* buf) {
    __syncthreads();  // the block's previous readers of buf are done
    for (long long e = (long long)threadIdx.x * VEC; e < n; e += (long long)blockDim.x * VEC) {
        T v[VEC];
        tg_load_cg(src + e, v);
        tg_store<T, VEC>(buf + e, v);
    }
    __syncthreads();
    return buf;
}
#else
__device__ __forceinline__ const T* tg_stage(const T* src, long long, T*) { return src; }
#endif

// <x[0:K], w[0:K]>, VEC elements per load (K % VEC == 0, both pointers aligned to VEC elements); x comes
// from shared memory when staged, else through L2 (other blocks write it in a persistent loop); w comes
// through the read-only path.
__device__ __forceinline__ T tg_dot(const T* x, const T* __restrict__ w, int K) {
    T acc[VEC];
#pragma unroll
    for (int q = 0; q < VEC; ++q) acc[q] = T(0);
#pragma unroll 4
    for (int k = 0; k < K; k += VEC) {
        T xv[VEC], wv[VEC];
#if TG_STAGE
        tg_load<T, VEC>(x + k, xv);
#else
        tg_load_cg(x + k, xv);
#endif
        tg_load<T, VEC>(w + k, wv);
#pragma unroll
        for (int q = 0; q < VEC; ++q) acc[q] += xv[q] * wv[q];
    }
    T s = T(0);
#pragma unroll
    for (int q = 0; q < VEC; ++q) s += acc[q];
    return s;
}

// n_steps LSTM steps; step s reads h_prev + s * hstep and writes h + s * hstep (c likewise), its
// pre-activations at z + s * zstep (so hstep = -B*H walks a reverse sequence).
extern "C" __global__ void tapegrad_lstm_seq_fwd_$SFX(
        const T* h_prev, const T* __restrict__ w, T* z, const T* c_prev, T* c, T* h,
        int B, int H, int n_steps, long long hstep, long long zstep, unsigned int* count) {
    __shared__ T pre[TG_WARPS][32];
    extern __shared__ __align__(16) unsigned char tg_smem[];  // [8, H] when staged
    T* xs = reinterpret_cast<T*>(tg_smem);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int j = blockIdx.x * TG_WARPS + wid;
    const int g = lane >> 3, r = lane & 7;
    const long long G = 4LL * H;
    const T* wrow = w + ((long long)g * H + j) * H;
    for (int s = 0; s < n_steps; ++s) {
        const T* hp = h_prev + s * hstep;
        const T* cp = c_prev + s * hstep;
        T* zs = z + s * zstep;
        T* cs = c + s * hstep;
        T* hs = h + s * hstep;
        for (int b0 = 0; b0 < B; b0 += 8) {  // the same passes in every thread: tg_stage syncs the block
            const T* xb = tg_stage(hp + (long long)b0 * H, (long long)min(8, B - b0) * H, xs);
            if (j < H) {  // j is uniform across a warp; the warp still joins the grid barrier
                const int b = b0 + r;
                T v = T(0);
                if (b < B) v = zs[b * G + (long long)g * H + j] + tg_dot(xb + (long long)r * H, wrow, H);
                pre[wid][lane] = v;
                __syncwarp();
                if (g == 0 && b < B) {
                    const T i = tg_sigmoid(pre[wid][r]), f = tg_sigmoid(pre[wid][8 + r]);
                    const T gg = tanh(pre[wid][16 + r]), o = tg_sigmoid(pre[wid][24 + r]);
                    const long long e = (long long)b * H + j;
                    const T cn = f * __ldcg(cp + e) + i * gg;
                    T* zb = zs + b * G + j;
                    zb[0] = i;
                    zb[H] = f;
                    zb[2 * H] = gg;
                    zb[3 * H] = o;
                    cs[e] = cn;
                    hs[e] = o * tanh(cn);
                }
                __syncwarp();  // pre[] is rewritten by the next rows
            }
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}

// n_steps LSTM backward steps, last to first. Step s reads dz_next (s = 0, when has_next) or the
// previous step's grad_z, else grad_h; grad_out, gates, c_prev, c and grad_z advance by hstep / zstep
// per step; grad_c [B, H] is carried in place.
extern "C" __global__ void tapegrad_lstm_seq_bwd_$SFX(
        const T* dz_next, const T* __restrict__ w_t, const T* grad_h, const T* grad_out,
        const T* gates, const T* c_prev, const T* c, T* grad_c, T* grad_z,
        int B, int H, int has_next, int has_out, int n_steps, long long hstep, long long zstep,
        unsigned int* count) {
    __shared__ T part[TG_WARPS][32];
    extern __shared__ __align__(16) unsigned char tg_smem[];  // [8, 4H] when staged
    T* xs = reinterpret_cast<T*>(tg_smem);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    const int j = blockIdx.x * TG_WARPS + wid;
    const int q = lane >> 3, r = lane & 7;
    const long long G = 4LL * H;
    const T* wrow = w_t + j * G + (long long)q * H;
    for (int s = 0; s < n_steps; ++s) {
        const bool next = s > 0 || has_next;
        const T* dzn = s > 0 ? grad_z + (s - 1) * zstep : dz_next;
        const T* go = grad_out + s * hstep;
        const T* gt = gates + s * zstep;
        const T* cp = c_prev + s * hstep;
        const T* cv = c + s * hstep;
        T* gz = grad_z + s * zstep;
        for (int b0 = 0; b0 < B; b0 += 8) {
            const T* xb = tg_stage(dzn + b0 * G, min(8, B - b0) * G, xs);
            if (j < H) {
                const int b = b0 + r;
                T v = T(0);
                if (next && b < B) v = tg_dot(xb + r * G + (long long)q * H, wrow, H);
                part[wid][lane] = v;
                __syncwarp();
                if (q == 0 && b < B) {
                    const long long e = (long long)b * H + j;
                    T gh = next ? (part[wid][r] + part[wid][8 + r]) + (part[wid][16 + r] + part[wid][24 + r])
                                : grad_h[e];
                    if (has_out) gh += go[e];
                    const T* gb = gt + b * G + j;
                    const T i = gb[0], f = gb[H], g = gb[2 * H], o = gb[3 * H];
                    const T tc = tanh(cv[e]);
                    const T dc = grad_c[e] + gh * o * (T(1) - tc * tc);
                    T* zb = gz + b * G + j;
                    zb[0] = dc * g * i * (T(1) - i);
                    zb[H] = dc * cp[e] * f * (T(1) - f);
                    zb[2 * H] = dc * i * (T(1) - g * g);
                    zb[3 * H] = gh * tc * o * (T(1) - o);
                    grad_c[e] = dc * f;
                }
                __syncwarp();
            }
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}

extern "C" __global__ void tapegrad_rnn_seq_fwd_$SFX(
        const T* h_prev, const T* __restrict__ w, const T* p, T* h, int B, int H, int relu,
        int n_steps, long long hstep, unsigned int* count) {
    extern __shared__ __align__(16) unsigned char tg_smem[];  // [32, H] when staged
    T* xs = reinterpret_cast<T*>(tg_smem);
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * TG_WARPS + (threadIdx.x >> 5);
    const T* wrow = w + (long long)j * H;
    for (int s = 0; s < n_steps; ++s) {
        const T* hp = h_prev + s * hstep;
        const T* ps = p + s * hstep;
        T* hs = h + s * hstep;
        for (int b0 = 0; b0 < B; b0 += 32) {
            const T* xb = tg_stage(hp + (long long)b0 * H, (long long)min(32, B - b0) * H, xs);
            const int b = b0 + lane;
            if (j < H && b < B) {
                const long long e = (long long)b * H + j;
                const T v = ps[e] + tg_dot(xb + (long long)lane * H, wrow, H);
                hs[e] = relu ? (v < T(0) ? T(0) : v) : tanh(v);
            }
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}

extern "C" __global__ void tapegrad_rnn_seq_bwd_$SFX(
        const T* dz_next, const T* __restrict__ w_t, const T* grad_h, const T* grad_out,
        const T* h, T* grad_z, int B, int H, int has_next, int has_out, int relu,
        int n_steps, long long hstep, unsigned int* count) {
    extern __shared__ __align__(16) unsigned char tg_smem[];  // [32, H] when staged
    T* xs = reinterpret_cast<T*>(tg_smem);
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * TG_WARPS + (threadIdx.x >> 5);
    const T* wrow = w_t + (long long)j * H;
    for (int s = 0; s < n_steps; ++s) {
        const bool next = s > 0 || has_next;
        const T* dzn = s > 0 ? grad_z + (s - 1) * hstep : dz_next;
        const T* go = grad_out + s * hstep;
        const T* hv_s = h + s * hstep;
        T* gz = grad_z + s * hstep;
        for (int b0 = 0; b0 < B; b0 += 32) {
            const T* xb = tg_stage(dzn + (long long)b0 * H, (long long)min(32, B - b0) * H, xs);
            const int b = b0 + lane;
            if (j < H && b < B) {
                const long long e = (long long)b * H + j;
                T gh = next ? tg_dot(xb + (long long)lane * H, wrow, H) : grad_h[e];
                if (has_out) gh += go[e];
                const T hv = hv_s[e];
                gz[e] = relu ? (hv > T(0) ? gh : T(0) * gh) : gh * (T(1) - hv * hv);
            }
        }
        if (s + 1 < n_steps) tg_grid_sync(count, (unsigned int)(s + 1) * gridDim.x);
    }
    if (n_steps > 1) tg_grid_leave(count, (unsigned int)n_steps * gridDim.x);
}
"""


@functools.cache
def _source(dtype, vec, warps, stage):
    sfx = f"{cc.suffix(dtype)}_v{vec}_w{warps}_s{int(stage)}"
    return cc.render(_STEP, T=cc.ctype(dtype), VEC=vec, WARPS=warps, STAGE=int(stage), SFX=sfx,
                     HELPERS=PERSISTENT_HELPERS), sfx


# Stage each pass's rows of the state (or gradient) in shared memory; off, or past this many bytes (the
# default dynamic shared memory a block may have without opting in), warps read them through L2. The
# LSTM backward never stages: its pass is 8 rows of 4H, and on an H100 (B = 8 and 64, H = 256) its loop
# ran 13% and 10% slower staged (589 against 511 us, 4176 against 3786 us), while the forward loops ran
# 5-25% faster.
STAGE = os.environ.get("TAPEGRAD_STAGE_ROWS", "1") != "0"
STAGE_MAX_BYTES = 48 * 1024


_counters: dict = {}


def _counter():
    """The grid barrier's arrival counter on the current device (zero between launches: the kernel resets
    it). One per device, so two persistent loops must not run at once on one device (a process runs its
    recurrent loops one after the other on its stream)."""
    dev = cupy.cuda.runtime.getDevice()
    c = _counters.get(dev)
    if c is None:
        c = _counters[dev] = cupy.zeros(1, np.uint32)
    return c


@functools.cache
def _sm_count(dev: int) -> int:
    return int(cupy.cuda.runtime.getDeviceProperties(dev)["multiProcessorCount"])


def _warps_for_one_wave(H: int):
    """Warps per block such that one block per SM covers H units (every block resident, as the grid barrier
    needs), or None when even 32-warp blocks would not."""
    sms = _sm_count(cupy.cuda.runtime.getDevice())
    warps = max(int(WARPS), -(-H // sms))
    return warps if warps <= 32 else None


def _launch(name, dtype, H, vectorised, args, warps=None, staged=0):
    """Launch ``name`` with one warp per hidden unit; ``vectorised`` are the arrays read by vector loads,
    ``staged`` the elements of one pass's rows that the block may copy to shared memory."""
    dtype = np.dtype(dtype)
    vec = cc.vec_width(dtype, H, *vectorised)
    warps = int(WARPS) if warps is None else warps
    smem = staged * dtype.itemsize
    stage = bool(STAGE) and 0 < smem <= STAGE_MAX_BYTES
    source, sfx = _source(dtype, vec, warps, stage)
    cc.kernel(source, f"tapegrad_{name}_{sfx}")((-(-H // warps),), (32 * warps,), args,
                                                  shared_mem=smem if stage else 0)


def _arrays(names_arrays, dtype, shapes):
    """Check that every array is a C-contiguous cupy array of ``dtype`` and its expected shape."""
    for (name, a), shape in zip(names_arrays, shapes):
        if type(a) is not cupy.ndarray or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous cupy array")
        if a.dtype != dtype or a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape} and dtype {a.dtype}, expected {shape} and {dtype}")


_ONE, _NO_STRIDE = np.int32(1), np.int64(0)  # a single step


def lstm_step_fwd(h_prev, w_hh, z, c_prev, c, h):
    """z += h_prev W_hh^T, then the LSTM cell with the gates written over z. h_prev [B, H], w_hh [4H, H],
    z [B, 4H], c_prev, c, h [B, H]. Returns (z, c, h)."""
    B, H = h_prev.shape
    dtype = z.dtype
    _arrays((("h_prev", h_prev), ("w_hh", w_hh), ("z", z), ("c_prev", c_prev), ("c", c), ("h", h)), dtype,
            ((B, H), (4 * H, H), (B, 4 * H), (B, H), (B, H), (B, H)))
    if B and H:
        _launch("lstm_seq_fwd", dtype, H, (h_prev, w_hh),
                (h_prev, w_hh, z, c_prev, c, h, np.int32(B), np.int32(H), _ONE, _NO_STRIDE, _NO_STRIDE, h),
                staged=8 * H)
    return z, c, h


def _bwd_checks(has_next, has_out, H, G, B, dz_next, grad_h, grad_out):
    checks = [("dz_next", dz_next, (B, G)) if has_next else ("grad_h", grad_h, (B, H))]
    if has_out:
        checks.append(("grad_out", grad_out, (B, H)))
    return checks


def lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c, grad_c, grad_z):
    """dL/dh_t = dz_next @ w_t.T (or grad_h when dz_next is None) (+ grad_out when given); then the LSTM
    cell's backward into grad_z [B, 4H], with grad_c [B, H] replaced by dL/dc_{t-1}. w_t = W_hh^T [H, 4H].
    Returns (grad_z, grad_c)."""
    B, H = grad_c.shape
    dtype = grad_z.dtype
    has_next, has_out = dz_next is not None, grad_out is not None
    checks = [("w_t", w_t, (H, 4 * H)), ("gates", gates, (B, 4 * H)), ("c_prev", c_prev, (B, H)),
              ("c", c, (B, H)), ("grad_c", grad_c, (B, H)), ("grad_z", grad_z, (B, 4 * H))]
    checks += _bwd_checks(has_next, has_out, H, 4 * H, B, dz_next, grad_h, grad_out)
    _arrays([(n, a) for n, a, _ in checks], dtype, [s for _, _, s in checks])
    if B and H:
        first = dz_next if has_next else grad_z  # a placeholder pointer the kernel does not read
        _launch("lstm_seq_bwd", dtype, H, (first, w_t),
                (first, w_t, grad_z if has_next else grad_h, grad_out if has_out else grad_z, gates, c_prev,
                 c, grad_c, grad_z, np.int32(B), np.int32(H), np.int32(has_next), np.int32(has_out), _ONE, _NO_STRIDE,
                 _NO_STRIDE, grad_c))  # not staged: see STAGE
    return grad_z, grad_c


def rnn_step_fwd(h_prev, w_hh, p, h, relu=False):
    """h = act(p + h_prev W_hh^T); h_prev, p, h [B, H], w_hh [H, H]; p is not written. Returns h."""
    B, H = h_prev.shape
    dtype = h.dtype
    _arrays((("h_prev", h_prev), ("w_hh", w_hh), ("p", p), ("h", h)), dtype, ((B, H), (H, H), (B, H), (B, H)))
    if B and H:
        _launch("rnn_seq_fwd", dtype, H, (h_prev, w_hh),
                (h_prev, w_hh, p, h, np.int32(B), np.int32(H), np.int32(bool(relu)), _ONE, _NO_STRIDE, h), staged=32 * H)
    return h


def rnn_step_bwd(dz_next, w_t, grad_h, grad_out, h, grad_z, relu=False):
    """grad_z = (dz_next @ w_t.T, or grad_h, + grad_out) * act'(z) from the output h; w_t = W_hh^T [H, H].
    Returns grad_z [B, H]."""
    B, H = h.shape
    dtype = grad_z.dtype
    has_next, has_out = dz_next is not None, grad_out is not None
    checks = [("w_t", w_t, (H, H)), ("h", h, (B, H)), ("grad_z", grad_z, (B, H))]
    checks += _bwd_checks(has_next, has_out, H, H, B, dz_next, grad_h, grad_out)
    _arrays([(n, a) for n, a, _ in checks], dtype, [s for _, _, s in checks])
    if B and H:
        first = dz_next if has_next else grad_z
        _launch("rnn_seq_bwd", dtype, H, (first, w_t),
                (first, w_t, grad_z if has_next else grad_h, grad_out if has_out else grad_z, h, grad_z,
                 np.int32(B), np.int32(H), np.int32(has_next), np.int32(has_out), np.int32(bool(relu)), _ONE, _NO_STRIDE,
                 grad_z), staged=32 * H)
    return grad_z


# ---- whole loops ----------------------------------------------------------------------------------------------
# One persistent launch when a wave of blocks covers H (``PERSISTENT``), the steps separated by a grid
# barrier; otherwise one launch per step (kernels/sequence.py).

PERSISTENT = os.environ.get("TAPEGRAD_PERSISTENT_LOOPS", "1") != "0"


def _persistent_warps(H):
    return _warps_for_one_wave(H) if PERSISTENT else None


def tiled_loops(ng: int, B: int, H: int, dtype) -> bool:
    """Whether a loop with ``ng`` gates (4: LSTM, 1: Elman) over B rows of H units runs as the tiled
    persistent kernel (kernels/cupy/recurrent_tiled.py) rather than the warp-per-unit one."""
    return PERSISTENT and tiled.fits(ng, B, H, dtype)



def _ends(T, reverse, rows_per_step):
    """(index of the first step's row, stride between steps in elements)."""
    return (T - 1, -rows_per_step) if reverse else (0, rows_per_step)


def lstm_seq_fwd(hs, w_hh, gates, cs, reverse=False):
    """Every LSTM step over the engine's buffers (kernels/sequence.py): hs, cs [T + 1, B, H], gates
    [T, B, 4H], written in place."""
    T, B, G = gates.shape
    H = G // 4
    dtype = gates.dtype
    _arrays((("hs", hs), ("w_hh", w_hh), ("gates", gates), ("cs", cs)), dtype,
            ((T + 1, B, H), (4 * H, H), (T, B, 4 * H), (T + 1, B, H)))
    if T and tiled_loops(4, B, H, dtype):
        a = 0 if reverse else 1
        t0, hstep = _ends(T, reverse, B * H)
        tiled.launch("fwd", 4, B, H, dtype,
                     (hs[t0 + 1 - a], w_hh, gates[t0], cs[t0 + 1 - a], cs[t0 + a], hs[t0 + a], np.int32(B),
                      np.int32(0), np.int32(T), np.int64(hstep), np.int64(4 * hstep), _counter()))
        return
    warps = _persistent_warps(H)
    if warps is None or T < 2:
        return seq.lstm_seq_fwd(lstm_step_fwd, hs, w_hh, gates, cs, reverse)
    if B and H:
        a = 0 if reverse else 1
        t0, hstep = _ends(T, reverse, B * H)
        zstep = 4 * hstep  # a step's gates are 4H wide
        _launch("lstm_seq_fwd", dtype, H, (hs, w_hh),
                (hs[t0 + 1 - a], w_hh, gates[t0], cs[t0 + 1 - a], cs[t0 + a], hs[t0 + a], np.int32(B), np.int32(H),
                 np.int32(T), np.int64(hstep), np.int64(zstep), _counter()), warps, staged=8 * H)


def lstm_seq_bwd(dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse=False):
    """Every LSTM backward step, last to first (kernels/sequence.py): dz [T, B, 4H] written, grad_c [B, H]
    carried in place; grad_out [T, B, H] or None."""
    T, B, G = dz.shape
    H = G // 4
    dtype = dz.dtype
    checks = [("dz", dz, (T, B, G)), ("w_t", w_t, (H, G)), ("grad_h", grad_h, (B, H)), ("gates", gates, (T, B, G)),
              ("cs", cs, (T + 1, B, H)), ("grad_c", grad_c, (B, H))]
    if grad_out is not None:
        checks.append(("grad_out", grad_out, (T, B, H)))
    _arrays([(n, a) for n, a, _ in checks], dtype, [s for _, _, s in checks])
    if T and tiled_loops(4, B, H, dtype):
        a = 0 if reverse else 1
        t0, hstep = _ends(T, not reverse, B * H)
        go = grad_out[t0] if grad_out is not None else dz[t0]
        tiled.launch("bwd", 4, B, H, dtype,
                     (dz[t0], w_t, grad_h, go, gates[t0], cs[t0 + 1 - a], cs[t0 + a], grad_c, dz[t0], np.int32(B),
                      np.int32(0), np.int32(grad_out is not None), np.int32(0), np.int32(T), np.int64(hstep),
                      np.int64(4 * hstep), _counter()))
        return
    warps = _persistent_warps(H)
    if warps is None or T < 2:
        return seq.lstm_seq_bwd(lstm_step_bwd, dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse)
    if B and H:
        a = 0 if reverse else 1
        t0, hstep = _ends(T, not reverse, B * H)  # the backward starts at the forward's last step
        zstep = 4 * hstep
        go = grad_out[t0] if grad_out is not None else dz[t0]
        _launch("lstm_seq_bwd", dtype, H, (dz, w_t),
                (dz[t0], w_t, grad_h, go, gates[t0], cs[t0 + 1 - a], cs[t0 + a], grad_c, dz[t0], np.int32(B),
                 np.int32(H), np.int32(0), np.int32(grad_out is not None), np.int32(T), np.int64(hstep),
                 np.int64(zstep), _counter()), warps)  # not staged: see STAGE


def rnn_seq_fwd(hs, w_hh, p, reverse=False, relu=False):
    """Every Elman step over the engine's buffers (kernels/sequence.py): hs [T + 1, B, H] written but for
    the initial row, p [T, B, H] read."""
    T, B, H = p.shape
    dtype = p.dtype
    _arrays((("hs", hs), ("w_hh", w_hh), ("p", p)), dtype, ((T + 1, B, H), (H, H), (T, B, H)))
    if T and tiled_loops(1, B, H, dtype):
        a = 0 if reverse else 1
        t0, hstep = _ends(T, reverse, B * H)
        tiled.launch("fwd", 1, B, H, dtype,
                     (hs[t0 + 1 - a], w_hh, p[t0], p[t0], hs[t0 + a], hs[t0 + a], np.int32(B),
                      np.int32(bool(relu)), np.int32(T), np.int64(hstep), np.int64(hstep), _counter()))
        return  # (the RNN reads no cell state: c_prev and c are placeholders)
    warps = _persistent_warps(H)
    if warps is None or T < 2:
        return seq.rnn_seq_fwd(rnn_step_fwd, hs, w_hh, p, reverse, relu)
    if B and H:
        a = 0 if reverse else 1
        t0, hstep = _ends(T, reverse, B * H)
        _launch("rnn_seq_fwd", dtype, H, (hs, w_hh),
                (hs[t0 + 1 - a], w_hh, p[t0], hs[t0 + a], np.int32(B), np.int32(H), np.int32(bool(relu)),
                 np.int32(T), np.int64(hstep), _counter()), warps, staged=32 * H)


def rnn_seq_bwd(dz, w_t, grad_h, grad_out, hs, reverse=False, relu=False):
    """Every Elman backward step, last to first (kernels/sequence.py): dz [T, B, H] written."""
    T, B, H = dz.shape
    dtype = dz.dtype
    checks = [("dz", dz, (T, B, H)), ("w_t", w_t, (H, H)), ("grad_h", grad_h, (B, H)), ("hs", hs, (T + 1, B, H))]
    if grad_out is not None:
        checks.append(("grad_out", grad_out, (T, B, H)))
    _arrays([(n, a) for n, a, _ in checks], dtype, [s for _, _, s in checks])
    if T and tiled_loops(1, B, H, dtype):
        a = 0 if reverse else 1
        t0, hstep = _ends(T, not reverse, B * H)
        go = grad_out[t0] if grad_out is not None else dz[t0]
        tiled.launch("bwd", 1, B, H, dtype,
                     (dz[t0], w_t, grad_h, go, hs[t0 + a], dz[t0], dz[t0], dz[t0], dz[t0], np.int32(B), np.int32(0),
                      np.int32(grad_out is not None), np.int32(bool(relu)), np.int32(T), np.int64(hstep),
                      np.int64(hstep), _counter()))
        return  # (h_t takes the gates' place; c_prev, c and grad_c are placeholders the RNN does not read)
    warps = _persistent_warps(H)
    if warps is None or T < 2:
        return seq.rnn_seq_bwd(rnn_step_bwd, dz, w_t, grad_h, grad_out, hs, reverse, relu)
    if B and H:
        a = 0 if reverse else 1
        t0, hstep = _ends(T, not reverse, B * H)
        go = grad_out[t0] if grad_out is not None else dz[t0]
        _launch("rnn_seq_bwd", dtype, H, (dz, w_t),
                (dz[t0], w_t, grad_h, go, hs[t0 + a], dz[t0], np.int32(B), np.int32(H), np.int32(0),
                 np.int32(grad_out is not None), np.int32(bool(relu)), np.int32(T), np.int64(hstep), _counter()),
                warps, staged=32 * H)
