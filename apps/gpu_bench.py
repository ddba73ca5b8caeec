"""GPU benchmarks: tapegrad's kernels and recurrent layers against cuSPARSE, torch.sparse and cuDNN.

Run on a machine with an NVIDIA GPU, cupy, and (for the peers) torch with CUDA::

    python -m tapegrad gpubench [--json FILE] [--data-dir DIR] [--quick] [--only GROUPS] [--graphs LIST]

(``benchmarks/gpu_check.sh`` runs it after the GPU tests.)

Every case runs its implementations on the same device arrays in one process, after two warm-up calls
(compilation, cuBLAS / cuSPARSE handles, allocator), in interleaved rounds: each sample is ``n`` calls
back to back between two device synchronisations, so it measures the device time per call once the
queue is full (host overhead hides behind the GPU when the GPU is the slower side). Medians over the
rounds are reported, and ratios as peer / ours (above 1: tapegrad is faster).

Cases:

* ``spmm/{fwd,bwd}/{graph}/F{w}``: Y = A X (forward) and dX = A^T dY through the cached transpose
  (backward, what ``tapegrad.spmm``'s backward runs), float32, on pubmed and R-MAT graphs of 2^16 to
  2^22 nodes (edge factor 16, directed), widths 32 to 256. Ours: both GPU implementations, called
  through the kernel table (what the engine runs once a CSR has been validated). Peers: cupyx.scipy.sparse
  (cuSPARSE) and torch.sparse.mm on a CSR tensor, each given the matrix it multiplies (A, or A^T built
  once). Each result is checked against cuSPARSE before timing.
* ``lstm|rnn/{train,infer}/T_B_I_H``: a training step (forward, sum of the output, backward; no
  optimiser) and inference (forward under no_grad) of tapegrad's layers on 'cuda' against torch.nn.LSTM
  / RNN with cuDNN, same weights, outputs compared first; ours as configured by default, without CUDA
  graphs, with the numba-cuda kernels, and with fused steps forced on (one persistent launch per loop,
  tiled or warp per unit, or a launch per step) and off at every batch size.
* ``gcn/epoch/cora``: a GCN training epoch (the model of apps/gcn.py, dense row-normalised features)
  against PyG's GCNConv on the GPU.
* ``launch/...``: host time per call (no synchronisation inside the timed loop) on a tiny input, for
  each implementation's kernel-table entry and for the validated public ``tapegrad.kernels`` wrapper.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

WIDTHS = (32, 64, 128, 256)
RMAT_SCALES = (16, 18, 20, 22)
RNN_SIZES = ((50, 64, 128, 256), (50, 8, 128, 256))


def _timed_rounds(fns: dict, sync, rounds: int = 5, sample_s: float = 0.02, max_n: int = 200) -> dict:
    """Median seconds per call of each fn, interleaved over ``rounds`` rounds."""
    n = {}
    for k, f in fns.items():
        f(); f()
        sync()
        t0 = time.perf_counter()
        f()
        sync()
        one = max(time.perf_counter() - t0, 1e-6)
        n[k] = int(max(1, min(max_n, sample_s / one)))
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(n[k]):
                f()
            sync()
            samples[k].append((time.perf_counter() - t0) / n[k])
    return {k: {"median_s": float(np.median(v)), "min_s": float(np.min(v)), "n": n[k], "rounds": rounds}
            for k, v in samples.items()}


def _host_per_call(cases: dict, sync, rounds: int = 9) -> dict:
    """Host seconds per call of each case, with no synchronisation inside a round (the cost of getting a
    kernel queued). ``cases`` maps a name to (f, calls per round, mode): ``mode()`` is a context manager
    that sets the case up (a launch path switched on or off) around each of its rounds.

    The cases take turns round by round, because the shared host's speed drifts from one second to the
    next: the cases of one round saw the same host. Returns name -> the per-round samples."""
    for f, _, mode in cases.values():
        with mode():
            for _ in range(3):
                f()
    sync()
    samples: dict = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (f, calls, mode) in cases.items():
            with mode():
                sync()
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                samples[name].append((time.perf_counter() - t0) / calls)
                sync()
    return samples


def _launch_rows(samples: dict, peer: str) -> dict:
    """Per case: the median microseconds per call, and the median over rounds of its ratio to ``peer``'s
    time in the same round (above 1: slower than the peer)."""
    rows = {}
    for name, v in samples.items():
        row = {"median_us": float(np.median(v)) * 1e6, "min_us": float(np.min(v)) * 1e6, "rounds": len(v)}
        if peer in samples and name != peer:
            row[f"per-round ratio to {peer}"] = float(np.median(np.divide(v, samples[peer])))
        rows[name] = row
    return rows


class Report:
    def __init__(self) -> None:
        self.cases: list[dict] = []
        self.json_path: Path | None = None
        self.header: dict = {}

    def save(self) -> None:
        """Write what has been measured so far (a run cut short by a time limit keeps it)."""
        if self.json_path is not None:
            self.json_path.write_text(json.dumps({"header": self.header, "summary": summary(self),
                                                  "cases": self.cases}, indent=1))

    def add(self, name: str, rows: dict, ours: str, notes: str = "", **params) -> None:
        case = {"name": name, "params": params, "rows": rows, "ours": ours, "notes": notes}
        self.cases.append(case)
        base = rows[ours]["median_s"]
        parts = []
        for label, r in rows.items():
            if "median_s" not in r:
                parts.append(f"{label}: {r.get('skipped') or r.get('error')}")
                continue
            ratio = r["median_s"] / base
            parts.append(f"{label} {r['median_s'] * 1e3:.3f} ms" + ("" if label == ours else f" ({ratio:.2f}x)"))
        print(f"{name}: " + "; ".join(parts), flush=True)
        self.save()

    def error(self, name: str, e: BaseException) -> None:
        self.cases.append({"name": name, "error": f"{type(e).__name__}: {e}"})
        print(f"{name}: ERROR {type(e).__name__}: {str(e)[:400]}", flush=True)
        self.save()


def _load_graph(name: str, data_dir: Path | None):
    from tapegrad.apps.rmat import rmat
    from tapegrad.kernels import CSR
    if name == "pubmed":
        if data_dir is None or not (data_dir / "pubmed.npz").exists():
            raise FileNotFoundError(f"pubmed.npz not found in {data_dir} (set --data-dir or $TAPEGRAD_DATA)")
        z = np.load(data_dir / "pubmed.npz")
        n = len(z["adj_indptr"]) - 1
        return CSR(z["adj_indptr"], z["adj_indices"], None, (n, n))
    return rmat(int(name[4:]))


def spmm_cases(rep: Report, graphs, widths, cupy, torch) -> None:
    from tapegrad.kernels import registry
    import cupyx.scipy.sparse as csp
    sync = cupy.cuda.Device().synchronize
    for g in graphs:
        try:
            A = _load_graph(g, rep.data_dir)
        except Exception as e:
            rep.error(f"spmm/*/{g}", e)
            continue
        n, m = A.shape
        rng = np.random.default_rng(0)
        data_h = rng.random(A.nnz, dtype=np.float32)
        ip, ix, dv = cupy.asarray(A.indptr), cupy.asarray(A.indices), cupy.asarray(data_h)
        At = registry.call("csr_transpose", "cupy", ip, ix, dv, m)[:3]  # (indptr, indices, data) of A^T
        sp_A = csp.csr_matrix((dv, ix, ip), shape=(n, m))
        sp_At = csp.csr_matrix((At[2], At[1], At[0]), shape=(m, n))
        t_A = t_At = None
        if torch is not None:
            def t_csr(indptr, indices, data, shape):  # torch wants one index dtype for both arrays
                return torch.sparse_csr_tensor(torch.as_tensor(indptr.astype(cupy.int64)),
                                               torch.as_tensor(indices.astype(cupy.int64)),
                                               torch.as_tensor(data), shape)
            t_A, t_At = t_csr(ip, ix, dv, (n, m)), t_csr(*At, (m, n))
        for w in widths:
            for direction in ("fwd", "bwd"):
                name = f"spmm/{direction}/{g}/F{w}"
                try:
                    if direction == "fwd":
                        mat, spm, tm, rows_in = (ip, ix, dv), sp_A, t_A, m
                    else:
                        mat, spm, tm, rows_in = At, sp_At, t_At, n
                    x = cupy.asarray(rng.standard_normal((rows_in, w), dtype=np.float32))
                    ref = spm @ x
                    fns = {}
                    for backend in ("cupy", "numba-cuda"):
                        k = registry.get("spmm", backend)
                        got = k(*mat, x)
                        err = float(cupy.abs(got - ref).max() / (cupy.abs(ref).max() + 1e-30))
                        if not err < 1e-5:
                            raise AssertionError(f"{backend} differs from cuSPARSE: max rel error {err:.2e}")
                        fns[f"tapegrad ({backend})"] = (lambda k=k, mat=mat, x=x: k(*mat, x))
                    fns["cuSPARSE (cupyx)"] = lambda spm=spm, x=x: spm @ x
                    if tm is not None:
                        tx = torch.as_tensor(x)
                        fns["torch.sparse.mm"] = lambda tm=tm, tx=tx: torch.sparse.mm(tm, tx)
                    rows = _timed_rounds(fns, sync)
                    gather = A.nnz * w * 4
                    for r in rows.values():
                        r["gather_GBps"] = gather / r["median_s"] / 1e9
                    rep.add(name, rows, "tapegrad (cupy)", nnz=A.nnz, n=n, width=w, direction=direction)
                    del x, ref
                except Exception as e:
                    rep.error(name, e)
        del sp_A, sp_At, t_A, t_At, At, ip, ix, dv
        from tapegrad.kernels.cupy import sparse as cupy_sparse
        cupy_sparse.release_scratch()  # its carry pieces for the largest graph and width
        cupy.get_default_memory_pool().free_all_blocks()


def _setting(f, graphs: bool = True, backend: str = "cupy", fused: int | None = None, persistent: bool = True,
             stage: bool = True, tiled: bool = True):
    """f run with CUDA graphs on or off, the given GPU kernel backend, when given the fused-step batch limit,
    fused loops in one persistent launch or a launch per step, and the tiled persistent loops on or off
    (all restored afterwards)."""
    from tapegrad.engine import recurrent_cuda
    from tapegrad.kernels import registry
    from tapegrad.kernels.cupy import recurrent_step, recurrent_tiled

    def run():
        limit = recurrent_cuda.fused_steps_max_batch()
        recurrent_cuda.set_cuda_graphs(graphs)
        registry.set_gpu_backend(backend)
        recurrent_step.PERSISTENT = persistent
        recurrent_step.STAGE = stage
        recurrent_tiled.ENABLED = tiled
        if fused is not None:
            recurrent_cuda.set_fused_steps(fused)
        try:
            f()
        finally:
            recurrent_cuda.set_cuda_graphs(True)
            registry.set_gpu_backend("cupy")
            recurrent_step.PERSISTENT = True
            recurrent_step.STAGE = True
            recurrent_tiled.ENABLED = True
            recurrent_cuda.set_fused_steps(limit)
    return run


def gcn_case(rep: Report, cupy, torch) -> None:
    """A GCN training epoch on Cora (forward, backward, Adam step) on the GPU, against PyG on the GPU."""
    import tapegrad as tg
    from tapegrad import datasets
    from .bench import _pyg_namespace, _tg_gcn_setup
    name = "gcn/epoch/cora"
    try:
        if rep.data_dir is None or not (rep.data_dir / "cora.npz").exists():
            raise FileNotFoundError(f"cora.npz not found in {rep.data_dir} (set --data-dir or $TAPEGRAD_DATA)")
        data = datasets.load_planetoid(str(rep.data_dir / "cora.npz"))
        x = datasets.row_normalize(data.x).toarray().astype(np.float32)
        model, opt = _tg_gcn_setup(data)
        model.to("cuda")
        xg, yg = tg.tensor(x, device="cuda"), tg.tensor(data.y, device="cuda")
        idx = cupy.asarray(data.train_idx)

        def ours():
            model.train()
            opt.zero_grad()
            loss = tg.cross_entropy(model(xg, data.A), yg, idx)
            loss.backward()
            opt.step()
        fns = {"tapegrad GCN": ours}
        if torch is not None:
            try:
                ns = _pyg_namespace()
                rows = np.repeat(np.arange(data.num_nodes, dtype=np.int64), np.diff(data.A.indptr))
                ei = torch.from_numpy(np.stack([data.A.indices.astype(np.int64), rows])).cuda()
                m, o = ns["pyg_setup"](data.num_features, data.num_classes)
                m.cuda()
                args = (torch.from_numpy(x).cuda(), ei, torch.from_numpy(data.y).cuda(),
                        torch.from_numpy(data.train_idx).cuda())
                fns["torch_geometric GCNConv"] = lambda: ns["pyg_epoch"](m, o, *args)
            except Exception as e:
                print(f"{name}: PyG peer unavailable ({type(e).__name__}: {e})")

        def sync():
            cupy.cuda.Device().synchronize()
            if torch is not None:
                torch.cuda.synchronize()
        rep.add(name, _timed_rounds(fns, sync, sample_s=0.05, max_n=50), "tapegrad GCN", n=data.num_nodes)
    except Exception as e:
        rep.error(name, e)


def rnn_cases(rep: Report, sizes, cupy, torch) -> None:
    import tapegrad as tg
    sync = cupy.cuda.Device().synchronize
    for kind in ("lstm", "rnn"):
        for (T, B, I, H) in sizes:
            for mode in ("train", "infer"):
                name = f"{kind}/{mode}/T{T}_B{B}_I{I}_H{H}"
                try:
                    cls = tg.LSTM if kind == "lstm" else tg.RNN
                    model = cls(I, H, device="cuda")
                    x_h = np.random.default_rng(0).standard_normal((T, B, I), dtype=np.float32)
                    x = tg.tensor(x_h, device="cuda")

                    def ours_train(model=model, x=x):
                        model.zero_grad()
                        out, _ = model(x)
                        out.sum().backward()

                    def ours_infer(model=model, x=x):
                        with tg.no_grad():
                            model(x)
                    ours = ours_train if mode == "train" else ours_infer
                    fns = {f"tapegrad {cls.__name__}": ours,
                           f"tapegrad {cls.__name__} (no CUDA graphs)": _setting(ours, graphs=False),
                           f"tapegrad {cls.__name__} (numba-cuda kernels)": _setting(ours, backend="numba-cuda"),
                           f"tapegrad {cls.__name__} (fused, persistent)": _setting(ours, fused=1 << 30),
                           f"tapegrad {cls.__name__} (fused, persistent, warp per unit)": _setting(
                               ours, fused=1 << 30, tiled=False),
                           f"tapegrad {cls.__name__} (fused, launch per step)": _setting(ours, fused=1 << 30,
                                                                                      persistent=False),
                           f"tapegrad {cls.__name__} (GEMM + cell steps)": _setting(ours, fused=0)}
                    if torch is not None:
                        tmodel = (torch.nn.LSTM(I, H) if kind == "lstm" else torch.nn.RNN(I, H)).cuda()
                        model.load_state_dict({k: v.detach().cpu().numpy() for k, v in tmodel.state_dict().items()})
                        tx = torch.from_numpy(x_h).cuda()
                        with tg.no_grad():
                            got = model(x)[0].numpy()
                        with torch.no_grad():
                            want = tmodel(tx)[0].cpu().numpy()
                        err = float(np.abs(got - want).max())
                        if not err < 1e-3:
                            raise AssertionError(f"outputs differ from cuDNN by {err:.2e}")

                        def torch_train(tmodel=tmodel, tx=tx):
                            tmodel.zero_grad(set_to_none=True)
                            out, _ = tmodel(tx)
                            out.sum().backward()

                        def torch_infer(tmodel=tmodel, tx=tx):
                            with torch.no_grad():
                                tmodel(tx)
                        fns[f"torch.nn.{cls.__name__} (cuDNN)"] = torch_train if mode == "train" else torch_infer

                    def both_sync():
                        sync()
                        if torch is not None:
                            torch.cuda.synchronize()
                    rows = _timed_rounds(fns, both_sync, sample_s=0.05, max_n=50)
                    rep.add(name, rows, f"tapegrad {cls.__name__}", T=T, B=B, I=I, H=H, mode=mode)
                except Exception as e:
                    rep.error(name, e)


def launch_cases(rep: Report, cupy, torch) -> None:
    """Host microseconds per call on a tiny graph (64 nodes, F=32): the cost of getting a kernel queued.

    Each kernel is timed with its backend's lean launch (the default) and with the framework's own launch
    (CuPy's ``RawKernel`` call, Numba's ``kernel[grid, block]``), and beside them the floors: empty kernels
    launched through the driver with their parameters packed beforehand, through our launch objects and
    through CuPy's call, and the peers. All rows take turns round by round (:func:`_host_per_call`); each
    row also gets the median of its per-round ratio to ``torch.relu``."""
    import contextlib

    import tapegrad as tg
    from tapegrad.kernels import direct_launch as dl
    from tapegrad.kernels import registry
    from tapegrad.kernels.cuda import _device as dv
    from tapegrad.kernels.cupy import _compile as cc

    def sync():
        cupy.cuda.Device().synchronize()
        if torch is not None:
            torch.cuda.synchronize()

    def switched(module, flag, value):
        @contextlib.contextmanager
        def mode():
            setting = getattr(module, flag)  # restored after: the user may have turned it off
            setattr(module, flag, value)
            try:
                yield
            finally:
                setattr(module, flag, setting)
        return mode
    plain = contextlib.nullcontext
    A = tg.CSR.from_edge_index(np.stack([np.arange(64), (np.arange(64) + 1) % 64]), num_nodes=64)
    ip, ix = cupy.asarray(A.indptr), cupy.asarray(A.indices)
    dv_ = cupy.ones(A.nnz, dtype=cupy.float32)
    x = cupy.ones((64, 32), dtype=cupy.float32)
    h = cupy.ones((8, 32), dtype=cupy.float32)
    z = cupy.ones((8, 128), dtype=cupy.float32)
    c = cupy.zeros((8, 32), cupy.float32)
    bufs = [cupy.empty((8, 32), cupy.float32) for _ in range(2)]
    gates = cupy.empty((8, 128), cupy.float32)
    out = cupy.empty((64, 32), cupy.float32)
    cases, errors = {}, {}
    lean = {"cupy": (cc, "DIRECT_LAUNCH"), "numba-cuda": (dv, "FAST_LAUNCH")}
    for backend in ("cupy", "numba-cuda"):
        module, flag = lean[backend]
        try:
            k = registry.get("spmm", backend)
            cell = registry.get("lstm_cell_fwd", backend)
            for how, on in (("", True), (", framework's launch", False)):
                calls = 300 if on or backend == "cupy" else 30
                mode = switched(module, flag, on)
                cases[f"spmm kernel ({backend}{how})"] = (lambda k=k: k(ip, ix, dv_, x, out), calls, mode)
                cases[f"lstm_cell_fwd kernel ({backend}{how})"] = (
                    lambda cell=cell: cell(z, c, gates, bufs[0], bufs[1]), calls, mode)
            cases[f"tapegrad.kernels.spmm, validated ({backend})"] = (
                lambda backend=backend: tg.kernels.spmm(ip, ix, dv_, x, out, backend=backend), 100, plain)
        except Exception as e:
            errors[backend] = f"error {type(e).__name__}: {e}"
    try:  # the floor: an empty kernel with one pointer argument
        empty = cupy.RawKernel('extern "C" __global__ void tapegrad_empty(float* p) {}', "tapegrad_empty")
        direct = cc.Launch(empty, (1,), (32,), (x,))
        stream = cupy.cuda.get_current_stream().ptr
        buf, params, _ = direct.params.buffer()
        direct.params.head.pack_into(buf, 0, x.data.ptr)  # packed once: the driver's own cost alone
        launch = dl.driver().launchKernel
        handle = empty.kernel.ptr
        cases["empty kernel, CuPy's call (floor)"] = (lambda: empty((1,), (32,), (x,)), 300, plain)
        cases["empty kernel, driver with packed params (floor)"] = (
            lambda: launch(handle, 1, 1, 1, 32, 1, 1, 0, stream, params, 0), 300, plain)
        cases["empty kernel, cc.Launch (floor + packing)"] = (
            lambda: direct(cupy.cuda.get_current_stream().ptr, x.data.ptr), 300, plain)
    except Exception as e:
        errors["floor"] = f"error {type(e).__name__}: {e}"
    try:  # the floor of a numba-cuda launch: an empty kernel with the cell kernel's parameters
        from numba import cuda

        @cuda.jit
        def empty5(a, b, c, d, e, n, m, one):  # pragma: no cover - runs on the GPU
            pass
        arrays = (z, c, gates, bufs[0], bufs[1])
        args = arrays + (256, 32, np.float32(1))
        dv.launch(empty5, 1, 256, dv.CUPY, *args)
        planned = dv.plan(empty5, 1, 256, args, (0, 1, 2, 3, 4))
        if planned is None:
            raise RuntimeError("the empty kernel could not be planned")
        nbuf, nparams, _ = planned.params.buffer()
        planned.params.head.pack_into(nbuf, 0, *[a.data.ptr for a in arrays])
        launch, stream = dl.driver().launchKernel, cupy.cuda.get_current_stream().ptr
        cases["empty numba kernel, 5 arrays, planned (floor + packing)"] = (
            lambda: planned(cupy.cuda.get_current_stream().ptr, z.data.ptr, c.data.ptr, gates.data.ptr,
                            bufs[0].data.ptr, bufs[1].data.ptr), 300, plain)
        cases["empty numba kernel, 5 arrays, driver with packed params (floor)"] = (
            lambda: launch(planned.handle, 1, 1, 1, 256, 1, 1, 0, stream, nparams, 0), 300, plain)
    except Exception as e:
        errors["numba floor"] = f"error {type(e).__name__}: {e}"
    import cupyx.scipy.sparse as csp
    m = csp.csr_matrix((dv_, ix, ip), shape=(64, 64))
    cases["cuSPARSE via cupyx (peer)"] = (lambda: m @ x, 100, plain)
    cases["cupy elementwise h * 2 (peer)"] = (lambda: h * 2, 300, plain)
    if torch is not None:
        tx = torch.ones((64, 32), device="cuda")
        tout = torch.empty((64, 32), device="cuda")
        cases["torch.relu (peer)"] = (lambda: torch.relu(tx), 300, plain)
        cases["torch.clamp_min with out= (peer)"] = (lambda: torch.clamp_min(tx, 0, out=tout), 300, plain)
    for name in list(cases):  # a case that fails is reported as such, and the others are still timed
        f, _, mode = cases[name]
        try:
            with mode():
                f()
        except Exception as e:
            errors[name] = f"error {type(e).__name__}: {e}"
            del cases[name]
    rows = {**_launch_rows(_host_per_call(cases, sync), "torch.relu (peer)"), **errors}
    rep.cases.append({"name": "launch/host_us_per_call", "rows": rows})
    rep.save()
    lines = []
    for k, v in rows.items():
        if isinstance(v, str):
            lines.append(f"  {k}: {v}")
            continue
        ratio = v.get("per-round ratio to torch.relu (peer)")
        lines.append(f"  {k}: {v['median_us']:.1f} us" + (f" ({ratio:.2f}x torch.relu's)" if ratio else ""))
    print("launch/host_us_per_call (median of 9 interleaved rounds):\n" + "\n".join(lines), flush=True)


def summary(rep: Report) -> dict:
    out: dict = {}
    for backend in ("cupy", "numba-cuda"):
        for direction in ("fwd",):
            ratios = [c["rows"]["cuSPARSE (cupyx)"]["median_s"] / c["rows"][f"tapegrad ({backend})"]["median_s"]
                      for c in rep.cases if c["name"].startswith(f"spmm/{direction}/") and "rows" in c]
            if ratios:
                out[f"spmm {direction} vs cuSPARSE, geomean ({backend})"] = float(np.exp(np.mean(np.log(ratios))))
            tr = [c["rows"]["torch.sparse.mm"]["median_s"] / c["rows"][f"tapegrad ({backend})"]["median_s"]
                  for c in rep.cases if c["name"].startswith(f"spmm/{direction}/") and "rows" in c
                  and "torch.sparse.mm" in c["rows"]]
            if tr:
                out[f"spmm {direction} vs torch.sparse, geomean ({backend})"] = float(np.exp(np.mean(np.log(tr))))
        fwd = {c["name"].split("/", 2)[2]: c for c in rep.cases if c["name"].startswith("spmm/fwd/") and "rows" in c}
        bwd = {c["name"].split("/", 2)[2]: c for c in rep.cases if c["name"].startswith("spmm/bwd/") and "rows" in c}
        r = [bwd[k]["rows"][f"tapegrad ({backend})"]["median_s"] / fwd[k]["rows"][f"tapegrad ({backend})"]["median_s"]
             for k in fwd if k in bwd]
        if r:
            out[f"spmm bwd/fwd time, worst ({backend})"] = float(max(r))
            out[f"spmm bwd/fwd time, geomean ({backend})"] = float(np.exp(np.mean(np.log(r))))
    for c in rep.cases:
        if c["name"].startswith(("lstm/", "rnn/", "gcn/")) and "rows" in c:
            peers = [v["median_s"] for k, v in c["rows"].items() if k.startswith("torch")]
            if not peers:
                continue
            for label, r in c["rows"].items():
                if label.startswith("tapegrad"):
                    out[f"{c['name']}: {label} vs {'PyG' if c['name'].startswith('gcn') else 'cuDNN'}"] = \
                        peers[0] / r["median_s"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tapegrad gpubench", description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--data-dir", default=None,
                    help="folder with pubmed.npz and cora.npz (default: $TAPEGRAD_DATA, else ../shared/data "
                         "beside the repository)")
    ap.add_argument("--quick", action="store_true", help="pubmed and R-MAT 2^16 only, widths 32 and 256")
    ap.add_argument("--only", default="launch,rnn,gcn,spmm", help="comma list of launch, rnn, gcn, spmm")
    ap.add_argument("--graphs", default=None, help="comma list of SpMM graphs (default: pubmed and R-MAT "
                    "scales 16 to 22)")
    args = ap.parse_args(argv)
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    try:
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(0)
    except Exception as e:  # no cupy, no driver, a driver too old for this cupy, no device
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        print(f"{ap.prog}: error: no usable CUDA device ({why.splitlines()[0]})", file=sys.stderr)
        return 1
    import tapegrad  # noqa: F401
    rep = Report()
    from .bench import default_data_dir
    rep.data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    header = {"device": p["name"].decode(), "sm_count": p["multiProcessorCount"],
              "cupy": cupy.__version__, "torch": getattr(torch, "__version__", None),
              "python": platform.python_version(), "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    try:
        import numba
        header["numba"] = numba.__version__
        import numba_cuda
        header["numba_cuda"] = numba_cuda.__version__
    except Exception:
        pass
    print(json.dumps(header), flush=True)
    rep.header = header
    rep.json_path = Path(args.json) if args.json else None
    only = set(args.only.split(","))
    t0 = time.time()
    if "launch" in only:
        launch_cases(rep, cupy, torch)
    if "rnn" in only:
        rnn_cases(rep, RNN_SIZES if not args.quick else RNN_SIZES[1:], cupy, torch)
    if "gcn" in only:
        gcn_case(rep, cupy, torch)
    if "spmm" in only:
        graphs = ["pubmed"] + [f"rmat{s}" for s in (RMAT_SCALES if not args.quick else RMAT_SCALES[:1])]
        if args.graphs:
            graphs = args.graphs.split(",")
        spmm_cases(rep, graphs, WIDTHS if not args.quick else (32, 256), cupy, torch)
    s = summary(rep)
    print("\nSUMMARY (peer time / tapegrad time; above 1 = tapegrad faster; bwd/fwd = time ratio)")
    for k, v in s.items():
        print(f"  {k}: {v:.3f}")
    print(f"total {time.time() - t0:.0f} s")
    rep.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
