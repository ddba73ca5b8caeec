"""The GPU recurrent ops' bookkeeping (static slots, graph replay, slot ownership), run on the CPU.

engine/recurrent_cuda.py runs only on cupy arrays. Its indexing, its slot leasing and its replays can
still be checked without a GPU: here ``cupy`` is a stand-in backed by numpy, the cuBLAS GEMM is numpy's,
and a "CUDA graph" is the recorded loop itself, re-run on replay over the slot's arrays (which is what
a graph does, minus the launches). Results must equal the CPU ops of engine/recurrent.py exactly, call
after call, including when a second forward takes place before the first one's backward. The real
GPU runs are in tests/test_gpu_engine.py.
"""
from __future__ import annotations

import gc
import sys
import types

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine import recurrent, recurrent_cuda


class _ReplayGraph:
    def __init__(self, record):
        self.record = record
        self.launches = 0

    def launch(self):
        self.launches += 1
        self.record()


@pytest.fixture
def gpu_standin(monkeypatch):
    fake = types.ModuleType("cupy")
    for name in ("empty", "add", "asarray", "zeros", "ascontiguousarray"):
        setattr(fake, name, getattr(np, name))
    monkeypatch.setitem(sys.modules, "cupy", fake)

    def gemm(a, b, out, trans_b, accumulate, recorded):
        prod = a @ (b.T if trans_b else b)
        if accumulate:
            out += prod
        else:
            out[...] = prod
    monkeypatch.setattr(recurrent_cuda, "_gemm", gemm)
    monkeypatch.setattr(recurrent_cuda, "_device_id", lambda: 0)
    monkeypatch.setattr(recurrent_cuda, "_address", lambda a: a.ctypes.data)
    graphs = []

    def capture(record):
        graphs.append(_ReplayGraph(record))
        return graphs[-1]
    monkeypatch.setattr(recurrent_cuda, "_capture", capture)
    recurrent_cuda._slots.clear()
    yield graphs
    recurrent_cuda._slots.clear()


