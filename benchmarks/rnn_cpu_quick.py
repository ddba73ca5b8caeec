"""Quick CPU benchmark: tapegrad's LSTM / RNN layers against torch.nn.LSTM / torch.nn.RNN.

Run from anywhere (OpenBLAS variables unset so that no peer is pinned to odd settings)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/rnn_cpu_quick.py [--T 50 --B 64 --I 128 --H 256]

Measures, for each model, a training step (forward, sum of the output, backward into the parameters;
the input needs no gradient) and inference (forward under no_grad), float32, and prints the median
time of each implementation and the ratio torch / ours (above 1 means tapegrad is faster), then the
best (minimum) times, which say more when other processes share the machine.

With ``--breakdown`` it then splits tapegrad's time per call into its pieces: the per-step recurrent
GEMMs, the input-projection GEMMs, the weight-gradient GEMMs, the fused cell kernels, NumPy adds and
the rest (Python, allocation, copies). It does so by wrapping ``numpy.matmul``, ``numpy.add``, the kernel
door and the engine's weight-gradient step, so those timings carry a little wrapper overhead.

Both libraries keep worker threads spinning for a while after each call (OpenBLAS's, torch's OpenMP
pool), which steals a core from whichever runs next. So the two never alternate call by call: they
run in blocks, with a pause between blocks for the spinning to stop, and blocks alternate so that
load from elsewhere on the machine falls on both alike.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _median_blocks(fns: dict, rounds: int, reps: int, pause: float) -> dict:
    times = {k: [] for k in fns}
    for k, f in fns.items():  # warm-up (Numba compile / cache load, allocator)
        for _ in range(3):
            f()
    for _ in range(rounds):
        for k, f in fns.items():
            time.sleep(pause)
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: (float(np.median(v)), float(np.min(v))) for k, v in times.items()}


def _breakdown(train, infer, B: int, reps: int) -> None:
    """Print where tapegrad's time goes per call of ``train`` and ``infer``: means over ``reps`` calls."""
    from tapegrad.engine import recurrent as engine_rec
    from tapegrad.kernels import registry

    acc: dict = {}

    def timed(key, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0

    def matmul(a, b, out=None):
        # The engine's per-step GEMMs have at most B rows; the projection's have several steps' rows.
        # (The weight-gradient GEMMs use the @ operator inside _weight_grads, timed as a whole.)
        key = "GEMM per step (h W_hh^T, dz W_hh)" if a.shape[0] <= B else "GEMM input projection"
        return timed(key, mm, a, b, out=out)

    def hook(name, backend, fn, args, kwargs):
        return timed(f"kernel {name}", fn, *args, **kwargs)

    mm, add, weight_grads = np.matmul, np.add, engine_rec._weight_grads
    np.matmul, registry._hook = matmul, hook
    np.add = lambda a, b, out=None: timed("numpy add", add, a, b, out=out)
    engine_rec._weight_grads = lambda *a: timed("GEMM weight gradients (one per weight)", weight_grads, *a)
    try:
        for mode, f in (("train", train), ("inference", infer)):
            f()
            acc.clear()
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            total = (time.perf_counter() - t0) / reps
            rows = sorted(((v / reps, k) for k, v in acc.items()), reverse=True)
            rows.append((total - sum(v for v, _ in rows), "rest (Python, allocation, copies)"))
            print(f"  tapegrad {mode}: {total * 1e3:.2f} ms per call")
            for v, k in rows:
                print(f"    {v * 1e3:7.2f} ms {100 * v / total:5.1f}%  {k}")
    finally:
        np.matmul, np.add, registry._hook = mm, add, None
        engine_rec._weight_grads = weight_grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--I", type=int, default=128)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--pause", type=float, default=0.3)
    ap.add_argument("--models", default="lstm,rnn")
    ap.add_argument("--breakdown", action="store_true", help="also split tapegrad's time into its pieces")
    args = ap.parse_args()

    import tapegrad as tg
    import torch
    from tapegrad.layers.rnn import LSTM, RNN

    T, B, I, H = args.T, args.B, args.I, args.H
    load = os.getloadavg()[0]
    print(f"T={T} B={B} I={I} H={H} float32; torch {torch.__version__} with {torch.get_num_threads()} threads; "
          f"{os.cpu_count()} CPUs, load average {load:.2f}")
    if load > 0.5:
        print("  (the machine is busy: timings are noisy)")
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    tx = torch.from_numpy(x)
    gx = tg.tensor(x)

    print(f"{'model':6s} {'mode':9s} {'torch ms':>9s} {'ours ms':>9s} {'torch/ours':>10s}   "
          f"(best: {'torch':>6s} {'ours':>6s} {'ratio':>6s})")
    for model in args.models.split(","):
        if model == "lstm":
            tmod, ours = torch.nn.LSTM(I, H), LSTM(I, H)
        else:
            tmod, ours = torch.nn.RNN(I, H), RNN(I, H)
        ours.load_state_dict(tmod.state_dict())

        def torch_train():
            tmod.zero_grad(set_to_none=True)
            out, _ = tmod(tx)
            out.sum().backward()

        def ours_train():
            ours.zero_grad()
            out, _ = ours(gx)
            out.sum().backward()

        def torch_infer():
            with torch.no_grad():
                tmod(tx)

        def ours_infer():
            with tg.no_grad():
                ours(gx)

        for mode, pair in (("train", (torch_train, ours_train)), ("inference", (torch_infer, ours_infer))):
            med = _median_blocks({"torch": pair[0], "ours": pair[1]}, args.rounds, args.reps, args.pause)
            (tm, tb), (om, ob) = med["torch"], med["ours"]
            print(f"{model:6s} {mode:9s} {tm * 1e3:9.2f} {om * 1e3:9.2f} {tm / om:10.2f}x   "
                  f"(      {tb * 1e3:6.2f} {ob * 1e3:6.2f} {tb / ob:5.2f}x)")
        if args.breakdown:
            _breakdown(ours_train, ours_infer, B, args.rounds * args.reps)


if __name__ == "__main__":
    main()
