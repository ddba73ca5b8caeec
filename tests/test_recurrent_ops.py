"""The whole-sequence ops lstm_sequence / rnn_sequence: gradcheck on tiny shapes, VJP on realistic ones.

Every input is checked (x, h0, c0, both weights, both biases), forward and reverse, with and without
``lengths`` (sorted and unsorted), and through each of the three results alone, since output and c_n
reach the recorded node differently from h_n.
"""
from __future__ import annotations

import numpy as np
import pytest
import tapegrad as tg
from tapegrad.engine import ops
from tapegrad.engine.recurrent import lstm_sequence, rnn_sequence
from tapegrad.kernels import registry

T, B, I, H = 4, 3, 2, 3


def _inputs(rng, gate_mult, T=T, B=B, I=I, H=H, bias=True, state=2, scale=0.6):
    def t(*shape):
        return tg.tensor(rng.standard_normal(shape) * scale, requires_grad=True)
    args = [t(T, B, I)] + [t(B, H) for _ in range(state)] + [t(gate_mult * H, I), t(gate_mult * H, H)]
    args += [t(gate_mult * H), t(gate_mult * H)] if bias else [None, None]
    return args


def _flat(*results):
    return ops.concat([ops.reshape(r, (-1,)) for r in results])


LENGTH_CASES = [None, [4, 2, 1], [2, 4, 3]]  # none, sorted (decreasing), unsorted


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTH_CASES)
def test_lstm_sequence_gradcheck_every_input(reverse, lengths):
    rng = np.random.default_rng(0)
    args = _inputs(rng, 4)
    tg.gradcheck(lambda *a: _flat(*lstm_sequence(*a, lengths=lengths, reverse=reverse)), args)


@pytest.mark.parametrize("which", [0, 1, 2])
def test_lstm_sequence_gradcheck_each_result_alone(which):
    rng = np.random.default_rng(1)
    args = _inputs(rng, 4)
    tg.gradcheck(lambda *a: lstm_sequence(*a, lengths=[3, 4, 1])[which], args)


def test_lstm_sequence_gradcheck_without_bias_and_with_constant_inputs():
    rng = np.random.default_rng(2)
    args = _inputs(rng, 4, bias=False)[:5]
    args[0].requires_grad_(False)  # x a constant: its gradient is not asked for
    args[2].requires_grad_(False)
    tg.gradcheck(lambda *a: _flat(*lstm_sequence(*a, reverse=True)), args)


@pytest.mark.parametrize("op", ["lstm", "rnn"])
def test_gradcheck_when_only_x_and_h0_require_grad(op):
    """Weights and biases constant (frozen layer): only the gradients asked for are computed."""
    rng = np.random.default_rng(14)
    args = _inputs(rng, 4 if op == "lstm" else 1, state=2 if op == "lstm" else 1)
    for a in args[2:]:
        a.requires_grad_(False)
    fn = lstm_sequence if op == "lstm" else rnn_sequence
    tg.gradcheck(lambda *a: _flat(*fn(*a, lengths=[2, 4, 3])), args)


@pytest.mark.parametrize("op", ["lstm", "rnn"])
@pytest.mark.parametrize("h0_grad", [True, False])
def test_gradcheck_with_a_zero_initial_state(op, h0_grad):
    """A zero h0 (the layers' default) skips the first step's recurrent GEMM, and the last backward
    GEMM when h0 needs no gradient; both shortcuts must leave every gradient right."""
    rng = np.random.default_rng(15)
    args = _inputs(rng, 4 if op == "lstm" else 1, state=2 if op == "lstm" else 1)
    args[1] = tg.tensor(np.zeros_like(args[1].data), requires_grad=h0_grad)
    fn = lstm_sequence if op == "lstm" else rnn_sequence
    for reverse in (False, True):
        for lengths in (None, [2, 4, 3]):
            tg.gradcheck(lambda *a, n=lengths, r=reverse: _flat(*fn(*a, lengths=n, reverse=r)), args)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", LENGTH_CASES)
def test_rnn_sequence_gradcheck_every_input(nonlinearity, reverse, lengths):
    rng = np.random.default_rng(3)
    args = _inputs(rng, 1, state=1)
    tg.gradcheck(lambda *a: _flat(*rnn_sequence(*a, nonlinearity=nonlinearity, lengths=lengths,
                                                reverse=reverse)), args)


