"""Differentiable array ops: each forward with its backward (the vector-Jacobian product) beside it.

Every op takes Tensors (or numbers / arrays, treated as constants), computes its output with the
array module of its input (numpy or cupy), and returns ``make_result(out, parents, backward, name)``.
``backward(grad_out)`` returns one gradient per parent; broadcasting is undone by the tape walk.
"""
from __future__ import annotations

import builtins
from typing import Any, Sequence

import numpy as np

from .backend import array_module, check_device, to_device
from .tensor import Tensor, make_result


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; numbers and integer arrays take ``like``'s dtype; arrays become constants.

    As in torch, a float32 tensor stays float32 next to a Python float or an integer array, and an
    integer tensor next to a Python float becomes float32 (never truncates the number).
    """
    if isinstance(x, Tensor):
        return x
    if like is not None and isinstance(x, (int, float, bool, np.number)):
        xp = array_module(like.data)
        return Tensor(xp.asarray(x, dtype=_scalar_dtype(x, like.data.dtype)))
    if like is not None and isinstance(x, np.ndarray):
        if like.device != "cpu":
            x = to_device(x, like.device)
        if like.dtype.kind == "f" and x.dtype.kind in "biu":
            x = x.astype(like.dtype)
    return Tensor(x)


def _scalar_dtype(x: Any, like: np.dtype) -> np.dtype:
    """The dtype a Python/NumPy number takes next to a tensor of dtype ``like``."""
    if like.kind == "f":
        return like
    if isinstance(x, (float, np.floating)):
        return np.dtype(np.float32)
    if like.kind == "b" and not isinstance(x, (bool, np.bool_)):
        return np.dtype(np.int64)
    return like


def _pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    if isinstance(a, Tensor):
        if not isinstance(b, Tensor):  # two tensors, the common case, skip the call
            b = as_tensor(b, a)
    else:
        a = as_tensor(a, b)
    # Same array type means same device; only mixed types (numpy and cupy, or subclasses) need a look.
    if type(a.data) is not type(b.data) and a.device != b.device:
        raise ValueError(f"operands are on different devices: {a.device} and {b.device}")
    return a, b


# ---- elementwise arithmetic ------------------------------------------------------------------------------

def add(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)

    def backward(g):
        return g, g
    return make_result(a.data + b.data, (a, b), backward, "add")


def sub(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)

    def backward(g):
        return g, -g
    return make_result(a.data - b.data, (a, b), backward, "sub")


def mul(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)
    ad, bd = a.data, b.data

    def backward(g):
        return (g * bd if a.requires_grad else None), (g * ad if b.requires_grad else None)
    return make_result(ad * bd, (a, b), backward, "mul")


def div(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)
    ad, bd = a.data, b.data
    out = ad / bd

    def backward(g):
        ga = g / bd if a.requires_grad else None
        gb = -g * out / bd if b.requires_grad else None
        return ga, gb
    return make_result(out, (a, b), backward, "div")


def neg(a: Tensor) -> Tensor:
    def backward(g):
        return (-g,)
    return make_result(-a.data, (a,), backward, "neg")


def pow(a: Tensor, exponent: float) -> Tensor:
    """a ** p for a scalar p: d/da = p a^(p-1)."""
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError(f"pow takes a scalar exponent, got {type(exponent).__name__}")
    ad = a.data
    # in a float tensor's dtype, so float32 stays float32; an integer tensor must not truncate 0.5 to 0
    p = ad.dtype.type(exponent) if ad.dtype.kind == "f" else exponent

    def backward(g):
        if p == 0:  # d/da a^0 = 0 everywhere (0 * 0^-1 would be NaN at a = 0)
            return (g * 0,)
        return (g * p * ad ** (p - 1),)
    return make_result(ad ** p, (a,), backward, "pow")


def exp(a: Tensor) -> Tensor:
    xp = array_module(a.data)
    out = xp.exp(a.data)

    def backward(g):
        return (g * out,)
    return make_result(out, (a,), backward, "exp")


def log(a: Tensor) -> Tensor:
    xp = array_module(a.data)
    ad = a.data

    def backward(g):
        return (g / ad,)
    return make_result(xp.log(ad), (a,), backward, "log")


def tanh(a: Tensor) -> Tensor:
    xp = array_module(a.data)
    out = xp.tanh(a.data)

    def backward(g):
        return (g * (1 - out * out),)
    return make_result(out, (a,), backward, "tanh")


def sigmoid(a: Tensor) -> Tensor:
    xp = array_module(a.data)
    # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    half = a.data.dtype.type(0.5)
    out = half * (1 + xp.tanh(half * a.data))

    def backward(g):
        return (g * out * (1 - out),)
    return make_result(out, (a,), backward, "sigmoid")


def relu(a: Tensor) -> Tensor:
    xp = array_module(a.data)
    ad = a.data
    out = xp.maximum(ad, 0)

    def backward(g):
        return (g * (ad > 0),)
    return make_result(out, (a,), backward, "relu")


# ---- matmul ------------------------------------------------------------------------------------------------

def matmul(a: Any, b: Any) -> Tensor:
    """a @ b with numpy's rules: 1-D operands are promoted, leading (batch) axes broadcast.

    A sparse ``a`` (a tapegrad.CSR) makes this ``spmm(a, b)``.
    """
    from ..kernels.csr import CSR
    if isinstance(a, CSR):
        from .sparse import spmm
        return spmm(a, b)
    a, b = _pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs operands with at least one dimension; use * for scalars")
    if a.ndim == 1:
        out_shape = b.shape[:-2] + (b.shape[-1],) if b.ndim > 1 else ()  # vector . vector is a 0-d scalar
        return reshape(matmul(reshape(a, (1, -1)), b), out_shape)
    if b.ndim == 1:
        return reshape(matmul(a, reshape(b, (-1, 1))), a.shape[:-1])
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not match ({a.shape[-1]} != {b.shape[-2]})")
    xp = array_module(a.data)
    ad, bd = a.data, b.data

    def backward(g):
        ga = g @ xp.swapaxes(bd, -1, -2) if a.requires_grad else None
        gb = xp.swapaxes(ad, -1, -2) @ g if b.requires_grad else None
        return ga, gb
    return make_result(ad @ bd, (a, b), backward, "matmul")


# ---- reductions ---------------------------------------------------------------------------------------------

def _norm_axes(axis: Any, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        # a 0-d tensor accepts axis 0 or -1, as in torch, and has nothing to reduce
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
        if ndim:
            out.append(ax % ndim)
    return tuple(sorted(set(out)))


def sum(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    xp = array_module(a.data)
    axes = _norm_axes(axis, a.ndim)
    shape = a.shape
    kept = tuple(1 if i in axes else s for i, s in enumerate(shape))

    def backward(g):
        return (xp.broadcast_to(g.reshape(kept), shape),)
    return make_result(a.data.sum(axis=axes, keepdims=keepdims), (a,), backward, "sum")


def mean(a: Tensor, axis: Any = None, keepdims: bool = False) -> Tensor:
    axes = _norm_axes(axis, a.ndim)
    n = 1
    for ax in axes:
        n *= a.shape[ax]
    if n == 0:
        raise ValueError(f"mean over an empty axis of a tensor of shape {a.shape}")
    # div, not mul by 1/n: an integer tensor's mean is a float (1/n in its dtype would be 0)
    return div(sum(a, axes, keepdims), n)


# ---- shapes and indexing ------------------------------------------------------------------------------------

def reshape(a: Tensor, shape: int | Sequence[int]) -> Tensor:
    old = a.shape
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)

    def backward(g):
        return (g.reshape(old),)
    return make_result(a.data.reshape(tuple(shape)), (a,), backward, "reshape")


def transpose(a: Tensor, axes: Sequence[int] | None = None) -> Tensor:
    """Reverse the axes (``a.T``), or permute them as ``axes`` says (numpy's rule; negative axes allowed).

    ``axes`` is a full permutation, never torch's pair of dims to swap: on a 2-D tensor ``(0, 1)``
    would mean opposite things under the two rules, so only numpy's is accepted.
    """
    xp = array_module(a.data)
    nd = a.ndim
    if axes is None:
        axes = tuple(reversed(range(nd)))
    axes = tuple(axes)
    if any(not -max(nd, 1) <= int(ax) < max(nd, 1) for ax in axes):
        raise ValueError(f"transpose axes {axes} are out of range for a tensor with {nd} dimensions")
    axes = tuple(int(ax) % nd for ax in axes) if nd else axes
    if sorted(axes) != list(range(nd)):
        raise ValueError(f"transpose axes {axes} are not a permutation of the {nd} axes (numpy's rule: "
                         f"to swap two axes, list all of them)")
    inverse = tuple(int(i) for i in np.argsort(axes))

    def backward(g):
        return (xp.transpose(g, inverse),)
    return make_result(xp.transpose(a.data, axes), (a,), backward, "transpose")


def _is_basic_index(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer)) for k in keys)


def getitem(a: Tensor, key: Any) -> Tensor:
    """a[key]; the backward scatters grad_out back, adding where an index repeats."""
    if isinstance(key, Tensor):
        key = key.data
    elif isinstance(key, tuple):
        key = tuple(k.data if isinstance(k, Tensor) else k for k in key)
    xp = array_module(a.data)
    basic = _is_basic_index(key)
    shape, dtype = a.shape, a.dtype

    def backward(g):
        full = xp.zeros(shape, dtype=dtype)
        if basic:
            full[key] = g
        else:
            xp.add.at(full, key, g)
        return (full,)
    return make_result(a.data[key], (a,), backward, "getitem")


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    xp = array_module(tensors[0].data)
    sizes = [t.shape[axis] for t in tensors]
    bounds = np.cumsum(sizes)[:-1]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=axis))
    return make_result(xp.concatenate([t.data for t in tensors], axis=axis), tuple(tensors), backward, "concat")


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    xp = array_module(tensors[0].data)
    n = len(tensors)

    def backward(g):
        return tuple(xp.take(g, i, axis=axis) for i in range(n))
    return make_result(xp.stack([t.data for t in tensors], axis=axis), tuple(tensors), backward, "stack")


def split(a: Tensor, sections: int | Sequence[int], axis: int = 0) -> tuple[Tensor, ...]:
    """Split along ``axis`` into ``sections`` equal parts, or into parts of the listed sizes."""
    length = a.shape[axis]
    if isinstance(sections, (int, np.integer)):
        if sections <= 0 or length % sections:
            raise ValueError(f"cannot split an axis of length {length} into {sections} equal parts")
        sizes = [length // sections] * int(sections)
    else:
        sizes = list(sections)
        if builtins.sum(sizes) != length:
            raise ValueError(f"split sizes {sizes} do not add up to the axis length {length}")
    out, start = [], 0
    index = [slice(None)] * a.ndim
    for s in sizes:
        index[axis] = slice(start, start + s)
        out.append(getitem(a, tuple(index)))
        start += s
    return tuple(out)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a`` where ``cond`` holds, else ``b``; ``cond`` is a boolean array (no gradient)."""
    if isinstance(cond, Tensor):
        cond = cond.data
    a, b = _pair(a, b)
    xp = array_module(a.data)
    cond = xp.asarray(cond, dtype=bool)
    zero = a.data.dtype.type(0)

    def backward(g):
        return xp.where(cond, g, zero), xp.where(cond, zero, g)
    return make_result(xp.where(cond, a.data, b.data), (a, b), backward, "where")


def masked_fill(a: Tensor, mask: Any, value: float) -> Tensor:
    """``a`` with ``value`` where ``mask`` is true; no gradient flows to the filled places."""
    return where(mask, value, a)


# ---- softmax family -----------------------------------------------------------------------------------------

def softmax(a: Tensor, axis: int = -1) -> Tensor:
    xp = array_module(a.data)
    z = a.data - a.data.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    out = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
    return make_result(out, (a,), backward, "softmax")


def log_softmax(a: Tensor, axis: int = -1) -> Tensor:
    xp = array_module(a.data)
    z = a.data - a.data.max(axis=axis, keepdims=True)
    out = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
    return make_result(out, (a,), backward, "log_softmax")


# ---- dtype / device ------------------------------------------------------------------------------------------

def to(a: Tensor, device_or_dtype: Any) -> Tensor:
    """Move to a device or cast to a float dtype; gradients flow back to the original."""
    if isinstance(device_or_dtype, str):
        device = check_device(device_or_dtype)
        src = a.device
        if device == src:
            return a

        def backward(g):
            return (to_device(g, src),)
        return make_result(to_device(a.data, device), (a,), backward, "to_device")
    dtype = np.dtype(device_or_dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"to() casts to float32 or float64, got {dtype}")
    if dtype == a.dtype:
        return a
    src_dtype = a.dtype

    def backward(g):
        return (g.astype(src_dtype),)
    return make_result(a.data.astype(dtype), (a,), backward, "cast")

