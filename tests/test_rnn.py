"""RNN, LSTM, RNNCell and LSTMCell against torch.nn with the same weights: outputs, final states and every
gradient (input, initial states, all parameters), to 1e-5 in float32 and 1e-10 in float64."""
from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import tapegrad as tg
from tapegrad.layers.rnn import LSTM, RNN, LSTMCell, RNNCell

TOL = {np.float32: 1e-5, np.float64: 1e-10}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _close(ours, ref, dtype, what):
    ref = ref.detach().numpy() if hasattr(ref, "detach") else ref
    ours = ours.numpy() if isinstance(ours, tg.Tensor) else ours
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs torch {ref.shape}"
    tol = TOL[dtype]
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol, err_msg=what)


def _pair(kind, dtype, **kw):
    """A torch module and ours with the same weights (copied through state_dict)."""
    torch.manual_seed(0)
    tmod = {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[kind](**kw).to(TORCH_DTYPE[dtype])
    ours = {"lstm": LSTM, "rnn": RNN}[kind](dtype=dtype, **kw)
    tstate = tmod.state_dict()
    assert list(ours.state_dict()) == list(tstate)
    ours.load_state_dict({k: v.numpy() for k, v in tstate.items()})
    return tmod, ours


def _run_torch(tmod, x, hx, lengths, batch_first):
    if lengths is None:
        return tmod(x, hx)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
    out, state = tmod(packed, hx)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                    total_length=x.shape[1 if batch_first else 0])
    return out, state


CONFIGS = [
    # num_layers, bidirectional, batch_first, lengths, dtype, bias, give hx
    (1, False, False, None, np.float64, True, True),
    (1, True, False, [5, 2, 4], np.float32, True, True),
    (2, True, False, None, np.float32, True, False),
    (2, False, True, [3, 5, 1], np.float32, True, True),
    (3, True, True, [4, 5, 2], np.float64, True, True),
    (3, False, False, None, np.float32, False, True),
    (2, True, True, [5, 5, 5], np.float64, False, True),
]


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,lengths,dtype,bias,give_hx", CONFIGS)
def test_matches_torch_outputs_states_and_every_gradient(kind, num_layers, bidirectional, batch_first, lengths,
                                                         dtype, bias, give_hx):
    T, B, I, H = 5, 3, 4, 6
    kw = {"input_size": I, "hidden_size": H, "num_layers": num_layers, "bias": bias,
          "batch_first": batch_first, "bidirectional": bidirectional}
    if kind != "lstm":
        kw["nonlinearity"] = kind.split("_")[1]
    tmod, ours = _pair("lstm" if kind == "lstm" else "rnn", dtype, **kw)
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    states = [rng.standard_normal((num_layers * D, B, H)).astype(dtype) * 0.5
              for _ in range(2 if kind == "lstm" else 1)]
    tx = torch.tensor(x, requires_grad=True)
    tstates = [torch.tensor(s, requires_grad=True) for s in states]
    gx = tg.tensor(x, requires_grad=True)
    gstates = [tg.tensor(s, requires_grad=True) for s in states]
    if kind == "lstm":
        thx = tuple(tstates) if give_hx else None
        ghx = tuple(gstates) if give_hx else None
    else:
        thx = tstates[0] if give_hx else None
        ghx = gstates[0] if give_hx else None

    tout, tstate = _run_torch(tmod, tx, thx, lengths, batch_first)
    gout, gstate = ours(gx, ghx, lengths=lengths)
    tfinal = list(tstate) if kind == "lstm" else [tstate]
    gfinal = list(gstate) if kind == "lstm" else [gstate]
    _close(gout, tout, dtype, "output")
    for name, g, t in zip(("h_n", "c_n"), gfinal, tfinal):
        _close(g, t, dtype, name)

    # One loss over every result with distinct weights, so each gradient path counts.
    weights = [rng.standard_normal(tuple(t.shape)).astype(dtype) for t in [tout] + tfinal]
    tloss = sum((t * torch.tensor(w)).sum() for t, w in zip([tout] + tfinal, weights))
    tloss.backward()
    gloss = None
    for g, w in zip([gout] + gfinal, weights):
        term = (g * tg.tensor(w)).sum()
        gloss = term if gloss is None else gloss + term
    gloss.backward()

    _close(gx.grad, tx.grad, dtype, "grad input")
    if give_hx:
        for i, (g, t) in enumerate(zip(gstates, tstates)):
            _close(g.grad, t.grad, dtype, f"grad hx[{i}]")
    tparams = dict(tmod.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, tparams[name].grad, dtype, f"grad {name}")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_unbatched_input_matches_torch(kind):
    dtype = np.float64
    tmod, ours = _pair(kind, dtype, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3))
    h = rng.standard_normal((4, 4))
    tx, th = torch.tensor(x, requires_grad=True), torch.tensor(h, requires_grad=True)
    gx, gh = tg.tensor(x, requires_grad=True), tg.tensor(h, requires_grad=True)
    if kind == "lstm":
        tout, (thn, tcn) = tmod(tx, (th, th * 2))
        gout, (ghn, gcn) = ours(gx, (gh, gh * 2))
        _close(gcn, tcn, dtype, "c_n")
        (tout.sum() + thn.sum() + tcn.sum()).backward()
        (gout.sum() + ghn.sum() + gcn.sum()).backward()
    else:
        tout, thn = tmod(tx, th)
        gout, ghn = ours(gx, gh)
        (tout.sum() + thn.sum()).backward()
        (gout.sum() + ghn.sum()).backward()
    _close(gout, tout, dtype, "output")
    _close(ghn, thn, dtype, "h_n")
    _close(gx.grad, tx.grad, dtype, "grad input")
    _close(gh.grad, th.grad, dtype, "grad hx")


