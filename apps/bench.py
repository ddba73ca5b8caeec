"""Benchmarks: tapegrad's kernels and layers against the installed peers, on the same inputs.

    python -m tapegrad bench [--quick] [--json FILE] [--filter SUBSTR] [--data-dir DIR] [--list]
                             [--reps N] [--gap SECONDS] [--time-limit SECONDS]

Every case runs tapegrad and each peer (scipy, torch, torch_geometric) in this one process, on
the same arrays, interleaved (ours, peer, ours, peer, ...) for several repetitions after a warm-up,
and prints the median time of each and the ratio peer / ours: above 1 means tapegrad is faster. A
sample of a fast call loops over it enough times to last a few milliseconds; the garbage collector
is paused while a sample runs. A peer that is not installed is skipped with a line that says so; so
is a case whose tapegrad piece is missing (``skipped: <reason>``).

Interleaving has a trap: a library's idle worker threads keep spinning for a while after a call and
slow down whoever runs next. OpenBLAS's spin for about 0.1 s (torch.nn.LSTM timed right after
tapegrad's LSTM ran 2x slower), so the cases whose tapegrad side calls numpy's BLAS (LSTM, RNN, GCN)
idle BLAS_GAP_S before every sample; ``--gap`` sets the idle time of every case.

Threads: both sides use every core. numba's default is all cores; torch's is set explicitly with
``torch.set_num_threads(os.cpu_count())``. scipy.sparse's matrix products are single-threaded.
torch and numba's OpenMP layer load libgomp under one soname (torch ships its own copy), so the copy
loaded first serves both: torch is imported before numba starts its threads, because with the
system's copy first torch.nn.RNN ran 100x slower on a 2-core machine. Loaded that way, libgomp keeps
its default (spinning) wait policy, where a process that only uses tapegrad gets the bounded spin
``tapegrad.kernels.cpu`` sets (``GOMP_SPINCOUNT=10000``).

Cases (CPU): SpMM forward (A X) and backward (A^T dY through the CSR's cached transpose, as the engine
does it; the peers get the same transpose, precomputed) on PubMed and R-MAT graphs of 2^16, 2^18 and
2^20 nodes at widths 16, 64, 256, against scipy.sparse and torch.sparse.mm; gcn_norm against
torch_geometric's; LSTM and RNN training steps and inference against torch.nn; a GCN training epoch
on Cora against torch_geometric; the tape's cost per op against torch autograd; ``import`` time; the
first-call time of a fresh process with a warm JIT cache; and the bandwidth SpMM reaches. The GPU
benchmarks are ``python -m tapegrad gpubench`` (:mod:`tapegrad.apps.gpu_bench`). Benchmarks are not
tests: nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

# (T, B, I, H) of the recurrent cases: sequence length, batch, input width, hidden width.
RNN_SIZES = ((50, 64, 128, 256), (100, 32, 64, 128))
RNN_SIZES_QUICK = ((10, 8, 16, 32),)
RMAT_SCALES = (16, 18, 20)
RMAT_SCALES_QUICK = (12,)
SPMM_WIDTHS = (16, 64, 256)
SPMM_WIDTHS_QUICK = (16, 64)
BANDWIDTH_WIDTH = 64
TAPE_OPS = 100
# OpenBLAS's idle worker threads spin for about 2^28 cycles (~0.1 s) after a call. Timed right after
# tapegrad's LSTM (numpy matmuls), torch.nn.LSTM ran 2x slower on 2 cores; after this much idle time it
# runs as fast as alone. Used for the cases whose tapegrad side calls BLAS.
BLAS_GAP_S = 0.12
BLAS_MAX_REPS = 20


class Skip(Exception):
    """A case or a peer that cannot run here; the message says why."""


# ---- settings ------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    quick: bool
    data_dir: Path | None
    filter: str | None
    budget_s: float        # target time of the measured repetitions of one case, all implementations
    min_reps: int
    max_reps: int
    sample_s: float        # a sample of a fast call loops until it lasts about this long
    proc_reps: int         # repetitions of the import case (fresh interpreters)
    first_call_reps: int   # repetitions of the first-call case (fresh processes, seconds each)
    deadline: float = math.inf  # time.perf_counter() after which the remaining cases are skipped
    gap_s: float | None = None  # idle time before each sample (--gap); None: BLAS_GAP_S for BLAS cases

    @classmethod
    def make(cls, quick: bool, data_dir: Path | None, filt: str | None, reps: int | None) -> "Settings":
        if quick:
            s = cls(quick, data_dir, filt, budget_s=0.15, min_reps=3, max_reps=5, sample_s=1e-3, proc_reps=1,
                    first_call_reps=1)
        else:
            s = cls(quick, data_dir, filt, budget_s=2.0, min_reps=5, max_reps=40, sample_s=5e-3, proc_reps=5,
                    first_call_reps=3)
        if reps is not None:
            s.min_reps = s.max_reps = s.proc_reps = s.first_call_reps = reps
        return s


def default_data_dir() -> Path | None:
    env = os.environ.get("TAPEGRAD_DATA")
    if env:
        return Path(env)
    d = (REPO_ROOT / ".." / "shared" / "data").resolve()
    return d if d.is_dir() else None


# ---- timing --------------------------------------------------------------------------------------------------
def _whole(fn: Callable[[], Any]) -> Callable[[int], dict]:
    """A timed body: ``number`` calls of fn, timed as one phase."""
    def run(number: int) -> dict:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return {"": time.perf_counter() - t0}
    return run


@dataclass
class Timing:
    """Medians (seconds per call) of one implementation, per phase ('' when the call is one phase)."""
    median: dict
    reps: int
    number: int
    samples: dict


def interleaved(bodies: dict, s: Settings, warmup: int = 1, gap_s: float = 0.0,
                max_reps: int | None = None) -> dict[str, Timing]:
    """Time each body (``number -> {phase: seconds}``), interleaved: rep 1 of each, rep 2 of each, ...

    After ``warmup`` calls each (JIT compilation, caches, allocator), a timed call estimates each
    body's cost (the last warm-up call when it took over 0.2 s); that sets how many calls make a sample (``sample_s``) and how many repetitions fit
    in the case's budget (between ``min_reps`` and ``max_reps``). ``gap_s`` of idle time precedes every
    sample.
    """
    max_reps = s.max_reps if max_reps is None else min(max_reps, s.max_reps)
    est = {}
    for name, body in bodies.items():
        for _ in range(warmup):
            t = sum(body(1).values())
        # A slow call is its own estimate; a fast one gets a clean call (the first may have loaded code).
        est[name] = t if warmup and t > 0.2 else sum(body(1).values())
        est[name] = max(est[name], 1e-7)
    number = {k: max(1, min(100_000, int(s.sample_s / t))) for k, t in est.items()}
    round_s = sum(est[k] * number[k] for k in bodies)
    if s.min_reps == s.max_reps:  # --reps
        reps = s.min_reps
    else:  # slow cases (a round over a second) get at least 3 repetitions rather than min_reps
        floor = s.min_reps if round_s < 1.0 else min(3, s.min_reps)
        reps = int(min(max_reps, max(floor, s.budget_s / round_s)))
    samples: dict = {k: {} for k in bodies}
    gc_was_on = gc.isenabled()
    try:
        for _ in range(reps):
            for name, body in bodies.items():
                if gap_s:
                    time.sleep(gap_s)
                gc.disable()
                try:
                    t = body(number[name])
                finally:
                    if gc_was_on:
                        gc.enable()
                for phase, sec in t.items():
                    samples[name].setdefault(phase, []).append(sec / number[name])
            gc.collect()
    finally:
        if gc_was_on:
            gc.enable()
    return {k: Timing({ph: float(np.median(v)) for ph, v in samples[k].items()}, reps, number[k], samples[k])
            for k in bodies}


# ---- results and printing ----------------------------------------------------------------------------------------
@dataclass
class Row:
    impl: str
    seconds: float | None = None
    ours: bool = False
    skipped: str | None = None
    reps: int = 0
    unit: str = "time"     # "time", or "GB/s" for a bandwidth row (then ``value`` holds it)
    value: float | None = None
    samples: list | None = None  # seconds per call of every repetition, in the order run


@dataclass
class Case:
    name: str
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    params: dict = field(default_factory=dict)
    wall_s: float | None = None  # how long the case took to run, set by Bench.run_case

    def ours_seconds(self) -> float | None:
        for r in self.rows:
            if r.ours and r.seconds is not None:
                return r.seconds
        return None

    def to_json(self) -> dict:
        base = self.ours_seconds()
        rows = []
        for r in self.rows:
            d = {"impl": r.impl, "ours": r.ours}
            if r.skipped is not None:
                d["skipped"] = r.skipped
            elif r.unit == "time":
                d["median_s"] = r.seconds
                d["reps"] = r.reps
                if r.samples is not None:
                    d["samples_s"] = r.samples
                if not r.ours and base and r.seconds:
                    d["ratio_peer_over_ours"] = r.seconds / base
            else:
                d[r.unit] = r.value
            rows.append(d)
        out = {"case": self.name, "params": self.params, "rows": rows, "notes": self.notes, "wall_s": self.wall_s}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.error:
            out["error"] = self.error
        return out


def fmt_time(sec: float | None) -> str:
    if sec is None:
        return "-"
    if sec < 1e-3:
        return f"{sec * 1e6:8.2f} us"
    if sec < 1.0:
        return f"{sec * 1e3:8.3f} ms"
    return f"{sec:8.3f} s "


W_CASE, W_IMPL, W_TIME, W_RATIO = 34, 40, 12, 10
HEADER = f"{'case':<{W_CASE}} {'implementation':<{W_IMPL}} {'median':>{W_TIME}} {'peer/ours':>{W_RATIO}}  reps"


def print_case(case: Case, out=None) -> None:
    out = out or sys.stdout
    label = case.name
    if case.skipped is not None or case.error is not None:
        what = f"skipped: {case.skipped}" if case.skipped is not None else f"error: {case.error}"
        print(f"{label:<{W_CASE}} {what}", file=out)
        return
    base = case.ours_seconds()
    for r in case.rows:
        if r.skipped is not None:
            line = f"{label:<{W_CASE}} {r.impl:<{W_IMPL}} skipped: {r.skipped}"
        elif r.unit != "time":
            line = f"{label:<{W_CASE}} {r.impl:<{W_IMPL}} {r.value:>{W_TIME - 5}.2f} {r.unit}"
        else:
            ratio = ""
            if not r.ours and base and r.seconds:
                ratio = f"{r.seconds / base:.2f}x"
            line = (f"{label:<{W_CASE}} {r.impl:<{W_IMPL}} {fmt_time(r.seconds):>{W_TIME}} "
                    f"{ratio:>{W_RATIO}}  {r.reps}")
        print(line.rstrip(), file=out)
        label = ""
    for note in case.notes:
        print(f"{'':<{W_CASE}} ({note})", file=out)
    out.flush()


# ---- the runner ------------------------------------------------------------------------------------------------
class Bench:
    """Runs the cases that pass the filter, prints each as it finishes, keeps all results."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.cases: list[Case] = []
        self._graphs: dict = {}
        self._peers: dict = {}
        self.machine_bw: dict | None = None
        self.spmm_timings: dict = {}  # (graph, direction, width) -> tapegrad's Timing, for the bandwidth case

    def selected(self, name: str) -> bool:
        return self.s.filter is None or self.s.filter in name

    def out_of_time(self) -> bool:
        """Past --time-limit, once at least one case has produced timings (a smoke check needs one)."""
        return time.perf_counter() > self.s.deadline and any(c.rows for c in self.cases)

    def add(self, case: Case) -> Case:
        self.cases.append(case)
        print_case(case)
        return case

    def skip(self, name: str, reason: str) -> None:
        if self.selected(name):
            self.add(Case(name, skipped=reason))

    # ---- peers ----------------------------------------------------------------------------------------------
    def peer(self, name: str) -> Any:
        """The peer module, or raise Skip saying why it is unavailable (remembered)."""
        if name not in self._peers:
            try:
                if name == "torch":
                    import torch
                    torch.set_num_threads(os.cpu_count() or 1)
                    mod = torch
                elif name == "torch_geometric":
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        import torch_geometric
                        from torch_geometric.nn import GCNConv  # noqa: F401
                    self.peer("torch")
                    mod = torch_geometric
                elif name == "scipy":
                    import scipy.sparse
                    mod = scipy.sparse
                else:
                    raise ValueError(name)
                self._peers[name] = mod
            except Skip:
                raise
            except Exception as e:  # ImportError, or a broken install
                self._peers[name] = Skip(f"{name} is not installed ({type(e).__name__}: {e})"
                                         if isinstance(e, ImportError) else f"{name} is unusable ({e})")
        got = self._peers[name]
        if isinstance(got, Skip):
            raise got
        return got

    def peer_or_none(self, name: str) -> tuple[Any, str | None]:
        try:
            return self.peer(name), None
        except Skip as e:
            return None, str(e)

    # ---- data ----------------------------------------------------------------------------------------------------
    def graph(self, name: str):
        """A tapegrad.CSR by name: 'pubmed' (from --data-dir), 'rmatS' (R-MAT with 2^S nodes) or 'rmatSrcm'
        (that graph relabelled by reverse Cuthill-McKee, tapegrad.reorder_nodes)."""
        if name not in self._graphs:
            try:
                if name == "pubmed":
                    self._graphs[name] = self._load_structure("pubmed.npz")
                elif name.startswith("rmat") and name.endswith("rcm"):
                    from ..layers.graph import reorder_nodes
                    t0 = time.perf_counter()
                    self._graphs[name] = reorder_nodes(self.graph(name[:-3]), "rcm")[0]
                    print(f"{'':<{W_CASE}} (reordered {name[:-3]} by reverse Cuthill-McKee in "
                          f"{time.perf_counter() - t0:.1f} s)", flush=True)
                elif name.startswith("rmat"):
                    from .rmat import rmat
                    t0 = time.perf_counter()
                    A = rmat(int(name[4:]), edge_factor=16)
                    self._graphs[name] = A
                    print(f"{'':<{W_CASE}} (built R-MAT 2^{name[4:]}: {A.nnz} stored entries, directed, "
                          f"in {time.perf_counter() - t0:.1f} s)", flush=True)
                else:
                    raise ValueError(name)
            except Skip as e:
                self._graphs[name] = e
        got = self._graphs[name]
        if isinstance(got, Skip):
            raise got
        return got

    def _load_structure(self, file: str):
        from ..kernels.csr import CSR
        if self.s.data_dir is None:
            raise Skip(f"no data directory (pass --data-dir or set TAPEGRAD_DATA) for {file}")
        path = self.s.data_dir / file
        if not path.is_file():
            raise Skip(f"{path} not found (pass --data-dir or set TAPEGRAD_DATA)")
        with np.load(path, allow_pickle=False) as d:
            return CSR(d["adj_indptr"], d["adj_indices"])

    def cora_path(self) -> Path:
        for d in (self.s.data_dir, REPO_ROOT / "datasets"):
            if d is not None and (d / "cora.npz").is_file():
                return d / "cora.npz"
        raise Skip("cora.npz not found in --data-dir nor in tapegrad/datasets")

    def run_case(self, name: str, fn: Callable[[Case], None], **params: Any) -> None:
        """Run one case if the filter selects it; turn Skip into 'skipped', other errors into 'error'."""
        if not self.selected(name):
            return
        case = Case(name, params=params)
        if self.out_of_time():
            case.skipped = "--time-limit reached"
            self.add(case)
            return
        t0 = time.perf_counter()
        try:
            fn(case)
        except Skip as e:
            case.skipped = str(e)
        except Exception as e:  # a broken piece must not stop the other cases
            case.error = f"{type(e).__name__}: {e}"
        case.wall_s = time.perf_counter() - t0
        self.add(case)

    def measure(self, case: Case, ours: dict, peers: dict, skipped_peers: dict | None = None,
                warmup: int = 1, blas: bool = False) -> dict[str, Timing]:
        """Time ``ours`` and ``peers`` ({label: body}) interleaved, and append one row per label.

        ``blas``: the bodies call a BLAS with spinning worker threads (tapegrad's dense products are
        numpy's OpenBLAS); then each sample waits BLAS_GAP_S first (unless --gap says otherwise).
        """
        bodies = {**ours, **peers}
        gap = self.s.gap_s
        if gap is None:
            gap = BLAS_GAP_S if blas and not self.s.quick else 0.0
        if gap:
            case.notes.append(f"{gap:g} s idle before every sample (spinning BLAS threads of the previous "
                              "library go to sleep)")
        t = interleaved(bodies, self.s, warmup=min(warmup, 1) if self.s.quick else warmup, gap_s=gap,
                        max_reps=BLAS_MAX_REPS if gap else None)
        for label in {**ours, **peers}:
            case.rows.append(Row(label, t[label].median.get(""), ours=label in ours, reps=t[label].reps,
                                 samples=t[label].samples.get("")))
        for label, why in (skipped_peers or {}).items():
            case.rows.append(Row(label, skipped=why))
        return t


