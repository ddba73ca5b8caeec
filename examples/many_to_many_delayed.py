"""Many-to-many, delayed: read a stream of symbols and emit each one again DELAY steps later,
y_t = x_{t - DELAY}.

The outputs lag the inputs, so the LSTM must hold the last DELAY symbols in its state (a small
queue). The first DELAY steps have nothing to emit yet: their targets are ``ignore_index`` (-100) and
add nothing to the loss, as in PyTorch. Chance is 1/K per emitted symbol.

    python examples/many_to_many_delayed.py --steps 200
"""
from __future__ import annotations

import argparse

import numpy as np

import tapegrad as tg
from tapegrad.layers.rnn import LSTM

K, T, DELAY, HIDDEN, IGNORE = 4, 12, 3, 32, -100


class Echo(tg.Module):
    def __init__(self):
        super().__init__()
        self.embed = tg.Embedding(K, 8)
        self.lstm = LSTM(8, HIDDEN, batch_first=True)
        self.head = tg.Linear(HIDDEN, K)

    def forward(self, ids):
        out, _ = self.lstm(self.embed(ids))
        b, t, h = out.shape
        return self.head(out.reshape(b * t, h))  # [B*T, K]


def make_batch(rng, n):
    x = rng.integers(K, size=(n, T))
    y = np.full((n, T), IGNORE)
    y[:, DELAY:] = x[:, :-DELAY]
    return x, y


def train(steps: int = 200, seed: int = 0, batch: int = 64, verbose: bool = False) -> float:
    """Train for ``steps`` Adam steps; returns the accuracy of the emitted symbols (steps >= DELAY) on
    1,000 fresh streams (chance 1/K)."""
    rng = np.random.default_rng(seed)
    tg.manual_seed(seed)
    model = Echo()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        x, y = make_batch(rng, batch)
        loss = tg.cross_entropy(model(x), y.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        tg.optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    x, y = make_batch(np.random.default_rng(seed + 1000), 1000)
    with tg.no_grad():
        pred = model(x).numpy().argmax(1).reshape(y.shape)
    return float((pred[:, DELAY:] == y[:, DELAY:]).mean())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    acc = train(a.steps, a.seed, verbose=True)
    print(f"accuracy of the echoed symbols {100 * acc:.1f}% (chance {100 / K:.0f}%)")
