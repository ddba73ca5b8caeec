"""Train Kipf & Welling's GCN on a Planetoid graph and report test accuracy and epoch time.

The setup is the paper's (ICLR 2017, Sec. 5.2/5.3) as its reference code (``kipf/gcn``) runs it: a
2-layer GCN with 16 hidden units and ReLU, dropout 0.5 on the input features (on the stored entries of
the sparse feature matrix, as the reference's ``sparse_dropout``) and on the hidden layer, L2 weight
decay 5e-4 on the first layer only (an Adam parameter group), Adam with lr 0.01, at most 200 epochs,
Glorot initialisation, row-normalised input features and P = D^-1/2 (A + I) D^-1/2 (computed once and
cached). The reference's layers have no bias (``GraphConvolution(bias=False)``), so neither do ours by
default; ``bias=True`` gives PyG's ``GCNConv`` default (on Cora it tends to stop earlier under the
criterion below, and scores a few tenths of a point lower).

Early stopping (``stopping``):

- ``'kipf'`` (default): the criterion of Kipf's reference code, ``train.py``: after epoch ``patience``,
  stop as soon as the validation loss exceeds the mean of the previous ``patience`` validation losses.
  The validation loss is the one the reference computes, cross-entropy plus the L2 term
  ``weight_decay * ||first-layer weights||^2 / 2``. The test accuracy is that of the final weights.
- ``'best'``: stop after ``patience`` epochs without a new best validation loss and report the test
  accuracy of the epoch with the best validation loss.
- ``'none'``: train all epochs.

An epoch's time covers the training step only: forward, backward and the Adam update (evaluation on
the validation set is not counted). Each seed reseeds tapegrad's generator (initialisation and dropout).

    python -m tapegrad gcn --data cora --seeds 10 --json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

from ..datasets import load_planetoid, row_normalize
from ..engine.backend import check_device, to_device
from ..engine.nn import cross_entropy
from ..engine.random import manual_seed
from ..engine.tensor import no_grad
from ..layers.gcn import GCN
from ..layers.optim import Adam

STOPPING = ("kipf", "best", "none")


def _accuracy(logits: np.ndarray, y: np.ndarray, idx: np.ndarray) -> float:
    return float((logits[idx].argmax(axis=1) == y[idx]).mean())


def _synchronizer(device: str) -> Callable[[], None]:
    """Waits for the device's queued work (GPU kernels run after the host has moved on), so that a timed
    epoch is the GPU's time; a no-op on the CPU."""
    if device == "cpu":
        return lambda: None
    import cupy
    return cupy.cuda.Device().synchronize


def train_one(data: Any, x: Any, seed: int, epochs: int = 200, hidden: int = 16, dropout: float = 0.5,
              lr: float = 0.01, weight_decay: float = 5e-4, patience: int = 10, dtype: str = "float32",
              stopping: str = "kipf", bias: bool = False,
              on_epoch: Callable[[int, float, float], None] | None = None, device: str = "cpu") -> dict:
    """Train one GCN on ``data`` (a Planetoid) with features ``x`` (row-normalised CSR); returns
    {'test_acc', 'val_acc', 'epochs', 'epoch_ms': [per-epoch training-step times]}.

    ``on_epoch(epoch, train_loss, val_acc)``, if given, is called after each epoch's evaluation (the
    demo's progress bar); it is not timed and does not change the training. ``device='cuda'`` trains on
    the GPU (graph, features and labels move there once; an epoch's time waits for the GPU to finish).
    """
    if stopping not in STOPPING:
        raise ValueError(f"stopping must be one of {STOPPING}, got {stopping!r}")
    manual_seed(seed)
    device = check_device(device)
    model = GCN(data.num_features, hidden, data.num_classes, num_layers=2, dropout=dropout, cached=True,
                bias=bias, dtype=dtype).to(device)
    first, second = model.convs[0], model.convs[1]
    opt = Adam([dict(params=list(first.parameters()), weight_decay=weight_decay),
                dict(params=list(second.parameters()), weight_decay=0.0)], lr=lr)
    y, A = data.y, data.A.to(device)
    x = x.to(device)
    y_train, train_idx = to_device(y, device), to_device(data.train_idx, device)
    sync = _synchronizer(device)
    val_losses: list[float] = []
    times: list[float] = []
    best = (np.inf, None, 0)  # (val loss, eval logits, epoch)
    logits = None
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        opt.zero_grad()
        out = model(x, A)
        loss = cross_entropy(out, y_train, train_idx)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)

        model.eval()
        with no_grad():
            logits = model(x, A).numpy()
            val_loss = cross_entropy(logits, y, data.val_idx).item()
        if stopping == "kipf":
            w = first.lin.weight.data
            val_loss += weight_decay * 0.5 * float((w.astype(np.float64) ** 2).sum())
        val_losses.append(val_loss)
        if on_epoch is not None:
            on_epoch(epoch, loss.item(), _accuracy(logits, y, data.val_idx))
        if stopping == "kipf":
            if epoch > patience and val_loss > np.mean(val_losses[-(patience + 1):-1]):
                break
        elif stopping == "best":
            if val_loss < best[0]:
                best = (val_loss, logits, epoch)
            elif epoch - best[2] >= patience:
                break
    final = best[1] if stopping == "best" else logits
    return {"test_acc": _accuracy(final, y, data.test_idx), "val_acc": _accuracy(final, y, data.val_idx),
            "epochs": len(times), "epoch_ms": [1e3 * t for t in times]}