# ---- helpers -------------------------------------------------------------------------------------------------------
def _import_piece(module: str, what: str) -> Any:
    """Import a tapegrad module, turning its absence (not written yet, or broken) into Skip."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Skip(f"{what} is not available ({module}: {e})") from None


def _need_kernels(*names: str) -> None:
    """Raise Skip unless the CPU implementations of these kernels exist (some may not be written yet)."""
    from ..kernels import registry
    for name in names:
        try:
            registry.get(name, "cpu")
        except (ImportError, AttributeError) as e:
            raise Skip(f"kernel {name!r} is not available on the CPU yet ({type(e).__name__}: {e})") from None


def _check_close(case: Case, label: str, got: np.ndarray, want: np.ndarray, rtol: float = 1e-3,
                 atol: float = 1e-4) -> None:
    """A note, not an assertion: flags an implementation whose result disagrees with the reference."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
        err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("nan")
        case.notes.append(f"WARNING: {label} disagrees with the reference (max |diff| {err:.3g}, "
                          f"shapes {got.shape} vs {want.shape})")


def _torch_csr(torch, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple):
    with warnings.catch_warnings():  # the "sparse CSR support is in beta" notice
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(torch.from_numpy(indptr.astype(np.int64)),
                                       torch.from_numpy(indices.astype(np.int64)),
                                       torch.from_numpy(data), size=shape)


