"""Optimisers (SGD, Adam, AdamW) with parameter groups, and gradient clipping.

The update rules follow PyTorch's single-tensor implementations step for step, so the same
hyper-parameters mean the same thing. Updates happen in place on ``p.data`` (numpy or cupy).
"""
from __future__ import annotations

import math
import numbers
import re
import warnings
from typing import Any, Callable, Iterable

import numpy as np

from ..engine.backend import array_module, device_of, host_values, is_cupy, to_device
from ..engine.tensor import Tensor, enable_grad, mark_written
from ..kernels import reference, registry
from .module import _zero_grad


def _param_list(g: dict) -> list:
    ps = [g["params"]] if isinstance(g["params"], Tensor) else list(g["params"])
    for p in ps:
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Tensor):
            raise TypeError("pass module.parameters(), not named_parameters(), to an optimizer")
        if not isinstance(p, Tensor):
            raise TypeError(f"an optimizer can only optimize Tensors, got {type(p).__name__}")
        if not p.is_leaf:  # frozen leaves (requires_grad=False) are fine: they never get a grad, so are skipped
            raise ValueError("can't optimize a non-leaf Tensor (the result of an op); optimize the leaves "
                             "it was computed from")
    unique = list({id(p): p for p in ps}.values())
    if len(unique) != len(ps):
        warnings.warn("optimizer contains a parameter group with duplicate parameters; each is kept once "
                      "(as torch does)", UserWarning, stacklevel=4)
    return unique


def _as_group(g: Any, defaults: dict) -> dict:
    """One parameter group: its params checked and de-duplicated, missing options from ``defaults``;
    extra keys (a "name" tag, say) are kept, as in torch."""
    if not isinstance(g, dict) or "params" not in g:
        raise TypeError("each parameter group must be a dict with a 'params' entry")
    return {**defaults, **g, "params": _param_list(g)}


def _as_groups(params: Any, defaults: dict) -> list[dict]:
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or of dicts, not a single tensor")
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    groups = params if isinstance(params[0], dict) else [{"params": params}]
    out: list[dict] = []
    for g in groups:
        _add_group(out, _as_group(g, defaults))
    return out


def _add_group(groups: list[dict], group: dict) -> None:
    seen = {id(p) for g in groups for p in g["params"]}
    if any(id(p) in seen for p in group["params"]):
        raise ValueError("some parameters appear in more than one parameter group")
    groups.append(group)


def _implementation_options(foreach: bool | None, fused: bool | None, differentiable: bool,
                            capturable: bool | None = None) -> dict:
    """torch's keywords that pick one of its implementations of the same update. tapegrad has one (a
    kernel per parameter), so they are checked as torch checks them, kept in the groups, and change nothing.
    ``capturable=None``: the optimiser has no such keyword (torch's SGD)."""
    for name, value, allowed in (("foreach", foreach, (None, False, True)), ("fused", fused, (None, False, True)),
                                 ("capturable", capturable, (None, False, True))):
        if not any(value is a for a in allowed):
            raise TypeError(f"{name} must be one of {allowed}, got {value!r}")
    if differentiable:
        raise NotImplementedError("differentiable=True (backpropagating through the optimizer step) is not "
                                  "supported by tapegrad's optimizers")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")  # torch's message
    options = dict(foreach=foreach, fused=fused, differentiable=False)
    return options if capturable is None else {**options, "capturable": capturable}


# Group options added after checkpoint format 1, with their defaults: state_dict() writes them only when a
# group's value differs, so a checkpoint of a run that does not use them has the same entries as before
# (and loads in earlier versions); foreach & co. change nothing here and are never written.
_OPTIONS_WRITTEN_IF_SET = {"maximize": False}
_OPTIONS_NEVER_WRITTEN = ("foreach", "fused", "capturable", "differentiable")


def _written(key: str, value: Any) -> bool:
    """Whether state_dict() writes the group option ``key``."""
    if key == "params" or key in _OPTIONS_NEVER_WRITTEN:
        return False
    return key not in _OPTIONS_WRITTEN_IF_SET or value != _OPTIONS_WRITTEN_IF_SET[key]


def _signed_grad(group: dict, p: Tensor) -> Any:
    """The gradient the update descends: negated for ``maximize=True`` (exactly, so the update is torch's)."""
    return -p.grad if group.get("maximize", False) else p.grad


