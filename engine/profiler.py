"""The kernel profiler: what every kernel and engine op costs, and how close it runs to the machine's limit.

``with tapegrad.profile() as prof:`` records

* every kernel call that passes the dispatch door (:func:`tapegrad.kernels.registry.call`): name, backend,
  argument shapes and dtypes, run time (CUDA events for GPU backends), and Numba JIT compile time kept
  apart from run time;
* engine ops (BLAS GEMMs, numpy elementwise work) grouped by op, forward and backward separately, as
  self time (time inside nested kernels and ops is charged to them, not counted twice).

Rows are keyed by name and argument shapes and dtypes; numbers among the arguments (learning rates, bias
corrections, axes) appear by type only, so a kernel given new scalars each step keeps one row.

Each row's first call is kept apart (``first_s``): it pays warm-up, dispatch, Numba's JIT or cache load
and thread-pool start. Mean time, GB/s, GFLOP/s, the % of peak and the roofline use the later, warm calls
only; a row called once has no warm time and shows none.

A small cost model per kernel/op gives bytes moved and FLOPs, hence GB/s, GFLOP/s and the fraction of
this machine's peak (memory bandwidth and GEMM throughput, measured once by a short probe and cached).
With profiling off nothing here runs: the dispatch door tests one global for None.

Ops are timed by rebinding their names, for the profile's duration, in every loaded module (so
``from tapegrad import relu`` at the top of a script is seen). A reference the profiler cannot rebind (a
local variable, an attribute or a dict entry made before the profile) runs untimed; such calls are still
counted, through ``make_result``, and the table's footer names them (``Profile.untimed``).
"""
from __future__ import annotations

import importlib
import json
import os
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..kernels import registry
from .tensor import Tensor

# The module, not the tensor() function that engine/__init__ exports under the same name.
_tensor = importlib.import_module(__package__ + ".tensor")
_make_result = _tensor.make_result  # the original: this module's namespace is never rebound

_lock = threading.Lock()
_active: "Profile | None" = None


# ---- cost models: (bytes moved, flops) per call ------------------------------------------------------------
# Kernels: from the arguments. Ops: from the arguments and the result, counting only the work the op does
# itself (an op whose work is a nested kernel, like spmm, costs nothing here: the kernel row carries it).

def _nbytes(a: Any) -> int:
    return int(getattr(a, "nbytes", 0) or 0)


def _cost_spmm(args):
    # indptr + indices + values, one gathered row of X per stored entry, the output written once
    indptr, indices, data, x = args[:4]
    nnz, f, es = len(indices), x.shape[1], x.dtype.itemsize
    n = len(indptr) - 1
    moved = _nbytes(indptr) + _nbytes(indices) + _nbytes(data) + nnz * f * es + n * f * es
    return moved, 2 * nnz * f


def _cost_sddmm(args):
    # a row of A and a gathered row of B per stored entry, one value written per entry
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
    # reads the 4H pre-activations and c_prev, writes the 4H gates, c and h; ~30 flops per unit
    z, c_prev = args[:2]
    bh, es = c_prev.size, z.dtype.itemsize
    return (4 + 1 + 4 + 1 + 1) * bh * es, 30 * bh


def _cost_lstm_bwd(args):
    # reads the 4H gates, c_prev, c, grad_h and grad_c; writes the 4H grad_z and grad_c_prev (dc waits in
    # grad_c_prev between the kernel's loops over one row: cache, not memory)
    c = args[2]
    bh, es = c.size, c.dtype.itemsize
    return (4 + 1 + 1 + 1 + 1 + 4 + 1) * bh * es, 30 * bh


def _cost_rnn_fwd(args):
    z = args[0]
    return 2 * z.nbytes, 10 * z.size


def _cost_rnn_bwd(args):
    h = args[0]
    return 3 * h.nbytes, 3 * h.size


def _cost_adam(args):
    # reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq. Per element: 3 flops for
    # the first moment, 4 for the second, 6 for the update (sqrt, /, +, /, *, -), 2 more for an L2 decay
    # and 1 for AdamW's decoupled one (kernels/cpu/optim.py::_adam)
    param, grad, m, v = args[:4]
    weight_decay = args[9] if len(args) > 9 else 0.0
    decay = args[10] if len(args) > 10 else 1.0
    per = 13 + (2 if weight_decay else 0) + (1 if decay != 1.0 else 0)
    moved = _nbytes(param) + _nbytes(grad) + _nbytes(m) + _nbytes(v) + _nbytes(param) + _nbytes(m) + _nbytes(v)
    return moved, per * int(param.size)


KERNEL_COST: dict[str, Callable] = {
    "spmm": _cost_spmm, "sddmm": _cost_sddmm, "csr_transpose": _cost_transpose, "gcn_norm": _cost_gcn_norm,
    "lstm_cell_fwd": _cost_lstm_fwd, "lstm_cell_bwd": _cost_lstm_bwd,
    "rnn_cell_fwd": _cost_rnn_fwd, "rnn_cell_bwd": _cost_rnn_bwd,
    "adam_step": _cost_adam,
}


