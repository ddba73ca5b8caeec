"""The kernel profiler: what every kernel and engine op costs, and how close it runs to the machine's limit.

``with tapegrad.profile() as prof:`` records

* every kernel call that passes the dispatch door (:func:`tapegrad.kernels.registry.call`): name, backend,
  argument shapes and dtypes, run time (CUDA events for GPU backends), and Numba JIT compile time kept
  apart from run time;
* engine ops (BLAS GEMMs, numpy elementwise work) grouped by op, forward and backward separately, as
  self time (time inside nested kernels and ops is charged to them, not counted twice).

A small cost model per kernel/op gives bytes moved and FLOPs, hence GB/s, GFLOP/s and the fraction of
this machine's peak (memory bandwidth and GEMM throughput, measured once by a short probe and cached).
With profiling off nothing here runs: the dispatch door tests one global for None.
"""
from __future__ import annotations

import importlib
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..kernels import registry
from .tensor import Tensor

# The module, not the tensor() function that engine/__init__ exports under the same name.
_tensor = importlib.import_module(__package__ + ".tensor")

_lock = threading.Lock()
_active: "Profile | None" = None


# ---- cost models: (bytes moved, flops) per call, from the arguments -------------------------------------------

def _nbytes(a: Any) -> int:
    return int(getattr(a, "nbytes", 0) or 0)


def _cost_spmm(args):
    indptr, indices, data, x = args[:4]
    nnz, f, es = len(indices), x.shape[1], x.dtype.itemsize
    n = len(indptr) - 1
    moved = _nbytes(indptr) + _nbytes(indices) + _nbytes(data) + nnz * f * es + n * f * es
    return moved, 2 * nnz * f


def _cost_sddmm(args):
    indptr, indices, a, b = args[:4]
    nnz, f, es = len(indices), a.shape[1], a.dtype.itemsize
    return _nbytes(indptr) + _nbytes(indices) + 2 * nnz * f * es + nnz * es, 2 * nnz * f


def _cost_transpose(args):
    indptr, indices, data = args[:3]
    return 2 * (_nbytes(indptr) + 2 * _nbytes(indices) + 2 * _nbytes(data)), 0


def _cost_gcn_norm(args):
    indptr, indices, data = args[:3]
    nnz = len(indices)
    return 2 * (_nbytes(indptr) + _nbytes(indices)) + nnz * 8 * 2, 4 * nnz


def _cost_lstm_fwd(args):
    z, c_prev = args[:2]
    bh, es = c_prev.size, z.dtype.itemsize
    return (4 + 1 + 4 + 1 + 1) * bh * es, 30 * bh


def _cost_lstm_bwd(args):
    c = args[2]
    bh, es = c.size, c.dtype.itemsize
    return 14 * bh * es, 30 * bh


def _cost_rnn_fwd(args):
    z = args[0]
    return 2 * z.nbytes, 10 * z.size


def _cost_rnn_bwd(args):
    h = args[0]
    return 3 * h.nbytes, 3 * h.size


KERNEL_COST: dict[str, Callable] = {
    "spmm": _cost_spmm, "sddmm": _cost_sddmm, "csr_transpose": _cost_transpose, "gcn_norm": _cost_gcn_norm,
    "lstm_cell_fwd": _cost_lstm_fwd, "lstm_cell_bwd": _cost_lstm_bwd,
    "rnn_cell_fwd": _cost_rnn_fwd, "rnn_cell_bwd": _cost_rnn_bwd,
}


def _op_cost(name: str, args: tuple, out: Any) -> tuple[int, int]:
    """Bytes and flops of an engine op's forward: exact for matmul, read-inputs-write-output otherwise."""
    arrays = [a.data if isinstance(a, Tensor) else a for a in args]
    arrays = [a for a in arrays if hasattr(a, "nbytes")]
    out_arr = out.data if isinstance(out, Tensor) else None
    moved = sum(_nbytes(a) for a in arrays) + _nbytes(out_arr)
    if name == "matmul" and len(arrays) == 2 and out_arr is not None:
        k = arrays[0].shape[-1]
        return moved, 2 * int(out_arr.size) * int(k)
    return moved, int(out_arr.size) if out_arr is not None else 0


# ---- the machine's limits -----------------------------------------------------------------------------------

def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tapegrad", "peak.json")


