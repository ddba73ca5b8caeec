"""One-to-many: from a single input, a class id, generate that class's sequence of symbols.

Each of K classes owns a fixed random sequence of T symbols. The class id sets the LSTM's initial
state (h0 = tanh(Embedding(class)), c0 = 0), and the decoder then runs autoregressively: its input at
each step is the symbol it emitted at the previous step (a start symbol first). Training feeds the true
previous symbols (teacher forcing, the whole sequence in one LSTM call); evaluation generates freely,
one step at a time, carrying (h, c) and feeding back its own argmax. Chance is 1/V per symbol.

    python examples/one_to_many.py --steps 100
"""
from __future__ import annotations

import argparse

import numpy as np

import tapegrad as tg
from tapegrad.layers.rnn import LSTM

K, T, V, HIDDEN = 6, 8, 5, 32
START = V  # an extra input symbol that starts every sequence


class Generator(tg.Module):
    def __init__(self):
        super().__init__()
        self.cls = tg.Embedding(K, HIDDEN)
        self.embed = tg.Embedding(V + 1, 8)
        self.lstm = LSTM(8, HIDDEN, batch_first=True)
        self.head = tg.Linear(HIDDEN, V)

    def initial_state(self, classes):
        h0 = tg.tanh(self.cls(classes))[None]  # [num_layers=1, B, H]
        return h0, tg.tensor(np.zeros(h0.shape, dtype=np.float32))

    def forward(self, classes, inputs, state=None):
        """Logits [B*T', V] for the inputs [B, T'] (state defaults to the class's initial state)."""
        state = self.initial_state(classes) if state is None else state
        out, state = self.lstm(self.embed(inputs), state)
        b, t, h = out.shape
        return self.head(out.reshape(b * t, h)), state

    def generate(self, classes, length):
        """Greedy free-running generation: [B, length] symbols."""
        with tg.no_grad():
            state = self.initial_state(classes)
            prev = np.full((len(classes), 1), START)
            out = []
            for _ in range(length):
                logits, state = self(classes, prev, state)
                prev = logits.numpy().argmax(1)[:, None]
                out.append(prev[:, 0])
        return np.stack(out, axis=1)


def train(steps: int = 100, seed: int = 0, batch: int = 32, verbose: bool = False) -> float:
    """Train for ``steps`` Adam steps; returns the symbol accuracy of freely generated sequences for every
    class (chance 1/V)."""
    rng = np.random.default_rng(seed)
    patterns = rng.integers(V, size=(K, T))
    tg.manual_seed(seed)
    model = Generator()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        classes = rng.integers(K, size=batch)
        target = patterns[classes]
        inputs = np.concatenate([np.full((batch, 1), START), target[:, :-1]], axis=1)  # teacher forcing
        logits, _ = model(classes, inputs)
        loss = tg.cross_entropy(logits, target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {loss.item():.3f}")
    generated = model.generate(np.arange(K), T)
    if verbose:
        for k in range(K):
            print(f"class {k}: generated {generated[k].tolist()}  target {patterns[k].tolist()}")
    return float((generated == patterns).mean())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    acc = train(a.steps, a.seed, verbose=True)
    print(f"accuracy of the generated symbols {100 * acc:.1f}% (chance {100 / V:.0f}%)")
