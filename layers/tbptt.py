r"""Truncated backpropagation through time: the TBPTT(k1, k2) scheme of Williams & Peng (1990).

A long sequence is consumed in windows. Every ``k1`` steps the parameters are updated with the
gradient of the loss on those ``k1`` newest steps, backpropagated ``k2`` steps into the past
(``k2 >= k1``). The recurrent state is carried from one window to the next and the graph is cut
(:func:`detach_state`) where a window starts, so memory stays bounded by ``k2`` steps however long the
sequence is.

For an update that ends at step ``stop``::

    start = max(0, stop - k2)      the window starts from the detached state at `start`
    [start, stop - k1)             context: forward with the graph kept, no loss (absent when k1 == k2)
    [stop - k1, stop)              the k1 newest steps: their mean loss is backpropagated to `start`

``k1 == k2`` (the common case, what ``loss.backward(); h = h.detach()`` loops do) runs every step
forward once and backward once. With ``k2 > k1`` each step is run forward and backward about
``k2 / k1`` times (the windows overlap by ``k2 - k1`` steps), because the helper re-runs the last
``k2`` steps from a detached state stored ``k2`` steps back; the activations of ``k2`` steps are held.

Two ways in:

- :func:`tbptt_windows` yields the windows ``(start, stop, loss_start, carry_at)`` for a sequence of
  length ``T``: plain integers, for a loop the user writes.
- :class:`TBPTT` runs such a loop: it calls the user's ``segment_fn(start, stop, state, with_loss)``
  on the pieces of each window, backpropagates, clips and steps the optimiser, and carries the state.
"""
from __future__ import annotations

import itertools
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Iterator, NamedTuple

from ..engine.tensor import Tensor
from .optim import _clip_grad_norm, _named


def detach_state(state: Any) -> Any:
    """The same recurrent state cut from the graph: a Tensor, or a container of them nested to any depth.

    Containers keep their type: a tuple or list (``(h, c)``), a namedtuple (rebuilt as the same
    namedtuple, so ``state.h`` still works) and a dict or other mapping (the same keys, and the same
    mapping type where it can be rebuilt from ``{key: value}`` or copied and updated, as a
    defaultdict; else a dict). ``None`` and other non-tensors pass through unchanged.
    """
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple):
        parts = [detach_state(s) for s in state]
        return type(state)(*parts) if hasattr(state, "_fields") else type(state)(parts)
    if isinstance(state, list):
        return [detach_state(s) for s in state]
    if isinstance(state, Mapping):
        detached = {k: detach_state(v) for k, v in state.items()}
        if type(state) is dict:
            return detached
        try:  # OrderedDict, a dict subclass, MappingProxyType...: the same type when it takes a dict
            return type(state)(detached)
        except TypeError:  # e.g. a defaultdict (its first argument is the factory)
            return _rebuild_mapping(state, detached)
    return state


def _rebuild_mapping(state: Mapping, detached: dict) -> Mapping:
    """A copy of ``state`` with ``detached``'s values, for mappings whose constructor needs more than a dict."""
    if hasattr(state, "copy"):
        try:
            out = state.copy()
            out.update(detached)
            return out
        except (TypeError, AttributeError):
            pass
    return detached


_UNSET = object()  # a state not captured yet (None is a valid state: the model's initial one)


class Window(NamedTuple):
    """One TBPTT(k1, k2) update: run ``[start, stop)``, count the loss on ``[loss_start, stop)``, and
    keep the detached state at ``carry_at`` as the next window's ``start``."""

    start: int
    stop: int
    loss_start: int
    carry_at: int


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_k(k1: int, k2: int | None) -> tuple[int, int]:
    k2 = k1 if k2 is None else k2
    if not _is_int(k1) or k1 < 1:
        raise ValueError(f"k1 must be a positive integer, got {k1!r}")
    if not _is_int(k2) or k2 < k1:
        raise ValueError(f"k2 must be an integer >= k1 = {k1}, got {k2!r}")
    return int(k1), int(k2)


def _window(t: int, k1: int, k2: int, length: int | None) -> Window:
    """The update whose loss starts at step ``t``: it backpropagates to ``t + k1 - k2``, so that the
    next window starts at the current one's ``carry_at`` even when a last, short window is cut at
    ``length``."""
    stop = t + k1 if length is None else min(t + k1, length)
    return Window(max(0, t + k1 - k2), stop, t, min(max(0, t + 2 * k1 - k2), stop))


def tbptt_windows(T: int, k1: int, k2: int | None = None) -> Iterator[Window]:
    """The TBPTT(k1, k2) windows over a sequence of ``T`` steps, in order.

    Each window's ``loss_start`` is the previous window's ``stop``, so every step's loss is counted
    exactly once; the last window is shorter when ``k1`` does not divide ``T``.

    >>> for w in tbptt_windows(5, 2, 3):
    ...     print(w)
    Window(start=0, stop=2, loss_start=0, carry_at=1)
    Window(start=1, stop=4, loss_start=2, carry_at=3)
    Window(start=3, stop=5, loss_start=4, carry_at=5)
    """
    k1, k2 = _check_k(k1, k2)
    if not _is_int(T) or T < 0:
        raise ValueError(f"T must be a non-negative integer, got {T!r}")
    t = 0
    while t < T:
        w = _window(t, k1, k2, T)
        yield w
        t = w.stop


