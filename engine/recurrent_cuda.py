"""The whole-sequence LSTM / RNN ops on the GPU, their step loops replayed as CUDA graphs.

Same math, arguments and results as :func:`tapegrad.engine.recurrent.lstm_sequence` and
:func:`~tapegrad.engine.recurrent.rnn_sequence`, which hand cupy inputs to this module.

Why graphs: on the GPU a step is two tiny launches (a GEMM that adds ``h_{t-1} W_hh^T`` into the
step's slice of the input projection, then the fused cell kernel). Each costs the host 10-25 us and the
GPU 2-5 us, so a step loop driven from Python waits on the host. Here the loop runs over the *static*
device arrays of a slot: the first call with a slot runs it eagerly (which compiles the kernels) and
then records it into a CUDA graph; later calls copy their inputs into the slot and replay the graph,
one host call for all T steps. Forward and backward each get a graph. CuPy refuses cuBLAS calls during
stream capture, so a loop that is recorded uses tapegrad's own step GEMM (``kernels/cupy/recurrent.py``)
and an eager loop cuBLAS. On an H100 (T=50, H=256) this took an LSTM training step from 0.24x to 0.96x
cuDNN's speed at B=64.

A slot is keyed by everything that shapes the loop: sizes, dtype, direction, the per-step batch sizes of
a padded batch, whether a backward will follow, the kernel backend, the device, and the address of
W_hh, which the graphs read in place. Optimisers update parameters in place, so that address is stable
from one training step to the next (a new weight array simply gets a new slot).

Ownership: a forward that records a node keeps its slot, whose gates and states its backward reads,
until the node is released (after the backward, or when its outputs are dropped: a
``weakref.finalize`` on the backward closure). Another call with the same key meanwhile takes another
slot, as the layers of a stacked LSTM do. What the caller gets back is always a copy, never a slot's
memory. At most ``MAX_SLOTS`` slots are kept, least recently used dropped first; past that a call
runs eagerly from buffers of its own.

Fused steps: without padding, up to a batch of ``fused_steps_max_batch()`` rows, and at any batch the
CuPy backend's tiled loops cover (kernels/cupy/recurrent_tiled.py), the loop is one ``lstm_seq_fwd`` /
``rnn_seq_fwd`` kernel call and the backward one ``*_seq_bwd``. Their steps fuse the recurrent GEMM
with the cell (backward: the GEMM of the step after it, the output's gradient and the cell's backward),
and the CuPy backend runs all steps in one persistent launch with a grid barrier between them, instead
of two launches per step forward and three backward. A replayed graph pays the GPU a few microseconds
per node whatever its work. The tiled loops keep W_hh in registers and split the batch across blocks;
where no tiling fits (H or B too large for one wave of blocks) the warp-per-unit loops only win at
small batches, and GEMM + cell steps take larger ones. ``set_fused_steps(max_batch)`` (or
``TAPEGRAD_FUSED_STEPS_MAX_BATCH``) moves that crossover; 0 switches fused steps off.

``set_cuda_graphs(False)`` (or ``TAPEGRAD_CUDA_GRAPHS=0`` in the environment) runs the same loops
eagerly. A capture that fails (something in the loop that cannot be captured, or an allocation during
capture, which is refused because the graph would keep writing memory the pool hands out again) makes
that slot run eagerly, with one warning.
"""
from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import Any, Callable

from ..kernels import registry
from .recurrent import _Batches, _data, _parents, _Projection, _side_output, _weight_grads
from .tensor import Tensor, is_grad_enabled, make_result

__all__ = ["set_cuda_graphs", "cuda_graphs_enabled", "clear_cuda_graphs", "set_fused_steps",
           "fused_steps_max_batch"]

MAX_SLOTS = 16

_enabled = os.environ.get("TAPEGRAD_CUDA_GRAPHS", "1") != "0"
_fused_max_batch = int(os.environ.get("TAPEGRAD_FUSED_STEPS_MAX_BATCH", "16"))
_slots: "OrderedDict[tuple, list[_Slot]]" = OrderedDict()
_lock = threading.Lock()
_warned = False
_FAILED = object()


