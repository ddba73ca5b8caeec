"""Whole recurrent steps on the CPU: the recurrent GEMM (numpy's BLAS) followed by the Numba cell kernel.

Same signatures and semantics as the ``*_step_*`` functions of :mod:`tapegrad.kernels.reference`. The
GPU loops fuse GEMM and cell into one launch; on the CPU the BLAS GEMM is the fast part, so these simply
compose the two, which keeps the kernel table uniform (and lets the GPU loops' bookkeeping be tested on
the CPU).
"""
from __future__ import annotations

import numpy as np

from .. import sequence as seq
from . import recurrent as cell


def lstm_step_fwd(h_prev, w_hh, z, c_prev, c, h):
    """z += h_prev W_hh^T, then the LSTM cell with the gates over z. Returns (z, c, h)."""
    z += h_prev @ w_hh.T
    return cell.lstm_cell_fwd(z, c_prev, z, c, h)


def lstm_step_bwd(dz_next, w_t, grad_h, grad_out, gates, c_prev, c, grad_c, grad_z):
    """dL/dh_t = dz_next @ w_t.T (or grad_h) (+ grad_out), then the LSTM cell's backward; grad_c is
    replaced by dL/dc_{t-1}. Returns (grad_z, grad_c)."""
    gh = dz_next @ w_t.T if dz_next is not None else np.array(grad_h, copy=True)
    if grad_out is not None:
        gh += grad_out
    return cell.lstm_cell_bwd(gates, c_prev, c, gh, grad_c, grad_z, grad_c)


def rnn_step_fwd(h_prev, w_hh, p, h, relu=False):
    """h = act(p + h_prev W_hh^T); p is not written. Returns h."""
    return cell.rnn_cell_fwd(p + h_prev @ w_hh.T, h, relu)


def rnn_step_bwd(dz_next, w_t, grad_h, grad_out, h, grad_z, relu=False):
    """grad_z = (dz_next @ w_t.T or grad_h, + grad_out) * act'(z) from the output h. Returns grad_z."""
    gh = dz_next @ w_t.T if dz_next is not None else np.array(grad_h, copy=True)
    if grad_out is not None:
        gh += grad_out
    return cell.rnn_cell_bwd(h, gh, grad_z, relu)


# ---- whole loops: one launch per step (see kernels/sequence.py) ----------------------------------------------

lstm_seq_fwd, lstm_seq_bwd, rnn_seq_fwd, rnn_seq_bwd = seq.loops_over(lstm_step_fwd, lstm_step_bwd, rnn_step_fwd,
                                                                     rnn_step_bwd)
