"""Device time of each CuPy whole-loop recurrent kernel, per variant: what one persistent loop costs.

    python benchmarks/gpu_loops.py [--T 50] [--H 256] [--batches 8,64] [--reps 20]

For each batch: ``lstm_seq_fwd/bwd`` and ``rnn_seq_fwd/bwd`` (float32) as tiled persistent loops, as
warp-per-unit persistent loops and launched step by step, each first checked against the NumPy
reference loop, then timed with CUDA events (median of ``reps`` launches, microseconds per loop and per
step). The GEMM + cell loop the engine runs otherwise is timed beside them (eager, cuBLAS GEMM per step).
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np


def _time(cupy, fn, reps):
    fn()
    cupy.cuda.Device().synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--H", type=int, default=256)
    ap.add_argument("--batches", default="8,64")
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    import cupy

    from tapegrad.kernels import reference as ref
    from tapegrad.kernels.cupy import recurrent, recurrent_step, recurrent_tiled
    T, H, dt = a.T, a.H, np.float32
    variants = {"tiled": (True, True), "warp per unit": (True, False), "launch per step": (False, False)}
    for B in (int(b) for b in a.batches.split(",")):
        rng = np.random.default_rng(B)
        r = lambda *s: (rng.standard_normal(s) * 0.4).astype(dt)  # noqa: E731
        hs, cs, gates = r(T + 1, B, H), r(T + 1, B, H), r(T, B, 4 * H)
        w = (r(4 * H, H) / np.sqrt(H)).astype(dt)
        w_t = np.ascontiguousarray(w.T)
        wr = (r(H, H) / np.sqrt(H)).astype(dt)
        wr_t = np.ascontiguousarray(wr.T)
        p, grad_h, grad_c, grad_out = r(T, B, H), r(B, H), r(B, H), r(T, B, H)
        want = [hs.copy(), cs.copy(), gates.copy()]
        ref.lstm_seq_fwd(want[0], w, want[2], want[1])
        dz_want, gc_want = np.empty((T, B, 4 * H), dt), grad_c.copy()
        ref.lstm_seq_bwd(dz_want, w_t, grad_h, grad_out, want[2], want[1], gc_want)
        rh_want = hs.copy()
        ref.rnn_seq_fwd(rh_want, wr, p)
        rdz_want = np.empty((T, B, H), dt)
        ref.rnn_seq_bwd(rdz_want, wr_t, grad_h, grad_out, rh_want)
        g = {k: cupy.asarray(v) for k, v in dict(w=w, w_t=w_t, wr=wr, wr_t=wr_t, p=p, grad_h=grad_h,
                                                   grad_out=grad_out, gates_done=want[2], cs_done=want[1],
                                                   rh_done=rh_want).items()}
        for label, (persistent, tiled) in variants.items():
            recurrent_step.PERSISTENT, recurrent_tiled.ENABLED = persistent, tiled
            used = "tiled" if recurrent_step.tiled_loops(4, B, H, dt) else "warp per unit" if persistent else "steps"
            hs_g, cs_g, gates_g = cupy.asarray(hs), cupy.asarray(cs), cupy.asarray(gates)
            recurrent_step.lstm_seq_fwd(hs_g, g["w"], gates_g, cs_g)
            dz, gc = cupy.empty((T, B, 4 * H), dt), cupy.asarray(grad_c)
            recurrent_step.lstm_seq_bwd(dz, g["w_t"], g["grad_h"], g["grad_out"], g["gates_done"], g["cs_done"], gc)
            rh = cupy.asarray(hs)
            recurrent_step.rnn_seq_fwd(rh, g["wr"], g["p"])
            rdz = cupy.empty((T, B, H), dt)
            recurrent_step.rnn_seq_bwd(rdz, g["wr_t"], g["grad_h"], g["grad_out"], g["rh_done"])
            errs = [float(np.abs(cupy.asnumpy(x) - y).max()) for x, y in
                    ((hs_g, want[0]), (cs_g, want[1]), (gates_g, want[2]), (dz, dz_want), (gc, gc_want),
                     (rh, rh_want), (rdz, rdz_want))]
            ok = max(errs) < 1e-3
            gates_w = gates_g.copy()
            times = {
                "lstm_seq_fwd": _time(cupy, lambda: recurrent_step.lstm_seq_fwd(hs_g, g["w"], gates_w, cs_g), a.reps),
                "lstm_seq_bwd": _time(cupy, lambda: recurrent_step.lstm_seq_bwd(
                    dz, g["w_t"], g["grad_h"], g["grad_out"], g["gates_done"], g["cs_done"], gc), a.reps),
                "rnn_seq_fwd": _time(cupy, lambda: recurrent_step.rnn_seq_fwd(rh, g["wr"], g["p"]), a.reps),
                "rnn_seq_bwd": _time(cupy, lambda: recurrent_step.rnn_seq_bwd(
                    rdz, g["wr_t"], g["grad_h"], g["grad_out"], g["rh_done"]), a.reps)}
            print(f"B={B} H={H} T={T} {label} (LSTM ran: {used}) max err {max(errs):.2e} {'ok' if ok else 'WRONG'}: "
                  + "; ".join(f"{k} {v:.0f} us ({v / T:.2f} us/step)" for k, v in times.items()), flush=True)
        recurrent_step.PERSISTENT, recurrent_tiled.ENABLED = True, True
        # the GEMM + cell forward the engine runs when the loops are not fused (eager here)
        hs_g, cs_g, gates_g = cupy.asarray(hs), cupy.asarray(cs), cupy.asarray(gates)

        def gemm_cell():
            for t in range(T):
                gates_g[t] += hs_g[t] @ g["w"].T
                recurrent.lstm_cell_fwd(gates_g[t], cs_g[t], gates_g[t], cs_g[t + 1], hs_g[t + 1])
        print(f"B={B} GEMM + cell forward loop (eager): {_time(cupy, gemm_cell, 5):.0f} us", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
