"""CuPy (CUDA C RawModule) kernels for one step of an LSTM / Elman RNN, after the GEMMs.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`; arrays are cupy arrays and results
are cupy arrays. Elementwise over the [B, H] state in a grid-stride loop; each thread owns ``VEC``
neighbouring units (one float4 / double2 load per gate when H allows it) and reads all its inputs
before it writes, so outputs may alias inputs element for element (``gates`` over ``z``,
``grad_c_prev`` over ``grad_c``, ``h`` over ``z``), as the engine's recurrent ops use them.
"""
from __future__ import annotations

import functools

import cupy
import numpy as np

from . import _compile as cc

BLOCK = 256          # threads per block
MAX_BLOCKS = 4096    # grid size cap; grid-stride loops cover the rest

_RECURRENT = r"""
typedef $T T;
#define VEC $VEC

__device__ __forceinline__ T tg_sigmoid(T v) { return T(1) / (T(1) + exp(-v)); }

// Thread t owns units [t * VEC, t * VEC + VEC) of the flattened [B, H] state (H % VEC == 0, so they
// share one row b). No __restrict__: outputs may alias inputs (gates over z, grad_c_prev over grad_c,
// h over z), which is safe because each thread reads all its elements before writing them.
extern "C" __global__ void tapegrad_lstm_cell_fwd_$SFX(
        const T* z, const T* c_prev, T* gates, T* c,
        T* h, long long n, long long H) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t * VEC < n; t += stride) {
        const long long e = t * VEC, b = e / H, j = e - b * H;
        const T* zb = z + b * 4 * H;  // not: gates may alias z
        T* gb = gates + b * 4 * H;
        T zi[VEC], zf[VEC], zg[VEC], zo[VEC], cp[VEC], cn[VEC], hn[VEC];
        tg_load<T, VEC>(zb + j, zi);
        tg_load<T, VEC>(zb + H + j, zf);
        tg_load<T, VEC>(zb + 2 * H + j, zg);
        tg_load<T, VEC>(zb + 3 * H + j, zo);
        tg_load<T, VEC>(c_prev + e, cp);
#pragma unroll
        for (int q = 0; q < VEC; ++q) {
            zi[q] = tg_sigmoid(zi[q]);
            zf[q] = tg_sigmoid(zf[q]);
            zg[q] = tanh(zg[q]);
            zo[q] = tg_sigmoid(zo[q]);
            cn[q] = zf[q] * cp[q] + zi[q] * zg[q];
            hn[q] = zo[q] * tanh(cn[q]);
        }
        tg_store<T, VEC>(gb + j, zi);
        tg_store<T, VEC>(gb + H + j, zf);
        tg_store<T, VEC>(gb + 2 * H + j, zg);
        tg_store<T, VEC>(gb + 3 * H + j, zo);
        tg_store<T, VEC>(c + e, cn);
        tg_store<T, VEC>(h + e, hn);
    }
}

extern "C" __global__ void tapegrad_lstm_cell_bwd_$SFX(
        const T* gates, const T* c_prev, const T* c,
        const T* grad_h, const T* grad_c, T* grad_z, T* grad_c_prev,
        long long n, long long H) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t * VEC < n; t += stride) {
        const long long e = t * VEC, b = e / H, j = e - b * H;
        const T* gb = gates + b * 4 * H;
        T* zb = grad_z + b * 4 * H;
        T i[VEC], f[VEC], g[VEC], o[VEC], cp[VEC], cv[VEC], gh[VEC], gc[VEC];
        tg_load<T, VEC>(gb + j, i);
        tg_load<T, VEC>(gb + H + j, f);
        tg_load<T, VEC>(gb + 2 * H + j, g);
        tg_load<T, VEC>(gb + 3 * H + j, o);
        tg_load<T, VEC>(c_prev + e, cp);
        tg_load<T, VEC>(c + e, cv);
        tg_load<T, VEC>(grad_h + e, gh);
        tg_load<T, VEC>(grad_c + e, gc);
        T di[VEC], df[VEC], dg[VEC], dO[VEC], dcp[VEC];
#pragma unroll
        for (int q = 0; q < VEC; ++q) {
            const T tc = tanh(cv[q]);
            const T dc = gc[q] + gh[q] * o[q] * (T(1) - tc * tc);
            di[q] = dc * g[q] * i[q] * (T(1) - i[q]);
            df[q] = dc * cp[q] * f[q] * (T(1) - f[q]);
            dg[q] = dc * i[q] * (T(1) - g[q] * g[q]);
            dO[q] = gh[q] * tc * o[q] * (T(1) - o[q]);
            dcp[q] = dc * f[q];
        }
        tg_store<T, VEC>(zb + j, di);
        tg_store<T, VEC>(zb + H + j, df);
        tg_store<T, VEC>(zb + 2 * H + j, dg);
        tg_store<T, VEC>(zb + 3 * H + j, dO);
        tg_store<T, VEC>(grad_c_prev + e, dcp);
    }
}

extern "C" __global__ void tapegrad_rnn_cell_fwd_$SFX(
        const T* z, T* h, long long n, int relu) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t * VEC < n; t += stride) {
        T v[VEC];
        tg_load<T, VEC>(z + t * VEC, v);
#pragma unroll
        for (int q = 0; q < VEC; ++q) v[q] = relu ? (v[q] < T(0) ? T(0) : v[q]) : tanh(v[q]);
        tg_store<T, VEC>(h + t * VEC, v);
    }
}

extern "C" __global__ void tapegrad_rnn_cell_bwd_$SFX(
        const T* h, const T* grad_h, T* grad_z, long long n, int relu) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t * VEC < n; t += stride) {
        T hv[VEC], gv[VEC];
        tg_load<T, VEC>(h + t * VEC, hv);
        tg_load<T, VEC>(grad_h + t * VEC, gv);
#pragma unroll
        for (int q = 0; q < VEC; ++q)
            gv[q] = relu ? (hv[q] > T(0) ? gv[q] : T(0) * gv[q]) : gv[q] * (T(1) - hv[q] * hv[q]);
        tg_store<T, VEC>(grad_z + t * VEC, gv);
    }
}

// C [M, N] = A [M, K] @ op(B) (+ C when accumulating), op(B) = B^T for B [N, K] (trans_b) or B [K, N].
// Row-major with contiguous rows. One thread per output element; a TG_TILE x TG_TILE block stages
// tiles of A and op(B) in shared memory, each loaded along its array's rows (coalesced). Meant for
// the small per-step GEMMs of a recurrent loop (M = batch), where launch cost dominates.
#define TG_TILE 16
extern "C" __global__ void tapegrad_step_gemm_$SFX(
        const T* __restrict__ A, const T* __restrict__ Bm, T* C, int M, int N, int K, int trans_b,
        int accumulate) {
    __shared__ T As[TG_TILE][TG_TILE + 1];
    __shared__ T Bs[TG_TILE][TG_TILE + 1];  // Bs[k][n] = op(B)[k0 + k, n0 + n]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int row = blockIdx.y * TG_TILE + ty, col = blockIdx.x * TG_TILE + tx;
    T acc = T(0);
    for (int k0 = 0; k0 < K; k0 += TG_TILE) {
        As[ty][tx] = (row < M && k0 + tx < K) ? A[(long long)row * K + k0 + tx] : T(0);
        if (trans_b) {  // op(B)[k, n] = B[n, k]: lanes tx walk k along a row of B
            const int n = blockIdx.x * TG_TILE + ty, k = k0 + tx;
            Bs[tx][ty] = (n < N && k < K) ? Bm[(long long)n * K + k] : T(0);
        } else {        // op(B)[k, n] = B[k, n]: lanes tx walk n along a row of B
            const int k = k0 + ty;
            Bs[ty][tx] = (k < K && col < N) ? Bm[(long long)k * N + col] : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TG_TILE; ++kk) acc += As[ty][kk] * Bs[kk][tx];
        __syncthreads();
    }
    if (row < M && col < N) {
        const long long i = (long long)row * N + col;
        C[i] = accumulate ? C[i] + acc : acc;
    }
}
"""