class Optimizer:
    """Holds parameter groups (dicts of hyper-parameters with a 'params' list) and per-parameter state.

    As torch: frozen parameters (``requires_grad=False``) and any without a gradient are skipped by
    ``step``; a parameter listed twice in one group is kept once (with a warning); extra group keys
    are kept; ``step(closure)`` re-evaluates the loss first and returns it.
    """

    def __init__(self, params: Any, defaults: dict) -> None:
        self.defaults = defaults
        self.param_groups = _as_groups(params, defaults)
        # keyed by the parameter itself, as torch's: copy.deepcopy / pickle of (model, optimizer) map the
        # keys to the copied parameters (ids would point at the originals), and opt.state[p] works
        self.state: dict[Tensor, dict] = {}

    def add_param_group(self, param_group: dict) -> None:
        """Add a group (e.g. layers unfrozen while fine-tuning); options it lacks come from the defaults."""
        _add_group(self.param_groups, _as_group(param_group, self.defaults))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                _zero_grad(p, set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient. ``closure``: a function that re-evaluates
        the model and returns the loss (called first, with recording on); its loss is returned."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        self._update()
        for _, p, _ in self._params_with_grad():
            mark_written(p)  # a graph recorded before this step can no longer backpropagate through p
        return loss

    def _update(self) -> None:
        raise NotImplementedError

    def _params_with_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    yield g, p, self.state.setdefault(p, {})

    # State in parameter order, for checkpoints: {"<k>.<name>": array} plus step counts. Group options
    # that are not numbers, strings or tuples of them (which an .npz cannot hold without pickle) are left out.
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        k = 0
        for gi, g in enumerate(self.param_groups):
            for key, value in g.items():
                if _written(key, value):
                    v = np.asarray(value) if isinstance(value, (numbers.Number, str, tuple, np.ndarray)) else None
                    if v is not None and not v.dtype.hasobject:
                        out[f"group{gi}.{key}"] = v
            for p in g["params"]:
                for name, value in self.state.get(p, {}).items():
                    out[f"param{k}.{name}"] = np.array(value.get() if hasattr(value, "get") and not isinstance(value, np.ndarray) else value, copy=True)
                k += 1
        return out

    _STATE_NAMES = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")

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
        new_state: dict[Tensor, dict] = {}
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
                v = np.asarray(to_device(value, "cpu"))
                group_updates.append((gi, name, tuple(v.tolist()) if v.ndim else v.item()))
            else:
                k = int(index)
                if k >= len(params):
                    raise KeyError(f"optimizer state has {key!r} but the optimizer has {len(params)} parameters")
                if name not in self._STATE_NAMES:
                    raise KeyError(f"unrecognised optimizer state key {key!r}")
                p = params[k]
                v = np.asarray(to_device(value, "cpu"))  # a cupy array is copied over
                if name == "step":
                    if v.shape != () or v.dtype.kind not in "iu":
                        raise ValueError(f"optimizer state {key!r} must be one integer, got {v.dtype} {v.shape}")
                    new_state.setdefault(p, {})[name] = v.astype(np.int64)
                else:
                    if v.shape != p.shape:
                        raise ValueError(f"optimizer state {key!r} has shape {v.shape}, parameter has {p.shape}")
                    if v.dtype.kind not in "fiu":
                        raise ValueError(f"optimizer state {key!r} has non-numeric dtype {v.dtype}")
                    xp = array_module(p.data)
                    new_state.setdefault(p, {})[name] = xp.array(v.astype(p.dtype), copy=True)

        def commit() -> None:
            for gi, name, v in group_updates:
                self.param_groups[gi][name] = v
            self.state = new_state
        return commit


class SGD(Optimizer):
    r"""SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch's rule):

    .. math::
        g \leftarrow \pm\nabla + \lambda p, \quad b \leftarrow \mu b + (1 - \tau) g, \quad
        p \leftarrow p - \text{lr}\,(g + \mu b \text{ if nesterov else } b)

    (``b`` starts as the first ``g``; without momentum the step is ``lr g``). ``maximize=True`` ascends:
    the gradient's sign is flipped first, as torch's. ``foreach``, ``fused``, ``capturable`` pick one of
    torch's implementations of the same update; they are accepted and change nothing here
    (``differentiable=True`` is refused).
    """

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=bool(maximize),
                                      **_implementation_options(foreach, fused, differentiable)))

    def _update(self) -> None:
        for g, p, st in self._params_with_grad():
            grad = _signed_grad(g, p)
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


