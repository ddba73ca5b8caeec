"""Numba CUDA kernels for one step of an LSTM / Elman RNN, after the GEMMs.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`. Elementwise: one thread per
(b, j) of the [B, H] state, in a grid-stride loop. Each thread reads all its inputs before it writes,
so outputs may alias inputs element for element (``gates`` over ``z``, ``grad_c_prev`` over
``grad_c``, ``h`` over ``z``), as the engine's recurrent ops use them. Arrays may be cupy arrays, Numba
device arrays or host NumPy arrays; results come back in the kind of the leading input.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import _device as dv

BLOCK = 256          # threads per block
MAX_BLOCKS = 4096    # grid size cap; grid-stride loops cover the rest


@cuda.jit
def _lstm_fwd(z, c_prev, gates, c, h, n, H, one):
    """gates = (sigmoid i, sigmoid f, tanh g, sigmoid o); c = f c_prev + i g; h = o tanh(c)."""
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < n:
        b = t // H
        j = t - b * H
        zi = z[b, j]
        zf = z[b, H + j]
        zg = z[b, 2 * H + j]
        zo = z[b, 3 * H + j]
        cp = c_prev[b, j]
        i = one / (one + math.exp(-zi))
        f = one / (one + math.exp(-zf))
        g = math.tanh(zg)
        o = one / (one + math.exp(-zo))
        cn = f * cp + i * g
        gates[b, j] = i
        gates[b, H + j] = f
        gates[b, 2 * H + j] = g
        gates[b, 3 * H + j] = o
        c[b, j] = cn
        h[b, j] = o * math.tanh(cn)
        t += stride


@cuda.jit
def _lstm_bwd(gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev, n, H, one):
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < n:
        b = t // H
        j = t - b * H
        i = gates[b, j]
        f = gates[b, H + j]
        g = gates[b, 2 * H + j]
        o = gates[b, 3 * H + j]
        cp = c_prev[b, j]
        gh = grad_h[b, j]
        tc = math.tanh(c[b, j])
        dc = grad_c[b, j] + gh * o * (one - tc * tc)
        grad_z[b, j] = dc * g * i * (one - i)
        grad_z[b, H + j] = dc * cp * f * (one - f)
        grad_z[b, 2 * H + j] = dc * i * (one - g * g)
        grad_z[b, 3 * H + j] = gh * tc * o * (one - o)
        grad_c_prev[b, j] = dc * f
        t += stride


@cuda.jit
def _rnn_fwd(z, h, n, H, relu, zero):
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < n:
        b = t // H
        j = t - b * H
        v = z[b, j]
        if relu:
            h[b, j] = zero if v < zero else v  # NaN passes through, as np.maximum
        else:
            h[b, j] = math.tanh(v)
        t += stride


@cuda.jit
def _rnn_bwd(h, grad_h, grad_z, n, H, relu, zero, one):
    t = cuda.grid(1)
    stride = cuda.gridsize(1)
    while t < n:
        b = t // H
        j = t - b * H
        hv = h[b, j]
        gv = grad_h[b, j]
        if relu:
            grad_z[b, j] = gv if hv > zero else zero * gv
        else:
            grad_z[b, j] = gv * (one - hv * hv)
        t += stride


def _check(name, a, shape):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {tuple(shape)}")


def _launch(n):
    """(blocks, threads) for an elementwise kernel over n units."""
    return dv.launch_shape(n, BLOCK, MAX_BLOCKS)


# Planned launches of the cell kernels on cupy arrays (see _device.lean): the engine's per-step calls pass
# their arrays' addresses and nothing else.
_PLANS: dict = {}


def _launch_and_plan(key, kernel, blocks, threads, kind, args, given):
    dv.launch_and_plan(_PLANS, key, kernel, blocks, threads, kind, args, tuple(range(len(given))), given)


def lstm_cell_fwd(z, c_prev, gates=None, c=None, h=None):
    """z [B, 4H] (gate order i, f, g, o), c_prev [B, H] -> (gates [B, 4H], c [B, H], h [B, H])."""
    key = dv.lean(_PLANS, (_lstm_fwd, BLOCK, MAX_BLOCKS), z, c_prev, gates, c, h)
    if key is True:
        return gates, c, h
    B, H = c_prev.shape
    kind = dv.kind_of(z)
    _check("z", z, (B, 4 * H))
    dtype = np.dtype(z.dtype)
    og = dv.Output((B, 4 * H), dtype, kind, gates)
    oc = dv.Output((B, H), dtype, kind, c)
    oh = dv.Output((B, H), dtype, kind, h)
    if B * H > 0:
        blocks, threads = _launch(B * H)
        _launch_and_plan(key, _lstm_fwd, blocks, threads, kind,
                         (dv.as_device(z), dv.as_device(c_prev), og.dev, oc.dev, oh.dev, B * H, H, dtype.type(1)),
                         (z, c_prev, gates, c, h))
    return og.result(), oc.result(), oh.result()


def lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z=None, grad_c_prev=None):
    """Backward of one LSTM step -> (grad_z [B, 4H], grad_c_prev [B, H])."""
    key = dv.lean(_PLANS, (_lstm_bwd, BLOCK, MAX_BLOCKS), gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev)
    if key is True:
        return grad_z, grad_c_prev
    B, H = c.shape
    kind = dv.kind_of(gates)
    _check("gates", gates, (B, 4 * H))
    for name, a in (("c_prev", c_prev), ("grad_h", grad_h), ("grad_c", grad_c)):
        _check(name, a, (B, H))
    dtype = np.dtype(gates.dtype)
    oz = dv.Output((B, 4 * H), dtype, kind, grad_z)
    oc = dv.Output((B, H), dtype, kind, grad_c_prev)
    if B * H > 0:
        blocks, threads = _launch(B * H)
        _launch_and_plan(key, _lstm_bwd, blocks, threads, kind,
                         (dv.as_device(gates), dv.as_device(c_prev), dv.as_device(c), dv.as_device(grad_h),
                          dv.as_device(grad_c), oz.dev, oc.dev, B * H, H, dtype.type(1)),
                         (gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev))
    return oz.result(), oc.result()


def rnn_cell_fwd(z, h=None, relu=False):
    """h = tanh(z) (or relu(z)); z [B, H]."""
    relu = bool(relu)
    key = dv.lean(_PLANS, (_rnn_fwd, relu, BLOCK, MAX_BLOCKS), z, h)
    if key is True:
        return h
    B, H = z.shape
    kind = dv.kind_of(z)
    dtype = np.dtype(z.dtype)
    oh = dv.Output((B, H), dtype, kind, h)
    if B * H > 0:
        blocks, threads = _launch(B * H)
        _launch_and_plan(key, _rnn_fwd, blocks, threads, kind,
                         (dv.as_device(z), oh.dev, B * H, H, relu, dtype.type(0)), (z, h))
    return oh.result()


def rnn_cell_bwd(h, grad_h, grad_z=None, relu=False):
    """grad_z = grad_h * act'(z) from the output h: 1 - h^2 for tanh, [h > 0] for relu."""
    relu = bool(relu)
    key = dv.lean(_PLANS, (_rnn_bwd, relu, BLOCK, MAX_BLOCKS), h, grad_h, grad_z)
    if key is True:
        return grad_z
    B, H = h.shape
    kind = dv.kind_of(h)
    _check("grad_h", grad_h, (B, H))
    dtype = np.dtype(h.dtype)
    oz = dv.Output((B, H), dtype, kind, grad_z)
    if B * H > 0:
        blocks, threads = _launch(B * H)
        _launch_and_plan(key, _rnn_bwd, blocks, threads, kind,
                         (dv.as_device(h), dv.as_device(grad_h), oz.dev, B * H, H, relu, dtype.type(0),
                          dtype.type(1)), (h, grad_h, grad_z))
    return oz.result()
