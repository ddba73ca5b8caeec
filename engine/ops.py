"""Differentiable array ops: each forward with its backward (the vector-Jacobian product) beside it.

Every op takes Tensors (or numbers / arrays, treated as constants), computes its output with the
array module of its input (numpy or cupy), and returns ``make_result(out, parents, backward, name)``.
``backward(grad_out)`` returns one gradient per parent; broadcasting is undone by the tape walk.
"""
from __future__ import annotations

import builtins
from typing import Any, Sequence

import numpy as np

from .backend import array_module, check_device, is_cupy, to_device
from .tensor import Tensor, _to_array, make_result, unbroadcast

_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_BOOL = np.dtype(bool)
_NUMBERS = (int, float, np.integer, np.floating, np.bool_)  # bool is an int


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """Tensors pass through; numbers, lists and arrays become constants (arrays are not copied).

    With ``like``, ``x`` is the other operand of a binary op with ``like`` and comes back in the dtype
    of their result (see :func:`result_dtype`).
    """
    if isinstance(x, Tensor):
        return x
    if like is not None:
        t = _pair(like, x)[1]
        if isinstance(t.data, np.generic):  # a number beside a GPU tensor (see _number): a 0-d array there
            t = Tensor(array_module(like.data).asarray(t.data))
        return t
    return Tensor(_operand_array(x, "operand"))


def _operand_array(x: Any, name: str) -> Any:
    """``x`` (a number, list or array) as an array of real numbers, or a TypeError naming ``name``."""
    if isinstance(x, np.ndarray) or is_cupy(x):
        arr = x
    elif isinstance(x, (_NUMBERS, list, tuple)):
        arr = _to_array(x, None)
    else:
        raise TypeError(f"{name} must be a Tensor, an array or a number, got {type(x).__name__}")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: tapegrad tensors hold real numbers or booleans, got dtype {arr.dtype}")
    return arr


def _input(a: Any, op: str) -> Tensor:
    """The tensor argument of a unary op or reduction: Tensors pass, numbers and arrays become constants."""
    if isinstance(a, Tensor):
        return a
    return Tensor(_operand_array(a, f"{op}: the input"))


def _float_data(a: Tensor) -> Any:
    """The data of ``a`` for a float-valued op (exp, log, softmax, ...): integers and bools become float32,
    torch's default dtype. Integer tensors never require grad, so nothing flows back through the cast."""
    d = a.data
    return d if d.dtype.kind == "f" else d.astype(_F32)


# ---- type promotion (torch's rules) ------------------------------------------------------------------------

def _promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """torch.promote_types: a float beats any integer or bool as it is (int64 with float32 is float32);
    otherwise numpy's lattice, which agrees with torch's for floats, integers and bools."""
    if a == b:
        return a
    if a.kind == "f" and b.kind != "f":
        return a
    if b.kind == "f" and a.kind != "f":
        return b
    return np.promote_types(a, b)


def _combine(higher: np.dtype | None, lower: np.dtype | None) -> np.dtype | None:
    """torch's combine_categories: a lower-priority operand only counts when its category (bool < integer
    < float) is above the higher-priority one's."""
    if higher is None:
        return lower
    if lower is None or higher.kind == "f":
        return higher
    if higher.kind == "b" or lower.kind == "f":
        return _promote(higher, lower)
    return higher


def _scalar_dtype(x: Any) -> np.dtype:
    """The dtype a Python or numpy number stands for in promotion (torch's wrapped numbers)."""
    if isinstance(x, (bool, np.bool_)):
        return _BOOL
    if isinstance(x, (int, np.integer)):
        return _I64
    return _F32  # a float: torch's default dtype


def result_dtype(*operands: Any) -> np.dtype:
    """The dtype of an elementwise op on ``operands`` (Tensors, arrays, numbers) by torch's rules.

    Three priorities: tensors/arrays with dimensions, then 0-d ones, then numbers; each group promotes
    within itself, and a lower group only raises the category (int64 tensor * 0.5 -> float32; float32
    tensor * 0-d float64 -> float32; int / int is left to the caller). Integer with float gives that
    float (int64 + float32 -> float32), never numpy's float64.
    """
    groups: list = [None, None, None]  # numbers, 0-d, dimensioned
    for x in operands:
        _, dt, g = _operand(x)
        groups[g] = dt if groups[g] is None else _promote(groups[g], dt)
    return _combine(groups[2], _combine(groups[1], groups[0]))


def _operand(x: Any) -> tuple:
    """(data, dtype, priority) of an operand: 2 for a dimensioned tensor or array, 1 for a 0-d one, 0 for
    a number (whose data stays the number)."""
    if isinstance(x, Tensor):
        d = x.data
        return d, d.dtype, (2 if d.ndim else 1)
    if isinstance(x, _NUMBERS):
        return x, _scalar_dtype(x), 0
    d = _operand_array(x, "operand")
    return d, d.dtype, (2 if d.ndim else 1)