def machine_peak(device: str = "cpu", refresh: bool = False) -> dict:
    """Memory bandwidth (GB/s) and float32 GEMM throughput (GFLOP/s), from a short probe, cached on disk."""
    import platform
    key = f"{platform.node()}|{platform.processor() or platform.machine()}|{os.cpu_count()}|{device}"
    path = _cache_path()
    cached = {}
    if os.path.exists(path) and not refresh:
        try:
            with open(path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = {}
        if key in cached:
            return cached[key]
    peak = _probe_gpu() if device == "cuda" else _probe_cpu()
    cached[key] = peak
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(cached, f)
    except OSError:
        pass
    return peak


def _best(fn: Callable, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _probe_cpu() -> dict:
    n = 32 * 1024 * 1024 // 4  # 32 MiB of float32: beyond the caches
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    t = _best(lambda: np.copyto(dst, src))
    bandwidth = 2 * src.nbytes / t / 1e9
    m = 1024
    a = np.ones((m, m), dtype=np.float32)
    b = np.ones((m, m), dtype=np.float32)
    c = np.empty((m, m), dtype=np.float32)
    t = _best(lambda: np.matmul(a, b, out=c), reps=3)
    return {"bandwidth_gbs": bandwidth, "gemm_gflops": 2 * m ** 3 / t / 1e9}


def _probe_gpu() -> dict:
    import cupy
    n = 256 * 1024 * 1024 // 4
    src = cupy.ones(n, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    m = 4096
    a = cupy.ones((m, m), dtype=cupy.float32)
    out = {}
    for label, fn, work in (("bandwidth_gbs", lambda: dst.__setitem__(slice(None), src), 2 * src.nbytes),
                            ("gemm_gflops", lambda: a @ a, 2 * m ** 3)):
        fn()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(5):
            fn()
        end.record()
        end.synchronize()
        out[label] = work * 5 / (cupy.cuda.get_elapsed_time(start, end) / 1e3) / 1e9
    return out


# ---- records -------------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Totals for one (kind, name, backend, signature) row."""

    kind: str          # "kernel" or "op"
    name: str
    backend: str
    signature: str     # argument shapes and dtypes
    calls: int = 0
    total_s: float = 0.0
    compile_s: float = 0.0
    bytes: int = 0
    flops: int = 0
    times: list = field(default_factory=list, repr=False)

    @property
    def run_s(self) -> float:
        return self.total_s - self.compile_s

    @property
    def mean_s(self) -> float:
        return self.run_s / self.calls if self.calls else 0.0

    def as_dict(self, peak: dict | None) -> dict:
        run = self.run_s
        gbs = self.bytes / run / 1e9 if run > 0 else 0.0
        gflops = self.flops / run / 1e9 if run > 0 else 0.0
        d = dict(kind=self.kind, name=self.name, backend=self.backend, signature=self.signature,
                 calls=self.calls, total_s=self.total_s, compile_s=self.compile_s, run_s=run,
                 mean_s=self.mean_s, bytes=self.bytes, flops=self.flops, gbs=gbs, gflops=gflops)
        if peak:
            d["frac_bandwidth"] = gbs / peak["bandwidth_gbs"] if peak.get("bandwidth_gbs") else None
            d["frac_gemm"] = gflops / peak["gemm_gflops"] if peak.get("gemm_gflops") else None
        return d


def _signature(args: tuple) -> str:
    parts = []
    for a in args:
        a = a.data if isinstance(a, Tensor) else a
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            parts.append(f"{a.dtype}{list(a.shape)}")
        elif a is None:
            parts.append("None")
        elif isinstance(a, (bool, int, float, str)):
            parts.append(repr(a))
    return "(" + ", ".join(parts) + ")"


class _CompileListener:
    """Sums Numba compile time on this thread (outermost compile events only)."""

    def __init__(self) -> None:
        self.depth = 0
        self.start = 0.0
        self.total = 0.0

    def notify(self, ev) -> None:
        if ev.is_start:
            if self.depth == 0:
                self.start = time.perf_counter()
            self.depth += 1
        elif ev.is_end:
            self.depth -= 1
            if self.depth == 0:
                self.total += time.perf_counter() - self.start


class Profile:
    """Collects kernel and op records while active; reports as a table, JSON, a Chrome trace or a roofline."""

    def __init__(self, trace: bool = True) -> None:
        self.stats: dict[tuple, Stat] = {}
        self.events: list[dict] = []
        self.trace = trace
        self._t0 = time.perf_counter()
        self._compile = _CompileListener()
        self._stack = threading.local()
        self._peak: dict[str, dict] = {}

    # -- recording --
    def _children(self) -> list:
        st = getattr(self._stack, "frames", None)
        if st is None:
            st = self._stack.frames = []
        return st

    def _record(self, kind: str, name: str, backend: str, args: tuple, t_start: float, total: float,
                compile_s: float, cost: tuple[int, int]) -> None:
        sig = _signature(args)
        key = (kind, name, backend, sig)
        with _lock:
            s = self.stats.get(key)
            if s is None:
                s = self.stats[key] = Stat(kind, name, backend, sig)
            s.calls += 1
            s.total_s += total
            s.compile_s += compile_s
            if total - compile_s > 0:
                s.bytes += cost[0]
                s.flops += cost[1]
            if self.trace and len(self.events) < 1_000_000:
                self.events.append(dict(name=name, cat=f"{kind}:{backend}", ph="X",
                                        ts=(t_start - self._t0) * 1e6, dur=total * 1e6,
                                        pid=os.getpid(), tid=threading.get_ident(), args={"shapes": sig}))

    def _timed(self, kind: str, name: str, backend: str, fn: Callable, args: tuple, kwargs: dict,
               cost_fn: Callable | None):
        frames = self._children()
        frames.append(0.0)  # time spent in nested records, subtracted to give self time
        compile_before = self._compile.total
        gpu = backend in ("cupy", "numba-cuda")
        t_start = time.perf_counter()
        if gpu:
            import cupy
            ev0, ev1 = cupy.cuda.Event(), cupy.cuda.Event()
            ev0.record()
        try:
            out = fn(*args, **kwargs)
        finally:
            nested = frames.pop()
        if gpu:
            ev1.record()
            ev1.synchronize()
            total = cupy.cuda.get_elapsed_time(ev0, ev1) / 1e3
        else:
            total = time.perf_counter() - t_start
        compile_s = self._compile.total - compile_before
        self_time = max(total - nested, 0.0) if kind == "op" else total
        if frames:
            frames[-1] += total
        cost = cost_fn(args) if cost_fn is not None else _op_cost(name, args, out)
        self._record(kind, name, backend, args, t_start, self_time, min(compile_s, self_time), cost)
        return out

    def kernel_hook(self, name, backend, fn, args, kwargs):
        return self._timed("kernel", name, backend, fn, args, kwargs, KERNEL_COST.get(name))

    def op_wrapper(self, name: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            return self._timed("op", name, _device_of_args(args), fn, args, kwargs, None)
        wrapped.__wrapped__ = fn
        wrapped.__name__ = getattr(fn, "__name__", name)
        wrapped.__doc__ = fn.__doc__
        return wrapped

    def backward_hook(self, node, grad):
        return self._timed("op", f"{node.name}.backward", "cpu" if isinstance(grad, np.ndarray) else "cuda",
                           node.backward, (grad,), {}, lambda args: (2 * _nbytes(args[0]), 0))

    # -- reports --
    def peak(self, device: str = "cpu") -> dict:
        if device not in self._peak:
            self._peak[device] = machine_peak(device)
        return self._peak[device]

    def rows(self, with_peak: bool = True) -> list[dict]:
        out = []
        for s in sorted(self.stats.values(), key=lambda s: -s.total_s):
            device = "cpu" if s.backend == "cpu" else "cuda"
            out.append(s.as_dict(self.peak(device) if with_peak else None))
        return out

    def table(self, limit: int = 30, with_peak: bool = True) -> str:
        """A terminal table sorted by total time."""
        rows = self.rows(with_peak)
        total = sum(r["total_s"] for r in rows) or 1.0
        head = (f"{'kind':6} {'name':24} {'backend':10} {'calls':>7} {'total ms':>10} {'%':>5} {'mean us':>9} "
                f"{'jit ms':>8} {'GB/s':>7} {'GFLOP/s':>8} {'%bw':>5} {'%gemm':>6}  shapes")
        lines = [head, "-" * len(head)]
        for r in rows[:limit]:
            fb = r.get("frac_bandwidth")
            fg = r.get("frac_gemm")
            lines.append(
                f"{r['kind']:6} {r['name'][:24]:24} {r['backend']:10} {r['calls']:7d} {r['total_s'] * 1e3:10.2f} "
                f"{100 * r['total_s'] / total:5.1f} {r['mean_s'] * 1e6:9.1f} {r['compile_s'] * 1e3:8.1f} "
                f"{r['gbs']:7.2f} {r['gflops']:8.2f} {'' if fb is None else f'{100 * fb:5.1f}':>5} "
                f"{'' if fg is None else f'{100 * fg:6.1f}':>6}  {r['signature'][:60]}")
        if len(rows) > limit:
            lines.append(f"... {len(rows) - limit} more rows (to_json has them all)")
        if with_peak:
            p = self.peak("cpu")
            lines.append(f"peak (probe): {p['bandwidth_gbs']:.1f} GB/s memory, {p['gemm_gflops']:.1f} GFLOP/s float32 GEMM")
        return "\n".join(lines)

    def to_json(self, path: str | None = None) -> dict:
        doc = {"rows": self.rows(), "peak": {d: self.peak(d) for d in self._peak} or {"cpu": self.peak("cpu")}}
        if path is not None:
            with open(path, "w") as f:
                json.dump(doc, f, indent=1)
        return doc

    def export_chrome_trace(self, path: str) -> None:
        """A trace viewable in chrome://tracing or Perfetto (one complete event per call)."""
        with open(path, "w") as f:
            json.dump({"traceEvents": self.events, "displayTimeUnit": "ms"}, f)

    def roofline(self, path: str, device: str = "cpu") -> None:
        """A roofline plot (PNG) of every row: arithmetic intensity vs achieved GFLOP/s (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise RuntimeError("the roofline plot needs matplotlib: pip install 'tapegrad[plot]'") from None
        peak = self.peak(device)
        bw, gf = peak["bandwidth_gbs"], peak["gemm_gflops"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = np.logspace(-3, 3, 200)
        ax.plot(xs, np.minimum(xs * bw, gf), "k-", lw=1.5, label=f"roof: {bw:.0f} GB/s, {gf:.0f} GFLOP/s")
        for r in self.rows():
            if r["bytes"] <= 0 or r["flops"] <= 0 or r["run_s"] <= 0:
                continue
            ai = r["flops"] / r["bytes"]
            ax.scatter([ai], [r["gflops"]], s=20 + 200 * r["total_s"] / max(x["total_s"] for x in self.rows()))
            ax.annotate(r["name"], (ai, r["gflops"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title("tapegrad kernels and ops against this machine's roofline")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _device_of_args(args: tuple) -> str:
    for a in args:
        a = a.data if isinstance(a, Tensor) else a
        if hasattr(a, "dtype"):
            return "cpu" if isinstance(a, np.ndarray) else "cuda"
    return "cpu"


# The engine ops that are timed, by module: an explicit list, so what the profiler sees is greppable.
PROFILED_OPS: dict[str, tuple[str, ...]] = {
    "tapegrad.engine.ops": ("add", "sub", "mul", "div", "neg", "pow", "exp", "log", "tanh", "sigmoid", "relu",
                            "matmul", "sum", "mean", "reshape", "transpose", "getitem", "concat", "stack",
                            "where", "softmax", "log_softmax", "to"),
    "tapegrad.engine.nn": ("cross_entropy", "mse", "dropout", "embedding"),
    "tapegrad.engine.sparse": ("spmm", "gcn_norm"),
    "tapegrad.engine.recurrent": ("lstm_sequence", "rnn_sequence"),
}


@contextmanager
def profile(trace: bool = True) -> Iterator[Profile]:
    """Profile everything run inside the block (one profile at a time per process)."""
    global _active
    if _active is not None:
        raise RuntimeError("a profile is already active")
    prof = Profile(trace)
    patched = []
    try:
        from numba.core import event
        listener = _numba_listener(prof._compile)
        event.register("numba:compile", listener)
    except Exception:  # numba's event API changed: compile time then counts as run time
        event, listener = None, None
    _active = prof
    registry._hook = prof.kernel_hook
    _tensor._profiler = prof
    try:
        for modname, names in PROFILED_OPS.items():
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                continue
            for name in names:
                fn = getattr(mod, name, None)
                if fn is not None:
                    patched.append((mod, name, fn))
                    setattr(mod, name, prof.op_wrapper(name, fn))
        yield prof
    finally:
        for mod, name, fn in patched:
            setattr(mod, name, fn)
        registry._hook = None
        _tensor._profiler = None
        _active = None
        if event is not None and listener is not None:
            try:
                event.unregister("numba:compile", listener)
            except Exception:
                pass


def _numba_listener(target: _CompileListener):
    """A numba event Listener feeding ``target`` (built here so numba is imported only when profiling)."""
    from numba.core import event

    class CompileListener(event.Listener):
        def on_start(self, ev):
            target.notify(ev)

        def on_end(self, ev):
            target.notify(ev)

    return CompileListener()