# ---- SpMM -------------------------------------------------------------------------------------------------------------
def _spmm_case_grid(quick: bool) -> list[tuple[str, list[tuple[str, int, str]]]]:
    """(graph, [(direction, width, case name)]): every graph at every width both ways, and the largest
    R-MAT graph relabelled for locality (reported, forward at one width: reordering is an option the
    user takes, the other cases time graphs as given)."""
    scales = RMAT_SCALES_QUICK if quick else RMAT_SCALES
    widths = SPMM_WIDTHS_QUICK if quick else SPMM_WIDTHS
    grid = [(g, [(d, w, f"spmm/{d}/{g}/F{w}") for w in widths for d in ("fwd", "bwd")])
            for g in ["pubmed"] + [f"rmat{k}" for k in scales]]
    g = f"rmat{scales[-1]}rcm"
    grid.append((g, [("fwd", BANDWIDTH_WIDTH, f"spmm/fwd/{g}/F{BANDWIDTH_WIDTH}")]))
    return grid


def spmm_cases(b: Bench) -> None:
    for g, names in _spmm_case_grid(b.s.quick):
        if not any(b.selected(n) for _, _, n in names):
            continue
        try:
            if b.out_of_time():
                raise Skip("--time-limit reached")
            _need_kernels("spmm", "csr_transpose")
            A = b.graph(g)
            prep = _spmm_inputs(b, A)
        except Skip as e:
            for _, _, n in names:
                b.skip(n, str(e))
            continue
        except Exception as e:  # the shared inputs failed: every case of this graph fails alike
            for _, _, n in names:
                if b.selected(n):
                    b.add(Case(n, error=f"preparing the inputs: {type(e).__name__}: {e}"))
            continue
        for d, w, n in names:
            b.run_case(n, lambda case, d=d, w=w: _spmm_case(b, case, prep, d, w),
                       graph=g, n=A.shape[0], nnz=A.nnz, width=w, direction=d, dtype="float32")


