"""Numba CUDA kernels for a whole recurrent step: the recurrent GEMM and the cell in one launch.

Same signatures and semantics as the ``*_step_*`` functions of :mod:`tapegrad.kernels.reference`, and
the same layout as the CuPy kernels of ``kernels/cupy/recurrent_step.py`` (read its docstring): one
warp per hidden unit j; for the LSTM lane (g, r) = (lane // 8, lane % 8) works on gate (or quarter) g
of batch row b0 + r, and the four values meet in shared memory. Block-wide ``syncthreads`` stands in for
a warp barrier (the simulator has none), so every thread of a block runs the same row loop.

Arrays may be cupy arrays, Numba device arrays or host NumPy arrays; arguments the step writes (z, c,
h; grad_c, grad_z; h; grad_z) are written in place, host arrays included (by a copy back).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from .. import sequence as seq
from . import _device as dv

WARPS = 4  # warps (hidden units) per block


@functools.cache
def _lstm_kernels(dtype: np.dtype, warps: int):
    """(forward, backward) LSTM step kernels for one dtype (the shared array's type is fixed per kernel)."""
    from numba import from_dtype
    nb_t = from_dtype(dtype)

    @cuda.jit
    def fwd(h_prev, w, z, c_prev, c, h, B, H, zero, one):
        pre = cuda.shared.array((warps, 32), nb_t)
        lane = cuda.threadIdx.x % 32
        wid = cuda.threadIdx.x // 32
        j = cuda.blockIdx.x * warps + wid
        g = lane // 8
        r = lane % 8
        for b0 in range(0, B, 8):
            b = b0 + r
            v = zero
            if j < H and b < B:
                row = g * H + j
                v = z[b, row]
                for k in range(H):
                    v += h_prev[b, k] * w[row, k]
            pre[wid, lane] = v
            cuda.syncthreads()
            if j < H and g == 0 and b < B:
                i = one / (one + math.exp(-pre[wid, r]))
                f = one / (one + math.exp(-pre[wid, 8 + r]))
                gg = math.tanh(pre[wid, 16 + r])
                o = one / (one + math.exp(-pre[wid, 24 + r]))
                cn = f * c_prev[b, j] + i * gg
                z[b, j] = i
                z[b, H + j] = f
                z[b, 2 * H + j] = gg
                z[b, 3 * H + j] = o
                c[b, j] = cn
                h[b, j] = o * math.tanh(cn)
            cuda.syncthreads()

    @cuda.jit
    def bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c, grad_c, grad_z, B, H, has_next, has_out, zero, one):
        part = cuda.shared.array((warps, 32), nb_t)
        lane = cuda.threadIdx.x % 32
        wid = cuda.threadIdx.x // 32
        j = cuda.blockIdx.x * warps + wid
        q = lane // 8
        r = lane % 8
        for b0 in range(0, B, 8):
            b = b0 + r
            v = zero
            if has_next and j < H and b < B:
                for k in range(q * H, (q + 1) * H):
                    v += dz_next[b, k] * w_t[j, k]
            part[wid, lane] = v
            cuda.syncthreads()
            if j < H and q == 0 and b < B:
                if has_next:
                    gh = (part[wid, r] + part[wid, 8 + r]) + (part[wid, 16 + r] + part[wid, 24 + r])
                else:
                    gh = grad_h[b, j]
                if has_out:
                    gh += grad_out[b, j]
                i = gates[b, j]
                f = gates[b, H + j]
                g = gates[b, 2 * H + j]
                o = gates[b, 3 * H + j]
                tc = math.tanh(c[b, j])
                dc = grad_c[b, j] + gh * o * (one - tc * tc)
                grad_z[b, j] = dc * g * i * (one - i)
                grad_z[b, H + j] = dc * c_prev[b, j] * f * (one - f)
                grad_z[b, 2 * H + j] = dc * i * (one - g * g)
                grad_z[b, 3 * H + j] = gh * tc * o * (one - o)
                grad_c[b, j] = dc * f
            cuda.syncthreads()
    return fwd, bwd


