"""The char-LSTM of ``python -m tapegrad charrnn`` against the same model in PyTorch.

Same model (Embedding -> LSTM -> Linear, parameter names alike), same hyper-parameters, same data order
(the windows of :mod:`tapegrad.apps.charrnn`: ``batch`` parallel streams, TBPTT with k1 = k2 = seq_len,
state carried and detached between windows, zero state at the start of each pass), same number of
steps, Adam and gradient-norm clipping in both. Initialisation: by default PyTorch starts from a copy of
tapegrad's initial weights (drawn from the same distributions as PyTorch's own: N(0, 1) embedding,
U(+-1/sqrt(H)) LSTM, U(+-1/sqrt(fan_in)) Linear), so the two runs differ only by floating-point
rounding; ``--torch-init`` lets PyTorch draw its own (same distributions, different numbers).

Prints both validation losses (mean cross-entropy over the same held-out windows) and their relative
difference; exits 1 when tapegrad's is more than ``--tolerance`` (default 2%) above PyTorch's.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/charrnn_vs_torch.py --steps 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from tapegrad.apps import charrnn
from tapegrad.engine.random import manual_seed


def torch_run(ids, vocab_size, args, init_state):
    import torch
    from torch import nn

    class TorchCharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab_size, args.embed)
            self.lstm = nn.LSTM(args.embed, args.hidden, num_layers=args.layers, batch_first=True)
            self.fc = nn.Linear(args.hidden, vocab_size)

        def forward(self, x, state=None):
            out, state = self.lstm(self.embedding(x), state)
            return self.fc(out), state

    torch.manual_seed(args.seed)
    model = TorchCharLSTM()
    if init_state is not None:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init_state.items()})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    train_streams, val_streams, n_val = charrnn.prepare(ids, args.batch, args.seq_len, args.val_chunks)
    n_win = charrnn.n_windows(train_streams, args.seq_len)
    loss_fn = nn.CrossEntropyLoss()
    state, losses, times = None, [], []
    for step in range(args.steps):
        k = step % n_win
        if k == 0:
            state = None
        x, y = charrnn.window(train_streams, k, args.seq_len)
        t0 = time.perf_counter()
        logits, state = model(torch.from_numpy(x), state)
        loss = loss_fn(logits.reshape(-1, vocab_size), torch.from_numpy(y).reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        state = tuple(s.detach() for s in state)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    model.eval()
    total, state = 0.0, None
    with torch.no_grad():
        for k in range(n_val):
            x, y = charrnn.window(val_streams, k, args.seq_len)
            logits, state = model(torch.from_numpy(x), state)
            total += loss_fn(logits.reshape(-1, vocab_size), torch.from_numpy(y).reshape(-1)).item()
    tail = max(1, min(10, args.steps // 10 or 1))
    return {"train_loss": float(np.mean(losses[-tail:])), "val_loss": total / n_val,
            "ms_per_step": 1000.0 * float(np.mean(times[1:] if len(times) > 1 else times))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--embed", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-chunks", type=int, default=8)
    p.add_argument("--torch-init", action="store_true",
                   help="let PyTorch draw its own initial weights (same distributions) instead of copying ours")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed relative excess of our val loss")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS threads for tapegrad and torch.set_num_threads for PyTorch (0: leave both alone)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    vocab, _, ids = charrnn.load_text_ids(args.data)
    manual_seed(args.seed)
    model = charrnn.CharLSTM(len(vocab), args.hidden, args.embed, args.layers)
    init_state = None if args.torch_init else model.state_dict()

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    with charrnn.blas_threads(args.threads):
        ours = charrnn.train(ids, len(vocab), args.steps, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
                             clip=args.clip, val_chunks=args.val_chunks, model=model)
    ours = {k: ours[k] for k in ("train_loss", "val_loss", "ms_per_step")}
    theirs = torch_run(ids, len(vocab), args, init_state)
    rel = ours["val_loss"] / theirs["val_loss"] - 1.0
    ok = rel <= args.tolerance
    if args.json:
        print(json.dumps({"tapegrad": ours, "torch": theirs, "relative_difference": rel, "pass": ok}))
    else:
        print(f"{args.steps} steps, batch {args.batch} x {args.seq_len} chars, hidden {args.hidden}, "
              f"lr {args.lr}, init {'torch' if args.torch_init else 'copied from tapegrad'}")
        for name, r in (("tapegrad", ours), ("torch", theirs)):
            print(f"  {name:8s}  train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}  "
                  f"{r['ms_per_step']:7.1f} ms/step")
        print(f"  val loss: tapegrad / torch - 1 = {100 * rel:+.2f}%  "
              f"({'PASS' if ok else 'FAIL'}: within {100 * args.tolerance:.0f}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
