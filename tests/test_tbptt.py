"""Truncated BPTT(k1, k2): window arithmetic, gradients against a hand-written truncated BPTT, state carry."""
import collections
import itertools

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.layers.optim import SGD
from tapegrad.layers.tbptt import TBPTT, Window, detach_state, tbptt_cost, tbptt_windows

# ---- a tiny tanh RNN written with engine ops, and the same RNN by hand in numpy --------------------------

T, B, D, H = 11, 3, 2, 4


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "W": rng.normal(0, 0.6, (H, D)), "U": rng.normal(0, 0.6, (H, H)),
        "b": rng.normal(0, 0.1, (H,)), "V": rng.normal(0, 0.6, (1, H)),
    }
    x = rng.normal(size=(T, B, D))
    y = rng.normal(size=(T, B, 1))
    return params, x, y


def _numpy_forward(p, x, h0=None):
    hs = [np.zeros((B, H)) if h0 is None else h0]
    for t in range(len(x)):
        hs.append(np.tanh(x[t] @ p["W"].T + hs[-1] @ p["U"].T + p["b"]))
    return hs  # hs[t + 1] is the state after step t


def _numpy_truncated_grads(p, x, y, w: Window):
    """d/dparams of mean_{t in [loss_start, stop)} mean_b 0.5 (V h_t - y_t)^2, backpropagated only to
    step w.start: the state entering step w.start is a constant (the full forward's value)."""
    hs = _numpy_forward(p, x)
    n_loss = w.stop - w.loss_start
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros((B, H))
    for t in range(w.stop - 1, w.start - 1, -1):
        h, h_prev = hs[t + 1], hs[t]
        dh = dh_next.copy()
        if t >= w.loss_start:
            d_out = (h @ p["V"].T - y[t]) / (B * n_loss)
            g["V"] += d_out.T @ h
            dh += d_out @ p["V"]
        dz = dh * (1 - h * h)
        g["W"] += dz.T @ x[t]
        g["U"] += dz.T @ h_prev
        g["b"] += dz.sum(0)
        dh_next = dz @ p["U"]
    return g


def _engine_model(p):
    return {k: tg.Parameter(v.copy()) for k, v in p.items()}


def _segment_fn(model, x, y):
    def segment(start, stop, h, with_loss):
        if h is None:
            h = tg.tensor(np.zeros((B, H)))
        losses = []
        for t in range(start, stop):
            h = tg.tanh(tg.tensor(x[t]) @ model["W"].T + h @ model["U"].T + model["b"])
            if with_loss:
                out = h @ model["V"].T
                losses.append(0.5 * tg.mean((out - tg.tensor(y[t])) ** 2))
        loss = None
        if with_loss:
            loss = losses[0]
            for item in losses[1:]:
                loss = loss + item
            loss = loss * (1.0 / len(losses))
        return loss, h
    return segment


# ---- windows -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, k1, k2", [(11, 3, 3), (11, 2, 5), (12, 4, 4), (10, 3, 4), (7, 7, 9), (5, 8, 8)])
def test_windows_count_every_loss_step_once_and_backprop_k2_steps(n, k1, k2):
    ws = list(tbptt_windows(n, k1, k2))
    assert [w.loss_start for w in ws] == [0] + [w.stop for w in ws[:-1]]
    assert ws[-1].stop == n
    for prev, w in itertools.pairwise(ws):
        assert w.start == prev.carry_at  # each window starts where the previous one kept its state
    for w in ws:
        assert w.stop - w.loss_start == min(k1, n - w.loss_start)
        assert w.start == max(0, w.loss_start + k1 - k2)
        assert w.start <= w.carry_at <= w.stop


def test_windows_with_k1_equal_k2_are_disjoint_chunks():
    ws = list(tbptt_windows(10, 4))
    assert [(w.start, w.stop) for w in ws] == [(0, 4), (4, 8), (8, 10)]
    assert all(w.start == w.loss_start for w in ws)


def test_bad_k_is_rejected():
    with pytest.raises(ValueError, match="k2 must be"):
        list(tbptt_windows(10, 4, 3))
    with pytest.raises(ValueError, match="k1 must be"):
        list(tbptt_windows(10, 0))
    assert tbptt_cost(4, 8) == 2.0


def test_detach_state_cuts_h_and_hc_tuples_from_the_graph():
    w = tg.tensor([[1.0, 2.0]], requires_grad=True)
    h, c = w * 2, w * 3
    dh, (dh2, dc) = detach_state(h), detach_state((h, c))
    for d, src in ((dh, h), (dh2, h), (dc, c)):
        assert d.is_leaf and not d.requires_grad
        np.testing.assert_array_equal(d.numpy(), src.numpy())
    assert detach_state(None) is None
    assert isinstance(detach_state([h, c]), list)


# ---- gradients of each window == hand-written truncated BPTT ----------------------------------------------------