def _arr(a: Any) -> Any:
    a = a.data if isinstance(a, Tensor) else a
    return a if hasattr(a, "nbytes") and hasattr(a, "shape") else None


def _arrays(seq) -> list:
    return [x for x in (_arr(a) for a in seq) if x is not None]


def _shares(out: Any, inputs: list) -> bool:
    """Whether ``out`` is a view of (or is) one of the inputs: then the op moved no data."""
    for a in inputs:
        if out is a:
            return True
        if isinstance(out, np.ndarray) and isinstance(a, np.ndarray) and np.may_share_memory(out, a):
            return True
    return False


_ELEMENTWISE = {"add": 1, "sub": 1, "mul": 1, "div": 1, "neg": 1, "pow": 1, "exp": 1, "log": 1, "tanh": 1,
                "sigmoid": 3, "relu": 1, "where": 1, "mse": 3, "dropout": 2}
_REDUCTIONS = {"sum": 1, "mean": 1, "softmax": 4, "log_softmax": 4, "cross_entropy": 4}
_MOVES = ("reshape", "transpose", "permute", "getitem", "concat", "stack", "to", "embedding")
_IN_KERNELS = ("spmm", "gcn_norm")  # all their array work is nested kernel calls


def _recurrent_dims(name: str, arrays: list) -> tuple[int, int, int, int, int] | None:
    """(T, B, I, G, H) from the arrays of lstm_sequence / rnn_sequence: x, h0, [c0,] w_ih, w_hh, ..."""
    k = 3 if name.startswith("lstm") else 2
    if len(arrays) < k + 2 or arrays[0].ndim != 3:
        return None
    (T, B, I), w_ih, w_hh = arrays[0].shape, arrays[k], arrays[k + 1]
    return T, B, I, int(w_ih.shape[0]), int(w_hh.shape[1])


def _op_cost(name: str, args: tuple, out: Any) -> tuple[int, int]:
    """Bytes and flops of an engine op's forward: exact for matmul, read-inputs-write-output otherwise."""
    if name in _IN_KERNELS:
        return 0, 0
    ins = _arrays(args)
    outs = _arrays(out if isinstance(out, tuple) else (out,))
    if not outs:
        return 0, 0
    o = outs[0]
    if name in ("lstm_sequence", "rnn_sequence"):
        dims = _recurrent_dims(name, ins)
        if dims is None:
            return 0, 0
        T, B, I, G, H = dims
        es = ins[0].dtype.itemsize
        # the input projection and the per-step recurrent GEMMs run here, in BLAS; the cell is a kernel
        return sum(_nbytes(a) for a in ins) + 2 * T * B * G * es + sum(_nbytes(a) for a in outs), \
            2 * T * B * G * (I + H)
    if name == "matmul":
        if len(ins) != 2:  # a sparse operand: the nested spmm is the work
            return 0, 0
        return _nbytes(ins[0]) + _nbytes(ins[1]) + _nbytes(o), 2 * int(o.size) * int(ins[0].shape[-1])
    if _shares(o, ins):  # a view, or an identity (dropout in eval mode): nothing moved
        return 0, 0
    if name in _MOVES:
        return 2 * _nbytes(o), 0
    moved = sum(_nbytes(a) for a in ins) + _nbytes(o)
    if name in _REDUCTIONS:
        return moved, _REDUCTIONS[name] * max(int(a.size) for a in ins) if ins else 0
    return moved, _ELEMENTWISE.get(name, 1) * int(o.size)


def _backward_cost(name: str, parents: tuple, grad: Any, grads: Any) -> tuple[int, int]:
    """Bytes and flops of ``name``'s backward from grad_out, the parents and the grads it returned."""
    if name in _IN_KERNELS:
        return 0, 0
    g = _arr(grad)
    outs = _arrays(grads if isinstance(grads, (tuple, list)) else (grads,))
    if g is not None:  # a grad passed through unchanged (add, reshape of a view) costs nothing
        outs = [a for a in outs if not _shares(a, [g])]
    pdata = _arrays(parents)
    moved = _nbytes(g) + sum(_nbytes(a) for a in outs)
    if name in ("lstm_sequence", "rnn_sequence"):
        dims = _recurrent_dims(name, pdata)
        if dims is None:
            return moved, 0
        T, B, I, G, H = dims
        es = pdata[0].dtype.itemsize
        # dx and dW_ih (2 TBGI each), per-step dh and dW_hh (2 TBGH each); dz stored and read back
        return moved + sum(_nbytes(a) for a in pdata) + 2 * T * B * G * es, 4 * T * B * G * (I + H)
    if name == "matmul" and len(pdata) == 2 and g is not None:
        k = int(pdata[0].shape[-1])
        return moved + sum(_nbytes(a) for a in pdata), 2 * int(g.size) * k * len(outs)
    if name in _MOVES:
        return (moved, 0) if outs else (0, 0)
    return moved + sum(_nbytes(a) for a in pdata), sum(int(a.size) for a in outs)