def _inputs(kind, T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    G = 4 * H if kind == "lstm" else H
    mk = lambda *s: tg.tensor(rng.standard_normal(s) * 0.5, requires_grad=True)  # noqa: E731
    return dict(x=mk(T, B, I), h0=mk(B, H), c0=mk(B, H) if kind == "lstm" else None, w_ih=mk(G, I),
                w_hh=mk(G, H), b_ih=mk(G), b_hh=mk(G))


def _run(fn, kind, inp, lens, reverse, g_out, g_hn):
    args = [inp[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh") if inp[k] is not None or k != "c0"]
    if kind == "lstm":
        res = fn(*args, lens, reverse) if fn is not recurrent.lstm_sequence else fn(*args, lengths=lens, reverse=reverse)
        out, h_n = res[0], res[1]
    else:
        if fn is recurrent.rnn_sequence:
            out, h_n = fn(*args, nonlinearity="tanh", lengths=lens, reverse=reverse)
        else:
            out, h_n = fn(*args, False, lens, reverse)
    loss = (out * tg.tensor(g_out)).sum() + (h_n * tg.tensor(g_hn)).sum()
    return out, h_n, loss


def _grads(inp):
    return {k: None if v is None or v.grad is None else v.grad.copy() for k, v in inp.items()}


def _zero(inp):
    for v in inp.values():
        if v is not None:
            v.grad = None


def _gpu_fn(kind):
    """The GPU op with the CPU op's positional arguments (lengths as given, checked the same way)."""
    def lengths(a):
        return recurrent._check_lengths(a, None, None) if a is None else np.asarray(a, dtype=np.int64)
    if kind == "lstm":
        return lambda *a: recurrent_cuda.lstm_sequence(*a[:7], lengths(a[7]), a[8])
    return lambda *a: recurrent_cuda.rnn_sequence(*a[:6], a[6], lengths(a[7]), a[8])


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("fused", [False, True], ids=["gemm+cell", "fused"])
def test_replayed_loops_equal_the_cpu_ops_call_after_call(gpu_standin, monkeypatch, kind, reverse, with_lengths,
                                                          fused):
    monkeypatch.setattr(recurrent_cuda, "_fused_max_batch", 16 if fused else 0)
    T, B, I, H = 6, 4, 3, 5
    lens = np.array([6, 2, 5, 3]) if with_lengths else None
    cpu_fn = recurrent.lstm_sequence if kind == "lstm" else recurrent.rnn_sequence
    rng = np.random.default_rng(0)
    inp = _inputs(kind, T, B, I, H, seed=0)
    for call in range(3):  # eager + capture, then two replays
        for k, v in _inputs(kind, T, B, I, H, seed=call + 1).items():  # in place, as an optimiser updates
            if v is not None:
                inp[k].data[...] = v.data
        g_out, g_hn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
        out_c, h_c, loss_c = _run(cpu_fn, kind, inp, lens, reverse, g_out, g_hn)
        loss_c.backward()
        want = _grads(inp)
        _zero(inp)
        out_g, h_g, loss_g = _run(_gpu_fn(kind), kind, inp, lens, reverse, g_out, g_hn)
        np.testing.assert_allclose(out_g.data, out_c.data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(h_g.data, h_c.data, rtol=1e-12, atol=1e-12)
        loss_g.backward()
        got = _grads(inp)
        _zero(inp)
        for k in want:
            if want[k] is not None:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12, err_msg=f"grad of {k}, call {call}")
    # one slot: its forward and backward graphs were recorded at the first call, replayed at the others
    assert len(gpu_standin) == 2 and all(g.launches == 2 for g in gpu_standin)


def test_a_second_forward_before_the_first_backward_takes_another_slot(gpu_standin):
    T, B, I, H = 5, 3, 2, 4
    inp = _inputs("lstm", T, B, I, H, seed=1)
    fn = _gpu_fn("lstm")
    rng = np.random.default_rng(1)
    g = [(rng.standard_normal((T, B, H)), rng.standard_normal((B, H))) for _ in range(2)]
    # same weights, different inputs: both calls share the slot key
    x2 = tg.tensor(np.random.default_rng(9).standard_normal((T, B, I)), requires_grad=True)
    inp2 = dict(inp, x=x2)
    _, _, loss1 = _run(fn, "lstm", inp, None, False, *g[0])
    _, _, loss2 = _run(fn, "lstm", inp2, None, False, *g[1])
    key_slots = [v for v in recurrent_cuda._slots.values()]
    assert sum(len(v) for v in key_slots) == 2
    loss1.backward()
    got1 = inp["x"].grad.copy()
    loss2.backward()
    got2 = x2.grad.copy()
    _zero(inp)
    x2.grad = None
    for x_in, (go, gh), got in ((inp["x"], g[0], got1), (x2, g[1], got2)):
        _, _, loss = _run(recurrent.lstm_sequence, "lstm", dict(inp, x=x_in), None, False, go, gh)
        x_in.grad = None
        loss.backward()
        np.testing.assert_allclose(got, x_in.grad, rtol=1e-10, atol=1e-12)
    del loss1, loss2
    gc.collect()
    assert not any(s.busy for v in recurrent_cuda._slots.values() for s in v)


def test_no_grad_calls_release_their_slot_and_results_are_copies(gpu_standin):
    T, B, I, H = 4, 2, 3, 3
    inp = _inputs("rnn", T, B, I, H, seed=2)
    fn = _gpu_fn("rnn")
    with tg.no_grad():
        out1, _ = fn(*[inp[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")], False, None, False)
        first = out1.data.copy()
        inp2 = _inputs("rnn", T, B, I, H, seed=3)
        inp2["w_hh"] = inp["w_hh"]  # same slot key
        fn(*[inp2[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")], False, None, False)
    np.testing.assert_array_equal(out1.data, first)  # the second call did not write into the first's result
    assert sum(len(v) for v in recurrent_cuda._slots.values()) == 1
    assert not any(s.busy for v in recurrent_cuda._slots.values() for s in v)


def test_slots_are_capped_and_fall_back_to_private_buffers(gpu_standin, monkeypatch):
    monkeypatch.setattr(recurrent_cuda, "MAX_SLOTS", 2)
    T, B, I, H = 3, 2, 2, 2
    inp = _inputs("rnn", T, B, I, H, seed=4)
    fn = _gpu_fn("rnn")
    keep = [fn(*[inp[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")], False, None, False) for _ in range(4)]
    assert sum(len(v) for v in recurrent_cuda._slots.values()) == 2
    for out, h_n in keep:  # every call still gets right answers
        out_c, h_c = recurrent.rnn_sequence(*[inp[k] for k in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")])
        np.testing.assert_allclose(out.data, out_c.data, rtol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("T", [1, 4, 5])
@pytest.mark.parametrize("fused", [False, True], ids=["gemm+cell", "fused"])
def test_inference_results_including_the_lstm_cell_state_equal_the_cpu_op(gpu_standin, monkeypatch, reverse,
                                                                         with_lengths, T, fused):
    monkeypatch.setattr(recurrent_cuda, "_fused_max_batch", 16 if fused else 0)
    B, I, H = 3, 2, 4
    inp = _inputs("lstm", T, B, I, H, seed=T)
    lens = np.array([T, 1, max(1, T - 2)]) if with_lengths else None
    args = [inp[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
    with tg.no_grad():
        for _ in range(2):  # recorded, then replayed
            got = _gpu_fn("lstm")(*args, lens, reverse)
            want = recurrent.lstm_sequence(*args, lengths=lens, reverse=reverse)
            for g, w_ in zip(got, want):
                np.testing.assert_allclose(g.data, w_.data, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_fused_steps_are_chosen_by_batch_size_and_never_with_padding(gpu_standin, monkeypatch, kind):
    """Which loop ran is visible in the kernels called: one fused launch per step, or GEMM + cell."""
    from tapegrad.kernels import registry
    names = []
    real = registry.call

    def spy(name, backend, *args, **kwargs):
        names.append(name)
        return real(name, backend, *args, **kwargs)
    monkeypatch.setattr(registry, "call", spy)
    monkeypatch.setattr(recurrent_cuda, "_fused_max_batch", recurrent_cuda._fused_max_batch)  # restored after
    T, I, H = 3, 2, 3
    for B, lens, limit, fused in ((4, None, 4, True), (5, None, 4, False), (4, [3, 1, 2, 3], 16, False),
                                  (4, None, 0, False)):
        recurrent_cuda.set_fused_steps(limit)
        names.clear()
        inp = _inputs(kind, T, B, I, H, seed=B)
        _, _, loss = _run(_gpu_fn(kind), kind, inp, None if lens is None else np.array(lens), False,
                          np.ones((T, B, H)), np.ones((B, H)))
        loss.backward()
        loops = {n for n in names if "_seq_" in n}
        cells = {n for n in names if "_cell_" in n}
        assert (loops == {f"{kind}_seq_fwd", f"{kind}_seq_bwd"} and not cells) if fused else \
            (cells == {f"{kind}_cell_fwd", f"{kind}_cell_bwd"} and not loops), (B, lens, limit, names)
        if fused:  # one call for the loop each way
            assert names.count(f"{kind}_seq_fwd") == 1 and names.count(f"{kind}_seq_bwd") == 1
    with pytest.raises(ValueError):
        recurrent_cuda.set_fused_steps(-1)