@pytest.mark.parametrize("cell", ["lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("dtype,batched,bias", [(np.float32, True, True), (np.float64, False, True),
                                                (np.float64, True, False)])
def test_cells_match_torch(cell, dtype, batched, bias):
    I, H, B = 5, 4, 3
    torch.manual_seed(0)
    if cell == "lstm":
        tcell, ours = torch.nn.LSTMCell(I, H, bias=bias), LSTMCell(I, H, bias=bias, dtype=dtype)
    else:
        nl = cell.split("_")[1]
        tcell, ours = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nl), RNNCell(I, H, bias, nl, dtype=dtype)
    tcell = tcell.to(TORCH_DTYPE[dtype])
    assert list(ours.state_dict()) == list(tcell.state_dict())
    ours.load_state_dict(tcell.state_dict())
    rng = np.random.default_rng(2)
    shape = (B,) if batched else ()
    x = rng.standard_normal(shape + (I,)).astype(dtype)
    h = rng.standard_normal(shape + (H,)).astype(dtype)
    c = rng.standard_normal(shape + (H,)).astype(dtype)
    tx, th, tc = (torch.tensor(a, requires_grad=True) for a in (x, h, c))
    gx, gh, gc = (tg.tensor(a, requires_grad=True) for a in (x, h, c))
    if cell == "lstm":
        t1, t2 = tcell(tx, (th, tc))
        g1, g2 = ours(gx, (gh, gc))
        _close(g2, t2, dtype, "c'")
        (t1.sum() + 2 * t2.sum()).backward()
        (g1.sum() + 2 * g2.sum()).backward()
        _close(gc.grad, tc.grad, dtype, "grad c")
    else:
        t1, g1 = tcell(tx, th), ours(gx, gh)
        (t1 * t1).sum().backward()
        (g1 * g1).sum().backward()
    _close(g1, t1, dtype, "h'")
    _close(gx.grad, tx.grad, dtype, "grad input")
    _close(gh.grad, th.grad, dtype, "grad h")
    tparams = dict(tcell.named_parameters())
    for name, p in ours.named_parameters():
        _close(p.grad, tparams[name].grad, dtype, f"grad {name}")


def test_cells_default_to_zero_state():
    lstm_cell, rnn_cell = LSTMCell(3, 2, dtype=np.float64), RNNCell(3, 2, dtype=np.float64)
    x = np.ones((4, 3))
    h, c = lstm_cell(x)
    h2, c2 = lstm_cell(x, (np.zeros((4, 2)), np.zeros((4, 2))))
    np.testing.assert_array_equal(h.numpy(), h2.numpy())
    np.testing.assert_array_equal(c.numpy(), c2.numpy())
    np.testing.assert_array_equal(rnn_cell(x).numpy(), rnn_cell(x, np.zeros((4, 2))).numpy())