_PLANS: dict = {}  # (dtype, priority, dtype, priority) -> (result dtype, cast first?, cast second?)


def _plan(da: np.dtype, ga: int, db: np.dtype, gb: int) -> tuple:
    """What a binary op on these operands does: memoised, a few hundred keys at most (real dtypes x 3)."""
    key = (da, ga, db, gb)
    plan = _PLANS.get(key)
    if plan is None:
        for dt in (da, db):
            if dt.kind not in "biuf":
                raise TypeError(f"tapegrad tensors hold real numbers or booleans; an operand has dtype {dt}")
        groups: list = [None, None, None]
        for dt, g in ((da, ga), (db, gb)):
            groups[g] = dt if groups[g] is None else _promote(groups[g], dt)
        target = _combine(groups[2], _combine(groups[1], groups[0]))
        # an operand is cast only where numpy's own promotion would not land on torch's result
        plan = _PLANS[key] = (target, np.promote_types(da, target) != target,
                              np.promote_types(db, target) != target)
    return plan


def _cast(t: Tensor, dtype: np.dtype) -> Tensor:
    """``t`` in ``dtype``: differentiably when it requires grad (its grad comes back in its own dtype)."""
    if t.requires_grad:
        return to(t, dtype)
    return Tensor(t.data.astype(dtype))


def _pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """Both operands of a binary op as Tensors on one device, in torch's result dtype."""
    if isinstance(a, Tensor):
        ad = a.data
        if isinstance(b, Tensor):
            bd = b.data
            # the common case: one dtype and one array type (so one device); nothing to decide
            if ad.dtype is bd.dtype and type(ad) is type(bd):
                return a, b
        elif isinstance(b, (int, float)) and ad.dtype.kind == "f":
            # a float tensor and a Python number: the number takes the tensor's dtype
            return a, _number(b, ad.dtype, ad)
    elif isinstance(a, (int, float)) and isinstance(b, Tensor) and b.data.dtype.kind == "f":
        return _number(a, b.data.dtype, b.data), b
    return _promote_pair(a, b)


def _number(x: Any, dtype: np.dtype, ref: Any) -> Tensor:
    """The constant operand for the number ``x`` beside the array ``ref``, in ``dtype``.

    On the CPU a 0-d array. On the GPU a numpy scalar, which cupy hands to the kernel as an argument: a
    0-d device array would cost a host-to-device copy for every ``x * 0.5``. The Tensor around it only
    ever sits in an op's parents (it never requires grad, so no gradient is made for it).
    """
    if type(ref) is np.ndarray or not is_cupy(ref):  # numpy is faster with a 0-d array than a numpy scalar
        return Tensor(np.asarray(x, dtype=dtype))
    t = Tensor.__new__(Tensor)
    t.data = dtype.type(x)
    t._grad = None
    t._node = None
    t.requires_grad = False
    return t