def run(data_path: Any = "cora", seeds: Any = 10, epochs: int = 200, json_out: bool = False, hidden: int = 16,
        dropout: float = 0.5, lr: float = 0.01, weight_decay: float = 5e-4, patience: int = 10,
        dtype: str = "float32", stopping: str = "kipf", bias: bool = False, verbose: bool = True,
        device: str = "cpu") -> dict:
    """Train over ``seeds`` (a count: seeds 0..n-1, or a list of seeds) and summarise.

    Returns {'test_acc_mean', 'test_acc_std' (population std, in [0, 1] like the mean), 'epoch_ms_median'
    (over all training epochs of all seeds), 'epochs_mean', 'test_accs', 'seeds'}. Prints a summary
    (one JSON object with test_acc_mean, test_acc_std, epoch_ms_median when ``json_out``) unless
    ``verbose=False``.
    """
    data = load_planetoid(data_path)
    if data.x is None:
        raise ValueError(f"{data_path}: the graph has no node features (structure-only); a GCN classifier needs them")
    if data.y is None or not len(data.train_idx) or not len(data.val_idx) or not len(data.test_idx):
        raise ValueError(f"{data_path}: the file needs labels y and train/val/test splits")
    seed_list = list(range(int(seeds))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("seeds must be a positive count or a non-empty list")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x = row_normalize(data.x)
    if x.dtype != np.dtype(dtype):
        x = x.astype(dtype)
    accs, times, n_epochs = [], [], []
    for s in seed_list:
        r = train_one(data, x, s, epochs=epochs, hidden=hidden, dropout=dropout, lr=lr, weight_decay=weight_decay,
                      patience=patience, dtype=dtype, stopping=stopping, bias=bias, device=device)
        accs.append(r["test_acc"])
        times.extend(r["epoch_ms"])
        n_epochs.append(r["epochs"])
        if verbose and not json_out:
            print(f"seed {s}: test accuracy {100 * r['test_acc']:.1f}% after {r['epochs']} epochs, "
                  f"median epoch {statistics.median(r['epoch_ms']):.2f} ms", flush=True)
    result = {"test_acc_mean": float(np.mean(accs)), "test_acc_std": float(np.std(accs)),
              "epoch_ms_median": float(statistics.median(times)), "epochs_mean": float(np.mean(n_epochs)),
              "test_accs": accs, "seeds": seed_list}
    if verbose:
        if json_out:
            print(json.dumps({k: result[k] for k in ("test_acc_mean", "test_acc_std", "epoch_ms_median")}))
        else:
            print(f"{data.name}: test accuracy {100 * result['test_acc_mean']:.2f} +- "
                  f"{100 * result['test_acc_std']:.2f} % over {len(seed_list)} seeds "
                  f"({stopping} early stopping, {result['epochs_mean']:.0f} epochs on average); "
                  f"median epoch {result['epoch_ms_median']:.2f} ms")
    return result


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` in [low, high] (``(low, high]`` with ``low_open``), else exit 2."""
    def parse(s: str) -> Any:
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, got {s!r}") from None
        if not math.isfinite(v) or not ((v > low) if low_open else (v >= low)) or (high is not None and not v <= high):
            bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {s}")
        return v
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tapegrad gcn --data FILE.npz --seeds N [--epochs E] [--json]``.

    Exit codes: 0 success, 1 a data error (missing, corrupt or feature-less file; one line on stderr),
    2 bad arguments (argparse, naming the option).
    """
    p = argparse.ArgumentParser(prog="python -m tapegrad gcn", description="Train Kipf & Welling's GCN (2 layers) "
                                "and report test accuracy over seeds and the median epoch time.")
    p.add_argument("--data", default="cora", help="a graph .npz in tapegrad's format, or 'cora' (shipped)")
    p.add_argument("--seeds", type=_number(int, 1), default=10, help="number of seeds (0..N-1), default 10")
    p.add_argument("--epochs", type=_number(int, 1), default=200, help="maximum epochs, default 200")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--hidden", type=_number(int, 1), default=16, help="hidden units, default 16")
    p.add_argument("--dropout", type=_number(float, 0.0, 1.0), default=0.5, help="in [0, 1], default 0.5")
    p.add_argument("--lr", type=_number(float, 0.0, low_open=True), default=0.01, help="Adam's, default 0.01")
    p.add_argument("--weight-decay", type=_number(float, 0.0), default=5e-4, help="first layer's L2, default 5e-4")
    p.add_argument("--patience", type=_number(int, 1), default=10, help="early-stopping window, default 10")
    p.add_argument("--stopping", choices=STOPPING, default="kipf", help="early-stopping criterion")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--bias", action="store_true", help="give the layers a bias (PyG's default; Kipf's has none)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train, default cpu")
    args = p.parse_args(argv)
    try:
        check_device(args.device)
    except RuntimeError as e:  # no cupy or no GPU, said in one line
        print(f"python -m tapegrad gcn: error: {e}", file=sys.stderr)
        return 1
    try:
        run(args.data, seeds=args.seeds, epochs=args.epochs, json_out=args.json, hidden=args.hidden,
            dropout=args.dropout, lr=args.lr, weight_decay=args.weight_decay, patience=args.patience,
            dtype=args.dtype, stopping=args.stopping, bias=args.bias, device=args.device)
    except (ValueError, FileNotFoundError) as e:  # a bad or missing data file: one line, exit 1
        print(f"python -m tapegrad gcn: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