def test_state_dict_keys_shapes_and_order_equal_torch_and_load_unchanged():
    for cls, tcls, kw in ((LSTM, torch.nn.LSTM, {}), (RNN, torch.nn.RNN, {"nonlinearity": "relu"})):
        tmod = tcls(7, 5, num_layers=3, bidirectional=True, **kw)
        ours = cls(7, 5, num_layers=3, bidirectional=True, **kw)
        tstate = tmod.state_dict()
        assert list(ours.state_dict()) == list(tstate)
        assert [v.shape for v in ours.state_dict().values()] == [tuple(v.shape) for v in tstate.values()]
        ours.load_state_dict(tstate)  # torch tensors straight in
        for k, v in ours.state_dict().items():
            np.testing.assert_array_equal(v, tstate[k].numpy())
    ours = LSTM(3, 4, bias=False)
    assert list(ours.state_dict()) == list(torch.nn.LSTM(3, 4, bias=False).state_dict())


def test_parameter_shapes_and_gate_layout():
    m = LSTM(3, 4, num_layers=2, bidirectional=True)
    assert m.weight_ih_l0.shape == (16, 3)
    assert m.weight_ih_l1.shape == (16, 8)
    assert m.weight_hh_l1_reverse.shape == (16, 4)
    assert m.bias_hh_l0_reverse.shape == (16,)
    assert len(m.all_weights) == 4 and all(len(w) == 4 for w in m.all_weights)
    r = RNN(3, 4, num_layers=2)
    assert r.weight_ih_l1.shape == (4, 4) and r.bias_ih_l0.shape == (4,)


def test_init_is_uniform_within_one_over_sqrt_hidden():
    tg.manual_seed(3)
    H = 64
    for mod in (LSTM(32, H, num_layers=2, bidirectional=True), RNN(32, H), LSTMCell(32, H), RNNCell(32, H)):
        bound = 1.0 / math.sqrt(H)
        values = np.concatenate([p.numpy().ravel() for p in mod.parameters()])
        assert values.min() >= -bound and values.max() <= bound
        # Spread over the whole interval: U(-b, b) has mean 0 and std b / sqrt(3).
        assert values.min() < -0.95 * bound and values.max() > 0.95 * bound
        assert abs(values.mean()) < 0.05 * bound
        assert abs(values.std() - bound / math.sqrt(3)) < 0.05 * bound
    a, b = LSTM(3, 4), LSTM(3, 4)
    assert not np.array_equal(a.weight_hh_l0.numpy(), b.weight_hh_l0.numpy())


def test_float64_module_and_numpy_inputs():
    m = LSTM(3, 4, dtype=np.float64)
    out, (h, c) = m(np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32))
    assert out.dtype == np.float64 and h.shape == (1, 2, 4) and c.shape == (1, 2, 4)
    with pytest.raises(TypeError, match="dtype"):
        m(tg.tensor(np.zeros((5, 2, 3), dtype=np.float32)))


def test_dropout_only_between_layers_in_training():
    tg.manual_seed(0)
    m = LSTM(3, 8, num_layers=2, dropout=0.5, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    m.eval()
    e1, _ = m(x)
    e2, _ = m(x)
    np.testing.assert_array_equal(e1.numpy(), e2.numpy())
    tmod = torch.nn.LSTM(3, 8, num_layers=2, dropout=0.5).double().eval()
    tmod.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})
    np.testing.assert_allclose(e1.numpy(), tmod(torch.tensor(x))[0].detach().numpy(), atol=1e-12)
    m.train()
    t1, _ = m(x)
    assert not np.allclose(t1.numpy(), e1.numpy())
    # The first layer's h_n is untouched by dropout (it acts on the first layer's output only).
    _, (h_train, _) = m(x)
    _, (h_eval, _) = m.eval()(x)
    np.testing.assert_allclose(h_train.numpy()[0], h_eval.numpy()[0], atol=1e-14)
    with pytest.warns(UserWarning, match="dropout"):
        LSTM(3, 4, num_layers=1, dropout=0.2)


