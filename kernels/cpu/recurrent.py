"""Fused recurrent-cell kernels for the CPU (Numba): the elementwise work of one LSTM / Elman step.

Same signatures and semantics as :mod:`tapegrad.kernels.reference`. Arrays are 2-D, C-contiguous and of
one float dtype (float32 or float64); rows are batch entries.

Why the code looks the way it does (this runs once per time step, between BLAS GEMMs):

- Serial ``njit``: ``parallel=True`` made the step 8x slower, its threads fighting OpenBLAS's.
- Every inner loop must vectorise, and four things stop LLVM from doing so, each avoided here:
  1. A call to libm's ``exp``/``tanh``: there is no vector math library without SVML. The kernels use
     the polynomials below (within 2.5 ulp of glibc), with an explicit ``llvm.fma`` rather than
     ``fastmath``, which would also license reassociation and finite-math assumptions. The FMAs make
     float32 a third faster; libm's scalar tanh is ten times slower than NumPy's in float64.
  2. Python's division-by-zero check: ``error_model="numpy"`` makes ``/`` plain IEEE division.
  3. Possible overlap: LLVM guards a loop that writes one array and reads another by a run-time
     overlap test, hoisted out of the row loop so it spans the whole arrays, and runs the loop scalar
     when that test fails. So an exact alias (``gates is z``) gets its own kernel that passes the one
     array for both, and a loop never writes two gate sections of one array (across all rows they
     overlap): the backward writes grad_z one section per loop.
  4. A loop over ``range(2 * H, 3 * H)``: Numba cannot prove the index non-negative and keeps its
     wraparound check. Loops run from 0 and offset the index (``z[2 * H + j]``).
- float32 stays float32: constants are ``np.float32`` globals or ``x.dtype.type(...)``.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_JIT = {"cache": True, "error_model": "numpy"}

# ---------------------------------------------------------------------------------------------------
# exp / sigmoid / tanh that LLVM can vectorise: Cephes expf/tanhf (float32) and a degree-13 exp with
# Cephes's tanh rational (float64). Measured on dense grids against glibc: exp within 1 ulp, tanh and
# sigmoid within 2 ulp (float64) and 2.5 ulp (float32).

_F = np.float32
_LOG2E = _F(1.44269504088896341)
_SHIFT = _F(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer held in the low mantissa bits
_LN2_HI = _F(0.693359375)  # ln 2 = _LN2_HI + _LN2_LO (Cody-Waite)
_LN2_LO = _F(-2.12194440e-4)
_EXP_P = tuple(_F(p) for p in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_EXP_MAX = _F(87.0)  # keeps 2**n a normal float: |n| <= 126
_TANH_P = tuple(_F(p) for p in (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2,
                                  1.33314422036e-1, -3.33332819422e-1))
_TANH_SMALL = _F(0.625)  # below it tanh uses its odd polynomial (1 - 2/(e^2x + 1) would cancel)
_ZERO, _ONE, _TWO = _F(0.0), _F(1.0), _F(2.0)

_SHIFT64 = 6755399441055744.0  # 1.5 * 2**52
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 0.6931471805599453  # ln 2 rounded; _LN2_LO64 the rest
_LN2_LO64 = 2.3190468138462996e-17
_EXP_MAX64 = 708.0  # keeps 2**n a normal double: |n| <= 1022
_EXP_C64 = tuple(1.0 / math.factorial(k) for k in range(13, 1, -1))  # Taylor: |r|^14/14! < 5e-18
_TANH_P64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_TANH_Q64 = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@intrinsic
def _pow2_of_shifted(typingctx, t):
    """2**n, from t = n + _SHIFT (float32) or n + _SHIFT64 (float64): the integer n sits in t's low
    mantissa bits, and becomes the exponent field. n must keep 2**n normal."""
    if t == types.float32:
        width, mantissa, bias, shift_bits, fty = 32, 23, 127, 0x4B400000, ir.FloatType()
    elif t == types.float64:
        width, mantissa, bias, shift_bits, fty = 64, 52, 1023, 0x4338000000000000, ir.DoubleType()
    else:
        return None

    def codegen(context, builder, sig, args):
        ity = ir.IntType(width)
        n = builder.sub(builder.bitcast(args[0], ity), ir.Constant(ity, shift_bits))
        bits = builder.shl(builder.add(n, ir.Constant(ity, bias)), ir.Constant(ity, mantissa))
        return builder.bitcast(bits, fty)

    return t(t), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma). Explicit, so that no fastmath flag is needed for it."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return a(a, a, a), codegen


@njit
def _exp_f32(x):
    """e**x for float32 x, x clamped to [-87, 87]; NaN stays NaN. exp(x) = 2**n * exp(r), |r| <= ln2 / 2."""
    x = _EXP_MAX if x > _EXP_MAX else x  # noqa: FURB136 (not min(): NaN must stay NaN)
    x = -_EXP_MAX if x < -_EXP_MAX else x  # noqa: FURB136
    t = _fma(x, _LOG2E, _SHIFT)
    n = t - _SHIFT
    r = _fma(n, -_LN2_HI, x)
    r = _fma(n, -_LN2_LO, r)
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = _fma(_fma(_fma(_fma(_fma(p0, r, p1), r, p2), r, p3), r, p4), r, p5)
    p = _fma(p, r * r, r) + _ONE
    return p * _pow2_of_shifted(t)


@njit
def _exp_f64(x):
    """e**x for float64 x, x clamped to [-708, 708]; NaN stays NaN. exp(x) = 2**n * exp(r), |r| <= ln2 / 2."""
    x = _EXP_MAX64 if x > _EXP_MAX64 else x  # noqa: FURB136 (not min(): NaN must stay NaN)
    x = -_EXP_MAX64 if x < -_EXP_MAX64 else x  # noqa: FURB136
    t = _fma(x, _LOG2E64, _SHIFT64)
    n = t - _SHIFT64
    r = _fma(n, -_LN2_HI64, x)
    r = _fma(n, -_LN2_LO64, r)
    c13, c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2 = _EXP_C64
    p = _fma(_fma(_fma(_fma(c13, r, c12), r, c11), r, c10), r, c9)
    p = _fma(_fma(_fma(_fma(p, r, c8), r, c7), r, c6), r, c5)
    p = _fma(_fma(_fma(p, r, c4), r, c3), r, c2)
    p = _fma(p, r * r, r) + 1.0
    return p * _pow2_of_shifted(t)


@njit
def _tanh_f32(x):
    """tanh(x) for float32 x: x + x^3 P(x^2) for |x| < 0.625, else sign(x) (1 - 2 / (e^{2|x|} + 1))."""
    a = abs(x)
    z = x * x
    t0, t1, t2, t3, t4 = _TANH_P
    # copysign: tanh(-0.0) is -0.0, which the polynomial's sum of zeros loses
    small = math.copysign(_fma(x * z, _fma(_fma(_fma(_fma(t0, z, t1), z, t2), z, t3), z, t4), x), x)
    big = math.copysign(_ONE - _TWO / (_exp_f32(a + a) + _ONE), x)
    return small if a < _TANH_SMALL else big


@njit
def _tanh_f64(x):
    """tanh(x) for float64 x: x + x^3 P(x^2) / Q(x^2) for |x| < 0.625, else
    sign(x) (1 - 2 / (e^{2|x|} + 1))."""
    a = abs(x)
    z = x * x
    p0, p1, p2 = _TANH_P64
    q0, q1, q2 = _TANH_Q64
    ratio = _fma(_fma(p0, z, p1), z, p2) / _fma(_fma(z + q0, z, q1), z, q2)
    small = math.copysign(_fma(x * z, ratio, x), x)  # tanh(-0.0) is -0.0
    big = math.copysign(1.0 - 2.0 / (_exp_f64(a + a) + 1.0), x)
    return small if a < 0.625 else big


def _sigmoid(x):
    """1 / (1 + e^-x) on a float32 or float64 Numba scalar."""
    raise NotImplementedError("only callable from Numba-compiled code")


def _tanh(x):
    """tanh on a float32 or float64 Numba scalar."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_sigmoid)
