"""Largest and smallest entries, as torch's ``max`` / ``min`` / ``argmax`` / ``argmin``.

Over the whole tensor, ``max(a)`` is a 0-d tensor whose gradient is shared evenly by the entries that
reach it (torch's rule for ties). Along ``dim``, ``max(a, dim)`` gives ``(values, indices)``, and the
gradient of each value goes to the one entry its index names (the first of equal entries, as numpy's
and torch's argmax pick).
"""
from __future__ import annotations

import builtins
from typing import Any, NamedTuple

import numpy as np

from .backend import array_module
from .ops import _axis, _dim, _input, _keepdim
from .tensor import Tensor, make_result


class MaxMin(NamedTuple):
    """``(values, indices)`` of a reduction along one dimension, as torch's ``torch.return_types.max``."""
    values: Tensor
    indices: Tensor


def max(a: Any, dim: int | None = None, keepdim: bool = False, *, axis: int | None = None,
        keepdims: bool = False) -> Tensor | MaxMin:
    """The largest entry (a 0-d tensor), or with ``dim`` the largest along it and where it is."""
    return _extreme(a, _dim(axis, dim), _keepdim(keepdims, keepdim), "max")


def min(a: Any, dim: int | None = None, keepdim: bool = False, *, axis: int | None = None,
        keepdims: bool = False) -> Tensor | MaxMin:
    """The smallest entry (a 0-d tensor), or with ``dim`` the smallest along it and where it is."""
    return _extreme(a, _dim(axis, dim), _keepdim(keepdims, keepdim), "min")


def argmax(a: Any, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """int64 position of the largest entry: in the flattened tensor without ``dim``, else along it."""
    return _position(a, dim, keepdim, "argmax")


def argmin(a: Any, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """int64 position of the smallest entry: in the flattened tensor without ``dim``, else along it."""
    return _position(a, dim, keepdim, "argmin")


def _extreme(a: Any, dim: int | None, keepdim: bool, op: str) -> Tensor | MaxMin:
    a = _input(a, op)
    ad = a.data
    xp = array_module(ad)
    if dim is None:
        if keepdim:
            raise TypeError(f"{op}() over all entries takes no keepdim; give dim= with it")
        if ad.size == 0:
            raise ValueError(f"{op}() of an empty tensor has no value; give dim= along a non-empty axis")
        out = getattr(xp, op)(ad)

        def backward(g):
            # every entry that reaches the extreme shares the gradient, as torch's (a NaN extreme: the NaNs)
            hit = (ad == out) | (xp.isnan(ad) & xp.isnan(out)) if ad.dtype.kind == "f" else ad == out
            return (g * hit / hit.sum(dtype=g.dtype),)
        return make_result(out, (a,), backward, op)
    axis = _axis(dim, builtins.max(ad.ndim, 1), op)
    if ad.ndim == 0:  # a 0-d tensor along dim 0 / -1: itself, at index 0
        return MaxMin(make_result(ad.copy(), (a,), lambda g: (g,), op), Tensor(xp.zeros((), dtype=np.int64)))
    if ad.shape[axis] == 0:
        raise ValueError(f"{op}(dim={dim}) of a tensor with an empty dimension {axis} has no value")
    idx = getattr(xp, "arg" + op)(ad, axis=axis)
    idx_kept = xp.expand_dims(idx, axis)
    values = xp.take_along_axis(ad, idx_kept, axis=axis)
    shape = ad.shape

    def backward(g):
        full = xp.zeros(shape, dtype=g.dtype)
        xp.put_along_axis(full, idx_kept, g if keepdim else xp.expand_dims(g, axis), axis=axis)
        return (full,)
    values = values if keepdim else values.squeeze(axis)
    indices = Tensor((idx_kept if keepdim else idx).astype(np.int64, copy=False))
    return MaxMin(make_result(values, (a,), backward, op, reads=()), indices)  # the indices, not a's data


def _position(a: Any, dim: int | None, keepdim: bool, op: str) -> Tensor:
    a = _input(a, op)
    ad = a.data
    xp = array_module(ad)
    if ad.size == 0:
        raise ValueError(f"{op}() of an empty tensor has no position")
    if dim is None:
        out = getattr(xp, op)(ad)
        return Tensor(xp.asarray(out, dtype=np.int64).reshape((1,) * ad.ndim if keepdim else ()))
    axis = _axis(dim, builtins.max(ad.ndim, 1), op)
    if ad.ndim == 0:
        return Tensor(xp.zeros((), dtype=np.int64))
    out = getattr(xp, op)(ad, axis=axis, keepdims=keepdim)
    return Tensor(xp.asarray(out, dtype=np.int64))