def _spmm_inputs(b: Bench, A) -> dict:
    """A with random float32 values, its cached transpose, and the peers' copies of both."""
    from ..kernels.csr import CSR
    rng = np.random.default_rng(0)
    Aw = CSR(A.indptr, A.indices, rng.random(A.nnz, dtype=np.float32), A.shape)
    At = Aw.transpose()  # computed once and cached, as the engine's spmm backward uses it
    prep = {"A": Aw, "At": At, "peers": {}, "skipped": {}}
    sp, why = b.peer_or_none("scipy")
    if sp is not None:
        prep["peers"]["scipy"] = (sp.csr_matrix((Aw.data, Aw.indices, Aw.indptr), shape=Aw.shape),
                                  sp.csr_matrix((At.data, At.indices, At.indptr), shape=At.shape))
    else:
        prep["skipped"]["scipy.sparse csr @ dense"] = why
    torch, why = b.peer_or_none("torch")
    if torch is not None:
        prep["peers"]["torch"] = (_torch_csr(torch, Aw.indptr, Aw.indices, Aw.data, Aw.shape),
                                  _torch_csr(torch, At.indptr, At.indices, At.data, At.shape))
    else:
        prep["skipped"]["torch.sparse.mm (CSR)"] = why
    return prep


def _spmm_case(b: Bench, case: Case, prep: dict, direction: str, width: int) -> None:
    from .. import kernels
    M = prep["A"] if direction == "fwd" else prep["At"]
    k = 0 if direction == "fwd" else 1
    rng = np.random.default_rng(1)
    x = rng.standard_normal((M.shape[1], width), dtype=np.float32)
    ours = {"tapegrad kernels.spmm": lambda: kernels.spmm(M.indptr, M.indices, M.data, x)}
    peers = {}
    if "scipy" in prep["peers"]:
        m = prep["peers"]["scipy"][k]
        peers["scipy.sparse csr @ dense"] = lambda: m @ x
    if "torch" in prep["peers"]:
        import torch
        tm, tx = prep["peers"]["torch"][k], torch.from_numpy(x)
        peers["torch.sparse.mm (CSR)"] = lambda: torch.sparse.mm(tm, tx)
    # Check a few hundred rows against scipy (or a NumPy reference) before timing.
    rows = np.unique(rng.integers(0, M.shape[0], size=min(M.shape[0], 300)))
    ref = _rows_reference(M, x, rows)
    _check_close(case, "tapegrad", kernels.spmm(M.indptr, M.indices, M.data, x)[rows], ref)
    if "torch" in prep["peers"]:
        _check_close(case, "torch", peers["torch.sparse.mm (CSR)"]().numpy()[rows], ref)
    bodies = {k2: _whole(v) for k2, v in ours.items()}
    pbodies = {k2: _whole(v) for k2, v in peers.items()}
    t = b.measure(case, bodies, pbodies, prep["skipped"])
    b.spmm_timings[(case.params["graph"], direction, width)] = t["tapegrad kernels.spmm"]
    if direction == "bwd":
        case.notes.append("A^T dY with A^T = A.transpose(), cached; the peers' A^T is precomputed alike")