def _amsgrad_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, beta1, beta2, step_size, bias2_sqrt, eps,
                  weight_decay=0.0, decay=1.0) -> None:
    """kernels.reference.adam_step with torch's AMSGrad: the denominator uses the running maximum of
    ``exp_avg_sq`` (kept in ``max_exp_avg_sq``), each operation rounded to param's dtype as torch's."""
    xp = array_module(param)
    t = param.dtype.type
    reference.adam_moments(param, grad, exp_avg, exp_avg_sq, beta1, beta2, weight_decay, decay)
    xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
    denom = xp.sqrt(max_exp_avg_sq) / t(bias2_sqrt) + t(eps)
    param -= t(step_size) * (exp_avg / denom)


class Adam(Optimizer):
    r"""Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient (PyTorch's Adam);
    ``amsgrad=True``: the AMSGrad variant (Reddi et al.), PyTorch's rule.

    .. math::
        g \leftarrow \pm\nabla + \lambda p, \quad m \leftarrow \beta_1 m + (1 - \beta_1) g, \quad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2, \quad
        p \leftarrow p - \frac{\text{lr}}{1 - \beta_1^t} \frac{m}{\sqrt{v / (1 - \beta_2^t)} + \epsilon}

    ``maximize=True`` ascends: the gradient's sign is flipped first, as torch's. ``foreach``, ``fused``,
    ``capturable`` pick one of torch's implementations of the same update; they are accepted and change
    nothing here (``differentiable=True`` is refused).
    """

    decoupled = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=bool(amsgrad), maximize=bool(maximize),
                                      **_implementation_options(foreach, fused, differentiable, capturable)))

    def _update(self) -> None:
        for g, p, st in self._params_with_grad():
            xp = array_module(p.data)
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            amsgrad = g.get("amsgrad", False)
            if "step" not in st:
                st["step"] = np.zeros((), dtype=np.int64)
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
            if amsgrad and "max_exp_avg_sq" not in st:
                st["max_exp_avg_sq"] = xp.zeros_like(p.data)
            st["step"] += 1
            step = int(st["step"])
            decoupled = bool(wd) and self.decoupled
            args = (b1, b2, lr / (1 - b1 ** step), math.sqrt(1 - b2 ** step), eps,
                    0.0 if decoupled else wd, 1 - lr * wd if decoupled else 1.0)
            grad = _signed_grad(g, p)  # a new array when maximizing: the kernel reads it, p.grad stays as it was
            if amsgrad:
                _amsgrad_step(p.data, grad, st["exp_avg"], st["exp_avg_sq"], st["max_exp_avg_sq"], *args)
            else:
                # one kernel per parameter (kernels/*/optim.py), the rule of kernels.reference.adam_step
                registry.call("adam_step", registry.backend_of(p.data), p.data, grad, st["exp_avg"],
                              st["exp_avg_sq"], *args)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p (1 - lr wd) before the Adam step.
    ``maximize``, ``foreach``, ``fused``, ``capturable``, ``differentiable``: as :class:`Adam`."""

    decoupled = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, capturable: bool = False,
                 differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused)


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


def _norm_type(norm_type: Any) -> float:
    """torch's reading of norm_type: anything ``float()`` takes ('inf', 2, 2.0); NaN and the rest refused."""
    try:
        value = float(norm_type)
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value) or isinstance(norm_type, bool):
        raise ValueError(f"norm_type must be a number (or a string such as 'inf'), got {norm_type!r}")
    return value


def _host_floats(values: list) -> list[float]:
    """Numbers and 0-d arrays as Python floats; the GPU ones come back in one transfer (a read per
    parameter would make the host wait for the GPU once per parameter)."""
    out = list(values)
    on_gpu = [i for i, v in enumerate(values) if is_cupy(v)]
    if on_gpu:
        import cupy
        for i, v in zip(on_gpu, host_values(cupy, *(values[i] for i in on_gpu))):
            out[i] = v
    return [float(v) for v in out]