def set_cuda_graphs(enabled: bool) -> None:
    """Replay recurrent step loops as CUDA graphs (default) or run them eagerly."""
    global _enabled
    _enabled = bool(enabled)


def cuda_graphs_enabled() -> bool:
    return _enabled


def set_fused_steps(max_batch: int) -> None:
    """Run each recurrent step as one fused launch for batches of at most ``max_batch`` rows (0: never)."""
    global _fused_max_batch
    if int(max_batch) < 0:
        raise ValueError(f"max_batch must be >= 0, got {max_batch}")
    _fused_max_batch = int(max_batch)


def fused_steps_max_batch() -> int:
    return _fused_max_batch


def clear_cuda_graphs() -> None:
    """Drop every idle slot with its graphs and buffers (slots in use are dropped when released)."""
    with _lock:
        for key in list(_slots):
            _slots[key] = [s for s in _slots[key] if s.busy]
            if not _slots[key]:
                del _slots[key]


class _Slot:
    """Static device arrays for one loop shape, and the graphs recorded over them."""

    __slots__ = ("arrays", "graphs", "busy", "pooled")

    def __init__(self, arrays: dict, pooled: bool) -> None:
        self.arrays = arrays
        self.graphs: dict = {}
        self.busy = True
        self.pooled = pooled

    def release(self) -> None:
        self.busy = False

    @property
    def records(self) -> bool:
        """Whether loops run on this slot are recorded as graphs (and so must avoid cuBLAS)."""
        return _enabled and self.pooled

    def run(self, name: Any, record: Callable[[], None]) -> None:
        """Run ``record`` (which touches only this slot's arrays and the weights): eagerly the first
        time, then as the graph recorded from it."""
        graph = self.graphs.get(name) if self.records else _FAILED
        if graph is None:
            record()
            self.graphs[name] = _capture(record) or _FAILED
        elif graph is _FAILED:
            record()
        else:
            graph.launch()


def _acquire(key: tuple, make: Callable[[], dict]) -> _Slot:
    with _lock:
        slots = _slots.get(key)
        if slots is not None:
            _slots.move_to_end(key)
            for slot in slots:
                if not slot.busy:
                    slot.busy = True
                    return slot
        while sum(len(v) for v in _slots.values()) >= MAX_SLOTS:  # make room: drop idle slots, oldest first
            idle = next(((k, s) for k, v in _slots.items() for s in v if not s.busy), None)
            if idle is None:
                return _Slot(make(), pooled=False)
            k, s = idle
            _slots[k].remove(s)
            if not _slots[k]:
                del _slots[k]
        slot = _Slot(make(), pooled=True)
        _slots.setdefault(key, []).append(slot)
        return slot


def _refuse_allocation(size: int):
    raise RuntimeError("a device allocation during CUDA graph capture")


def _capture(record: Callable[[], None]):
    global _warned
    import cupy
    stream = cupy.cuda.Stream(non_blocking=True)
    try:
        with stream, cupy.cuda.using_allocator(_refuse_allocation):
            stream.begin_capture()
            try:
                record()
            finally:
                graph = stream.end_capture()
        return graph
    except Exception as e:  # the slot runs eagerly from now on
        if not _warned:
            _warned = True
            warnings.warn(f"tapegrad: recording a recurrent step loop as a CUDA graph failed ({type(e).__name__}: "
                          f"{e}); it runs without a graph", RuntimeWarning, stacklevel=4)
        return None


def _gemm(a: Any, b: Any, out: Any, trans_b: bool, accumulate: bool, recorded: bool) -> None:
    """out = a @ op(b) (+ out when accumulating), no temporary: cuBLAS, or in a loop recorded as a graph
    tapegrad's own step GEMM, since CuPy refuses cuBLAS calls during stream capture."""
    if recorded:
        from ..kernels.cupy.recurrent import step_gemm
        step_gemm(a, b, out, trans_b, accumulate)
        return
    from cupy import cublas
    cublas.gemm("N", "T" if trans_b else "N", a, b, out=out, alpha=1.0, beta=1.0 if accumulate else 0.0)