# ---- the machine's limits -----------------------------------------------------------------------------------

def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tapegrad", "peak.json")


def _gpu_name() -> str:
    try:
        import cupy
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        try:
            from numba import cuda
            return str(cuda.get_current_device().name)
        except Exception:
            return "gpu"


def machine_peak(device: str = "cpu", refresh: bool = False) -> dict:
    """Memory bandwidth (GB/s) and float32 GEMM throughput (GFLOP/s), from a short probe, cached on disk.

    The cache is ``$XDG_CACHE_HOME/tapegrad/peak.json`` (``~/.cache`` by default), keyed by host, CPU and
    device, so the probe runs once per machine; ``refresh=True`` probes again.
    """
    import platform
    what = _gpu_name() if device == "cuda" else (platform.processor() or platform.machine())
    key = f"{platform.node()}|{what}|{os.cpu_count()}|{device}"
    path = _cache_path()
    cached: dict = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = {}
        if not isinstance(cached, dict):
            cached = {}
        if key in cached and not refresh:
            return cached[key]
    peak = _probe_gpu() if device == "cuda" else _probe_cpu()
    cached[key] = peak
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cached, f)
        os.replace(tmp, path)  # atomic: two processes probing at once never leave half a file
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


# Probe sizes; the tests shrink them.
_PROBE_BYTES = 32 * 1024 * 1024  # a copy beyond the last-level cache
_PROBE_GEMM = 1024


def _probe_cpu() -> dict:
    n = _PROBE_BYTES // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    t = _best(lambda: np.copyto(dst, src), reps=10)
    bandwidth = 2 * src.nbytes / t / 1e9  # read + write
    m = _PROBE_GEMM
    a = np.ones((m, m), dtype=np.float32)
    b = np.ones((m, m), dtype=np.float32)
    c = np.empty((m, m), dtype=np.float32)
    np.matmul(a, b, out=c)
    t = _best(lambda: np.matmul(a, b, out=c), reps=10)
    return {"bandwidth_gbs": bandwidth, "gemm_gflops": 2 * m ** 3 / t / 1e9}


def _probe_gpu() -> dict:
    """Device-to-device copy bandwidth and float32 GEMM throughput, timed with CUDA events.

    Uses CuPy; with only Numba CUDA installed it measures the copy and leaves GEMM out (None).
    """
    try:
        import cupy
    except ImportError:
        cupy = None
    n = 256 * 1024 * 1024 // 4
    if cupy is None:
        from numba import cuda
        src = cuda.to_device(np.ones(n, dtype=np.float32))
        dst = cuda.device_array_like(src)
        dst.copy_to_device(src)
        start, end = cuda.event(), cuda.event()
        start.record()
        for _ in range(5):
            dst.copy_to_device(src)
        end.record()
        end.synchronize()
        return {"bandwidth_gbs": 2 * src.nbytes * 5 / (cuda.event_elapsed_time(start, end) / 1e3) / 1e9,
                "gemm_gflops": None}
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


# ---- GPU timing (imported only once a GPU backend is seen) ---------------------------------------------------

class _GpuTimer:
    """CUDA events on the current stream: CuPy's when it is installed, else Numba CUDA's."""

    def __init__(self) -> None:
        try:
            import cupy
            self._cupy, self._cuda = cupy, None
        except ImportError:
            from numba import cuda
            self._cupy, self._cuda = None, cuda

    def _event(self):
        return self._cupy.cuda.Event() if self._cupy is not None else self._cuda.event()

    def start(self):
        ev = self._event()
        ev.record()
        return ev

    def stop(self, ev0) -> float:
        """Seconds on the GPU between ``ev0`` and now (waits for the GPU to get there)."""
        ev1 = self._event()
        ev1.record()
        ev1.synchronize()
        if self._cupy is not None:
            return self._cupy.cuda.get_elapsed_time(ev0, ev1) / 1e3
        return self._cuda.event_elapsed_time(ev0, ev1) / 1e3

    def synchronize(self) -> None:
        if self._cupy is not None:
            self._cupy.cuda.get_current_stream().synchronize()
        else:
            self._cuda.synchronize()