def _sigmoid_impl(x):
    # Below -_EXP_MAX the clamped exp would leave 1 / (1 + e^87) ~ 1.6e-38 where the true value is (or
    # rounds to) 0: a closed gate must be exactly closed. A select, so the loop still vectorises; NaN fails
    # the comparison and stays NaN.
    if x == types.float32:
        return lambda x: _ZERO if x < -_EXP_MAX else _ONE / (_ONE + _exp_f32(-x))
    if x == types.float64:
        return lambda x: 0.0 if x < -_EXP_MAX64 else 1.0 / (1.0 + _exp_f64(-x))
    return None


@overload(_tanh)
def _tanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    if x == types.float64:
        return lambda x: _tanh_f64(x)
    return None


# ---------------------------------------------------------------------------------------------------
# LSTM


@njit(inline="always")
def _lstm_fwd_row(z, c_prev, gates, c, h):
    H = c.shape[0]
    for j in range(2 * H):
        gates[j] = _sigmoid(z[j])
    for j in range(H):
        gates[2 * H + j] = _tanh(z[2 * H + j])
    for j in range(H):
        gates[3 * H + j] = _sigmoid(z[3 * H + j])
    for j in range(H):
        cj = gates[H + j] * c_prev[j] + gates[j] * gates[2 * H + j]
        c[j] = cj
        h[j] = gates[3 * H + j] * _tanh(cj)