def _rows_reference(M, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    out = np.zeros((len(rows), x.shape[1]), dtype=np.float64)
    for r, i in enumerate(rows):
        lo, hi = M.indptr[i], M.indptr[i + 1]
        out[r] = M.data[lo:hi].astype(np.float64) @ x[M.indices[lo:hi]].astype(np.float64)
    return out


# ---- bandwidth ------------------------------------------------------------------------------------------------------
def machine_bandwidth(b: Bench) -> dict:
    """Streaming bandwidth (GB/s, STREAM counting: copy moves 2 arrays, triad 3) of a large array, once."""
    if b.machine_bw is None:
        n = (1 << 22) if b.s.quick else (1 << 26)  # float32: 16 MB / 256 MB per array
        a = np.ones(n, dtype=np.float32)
        c = np.full(n, 2.0, dtype=np.float32)
        dst = np.empty_like(a)
        nbytes = a.nbytes
        reps = 3 if b.s.quick else 7

        def best(fn, moved):
            fn()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return moved / min(ts) / 1e9

        # numpy's triad takes two passes (dst = s c; dst += a): 5 arrays moved
        def triad():
            np.multiply(c, np.float32(3.0), out=dst)
            np.add(dst, a, out=dst)
        bw = {"numpy copy (1 thread)": best(lambda: np.copyto(dst, a), 2 * nbytes),
              "numpy triad (1 thread, 2 passes)": best(triad, 5 * nbytes)}
        try:
            par = _parallel_triad()
            bw[f"numba triad ({_numba_threads()} threads)"] = best(lambda: par(dst, a, c, np.float32(3.0)),
                                                                    3 * nbytes)
            skipped = None
        except Exception as e:  # numba missing or broken: the numpy figures still stand
            skipped = f"numba triad skipped ({type(e).__name__}: {e})"
        b.machine_bw = {"array_bytes": nbytes, "GB_per_s": bw, "skipped": skipped}
    return b.machine_bw


def _numba_threads() -> int:
    import numba
    return numba.get_num_threads()


_PAR_TRIAD = None


def _parallel_triad():
    global _PAR_TRIAD
    if _PAR_TRIAD is None:
        import numba

        @numba.njit(parallel=True, cache=True)
        def triad(dst, a, c, s):
            for i in numba.prange(dst.shape[0]):
                dst[i] = a[i] + s * c[i]
        _PAR_TRIAD = triad
    return _PAR_TRIAD


def bandwidth_case(b: Bench) -> None:
    g = f"rmat{(RMAT_SCALES_QUICK if b.s.quick else RMAT_SCALES)[-1]}"
    name = f"bandwidth/spmm/{g}/F{BANDWIDTH_WIDTH}"

    def run(case: Case) -> None:
        from .. import kernels
        _need_kernels("spmm")
        A = b.graph(g)
        t = b.spmm_timings.get((g, "fwd", BANDWIDTH_WIDTH))  # the spmm case's own timing, when it ran
        if t is None:
            data = np.random.default_rng(0).random(A.nnz, dtype=np.float32)
            x = np.random.default_rng(1).standard_normal((A.shape[1], BANDWIDTH_WIDTH), dtype=np.float32)
            t = interleaved({"ours": _whole(lambda: kernels.spmm(A.indptr, A.indices, data, x))}, b.s)["ours"]
        else:
            case.notes.append(f"time from spmm/fwd/{g}/F{BANDWIDTH_WIDTH} above")
        sec = t.median[""]
        bw = machine_bandwidth(b)
        gather = A.nnz * BANDWIDTH_WIDTH * 4
        total = gather + A.nnz * (A.indices.itemsize + 4) + A.indptr.nbytes + A.shape[0] * BANDWIDTH_WIDTH * 4
        case.rows.append(Row("tapegrad kernels.spmm", sec, ours=True, reps=t.reps))
        case.rows.append(Row("achieved, gather bytes / time", unit="GB/s", value=gather / sec / 1e9))
        case.rows.append(Row("achieved, all bytes / time", unit="GB/s", value=total / sec / 1e9))
        for label, v in bw["GB_per_s"].items():
            case.rows.append(Row(f"machine: {label}", unit="GB/s", value=v))
        if bw["skipped"]:
            case.notes.append(bw["skipped"])
        peak = max(bw["GB_per_s"].values())
        case.notes.append(f"gather bound = nnz x F x 4 B = {gather / 1e6:.0f} MB of X rows read; at the best "
                          f"streaming rate ({peak:.1f} GB/s) it takes {fmt_time(gather / peak / 1e9).strip()}, "
                          f"so tapegrad runs at {100 * gather / peak / 1e9 / sec:.0f}% of the gather bound")
        case.notes.append("all bytes = gather + indices + values + indptr + output written once; rows of X "
                          "reused from cache count each time, so 'achieved' may exceed DRAM bandwidth")
        case.params.update(nnz=A.nnz, n=A.shape[0], width=BANDWIDTH_WIDTH, gather_bytes=gather,
                           all_bytes=total, machine_bandwidth=bw)

    b.run_case(name, run, graph=g)


# ---- gcn_norm ------------------------------------------------------------------------------------------------------
def gcn_norm_cases(b: Bench) -> None:
    graphs = ["pubmed"] + [f"rmat{k}" for k in (RMAT_SCALES_QUICK if b.s.quick else RMAT_SCALES[1:])]
    for g in graphs:
        name = f"gcn_norm/{g}"
        if not b.selected(name):
            continue

        def run(case: Case, g=g) -> None:
            import tapegrad as tg
            _need_kernels("gcn_norm")
            A = b.graph(g)
            case.params.update(n=A.shape[0], nnz=A.nnz)
            ours = {"tapegrad gcn_norm(CSR)": _whole(lambda: tg.gcn_norm(A))}
            peers, skipped = {}, {}
            pyg, why = b.peer_or_none("torch_geometric")
            if pyg is not None:
                import torch
                from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm
                rows = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr))
                # CSR rows are targets (row i gathers from its columns); PyG's edge_index is (source, target)
                ei = torch.from_numpy(np.stack([A.indices.astype(np.int64), rows]))
                n = A.shape[0]
                peers["torch_geometric gcn_norm(edge_index)"] = _whole(lambda: pyg_gcn_norm(ei, None, n))
                # Same matrix? Compare P's row sums (order-free) on both sides.
                P = tg.gcn_norm(A)
                ei2, w2 = pyg_gcn_norm(ei, None, n)
                ours_rs = np.add.reduceat(P.data.astype(np.float64), P.indptr[:-1]) if P.nnz else np.zeros(n)
                ours_rs[np.diff(P.indptr) == 0] = 0
                theirs_rs = np.bincount(ei2[1].numpy(), weights=w2.double().numpy(), minlength=n)
                _check_close(case, "torch_geometric row sums", theirs_rs, ours_rs, rtol=1e-4, atol=1e-5)
            else:
                skipped["torch_geometric gcn_norm(edge_index)"] = why
            b.measure(case, ours, peers, skipped)
            case.notes.append("PyG takes edge_index [2, E] (COO) and returns COO; tapegrad takes and returns CSR")

        b.run_case(name, run, graph=g)


# ---- LSTM / RNN ---------------------------------------------------------------------------------------------------
def rnn_cases(b: Bench) -> None:
    sizes = RNN_SIZES_QUICK if b.s.quick else RNN_SIZES
    for kind in ("lstm", "rnn"):
        for (T, B, I, H) in sizes:
            for mode in ("train", "infer"):
                name = f"{kind}/{mode}/T{T}_B{B}_I{I}_H{H}"
                b.run_case(name, lambda case, kind=kind, mode=mode, size=(T, B, I, H):
                           _rnn_case(b, case, kind, mode, size), T=T, B=B, I=I, H=H, mode=mode)


def _rnn_case(b: Bench, case: Case, kind: str, mode: str, size: tuple) -> None:
    import tapegrad as tg
    rnn = _import_piece("tapegrad.layers.rnn", "layers/rnn.py")
    _need_kernels(*(("lstm_cell_fwd", "lstm_cell_bwd") if kind == "lstm" else ("rnn_cell_fwd", "rnn_cell_bwd")))
    T, B, I, H = size
    cls = rnn.LSTM if kind == "lstm" else rnn.RNN
    model = cls(I, H)
    x_np = np.random.default_rng(0).standard_normal((T, B, I), dtype=np.float32)
    x = tg.tensor(x_np)

    def ours_train():
        model.zero_grad()
        out, _ = model(x)
        out.sum().backward()

    def ours_infer():
        with tg.no_grad():
            model(x)

    ours = {f"tapegrad {cls.__name__}": _whole(ours_train if mode == "train" else ours_infer)}
    peers, skipped = {}, {}
    torch, why = b.peer_or_none("torch")
    peer_label = f"torch.nn.{cls.__name__}"
    if torch is not None:
        tmodel = torch.nn.LSTM(I, H) if kind == "lstm" else torch.nn.RNN(I, H)
        tx = torch.from_numpy(x_np)
        # Same weights on both sides, so the outputs can be compared before timing.
        try:
            model.load_state_dict({k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()})
            with tg.no_grad():
                got = model(x)[0].numpy()
            with torch.no_grad():
                want = tmodel(tx)[0].cpu().numpy()
            _check_close(case, f"tapegrad {cls.__name__} output", got, want, rtol=1e-3, atol=1e-4)
        except Exception as e:
            case.notes.append(f"weights not copied from torch, outputs not compared ({type(e).__name__}: {e})")

        def torch_train():
            tmodel.zero_grad(set_to_none=True)
            out, _ = tmodel(tx)
            out.sum().backward()

        def torch_infer():
            with torch.no_grad():
                tmodel(tx)
        peers[peer_label] = _whole(torch_train if mode == "train" else torch_infer)
    else:
        skipped[peer_label] = why
    b.measure(case, ours, peers, skipped, blas=True)
    case.notes.append("training step = forward + backward of sum(output), no optimiser" if mode == "train"
                      else "inference = forward under no_grad")


