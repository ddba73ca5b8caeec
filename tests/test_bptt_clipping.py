"""Backpropagation through long sequences, and gradient-norm clipping against exploding gradients."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.layers.optim import SGD, clip_grad_norm
from tapegrad.layers.rnn import LSTM, RNN

# ---- BPTT over 1,000 steps --------------------------------------------------------------------------------------


def _long_lstm(T=1000, seed=0):
    tg.manual_seed(seed)
    lstm, head = LSTM(2, 6, dtype=np.float64), tg.Linear(6, 1, dtype=np.float64)
    x = np.random.default_rng(seed).normal(size=(T, 3, 2))
    return lstm, head, x


def _long_loss(lstm, head, x):
    out, (h_n, _) = lstm(x)  # [T, B, H]: one recorded op per layer however long T is
    return tg.mean(head(h_n[-1]) ** 2) + tg.mean(out ** 2)


def test_bptt_over_1000_steps_gives_finite_gradients_to_every_parameter():
    lstm, head, x = _long_lstm()
    loss = _long_loss(lstm, head, x)
    loss.backward()
    for name, p in list(lstm.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert np.isfinite(p.grad).all() and np.abs(p.grad).sum() > 0, name


def test_bptt_over_1000_steps_matches_a_directional_derivative():
    """Gradient of a 1,000-step loss along a random direction equals the central difference (float64)."""
    lstm, head, x = _long_lstm(seed=1)
    params = list(lstm.parameters())
    _long_loss(lstm, head, x).backward()
    rng = np.random.default_rng(2)
    dirs = [rng.normal(size=p.shape) for p in params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, dirs))
    eps = 1e-6
    values = []
    for sign in (1, -1):
        for p, d in zip(params, dirs):
            p.data += sign * eps * d
        with tg.no_grad():
            values.append(_long_loss(lstm, head, x).item())
        for p, d in zip(params, dirs):
            p.data -= sign * eps * d
    numeric = (values[0] - values[1]) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_bptt_over_1000_steps_matches_torch():
    torch = pytest.importorskip("torch")
    lstm, head, x = _long_lstm(seed=3)
    _long_loss(lstm, head, x).backward()
    t_lstm = torch.nn.LSTM(2, 6, dtype=torch.float64)
    t_lstm.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    t_head = torch.nn.Linear(6, 1, dtype=torch.float64)
    t_head.load_state_dict({k: torch.from_numpy(v) for k, v in head.state_dict().items()})
    out, (h_n, _) = t_lstm(torch.from_numpy(x))
    ((t_head(h_n[-1]) ** 2).mean() + (out ** 2).mean()).backward()
    for name, p in lstm.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(t_lstm, name).grad.numpy(), rtol=1e-8, atol=1e-12,
                                   err_msg=name)


# ---- exploding gradients ---------------------------------------------------------------------------------------------
# An IRNN-style ReLU RNN (Le et al. 2015) whose recurrent matrix is 1.1 I: over 50 steps the state and
# the gradient grow like 1.1^50 ~ 117. Plain SGD at lr 0.01 jumps off the cliff on its first update;
# the same SGD with the gradient norm clipped to 1 walks down it.

T_EXPLODE, H_EXPLODE = 50, 8


def _exploding_run(clip, steps=100, seed=0, lr=0.01):
    rng = np.random.default_rng(seed)
    tg.manual_seed(seed)
    rnn = RNN(1, H_EXPLODE, nonlinearity="relu", batch_first=True)
    head = tg.Linear(H_EXPLODE, 1)
    rnn.weight_hh_l0.data[...] = 1.1 * np.eye(H_EXPLODE, dtype=np.float32)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = SGD(params, lr=lr)
    x = rng.uniform(0, 1, size=(64, T_EXPLODE, 1)).astype(np.float32)
    y = x.mean(axis=1)  # the running mean: W_hh = I is a solution
    losses, norms = [], []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            _, h_n = rnn(x)
            loss = tg.mse(head(h_n[-1]), y)
            losses.append(loss.item())
            if not np.isfinite(losses[-1]):
                break
            opt.zero_grad()
            loss.backward()
            if clip is not None:
                norms.append(clip_grad_norm(params, clip, error_if_nonfinite=False).item())
            opt.step()
    return np.array(losses), np.array(norms)


def test_exploding_gradients_diverge_without_clipping():
    losses, _ = _exploding_run(clip=None, steps=20)
    assert (not np.isfinite(losses[-1])) or losses.max() > 1e6 * losses[0], losses


def test_exploding_gradients_train_with_clip_grad_norm():
    losses, norms = _exploding_run(clip=1.0)
    assert np.isfinite(losses).all() and len(losses) == 100
    assert norms[0] > 1e3  # the gradients really did explode: clipping was doing the work
    assert losses.min() < 1e-4 * losses[0]
    assert losses[-10:].mean() < 1e-3 * losses[0]
