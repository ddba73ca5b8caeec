"""Whole-sequence recurrent ops: one layer-direction of an LSTM or Elman RNN is ONE node on the tape.

Recording a node per time step (and several per gate) makes a long sequence slow to build and to walk;
here the forward runs the whole time loop over plain arrays and the backward runs it back, with

- the input projection ``P = X W_ih^T + (b_ih + b_hh)`` (X = x viewed as [T*B, I]) as big GEMMs, a
  chunk of steps at a time, the biases folded into the GEMM through a column of ones appended to X;
- per step one GEMM ``h_{t-1} W_hh^T`` into a preallocated buffer (skipped at the first step when h0
  is zero), added to the step's slice of P, then the fused cell kernel (``lstm_cell_fwd`` /
  ``rnn_cell_fwd``) through :func:`tapegrad.kernels.registry.call`, the one door the profiler watches;
- in the backward, per step the fused cell backward and one GEMM ``grad_h_{t-1} = grad_z W_hh``; the
  weight gradients are single GEMMs over all steps (``[dW_ih | db] = dZ^T [X | 1]``,
  ``dW_hh = dZ^T H_prev``) and ``dX = dZ W_ih``.

Every buffer is allocated once per call; under ``no_grad`` (or when no input requires grad) nothing is
kept for a backward: the projection is one reused chunk and the LSTM cell state two ping-pong rows.

The three results of :func:`lstm_sequence` (output, h_n, c_n) come from one computation: ``h_n`` is the
recorded node, and ``output`` / ``c_n`` are thin children of it whose backward hands their incoming
gradient to ``h_n``'s backward (which, being their parent, runs after them), so the sequence is run
forward once and backward once whichever of the three the loss uses.

``lengths`` gives PyTorch's packed-sequence semantics on a padded batch: for ``t >= lengths[b]`` the
output is zero, the state is not updated (so ``h_n[b]`` is the state after the last real step) and
nothing flows to or from the padding. The batch is sorted by decreasing length inside the op, so the
rows still running at a step are a prefix and each step's GEMM and kernel only touch those rows. With
``reverse=True`` sequence ``b`` is read from step ``lengths[b] - 1`` down to 0 (a packed bidirectional
RNN's reverse direction).

On the GPU the same ops run from :mod:`tapegrad.engine.recurrent_cuda`, which replays each step loop
as a CUDA graph; the helpers here (argument checks, batches, projection, weight gradients) serve both.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import registry
from .backend import array_module, to_device
from .ops import as_tensor
from .tensor import Tensor, is_grad_enabled, make_result

__all__ = ["lstm_sequence", "rnn_sequence"]


# ---- argument checks ---------------------------------------------------------------------------------------

def _required(name: str, a: Any) -> Any:
    if a is None:
        raise TypeError(f"{name} is required (a zero state is tg.tensor(numpy.zeros((B, H), dtype)))")
    return a


def _float_tensor(name: str, a: Any, ndim: int) -> Tensor:
    t = as_tensor(_required(name, a))
    if t.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {t.shape}")
    if t.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t


def _check_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh, gate_mult: int, reverse: bool):
    """Tensors for every argument, checked for shape, dtype and device; returns them and (T, B, I, H)."""
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"reverse must be a bool, got {reverse!r}")
    x = _float_tensor("x", x, 3)
    w_ih = _float_tensor("w_ih", w_ih, 2)
    w_hh = _float_tensor("w_hh", w_hh, 2)
    T, B, I = x.shape
    G, H = w_hh.shape
    if T == 0 or B == 0:
        raise ValueError(f"x must have at least one step and one batch entry, got shape {x.shape}")
    if I == 0 or H == 0:
        raise ValueError(f"input and hidden sizes must be positive, got x {x.shape} and w_hh {w_hh.shape}")
    if G != gate_mult * H:
        raise ValueError(f"w_hh must have shape ({gate_mult} * hidden_size, hidden_size), got {w_hh.shape}")
    if w_ih.shape != (G, I):
        raise ValueError(f"w_ih must have shape {(G, I)} for x {x.shape} and w_hh {w_hh.shape}, got {w_ih.shape}")
    named = [("x", x), ("w_ih", w_ih), ("w_hh", w_hh)]
    h0 = _float_tensor("h0", h0, 2)
    named.append(("h0", h0))
    if h0.shape != (B, H):
        raise ValueError(f"h0 must have shape {(B, H)}, got {h0.shape}")
    if c0 is not None:
        c0 = _float_tensor("c0", c0, 2)
        named.append(("c0", c0))
        if c0.shape != (B, H):
            raise ValueError(f"c0 must have shape {(B, H)}, got {c0.shape}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("give both b_ih and b_hh, or neither")
    if b_ih is not None:
        b_ih = _float_tensor("b_ih", b_ih, 1)
        b_hh = _float_tensor("b_hh", b_hh, 1)
        named += [("b_ih", b_ih), ("b_hh", b_hh)]
        for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
            if b.shape != (G,):
                raise ValueError(f"{name} must have shape {(G,)}, got {b.shape}")
    for name, t in named:
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {x.dtype}; use one float dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    return x, h0, c0, w_ih, w_hh, b_ih, b_hh, (T, B, I, H)


def _check_lengths(lengths: Any, T: int, B: int) -> np.ndarray | None:
    """lengths as a host int64 array [B] with 1 <= lengths[b] <= T, or None when absent."""
    if lengths is None:
        return None
    if isinstance(lengths, Tensor):
        lengths = lengths.data
    if hasattr(lengths, "detach") and hasattr(lengths, "cpu"):  # a torch tensor
        lengths = lengths.detach().cpu().numpy()
    if type(lengths).__module__.startswith("cupy"):
        lengths = to_device(lengths, "cpu")
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":  # bool, float, object...
        raise ValueError(f"lengths must hold integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per batch entry), got {arr.shape}")
    if arr.size and (int(arr.min()) < 1 or int(arr.max()) > T):
        raise ValueError(f"lengths must lie in [1, {T}] (the padded sequence length), "
                         f"got range [{int(arr.min())}, {int(arr.max())}]")
    return arr.astype(np.int64)


class _Batches:
    """How a padded batch is run: rows sorted by decreasing length, and per step the number still running.

    ``order`` (None when already sorted) maps sorted row -> original row; ``inverse`` maps back.
    ``active[t]`` is the count of rows with length > t: they are the prefix ``[:active[t]]``.
    ``mask`` [T, B, 1] (original row order) is 1 where a step is real, 0 on padding.
    """

    __slots__ = ("active", "inverse", "mask", "order")

    def __init__(self, lengths: np.ndarray, T: int, xp: Any, dtype: Any) -> None:
        if np.all(lengths[:-1] >= lengths[1:]):
            self.order = self.inverse = None
            sorted_len = lengths
        else:
            order = np.argsort(-lengths, kind="stable")
            self.order = xp.asarray(order) if xp is not np else order
            inverse = np.empty_like(order)
            inverse[order] = np.arange(len(order))
            self.inverse = xp.asarray(inverse) if xp is not np else inverse
            sorted_len = lengths[order]
        # active[t] = #{b : len_b > t}; sorted_len is non-increasing.
        self.active = [int(n) for n in (sorted_len[None, :] > np.arange(T)[:, None]).sum(axis=1)]
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(dtype)[:, :, None]
        self.mask = mask if xp is np else xp.asarray(mask)

    def sort(self, a: Any, axis: int) -> Any:
        if self.order is None:
            return a
        return a[:, self.order] if axis == 1 else a[self.order]

    def unsort(self, a: Any, axis: int) -> Any:
        if self.inverse is None:
            return a
        return a[:, self.inverse] if axis == 1 else a[self.inverse]


class _Projection:
    """``x_t W_ih^T + b_ih + b_hh`` for every step, computed a chunk of steps at a time just before the
    chunk runs. ``keep`` holds all T steps (the backward needs them); otherwise one chunk's buffer is
    reused, and the cell kernel activates the gates in it in place.

    Chunks are large (``_CHUNK_BYTES`` of output, 32 steps of B=64, 4H=1024 float32): a GEMM's
    efficiency grows with its row count far more than a cache-sized chunk saves. On 2 cores with
    OpenBLAS, 1 MB chunks (256 rows) made the LSTM inference at T=50, B=64, H=256 7% slower
    (13.3 ms against 12.4 ms) than 8 MB chunks; one GEMM over all steps was no faster than those.

    The biases ride in the GEMM: x gets a column of ones (``xa`` [T, B, I+1], copied once, in run
    order) and W_ih a column holding b_ih + b_hh, which is cheaper than a pass adding the bias to the
    [T, B, G] result. In the backward the same ones column makes ``dZ^T xa`` give the bias gradient as
    the last column of the weight gradient.
    """

    __slots__ = ("T", "buf", "keep", "reverse", "steps", "w_t", "xa")

    _CHUNK_BYTES = 8 << 20

    def __init__(self, x: Any, w_ih: Any, b_ih: Any, b_hh: Any, keep: bool, reverse: bool, order: Any,
                 xp: Any, out: Any = None) -> None:
        T, B, I = x.shape
        G = w_ih.shape[0]
        if b_ih is None:
            self.xa = xp.ascontiguousarray(x if order is None else x[:, order])
            self.w_t = w_ih.T
        else:
            self.xa = xp.empty((T, B, I + 1), dtype=x.dtype)
            self.xa[:, :, :I] = x if order is None else x[:, order]
            self.xa[:, :, I] = 1
            w = xp.empty((G, I + 1), dtype=x.dtype)
            w[:, :I] = w_ih
            xp.add(b_ih, b_hh, out=w[:, I])
            self.w_t = w.T
        self.T, self.reverse, self.keep = T, reverse, keep
        if out is not None:  # the caller's [T, B, G] buffer, filled in one GEMM (the GPU path)
            self.steps, self.keep, self.buf = T, True, out
            return
        self.steps = max(1, min(T, self._CHUNK_BYTES // (B * G * x.dtype.itemsize)))
        self.buf = xp.empty((T if keep else self.steps, B, G), dtype=x.dtype)

    def fill(self, t: int) -> int:
        """Project the chunk of steps that starts (in run order) at step t; returns the buffer's first step."""
        lo, hi = (max(0, t + 1 - self.steps), t + 1) if self.reverse else (t, min(self.T, t + self.steps))
        dst = self.buf[lo:hi] if self.keep else self.buf[:hi - lo]
        xc = self.xa[lo:hi]
        m = xc.shape[0] * xc.shape[1]
        array_module(dst).matmul(xc.reshape(m, xc.shape[2]), self.w_t, out=dst.reshape(m, dst.shape[2]))
        return 0 if self.keep else lo