def test_bptt_over_1000_steps_matches_torch():
    T, B, I, H = 1000, 2, 3, 5
    tmod, ours = _pair("lstm", np.float64, input_size=I, hidden_size=H)
    x = np.random.default_rng(4).standard_normal((T, B, I))
    tx, gx = torch.tensor(x, requires_grad=True), tg.tensor(x, requires_grad=True)
    tout, _ = tmod(tx)
    gout, _ = ours(gx)
    (tout[-1] ** 2).sum().backward()
    (gout[-1] * gout[-1]).sum().backward()
    _close(gx.grad, tx.grad, np.float64, "grad input")
    _close(ours.weight_hh_l0.grad, tmod.weight_hh_l0.grad, np.float64, "grad weight_hh_l0")


def test_10000_steps_backward_has_no_recursion_error():
    """A 10,000-step sequence, and the same recurrence unrolled as 10,000 cell calls (40,000 tape nodes),
    both backpropagate, and agree."""
    T, I, H = 10_000, 2, 3
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # the default: a recursive walk would fail
    try:
        tg.manual_seed(5)
        seq = RNN(I, H, dtype=np.float64)
        cell = RNNCell(I, H, dtype=np.float64)
        cell.load_state_dict({k[:-3]: v for k, v in seq.state_dict().items()})
        x = np.random.default_rng(5).standard_normal((T, 1, I)) * 0.1
        _, h_n = seq(x)
        h_n.sum().backward()
        h = None
        for t in range(T):
            h = cell(x[t], h)
        h.sum().backward()
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_allclose(h.numpy(), h_n.numpy()[0], atol=1e-12)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        np.testing.assert_allclose(getattr(cell, name).grad, getattr(seq, name + "_l0").grad, atol=1e-10)