class TBPTT:
    """Train a recurrent model with truncated BPTT(k1, k2), carrying its state across windows.

    Args:
        segment_fn: ``segment_fn(start, stop, state, with_loss) -> (loss, new_state)`` runs the model
            over steps ``[start, stop)`` of the sequence starting from ``state`` (``None`` at the very
            start) and returns the state after step ``stop - 1`` (a Tensor, or a tuple such as
            ``(h, c)``, a list, namedtuple or dict of them, with its graph; see :func:`detach_state`).
            When ``with_loss`` is true, ``loss`` is the mean loss per step over the segment (a
            one-element Tensor); otherwise it may be ``None``.
        optimizer: any tapegrad optimiser; it is zeroed, stepped, and its parameters are clipped.
        k1: steps between updates (and steps whose loss each update counts).
        k2: steps each update backpropagates through (default ``k1``; must be ``>= k1``). ``k2 > k1``
            costs about ``k2 / k1`` times the compute of ``k1 == k2`` (see the module docstring).
        clip: if set, ``clip_grad_norm(params, clip, error_if_nonfinite=True)`` before every update: a
            NaN/Inf gradient raises FloatingPointError naming the parameter, and no step is taken.
        length: total sequence length (a positive integer); :meth:`step` returns ``None`` once the end
            is reached.

    Attributes: ``position`` (steps consumed), ``state`` (the detached state at ``position``),
    ``last_grad_norm`` (a Python float: the gradient norm before clipping at the last update, when ``clip``
    is set; NaN before).
    """

    def __init__(self, segment_fn: Callable, optimizer: Any, k1: int, k2: int | None = None,
                 clip: float | None = None, length: int | None = None) -> None:
        self.k1, self.k2 = _check_k(k1, k2)
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive (or None), got {clip}")
        if length is not None and (not _is_int(length) or length < 1):
            raise ValueError(f"length must be a positive integer (or None), got {length!r}")
        self.segment_fn = segment_fn
        self.optimizer = optimizer
        self.clip = clip
        self.length = length
        self.last_grad_norm = float("nan")
        self.reset()

    def reset(self, state: Any = None) -> None:
        """Start again at step 0 from ``state`` (``None``: the model's own initial state)."""
        self.position = 0
        self.state = detach_state(state)
        self._start_state = self.state  # the detached state at the next window's start

    @property
    def done(self) -> bool:
        return self.length is not None and self.position >= self.length

    def _params(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def step(self) -> float | None:
        """Train on the next window; returns its mean loss per step (``None`` at the end)."""
        if self.done:
            return None
        w = _window(self.position, self.k1, self.k2, self.length)
        # Split the window where the next window starts (keep that state) and where the loss starts.
        cuts = sorted({w.start, w.stop, w.carry_at, w.loss_start})
        state = self._start_state
        next_start = state if w.carry_at == w.start else _UNSET
        n_loss = w.stop - w.loss_start
        total = None
        for a, b in itertools.pairwise(cuts):
            with_loss = a >= w.loss_start
            loss, state = self.segment_fn(a, b, state, with_loss)
            if with_loss:
                if not isinstance(loss, Tensor):
                    raise TypeError(f"segment_fn must return a Tensor loss when with_loss is true: "
                                    f"segment_fn({a}, {b}, state, True) returned a {type(loss).__name__} as its "
                                    "loss (expected a one-element Tensor on the graph)")
                term = loss * ((b - a) / n_loss) if b - a != n_loss else loss
                total = term if total is None else total + term
            if b == w.carry_at:
                next_start = detach_state(state)
        self.optimizer.zero_grad()
        total.backward()
        if self.clip is not None:
            # a NaN/Inf gradient stops training here, before the step would spread it into the parameters
            # the host float clip_grad_norm computed anyway: a Tensor here would be read back from the GPU
            self.last_grad_norm = _clip_grad_norm(_named(self._params()), self.clip, 2.0, error_if_nonfinite=True)
        self.optimizer.step()
        self.position = w.stop
        self.state = detach_state(state)
        self._start_state = self.state if next_start is _UNSET else next_start
        return total.item()

    def run(self, n_windows: int | None = None) -> list[float]:
        """Call :meth:`step` ``n_windows`` times (default: until ``length``); returns the losses."""
        if n_windows is None and self.length is None:
            raise ValueError("run() needs n_windows when the TBPTT has no length")
        losses = []
        while (n_windows is None or len(losses) < n_windows) and not self.done:
            losses.append(self.step())
        return losses


def tbptt_cost(k1: int, k2: int | None = None) -> float:
    """Forward/backward steps computed per sequence step, relative to full BPTT: ``k2 / k1``
    (the windows overlap by ``k2 - k1``)."""
    k1, k2 = _check_k(k1, k2)
    return k2 / k1
