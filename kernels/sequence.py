"""Whole recurrent loops written as a loop over one-step kernels; every backend's ``*_seq_*`` entry that
does not run the loop inside one launch is this loop over its own step kernels.

Buffers follow the engine's layout (engine/recurrent_cuda.py): with ``a = 0 if reverse else 1``, step t
reads h_{t-1} from ``hs[t + 1 - a]`` and writes h_t to ``hs[t + a]`` (hs [T + 1, B, H]; cs likewise for
the LSTM's cell state), and its pre-activations live in row t of ``gates`` / ``p`` [T, B, G]. The
forward visits t = 0..T-1 (T-1..0 when reverse), the backward the other way round.
"""
from __future__ import annotations

from typing import Any, Callable


def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def lstm_seq_fwd(step: Callable, hs: Any, w_hh: Any, gates: Any, cs: Any, reverse: bool = False) -> None:
    """Every LSTM step: gates[t] += hs[t + 1 - a] W_hh^T, then the cell (gates over it, c and h out)."""
    a = 0 if reverse else 1
    for t in _order(gates.shape[0], reverse):
        step(hs[t + 1 - a], w_hh, gates[t], cs[t + 1 - a], cs[t + a], hs[t + a])


def lstm_seq_bwd(step: Callable, dz: Any, w_t: Any, grad_h: Any, grad_out: Any, gates: Any, cs: Any, grad_c: Any,
                 reverse: bool = False) -> None:
    """Every LSTM backward step, last to first: dz[t] from dL/dh_t (grad_h at the first, then the GEMM of
    the step after) plus grad_out[t] when given; grad_c carries dL/dc_t and ends as dL/dc of the initial
    state. grad_h is not written."""
    a = 0 if reverse else 1
    prev = None
    for t in _order(dz.shape[0], not reverse):
        step(None if prev is None else dz[prev], w_t, grad_h, None if grad_out is None else grad_out[t], gates[t],
             cs[t + 1 - a], cs[t + a], grad_c, dz[t])
        prev = t


def rnn_seq_fwd(step: Callable, hs: Any, w_hh: Any, p: Any, reverse: bool = False, relu: bool = False) -> None:
    """Every Elman step: hs[t + a] = act(p[t] + hs[t + 1 - a] W_hh^T); p is not written."""
    a = 0 if reverse else 1
    for t in _order(p.shape[0], reverse):
        step(hs[t + 1 - a], w_hh, p[t], hs[t + a], relu)


def rnn_seq_bwd(step: Callable, dz: Any, w_t: Any, grad_h: Any, grad_out: Any, hs: Any, reverse: bool = False,
                relu: bool = False) -> None:
    """Every Elman backward step, last to first, as :func:`lstm_seq_bwd` without a cell state."""
    a = 0 if reverse else 1
    prev = None
    for t in _order(dz.shape[0], not reverse):
        step(None if prev is None else dz[prev], w_t, grad_h, None if grad_out is None else grad_out[t], hs[t + a],
             dz[t], relu)
        prev = t


def loops_over(lstm_step_fwd: Callable, lstm_step_bwd: Callable, rnn_step_fwd: Callable,
               rnn_step_bwd: Callable) -> tuple[Callable, Callable, Callable, Callable]:
    """A backend's four ``*_seq_*`` kernel-table entries as the loops above over its own step kernels:
    (lstm_seq_fwd, lstm_seq_bwd, rnn_seq_fwd, rnn_seq_bwd), with the reference's signatures."""
    def lstm_fwd(hs, w_hh, gates, cs, reverse=False):
        lstm_seq_fwd(lstm_step_fwd, hs, w_hh, gates, cs, reverse)

    def lstm_bwd(dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse=False):
        lstm_seq_bwd(lstm_step_bwd, dz, w_t, grad_h, grad_out, gates, cs, grad_c, reverse)

    def rnn_fwd(hs, w_hh, p, reverse=False, relu=False):
        rnn_seq_fwd(rnn_step_fwd, hs, w_hh, p, reverse, relu)

    def rnn_bwd(dz, w_t, grad_h, grad_out, hs, reverse=False, relu=False):
        rnn_seq_bwd(rnn_step_bwd, dz, w_t, grad_h, grad_out, hs, reverse, relu)

    loops = (lstm_fwd, lstm_bwd, rnn_fwd, rnn_bwd)
    for fn, name, generic in zip(loops, ("lstm_seq_fwd", "lstm_seq_bwd", "rnn_seq_fwd", "rnn_seq_bwd"),
                                 (lstm_seq_fwd, lstm_seq_bwd, rnn_seq_fwd, rnn_seq_bwd)):
        fn.__name__ = fn.__qualname__ = name
        fn.__doc__ = generic.__doc__
    return loops
