"""Finite-difference checks of the tape's gradients."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .backend import array_module, to_device
from .tensor import Tensor, grad, no_grad


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Tensor], eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3, seed: int = 0) -> bool:
    """Compare the tape's gradients of ``fn`` with central differences, in float64.

    The check is on L = sum(fn(*inputs) * R) for a fixed random R (so every output element counts with
    a distinct weight): for each element x_k of each input that requires grad,
    dL/dx_k ~ (L(x_k + eps) - L(x_k - eps)) / (2 eps). Returns True, or raises AssertionError naming
    the input and the worst element.

    As ``torch.autograd.gradcheck``: the tape's gradients are taken without writing any ``.grad`` (the
    inputs' ``.grad`` are as they were afterwards, also when the check fails); an input given twice is
    one variable (both entries are checked against its total derivative); an input that is not a leaf
    is checked as an independent variable (the walk stops at it). The inputs' data is perturbed in place
    (so ``fn`` may also read them through a closure) and restored.
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"input {i} is a {type(t).__name__}, not a Tensor")
        if t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 inputs; input {i} is {t.dtype}")
        if t.requires_grad and not t.data.flags.c_contiguous:
            raise ValueError(f"input {i} must be C-contiguous for gradcheck")
        if t.requires_grad and not getattr(t.data.flags, "writeable", True):
            raise ValueError(f"input {i} is a read-only array (a broadcast view?); pass a copy to gradcheck")
    checked = [i for i, t in enumerate(inputs) if t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    variables = list({id(inputs[i]): inputs[i] for i in checked}.values())  # an input given twice is one
    saved = [(t, t.grad) for t in variables]
    try:
        return _check(fn, inputs, checked, variables, eps, atol, rtol, seed)
    finally:
        for t, g in saved:  # fn may itself call backward(); the caller's .grad comes back as it was
            t.grad = g


def _check(fn, inputs, checked, variables, eps, atol, rtol, seed) -> bool:
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"fn must return a Tensor, got {type(out).__name__}")
    xp = array_module(out.data)
    rng = np.random.default_rng(seed)
    weights = xp.asarray(rng.standard_normal(out.shape))

    def loss() -> float:
        with no_grad():
            return float((fn(*inputs).data * weights).sum())

    tape = dict(zip(map(id, variables), grad(out, variables, weights, stop_at_inputs=True))) if out.requires_grad else {}
    del out
    numeric_of = {}
    for t in variables:
        numeric = np.zeros(t.shape, dtype=np.float64)
        flat = t.data.reshape(-1)  # a view: writing it perturbs the input in place
        for k in range(flat.size):
            orig = float(flat[k])
            try:
                flat[k] = orig + eps
                up = loss()
                flat[k] = orig - eps
                down = loss()
            finally:
                flat[k] = orig
            numeric.reshape(-1)[k] = (up - down) / (2 * eps)
        numeric_of[id(t)] = numeric
    for i in checked:
        t = inputs[i]
        g = tape.get(id(t))
        analytic = to_device(g, "cpu") if g is not None else np.zeros(t.shape)
        numeric = numeric_of[id(t)]
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if err.size and err.max() > 0:
            k = int(np.argmax(err))
            raise AssertionError(
                f"gradcheck failed for input {i} at flat index {k}: tape {analytic.reshape(-1)[k]:.10g}, "
                f"finite difference {numeric.reshape(-1)[k]:.10g} (atol={atol}, rtol={rtol})")
    return True