# ---- GCN epoch on Cora --------------------------------------------------------------------------------------------
def _tg_gcn_setup(data: Any):
    """The model and optimiser of apps/gcn.py: 2 layers, 16 hidden, dropout 0.5, cached P, Adam lr 0.01
    with weight decay 5e-4 on the first layer only."""
    from ..layers.gcn import GCN
    from ..layers.optim import Adam
    model = GCN(data.num_features, 16, data.num_classes, num_layers=2, dropout=0.5, cached=True)
    first, second = model.convs[0], model.convs[1]
    opt = Adam([dict(params=list(first.parameters()), weight_decay=5e-4),
                dict(params=list(second.parameters()), weight_decay=0.0)], lr=0.01)
    return model, opt


def _tg_gcn_epoch(model: Any, opt: Any, data: Any, x: Any) -> None:
    from ..engine.nn import cross_entropy
    model.train()
    opt.zero_grad()
    out = model(x, data.A)
    loss = cross_entropy(out, data.y, data.train_idx)
    loss.backward()
    opt.step()


# The PyG model of torch_geometric's examples/gcn.py. Kept as source so the first-call subprocess can run
# it without importing tapegrad.
PYG_GCN_SRC = r'''
import torch
import torch.nn.functional as F
from torch_geometric.nn import GCNConv


class PygGCN(torch.nn.Module):
    def __init__(self, num_features, hidden, num_classes, sparse_x=False):
        super().__init__()
        self.conv1 = GCNConv(num_features, hidden, cached=True)
        self.conv2 = GCNConv(hidden, num_classes, cached=True)
        self.sparse_x = sparse_x

    def forward(self, x, edge_index):
        if self.sparse_x:  # dropout on the stored entries of a CSR feature matrix
            x = torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                        F.dropout(x.values(), p=0.5, training=self.training), size=x.shape)
        else:
            x = F.dropout(x, p=0.5, training=self.training)
        x = self.conv1(x, edge_index).relu()
        x = F.dropout(x, p=0.5, training=self.training)
        return self.conv2(x, edge_index)


def pyg_setup(num_features, num_classes, sparse_x=False):
    model = PygGCN(num_features, 16, num_classes, sparse_x)
    opt = torch.optim.Adam([dict(params=model.conv1.parameters(), weight_decay=5e-4),
                            dict(params=model.conv2.parameters(), weight_decay=0)], lr=0.01)
    return model, opt


def pyg_epoch(model, opt, x, edge_index, y, train_idx):
    model.train()
    opt.zero_grad()
    out = model(x, edge_index)
    loss = F.cross_entropy(out[train_idx], y[train_idx])
    loss.backward()
    opt.step()
'''


def _pyg_namespace() -> dict:
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(PYG_GCN_SRC, "<bench: PyG GCN>", "exec"), ns)
    return ns


def gcn_case(b: Bench) -> None:
    def run(case: Case) -> None:
        datasets = _import_piece("tapegrad.datasets", "datasets")
        _import_piece("tapegrad.layers.gcn", "layers/gcn.py")
        _need_kernels("spmm", "csr_transpose", "gcn_norm", "sddmm")
        if not hasattr(datasets, "load_planetoid"):
            raise Skip("tapegrad.datasets.load_planetoid is not available yet")
        data = datasets.load_planetoid(str(b.cora_path()))
        x = datasets.row_normalize(data.x) if hasattr(datasets, "row_normalize") else data.x
        model, opt = _tg_gcn_setup(data)
        case.params.update(n=data.num_nodes, nnz=data.num_edges, features=data.num_features,
                           feature_nnz=x.nnz, classes=data.num_classes, hidden=16)
        ours = {"tapegrad GCN (CSR features)": _whole(lambda: _tg_gcn_epoch(model, opt, data, x))}
        peers, skipped = {}, {}
        pyg, why = b.peer_or_none("torch_geometric")
        if pyg is not None:
            import torch
            ns = _pyg_namespace()
            rows = np.repeat(np.arange(data.num_nodes, dtype=np.int64), np.diff(data.A.indptr))
            # PyG's edge_index is (source, target); A is symmetric, so (row, col) serves.
            ei = torch.from_numpy(np.stack([data.A.indices.astype(np.int64), rows]))
            y = torch.from_numpy(data.y)
            tidx = torch.from_numpy(data.train_idx)
            xd = torch.from_numpy(x.toarray().astype(np.float32))
            xs = _torch_csr(torch, x.indptr, x.indices, x.data.astype(np.float32), x.shape)
            m1, o1 = ns["pyg_setup"](data.num_features, data.num_classes)
            m2, o2 = ns["pyg_setup"](data.num_features, data.num_classes, sparse_x=True)
            ep = ns["pyg_epoch"]
            peers["torch_geometric GCNConv (dense x)"] = _whole(lambda: ep(m1, o1, xd, ei, y, tidx))
            peers["torch_geometric GCNConv (sparse CSR x)"] = _whole(lambda: ep(m2, o2, xs, ei, y, tidx))
        else:
            skipped["torch_geometric GCNConv"] = why
        b.measure(case, ours, peers, skipped, warmup=3, blas=True)
        case.notes.append("epoch = forward, backward, Adam step; P cached on both sides (cached=True, "
                          "as in apps/gcn.py and PyG's examples/gcn.py); row-normalised features")

    b.run_case("gcn/epoch/cora", run, dataset="cora")