def _weights(w_hh: Tensor) -> tuple[Any, Any]:
    """(W_hh as the graphs read it, its address for the slot key); a non-contiguous W_hh is copied into
    the slot on every call instead (address None)."""
    w = w_hh.data
    if w.flags.c_contiguous:
        return w, _address(w)
    return None, None


def _address(a: Any) -> int:
    return a.data.ptr


def _fused_variant(backend: str) -> Any:
    """What else shapes a fused loop's launches: for CuPy, one persistent launch or a launch per step, rows
    staged in shared memory or not, tiled loops on or off (a graph recorded one way must not be replayed
    after a switch)."""
    if backend != "cupy":
        return None
    from ..kernels.cupy import recurrent_step, recurrent_tiled
    return recurrent_step.PERSISTENT, recurrent_step.STAGE, recurrent_tiled.ENABLED


def _fused(kind: str, backend: str, B: int, H: int, dtype: Any) -> bool:
    """Whether an unpadded batch of B rows runs fused loops: up to ``fused_steps_max_batch()`` rows on any
    backend, and past it where CuPy's tiled persistent loops cover the shape (kernels/cupy/recurrent_tiled.py:
    a block per (units, rows) tile, W_hh in registers), which beat GEMM + cell steps at larger batches."""
    if B <= 0 or _fused_max_batch <= 0:
        return False
    if B <= _fused_max_batch:
        return True
    if backend != "cupy":
        return False
    from ..kernels.cupy import recurrent_step
    return recurrent_step.tiled_loops(4 if kind == "lstm" else 1, B, H, dtype)


def _device_id() -> int:
    import cupy
    return cupy.cuda.runtime.getDevice()


# ---- what the LSTM and the RNN share ----------------------------------------------------------------------