# ---- multi-output plumbing ---------------------------------------------------------------------------------

def _side_output(data: Any, core: Tensor, stash: dict, key: str, name: str) -> Tensor:
    """A result that shares ``core``'s node: its gradient is handed to core's backward through ``stash``.

    It is a child of ``core`` on the tape, so the walk runs its backward before core's. It hands core a
    small zero gradient so that core's backward runs even when the loss only uses this result.
    """
    xp = array_module(core.data)
    core_shape, core_dtype = core.shape, core.dtype

    def backward(g):
        prev = stash.get(key)
        stash[key] = g if prev is None else prev + g
        return (xp.zeros(core_shape, dtype=core_dtype),)
    return make_result(data, (core,), backward, name)


def _parents(*tensors) -> tuple:
    return tuple(t for t in tensors if t is not None)


def _data(t: Tensor | None) -> Any:
    return None if t is None else t.data


# ---- LSTM --------------------------------------------------------------------------------------------------

def lstm_sequence(x: Any, h0: Any, c0: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None,
                  lengths: Any = None, reverse: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    r"""One LSTM layer-direction over a whole sequence, as one node on the tape.

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    Args:
        x: [T, B, I]. h0, c0: [B, H]. w_ih: [4H, I], w_hh: [4H, H] with the gates stacked (i, f, g, o).
        b_ih, b_hh: [4H] each, or both None (no bias).
        lengths: None, or integers [B] with 1 <= lengths[b] <= T (padded batch, packed-sequence semantics).
        reverse: run from the last (real) step to the first.

    Returns (output [T, B, H], h_n [B, H], c_n [B, H]); output[t] = h_t (zero on padding).
    """
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, (T, B, _, H) = _check_args(x, h0, _required("c0", c0), w_ih, w_hh, b_ih, b_hh, 4, reverse)
    lens = _check_lengths(lengths, T, B)
    xp = array_module(x.data)
    if xp is not np:  # the GPU replays the step loop as a CUDA graph
        from . import recurrent_cuda
        return recurrent_cuda.lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lens, reverse)
    dtype = x.dtype
    backend = registry.backend_of(x.data)
    parents = _parents(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    need_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
    batches = None if lens is None else _Batches(lens, T, xp, dtype)

    # Rows in run order (sorted by length when lengths are given).
    h0d, c0d = h0.data, c0.data
    order = None if batches is None else batches.order
    if order is not None:
        h0d, c0d = h0d[order], c0d[order]
    w_ih_d, w_hh_d = w_ih.data, w_hh.data
    w_hh_t = xp.ascontiguousarray(w_hh_d.T)  # [H, 4H]: the per-step GEMM reads it row-major

    # Input projection (biases folded in); the cell kernel activates it in place into the gates.
    proj = _Projection(x.data, w_ih_d, _data(b_ih), _data(b_hh), need_grad, reverse, order, xp)
    gates, chunk = proj.buf, proj.steps
    xa = proj.xa if need_grad else None

    # States: hs[t + a] = h_t and hs[t + 1 - a] = h_{t-1}, a = 1 forward, 0 reverse; so the outputs
    # are the contiguous block hs[a : a + T] and the previous states hs[1 - a : 1 - a + T].
    a = 0 if reverse else 1
    first = T if reverse else 0  # where the initial state sits
    last = 0 if reverse else T   # where the final state ends up
    hs = xp.empty((T + 1, B, H), dtype=dtype)
    hs[first] = h0d
    if need_grad:
        cs = xp.empty((T + 1, B, H), dtype=dtype)
        cs[first] = c0d
    else:
        cs = xp.empty((2, B, H), dtype=dtype)  # ping-pong: nothing is kept for a backward
        cs[0] = c0d
    rec = xp.empty((B, 4 * H), dtype=dtype)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    active = None if batches is None else batches.active
    recur = bool(h0d.any())  # the usual zero h0 adds nothing at the first step: skip its GEMM
    call, matmul, add = registry.call, xp.matmul, xp.add
    for s, t in enumerate(steps):
        h_prev, h_out = hs[t + 1 - a], hs[t + a]
        if need_grad:
            c_prev, c_out = cs[t + 1 - a], cs[t + a]
        else:
            c_prev, c_out = cs[s & 1], cs[(s + 1) & 1]
        if s % chunk == 0:
            base = proj.fill(t)
        z = gates[t - base]
        n = B if active is None else active[t]
        if n == B:
            if recur:
                matmul(h_prev, w_hh_t, out=rec)
                add(z, rec, out=z)
            call("lstm_cell_fwd", backend, z, c_prev, z, c_out, h_out)
            recur = True
            continue
        if n:
            zn = z[:n]
            if recur:
                matmul(h_prev[:n], w_hh_t, out=rec[:n])
                add(zn, rec[:n], out=zn)
            call("lstm_cell_fwd", backend, zn, c_prev[:n], zn, c_out[:n], h_out[:n])
        recur = True
        h_out[n:] = h_prev[n:]  # finished rows keep their state
        c_out[n:] = c_prev[n:]

    c_last = cs[last] if need_grad else cs[T & 1]
    out = hs[a:a + T]
    h_n, c_n = hs[last].copy(), c_last.copy()  # apart from output's buffer, as torch's (B x H: cheap)
    if batches is not None:
        out = batches.unsort(out, 1) * batches.mask
        h_n, c_n = batches.unsort(h_n, 0), batches.unsort(c_n, 0)

    stash: dict = {}

    def backward(g_hn):
        g_out = stash.pop("out", None)
        g_cn = stash.pop("c_n", None)
        if batches is not None:
            g_hn = batches.sort(g_hn, 0)
            g_cn = None if g_cn is None else batches.sort(g_cn, 0)
            g_out = None if g_out is None else batches.sort(g_out, 1)
        dh = g_hn.copy()  # never write into an incoming gradient: other consumers may share it
        dc = xp.zeros((B, H), dtype=dtype) if g_cn is None else g_cn.copy()
        dz = xp.empty((T, B, 4 * H), dtype=dtype)
        t_first = T - 1 if reverse else 0  # the step that read h0: its GEMM only serves h0's gradient
        for t in (range(T) if reverse else range(T - 1, -1, -1)):
            n = B if active is None else active[t]
            if n == B:
                if g_out is not None:
                    add(dh, g_out[t], out=dh)
                call("lstm_cell_bwd", backend, gates[t], cs[t + 1 - a], cs[t + a], dh, dc, dz[t], dc)
                if t != t_first or h0.requires_grad:
                    matmul(dz[t], w_hh_d, out=dh)
                continue
            dz[t, n:] = 0  # padding: no gradient to x or the weights; dh, dc pass through unchanged
            if n:
                dhn, dcn = dh[:n], dc[:n]
                if g_out is not None:
                    add(dhn, g_out[t, :n], out=dhn)
                call("lstm_cell_bwd", backend, gates[t, :n], cs[t + 1 - a, :n], cs[t + a, :n], dhn, dcn,
                     dz[t, :n], dcn)
                if t != t_first or h0.requires_grad:
                    matmul(dz[t, :n], w_hh_d, out=dhn)
        return _weight_grads(dz, xa, hs[1 - a:1 - a + T], w_ih_d, batches, dh, dc,
                             (x, h0, c0, w_ih, w_hh, b_ih, b_hh))

    h_n_t = make_result(h_n, parents, backward, "lstm_sequence", saved=(hs, cs))  # output is a view of hs
    out_t = _side_output(out, h_n_t, stash, "out", "lstm_sequence.output")
    c_n_t = _side_output(c_n, h_n_t, stash, "c_n", "lstm_sequence.c_n")
    return out_t, h_n_t, c_n_t


def _weight_grads(dz, xa, h_prev, w_ih_d, batches, dh, dc, inputs):
    """Gradients of everything but the recurrence, as single GEMMs over all steps, in ``inputs`` order.

    dz [T, B, G]: gradient of the pre-activations (zero on padding); xa [T, B, I(+1)]: x in run order,
    with the ones column when there are biases; h_prev [T, B, H]: the state each step read; dh, dc:
    gradients of h0 and c0 (rows in run order).
    """
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = inputs
    T, B, G = dz.shape
    I, H = x.shape[2], h_prev.shape[2]
    dz2 = dz.reshape(T * B, G)
    grads = []
    if x.requires_grad:
        dx = (dz2 @ w_ih_d).reshape(T, B, I)
        grads.append(dx if batches is None else batches.unsort(dx, 1))
    else:
        grads.append(None)
    grads.append((dh if batches is None else batches.unsort(dh, 0)) if h0.requires_grad else None)
    if c0 is not None:
        grads.append((dc if batches is None else batches.unsort(dc, 0)) if c0.requires_grad else None)
    dz2_t = dz2.T
    need_bias = b_ih is not None and (b_ih.requires_grad or b_hh.requires_grad)
    if w_ih.requires_grad or need_bias:
        dw = dz2_t @ xa.reshape(T * B, xa.shape[2])  # [G, I+1]: its last column is the bias gradient
    grads.append(dw[:, :I] if w_ih.requires_grad else None)
    grads.append(dz2_t @ h_prev.reshape(T * B, H) if w_hh.requires_grad else None)
    if b_ih is not None:
        db = dw[:, I] if need_bias else None
        grads.append(db if b_ih.requires_grad else None)
        grads.append(db.copy() if b_hh.requires_grad else None)  # two gradients, two arrays
    return tuple(grads)


# ---- Elman RNN ---------------------------------------------------------------------------------------------

def rnn_sequence(x: Any, h0: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None,
                 nonlinearity: str = "tanh", lengths: Any = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    r"""One Elman RNN layer-direction over a whole sequence, as one node on the tape.

    .. math::
        h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),\qquad \phi = \tanh \text{ or } \mathrm{ReLU}

    Args:
        x: [T, B, I]. h0: [B, H]. w_ih: [H, I], w_hh: [H, H]. b_ih, b_hh: [H] each, or both None.
        nonlinearity: ``'tanh'`` or ``'relu'``.
        lengths, reverse: as for :func:`lstm_sequence`.

    Returns (output [T, B, H], h_n [B, H]).
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    relu = nonlinearity == "relu"
    x, h0, _, w_ih, w_hh, b_ih, b_hh, (T, B, _, H) = _check_args(x, h0, None, w_ih, w_hh, b_ih, b_hh, 1, reverse)
    lens = _check_lengths(lengths, T, B)
    xp = array_module(x.data)
    if xp is not np:  # the GPU replays the step loop as a CUDA graph
        from . import recurrent_cuda
        return recurrent_cuda.rnn_sequence(x, h0, w_ih, w_hh, b_ih, b_hh, relu, lens, reverse)
    dtype = x.dtype
    backend = registry.backend_of(x.data)
    parents = _parents(x, h0, w_ih, w_hh, b_ih, b_hh)
    need_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
    batches = None if lens is None else _Batches(lens, T, xp, dtype)

    h0d = h0.data
    order = None if batches is None else batches.order
    if order is not None:
        h0d = h0d[order]
    w_ih_d, w_hh_d = w_ih.data, w_hh.data
    w_hh_t = xp.ascontiguousarray(w_hh_d.T)

    proj = _Projection(x.data, w_ih_d, _data(b_ih), _data(b_hh), False, reverse, order, xp)
    pbuf, chunk = proj.buf, proj.steps
    xa = proj.xa if need_grad else None

    a = 0 if reverse else 1
    first, last = (T, 0) if reverse else (0, T)
    hs = xp.empty((T + 1, B, H), dtype=dtype)
    hs[first] = h0d
    steps = range(T - 1, -1, -1) if reverse else range(T)
    active = None if batches is None else batches.active
    recur = bool(h0d.any())  # a zero h0 adds nothing at the first step: skip its GEMM
    call, matmul, add = registry.call, xp.matmul, xp.add
    for s, t in enumerate(steps):
        h_prev, h_out = hs[t + 1 - a], hs[t + a]
        n = B if active is None else active[t]
        if s % chunk == 0:
            base = proj.fill(t)
        p = pbuf[t - base]
        if n == B:
            if recur:
                matmul(h_prev, w_hh_t, out=h_out)
                add(h_out, p, out=h_out)
                call("rnn_cell_fwd", backend, h_out, h_out, relu)
            else:
                call("rnn_cell_fwd", backend, p, h_out, relu)
            recur = True
            continue
        if n:
            hn = h_out[:n]
            if recur:
                matmul(h_prev[:n], w_hh_t, out=hn)
                add(hn, p[:n], out=hn)
                call("rnn_cell_fwd", backend, hn, hn, relu)
            else:
                call("rnn_cell_fwd", backend, p[:n], hn, relu)
        h_out[n:] = h_prev[n:]
        recur = True

    out = hs[a:a + T]
    h_n = hs[last].copy()  # apart from output's buffer, as torch's
    if batches is not None:
        out = batches.unsort(out, 1) * batches.mask
        h_n = batches.unsort(h_n, 0)
    del proj, pbuf  # the backward needs xa only

    stash: dict = {}

    def backward(g_hn):
        g_out = stash.pop("out", None)
        if batches is not None:
            g_hn = batches.sort(g_hn, 0)
            g_out = None if g_out is None else batches.sort(g_out, 1)
        dh = g_hn.copy()
        dz = xp.empty((T, B, H), dtype=dtype)
        t_first = T - 1 if reverse else 0  # the step that read h0: its GEMM only serves h0's gradient
        for t in (range(T) if reverse else range(T - 1, -1, -1)):
            n = B if active is None else active[t]
            if n == B:
                if g_out is not None:
                    add(dh, g_out[t], out=dh)
                call("rnn_cell_bwd", backend, hs[t + a], dh, dz[t], relu)
                if t != t_first or h0.requires_grad:
                    matmul(dz[t], w_hh_d, out=dh)
                continue
            dz[t, n:] = 0
            if n:
                dhn = dh[:n]
                if g_out is not None:
                    add(dhn, g_out[t, :n], out=dhn)
                call("rnn_cell_bwd", backend, hs[t + a, :n], dhn, dz[t, :n], relu)
                if t != t_first or h0.requires_grad:
                    matmul(dz[t, :n], w_hh_d, out=dhn)
        return _weight_grads(dz, xa, hs[1 - a:1 - a + T], w_ih_d, batches, dh, None,
                             (x, h0, None, w_ih, w_hh, b_ih, b_hh))

    h_n_t = make_result(h_n, parents, backward, "rnn_sequence", saved=(hs,))  # output is a view of hs
    out_t = _side_output(out, h_n_t, stash, "out", "rnn_sequence.output")
    return out_t, h_n_t