# ---- tape overhead ----------------------------------------------------------------------------------------------------
def tape_case(b: Bench) -> None:
    def run() -> None:
        import tapegrad as tg
        half = TAPE_OPS // 2

        def chain(tensor: Callable) -> Callable[[int], dict]:
            """A body timing ``number`` chains of mul/add on 1-element tensors made by ``tensor``."""
            def body(number: int) -> dict:
                x = tensor([1.0], requires_grad=True)
                c, d = tensor([1.0001]), tensor([0.0001])
                fwd = bwd = 0.0
                for _ in range(number):
                    t0 = time.perf_counter()
                    y = x
                    for _ in range(half):
                        y = y * c
                        y = y + d
                    t1 = time.perf_counter()
                    y.backward()
                    t2 = time.perf_counter()
                    fwd += t1 - t0
                    bwd += t2 - t1
                    x.grad = None
                return {"fwd": fwd, "bwd": bwd}
            return body

        bodies = {"tapegrad": chain(tg.tensor)}
        torch, why = b.peer_or_none("torch")
        if torch is not None:
            bodies["torch autograd"] = chain(torch.tensor)
        t = interleaved(bodies, b.s, warmup=3, gap_s=b.s.gap_s or 0.0)
        for phase in ("fwd", "bwd"):
            sub = Case(f"tape/{phase}_per_op", params={"ops": TAPE_OPS, "phase": phase})
            sub.rows.append(Row("tapegrad", t["tapegrad"].median[phase] / TAPE_OPS, ours=True,
                                reps=t["tapegrad"].reps))
            if "torch autograd" in t:
                sub.rows.append(Row("torch autograd", t["torch autograd"].median[phase] / TAPE_OPS,
                                    reps=t["torch autograd"].reps))
            else:
                sub.rows.append(Row("torch autograd", skipped=why))
            what = "forward (recording)" if phase == "fwd" else "backward walk"
            sub.notes.append(f"a chain of {TAPE_OPS} ops (mul, add alternating) on 1-element float32 tensors; "
                             f"time per op of the {what}")
            if b.selected(sub.name):
                b.add(sub)

    # One measurement feeds both cases (forward and backward per op).
    if b.selected("tape/fwd_per_op") or b.selected("tape/bwd_per_op"):
        try:
            if b.out_of_time():
                raise Skip("--time-limit reached")
            run()
        except Skip as e:
            b.add(Case("tape/per_op", skipped=str(e)))
        except Exception as e:
            b.add(Case("tape/per_op", error=f"{type(e).__name__}: {e}"))


# ---- subprocess cases: import time, first call with a warm JIT cache --------------------------------------------------
IMPORT_SRC = "import time; t0 = time.perf_counter(); import {mod}; print(repr(time.perf_counter() - t0))"

FIRST_CALL_OURS_SRC = r'''
import sys
import numpy as np
import tapegrad as tg
from tapegrad.datasets import load_planetoid, row_normalize
from tapegrad.layers.gcn import GCN
from tapegrad.optim import Adam
data = load_planetoid(sys.argv[1])
x = row_normalize(data.x)
model = GCN(data.num_features, 16, data.num_classes, num_layers=2, dropout=0.5, cached=True)
opt = Adam([dict(params=list(model.convs[0].parameters()), weight_decay=5e-4),
            dict(params=list(model.convs[1].parameters()), weight_decay=0.0)], lr=0.01)
model.train()
opt.zero_grad()
loss = tg.cross_entropy(model(x, data.A), data.y, data.train_idx)
loss.backward()
opt.step()
import time
print(repr(time.time()))
'''

FIRST_CALL_PYG_SRC = r'''
import sys
import warnings
warnings.simplefilter("ignore")
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[2]))
PYG_SRC
with np.load(sys.argv[1], allow_pickle=False) as d:
    indptr, indices = d["adj_indptr"], d["adj_indices"]
    xi, xj, xv, xs = d["x_indptr"], d["x_indices"], d["x_data"], d["x_shape"]
    y, train_idx = d["y"], d["train_idx"]
n = len(indptr) - 1
rows = np.repeat(np.arange(n), np.diff(indptr))
edge_index = torch.from_numpy(np.stack([indices.astype(np.int64), rows]))
x = np.zeros(tuple(xs), dtype=np.float32)
x[np.repeat(np.arange(xs[0]), np.diff(xi)), xj] = xv
x /= np.maximum(x.sum(1, keepdims=True), 1e-12)
x = torch.from_numpy(x)
model, opt = pyg_setup(x.shape[1], int(y.max()) + 1)
pyg_epoch(model, opt, x, edge_index, torch.from_numpy(y), torch.from_numpy(train_idx))
import time
print(repr(time.time()))
'''


def _child(src: str, args: Sequence[str] = (), timeout: float = 300.0) -> tuple[float, float]:
    """Run ``python -c src args``; returns (its last stdout line as a float, time.time() just before spawn)."""
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True, timeout=timeout,
                       cwd=tempfile.gettempdir())
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"subprocess failed (exit {p.returncode}): {tail}")
    return float(p.stdout.strip().splitlines()[-1]), t0


def _proc_measure(b: Bench, case: Case, ours: dict, peers: dict, skipped: dict, warm: bool = True,
                  reps: int | None = None) -> None:
    """Interleaved subprocess runs; each run returns seconds. A first untimed run of each warms caches."""
    every = {**ours, **peers}
    reps = b.s.proc_reps if reps is None else reps
    if warm:
        for fn in every.values():
            fn()
    times: dict = {k: [] for k in every}
    for _ in range(reps):
        for k, fn in every.items():
            times[k].append(fn())
    for k in every:
        case.rows.append(Row(k, float(np.median(times[k])), ours=k in ours, reps=reps, samples=times[k]))
    for k, why in skipped.items():
        case.rows.append(Row(k, skipped=why))


def import_case(b: Bench) -> None:
    def run(case: Case) -> None:
        def imp(mod):
            return lambda: _child(IMPORT_SRC.format(mod=mod))[0]
        ours = {"import tapegrad": imp("tapegrad")}
        peers, skipped = {}, {}
        for mod in ("torch", "torch_geometric"):
            _, why = b.peer_or_none(mod)
            if why is None and b.s.quick and mod == "torch_geometric":
                why = "not in --quick (slow to import)"
            if why is None:
                peers[f"import {mod}"] = imp(mod)
            else:
                skipped[f"import {mod}"] = why
        _proc_measure(b, case, ours, peers, skipped, warm=not b.s.quick)
        warm = "" if b.s.quick else " after one untimed run of each"
        case.notes.append("time of the import statement in a fresh interpreter (interpreter start excluded); "
                          f"median of {b.s.proc_reps}{warm}")

    b.run_case("import", run)


def first_call_case(b: Bench) -> None:
    def run(case: Case) -> None:
        if b.s.quick:
            raise Skip("not in --quick (several fresh processes)")
        datasets = _import_piece("tapegrad.datasets", "datasets")
        _import_piece("tapegrad.layers.gcn", "layers/gcn.py")
        for attr in ("load_planetoid", "row_normalize"):
            if not hasattr(datasets, attr):
                raise Skip(f"tapegrad.datasets.{attr} is not available yet")
        cora = str(b.cora_path())

        def ours():
            done, start = _child(FIRST_CALL_OURS_SRC, [cora])
            return done - start
        peers, skipped = {}, {}
        _, why = b.peer_or_none("torch_geometric")
        if why is None:
            src = FIRST_CALL_PYG_SRC.replace("PYG_SRC", PYG_GCN_SRC)

            def pyg():
                done, start = _child(src, [cora, str(os.cpu_count() or 1)])
                return done - start
            peers["torch_geometric (dense x)"] = pyg
        else:
            skipped["torch_geometric"] = why
        # The untimed first run of each populates numba's on-disk cache (and the OS file cache).
        _proc_measure(b, case, {"tapegrad": ours}, peers, skipped, reps=b.s.first_call_reps)
        case.notes.append("fresh process: spawn -> imports -> load Cora -> build model -> one training epoch "
                          "done; numba's cache populated by an earlier process")

    b.run_case("first_call/gcn_epoch/cora", run)