class _Run:
    """One call of a GPU sequence op: its slot, the W_hh its loops read, the input projection written
    into the slot, and the step order.

    ``buffers(T, B, H, dtype, need_grad)`` makes the slot's arrays; ``proj`` names the one that receives
    the projection [T, B, G] (the LSTM's gates, the RNN's pre-activations).
    """

    def __init__(self, kind: str, x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                 b_hh: Tensor | None, parents: tuple, lens: Any, reverse: bool, key: tuple,
                 buffers: Callable[..., dict], proj: str) -> None:
        import cupy as xp
        self.xp = xp
        self.T, self.B, _ = x.shape
        self.H = h0.shape[1]
        self.dtype = x.dtype
        self.backend = registry.backend_of(x.data)
        self.need_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
        self.batches = None if lens is None else _Batches(lens, self.T, xp, self.dtype)
        self.active = None if self.batches is None else tuple(self.batches.active)
        # padded batches keep the GEMM + cell steps: their finished rows carry dh through unchanged
        self.fused = self.batches is None and _fused(kind, self.backend, self.B, self.H, self.dtype)
        self.w_hh = w_hh
        w_in_place, w_ptr = _weights(w_hh)
        T, B, H, dtype, need_grad = self.T, self.B, self.H, self.dtype, self.need_grad

        def make():
            arrays = buffers(T, B, H, dtype, need_grad)
            if w_ptr is None:
                arrays["w"] = xp.empty(w_hh.shape, dtype)
            return arrays
        variant = _fused_variant(self.backend) if self.fused else None
        self.slot = _acquire((kind, T, B, H, dtype.str, reverse, self.active, need_grad, self.backend,
                              _device_id(), w_ptr, self.fused, variant) + key, make)
        self.rec = self.slot.records  # fixed for the call: its eager run and its recording use one GEMM
        self.A = self.slot.arrays
        self.copy_w = w_ptr is None
        self.w = w_in_place if not self.copy_w else self.A["w"]
        self.refresh_weights()
        self.order = None if self.batches is None else self.batches.order
        projection = _Projection(x.data, w_ih.data, _data(b_ih), _data(b_hh), True, reverse, self.order, xp,
                                 out=self.A[proj])
        projection.fill(T - 1 if reverse else 0)
        self.xa = projection.xa if need_grad else None  # the backward's dW_ih and bias GEMM read it
        # hs[t + a] = h_t and hs[t + 1 - a] = h_{t-1}, as in engine/recurrent.py
        self.a = 0 if reverse else 1
        self.first, self.last = (T, 0) if reverse else (0, T)
        self.steps = tuple(range(T - 1, -1, -1) if reverse else range(T))
        self.back_steps = self.steps[::-1]
        self.t_first = self.steps[0] if T else 0  # the step that read h0: its GEMM only serves h0's gradient

    def rows_of(self, a: Any) -> Any:
        """``a`` [B, ...] in run order (sorted by length)."""
        return a if self.order is None else a[self.order]

    def refresh_weights(self) -> None:
        if self.copy_w:
            self.w[...] = self.w_hh.data

    def forward(self, loop: Callable[[], None]) -> None:
        try:
            self.slot.run("forward", loop)
        except BaseException:
            self.slot.release()
            raise

    def output(self, hs: Any) -> Any:
        """The output [T, B, H] (h_t, zero on padding) as a fresh array in the caller's row order."""
        out = hs[self.a:self.a + self.T]
        return out.copy() if self.batches is None else self.batches.unsort(out, 1) * self.batches.mask

    def final(self, state: Any) -> Any:
        """A final state [B, H] as a fresh array in the caller's row order."""
        return (state if self.batches is None else self.batches.unsort(state, 0)).copy()

    def backward_buffers(self, G: int, has_g_out: bool, cell: bool) -> dict:
        """The slot's arrays with the backward's buffers added (once per slot)."""
        A, xp, T, B, H, dtype = self.A, self.xp, self.T, self.B, self.H, self.dtype
        if "dz" not in A:
            A.update(dz=xp.empty((T, B, G), dtype), dh=xp.empty((B, H), dtype))
            if cell:
                A["dc"] = xp.empty((B, H), dtype)
            if self.fused:  # W_hh^T: the fused backward step reads a column of W_hh as a contiguous row
                A["w_t"] = xp.empty((H, G), dtype)
        if has_g_out and "g_out" not in A:
            A["g_out"] = xp.empty((T, B, H), dtype)
        return A

    def fused_backward(self, loop: Callable[[], None], need_h0: bool) -> None:
        """The backward of fused steps: W_hh^T refreshed (inside the recorded loop, so that a replayed graph
        reads the current W_hh), ``loop()`` (the ``*_seq_bwd`` kernel), then dL/dh0 = dz[t_first] W_hh."""
        A = self.A
        A["w_t"][...] = self.w.T
        loop()
        if need_h0 and self.T:
            _gemm(A["dz"][self.t_first], self.w, A["dh"], trans_b=False, accumulate=False, recorded=self.rec)

    def keep_until_released(self, backward: Callable) -> None:
        """The slot stays with the node whose backward reads it, until that closure is released."""
        weakref.finalize(backward, self.slot.release)


# ---- LSTM ------------------------------------------------------------------------------------------------

def _lstm_buffers(T: int, B: int, H: int, dtype: Any, need_grad: bool) -> dict:
    import cupy as xp
    # cs has a row per step even without a backward: the fused loop (one kernel) writes c_t at cs[t + a]
    return {"gates": xp.empty((T, B, 4 * H), dtype), "hs": xp.empty((T + 1, B, H), dtype),
            "cs": xp.empty((T + 1, B, H), dtype)}


