"""Many-to-many, aligned: one label per input step. Here the running parity of a bit stream:
y_t = x_1 XOR x_2 XOR ... XOR x_t.

Every output depends on the whole prefix, so the LSTM has to keep one bit of state and flip it on each
1. The LSTM's output sequence goes through a Linear layer at every step (one [B*T, H] GEMM), and the
loss is the cross-entropy averaged over all steps. Chance is 50% per step.

    python examples/many_to_many_aligned.py --steps 200
"""
from __future__ import annotations

import argparse

import numpy as np

import tapegrad as tg
from tapegrad.layers.rnn import LSTM

T, HIDDEN = 10, 24


class Tagger(tg.Module):
    def __init__(self):
        super().__init__()
        self.lstm = LSTM(1, HIDDEN, batch_first=True)
        self.head = tg.Linear(HIDDEN, 2)

    def forward(self, x):
        out, _ = self.lstm(x)  # [B, T, H]: the hidden state at every step
        b, t, h = out.shape
        return self.head(out.reshape(b * t, h))  # [B*T, 2]


def make_batch(rng, n):
    bits = rng.integers(2, size=(n, T))
    parity = np.cumsum(bits, axis=1) % 2
    return (2.0 * bits - 1.0)[:, :, None].astype(np.float32), parity


def train(steps: int = 200, seed: int = 0, batch: int = 64, verbose: bool = False) -> float:
    """Train for ``steps`` Adam steps; returns the per-step accuracy on 1,000 fresh streams (chance 50%)."""
    rng = np.random.default_rng(seed)
    tg.manual_seed(seed)
    model = Tagger()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        x, y = make_batch(rng, batch)
        loss = tg.cross_entropy(model(x), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        tg.optim.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    x, y = make_batch(np.random.default_rng(seed + 1000), 1000)
    with tg.no_grad():
        pred = model(x).numpy().argmax(1)
    return float((pred == y.reshape(-1)).mean())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"per-step accuracy {100 * train(a.steps, a.seed, verbose=True):.1f}% (chance 50%)")
