"""Optimisers (SGD, Adam, AdamW) with parameter groups, and gradient clipping.

The update rules follow PyTorch's single-tensor implementations step for step, so the same
hyper-parameters mean the same thing. Updates happen in place on ``p.data`` (numpy or cupy).
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np

from ..engine.backend import array_module
from ..kernels import registry
from ..engine.tensor import Tensor


def _as_groups(params: Any, defaults: dict) -> list[dict]:
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or of dicts, not a single tensor")
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    groups = params if isinstance(params[0], dict) else [{"params": params}]
    out, seen = [], set()
    for g in groups:
        if not isinstance(g, dict) or "params" not in g:
            raise TypeError("each parameter group must be a dict with a 'params' entry")
        unknown = set(g) - set(defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} in a parameter group")
        ps = [p for p in (g["params"] if not isinstance(g["params"], Tensor) else [g["params"]])]
        for p in ps:
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Tensor):
                raise TypeError("pass module.parameters(), not named_parameters(), to an optimizer")
            if not isinstance(p, Tensor) or not p.requires_grad or not p.is_leaf:
                raise TypeError("optimizer parameters must be leaf tensors that require grad")
            if id(p) in seen:
                raise ValueError("a parameter appears in more than one parameter group")
            seen.add(id(p))
        out.append({**defaults, **g, "params": ps})
    return out


class Optimizer:
    """Holds parameter groups (dicts of hyper-parameters with a 'params' list) and per-parameter state."""

    def __init__(self, params: Any, defaults: dict) -> None:
        self.defaults = defaults
        self.param_groups = _as_groups(params, defaults)
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _params_with_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    yield g, p, self.state.setdefault(id(p), {})

    # State in parameter order, for checkpoints: {"<k>.<name>": array} plus step counts.
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        k = 0
        for gi, g in enumerate(self.param_groups):
            for key, value in g.items():
                if key != "params":
                    out[f"group{gi}.{key}"] = np.asarray(value)
            for p in g["params"]:
                for name, value in self.state.get(id(p), {}).items():
                    out[f"param{k}.{name}"] = np.array(value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else value, copy=True)
                k += 1
        return out

    _STATE_NAMES = ("step", "exp_avg", "exp_avg_sq", "momentum_buffer")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Every entry is checked before any is applied, so a
        bad state (unknown key, wrong shape) raises and leaves the optimizer unchanged."""
        self._stage_state_dict(state)()

    def _stage_state_dict(self, state: dict[str, Any]):
        """Check ``state`` and return a function that applies it (and cannot fail)."""
        if not hasattr(state, "items"):
            raise TypeError(f"state must be a mapping of key -> array, got {type(state).__name__}")
        params = [p for g in self.param_groups for p in g["params"]]
        group_updates: list[tuple[int, str, Any]] = []
        new_state: dict[int, dict] = {}
        for key, value in state.items():
            head, _, name = str(key).partition(".")
            m = re.fullmatch(r"(group|param)([0-9]+)", head)
            if m is None:
                raise KeyError(f"unrecognised optimizer state key {key!r}")
            index = m.group(2)
            if m.group(1) == "group":
                gi = int(index)
                if gi >= len(self.param_groups) or name not in self.param_groups[gi] or name == "params":
                    raise KeyError(f"optimizer state has {key!r}, which this optimizer does not know")
                v = np.asarray(value)
                group_updates.append((gi, name, tuple(v.tolist()) if v.ndim else v.item()))
            else:
                k = int(index)
                if k >= len(params):
                    raise KeyError(f"optimizer state has {key!r} but the optimizer has {len(params)} parameters")
                if name not in self._STATE_NAMES:
                    raise KeyError(f"unrecognised optimizer state key {key!r}")
                p = params[k]
                v = np.asarray(value)
                if name == "step":
                    if v.shape != () or v.dtype.kind not in "iu":
                        raise ValueError(f"optimizer state {key!r} must be one integer, got {v.dtype} {v.shape}")
                    new_state.setdefault(id(p), {})[name] = v.astype(np.int64)
                else:
                    if v.shape != p.shape:
                        raise ValueError(f"optimizer state {key!r} has shape {v.shape}, parameter has {p.shape}")
                    if v.dtype.kind not in "fiu":
                        raise ValueError(f"optimizer state {key!r} has non-numeric dtype {v.dtype}")
                    xp = array_module(p.data)
                    new_state.setdefault(id(p), {})[name] = xp.array(v.astype(p.dtype), copy=True)

        def commit() -> None:
            for gi, name, v in group_updates:
                self.param_groups[gi][name] = v
            self.state = new_state
        return commit