# ---- main ---------------------------------------------------------------------------------------------------------
CASE_GROUPS = (
    ("spmm", spmm_cases), ("bandwidth", bandwidth_case), ("gcn_norm", gcn_norm_cases), ("rnn", rnn_cases),
    ("gcn", gcn_case), ("tape", tape_case), ("import", import_case), ("first_call", first_call_case),
)


def case_names(quick: bool) -> list[str]:
    """Every case name (what ``--filter`` matches against)."""
    names = []
    scales = RMAT_SCALES_QUICK if quick else RMAT_SCALES
    names += [n for _, cases in _spmm_case_grid(quick) for _, _, n in cases]
    names.append(f"bandwidth/spmm/rmat{scales[-1]}/F{BANDWIDTH_WIDTH}")
    names += [f"gcn_norm/{g}" for g in ["pubmed"] + [f"rmat{k}" for k in (scales if quick else scales[1:])]]
    for kind in ("lstm", "rnn"):
        for (T, B, I, H) in (RNN_SIZES_QUICK if quick else RNN_SIZES):
            names += [f"{kind}/{m}/T{T}_B{B}_I{I}_H{H}" for m in ("train", "infer")]
    names += ["gcn/epoch/cora", "tape/fwd_per_op", "tape/bwd_per_op", "import", "first_call/gcn_epoch/cora"]
    return names


def _header(b: Bench) -> dict:
    info: dict = {"python": platform.python_version(), "machine": platform.machine(),
                  "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                  "numpy": np.__version__, "quick": b.s.quick, "filter": b.s.filter,
                  "data_dir": str(b.s.data_dir) if b.s.data_dir else None}
    # torch first: once numba has started its OpenMP threads, torch loaded afterwards runs some ops (its
    # RNN) 100x slower here. In this order neither side is slowed down.
    b.peer_or_none("torch")
    try:
        import numba
        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        info["numba"] = None
    print(f"tapegrad bench{' --quick' if b.s.quick else ''}: Python {info['python']} on {info['cpu_count']} CPUs "
          f"({info['machine']}); numpy {np.__version__}, numba {info.get('numba')} "
          f"with {info.get('numba_threads')} threads (its default: all cores)")
    import importlib.metadata
    import importlib.util
    for name in ("scipy", "torch", "torch_geometric"):
        if name == "torch_geometric" and importlib.util.find_spec(name) is not None:
            # slow to import: imported by the first case that needs it (a failure is reported there)
            ver = importlib.metadata.version(name)
            print(f"peer {name} {ver}")
            info[name] = ver
            continue
        mod, why = b.peer_or_none(name)
        if mod is None:
            print(f"peer {name}: skipped: {why}")
            info[name] = {"skipped": why}
            continue
        ver = getattr(sys.modules[name], "__version__", "?")
        extra = ""
        if name == "torch":
            extra = f", torch.set_num_threads(os.cpu_count()) -> {mod.get_num_threads()} threads"
            info["torch_threads"] = mod.get_num_threads()
        print(f"peer {name} {ver}{extra}")
        info[name] = ver
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    if load is not None:
        info["load_average"] = load
        busy = " -- the machine is busy: expect noisy timings" if load[0] > 0.5 * (os.cpu_count() or 1) else ""
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min){busy}")
    print("ratio = peer median / tapegrad median: above 1 means tapegrad is faster")
    print()
    print(HEADER)
    print("-" * len(HEADER))
    sys.stdout.flush()
    return info


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tapegrad bench", description="Time tapegrad's kernels and layers "
                                "against scipy, torch and torch_geometric on the same inputs, interleaved.")
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (a smoke check, < 30 s)")
    p.add_argument("--json", metavar="FILE", help="write every result to FILE as JSON")
    p.add_argument("--filter", metavar="SUBSTR", help="run only the cases whose name contains SUBSTR")
    p.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                   help="folder with pubmed.npz and cora.npz (default: $TAPEGRAD_DATA, else ../shared/data "
                        "next to the package)")
    p.add_argument("--reps", type=int, default=None, help="fixed number of repetitions per case")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    p.add_argument("--gap", metavar="SECONDS", type=float, default=None,
                   help="sleep before every sample of every case, so that the spinning worker threads of "
                        f"the library timed just before are asleep (default: {BLAS_GAP_S} s in the LSTM, RNN "
                        "and GCN cases, whose tapegrad side calls OpenBLAS; none elsewhere nor in --quick)")
    p.add_argument("--time-limit", metavar="SECONDS", type=float, default=None,
                   help="skip the cases that would start after SECONDS (a cap for smoke checks)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(case_names(args.quick)))
        return 0
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be >= 1")
    if args.filter is not None and not any(args.filter in name for name in case_names(args.quick)):
        print(f"{p.prog}: error: no case matches --filter {args.filter!r}; see --list", file=sys.stderr)
        return 2
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    b = Bench(Settings.make(args.quick, data_dir, args.filter, args.reps))
    t_start = time.perf_counter()
    if args.time_limit is not None:
        b.s.deadline = t_start + args.time_limit
    if args.gap is not None and args.gap < 0:
        p.error("--gap must be >= 0")
    b.s.gap_s = args.gap
    info = _header(b)
    for _, group in CASE_GROUPS:
        group(b)
    elapsed = time.perf_counter() - t_start
    errors = [c for c in b.cases if c.error]
    print("-" * len(HEADER))
    print(f"{len(b.cases)} cases in {elapsed:.1f} s; {sum(c.skipped is not None for c in b.cases)} skipped, "
          f"{len(errors)} errors")
    try:
        load = os.getloadavg()
        info["load_average_end"] = load
        print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (this run's own threads "
              f"count in it)")
    except OSError:
        pass
    if not b.cases:  # the names matched but no case ran (case_names out of step with the groups)
        print(f"{p.prog}: error: no case matches --filter {args.filter!r}; see --list", file=sys.stderr)
        return 2
    if args.json:
        info["elapsed_s"] = elapsed
        info["argv"] = list(argv) if argv is not None else sys.argv[1:]
        info["machine_bandwidth"] = b.machine_bw
        with open(args.json, "w") as f:
            json.dump({"info": info, "cases": [c.to_json() for c in b.cases]}, f, indent=1, default=str)
        print(f"results written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