def _promote_pair(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """The general case of :func:`_pair`: numbers, arrays, mixed dtypes, mixed devices."""
    a_data, a_dtype, a_prio = _operand(a)
    b_data, b_dtype, b_prio = _operand(b)
    target, cast_a, cast_b = _plan(a_dtype, a_prio, b_dtype, b_prio)
    # the array that decides the device: a tensor's, else an array operand's (numbers have none)
    ref = a_data if isinstance(a, Tensor) else b_data if isinstance(b, Tensor) else a_data if a_prio else b_data
    a = _promoted(a, a_data, target, cast_a, ref)
    b = _promoted(b, b_data, target, cast_b, ref)
    if type(a.data) is not type(b.data) and a.device != b.device and not isinstance(b.data, np.generic) \
            and not isinstance(a.data, np.generic):  # a number beside a GPU array stays a host scalar
        raise ValueError(f"operands are on different devices: {a.device} and {b.device}")
    return a, b


def _promoted(x: Any, data: Any, target: np.dtype, cast: bool, ref: Any) -> Tensor:
    if isinstance(x, Tensor):
        return _cast(x, target) if cast else x
    if isinstance(x, _NUMBERS):
        return _number(data, target, ref)
    if cast:  # a constant array
        data = data.astype(target)
    if is_cupy(ref) and not is_cupy(data):
        data = to_device(data, "cuda")  # host constants follow a GPU tensor
    return Tensor(data)


# ---- elementwise arithmetic ------------------------------------------------------------------------------

def add(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)

    def backward(g):
        return g, g
    return make_result(a.data + b.data, (a, b), backward, "add", (), ())  # reads no data


def _is_bool(x: Any) -> bool:
    d = getattr(x, "dtype", None)
    return isinstance(x, (bool, np.bool_)) or (d is not None and d == _BOOL)


def sub(a: Any, b: Any) -> Tensor:
    if _is_bool(a) or _is_bool(b):  # numpy would do int arithmetic on True/False; torch refuses, and so do we
        raise TypeError("subtraction with a bool operand is not supported (as in torch); use ~ or "
                        "logical_xor on masks, or convert them to a number type first")
    a, b = _pair(a, b)

    def backward(g):
        return g, -g
    return make_result(a.data - b.data, (a, b), backward, "sub", reads=())


def mul(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)
    ad, bd = a.data, b.data
    # the factors that need a gradient, as at the forward: the writes checked below follow from these, so
    # a leaf switched to requires_grad afterwards must not get a gradient from values not checked
    ga, gb = a.requires_grad, b.requires_grad

    def backward(g):
        return (g * bd if ga else None), (g * ad if gb else None)
    # each factor's gradient reads the other (inlined: mul is the hottest op of a recorded chain)
    reads = ((b, a) if gb else (b,)) if ga else (a,)
    return make_result(ad * bd, (a, b), backward, "mul", (), reads)


def _other_reads(a: Tensor, b: Tensor) -> tuple:
    """The parents a product's backward reads: each one's gradient needs the other's data."""
    if a.requires_grad:
        return (b, a) if b.requires_grad else (b,)
    return (a,)


def div(a: Any, b: Any) -> Tensor:
    a, b = _pair(a, b)
    ad, bd = a.data, b.data
    if ad.dtype.kind != "f" and bd.dtype.kind != "f":  # true division of integers: float32, as torch
        ad, bd = ad.astype(_F32), bd.astype(_F32)
    out = ad / bd

    def backward(g):
        ga = g / bd if a.requires_grad else None
        gb = -g * out / bd if b.requires_grad else None
        return ga, gb
    return make_result(out, (a, b), backward, "div", saved=(out,), reads=(b,))  # b's grad reads the quotient


def neg(a: Tensor) -> Tensor:
    a = _input(a, "neg")
    if a.dtype == _BOOL:
        raise TypeError("negation of a bool tensor is not supported (as in torch); use ~ on the mask")

    def backward(g):
        return (-g,)
    return make_result(-a.data, (a,), backward, "neg", reads=())


def pow(a: Any, exponent: Any) -> Tensor:
    """a ** p: d/da = p a^(p-1); with a tensor exponent also d/dp = a^p ln a (see :func:`_pow_tensor`)."""
    if not isinstance(exponent, _NUMBERS):
        if isinstance(exponent, (Tensor, np.ndarray, list, tuple)) or is_cupy(exponent):
            return _pow_tensor(a, exponent)
        raise TypeError(f"pow takes a real exponent (a number or a tensor), got {type(exponent).__name__}")
    a = _input(a, "pow")
    ad = a.data
    if ad.dtype.kind != "f" and isinstance(exponent, (float, np.floating)):
        ad = ad.astype(_F32)  # int ** 0.5 is float32, as torch; int ** 2 stays integer
    # in a float tensor's dtype, so float32 stays float32; an integer tensor must not truncate 0.5 to 0
    p = ad.dtype.type(exponent) if ad.dtype.kind == "f" else exponent

    def backward(g):
        if p == 0:  # d/da a^0 = 0 everywhere (0 * 0^-1 would be NaN at a = 0)
            return (g * 0,)
        return (g * p * ad ** (p - 1),)
    return make_result(ad ** p, (a,), backward, "pow")


def _pow_tensor(a: Any, b: Any) -> Tensor:
    """a ** b elementwise, either side a tensor (``2 ** x``, ``x ** y``), promoted as the binary ops.

    d/da = b a^(b-1) (0 where b = 0); d/db = a^b ln a (0 where a = 0 and b >= 0), torch's conventions
    at the points where the formulas are 0 * inf."""
    a, b = _pair(a, b)
    ad, bd = a.data, b.data
    if ad.dtype.kind != "f" and bd.dtype.kind != "f" and (bd < 0).any():
        raise ValueError("integers to negative integer powers are not allowed (as in torch)")
    out = ad ** bd

    def backward(g):
        ga = gb = None
        with np.errstate(divide="ignore", invalid="ignore"):  # the 0 * inf points are set just below
            if a.requires_grad:
                ga = g * bd * ad ** (bd - 1)
                ga = array_module(ga).where(bd == 0, 0, ga)
            if b.requires_grad:
                log_a = np.log(ad) if isinstance(ad, np.generic) else array_module(ad).log(ad)  # a number: see _number
                gb = g * out * log_a
                gb = array_module(gb).where((ad == 0) & (bd >= 0), 0, gb)
        return ga, gb
    return make_result(out, (a, b), backward, "pow", saved=(out,))


def floor_divide(a: Any, b: Any) -> Tensor:
    """a // b, rounded towards minus infinity (numpy's and torch's ``//``). Not differentiable: a
    backward through it raises, as torch's does."""
    a, b = _pair(a, b)

    def backward(g):
        raise RuntimeError("the derivative of floor division (//) is not implemented, as in torch; compute "
                           "it under tg.no_grad() or from detached tensors")
    return make_result(a.data // b.data, (a, b), backward, "floor_divide")


def abs(a: Tensor) -> Tensor:
    """|a|: d/da = sign(a), 0 at 0 (torch's subgradient)."""
    a = _input(a, "abs")
    ad = a.data
    xp = array_module(ad)

    def backward(g):
        return (g * xp.sign(ad),)
    return make_result(xp.abs(ad), (a,), backward, "abs")


def sqrt(a: Tensor) -> Tensor:
    """a^(1/2): d/da = 1 / (2 sqrt(a)) (inf at 0, as torch)."""
    a = _input(a, "sqrt")
    xp = array_module(a.data)
    out = xp.sqrt(_float_data(a))

    def backward(g):
        with np.errstate(divide="ignore"):
            return (g / (2 * out),)
    return make_result(out, (a,), backward, "sqrt", saved=(out,), reads=())


def exp(a: Tensor) -> Tensor:
    a = _input(a, "exp")
    xp = array_module(a.data)
    out = xp.exp(_float_data(a))

    def backward(g):
        return (g * out,)
    return make_result(out, (a,), backward, "exp", saved=(out,), reads=())


def log(a: Tensor) -> Tensor:
    a = _input(a, "log")
    xp = array_module(a.data)
    ad = _float_data(a)

    def backward(g):
        return (g / ad,)
    return make_result(xp.log(ad), (a,), backward, "log")


def tanh(a: Tensor) -> Tensor:
    a = _input(a, "tanh")
    xp = array_module(a.data)
    out = xp.tanh(_float_data(a))

    def backward(g):
        return (g * (1 - out * out),)
    return make_result(out, (a,), backward, "tanh", saved=(out,), reads=())


def sigmoid(a: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), accurate over the whole range: with e = exp(-|x|) (never overflows),
    1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0 (no cancellation, unlike 0.5 * (1 + tanh(x / 2)),
    which is exactly 0 below x = -17 in float32)."""
    a = _input(a, "sigmoid")
    ad = _float_data(a)
    xp = array_module(ad)
    e = xp.abs(ad)
    if not ad.ndim:
        e = xp.asarray(e)            # numpy gives a 0-d input's result as a scalar; out= needs an array
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    out = xp.maximum(e, ad >= 0)     # the numerator, branch-free: e where x < 0, 1 where x >= 0 (NaN stays)
    e += 1
    out /= e

    def backward(g):
        return (g * out * (1 - out),)
    return make_result(out, (a,), backward, "sigmoid", saved=(out,), reads=())


def relu(a: Tensor) -> Tensor:
    a = _input(a, "relu")
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
    need_a, need_b = a.requires_grad, b.requires_grad  # as at the forward (see mul)

    def backward(g):
        ga = g @ xp.swapaxes(bd, -1, -2) if need_a else None
        gb = xp.swapaxes(ad, -1, -2) @ g if need_b else None
        return ga, gb
    return make_result(ad @ bd, (a, b), backward, "matmul", reads=_other_reads(a, b))


# ---- reductions ---------------------------------------------------------------------------------------------

def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _axis(axis: Any, ndim: int, op: str) -> int:
    """One axis of an ``ndim``-dimensional tensor, negative counting from the end, or a clear error."""
    if not _is_int(axis):
        raise TypeError(f"{op}: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dimensions")
    return int(axis) % ndim


def _dim(axis: Any, dim: Any, default: Any = None) -> Any:
    """torch's ``dim=`` beside numpy's ``axis=`` (either one, not both), so code written for either runs."""
    if dim is None:
        return default if axis is None else axis
    if axis is not None:
        raise TypeError("give axis= (numpy's name) or dim= (torch's), not both")
    return dim


def _keepdim(keepdims: bool, keepdim: bool | None) -> bool:
    if keepdim is None:
        return keepdims
    if keepdims:
        raise TypeError("give keepdims= (numpy's name) or keepdim= (torch's), not both")
    return bool(keepdim)


def _norm_axes(axis: Any, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    if _is_int(axis):
        axes = (axis,)
    elif isinstance(axis, (tuple, list)) and all(_is_int(ax) for ax in axis):
        axes = tuple(axis)
    else:
        raise TypeError(f"axis must be None, an int or a tuple of ints, got {axis!r}")
    out = []
    for ax in axes:
        # a 0-d tensor accepts axis 0 or -1, as in torch, and has nothing to reduce
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
        if ndim:
            if ax % ndim in out:
                raise ValueError(f"axis {ax % ndim} appears more than once in axis={axis!r}")
            out.append(ax % ndim)
    return tuple(sorted(out))


def sum(a: Tensor, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
        keepdim: bool | None = None) -> Tensor:
    """Sum over ``axis`` (all axes when None); ``dim=`` / ``keepdim=`` are torch's names for the same."""
    a = _input(a, "sum")
    axis, keepdims = _dim(axis, dim), _keepdim(keepdims, keepdim)
    xp = array_module(a.data)
    axes = _norm_axes(axis, a.ndim)
    shape = a.shape
    kept = tuple(1 if i in axes else s for i, s in enumerate(shape))

    def backward(g):
        return (xp.broadcast_to(g.reshape(kept), shape),)
    return make_result(a.data.sum(axis=axes, keepdims=keepdims), (a,), backward, "sum", reads=())


def mean(a: Tensor, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
         keepdim: bool | None = None) -> Tensor:
    """Mean over ``axis`` (all axes when None); ``dim=`` / ``keepdim=`` are torch's names for the same."""
    a = _input(a, "mean")
    axis, keepdims = _dim(axis, dim), _keepdim(keepdims, keepdim)
    axes = _norm_axes(axis, a.ndim)
    n = 1
    for ax in axes:
        n *= a.shape[ax]
    if n == 0:  # over no elements: NaN, as torch's; the input is empty, so its gradient is too
        xp = array_module(a.data)
        shape = a.data.sum(axis=axes, keepdims=keepdims).shape
        out = xp.full(shape, np.nan, dtype=_float_data(a).dtype)
        return make_result(out, (a,), lambda g: (xp.zeros(a.shape, dtype=a.dtype),), "mean")
    # div, not mul by 1/n: an integer tensor's mean is a float (1/n in its dtype would be 0)
    return div(sum(a, axes, keepdims), n)


# ---- shapes and indexing ------------------------------------------------------------------------------------

def unsqueeze(a: Tensor, dim: int) -> Tensor:
    """A new axis of length 1 at ``dim`` (in [-ndim-1, ndim], as torch.unsqueeze)."""
    a = _input(a, "unsqueeze")
    axis = _axis(dim, a.ndim + 1, "unsqueeze")
    return reshape(a, a.shape[:axis] + (1,) + a.shape[axis:])


def squeeze(a: Tensor, dim: Any = None) -> Tensor:
    """Drop axes of length 1: all of them, or those of ``dim`` (an int or a tuple) that have length 1 (an
    axis of another length is kept, as torch.squeeze)."""
    a = _input(a, "squeeze")
    if dim is None:
        axes = {i for i, s in enumerate(a.shape) if s == 1}
    else:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        axes = {_axis(d, builtins.max(a.ndim, 1), "squeeze") for d in dims} if a.ndim else set()
    return reshape(a, tuple(s for i, s in enumerate(a.shape) if not (i in axes and s == 1)))


def flatten(a: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge axes ``start_dim`` .. ``end_dim`` into one (torch.flatten; a 0-d tensor becomes shape (1,))."""
    a = _input(a, "flatten")
    if a.ndim == 0:
        return reshape(a, (1,))
    start, end = _axis(start_dim, a.ndim, "flatten"), _axis(end_dim, a.ndim, "flatten")
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
    merged = 1
    for s in a.shape[start:end + 1]:
        merged *= s
    return reshape(a, a.shape[:start] + (merged,) + a.shape[end + 1:])


def expand(a: Tensor, *sizes: Any) -> Tensor:
    """A broadcast view of ``a`` at ``sizes`` (torch.Tensor.expand: -1 keeps an axis, new axes go in
    front, only length-1 axes grow); the backward sums the gradient back to ``a``'s shape."""
    a = _input(a, "expand")
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    if len(sizes) < a.ndim:
        raise ValueError(f"expand: {len(sizes)} sizes for a tensor with {a.ndim} dimensions")
    lead = len(sizes) - a.ndim
    shape = []
    for i, s in enumerate(sizes):
        if not _is_int(s):
            raise TypeError(f"expand: sizes must be ints, got {sizes!r}")
        old = a.shape[i - lead] if i >= lead else None
        if s == -1:
            if old is None:
                raise ValueError(f"expand: -1 is not allowed for the new leading dimension {i}")
            s = old
        elif old is not None and old != 1 and old != s:
            raise ValueError(f"expand: dimension {i - lead} has length {old}, which cannot become {s} (only "
                             "length-1 dimensions expand)")
        shape.append(int(s))
    old_shape = a.shape
    xp = array_module(a.data)

    def backward(g):
        return (unbroadcast(g, old_shape),)
    return make_result(xp.broadcast_to(a.data, tuple(shape)), (a,), backward, "expand", reads=())


def clone(a: Tensor) -> Tensor:
    """A copy of the data that stays in the graph (torch.clone): the gradient passes through unchanged."""
    a = _input(a, "clone")

    def backward(g):
        return (g,)
    return make_result(a.data.copy(), (a,), backward, "clone", reads=())


def reshape(a: Tensor, shape: int | Sequence[int]) -> Tensor:
    a = _input(a, "reshape")
    old = a.shape
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)

    def backward(g):
        return (g.reshape(old),)
    return make_result(a.data.reshape(tuple(shape)), (a,), backward, "reshape", reads=())


def transpose(a: Tensor, dim0: Any = None, dim1: Any = None) -> Tensor:
    """Swap two axes, as torch: ``transpose(a, 0, 1)`` or ``transpose(a, (0, 1))``, for any ndim.

    With no axes, reverse them all (``a.T``). A full permutation of more (or fewer) than two axes is
    also accepted, with numpy's meaning (``transpose(a, (2, 0, 1))``); :func:`permute` is the torch
    spelling of that.
    """
    a = _input(a, "transpose")
    nd = a.ndim
    if dim1 is not None:
        pair = (dim0, dim1)
    elif dim0 is None:
        return _permute(a, tuple(reversed(range(nd))))
    else:
        pair = tuple(dim0) if isinstance(dim0, (tuple, list)) else (dim0,)
    if len(pair) != 2:
        if len(pair) == nd:
            return permute(a, pair)
        raise ValueError(f"transpose takes two axes to swap (or a full permutation of the {nd} axes), got {pair}")
    d0, d1 = (_axis(d, max(nd, 1), "transpose") for d in pair)
    if nd < 2:
        return _permute(a, tuple(range(nd)))
    axes = list(range(nd))
    axes[d0], axes[d1] = d1, d0
    return _permute(a, tuple(axes))


def permute(a: Tensor, *dims: Any) -> Tensor:
    """Reorder the axes: output axis i is input axis ``dims[i]`` (torch.permute; negative axes allowed).
    ``permute(a, 2, 0, 1)`` and ``permute(a, (2, 0, 1))`` are the same."""
    a = _input(a, "permute")
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    nd = a.ndim
    axes = tuple(_axis(d, max(nd, 1), "permute") for d in dims)
    if sorted(axes) != list(range(nd)):
        raise ValueError(f"permute: {dims} is not a permutation of the {nd} axes")
    return _permute(a, axes)


def _permute(a: Tensor, axes: tuple) -> Tensor:
    xp = array_module(a.data)
    inverse = tuple(int(i) for i in np.argsort(axes))

    def backward(g):
        return (xp.transpose(g, inverse),)
    return make_result(xp.transpose(a.data, axes), (a,), backward, "transpose", reads=())


def _is_basic_index(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer)) for k in keys)