class SGD(Optimizer):
    """SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch's rule)."""

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def step(self) -> None:
        for g, p, st in self._params_with_grad():
            grad = p.grad
            if g["weight_decay"]:
                grad = grad + g["weight_decay"] * p.data
            if g["momentum"]:
                buf = st.get("momentum_buffer")
                if buf is None:
                    # an array copy, not grad.copy(): a 0-d numpy result is a scalar with no in-place ops
                    buf = st["momentum_buffer"] = array_module(p.data).array(grad, copy=True)
                else:
                    buf *= g["momentum"]
                    buf += (1 - g["dampening"]) * grad
                grad = grad + g["momentum"] * buf if g["nesterov"] else buf
            p.data -= p.dtype.type(g["lr"]) * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient (PyTorch's Adam)."""

    decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self) -> None:
        for g, p, st in self._params_with_grad():
            xp = array_module(p.data)
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            if "step" not in st:
                st["step"] = np.zeros((), dtype=np.int64)
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
            st["step"] += 1
            step = int(st["step"])
            decoupled = bool(wd) and self.decoupled
            # one kernel per parameter (kernels/*/optim.py), the rule of kernels.reference.adam_step
            registry.call("adam_step", registry.backend_of(p.data), p.data, p.grad, st["exp_avg"], st["exp_avg_sq"],
                          b1, b2, lr / (1 - b1 ** step), math.sqrt(1 - b2 ** step), eps,
                          0.0 if decoupled else wd, 1 - lr * wd if decoupled else 1.0)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


def _named(params: Any) -> list[tuple[str, Tensor]]:
    if isinstance(params, Tensor):
        params = [params]
    items = list(params)
    named = []
    for i, p in enumerate(items):
        if isinstance(p, tuple):
            named.append((str(p[0]), p[1]))
        else:
            named.append((f"parameter {i} (shape {tuple(p.shape)})", p))
    return named


def clip_grad_norm(params: Iterable, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = True) -> float:
    """Scale all gradients together so their joint norm is at most ``max_norm``; returns the norm before.

    ``params``: tensors, or (name, tensor) pairs from ``named_parameters()`` so an error can name the
    culprit. A NaN/Inf gradient raises FloatingPointError naming the parameter (set
    ``error_if_nonfinite=False`` to get a non-finite norm back instead and leave gradients untouched).
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    named = [(n, p) for n, p in _named(params) if p.grad is not None]
    if not named:
        return 0.0
    norms = []
    for name, p in named:
        xp = array_module(p.grad)
        if not bool(xp.isfinite(p.grad).all()):
            if error_if_nonfinite:
                raise FloatingPointError(f"clip_grad_norm: the gradient of {name} is not finite (NaN or Inf)")
            return float("nan")
        g = p.grad.astype(np.float64)
        norms.append(float(xp.abs(g).max()) if math.isinf(norm_type) else float((xp.abs(g) ** norm_type).sum()))
    total = max(norms) if math.isinf(norm_type) else sum(norms) ** (1.0 / norm_type)
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for _, p in named:
            p.grad *= p.grad.dtype.type(coef)
    return total


def clip_grad_value(params: Iterable, clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value]."""
    if clip_value < 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for _, p in _named(params):
        if p.grad is not None:
            xp = array_module(p.grad)
            xp.clip(p.grad, -clip_value, clip_value, out=p.grad)