def test_input_errors_name_the_argument():
    m = LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="input_size"):
        m(np.zeros((5, 2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="input"):
        m(np.zeros((5, 2, 3, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="sequence length 0"):
        m(np.zeros((0, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="hx"):
        m(x, (np.zeros((1, 2, 4)), np.zeros((2, 2, 4))))
    with pytest.raises(ValueError, match="c_0"):
        m(x, (np.zeros((2, 2, 4)), np.zeros((2, 3, 4))))
    with pytest.raises(ValueError, match="tuple"):
        m(x, np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[6, 1])
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=[1.0, 2.0])
    r = RNN(3, 4)
    with pytest.raises(ValueError, match="hx"):
        r(x, np.zeros((1, 2, 5)))
    with pytest.raises(ValueError, match="hx"):
        r(np.zeros((5, 3)), np.zeros((1, 2, 4)))  # unbatched input needs a 2-D hx
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, nonlinearity="sigmoid")
    for bad in ({"hidden_size": 0}, {"num_layers": 0}, {"dropout": 1.5}, {"input_size": 2.5}):
        args = {"input_size": 3, "hidden_size": 4} | bad
        with pytest.raises(ValueError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LSTM(**args)
    c = LSTMCell(3, 4)
    with pytest.raises(ValueError, match="input_size"):
        c(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="hx"):
        c(np.zeros((2, 3)), (np.zeros((2, 4)), np.zeros((3, 4))))
    with pytest.raises(TypeError, match="dtype"):
        RNNCell(3, 4)(tg.tensor(np.zeros((2, 3))))


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("give_hx", [False, True])
def test_a_batch_of_zero_sequences_gives_torchs_empty_shapes_and_zero_gradients(kind, batch_first, give_hx):
    kw = {"input_size": 3, "hidden_size": 4, "num_layers": 2, "bidirectional": True, "batch_first": batch_first}
    tmod, ours = _pair(kind, np.float64, **kw)
    x = np.zeros((0, 5, 3) if batch_first else (5, 0, 3))
    hx = None
    if give_hx:
        h = np.zeros((4, 0, 4))
        hx = (h, h) if kind == "lstm" else h
    thx = None if hx is None else (tuple(map(torch.tensor, hx)) if kind == "lstm" else torch.tensor(hx))
    tout, tstate = tmod(torch.tensor(x), thx)
    gout, gstate = ours(x, hx)
    tstates = tstate if kind == "lstm" else (tstate,)
    gstates = gstate if kind == "lstm" else (gstate,)
    assert gout.shape == tuple(tout.shape)
    assert [s.shape for s in gstates] == [tuple(s.shape) for s in tstates]
    (tout.sum() + sum(s.sum() for s in tstates)).backward()
    loss = gout.sum()
    for s in gstates:
        loss = loss + s.sum()
    loss.backward()  # on the graph, as torch's: every parameter gets a zero gradient
    for name, p in ours.named_parameters():
        np.testing.assert_array_equal(p.grad, getattr(tmod, name).grad.numpy())


def test_cells_with_a_batch_of_zero_give_torchs_shapes():
    for ours, theirs in ((LSTMCell(3, 4), torch.nn.LSTMCell(3, 4)), (RNNCell(3, 4), torch.nn.RNNCell(3, 4))):
        got = ours(np.zeros((0, 3), np.float32))
        want = theirs(torch.zeros(0, 3))
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert [g.shape for g in got] == [tuple(w.shape) for w in want]


# ---- constructor and input checks as torch's (audit 2, finding 8) -------------------------------------------

@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("name", ["bias", "batch_first"])
@pytest.mark.parametrize("value", ["False", 0, 1, None])
def test_a_non_bool_bias_or_batch_first_raises_type_error_as_torch(kind, name, value):
    with pytest.raises(TypeError, match=f"{name} should be of type bool, got: {type(value).__name__}"):
        {"lstm": torch.nn.LSTM, "rnn": torch.nn.RNN}[kind](3, 4, **{name: value})
    with pytest.raises(TypeError, match=f"{name} should be of type bool, got: {type(value).__name__}"):
        {"lstm": LSTM, "rnn": RNN}[kind](3, 4, **{name: value})


@pytest.mark.parametrize("cell", [LSTMCell, RNNCell])
def test_cells_refuse_a_non_bool_bias_and_accept_numpy_bools(cell):
    # stricter than torch's cells, which read bias='False' as True
    with pytest.raises(TypeError, match="bias should be of type bool, got: str"):
        cell(3, 4, bias="False")
    assert cell(3, 4, bias=np.False_).bias_ih is None
    assert LSTM(3, 4, bias=np.False_, batch_first=np.True_).batch_first is True


def test_proj_size_zero_is_torchs_no_projection_and_a_projection_is_refused():
    torch.manual_seed(0)
    tmod = torch.nn.LSTM(3, 4, 1, True, False, 0.0, False, 0).double()  # proj_size positionally, as torch
    ours = LSTM(3, 4, 1, True, False, 0.0, False, 0, dtype=np.float64)
    assert ours.proj_size == 0 and list(ours.state_dict()) == list(tmod.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    np.testing.assert_allclose(ours(x)[0].numpy(), tmod(torch.tensor(x))[0].detach().numpy(), atol=1e-12)
    assert LSTM(3, 4, proj_size=0).proj_size == 0
    with pytest.raises(NotImplementedError, match="proj_size=2.*not supported.*proj_size=0"):
        LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="proj_size"):
        LSTM(3, 4, proj_size=-1)
    with pytest.raises(TypeError, match="proj_size"):
        LSTM(3, 4, proj_size=1.5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_packed_sequence_input_points_to_lengths_and_the_recipe_matches_torch(batch_first):
    torch.manual_seed(0)
    tmod = torch.nn.LSTM(3, 4, batch_first=batch_first).double()
    ours = LSTM(3, 4, batch_first=batch_first, dtype=np.float64)
    ours.load_state_dict({k: v.numpy() for k, v in tmod.state_dict().items()})
    x = torch.randn(2, 5, 3, dtype=torch.float64) if batch_first else torch.randn(5, 2, 3, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3], batch_first=batch_first)
    with pytest.raises(TypeError, match=rf"PackedSequence.*pad_packed_sequence\(packed, batch_first={batch_first}\)"
                                        r".*lengths=lengths"):
        ours(packed)
    padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(packed, batch_first=batch_first)  # the recipe
    out, (h, c) = ours(padded, lengths=lengths)
    t_out, (t_h, t_c) = tmod(packed)
    t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_out, batch_first=batch_first)
    np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(h.numpy(), t_h.detach().numpy(), atol=1e-12)
