"""Where the host time goes on the GPU path: cProfile of a few hot loops, top functions by own time.

    python benchmarks/gpu_profile.py [--data-dir DIR] > gpu_profile.txt

Profiles (each after a warm-up): GCN training epochs on Cora, LSTM training steps (T=50, B=64, I=128,
H=256), LSTM and RNN inference at B=8, and single kernel launches of each GPU backend (numba-cuda's
launch path is the one to read). Each first prints the host time per call without the profiler (no
synchronisation inside the timed calls) and with the device's time (synchronised at the end).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _profile(label: str, fn, calls: int, sync) -> None:
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls  # no synchronisation inside: the host's own time per call
    sync()
    device = (time.perf_counter() - t0) / calls
    print(f"==== {label}: host {host * 1e3:.3f} ms per call, host and device {device * 1e3:.3f} ms per call "
          "(no profiler)")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    sync()
    wall = (time.perf_counter() - t0) / calls
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    text = out.getvalue()
    body = text[text.find("   ncalls"):]
    print(f"==== {label}: {wall * 1e3:.3f} ms per call under the profiler, {calls} calls ====")
    print(body.rstrip() + "\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=os.environ.get("TAPEGRAD_DATA") or str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    import cupy

    import tapegrad as tg
    from tapegrad import datasets
    from tapegrad.kernels import registry
    sync = cupy.cuda.Device().synchronize

    try:
        from tapegrad.apps.bench import _tg_gcn_setup
        data = datasets.load_planetoid(str(Path(args.data_dir) / "cora.npz"))
        x = tg.tensor(datasets.row_normalize(data.x).toarray().astype(np.float32), device="cuda")
        y = tg.tensor(data.y, device="cuda")
        idx = cupy.asarray(data.train_idx)
        model, opt = _tg_gcn_setup(data)
        model.to("cuda")

        def epoch():
            model.train()
            opt.zero_grad()
            tg.cross_entropy(model(x, data.A), y, idx).backward()
            opt.step()
        _profile("GCN epoch, Cora, cuda", epoch, 20, sync)
    except Exception as e:
        print(f"GCN epoch: {type(e).__name__}: {e}")

    try:
        lstm = tg.LSTM(128, 256, device="cuda")
        xs = tg.tensor(np.random.default_rng(0).standard_normal((50, 64, 128), dtype=np.float32), device="cuda")

        def step():
            lstm.zero_grad()
            out, _ = lstm(xs)
            out.sum().backward()
        _profile("LSTM training step T50 B64 I128 H256, cuda", step, 10, sync)
        for cls in (tg.LSTM, tg.RNN):
            m = cls(128, 256, device="cuda")
            x8 = tg.tensor(np.random.default_rng(0).standard_normal((50, 8, 128), dtype=np.float32), device="cuda")

            def infer(m=m, x8=x8):
                with tg.no_grad():
                    m(x8)
            _profile(f"{cls.__name__} inference T50 B8 I128 H256, cuda", infer, 20, sync)
    except Exception as e:
        print(f"LSTM / RNN: {type(e).__name__}: {e}")

    z = cupy.ones((8, 128), cupy.float32)
    c = cupy.zeros((8, 32), cupy.float32)
    bufs = [cupy.empty((8, 128), cupy.float32), cupy.empty((8, 32), cupy.float32), cupy.empty((8, 32), cupy.float32)]
    for backend in ("cupy", "numba-cuda"):
        try:
            cell = registry.get("lstm_cell_fwd", backend)
            _profile(f"lstm_cell_fwd launch ({backend})", lambda cell=cell: cell(z, c, *bufs), 300, sync)
        except Exception as e:
            print(f"{backend} launch: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