@cuda.jit
def _rnn_fwd(h_prev, w, p, h, B, H, relu, zero):
    lane = cuda.threadIdx.x % 32
    j = cuda.blockIdx.x * (cuda.blockDim.x // 32) + cuda.threadIdx.x // 32
    if j < H:
        for b in range(lane, B, 32):
            v = p[b, j]
            for k in range(H):
                v += h_prev[b, k] * w[j, k]
            if relu:
                h[b, j] = zero if v < zero else v
            else:
                h[b, j] = math.tanh(v)


@cuda.jit
def _rnn_bwd(dz_next, w_t, grad_h, grad_out, h, grad_z, B, H, has_next, has_out, relu, zero, one):
    lane = cuda.threadIdx.x % 32
    j = cuda.blockIdx.x * (cuda.blockDim.x // 32) + cuda.threadIdx.x // 32
    if j < H:
        for b in range(lane, B, 32):
            if has_next:
                gh = zero
                for k in range(H):
                    gh += dz_next[b, k] * w_t[j, k]
            else:
                gh = grad_h[b, j]
            if has_out:
                gh += grad_out[b, j]
            hv = h[b, j]
            if relu:
                grad_z[b, j] = gh if hv > zero else zero * gh
            else:
                grad_z[b, j] = gh * (one - hv * hv)


def _check(name, a, shape, dtype):
    if tuple(a.shape) != tuple(shape) or np.dtype(a.dtype) != dtype:
        raise ValueError(f"{name} has shape {tuple(a.shape)} and dtype {a.dtype}, expected {tuple(shape)} and {dtype}")


class _Args:
    """Device views of a step's arrays; host arrays it writes get their results copied back on ``done``."""

    def __init__(self) -> None:
        self.back: list = []

    def read(self, a):
        return None if a is None else dv.as_device(a)

    def write(self, a):
        if dv.kind_of(a) == dv.HOST:
            dev = cuda.to_device(np.ascontiguousarray(a))
            self.back.append((dev, a))
            return dev
        return dv.as_device(a)

    def done(self) -> None:
        for dev, host in self.back:
            host[...] = dev.copy_to_host()


def _grid(H):
    warps = int(WARPS)
    return -(-H // warps), 32 * warps


def lstm_step_fwd(h_prev, w_hh, z, c_prev, c, h):
    """z += h_prev W_hh^T, then the LSTM cell with the gates written over z. Returns (z, c, h)."""
    B, H = h_prev.shape
    dtype = np.dtype(z.dtype)
    for name, a, s in (("h_prev", h_prev, (B, H)), ("w_hh", w_hh, (4 * H, H)), ("z", z, (B, 4 * H)),
                       ("c_prev", c_prev, (B, H)), ("c", c, (B, H)), ("h", h, (B, H))):
        _check(name, a, s, dtype)
    if B and H:
        io = _Args()
        blocks, threads = _grid(H)
        fwd, _ = _lstm_kernels(dtype, int(WARPS))
        dv.launch(fwd, blocks, threads, dv.kind_of(z), io.read(h_prev), io.read(w_hh), io.write(z), io.read(c_prev),
                  io.write(c), io.write(h), B, H, dtype.type(0), dtype.type(1))
        io.done()
    return z, c, h


def lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c, grad_c, grad_z):
    """dL/dh_t = dz_next @ w_t.T (or grad_h) (+ grad_out), then the LSTM cell's backward into grad_z, with
    grad_c replaced by dL/dc_{t-1}. w_t = W_hh^T [H, 4H]. Returns (grad_z, grad_c)."""
    B, H = grad_c.shape
    dtype = np.dtype(grad_z.dtype)
    has_next, has_out = dz_next is not None, grad_out is not None
    checks = [("w_t", w_t, (H, 4 * H)), ("gates", gates, (B, 4 * H)), ("c_prev", c_prev, (B, H)),
              ("c", c, (B, H)), ("grad_c", grad_c, (B, H)), ("grad_z", grad_z, (B, 4 * H)),
              ("dz_next", dz_next, (B, 4 * H)) if has_next else ("grad_h", grad_h, (B, H))]
    if has_out:
        checks.append(("grad_out", grad_out, (B, H)))
    for name, a, s in checks:
        _check(name, a, s, dtype)
    if B and H:
        io = _Args()
        blocks, threads = _grid(H)
        _, bwd = _lstm_kernels(dtype, int(WARPS))
        gz, gc = io.write(grad_z), io.write(grad_c)
        first = io.read(dz_next) if has_next else gz  # placeholders the kernel does not read
        dv.launch(bwd, blocks, threads, dv.kind_of(grad_z), first, io.read(w_t), gz if has_next else io.read(grad_h),
                  io.read(grad_out) if has_out else gz, io.read(gates), io.read(c_prev), io.read(c), gc, gz, B, H,
                  has_next, has_out, dtype.type(0), dtype.type(1))
        io.done()
    return grad_z, grad_c


def rnn_step_fwd(h_prev, w_hh, p, h, relu=False):
    """h = act(p + h_prev W_hh^T); p is not written. Returns h."""
    B, H = h_prev.shape
    dtype = np.dtype(h.dtype)
    for name, a, s in (("h_prev", h_prev, (B, H)), ("w_hh", w_hh, (H, H)), ("p", p, (B, H)), ("h", h, (B, H))):
        _check(name, a, s, dtype)
    if B and H:
        io = _Args()
        blocks, threads = _grid(H)
        dv.launch(_rnn_fwd, blocks, threads, dv.kind_of(h), io.read(h_prev), io.read(w_hh), io.read(p), io.write(h),
                  B, H, bool(relu), dtype.type(0))
        io.done()
    return h


def rnn_step_bwd(dz_next, w_t, grad_h, grad_out, h, grad_z, relu=False):
    """grad_z = (dz_next @ w_t.T, or grad_h, + grad_out) * act'(z) from the output h. Returns grad_z."""
    B, H = h.shape
    dtype = np.dtype(grad_z.dtype)
    has_next, has_out = dz_next is not None, grad_out is not None
    checks = [("w_t", w_t, (H, H)), ("h", h, (B, H)), ("grad_z", grad_z, (B, H)),
              ("dz_next", dz_next, (B, H)) if has_next else ("grad_h", grad_h, (B, H))]
    if has_out:
        checks.append(("grad_out", grad_out, (B, H)))
    for name, a, s in checks:
        _check(name, a, s, dtype)
    if B and H:
        io = _Args()
        blocks, threads = _grid(H)
        gz = io.write(grad_z)
        dv.launch(_rnn_bwd, blocks, threads, dv.kind_of(grad_z), io.read(dz_next) if has_next else gz, io.read(w_t),
                  gz if has_next else io.read(grad_h), io.read(grad_out) if has_out else gz, io.read(h), gz, B, H,
                  has_next, has_out, bool(relu), dtype.type(0), dtype.type(1))
        io.done()
    return grad_z


# ---- whole loops: one launch per step (see kernels/sequence.py) ----------------------------------------------

lstm_seq_fwd, lstm_seq_bwd, rnn_seq_fwd, rnn_seq_bwd = seq.loops_over(lstm_step_fwd, lstm_step_bwd, rnn_step_fwd,
                                                                     rnn_step_bwd)