def _index_int(k: Any) -> bool:
    """An integer index as torch reads it: a Python or numpy integer, or a 0-d integer array (tensor)."""
    return _is_int(k) or (getattr(k, "ndim", None) == 0 and k.dtype.kind in "iu")


def _torch_index_steps(key: tuple) -> tuple | None:
    """A key mixing integers with index arrays or masks, as two keys applied one after the other (the
    integers first, then the rest), which is torch's meaning: its integers are basic indexing, so
    ``x[0, :, [1, 2]]`` is ``x[0][:, [1, 2]]``, where numpy would move the indexed axis first.
    None for any other key."""
    ints = arrays = False
    for k in key:
        if _index_int(k):
            ints = True
        elif not (k is None or k is Ellipsis or isinstance(k, slice)):
            arrays = True
    if not (ints and arrays):
        return None
    first, rest = [], []
    for k in key:
        if _index_int(k):
            first.append(k)                      # its axis is gone after the first step
        elif k is None:
            first.append(None)
            rest.append(slice(None))             # the new axis is there in the second step
        elif k is Ellipsis or isinstance(k, slice):
            first.append(k)
            rest.append(k if k is Ellipsis else slice(None))
        else:                                    # an index array or mask: all of it in the second step
            dtype, ndim = (k.dtype, k.ndim) if hasattr(k, "dtype") else (np.asarray(k).dtype, np.ndim(k))
            first.extend([slice(None)] * (ndim if dtype == bool else 1))
            rest.append(k)
    return tuple(first), tuple(rest)