@pytest.mark.parametrize("k1, k2", [(3, 3), (2, 5), (3, 4), (4, 7), (11, 11)])
def test_each_window_gradient_equals_truncated_bptt(k1, k2):
    p, x, y = _problem()
    model = _engine_model(p)
    opt = SGD(list(model.values()), lr=0.0)  # lr 0: parameters stay put, gradients stay readable
    tb = TBPTT(_segment_fn(model, x, y), opt, k1, k2, length=T)
    windows = list(tbptt_windows(T, k1, k2))
    for w in windows:
        loss = tb.step()
        want = _numpy_truncated_grads(p, x, y, w)
        hs = _numpy_forward(p, x)
        want_loss = np.mean([0.5 * np.mean((hs[t + 1] @ p["V"].T - y[t]) ** 2) for t in range(w.loss_start, w.stop)])
        assert loss == pytest.approx(want_loss, rel=1e-12)
        for k in p:
            np.testing.assert_allclose(model[k].grad, want[k], rtol=1e-10, atol=1e-13, err_msg=f"{k} in {w}")
    assert tb.step() is None and tb.done


def test_truncation_differs_from_full_bptt():
    """The cut is real: k2 = 2 gives a different gradient from backpropagating the same loss further."""
    p, x, y = _problem(1)
    w_short, w_long = Window(4, 6, 4, 6), Window(0, 6, 4, 6)
    short, long_ = _numpy_truncated_grads(p, x, y, w_short), _numpy_truncated_grads(p, x, y, w_long)
    assert not np.allclose(short["U"], long_["U"])
    model = _engine_model(p)
    tb = TBPTT(_segment_fn(model, x, y), SGD(list(model.values()), lr=0.0), 2, 6, length=6)
    tb.run()
    np.testing.assert_allclose(model["U"].grad, long_["U"], rtol=1e-10)


# ---- state carry -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k1, k2", [(3, 3), (2, 5)])
def test_state_after_all_windows_equals_full_forward_state(k1, k2):
    p, x, y = _problem(2)
    model = _engine_model(p)
    tb = TBPTT(_segment_fn(model, x, y), SGD(list(model.values()), lr=0.0), k1, k2, length=T)
    tb.run()
    assert tb.position == T
    np.testing.assert_allclose(tb.state.numpy(), _numpy_forward(p, x)[-1], rtol=1e-12)
    assert tb.state.is_leaf and not tb.state.requires_grad


def test_lstm_state_carried_across_chunks_equals_full_sequence_state():
    from tapegrad.layers.rnn import LSTM
    tg.manual_seed(0)
    lstm = LSTM(3, 5, num_layers=2, batch_first=True, dtype=np.float64)
    x = tg.tensor(np.random.default_rng(0).normal(size=(2, 13, 3)))
    out_full, (h_full, c_full) = lstm(x)
    state, outs = None, []
    for a in range(0, 13, 4):
        out, state = lstm(x[:, a:a + 4], state)
        outs.append(out.numpy())
        state = detach_state(state)
    np.testing.assert_allclose(np.concatenate(outs, axis=1), out_full.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[0].numpy(), h_full.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state[1].numpy(), c_full.numpy(), rtol=1e-12, atol=1e-14)


def test_tbptt_trains_an_lstm_with_clipping():
    """End to end on the library LSTM: loss on a learnable sequence goes down, the norm is recorded."""
    from tapegrad.layers.rnn import LSTM
    tg.manual_seed(0)
    lstm, head = LSTM(1, 8, batch_first=True), tg.Linear(8, 1)
    t = np.arange(200)
    seq = np.sin(0.3 * t)[None, :, None].astype(np.float32)
    params = list(lstm.parameters()) + list(head.parameters())

    def segment(start, stop, state, with_loss):
        out, state = lstm(tg.tensor(seq[:, start:stop]), state)
        pred = head(out[:, :-1])
        return tg.mse(pred, seq[:, start + 1:stop]), state

    tb = TBPTT(segment, tg.optim.Adam(params, lr=0.02), k1=20, clip=1.0, length=200)
    first = tb.run()
    for _ in range(4):
        tb.reset()
        last = tb.run()
    assert np.mean(last) < 0.3 * np.mean(first)
    assert isinstance(tb.last_grad_norm, float) and np.isfinite(tb.last_grad_norm)  # a host number, not a Tensor


# ---- misuse gives clear errors (audit finding 11) -------------------------------------------------------------

def _tiny():
    m = tg.Linear(2, 2)
    return m, tg.optim.SGD(m.parameters(), lr=0.1)


@pytest.mark.parametrize("bad_loss", [None, 1.0, np.float32(1.0)], ids=["None", "float", "numpy"])
def test_a_segment_fn_without_a_tensor_loss_raises_type_error(bad_loss):
    m, opt = _tiny()
    before = m.weight.data.copy()
    tb = tg.TBPTT(lambda a, b, s, with_loss: (bad_loss, s), opt, 2, length=4)
    with pytest.raises(TypeError, match="segment_fn.*Tensor loss"):
        tb.step()
    np.testing.assert_array_equal(m.weight.data, before)
    assert tb.position == 0


