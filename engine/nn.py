"""Differentiable ops for training: losses, dropout, embedding lookup. Forward and backward together."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import random as _random
from ..kernels import registry
from .backend import array_module, host_values, is_cupy, to_device
from .ops import _pair, as_tensor, getitem, log_softmax, mean, permute, reshape, where
from .ops import sum as sum_
from .tensor import Tensor, make_result


def _on_logits_device(a: Any, xp, what: str) -> Any:
    """``a`` (a Tensor's data, an array or a list) as an array of the logits' module; GPU ids for host
    logits are refused, as torch refuses tensors on two devices (host ids follow GPU logits)."""
    a = a.data if isinstance(a, Tensor) else a
    if xp is np and is_cupy(a):
        raise ValueError(f"cross_entropy: the {what} are on cuda but the logits are on cpu")
    return xp.asarray(a)


def _int64_ids(a: Any, xp) -> Any:
    """Integer ids as int64, the kernels' id type; an unsigned id above int64's range becomes int64's
    largest value (out of range all the same, where a plain cast would wrap it to a negative id)."""
    if a.dtype == np.int64:
        return a
    if a.dtype == np.uint64:
        a = xp.minimum(a, np.uint64(np.iinfo(np.int64).max))
    return a.astype(np.int64)


def _targets(target: Any, xp) -> Any:
    t = _on_logits_device(target, xp, "targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class ids, got dtype {t.dtype}")
    return _int64_ids(t, xp)


def _row_ids(index: Any, n: int, xp) -> Any:
    """``index`` of cross_entropy as 1-D integer row ids (a boolean mask of length n as the ids it marks),
    or None for all rows. Ids are checked against n by the caller."""
    if index is None:
        return None
    rows = _on_logits_device(index, xp, "row ids (index)")
    if rows.size == 0 and rows.dtype.kind == "f":  # an empty list: no rows, not a float index
        rows = rows.astype(np.int64)
    if rows.ndim != 1:
        raise ValueError(f"index must be 1-D (row ids or a boolean mask), got shape {rows.shape}")
    if rows.dtype == bool:
        if rows.shape != (n,):
            raise ValueError(f"a boolean index must have length {n}, got shape {rows.shape}")
        return xp.flatnonzero(rows)
    if rows.dtype.kind not in "iu":
        raise TypeError(f"index must hold integer row ids or booleans, got dtype {rows.dtype} (the third "
                        "argument is the row subset, not torch's class weight=, which is not supported)")
    return _int64_ids(rows, xp)


def cross_entropy(logits: Tensor, target: Any, index: Any = None, reduction: str = "mean",
                  ignore_index: int = -100, label_smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy with integer targets, fused: loss_n = logsumexp(z_n) - z_n[y_n].

    logits: [N, C]; target: [N] class ids. ``index`` ([M] row ids or a boolean mask of length N) restricts
    the loss to those rows (a GCN's training nodes). Rows whose target is ``ignore_index`` add nothing
    and do not count in the mean. ``reduction``: 'mean', 'sum' or 'none'. ``label_smoothing`` = e mixes
    in the uniform target, as torch's: loss_n = (1 - e) loss_n + e mean_j(-log softmax(z_n)_j).
    As torch also takes them: [C] logits with a 0-d target, and [N, C, d1, ...] with [N, d1, ...] targets.

    Forward and backward are one kernel each (``cross_entropy_fwd`` / ``_bwd`` in the kernel table). The
    forward's counts (rows that count, targets and row ids out of range) come back in one transfer, the
    one host sync of the op (a boolean ``index`` adds the one its row ids need).
    """
    logits = as_tensor(logits)
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float, np.floating)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if logits.dtype.kind != "f":  # as torch: no silent truncation of the loss to an integer
        raise TypeError(f"cross_entropy: logits must be float32 or float64, got dtype {logits.dtype}")
    xp = array_module(logits.data)
    if logits.ndim != 2:
        return _cross_entropy_other_ranks(logits, target, index, reduction, ignore_index, label_smoothing, xp)
    n, c = logits.shape
    if c == 0:
        raise ValueError(f"logits must have at least one class, got shape {logits.shape}")
    y = _targets(target, xp)
    if y.shape != (n,):
        raise ValueError(f"target must have shape ({n},) to match logits {logits.shape}, got {y.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    ids = _row_ids(index, n, xp)
    z = logits.data if logits.data.flags.c_contiguous else xp.ascontiguousarray(logits.data)
    dtype = z.dtype
    backend = registry.backend_of(z)
    m = n if ids is None else ids.size
    loss, zmax, logsum = xp.empty(m, dtype), xp.empty(m, dtype), xp.empty(m, dtype)
    stats = xp.zeros(3, np.int64)
    registry.call("cross_entropy_fwd", backend, z, y, ids, ignore_index, loss, zmax, logsum, stats)
    count, bad_targets, bad_rows = (int(v) for v in to_device(stats, "cpu"))
    if bad_rows:
        raise ValueError(f"index holds row ids outside [0, {n})")
    if bad_targets:
        raise ValueError(f"target holds class ids outside [0, {c})")
    if reduction == "mean":
        if count == 0:
            raise ValueError("cross_entropy with reduction='mean' over no rows (empty index or all ignored)")
        out = loss.sum() / count
    elif reduction == "sum":
        out = loss.sum()
    else:
        out = loss

    def backward(g):
        scale = g / count if reduction == "mean" else g
        grad = xp.empty((m, c), dtype)
        registry.call("cross_entropy_bwd", backend, z, y, ids, zmax, logsum, scale.astype(dtype, copy=False),
                      ignore_index, grad)
        if ids is None:  # every row: nothing to scatter
            return (grad,)
        full = xp.zeros(logits.shape, dtype=dtype)
        xp.add.at(full, ids % n, grad)  # repeated ids add up
        return (full,)
    result = make_result(xp.asarray(out, dtype=dtype), (logits,), backward, "cross_entropy")
    if label_smoothing:
        result = _smoothed(result, logits, y, ids, n, count, reduction, ignore_index, label_smoothing)
    return result


def _smoothed(loss: Tensor, logits: Tensor, y: Any, ids: Any, n: int, count: int, reduction: str,
              ignore_index: int, e: float) -> Tensor:
    """(1 - e) loss + e times the uniform target's loss, -mean_j log softmax(z)_j per row, reduced as the
    loss is (ignored rows add nothing; the mean is over the rows that count)."""
    at = None if ids is None else ids % n
    rows = logits if at is None else getitem(logits, at)
    kept = (y if at is None else y[at]) != ignore_index
    uniform = where(kept, -mean(log_softmax(rows, axis=1), axis=1), 0.0)
    if reduction == "mean":
        uniform = sum_(uniform) / count
    elif reduction == "sum":
        uniform = sum_(uniform)
    return loss * (1.0 - e) + uniform * e


def _cross_entropy_other_ranks(logits: Tensor, target: Any, index: Any, reduction: str, ignore_index: int,
                               label_smoothing: float, xp) -> Tensor:
    """torch's other shapes, through the 2-D op: one sample [C] with a 0-d target, or [N, C, d1, ..., dk]
    with targets [N, d1, ..., dk] (a class score per position, as a sequence model's [B, C, T])."""
    if logits.ndim == 0:
        raise ValueError("logits must be [C], [N, C] or [N, C, d1, ...], got a 0-d tensor")
    if index is not None:
        raise ValueError(f"index= selects rows of 2-D logits [N, C]; got logits of shape {logits.shape}")
    y = _targets(target, xp)
    c = logits.shape[0 if logits.ndim == 1 else 1]
    want = () if logits.ndim == 1 else (logits.shape[0],) + logits.shape[2:]
    if y.shape != want:
        raise ValueError(f"target must have shape {want} to match logits {logits.shape}, got {y.shape}")
    if logits.ndim == 1:
        rows = reshape(logits, (1, c))
    else:  # the class axis last, then one row per position
        rows = reshape(permute(logits, (0, *range(2, logits.ndim), 1)), (-1, c))
    out = cross_entropy(rows, y.reshape(-1), None, reduction, ignore_index, label_smoothing)
    return reshape(out, want) if reduction == "none" else out


def mse(pred: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean squared error: mean((pred - target)^2), ``target`` of pred's shape.

    ``pred`` and ``target`` promote as the binary ops do (float32 with float64 gives float64, an integer
    with a float gives the float), as torch's mse_loss; two integer operands are a TypeError. A
    ``target`` tensor that requires grad gets the opposite gradient. The mean over no elements is NaN.
    """
    p, t = _pair(pred, target)  # a host target next to a GPU prediction moves to the GPU, as in the ops
    if t.shape != p.shape:
        raise ValueError(f"target shape {t.shape} does not match prediction shape {p.shape}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    d = p.data - t.data
    if d.dtype.kind != "f":
        raise TypeError(f"mse needs a float prediction or target, got dtypes {p.dtype} and {t.dtype}")
    xp = array_module(d)
    sq = d * d
    if reduction == "none":
        out = sq
    elif reduction == "sum":
        out = sq.sum()
    else:
        out = sq.sum() / sq.size if sq.size else xp.asarray(np.nan, dtype=d.dtype)
    scale = 2.0 if reduction != "mean" else 2.0 / max(sq.size, 1)

    need_t = t.requires_grad  # as at the forward (see ops.mul)

    def backward(g):
        grad_pred = g * (scale * d)
        return grad_pred, (-grad_pred if need_t else None)
    return make_result(xp.asarray(out, dtype=d.dtype), (p, t), backward, "mse", reads=())  # d, not the inputs


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: zero each element with probability p, scale survivors by 1/(1-p) (identity in eval)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    x = as_tensor(x)
    if not training or p == 0.0:
        return x
    if x.dtype.kind != "f":  # as torch: the scaled survivors are not integers
        raise TypeError(f"dropout: input must be float32 or float64, got dtype {x.dtype}")
    xp = array_module(x.data)
    if p == 1.0:
        mask = xp.zeros(x.shape, dtype=x.dtype)
    else:
        mask = _random.dropout_mask(x.shape, p, x.device, x.dtype)

    def backward(g):
        return (g * mask,)
    return make_result(x.data * mask, (x,), backward, "dropout", reads=())  # the mask, not x


def embedding(weight: Tensor, idx: Any) -> Tensor:
    """Row lookup ``weight[idx]``: [V, D] with integer ids of any shape -> [*idx.shape, D].

    The backward adds each grad row into the row it came from (ids may repeat).
    """
    weight = as_tensor(weight)
    if weight.dtype.kind != "f" and getattr(idx, "dtype", np.dtype(float)).kind == "f":
        raise TypeError("embedding takes (weight, ids): the float table first, unlike torch's "
                        "F.embedding(input, weight)")
    if weight.ndim != 2:
        raise ValueError(f"embedding weight must be 2-D [V, D], got shape {weight.shape}")
    xp = array_module(weight.data)
    ids = idx.data if isinstance(idx, Tensor) else idx
    if not (isinstance(ids, np.ndarray) or is_cupy(ids)):
        ids = np.asarray(ids)
    if ids.size == 0 and ids.dtype.kind == "f":  # an empty list
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding ids must be integers, got dtype {ids.dtype}")
    v, d = weight.shape
    if ids.size:  # checked where the ids are: host ids for a GPU table cost no GPU read
        low, high = host_values(array_module(ids), ids.min(), ids.max())
        if low < 0 or high >= v:
            raise ValueError(f"embedding ids must be in [0, {v}), got range [{low}, {high}]")
    if is_cupy(ids) and xp is np:
        raise ValueError("embedding: the ids are on cuda but the weight is on cpu")
    ids = xp.asarray(ids)

    def backward(g):
        full = xp.zeros((v, d), dtype=weight.dtype)
        xp.add.at(full, ids.reshape(-1), g.reshape(-1, d))
        return (full,)
    return make_result(weight.data[ids], (weight,), backward, "embedding", reads=())  # the ids, not the table