@njit(**_JIT)
def _lstm_fwd(z, c_prev, gates, c, h):
    for b in range(c.shape[0]):
        _lstm_fwd_row(z[b], c_prev[b], gates[b], c[b], h[b])


@njit(**_JIT)
def _lstm_fwd_inplace(gates, c_prev, c, h):
    for b in range(c.shape[0]):
        g = gates[b]
        _lstm_fwd_row(g, c_prev[b], g, c[b], h[b])


def lstm_cell_fwd(z, c_prev, gates=None, c=None, h=None):
    """One LSTM step after the GEMMs.

    z: [B, 4H] pre-activations in gate order (i, f, g, o); c_prev: [B, H]. Returns
    (gates [B, 4H] = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); c [B, H]; h [B, H]) with
    c = f * c_prev + i * g and h = o * tanh(c). ``gates`` may be ``z`` itself (activated in place).
    """
    B, H = c_prev.shape
    _check_shape("z", z, (B, 4 * H))
    gates = np.empty_like(z) if gates is None else _check_shape("gates", gates, (B, 4 * H))
    c = np.empty_like(c_prev) if c is None else _check_shape("c", c, (B, H))
    h = np.empty_like(c_prev) if h is None else _check_shape("h", h, (B, H))
    c_prev = _unshared(c_prev, gates, c, h)
    if _alias(gates, z):
        _lstm_fwd_inplace(gates, c_prev, c, h)
    else:
        _lstm_fwd(_unshared(z, gates, c, h), c_prev, gates, c, h)
    return gates, c, h


@njit(inline="always")
def _lstm_bwd_row(gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev):
    # One loop per section of grad_z: LLVM checks for overlap over the whole arrays (its checks are
    # hoisted out of the row loop), and two gate sections of grad_z overlap there, so a loop writing
    # both would never run vectorised. dc waits in grad_c_prev (which may be grad_c: read, then written).
    H = c.shape[0]
    one = c.dtype.type(1.0)
    for j in range(H):
        o = gates[3 * H + j]
        tc = _tanh(c[j])
        gh = grad_h[j]
        grad_c_prev[j] = grad_c[j] + gh * o * (one - tc * tc)
        grad_z[3 * H + j] = gh * tc * o * (one - o)
    for j in range(H):
        i = gates[j]
        grad_z[j] = grad_c_prev[j] * gates[2 * H + j] * i * (one - i)
    for j in range(H):
        g = gates[2 * H + j]
        grad_z[2 * H + j] = grad_c_prev[j] * gates[j] * (one - g * g)
    for j in range(H):
        f = gates[H + j]
        dc = grad_c_prev[j]
        grad_z[H + j] = dc * c_prev[j] * f * (one - f)
        grad_c_prev[j] = dc * f


@njit(**_JIT)
def _lstm_bwd(gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev):
    for b in range(c.shape[0]):
        _lstm_bwd_row(gates[b], c_prev[b], c[b], grad_h[b], grad_c[b], grad_z[b], grad_c_prev[b])


@njit(**_JIT)
def _lstm_bwd_into_grad_c(gates, c_prev, c, grad_h, grad_c, grad_z):
    for b in range(c.shape[0]):
        gc = grad_c[b]
        _lstm_bwd_row(gates[b], c_prev[b], c[b], grad_h[b], gc, grad_z[b], gc)


def lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z=None, grad_c_prev=None):
    """Backward of one LSTM step.

    gates: [B, 4H] activated gates from the forward; c_prev, c: [B, H]; grad_h = dL/dh_t and
    grad_c = dL/dc_t from later steps: [B, H]. With dc = grad_c + grad_h * o * (1 - tanh(c)^2),
    returns grad_z [B, 4H] = (dc g i(1-i), dc c_prev f(1-f), dc i (1-g^2), grad_h tanh(c) o(1-o)) and
    grad_c_prev [B, H] = dc f. ``grad_c_prev`` may be ``grad_c`` itself (overwritten in place).
    """
    B, H = c.shape
    for name, a in (("c_prev", c_prev), ("grad_h", grad_h), ("grad_c", grad_c)):
        _check_shape(name, a, (B, H))
    _check_shape("gates", gates, (B, 4 * H))
    grad_z = np.empty_like(gates) if grad_z is None else _check_shape("grad_z", grad_z, (B, 4 * H))
    if grad_c_prev is None:
        grad_c_prev = np.empty_like(c)
    else:
        _check_shape("grad_c_prev", grad_c_prev, (B, H))
    # The kernel reads inputs after writing outputs (dc waits in grad_c_prev, grad_z is written by
    # section), so any overlap is copied away, but for grad_c_prev being grad_c.
    gates, c_prev, c, grad_h = (_separate(a, grad_z, grad_c_prev) for a in (gates, c_prev, c, grad_h))
    grad_c = _separate(grad_c, grad_z)
    if _alias(grad_c_prev, grad_c):
        _lstm_bwd_into_grad_c(gates, c_prev, c, grad_h, grad_c, grad_z)
    else:
        _lstm_bwd(gates, c_prev, c, grad_h, _separate(grad_c, grad_c_prev), grad_z, grad_c_prev)
    return grad_z, grad_c_prev