def getitem(a: Tensor, key: Any) -> Tensor:
    """a[key] with torch's meaning; the backward scatters grad_out back, adding where an index repeats."""
    if isinstance(key, Tensor):
        key = key.data
    elif isinstance(key, tuple):
        key = tuple(k.data if isinstance(k, Tensor) else k for k in key)
    basic = _is_basic_index(key)
    if not basic and type(a.data) is np.ndarray and (is_cupy(key) or isinstance(key, tuple)
                                                     and any(map(is_cupy, key))):
        raise ValueError("indices are on cuda but the tensor is on cpu (as torch, index a tensor with ids on "
                         "its own device or on the cpu)")
    if not basic and isinstance(key, tuple):
        steps = _torch_index_steps(key)
        if steps is not None:
            return getitem(getitem(a, steps[0]), steps[1])
    xp = array_module(a.data)
    shape, dtype = a.shape, a.dtype

    def backward(g):
        full = xp.zeros(shape, dtype=dtype)
        if basic:
            full[key] = g
        else:
            xp.add.at(full, key, g)
        return (full,)
    return make_result(a.data[key], (a,), backward, "getitem", reads=())


def _tensor_list(tensors: Any, op: str) -> list:
    if isinstance(tensors, (Tensor, np.ndarray)) or is_cupy(tensors):
        raise TypeError(f"{op} takes a sequence of tensors, got a single {type(tensors).__name__}")
    tensors = list(tensors)
    out = [t if isinstance(t, Tensor) else Tensor(_operand_array(t, f"{op}: tensor {i}"))
           for i, t in enumerate(tensors)]
    if not out:
        raise ValueError(f"{op} needs at least one tensor")
    devices = sorted({t.device for t in out}) if len({type(t.data) for t in out}) > 1 else ()
    if len(devices) > 1:
        if any(isinstance(t, Tensor) and t.device == "cpu" for t in tensors):
            raise ValueError(f"{op}: tensors are on different devices: {' and '.join(devices)}")
        # only host arrays and numbers beside the GPU tensors: they follow them, as in the arithmetic ops
        out = [Tensor(to_device(t.data, "cuda")) if t.device == "cpu" else t for t in out]
    dtype = out[0].dtype
    for t in out[1:]:
        dtype = _promote(dtype, t.dtype)
    # torch.cat's result type (float32 with int64 is float32); a part that requires grad is cast
    # differentiably, so its grad comes back in its own dtype
    return [t if t.dtype == dtype else _cast(t, dtype) for t in out]