# ---- records -------------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Totals for one (kind, name, backend, signature) row. Times are self times: nested records excluded.

    The row's first call is also kept on its own (``first_*``): rates and means use the warm calls after it.
    """

    kind: str          # "kernel" or "op"
    name: str
    backend: str
    signature: str     # argument shapes and dtypes
    calls: int = 0
    total_s: float = 0.0
    compile_s: float = 0.0
    bytes: int = 0
    flops: int = 0
    first_s: float = 0.0          # the first call's self time, its JIT included
    first_compile_s: float = 0.0
    first_bytes: int = 0
    first_flops: int = 0

    @property
    def warm_calls(self) -> int:
        return max(self.calls - 1, 0)

    @property
    def run_s(self) -> float:
        """Run time of the warm calls (the first call and any later JIT left out)."""
        return max((self.total_s - self.first_s) - (self.compile_s - self.first_compile_s), 0.0)

    @property
    def mean_s(self) -> float | None:
        """Mean run time per warm call; None for a row called once (its one call is all warm-up)."""
        return self.run_s / self.warm_calls if self.warm_calls else None

    def as_dict(self, peak: dict | None) -> dict:
        run = self.run_s
        moved, work = self.bytes - self.first_bytes, self.flops - self.first_flops
        gbs = moved / run / 1e9 if run > 0 else 0.0
        gflops = work / run / 1e9 if run > 0 else 0.0
        d = dict(kind=self.kind, name=self.name, backend=self.backend, signature=self.signature,
                 calls=self.calls, total_s=self.total_s, compile_s=self.compile_s, first_s=self.first_s,
                 warm_calls=self.warm_calls, run_s=run, mean_s=self.mean_s, bytes=self.bytes, flops=self.flops,
                 gbs=gbs, gflops=gflops, intensity=self.flops / self.bytes if self.bytes else None)
        if peak:
            bw, gf = peak.get("bandwidth_gbs"), peak.get("gemm_gflops")
            # None where the warm calls move no bytes (or do no flops): a fraction of nothing says nothing
            d["frac_bandwidth"] = gbs / bw if bw and moved and run > 0 else None
            d["frac_gemm"] = gflops / gf if gf and work and run > 0 else None
        return d


def _signature(args: tuple) -> str:
    """Shapes and dtypes of the arrays; numbers by type only (a per-call scalar must not split a row)."""
    parts = []
    for a in args:
        a = a.data if isinstance(a, Tensor) else a
        if hasattr(a, "indptr") and hasattr(a, "indices"):  # a CSR operand
            parts.append(f"csr{list(a.shape)} nnz={len(a.indices)}")
        elif hasattr(a, "shape") and hasattr(a, "dtype"):
            parts.append(f"{a.dtype}{list(a.shape)}")
        elif a is None or isinstance(a, (bool, str)):
            parts.append(repr(a))
        elif isinstance(a, (int, float)):
            parts.append(type(a).__name__)
    return "(" + ", ".join(parts) + ")"


class _CompileListener:
    """Numba JIT time per thread: the outermost spans during which Numba's compiler lock is held.

    Listening to the lock, not only to ``numba:compile``, also catches loading a kernel from Numba's
    on-disk cache, which fires no compile event yet costs a first call hundreds of milliseconds.
    """

    KINDS = ("numba:compiler_lock", "numba:compile")

    def __init__(self) -> None:
        self._state: dict[int, list] = {}  # thread id -> [depth, start, total]

    def total(self) -> float:
        st = self._state.get(threading.get_ident())
        return st[2] if st is not None else 0.0

    def notify(self, ev) -> None:
        tid = threading.get_ident()
        st = self._state.get(tid)
        if st is None:
            st = self._state[tid] = [0, 0.0, 0.0]
        if ev.is_start:
            if st[0] == 0:
                st[1] = time.perf_counter()
            st[0] += 1
        elif ev.is_end and st[0] > 0:
            st[0] -= 1
            if st[0] == 0:
                st[2] += time.perf_counter() - st[1]


class Profile:
    """Collects kernel and op records while active; reports as a table, JSON, a Chrome trace or a roofline.

    Every record is a self time: an op's time excludes the kernels and ops nested in it (and the
    profiler's bookkeeping for them), and so does its compile time, so the rows add up to the profiled
    wall time less the untracked Python between ops (``wall_s`` against ``tracked_s``).
    """

    def __init__(self, trace: bool = True) -> None:
        self.stats: dict[tuple, Stat] = {}
        self.events: list[dict] = []
        self.trace = trace
        self.wall_s: float | None = None  # the profiled block's wall time, set when it exits
        self._t0 = time.perf_counter()
        self._compile = _CompileListener()
        self._stack = threading.local()
        self._peak: dict[str, dict] = {}
        self._gpu: _GpuTimer | None = None
        self._live = False
        self.untimed: dict[str, int] = {}  # op results made by calls the profiler could not time, by op
        self.events_dropped = 0           # trace events past the cap (_MAX_EVENTS)

    @property
    def tracked_s(self) -> float:
        """Sum of all rows' self times."""
        return sum(s.total_s for s in self.stats.values())

    # -- recording --
    def _frames(self) -> list:
        st = getattr(self._stack, "frames", None)
        if st is None:
            st = self._stack.frames = []
        return st

    def _gpu_timer(self) -> _GpuTimer:
        if self._gpu is None:
            self._gpu = _GpuTimer()
        return self._gpu

    def _record(self, kind: str, name: str, backend: str, sig_args: tuple, t_start: float, wall: float,
                self_s: float, compile_s: float, cost: tuple[int, int]) -> None:
        sig = _signature(sig_args)
        key = (kind, name, backend, sig)
        with _lock:
            s = self.stats.get(key)
            first = s is None
            if first:  # warm-up, dispatch, JIT or cache load: kept out of the row's rates
                s = self.stats[key] = Stat(kind, name, backend, sig, first_s=self_s, first_compile_s=compile_s,
                                           first_bytes=cost[0], first_flops=cost[1])
            s.calls += 1
            s.total_s += self_s
            s.compile_s += compile_s
            s.bytes += cost[0]
            s.flops += cost[1]
            if self.trace:
                if len(self.events) < _MAX_EVENTS:
                    # dur is inclusive, so nested calls sit inside their parent in the viewer
                    self.events.append(dict(name=name, cat=f"{kind},{backend}", ph="X",
                                            ts=(t_start - self._t0) * 1e6, dur=wall * 1e6,
                                            pid=os.getpid(), tid=threading.get_ident(),
                                            args={"shapes": sig, "self_us": self_s * 1e6,
                                                  "compile_us": compile_s * 1e6, "first_call": first}))
                else:
                    self.events_dropped += 1

    def _timed(self, kind: str, name: str, backend: str, fn: Callable, args: tuple, kwargs: dict,
               cost_fn: Callable, sig_args: tuple):
        frames = self._frames()
        frame = [0.0, 0.0]  # wall and compile time of nested records, taken out of this one
        frames.append(frame)
        compile_before = self._compile.total()
        gpu = self._gpu_timer() if backend != "cpu" else None
        ev0 = gpu.start() if gpu is not None and kind == "kernel" else None
        t_start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
            if gpu is not None and ev0 is None:
                gpu.synchronize()  # an op's GPU work is asynchronous: charge it to the op that queued it
        finally:
            frames.pop()
        if ev0 is not None:
            self_s = gpu.stop(ev0)  # the kernel's GPU time, from CUDA events
            wall = time.perf_counter() - t_start
        else:
            wall = time.perf_counter() - t_start
            self_s = max(wall - frame[0], 0.0)
        compile_s = min(max(self._compile.total() - compile_before - frame[1], 0.0), self_s)
        try:
            cost = cost_fn(out) if self_s > compile_s else (0, 0)
        except Exception:  # a cost model that does not fit these arguments must not break the run
            cost = (0, 0)
        self._record(kind, name, backend, sig_args, t_start, wall, self_s, compile_s, cost)
        if frames:
            # the parent loses everything from our start to now, our own bookkeeping included
            frames[-1][0] += time.perf_counter() - t_start
            frames[-1][1] += compile_s + frame[1]
        return out

    def kernel_hook(self, name, backend, fn, args, kwargs):
        model = KERNEL_COST.get(name)
        return self._timed("kernel", name, backend, fn, args, kwargs,
                           (lambda out: model(args)) if model is not None else (lambda out: (0, 0)), args)

    def op_result(self, name: str) -> None:
        """Called by every ``make_result`` while profiling: an op result made outside any timed call came
        from an op reached through a reference the profiler could not rebind, so count it."""
        if not getattr(self._stack, "frames", None):
            with _lock:
                self.untimed[name] = self.untimed.get(name, 0) + 1

    def backward_hook(self, node, grad):
        backend = _device_of_args((grad,))
        return self._timed("op", f"{node.name}.backward", backend, node.backward, (grad,), {},
                           lambda out: _backward_cost(node.name, node.parents, grad, out),
                           (grad,) + tuple(node.parents))

    # -- reports --
    def peak(self, device: str = "cpu") -> dict:
        """This machine's measured limits for ``device`` ("cpu" or "cuda"), probed once and cached."""
        if device not in self._peak:
            self._peak[device] = machine_peak(device)
        return self._peak[device]

    def _devices(self) -> list[str]:
        devs = sorted({"cpu" if s.backend == "cpu" else "cuda" for s in self.stats.values()}) or ["cpu"]
        return devs

    def rows(self, with_peak: bool = True) -> list[dict]:
        """One dict per (kind, name, backend, shapes), sorted by total (self) time, longest first."""
        out = []
        for s in sorted(self.stats.values(), key=lambda s: -s.total_s):
            device = "cpu" if s.backend == "cpu" else "cuda"
            out.append(s.as_dict(self.peak(device) if with_peak else None))
        return out

    def table(self, limit: int = 30, with_peak: bool = True) -> str:
        """A terminal table sorted by total time.

        ``mean us``, GB/s, GFLOP/s and the % of peak are over each row's warm calls: its first call
        (warm-up, dispatch, JIT or cache load) is apart, in ``first ms``, of which ``jit ms`` is Numba
        compiling or loading its cache. A row called once has no warm call and shows ``once``.
        """
        rows = self.rows(with_peak)
        tracked = sum(r["total_s"] for r in rows)
        denom = tracked or 1.0
        head = (f"{'kind':6} {'name':30} {'backend':10} {'calls':>6} {'total ms':>9} {'%':>5} {'mean us':>9} "
                f"{'first ms':>8} {'jit ms':>8} {'GB/s':>7} {'GFLOP/s':>8} {'%bw':>5} {'%gemm':>6}  shapes")
        lines = [head, "-" * len(head)]

        def num(v, fmt):
            return "" if not v else format(v, fmt)

        def pct(f, width):
            return f"{'' if f is None else f'{100 * f:.1f}':>{width}}"

        for r in rows[:limit]:
            mean = "once" if r["mean_s"] is None else f"{r['mean_s'] * 1e6:.1f}"
            lines.append(
                f"{r['kind']:6} {r['name'][:30]:30} {r['backend']:10} {r['calls']:6d} {r['total_s'] * 1e3:9.2f} "
                f"{100 * r['total_s'] / denom:5.1f} {mean:>9} {r['first_s'] * 1e3:8.2f} "
                f"{num(r['compile_s'] * 1e3, '.1f'):>8} "
                f"{num(r['gbs'] if r['bytes'] else 0, '.2f'):>7} {num(r['gflops'] if r['flops'] else 0, '.2f'):>8} "
                f"{pct(r.get('frac_bandwidth'), 5)} {pct(r.get('frac_gemm'), 6)}  {r['signature'][:70]}")
        if len(rows) > limit:
            rest = sum(r["total_s"] for r in rows[limit:])
            lines.append(f"... {len(rows) - limit} more rows, {rest * 1e3:.2f} ms (to_json has them all)")
        jit = sum(r["compile_s"] for r in rows)
        first = sum(r["first_s"] for r in rows)
        summary = f"tracked {tracked * 1e3:.1f} ms (of which first calls {first * 1e3:.1f} ms, JIT {jit * 1e3:.1f} ms)"
        if self.wall_s:
            summary += (f" of {self.wall_s * 1e3:.1f} ms wall; the other "
                        f"{max(self.wall_s - tracked, 0.0) * 1e3:.1f} ms is Python between ops and the profiler")
        lines.append(summary)
        lines.append("mean us, GB/s, GFLOP/s, %bw and %gemm are over warm calls: each row's first call "
                     "(warm-up, dispatch, JIT) is in 'first ms'; 'once' = no warm call")
        if self.untimed:
            n = sum(self.untimed.values())
            ops = ", ".join(f"{k} {v}" for k, v in sorted(self.untimed.items(), key=lambda kv: -kv[1])[:8])
            lines.append(f"untimed: {n} op results ({ops}) came from ops called through a reference made before "
                         "the profile that it cannot rebind (a local, an attribute, a dict entry); their forward "
                         "time is in the untracked share (call tg.<op>, or bind the name inside the profile)")
        if self.events_dropped:
            lines.append(f"trace: {self.events_dropped} events past the cap of {_MAX_EVENTS} were dropped "
                         "(the rows above count every call)")
        if with_peak:
            for d in self._devices():
                p = self.peak(d)
                gf = p.get("gemm_gflops")
                lines.append(f"peak {d} (probe): {p['bandwidth_gbs']:.1f} GB/s memory copy"
                             + (f", {gf:.1f} GFLOP/s float32 GEMM" if gf else "")
                             + "; %bw over 100 means the data sat in cache")
        return "\n".join(lines)

    def to_json(self, path: str | None = None) -> dict:
        """Every row plus the peaks, wall/tracked time, the untimed op calls and the trace events dropped;
        written to ``path`` when given."""
        doc = {"rows": self.rows(), "peak": {d: self.peak(d) for d in self._devices()},
               "wall_s": self.wall_s, "tracked_s": self.tracked_s, "untimed": dict(self.untimed),
               "events_dropped": self.events_dropped}
        if path is not None:
            with open(path, "w") as f:
                json.dump(doc, f, indent=1)
        return doc

    def export_chrome_trace(self, path: str) -> None:
        """A trace viewable in chrome://tracing or https://ui.perfetto.dev (one complete event per call).

        Raises RuntimeError for a profile made with ``trace=False`` (it kept no events). Warns when there is
        nothing to show, and when events past the cap were dropped (the trace then says so at its end).
        """
        if not self.trace:
            raise RuntimeError("this profile was made with trace=False and kept no events: "
                               "use tapegrad.profile(trace=True) to export a trace")
        meta = [dict(name="process_name", ph="M", pid=os.getpid(), tid=0, args={"name": "tapegrad"})]
        events = meta + self.events
        if not self.events:
            warnings.warn("the profile recorded no kernel or op call: the trace is empty", RuntimeWarning,
                          stacklevel=2)
        if self.events_dropped:
            last = max(e["ts"] + e["dur"] for e in self.events)
            events.append(dict(name=f"trace truncated: {self.events_dropped} later events dropped "
                                    f"(cap {_MAX_EVENTS})", ph="i", s="g", ts=last, pid=os.getpid(), tid=0))
            warnings.warn(f"the trace holds the first {_MAX_EVENTS} events; {self.events_dropped} later ones "
                          "were dropped", RuntimeWarning, stacklevel=2)
        with open(path, "w") as f:
            json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)

    def roofline(self, path: str, device: str = "cpu", label: int = 12) -> None:
        """A roofline plot (PNG): arithmetic intensity vs achieved GFLOP/s, one point per kernel/op name.

        Rows of one name (all shapes) are pooled over their warm calls (each row's first call left out,
        as in the table); rows with no flops or no bytes (views, copies, scalar losses' backward) or no
        warm call have no place on a roofline and are left out. A point's area follows its warm run
        time. The ``label`` largest are named.
        """
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise RuntimeError("the roofline plot needs matplotlib: pip install 'tapegrad[plot]'") from None
        peak = self.peak(device)
        bw, gf = peak["bandwidth_gbs"], peak.get("gemm_gflops")
        pooled: dict[tuple, list] = {}
        for s in self.stats.values():
            if (s.backend == "cpu") != (device == "cpu"):
                continue
            p = pooled.setdefault((s.kind, s.name), [0, 0, 0.0])
            p[0] += s.bytes - s.first_bytes
            p[1] += s.flops - s.first_flops
            p[2] += s.run_s
        points = [(k, f / b, f / run / 1e9, run) for k, (b, f, run) in pooled.items()
                  if b > 0 and f > 0 and run > 0]
        fig, ax = plt.subplots(figsize=(8, 5))
        if points:
            ai = np.array([p[1] for p in points])
            perf = np.array([p[2] for p in points])
            x_lo, x_hi = ai.min() / 4, ai.max() * 4
            ridge = gf / bw if gf else None
            if ridge:
                x_lo, x_hi = min(x_lo, ridge / 4), max(x_hi, ridge * 4)
            y_top = max(gf or 0, perf.max()) * 2
            y_lo = min(perf.min(), x_lo * bw) / 4
        else:
            x_lo, x_hi, y_lo, y_top, ridge = 1e-2, 1e2, 1e-2, (gf or bw) * 2, None
        xs = np.logspace(np.log10(x_lo), np.log10(x_hi), 200)
        roof = np.minimum(xs * bw, gf) if gf else xs * bw
        ax.plot(xs, roof, "k-", lw=1.5,
                label=f"roof: {bw:.1f} GB/s" + (f", {gf:.1f} GFLOP/s" if gf else ""))
        if ridge:
            ax.axvline(ridge, color="0.7", ls=":", lw=1)
        total_max = max((p[3] for p in points), default=1.0) or 1.0
        colours = {"kernel": "tab:blue", "op": "tab:orange"}
        ranked = sorted(points, key=lambda p: -p[3])
        for i, ((kind, name), x, y, tot) in enumerate(ranked):
            backward = name.endswith(".backward")
            ax.scatter([x], [y], s=25 + 300 * tot / total_max, color=colours.get(kind, "tab:gray"),
                       marker="v" if backward else "o", alpha=0.75, edgecolors="k", linewidths=0.5)
            if i < label:
                ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        for kind, colour in colours.items():
            ax.scatter([], [], color=colour, label=f"{kind} (area ~ warm time; \u25bc backward)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_lo, x_hi)
        ax.set_ylim(y_lo, y_top)
        ax.set_xlabel("arithmetic intensity (FLOP / byte)")
        ax.set_ylabel("achieved GFLOP/s (warm calls: first call and JIT excluded)")
        ax.set_title(f"tapegrad kernels and ops against this machine's roofline ({device})")
        ax.grid(True, which="major", ls=":", lw=0.5)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _device_of_args(args: tuple) -> str:
    for a in args:
        a = a.data if isinstance(a, Tensor) else a
        a = getattr(a, "indptr", a)  # a CSR operand lives where its arrays do
        if isinstance(a, (np.ndarray, np.generic)):
            return "cpu"
        if hasattr(a, "__cuda_array_interface__"):
            return "cuda"
    return "cpu"


# The engine ops that are timed, by module: an explicit list, so what the profiler sees is greppable.
PROFILED_OPS: dict[str, tuple[str, ...]] = {
    "tapegrad.engine.ops": ("add", "sub", "mul", "div", "neg", "pow", "exp", "log", "tanh", "sigmoid", "relu",
                            "matmul", "sum", "mean", "reshape", "transpose", "permute", "getitem", "concat", "stack",
                            "where", "softmax", "log_softmax", "to"),
    "tapegrad.engine.nn": ("cross_entropy", "mse", "dropout", "embedding"),
    "tapegrad.engine.sparse": ("spmm", "gcn_norm"),
    "tapegrad.engine.recurrent": ("lstm_sequence", "rnn_sequence"),
}


# Trace events kept per profile; calls past it are still counted in the rows (the tests shrink it).
_MAX_EVENTS = 1_000_000

# One wrapper per op function, made on first use and kept: a wrapper that escaped a profile (bound into a
# local while profiling) then times into whichever profile is active, and passes straight through otherwise.
_wrappers: dict[int, tuple[Callable, Callable]] = {}  # id(op) -> (op, its wrapper)


def _op_wrapper(name: str, fn: Callable) -> Callable:
    hit = _wrappers.get(id(fn))
    if hit is not None and hit[0] is fn:
        return hit[1]

    def wrapped(*args, **kwargs):
        prof = _active
        if prof is None or not prof._live:
            return fn(*args, **kwargs)
        return prof._timed("op", name, _device_of_args(args), fn, args, kwargs,
                           lambda out: _op_cost(name, args, out), args)
    wrapped.__wrapped__ = fn
    wrapped.__name__ = getattr(fn, "__name__", name)
    wrapped.__qualname__ = getattr(fn, "__qualname__", name)
    wrapped.__doc__ = fn.__doc__
    wrapped._tapegrad_profiled = True
    _wrappers[id(fn)] = (fn, wrapped)
    return wrapped


def _counting_make_result(data: Any, parents: Any, backward: Callable, name: str, saved: tuple = (),
                          reads: tuple | None = None) -> Tensor:
    """``make_result`` while profiling: tells the active profile about every op result (see Profile.op_result)."""
    prof = _active
    if prof is not None and prof._live:
        prof.op_result(name)
    return _make_result(data, parents, backward, name, saved, reads)


def _module_dicts() -> list[dict]:
    """The namespaces of every loaded module: the user's script and its imports as well as tapegrad's."""
    import sys
    out, own = [], globals()
    for mod in list(sys.modules.values()):
        try:
            ns = vars(mod)
        except TypeError:  # a non-module object placed in sys.modules
            continue
        if ns is not own and isinstance(ns, dict):
            out.append(ns)
    return out


def _rebind(swap: dict[int, tuple[Any, Any]]) -> list[tuple[dict, str, Any]]:
    """Replace, in every loaded module, each global bound to a key of ``swap`` (by identity) by its new
    value; returns (namespace, name, old value) for each replacement."""
    done = []
    for ns in _module_dicts():
        for attr, value in list(ns.items()):
            hit = swap.get(id(value))
            if hit is not None and hit[0] is value:
                ns[attr] = hit[1]
                done.append((ns, attr, value))
    return done


@contextmanager
def profile(trace: bool = True) -> Iterator[Profile]:
    """Profile everything run inside the block (one profile at a time per process).

    ``trace=False`` keeps no per-call events (``export_chrome_trace`` then raises), only the rows.
    """
    global _active
    with _lock:
        if _active is not None:
            raise RuntimeError("a profile is already active")
        prof = _active = Profile(trace)
    swap: dict[int, tuple[Any, Any]] = {}
    event, listener = None, None
    try:
        try:
            from numba.core import event
            listener = _numba_listener(prof._compile)
            for kind in _CompileListener.KINDS:
                event.register(kind, listener)
        except Exception:  # numba missing or its event API changed: compile time then counts as run time
            event, listener = None, None
        for modname, names in PROFILED_OPS.items():
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                continue
            for name in names:
                fn = getattr(mod, name, None)
                if fn is not None and not getattr(fn, "_tapegrad_profiled", False):
                    swap[id(fn)] = (fn, _op_wrapper(name, fn))
        swap[id(_make_result)] = (_make_result, _counting_make_result)
        _rebind(swap)
        prof._live = True
        registry._hook = prof.kernel_hook
        _tensor._profiler = prof
        prof._t0 = time.perf_counter()
        yield prof
    finally:
        prof.wall_s = time.perf_counter() - prof._t0
        prof._live = False
        registry._hook = None
        _tensor._profiler = None
        # back to the originals everywhere, modules imported during the profile included
        _rebind({id(new): (new, old) for old, new in swap.values()})
        if event is not None and listener is not None:
            for kind in _CompileListener.KINDS:
                try:
                    event.unregister(kind, listener)
                except Exception:
                    pass
        _active = None


def _numba_listener(target: _CompileListener):
    """A numba event Listener feeding ``target`` (built here so numba is imported only when profiling)."""
    from numba.core import event

    class CompileListener(event.Listener):
        def on_start(self, ev):
            target.notify(ev)

        def on_end(self, ev):
            target.notify(ev)

    return CompileListener()