@pytest.mark.parametrize("which", [0, 1])
def test_rnn_sequence_gradcheck_each_result_alone(which):
    rng = np.random.default_rng(4)
    args = _inputs(rng, 1, state=1)
    tg.gradcheck(lambda *a: rnn_sequence(*a, lengths=[1, 4, 2], reverse=True)[which], args)


@pytest.mark.parametrize("op", ["lstm", "rnn"])
def test_sequence_vjp_in_a_random_direction_on_realistic_shapes(op):
    """<dL/dtheta, v> against (L(theta + eps v) - L(theta - eps v)) / 2 eps for every input at once."""
    rng = np.random.default_rng(5)
    gm, state = (4, 2) if op == "lstm" else (1, 1)
    args = _inputs(rng, gm, T=20, B=8, I=16, H=32, state=state, scale=0.3)
    fn = lstm_sequence if op == "lstm" else rnn_sequence
    lengths = rng.integers(1, 21, size=8)
    weights = [rng.standard_normal(s) for s in ((20, 8, 32), (8, 32), (8, 32))]

    def loss(*a):
        res = fn(*a, lengths=lengths)
        return sum(float((r.data * w).sum()) for r, w in zip(res, weights))

    res = fn(*args, lengths=lengths)
    total = None
    for r, w in zip(res, weights):
        term = (r * tg.tensor(w)).sum()
        total = term if total is None else total + term
    total.backward()
    dirs = [rng.standard_normal(a.shape) for a in args]
    analytic = sum(float((a.grad * d).sum()) for a, d in zip(args, dirs))
    eps = 1e-6
    base = [a.data.copy() for a in args]
    with tg.no_grad():
        for a, b0, d in zip(args, base, dirs):
            a.data = b0 + eps * d
        up = loss(*args)
        for a, b0, d in zip(args, base, dirs):
            a.data = b0 - eps * d
        down = loss(*args)
    numeric = (up - down) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


def test_lengths_padding_outputs_are_zero_and_padding_gets_no_gradient():
    rng = np.random.default_rng(6)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs(rng, 4, T=5, B=3)
    lengths = np.array([2, 5, 3])
    for reverse in (False, True):
        out = lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse)[0]
        pad = np.arange(5)[:, None] >= lengths[None, :]
        assert np.all(out.data[pad] == 0)
        for p in (x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            p.grad = None
        # A gradient on the padded outputs must be ignored entirely.
        g = rng.standard_normal(out.shape)
        g_pad_only = np.where(pad[:, :, None], g, 0.0)
        out.backward(g_pad_only)
        assert np.all(x.grad == 0) and np.all(w_ih.grad == 0) and np.all(h0.grad == 0)
        for p in (x, h0, c0, w_ih, w_hh, b_ih, b_hh):
            p.grad = None
        out = lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse)[0]
        out.backward(g)
        assert np.all(x.grad[pad] == 0)
        assert np.any(x.grad[~pad] != 0)


def test_lengths_equal_to_T_match_no_lengths():
    rng = np.random.default_rng(7)
    args = _inputs(rng, 4)
    for reverse in (False, True):
        a = lstm_sequence(*args, reverse=reverse)
        b = lstm_sequence(*args, lengths=[T] * B, reverse=reverse)
        for r, s in zip(a, b):
            np.testing.assert_allclose(r.data, s.data, rtol=0, atol=1e-15)