def concat(tensors: Sequence[Tensor], axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Join along an existing axis (default 0; torch.cat, with ``dim=``)."""
    axis = _dim(axis, dim, 0)
    tensors = _tensor_list(tensors, "concat")
    for i, t in enumerate(tensors):
        if t.ndim == 0:
            raise ValueError(f"concat: tensor {i} is 0-d, and 0-d tensors cannot be concatenated (use stack)")
    axis = _axis(axis, tensors[0].ndim, "concat")
    xp = array_module(tensors[0].data)
    sizes = [t.shape[axis] if t.ndim > axis else 0 for t in tensors]
    bounds = np.cumsum(sizes)[:-1]

    def backward(g):
        return tuple(xp.split(g, bounds, axis=axis))
    return make_result(xp.concatenate([t.data for t in tensors], axis=axis), tuple(tensors), backward, "concat",
                       reads=())


def stack(tensors: Sequence[Tensor], axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Join along a new axis (default 0; torch.stack, with ``dim=``)."""
    axis = _dim(axis, dim, 0)
    tensors = _tensor_list(tensors, "stack")
    axis = _axis(axis, tensors[0].ndim + 1, "stack")
    xp = array_module(tensors[0].data)
    n = len(tensors)

    def backward(g):
        return tuple(xp.take(g, i, axis=axis) for i in range(n))
    return make_result(xp.stack([t.data for t in tensors], axis=axis), tuple(tensors), backward, "stack", reads=())


def split(a: Tensor, split_size: int | Sequence[int], axis: int | None = None, *,
          dim: int | None = None) -> tuple[Tensor, ...]:
    """Split along ``axis`` (default 0; torch's ``dim=``) as torch.split: an int is the size of each
    chunk (the last one may be smaller), a list gives the size of every part (non-negative, adding up
    to the axis length)."""
    axis = _dim(axis, dim, 0)
    a = _input(a, "split")
    if a.ndim == 0:
        raise ValueError("split: cannot split a 0-d tensor")
    axis = _axis(axis, a.ndim, "split")
    length = a.shape[axis]
    if _is_int(split_size):
        if split_size < 0 or (split_size == 0 and length):
            raise ValueError(f"split: split_size must be a positive int (0 only for an empty axis), got {split_size}")
        n = int(split_size)
        sizes = [n] * (length // n) + ([length % n] if length % n else []) if length else [0]
    elif isinstance(split_size, (tuple, list)) and all(_is_int(s) for s in split_size):
        sizes = [int(s) for s in split_size]
        if any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes must be non-negative, got {sizes}")
        if builtins.sum(sizes) != length:
            raise ValueError(f"split: sizes {sizes} do not add up to the axis length {length}")
    else:
        raise TypeError(f"split: split_size must be an int or a list of ints, got {split_size!r}")
    out, start = [], 0
    index = [slice(None)] * a.ndim
    for s in sizes:
        index[axis] = slice(start, start + s)
        out.append(getitem(a, tuple(index)))
        start += s
    return tuple(out)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a`` where ``cond`` holds, else ``b``; ``cond`` is a boolean mask (no gradient).

    ``a`` and ``b`` promote as the binary ops do (an integer tensor with 0.5 gives float32)."""
    if isinstance(cond, Tensor):
        cond = cond.data
    numbers = isinstance(a, _NUMBERS) and isinstance(b, _NUMBERS)
    a, b = _pair(a, b)
    xp = array_module(b.data if isinstance(a.data, np.generic) else a.data)  # a number: see _number
    if xp is np and is_cupy(cond):
        if not numbers:
            raise ValueError("where: the condition is on cuda and the values on cpu")
        a, b = Tensor(to_device(a.data, "cuda")), Tensor(to_device(b.data, "cuda"))  # as torch.where(mask, 1., 0.)
        xp = array_module(a.data)
    cond = xp.asarray(cond)
    if cond.dtype != bool:
        raise TypeError(f"where: the condition must be a boolean mask, got dtype {cond.dtype} "
                        "(compare it, e.g. cond != 0)")
    zero = a.data.dtype.type(0)

    def backward(g):
        return xp.where(cond, g, zero), xp.where(cond, zero, g)
    return make_result(xp.where(cond, a.data, b.data), (a, b), backward, "where", reads=())


def masked_fill(a: Tensor, mask: Any, value: Any) -> Tensor:
    """``a`` with ``value`` where ``mask`` is true; no gradient flows to the filled places.

    The result keeps ``a``'s dtype, as in torch (``value`` is cast to it). ``value`` is a number or a
    0-d tensor (which gets the gradient of the filled places)."""
    a = _input(a, "masked_fill")
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"masked_fill: value must be a number or a 0-d tensor, got shape {value.shape}")
        if value.dtype != a.dtype:
            value = _cast(value, a.dtype)
    elif isinstance(value, _NUMBERS):
        value = Tensor(array_module(a.data).asarray(value, dtype=a.dtype))
    else:
        raise TypeError(f"masked_fill: value must be a number or a 0-d tensor, got {type(value).__name__}")
    return where(mask, value, a)


# ---- softmax family -----------------------------------------------------------------------------------------

def _normalised_input(a: Any, axis: Any, op: str) -> tuple:
    """(a as a Tensor, its data as floats, the axis checked) for softmax and log_softmax; a 0-d input
    keeps the axis it was given, as numpy's reductions take it."""
    a = _input(a, op)
    ad = _float_data(a)
    return a, ad, (_axis(axis, ad.ndim, op) if ad.ndim else axis)


def softmax(a: Tensor, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """exp(a) / sum(exp(a)) along ``axis`` (default -1; torch's ``dim=``)."""
    a, ad, axis = _normalised_input(a, _dim(axis, dim, -1), "softmax")
    xp = array_module(ad)
    if ad.size == 0:  # nothing to normalise (max over an empty axis has no identity)
        return make_result(ad.copy(), (a,), lambda g: (g,), "softmax")
    z = ad - ad.max(axis=axis, keepdims=True)
    e = xp.exp(z)
    out = e / e.sum(axis=axis, keepdims=True)

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
    return make_result(out, (a,), backward, "softmax", saved=(out,), reads=())


def log_softmax(a: Tensor, axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """a - logsumexp(a) along ``axis`` (default -1; torch's ``dim=``)."""
    a, ad, axis = _normalised_input(a, _dim(axis, dim, -1), "log_softmax")
    xp = array_module(ad)
    if ad.size == 0:
        return make_result(ad.copy(), (a,), lambda g: (g,), "log_softmax")
    z = ad - ad.max(axis=axis, keepdims=True)
    out = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
    return make_result(out, (a,), backward, "log_softmax", saved=(out,), reads=())


# ---- dtype / device ------------------------------------------------------------------------------------------

def to(a: Tensor, device_or_dtype: Any) -> Tensor:
    """Move to a device or cast to a float dtype; gradients flow back to the original."""
    a = _input(a, "to")
    if isinstance(device_or_dtype, str):
        device = check_device(device_or_dtype)
        src = a.device
        if device == src:
            return a

        def backward(g):
            return (to_device(g, src),)
        return make_result(to_device(a.data, device), (a,), backward, "to_device", reads=())
    dtype = np.dtype(device_or_dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"to() casts to float32 or float64, got {dtype}")
    if dtype == a.dtype:
        return a
    src_dtype = a.dtype

    def backward(g):
        return (g.astype(src_dtype),)
    return make_result(a.data.astype(dtype), (a,), backward, "cast", reads=())