def clip_grad_norm(params: Iterable, max_norm: float, norm_type: float | str = 2.0,
                   error_if_nonfinite: bool = False, foreach: bool | None = None) -> Tensor:
    r"""Scale all gradients together so their joint norm is at most ``max_norm``; returns the norm before
    as a 0-d Tensor, as torch's ``clip_grad_norm_`` (also available under that name).

    .. math::
        N = \Big(\sum_{p} \sum_i |g_{p,i}|^{q}\Big)^{1/q}, \qquad
        g \leftarrow g \cdot \min\Big(1, \frac{\text{max\_norm}}{N + 10^{-6}}\Big)

    ``params``: tensors, or (name, tensor) pairs from ``named_parameters()`` so an error can name the
    culprit. ``norm_type`` (q above): q > 0 (the q-norm of all gradient elements together), ``inf`` (max |g|),
    ``-inf`` (min |g|), negative q, or 0, which torch defines as the number of parameters whose
    gradient has a nonzero element (its 0-"norm" of the per-parameter 0-norms); strings such as
    ``'inf'`` are read with ``float()``, as torch does.

    Returns: a 0-d Tensor (no grad) on the gradients' device, of their dtype (float64 if float32 and
    float64 gradients are mixed), as torch's; ``norm.item()``, ``float(norm)`` and ``f"{norm:.3f}"`` give
    the number. With no gradient at all, ``tensor(0.)`` (float32, on the CPU), as torch. The norm is
    summed in float64 and then rounded to that dtype.

    A non-finite gradient gives a non-finite norm (``inf`` for an Inf, ``nan`` if any NaN) and the
    gradients are scaled by ``max_norm / (norm + 1e-6)`` all the same (to zeros and NaN), as torch does.
    ``error_if_nonfinite=True`` raises FloatingPointError naming the parameter instead, leaving the
    gradients untouched. ``foreach`` is accepted for torch's signature and ignored.
    """
    named = _named(params)
    total = _clip_grad_norm(named, max_norm, norm_type, error_if_nonfinite)
    with_grad = [p.grad for _, p in named if p.grad is not None]
    if not with_grad:
        return Tensor(np.array(0.0, dtype=np.float32))
    dtype = np.result_type(*(g.dtype for g in with_grad))
    with np.errstate(over="ignore"):  # a float64 norm beyond float32's range is inf, as torch's float32 sum
        value = np.array(total, dtype=dtype)
    # the host already holds the norm (it decided the scaling), so this is a copy up, not a wait for the GPU
    return Tensor(to_device(value, device_of(with_grad[0])))


def _clip_grad_norm(named: list[tuple[str, Tensor]], max_norm: float, norm_type: float | str,
                    error_if_nonfinite: bool) -> float:
    """clip_grad_norm's work: scales the gradients and returns the norm before as a Python float (what
    TBPTT keeps, without reading a GPU tensor back)."""
    nt = _norm_type(norm_type)
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    named = [(n, p) for n, p in named if p.grad is not None]
    if not named:
        return 0.0
    parts = []
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # |0|**-p and overflow give inf, as torch's
        for _, p in named:
            xp = array_module(p.grad)
            a = xp.abs(p.grad.astype(np.float64))
            if nt == 0:
                parts.append(xp.count_nonzero(a))
            elif a.size == 0:  # the neutral element of the reduction below
                parts.append(math.inf if nt == -math.inf else 0.0)
            elif nt == math.inf:
                parts.append(a.max())
            elif nt == -math.inf:
                parts.append(a.min())
            else:
                parts.append((a ** nt).sum())
        parts = _host_floats(parts)
        if nt == 0:  # torch: the 0-norm of the per-parameter 0-norms
            total = float(sum(1 for x in parts if x != 0))
        elif math.isinf(nt):
            total = math.nan if any(math.isnan(x) for x in parts) else (max if nt > 0 else min)(parts)
        else:
            s = sum(parts)
            total = s ** (1.0 / nt) if s else (0.0 if nt > 0 else math.inf)
    if error_if_nonfinite and not math.isfinite(total):
        bad = [n for n, p in named if not bool(array_module(p.grad).isfinite(p.grad).all())]
        why = (f"the gradient of {bad[0]} is not finite (NaN or Inf)" if bad else
               "every gradient is finite but their norm overflows float64")
        raise FloatingPointError(f"clip_grad_norm: the total norm of order {nt} is non-finite ({total}): {why}; "
                                 "set error_if_nonfinite=False to scale the gradients by it anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1 or math.isnan(coef):  # torch multiplies by min(coef, 1), and NaN stays NaN
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, as in torch
            for _, p in named:
                p.grad *= p.grad.dtype.type(coef)
    return total


def clip_grad_value(params: Iterable, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element into [-clip_value, clip_value] in place; returns None, as torch's
    ``clip_grad_value_``. ``foreach`` is accepted for torch's signature and ignored."""
    if clip_value < 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for _, p in _named(params):
        if p.grad is not None:
            xp = array_module(p.grad)
            xp.clip(p.grad, -clip_value, clip_value, out=p.grad)


clip_grad_norm_ = clip_grad_norm  # torch's names
clip_grad_value_ = clip_grad_value
