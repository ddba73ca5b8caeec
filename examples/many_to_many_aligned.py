"""Many-to-many, aligned: one label per input step. Here the running parity of a bit stream:
y_t = x_1 XOR x_2 XOR ... XOR x_t.

Every output depends on the whole prefix, so the LSTM has to keep one bit of state and flip it on each
1. The LSTM's output sequence goes through a Linear layer at every step (one [B*T, H] GEMM), and the
loss is the cross-entropy averaged over all steps. Chance is 50% per step.

Training streams have T = 10 bits, so there are only 2^10 = 1024 of them and a run of 200 batches of
64 sees every one: a test on fresh length-10 streams would measure recall of the training set. The
test therefore runs on 1,000 longer streams (T_TEST = 30 bits) and scores only steps 11-30. The LSTM
is causal, so its output at step t depends on the prefix x_1..x_t. Every prefix scored is longer than
any training stream, so none was seen in training, and only a model that learned the rule (flip on
each 1) gets them right. Holding out some length-10 streams would not do this: their shorter prefixes
also begin training streams.

    python examples/many_to_many_aligned.py --steps 200
"""
from __future__ import annotations

import argparse

import numpy as np

import tapegrad as tg
from tapegrad.layers.rnn import LSTM

T, T_TEST, HIDDEN = 10, 30, 24


class Tagger(tg.Module):
    def __init__(self):
        super().__init__()
        self.lstm = LSTM(1, HIDDEN, batch_first=True)
        self.head = tg.Linear(HIDDEN, 2)

    def forward(self, x):
        out, _ = self.lstm(x)  # [B, T, H]: the hidden state at every step
        b, t, h = out.shape
        return self.head(out.reshape(b * t, h))  # [B*T, 2]


def make_batch(rng, n, length=None):
    """n streams of ``length`` bits (default T) as inputs [n, length, 1] of +-1, and their running parity."""
    bits = rng.integers(2, size=(n, T if length is None else length))
    parity = np.cumsum(bits, axis=1) % 2
    return (2.0 * bits - 1.0)[:, :, None].astype(np.float32), parity


def train(steps: int = 200, seed: int = 0, batch: int = 64, verbose: bool = False) -> float:
    """Train for ``steps`` Adam steps on length-T streams; returns the per-step accuracy on steps
    T+1..T_TEST of 1,000 length-T_TEST streams, prefixes no training stream has (chance 50%)."""
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
    x, y = make_batch(np.random.default_rng(seed + 1000), 1000, T_TEST)
    with tg.no_grad():
        pred = model(x).numpy().argmax(1).reshape(y.shape)
    return float((pred[:, T:] == y[:, T:]).mean())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    acc = train(a.steps, a.seed, verbose=True)
    print(f"per-step accuracy on steps {T + 1}-{T_TEST} of unseen length-{T_TEST} streams "
          f"(trained on length {T}): {100 * acc:.1f}% (chance 50%)")