def lstm_sequence(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None,
                  b_hh: Tensor | None, lens: Any, reverse: bool) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`tapegrad.engine.recurrent.lstm_sequence` for cupy inputs (arguments already checked)."""
    parents = _parents(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    r = _Run("lstm", x, h0, w_ih, w_hh, b_ih, b_hh, parents, lens, reverse, (), _lstm_buffers, "gates")
    A, B, a, w, rec, active, call = r.A, r.B, r.a, r.w, r.rec, r.active, registry.call
    need_grad, backend, xp, fused = r.need_grad, r.backend, r.xp, r.fused
    A["hs"][r.first] = r.rows_of(h0.data)
    A["cs"][r.first if need_grad or fused else 0] = r.rows_of(c0.data)

    def forward_loop():
        gates, hs, cs = A["gates"], A["hs"], A["cs"]
        if fused:
            call("lstm_seq_fwd", backend, hs, w, gates, cs, reverse)
            return
        for s, t in enumerate(r.steps):
            h_prev, h_out = hs[t + 1 - a], hs[t + a]
            if need_grad:
                c_prev, c_out = cs[t + 1 - a], cs[t + a]
            else:  # ping-pong: nothing is kept for a backward
                c_prev, c_out = cs[s & 1], cs[(s + 1) & 1]
            z = gates[t]
            n = B if active is None else active[t]
            if n == B:
                _gemm(h_prev, w, z, trans_b=True, accumulate=True, recorded=rec)
                call("lstm_cell_fwd", backend, z, c_prev, z, c_out, h_out)
                continue
            if n:
                _gemm(h_prev[:n], w, z[:n], trans_b=True, accumulate=True, recorded=rec)
                call("lstm_cell_fwd", backend, z[:n], c_prev[:n], z[:n], c_out[:n], h_out[:n])
            h_out[n:] = h_prev[n:]  # finished rows keep their state
            c_out[n:] = c_prev[n:]

    r.forward(forward_loop)
    out, h_n = r.output(A["hs"]), r.final(A["hs"][r.last])
    c_n = r.final(A["cs"][r.last] if need_grad or fused else A["cs"][r.T & 1])  # ping-pong ends in row T & 1
    if not need_grad:
        r.slot.release()
        return Tensor(out), Tensor(h_n), Tensor(c_n)

    stash: dict = {}

    def backward(g_hn):
        g_out, g_cn = stash.pop("out", None), stash.pop("c_n", None)
        if r.batches is not None:
            g_hn = r.batches.sort(g_hn, 0)
            g_cn = None if g_cn is None else r.batches.sort(g_cn, 0)
            g_out = None if g_out is None else r.batches.sort(g_out, 1)
        has_g_out, need_h0 = g_out is not None, h0.requires_grad
        r.backward_buffers(4 * r.H, has_g_out, cell=True)
        A["dh"][...] = g_hn
        if g_cn is None:
            A["dc"].fill(0)
        else:
            A["dc"][...] = g_cn
        if has_g_out:
            A["g_out"][...] = g_out
        r.refresh_weights()

        def backward_loop():
            gates, cs, dz, dh, dc, go = A["gates"], A["cs"], A["dz"], A["dh"], A["dc"], A.get("g_out")
            if fused:
                r.fused_backward(lambda: call("lstm_seq_bwd", backend, dz, A["w_t"], dh, go if has_g_out else None,
                                              gates, cs, dc, reverse), need_h0)
                return
            for t in r.back_steps:
                n = B if active is None else active[t]
                if n == B:
                    if has_g_out:
                        xp.add(dh, go[t], out=dh)
                    call("lstm_cell_bwd", backend, gates[t], cs[t + 1 - a], cs[t + a], dh, dc, dz[t], dc)
                    if t != r.t_first or need_h0:
                        _gemm(dz[t], w, dh, trans_b=False, accumulate=False, recorded=rec)
                    continue
                dz[t, n:] = 0  # padding: no gradient to x or the weights; dh, dc pass through unchanged
                if n:
                    dhn, dcn = dh[:n], dc[:n]
                    if has_g_out:
                        xp.add(dhn, go[t, :n], out=dhn)
                    call("lstm_cell_bwd", backend, gates[t, :n], cs[t + 1 - a, :n], cs[t + a, :n], dhn, dcn,
                         dz[t, :n], dcn)
                    if t != r.t_first or need_h0:
                        _gemm(dz[t, :n], w, dhn, trans_b=False, accumulate=False, recorded=rec)

        r.slot.run(("backward", has_g_out, need_h0), backward_loop)
        return _weight_grads(A["dz"], r.xa, A["hs"][1 - a:1 - a + r.T], w_ih.data, r.batches, A["dh"].copy(),
                             A["dc"].copy(), (x, h0, c0, w_ih, w_hh, b_ih, b_hh))

    r.keep_until_released(backward)
    h_n_t = make_result(h_n, parents, backward, "lstm_sequence")
    out_t = _side_output(out, h_n_t, stash, "out", "lstm_sequence.output")
    c_n_t = _side_output(c_n, h_n_t, stash, "c_n", "lstm_sequence.c_n")
    return out_t, h_n_t, c_n_t


# ---- Elman RNN ---------------------------------------------------------------------------------------------

def _rnn_buffers(T: int, B: int, H: int, dtype: Any, need_grad: bool) -> dict:
    import cupy as xp
    return {"p": xp.empty((T, B, H), dtype), "hs": xp.empty((T + 1, B, H), dtype)}


def rnn_sequence(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
                 relu: bool, lens: Any, reverse: bool) -> tuple[Tensor, Tensor]:
    """:func:`tapegrad.engine.recurrent.rnn_sequence` for cupy inputs (arguments already checked)."""
    parents = _parents(x, h0, w_ih, w_hh, b_ih, b_hh)
    r = _Run("rnn", x, h0, w_ih, w_hh, b_ih, b_hh, parents, lens, reverse, (relu,), _rnn_buffers, "p")
    A, B, a, w, rec, active, call = r.A, r.B, r.a, r.w, r.rec, r.active, registry.call
    backend, xp, fused = r.backend, r.xp, r.fused
    A["hs"][r.first] = r.rows_of(h0.data)

    def forward_loop():
        p, hs = A["p"], A["hs"]
        if fused:
            call("rnn_seq_fwd", backend, hs, w, p, reverse, relu)
            return
        for t in r.steps:
            h_prev, h_out = hs[t + 1 - a], hs[t + a]
            n = B if active is None else active[t]
            if n == B:
                _gemm(h_prev, w, p[t], trans_b=True, accumulate=True, recorded=rec)
                call("rnn_cell_fwd", backend, p[t], h_out, relu)
                continue
            if n:
                _gemm(h_prev[:n], w, p[t, :n], trans_b=True, accumulate=True, recorded=rec)
                call("rnn_cell_fwd", backend, p[t, :n], h_out[:n], relu)
            h_out[n:] = h_prev[n:]

    r.forward(forward_loop)
    out, h_n = r.output(A["hs"]), r.final(A["hs"][r.last])
    if not r.need_grad:
        r.slot.release()
        return Tensor(out), Tensor(h_n)

    stash: dict = {}

    def backward(g_hn):
        g_out = stash.pop("out", None)
        if r.batches is not None:
            g_hn = r.batches.sort(g_hn, 0)
            g_out = None if g_out is None else r.batches.sort(g_out, 1)
        has_g_out, need_h0 = g_out is not None, h0.requires_grad
        r.backward_buffers(r.H, has_g_out, cell=False)
        A["dh"][...] = g_hn
        if has_g_out:
            A["g_out"][...] = g_out
        r.refresh_weights()

        def backward_loop():
            hs, dz, dh, go = A["hs"], A["dz"], A["dh"], A.get("g_out")
            if fused:
                r.fused_backward(lambda: call("rnn_seq_bwd", backend, dz, A["w_t"], dh, go if has_g_out else None,
                                              hs, reverse, relu), need_h0)
                return
            for t in r.back_steps:
                n = B if active is None else active[t]
                if n == B:
                    if has_g_out:
                        xp.add(dh, go[t], out=dh)
                    call("rnn_cell_bwd", backend, hs[t + a], dh, dz[t], relu)
                    if t != r.t_first or need_h0:
                        _gemm(dz[t], w, dh, trans_b=False, accumulate=False, recorded=rec)
                    continue
                dz[t, n:] = 0
                if n:
                    dhn = dh[:n]
                    if has_g_out:
                        xp.add(dhn, go[t, :n], out=dhn)
                    call("rnn_cell_bwd", backend, hs[t + a, :n], dhn, dz[t, :n], relu)
                    if t != r.t_first or need_h0:
                        _gemm(dz[t, :n], w, dhn, trans_b=False, accumulate=False, recorded=rec)

        r.slot.run(("backward", has_g_out, need_h0), backward_loop)
        return _weight_grads(A["dz"], r.xa, A["hs"][1 - a:1 - a + r.T], w_ih.data, r.batches, A["dh"].copy(),
                             None, (x, h0, None, w_ih, w_hh, b_ih, b_hh))

    r.keep_until_released(backward)
    h_n_t = make_result(h_n, parents, backward, "rnn_sequence")
    return _side_output(out, h_n_t, stash, "out", "rnn_sequence.output"), h_n_t