# ---------------------------------------------------------------------------------------------------
# Elman RNN


@njit(inline="always")
def _rnn_fwd_row(z, h, relu):
    zero = z.dtype.type(0.0)
    if relu:
        for j in range(z.shape[0]):
            h[j] = zero if z[j] < zero else z[j]  # noqa: FURB136 (NaN stays NaN, as np.maximum)
    else:
        for j in range(z.shape[0]):
            h[j] = _tanh(z[j])


@njit(**_JIT)
def _rnn_fwd(z, h, relu):
    for b in range(z.shape[0]):
        _rnn_fwd_row(z[b], h[b], relu)


@njit(**_JIT)
def _rnn_fwd_inplace(z, relu):
    for b in range(z.shape[0]):
        zb = z[b]
        _rnn_fwd_row(zb, zb, relu)


def rnn_cell_fwd(z, h=None, relu=False):
    """Elman step after the GEMMs: h = tanh(z), or max(z, 0) with ``relu``. z, h: [B, H]; h may be z."""
    relu = bool(relu)
    if h is None:
        h = np.empty_like(z)
    else:
        _check_shape("h", h, z.shape)
    if _alias(h, z):
        _rnn_fwd_inplace(h, relu)
    else:
        _rnn_fwd(_unshared(z, h), h, relu)
    return h


@njit(inline="always")
def _rnn_bwd_row(h, grad_h, grad_z, relu):
    zero = h.dtype.type(0.0)
    one = h.dtype.type(1.0)
    if relu:
        for j in range(h.shape[0]):
            grad_z[j] = grad_h[j] if h[j] > zero else zero
    else:
        for j in range(h.shape[0]):
            grad_z[j] = grad_h[j] * (one - h[j] * h[j])


@njit(**_JIT)
def _rnn_bwd(h, grad_h, grad_z, relu):
    for b in range(h.shape[0]):
        _rnn_bwd_row(h[b], grad_h[b], grad_z[b], relu)


@njit(**_JIT)
def _rnn_bwd_inplace(h, grad_h, relu):
    for b in range(h.shape[0]):
        gb = grad_h[b]
        _rnn_bwd_row(h[b], gb, gb, relu)


def rnn_cell_bwd(h, grad_h, grad_z=None, relu=False):
    """grad_z = grad_h * act'(z) from the output h: (1 - h^2) for tanh, [h > 0] for relu. [B, H].

    ``grad_z`` may be ``grad_h`` itself (overwritten in place).
    """
    relu = bool(relu)
    _check_shape("grad_h", grad_h, h.shape)
    if grad_z is None:
        grad_z = np.empty_like(grad_h)
    else:
        _check_shape("grad_z", grad_z, h.shape)
    h = _unshared(h, grad_z)
    if _alias(grad_z, grad_h):
        _rnn_bwd_inplace(h, grad_z, relu)
    else:
        _rnn_bwd(h, _unshared(grad_h, grad_z), grad_z, relu)
    return grad_z


# ---------------------------------------------------------------------------------------------------
# helpers


def _check_shape(name, a, shape):
    # The kernels do no bounds checks: a wrong shape would read or write past an array's end.
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return a


def _alias(a, b):
    """True when a and b are views of exactly the same elements (same start, shape and strides)."""
    if a is b:
        return True
    return (np.may_share_memory(a, b) and a.shape == b.shape and a.strides == b.strides
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _unshared(a, *outs):
    """``a``, or a copy of it when it overlaps one of ``outs`` other than exactly. A kernel reads
    element k of its inputs before it writes element k of its outputs, which is safe for an exact
    alias but not for a shifted overlap."""
    for out in outs:
        if np.may_share_memory(a, out) and not _alias(a, out):
            return a.copy()
    return a


def _separate(a, *outs):
    """``a``, or a copy of it when it shares any memory with one of ``outs``."""
    for out in outs:
        if np.may_share_memory(a, out):
            return a.copy()
    return a
