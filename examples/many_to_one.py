"""Many-to-one: read a whole noisy sequence, then name which of K patterns it is.

Each class k has a fixed random pattern of +-1 values over T steps; a sample is its pattern plus
Gaussian noise (std 1, as large as the signal). An LSTM reads the sequence and a Linear layer
classifies its last hidden state h_n. Chance is 1/K. A model that only sees a single step is
right at most about 42% of the time: one +-1 value splits the K = 4 patterns into two sign groups, and
its sign is read right with probability Phi(1) = 84%, so 84% / 2 = 42% (25% at a step where all the
patterns agree). A high accuracy therefore means evidence was integrated over the sequence. The best
possible accuracy from the whole sequence (Bayes) is about 96% with seed 0's patterns.

    python examples/many_to_one.py --steps 150
"""
from __future__ import annotations

import argparse

import numpy as np

import tapegrad as tg
from tapegrad.layers.rnn import LSTM

K, T, HIDDEN, NOISE = 4, 12, 16, 1.0


class Classifier(tg.Module):
    def __init__(self):
        super().__init__()
        self.lstm = LSTM(1, HIDDEN, batch_first=True)
        self.head = tg.Linear(HIDDEN, K)

    def forward(self, x):
        _, (h_n, _) = self.lstm(x)
        return self.head(h_n[-1])  # h_n: [num_layers, B, H] -> the last layer's state


def make_batch(patterns, rng, n):
    y = rng.integers(K, size=n)
    x = patterns[y] + NOISE * rng.normal(size=(n, T))
    return x[:, :, None].astype(np.float32), y


def train(steps: int = 150, seed: int = 0, batch: int = 64, verbose: bool = False) -> float:
    """Train for ``steps`` Adam steps; returns the accuracy on 1,000 fresh sequences (chance 1/K)."""
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(K, T))
    tg.manual_seed(seed)
    model = Classifier()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        x, y = make_batch(patterns, rng, batch)
        loss = tg.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    x, y = make_batch(patterns, np.random.default_rng(seed + 1000), 1000)
    with tg.no_grad():
        return float((model(x).numpy().argmax(1) == y).mean())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"test accuracy {100 * train(a.steps, a.seed, verbose=True):.1f}% (chance {100 / K:.0f}%)")
