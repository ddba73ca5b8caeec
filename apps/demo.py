"""``python -m tapegrad demo``: the tour in about a minute on a 2-core CPU.

1. warm-up: load (or compile, on a first run) the Numba kernels with a tiny GCN and LSTM step;
2. train Kipf & Welling's two-layer GCN on Cora (the paper's setup, one seed, with the training function
   of ``python -m tapegrad gcn``, so both report the same accuracy for a seed) and report its test accuracy;
3. train a small character-level LSTM on Tiny Shakespeare with truncated BPTT, report train and
   validation loss;
4. sample a few lines of text from it;
5. print where the time went.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from ..datasets import load_planetoid, row_normalize
from ..engine.backend import check_device
from ..engine.nn import cross_entropy
from ..engine.random import manual_seed
from ..layers.gcn import GCN
from . import charrnn
from . import gcn as gcn_app


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")


def warm_up() -> None:
    """One tiny GCN and LSTM training step, so the kernels are compiled (or loaded from Numba's cache)
    before any phase is timed."""
    from ..kernels.csr import CSR
    manual_seed(0)
    A = CSR(np.array([0, 1, 2, 3]), np.array([1, 0, 0], dtype=np.int32), None, (3, 3))
    x = CSR(np.array([0, 1, 2, 3]), np.array([0, 1, 1], dtype=np.int32), np.ones(3, np.float32), (3, 2))
    gcn = GCN(2, 4, 2, cached=False)
    cross_entropy(gcn(x, A), np.array([0, 1, 0])).backward()
    ids = np.array([[0, 1, 2, 1], [2, 1, 0, 0]])
    model = charrnn.CharLSTM(3, hidden_size=4, embed_size=2)
    loss, _ = charrnn.sequence_loss(model, ids[:, :3], ids[:, 1:])
    loss.backward()


def train_gcn(epochs: int = 200, seed: int = 0, progress: bool = True, patience: int = 10,
              device: str = "cpu") -> dict:
    """Kipf & Welling on Cora, one seed: :func:`tapegrad.apps.gcn.train_one` with its defaults (the
    reference code's setup: 2 layers without bias, 16 hidden, dropout 0.5, weight decay 5e-4 on the first
    layer, Adam lr 0.01, early stopping on the validation loss with the L2 term). The same seed gives
    the same result as ``python -m tapegrad gcn``. Returns {'test_acc', 'val_acc', 'epochs'}."""
    data = load_planetoid("cora")
    x = row_normalize(data.x)
    with _bar(epochs, "GCN on Cora ", progress) as bar:
        def update(epoch: int, loss: float, val_acc: float) -> None:
            bar.set_postfix_str(f"loss {loss:.3f}, val acc {100 * val_acc:.1f}%", refresh=False)
            bar.update(1)
        r = gcn_app.train_one(data, x, seed, epochs=epochs, patience=patience, on_epoch=update, device=device)
    return {"test_acc": r["test_acc"], "val_acc": r["val_acc"], "epochs": r["epochs"]}


def train_lstm(steps: int, hidden: int, seq_len: int, batch: int, lr: float, seed: int,
               progress: bool = True, device: str = "cpu") -> tuple[dict, list[str]]:
    vocab, _, ids = charrnn.load_text_ids("tinyshakespeare")
    with _bar(steps, "LSTM on text", progress) as bar:
        def update(step: int, loss: float) -> None:
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            bar.update(1)
        res = charrnn.train(ids, len(vocab), steps, hidden=hidden, embed=32, seq_len=seq_len, batch=batch,
                            lr=lr, seed=seed, progress=update, device=device)
    return res, vocab


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tapegrad demo",
                                description="Train a GCN on Cora and a char-LSTM on Tiny Shakespeare, then "
                                            "sample text and show where the time went.")
    p.add_argument("--gcn-epochs", type=int, default=200, help="maximum GCN epochs (default: %(default)s)")
    p.add_argument("--lstm-steps", type=int, default=1000, help="char-LSTM TBPTT windows (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128, help="char-LSTM hidden size (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=64, help="TBPTT window length (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="char-LSTM parallel streams (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-3, help="char-LSTM Adam learning rate (default: %(default)s)")
    p.add_argument("--sample-chars", type=int, default=300, help="characters to sample (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for both models (default: %(default)s)")
    p.add_argument("--blas-threads", type=int, default=1, metavar="N",
                   help="OpenBLAS threads for the char-LSTM (0: leave numpy's setting) (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("gcn_epochs", "lstm_steps", "hidden", "seq_len", "batch", "sample_chars"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr <= 0 or args.seed < 0 or args.blas_threads < 0:
        parser.error("--lr must be > 0, --seed >= 0 and --blas-threads >= 0")
    try:
        check_device(args.device)
    except RuntimeError as e:  # no cupy or no GPU, said in one line
        print(f"python -m tapegrad demo: error: {e}", file=sys.stderr)
        return 1
    progress = not args.no_progress
    phases: dict[str, float] = {}
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    warm_up()
    phases["warm-up (load / JIT-compile kernels)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gcn = train_gcn(args.gcn_epochs, args.seed, progress, device=args.device)
    phases[f"GCN training ({gcn['epochs']} epochs)"] = time.perf_counter() - t0

    with charrnn.blas_threads(args.blas_threads):
        t0 = time.perf_counter()
        lstm, vocab = train_lstm(args.lstm_steps, args.hidden, args.seq_len, args.batch, args.lr, args.seed,
                                 progress, device=args.device)
        phases[f"char-LSTM training ({args.lstm_steps} steps of {args.batch}x{args.seq_len} chars)"] = \
            time.perf_counter() - t0

        t0 = time.perf_counter()
        text = charrnn.sample(lstm["model"], vocab, prime="\n", n=args.sample_chars, temperature=0.8,
                              seed=args.seed)
        phases[f"sampling ({args.sample_chars} characters)"] = time.perf_counter() - t0
    total = time.perf_counter() - t_start

    print()
    print(f"GCN on Cora: test accuracy {100 * gcn['test_acc']:.1f}% "
          f"(validation {100 * gcn['val_acc']:.1f}%, {gcn['epochs']} epochs; Kipf & Welling report 81.5%)")
    print(f"char-LSTM on Tiny Shakespeare: train loss {lstm['train_loss']:.3f}, "
          f"validation loss {lstm['val_loss']:.3f} nats/char ({lstm['ms_per_step']:.0f} ms per step)")
    print("--- sampled text ---")
    lines = [ln for ln in text.split("\n")]
    print("\n".join(lines[:8]).rstrip())
    print("--- where the time went ---")
    width = max(len(k) for k in phases)
    for name, secs in phases.items():
        print(f"  {name:<{width}}  {secs:6.1f} s  {100 * secs / total:5.1f}%")
    print(f"  {'total':<{width}}  {total:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