STEP_GEMM_TILE = 16  # TG_TILE above


@functools.cache
def _source(dtype, vec):
    sfx = f"{cc.suffix(dtype)}_v{vec}"
    return cc.render(_RECURRENT, T=cc.ctype(dtype), VEC=vec, SFX=sfx), sfx


def _kernel(name, dtype, vec):
    source, sfx = _source(np.dtype(dtype), vec)
    return cc.kernel(source, f"tapegrad_{name}_{sfx}")


_contig = cc.contiguous


def _check(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def _result(out, shape, dtype):
    """(array to write, caller's out): a fresh array unless out is C-contiguous and can be written."""
    if out is None:
        return cupy.empty(shape, dtype), None
    _check("out", out, shape)
    if np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"out has dtype {out.dtype}, expected {np.dtype(dtype)}")
    if isinstance(out, cupy.ndarray) and out.flags.c_contiguous:
        return out, out
    return cupy.empty(shape, dtype), out


def _launch(name, dtype, H, n, arrays, args):
    vec = cc.vec_width(dtype, H, *arrays)
    blocks, threads = cc.launch_shape(-(-n // vec), BLOCK, MAX_BLOCKS)
    _kernel(name, dtype, vec)((blocks,), (threads,), args)


_I32 = (np.int32(0), np.int32(1))

# An engine call (every array given, C-contiguous, one dtype) launches through its plan (cc.lean), made by
# the first such call (cc.plan_elementwise): no conversions, the kernel's arguments the arrays and a tail
# fixed for (name, dtype, H, n).


def lstm_cell_fwd(z, c_prev, gates=None, c=None, h=None):
    """z [B, 4H] (gate order i, f, g, o), c_prev [B, H] -> (gates [B, 4H], c [B, H], h [B, H])."""
    key = cc.lean(("lstm_cell_fwd", BLOCK, MAX_BLOCKS), z, c_prev, gates, c, h)
    if key is True:
        return gates, c, h
    if key is not None and cc.plain((z, c_prev, gates, c, h), z.dtype):
        B, H = shape = c_prev.shape
        if z.shape == gates.shape == (B, 4 * H) and c.shape == h.shape == shape:
            cc.plan_elementwise(key, _source, "lstm_cell_fwd", z.dtype, H, B * H, BLOCK, MAX_BLOCKS,
                                (z, c_prev, gates, c, h), tail=(B * H, H))
            return gates, c, h
    z, c_prev = _contig(z), _contig(c_prev)
    B, H = c_prev.shape
    _check("z", z, (B, 4 * H))
    dtype = z.dtype
    c_prev = c_prev.astype(dtype, copy=False)
    gb, gu = _result(gates, (B, 4 * H), dtype)
    cb, cu = _result(c, (B, H), dtype)
    hb, hu = _result(h, (B, H), dtype)
    n = B * H
    if n > 0:
        _launch("lstm_cell_fwd", dtype, H, n, (z, c_prev, gb, cb, hb),
                (z, c_prev, gb, cb, hb, np.int64(n), np.int64(H)))
    return cc.finish(gb, gu), cc.finish(cb, cu), cc.finish(hb, hu)


def lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z=None, grad_c_prev=None):
    """Backward of one LSTM step -> (grad_z [B, 4H], grad_c_prev [B, H])."""
    arrays = (gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev)
    key = cc.lean(("lstm_cell_bwd", BLOCK, MAX_BLOCKS), *arrays)
    if key is True:
        return grad_z, grad_c_prev
    if key is not None and cc.plain(arrays, gates.dtype):
        B, H = shape = c.shape
        if gates.shape == grad_z.shape == (B, 4 * H) and \
                c_prev.shape == grad_h.shape == grad_c.shape == grad_c_prev.shape == shape:
            cc.plan_elementwise(key, _source, "lstm_cell_bwd", gates.dtype, H, B * H, BLOCK, MAX_BLOCKS, arrays,
                                tail=(B * H, H))
            return grad_z, grad_c_prev
    gates = _contig(gates)
    dtype = gates.dtype
    c_prev, c, grad_h, grad_c = (_contig(a).astype(dtype, copy=False) for a in (c_prev, c, grad_h, grad_c))
    B, H = c.shape
    _check("gates", gates, (B, 4 * H))
    for name, a in (("c_prev", c_prev), ("grad_h", grad_h), ("grad_c", grad_c)):
        _check(name, a, (B, H))
    zb, zu = _result(grad_z, (B, 4 * H), dtype)
    cb, cu = _result(grad_c_prev, (B, H), dtype)
    n = B * H
    if n > 0:
        _launch("lstm_cell_bwd", dtype, H, n, (gates, c_prev, c, grad_h, grad_c, zb, cb),
                (gates, c_prev, c, grad_h, grad_c, zb, cb, np.int64(n), np.int64(H)))
    return cc.finish(zb, zu), cc.finish(cb, cu)


def rnn_cell_fwd(z, h=None, relu=False):
    """h = tanh(z) (or relu(z)); z [B, H]."""
    relu = _I32[bool(relu)]
    key = cc.lean(("rnn_cell_fwd", relu, BLOCK, MAX_BLOCKS), z, h)
    if key is True:
        return h
    if key is not None and cc.plain((z, h), z.dtype) and z.shape == h.shape and z.ndim:
        cc.plan_elementwise(key, _source, "rnn_cell_fwd", z.dtype, z.shape[-1], z.size, BLOCK, MAX_BLOCKS, (z, h),
                            tail=(z.size, relu))
        return h
    z = _contig(z)
    hb, hu = _result(h, z.shape, z.dtype)
    if z.size > 0:
        _launch("rnn_cell_fwd", z.dtype, z.shape[-1], z.size, (z, hb),
                (z, hb, np.int64(z.size), np.int32(bool(relu))))
    return cc.finish(hb, hu)


def rnn_cell_bwd(h, grad_h, grad_z=None, relu=False):
    """grad_z = grad_h * act'(z) from the output h: 1 - h^2 for tanh, [h > 0] for relu."""
    relu = _I32[bool(relu)]
    key = cc.lean(("rnn_cell_bwd", relu, BLOCK, MAX_BLOCKS), h, grad_h, grad_z)
    if key is True:
        return grad_z
    if key is not None and cc.plain((h, grad_h, grad_z), h.dtype) and h.shape == grad_h.shape == grad_z.shape \
            and h.ndim:
        cc.plan_elementwise(key, _source, "rnn_cell_bwd", h.dtype, h.shape[-1], h.size, BLOCK, MAX_BLOCKS,
                            (h, grad_h, grad_z), tail=(h.size, relu))
        return grad_z
    h = _contig(h)
    grad_h = _contig(grad_h).astype(h.dtype, copy=False)
    _check("grad_h", grad_h, h.shape)
    zb, zu = _result(grad_z, h.shape, h.dtype)
    if h.size > 0:
        _launch("rnn_cell_bwd", h.dtype, h.shape[-1], h.size, (h, grad_h, zb),
                (h, grad_h, zb, np.int64(h.size), np.int32(bool(relu))))
    return cc.finish(zb, zu)


def step_gemm(a, b, out, trans_b=False, accumulate=False):
    """out = a @ op(b) (+ out when accumulating), op(b) = b.T when trans_b; all C-contiguous, one dtype.

    a [M, K], b [N, K] (trans_b) or [K, N], out [M, N], written in place and returned. A plain tiled
    kernel rather than cuBLAS so that a recurrent step loop can be captured into a CUDA graph (CuPy
    refuses cuBLAS calls during stream capture); at the sizes of one recurrent step it is launch-bound
    either way.
    """
    M, K = a.shape
    N = b.shape[0] if trans_b else b.shape[1]
    if (b.shape[1] if trans_b else b.shape[0]) != K or tuple(out.shape) != (M, N):
        raise ValueError(f"step_gemm: shapes a {a.shape}, b {b.shape} (trans_b={trans_b}), out {out.shape} differ")
    if not (a.dtype == b.dtype == out.dtype):
        raise TypeError(f"step_gemm needs one dtype, got {a.dtype}, {b.dtype}, {out.dtype}")
    for name, x in (("a", a), ("b", b), ("out", out)):
        if not (isinstance(x, cupy.ndarray) and x.flags.c_contiguous):
            raise ValueError(f"step_gemm: {name} must be a C-contiguous cupy array")
    if M and N:
        t = STEP_GEMM_TILE
        _kernel("step_gemm", out.dtype, 1)(
            (-(-N // t), -(-M // t)), (t, t),
            (a, b, out, np.int32(M), np.int32(N), np.int32(K), np.int32(bool(trans_b)), np.int32(bool(accumulate))))
    return out