@pytest.mark.parametrize("kw,match", [
    (dict(k1=2, length=2.5), "length"), (dict(k1=2, length=0), "length"), (dict(k1=2, length=-3), "length"),
    (dict(k1=2, length=True), "length"), (dict(k1=2.0), "k1"), (dict(k1=True), "k1"), (dict(k1=2, k2=3.0), "k2"),
    (dict(k1=2, k2=1), "k2"),
])
def test_lengths_and_window_sizes_must_be_positive_integers(kw, match):
    m, opt = _tiny()
    with pytest.raises(ValueError, match=match):
        tg.TBPTT(lambda a, b, s, with_loss: (m(np.ones((1, 2), np.float32)).sum(), s), opt, **kw)


def test_tbptt_windows_checks_T():
    with pytest.raises(ValueError, match="T must be"):
        list(tbptt_windows(2.5, 2))
    assert list(tbptt_windows(0, 2)) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's own note on the inf - inf it is fed
def test_a_non_finite_gradient_stops_tbptt_before_the_step():
    # TBPTT keeps clip_grad_norm's old default (error_if_nonfinite=True) explicitly: a NaN never reaches the weights
    m, opt = _tiny()
    before = m.weight.data.copy()

    def seg(a, b, s, with_loss):
        return (m(np.ones((1, 2), np.float32)) * np.float32(np.inf)).sum(), s

    with pytest.raises(FloatingPointError, match="weight|bias|parameter"):
        tg.TBPTT(seg, opt, 2, clip=1.0, length=4).step()
    np.testing.assert_array_equal(m.weight.data, before)


# ---- dict and namedtuple states (audit 2, finding 3) -----------------------------------------------------------

HC = collections.namedtuple("HC", "h c")


def test_detach_state_keeps_namedtuples_and_detaches_mapping_values():
    w = tg.tensor([[1.0, 2.0]], requires_grad=True)
    h, c = w * 2, w * 3
    nt = detach_state(HC(h, c))
    assert type(nt) is HC and nt.h.is_leaf and not nt.c.requires_grad
    np.testing.assert_array_equal(nt.c.numpy(), c.numpy())
    d = detach_state({"h": h, "c": c, "step": 3, "layers": [(h, c)]})
    assert type(d) is dict and list(d) == ["h", "c", "step", "layers"] and d["step"] == 3
    assert not d["h"].requires_grad and not d["layers"][0][1].requires_grad
    od = detach_state(collections.OrderedDict(c=c, h=h))
    assert type(od) is collections.OrderedDict and list(od) == ["c", "h"] and not od["h"].requires_grad
    dd = detach_state(collections.defaultdict(list, h=h))
    assert type(dd) is collections.defaultdict and dd.default_factory is list and not dd["h"].requires_grad
    assert h.requires_grad  # the input state is left as it was


def _cell_and_head(seed=0):
    tg.manual_seed(seed)
    return tg.LSTMCell(2, 4, dtype=np.float64), tg.Linear(4, 1, dtype=np.float64)


def _run_steps(cell, head, X, a, b, st):
    loss = 0
    for t in range(a, b):
        st = cell(X[t], st)
        loss = loss + ((head(st[0]) - X[t, :, :1]) ** 2).mean()
    return loss * (1.0 / (b - a)), st


@pytest.mark.parametrize("container", ["dict", "namedtuple"])
def test_tbptt_with_a_dict_or_namedtuple_state_equals_a_hand_written_loop(container):
    X = np.random.default_rng(0).normal(size=(12, 3, 2))
    pack = (lambda h, c: {"h": h, "c": c}) if container == "dict" else HC
    unpack = (lambda s: (s["h"], s["c"])) if container == "dict" else (lambda s: (s.h, s.c))

    cell, head = _cell_and_head()
    params = list(cell.parameters()) + list(head.parameters())

    def segment(a, b, state, with_loss):
        if state is not None:
            assert type(state) is (dict if container == "dict" else HC)
            assert not any(s.requires_grad for s in unpack(state))  # cut where the window starts
        loss, st = _run_steps(cell, head, X, a, b, None if state is None else unpack(state))
        return loss, pack(*st)

    tb = TBPTT(segment, SGD(params, lr=0.1), k1=4, length=12)
    losses = tb.run()
    assert len(losses) == 3 and tb.done and type(tb.state) is type(pack(*unpack(tb.state)))

    # the same training by hand: a (h, c) tuple, detached after every window
    ref_cell, ref_head = _cell_and_head()
    ref_params = list(ref_cell.parameters()) + list(ref_head.parameters())
    opt, st, ref_losses = SGD(ref_params, lr=0.1), None, []
    for a in range(0, 12, 4):
        loss, st = _run_steps(ref_cell, ref_head, X, a, a + 4, st)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
        st = (st[0].detach(), st[1].detach())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for p, q in zip(params, ref_params):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(unpack(tb.state)[1].numpy(), st[1].numpy(), rtol=1e-12)