def test_h_n_is_the_state_at_each_sequences_last_step():
    """Packed semantics by construction: running each sequence alone on its real steps gives h_n, c_n."""
    rng = np.random.default_rng(8)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs(rng, 4, T=6, B=3)
    lengths = [6, 2, 4]
    for reverse in (False, True):
        out, h_n, c_n = lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=reverse)
        for b, n in enumerate(lengths):
            o1, h1, c1 = lstm_sequence(x.data[:n, b:b + 1], h0.data[b:b + 1], c0.data[b:b + 1], w_ih, w_hh,
                                       b_ih, b_hh, reverse=reverse)
            np.testing.assert_allclose(h_n.data[b], h1.data[0], atol=1e-14)
            np.testing.assert_allclose(c_n.data[b], c1.data[0], atol=1e-14)
            np.testing.assert_allclose(out.data[:n, b], o1.data[:, 0], atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_grad_path_gives_the_same_values(dtype):
    rng = np.random.default_rng(9)
    args = [None if a is None else tg.tensor(a.data.astype(dtype), requires_grad=True)
            for a in _inputs(rng, 4, T=7, B=5, I=3, H=4)]
    for lengths in (None, [7, 3, 5, 1, 7]):
        for reverse in (False, True):
            with_tape = lstm_sequence(*args, lengths=lengths, reverse=reverse)
            with tg.no_grad():
                without = lstm_sequence(*args, lengths=lengths, reverse=reverse)
            assert not any(r.requires_grad for r in without)
            for r, s in zip(with_tape, without):
                np.testing.assert_array_equal(r.data, s.data)


def test_one_node_per_sequence_and_one_kernel_call_per_step():
    rng = np.random.default_rng(10)
    args = _inputs(rng, 4, T=9)
    calls = []

    def hook(name, backend, fn, a, kw):
        calls.append(name)
        return fn(*a, **kw)
    prev, registry._hook = registry._hook, hook
    try:
        out, h_n, c_n = lstm_sequence(*args)
        assert calls == ["lstm_cell_fwd"] * 9
        assert h_n._node.name == "lstm_sequence"
        assert out._node.parents == (h_n,) and c_n._node.parents == (h_n,)
        (out.sum() + c_n.sum()).backward()
        assert calls[9:] == ["lstm_cell_bwd"] * 9
    finally:
        registry._hook = prev


def test_gradients_accumulate_from_output_h_n_and_c_n_together():
    """L = sum(out) + sum(h_n) + sum(c_n) equals the sum of the three one-result gradients."""
    rng = np.random.default_rng(11)
    args = _inputs(rng, 4)
    grads = []
    for pick in ((0,), (1,), (2,), (0, 1, 2)):
        for a in args:
            a.grad = None
        res = lstm_sequence(*args, lengths=[4, 1, 3], reverse=True)
        total = None
        for i in pick:
            total = res[i].sum() if total is None else total + res[i].sum()
        total.backward()
        grads.append([a.grad.copy() for a in args])
    for k in range(len(args)):
        np.testing.assert_allclose(grads[3][k], grads[0][k] + grads[1][k] + grads[2][k], atol=1e-13)


def test_argument_errors_name_the_argument():
    rng = np.random.default_rng(12)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _inputs(rng, 4)
    with pytest.raises(ValueError, match="lengths"):
        lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=[0, 1, 2])
    with pytest.raises(ValueError, match="lengths"):
        lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=[5, 1, 2])
    with pytest.raises(ValueError, match="lengths"):
        lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=[1, 2])
    with pytest.raises(ValueError, match="lengths"):
        lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=[1.5, 2.0, 1.0])
    with pytest.raises(ValueError, match="h0"):
        lstm_sequence(x, c0.data[:2], c0, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="w_ih"):
        lstm_sequence(x, h0, c0, w_hh, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="b_ih"):
        lstm_sequence(x, h0, c0, w_ih, w_hh, b_ih.data[:3], b_hh)
    with pytest.raises(TypeError, match="dtype"):
        lstm_sequence(x.data.astype(np.float32), h0, c0, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="x"):
        lstm_sequence(x.data[:0], h0, c0, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnn_sequence(x, h0, w_ih.data[:H], w_hh.data[:H, :], None, None, nonlinearity="sigmoid")


@pytest.mark.parametrize("chunk_steps", [1, 2, 3])
def test_projection_in_chunks_gives_the_same_results(monkeypatch, chunk_steps):
    """The input projection runs a few steps at a time (forward and reverse, with and without a tape);
    chunks that do not divide T must give what one chunk of all T steps gives."""
    from tapegrad.engine import recurrent
    rng = np.random.default_rng(13)
    T_, B_, H_ = 7, 3, 2
    lstm_args = _inputs(rng, 4, T=T_, B=B_, H=H_)
    rnn_args = _inputs(rng, 1, T=T_, B=B_, H=H_, state=1)
    cases = [(lstm_sequence, lstm_args, 4), (rnn_sequence, rnn_args, 1)]
    for lengths in (None, [7, 2, 5]):
        for reverse in (False, True):
            for fn, args, gm in cases:
                monkeypatch.setattr(recurrent._Projection, "_CHUNK_BYTES", 1 << 30)
                ref = [r.data.copy() for r in fn(*args, lengths=lengths, reverse=reverse)]
                monkeypatch.setattr(recurrent._Projection, "_CHUNK_BYTES", chunk_steps * B_ * gm * H_ * 8)
                for grad in (True, False):
                    with (tg.enable_grad() if grad else tg.no_grad()):
                        got = fn(*args, lengths=lengths, reverse=reverse)
                    for r, g in zip(ref, got):
                        np.testing.assert_array_equal(g.data, r)
