"""The kernel profiler: what it records, how it reports, and that it leaves nothing behind."""
import importlib
import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine import ops, profiler
from tapegrad.kernels import registry

_tensor = importlib.import_module("tapegrad.engine.tensor")  # the module, not the tensor() function


@pytest.fixture(autouse=True)
def small_probe(monkeypatch, tmp_path):
    """Keep the peak cache out of the home directory and the probe fast."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(profiler, "_PROBE_BYTES", 1 << 20)
    monkeypatch.setattr(profiler, "_PROBE_GEMM", 64)


def _ring(n=40, seed=0):
    rng = np.random.default_rng(seed)
    src = np.arange(n)
    dst = (src + 1) % n
    extra = rng.integers(0, n, size=(2, n))
    return np.concatenate([np.stack([src, dst]), np.stack([dst, src]), extra], axis=1)


def _gcn_epoch(model, x, ei, y):
    out = model(x, ei)
    loss = tg.cross_entropy(out, y)
    loss.backward()
    return out.data.copy(), loss.data.copy(), [p.grad.copy() for p in model.parameters()]


def _gcn_setup(seed=0):
    tg.manual_seed(seed)
    n, f = 40, 6
    rng = np.random.default_rng(seed)
    x = tg.tensor(rng.standard_normal((n, f)).astype(np.float32))
    y = rng.integers(0, 3, size=n)
    model = tg.GCN(f, 8, 3, dropout=0.0)
    return model, x, _ring(n), y


def _rows(prof, **match):
    return [r for r in prof.rows(with_peak=False) if all(r[k] == v for k, v in match.items())]


def test_gcn_epoch_records_spmm_kernel_shapes_counts_and_matmul_ops():
    model, x, ei, y = _gcn_setup()
    _gcn_epoch(model, x, ei, y)  # warm: compile outside the profile
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    spmm = _rows(prof, kind="kernel", name="spmm")
    assert spmm and all(r["backend"] == "cpu" for r in spmm)
    # one spmm per layer forward; backward, the transpose spmm only for layer 2: layer 1 (6 -> 8 channels)
    # propagates first, spmm(P, x), and x needs no gradient
    assert sum(r["calls"] for r in spmm) == 3
    # layer 2 (8 -> 3) transforms first, so it propagates [40, 3]: forward and backward share one row
    calls = {x: sum(r["calls"] for r in spmm if x in r["signature"]) for x in ("[40, 6]", "[40, 3]")}
    assert calls == {"[40, 6]": 1, "[40, 3]": 2}
    assert all(r["bytes"] > 0 and r["flops"] > 0 for r in spmm)
    assert sum(r["calls"] for r in _rows(prof, kind="op", name="matmul")) == 2
    assert sum(r["calls"] for r in _rows(prof, kind="op", name="matmul.backward")) == 2
    assert _rows(prof, kind="op", name="cross_entropy")
    assert _rows(prof, kind="op", name="spmm.backward")
    # matmul: 2 M N K flops from the shapes, [40, 6] @ [6, 8] and [40, 8] @ [8, 3]
    mm = _rows(prof, kind="op", name="matmul")
    assert sorted(r["flops"] for r in mm) == sorted([2 * 40 * 6 * 8, 2 * 40 * 8 * 3])


def test_lstm_step_records_cell_kernels_and_sequence_op():
    tg.manual_seed(0)
    lstm = tg.LSTM(5, 7)
    x = tg.tensor(np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32))
    out, _ = lstm(x)
    out.sum().backward()
    with tg.profile() as prof:
        out, _ = lstm(x)
        out.sum().backward()
    fwd = _rows(prof, kind="kernel", name="lstm_cell_fwd")
    bwd = _rows(prof, kind="kernel", name="lstm_cell_bwd")
    assert sum(r["calls"] for r in fwd) == 4 and sum(r["calls"] for r in bwd) == 4
    assert all(r["backend"] == "cpu" and "float32[3, 7]" in r["signature"] for r in fwd)
    seq = _rows(prof, kind="op", name="lstm_sequence")
    assert seq and seq[0]["calls"] == 1 and seq[0]["flops"] == 2 * 4 * 3 * 28 * (5 + 7)
    assert _rows(prof, kind="op", name="lstm_sequence.backward")


def test_public_spmm_goes_through_the_hook():
    A = tg.CSR.from_edge_index(_ring(), 40)
    x = tg.tensor(np.ones((40, 4), np.float32))
    tg.spmm(A, x)
    with tg.profile() as prof:
        tg.spmm(A, x)
        tg.spmm(A, x)
    (row,) = _rows(prof, kind="kernel", name="spmm")
    assert row["calls"] == 2
    nnz = len(A.indices)
    assert row["flops"] == 2 * 2 * nnz * 4
    expect = A.indptr.nbytes + A.indices.nbytes + A.data.nbytes + nnz * 4 * 4 + 40 * 4 * 4
    assert row["bytes"] == 2 * expect


def test_self_times_do_not_double_count():
    model, x, ei, y = _gcn_setup()
    _gcn_epoch(model, x, ei, y)
    with tg.profile() as prof:
        for _ in range(5):
            _gcn_epoch(model, x, ei, y)
    assert prof.wall_s is not None and 0 < prof.tracked_s <= prof.wall_s * 1.001


def test_compile_time_is_separated_for_a_fresh_kernel(monkeypatch):
    @numba.njit(cache=False)
    def _double(a):
        out = np.empty_like(a)
        for i in range(a.size):
            out[i] = 2.0 * a[i]
        return out

    monkeypatch.setitem(registry.TABLE, ("double_test", "cpu"), ("numpy", "abs"))
    monkeypatch.setitem(registry._resolved, ("double_test", "cpu"), _double)
    a = np.arange(8, dtype=np.float64)
    with tg.profile() as prof:
        first = registry.call("double_test", "cpu", a)
        for _ in range(3):
            registry.call("double_test", "cpu", a)
    np.testing.assert_array_equal(first, 2 * a)
    (row,) = _rows(prof, kind="kernel", name="double_test")
    assert row["calls"] == 4 and row["warm_calls"] == 3
    assert row["compile_s"] > 0.01  # compiling even a tiny njit function takes tens of ms
    # the compile happened in the first call, which is kept apart whole; the rates use the other three
    assert row["first_s"] >= row["compile_s"] > row["run_s"]
    assert row["mean_s"] == pytest.approx(row["run_s"] / 3)
    assert abs(row["total_s"] - row["first_s"] - row["run_s"]) < 1e-12


def test_table_sorted_by_total_time_with_columns():
    model, x, ei, y = _gcn_setup()
    _gcn_epoch(model, x, ei, y)
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    totals = [r["total_s"] for r in prof.rows()]
    assert totals == sorted(totals, reverse=True)
    text = prof.table()
    head = text.splitlines()[0]
    for col in ("kind", "name", "backend", "calls", "total ms", "mean us", "first ms", "jit ms", "GB/s",
                "GFLOP/s", "%bw", "%gemm", "shapes"):
        assert col in head
    assert "spmm" in text and "peak cpu" in text and "tracked" in text


def test_to_json_round_trips(tmp_path):
    model, x, ei, y = _gcn_setup()
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    path = tmp_path / "p.json"
    doc = prof.to_json(str(path))
    with open(path) as f:
        back = json.load(f)
    assert back == json.loads(json.dumps(doc))
    assert {"rows", "peak", "wall_s", "tracked_s"} <= set(back)
    assert {"bandwidth_gbs", "gemm_gflops"} <= set(back["peak"]["cpu"])
    keys = {"kind", "name", "backend", "signature", "calls", "total_s", "compile_s", "first_s", "warm_calls",
            "run_s", "mean_s", "bytes", "flops", "gbs", "gflops", "frac_bandwidth", "frac_gemm"}
    assert all(keys <= set(r) for r in back["rows"])


def test_chrome_trace_is_complete_events(tmp_path):
    model, x, ei, y = _gcn_setup()
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    with open(path) as f:
        doc = json.load(f)
    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(events) == sum(r["calls"] for r in prof.rows(with_peak=False))
    for e in events:
        assert e["ts"] >= 0 and e["dur"] >= 0 and {"name", "pid", "tid", "cat"} <= set(e)
    assert {"spmm", "matmul", "matmul.backward"} <= {e["name"] for e in events}


def test_roofline_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, x, ei, y = _gcn_setup()
    _gcn_epoch(model, x, ei, y)
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    path = tmp_path / "roof.png"
    prof.roofline(str(path))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_nested_profile_raises_and_outer_still_works():
    with tg.profile() as prof:
        with pytest.raises(RuntimeError, match="already active"):
            with tg.profile():
                pass
        (tg.tensor(np.ones(3, np.float32)) * 2.0).sum()
    assert _rows(prof, name="mul")


def test_hooks_removed_after_exit_even_on_error():
    from tapegrad.layers import gcn as layers_gcn
    originals = (ops.matmul, ops.add, tg.matmul, layers_gcn.spmm, tg.engine.sparse.spmm)
    with pytest.raises(ValueError):
        with tg.profile():
            assert ops.matmul is not originals[0] and layers_gcn.spmm is not originals[3]
            assert registry._hook is not None and _tensor._profiler is not None
            raise ValueError("boom")
    assert registry._hook is None and _tensor._profiler is None and profiler._active is None
    assert (ops.matmul, ops.add, tg.matmul, layers_gcn.spmm, tg.engine.sparse.spmm) == originals
    assert all(a is b for a, b in zip((ops.matmul, ops.add, tg.matmul, layers_gcn.spmm,
                                       tg.engine.sparse.spmm), originals))


def test_profiled_results_equal_unprofiled():
    model, x, ei, y = _gcn_setup()
    plain = _gcn_epoch(model, x, ei, y)
    for p in model.parameters():
        p.grad = None
    with tg.profile():
        profiled = _gcn_epoch(model, x, ei, y)
    np.testing.assert_array_equal(plain[0], profiled[0])
    np.testing.assert_array_equal(plain[1], profiled[1])
    for a, b in zip(plain[2], profiled[2]):
        np.testing.assert_array_equal(a, b)


def test_threads_record_separately():
    import threading
    A = tg.CSR.from_edge_index(_ring(), 40)
    x = tg.tensor(np.ones((40, 4), np.float32), requires_grad=True)
    tg.spmm(A, x)

    def work():
        for _ in range(10):
            (tg.spmm(A, x) * 2.0).sum().backward()

    with tg.profile() as prof:
        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(r["calls"] for r in _rows(prof, kind="kernel", name="spmm")) == 60
    assert sum(r["calls"] for r in _rows(prof, kind="op", name="mul")) == 30
    assert prof.tracked_s <= prof.wall_s * 3 * 1.01


def test_machine_peak_is_cached(monkeypatch, tmp_path):
    calls = []
    real = profiler._probe_cpu
    monkeypatch.setattr(profiler, "_probe_cpu", lambda: calls.append(1) or real())
    p1 = profiler.machine_peak("cpu")
    p2 = profiler.machine_peak("cpu")
    assert p1 == p2 and len(calls) == 1
    assert p1["bandwidth_gbs"] > 0 and p1["gemm_gflops"] > 0
    path = tmp_path / "cache" / "tapegrad" / "peak.json"
    assert path.exists() and list(json.load(open(path)).values())[0] == p1
    profiler.machine_peak("cpu", refresh=True)
    assert len(calls) == 2


def test_cross_entropy_scalar_output_has_meaningful_cost():
    logits = tg.tensor(np.ones((10, 4), np.float32), requires_grad=True)
    with tg.profile() as prof:
        tg.cross_entropy(logits, np.zeros(10, np.int64))
    (row,) = _rows(prof, name="cross_entropy")
    assert row["flops"] >= 40 and row["bytes"] >= logits.data.nbytes


def test_cli_profile_writes_json(tmp_path):
    out = tmp_path / "p.json"
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "tapegrad", "profile", "--json", str(out), "--",
                        "gcn", "--seeds", "1", "--epochs", "3"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.load(open(out))
    assert any(row["name"] == "spmm" and row["kind"] == "kernel" for row in doc["rows"])
    assert "total ms" in r.stdout


# ---- first calls apart from the warm statistics -----------------------------------------------------------------

_WARM_VS_PROFILE = r"""
import json, statistics, time
import tapegrad as tg
from tapegrad import kernels
from tapegrad.datasets import load_planetoid
A = load_planetoid("cora").A
args = (A.indptr, A.indices, A.data, A.shape[0])
with tg.profile(trace=False) as prof:
    for _ in range(21):  # 20 warm calls: one scheduler hiccup on a busy 2-core machine moves their mean little
        kernels.gcn_norm(*args)   # the first: cache load or JIT, dispatch, thread-pool start
warm = []
for _ in range(30):
    t = time.perf_counter()
    kernels.gcn_norm(*args)
    warm.append(time.perf_counter() - t)
(row,) = [r for r in prof.rows(with_peak=False) if r["kind"] == "kernel" and r["name"] == "gcn_norm"]
print(json.dumps({"row": row, "warm_s": statistics.median(warm)}))
"""


def test_first_call_is_kept_out_of_the_mean_in_a_fresh_process(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", _WARM_VS_PROFILE], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    row, warm = doc["row"], doc["warm_s"]
    assert row["calls"] == 21 and row["warm_calls"] == 20
    assert row["run_s"] == pytest.approx(row["total_s"] - row["first_s"], abs=1e-9)  # no JIT after the first
    assert row["mean_s"] == pytest.approx(row["run_s"] / 20)
    assert row["first_s"] >= row["compile_s"] and row["first_s"] > 5 * row["mean_s"]
    # the mean is a warm call's time (the first call alone made it about 10x too large before)
    assert warm / 3 < row["mean_s"] < 3 * warm, (row["mean_s"], warm)


def test_a_row_called_once_has_no_warm_time_and_says_so():
    a = np.arange(16, dtype=np.float64)
    registry.call("adam_step", "cpu", a.copy(), a, np.zeros_like(a), np.zeros_like(a), 0.9, 0.999, 1e-3, 1.0, 1e-8)
    with tg.profile() as prof:
        registry.call("adam_step", "cpu", a.copy(), a, np.zeros_like(a), np.zeros_like(a), 0.9, 0.999, 1e-3, 1.0,
                      1e-8)
    (row,) = prof.rows()
    assert row["calls"] == 1 and row["warm_calls"] == 0 and row["mean_s"] is None
    assert row["run_s"] == 0 and row["gbs"] == 0 and row["frac_bandwidth"] is None and row["frac_gemm"] is None
    assert row["first_s"] == row["total_s"] > 0
    line = next(ln for ln in prof.table().splitlines() if ln.startswith("kernel adam_step"))
    assert " once " in line
    assert "'once' = no warm call" in prof.table()


def test_rates_use_the_warm_calls_bytes_only():
    A = tg.CSR.from_edge_index(_ring(), 40)
    x = np.ones((40, 4), np.float32)
    tg.kernels.spmm(A.indptr, A.indices, A.data, x)
    with tg.profile() as prof:
        for _ in range(3):
            tg.kernels.spmm(A.indptr, A.indices, A.data, x)
    (row,) = _rows(prof, kind="kernel", name="spmm")
    one = row["bytes"] // 3
    assert row["gbs"] == pytest.approx(2 * one / row["run_s"] / 1e9)


# ---- ops bound by name before the profile -----------------------------------------------------------------------

def test_ops_imported_by_name_before_the_profile_are_timed(tmp_path, monkeypatch):
    (tmp_path / "user_model_fromimport.py").write_text(
        "from tapegrad import relu, matmul, cross_entropy\n"
        "def step(x, w, y):\n"
        "    loss = cross_entropy(relu(matmul(x, w)), y)\n"
        "    loss.backward()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    user = importlib.import_module("user_model_fromimport")
    originals = (user.relu, user.matmul, user.cross_entropy)
    x = tg.tensor(np.ones((8, 4), np.float32), requires_grad=True)
    w = tg.tensor(np.ones((4, 3), np.float32), requires_grad=True)
    y = np.zeros(8, np.int64)
    user.step(x, w, y)
    with tg.profile() as prof:
        user.step(x, w, y)
    names = {r["name"] for r in prof.rows(with_peak=False)}
    assert {"relu", "matmul", "cross_entropy", "relu.backward", "matmul.backward"} <= names
    assert prof.untimed == {}
    assert (user.relu, user.matmul, user.cross_entropy) == originals
    assert all(a is b for a, b in zip((user.relu, user.matmul, user.cross_entropy), originals))


def test_op_references_the_profiler_cannot_rebind_are_counted_and_named():
    table = {"act": tg.relu}  # a dict entry made before the profile: not a module global
    x = tg.tensor(np.ones((5, 3), np.float32))
    with tg.profile() as prof:
        for _ in range(4):
            table["act"](x)
        tg.relu(x)
    assert sum(r["calls"] for r in _rows(prof, name="relu")) == 1
    assert prof.untimed == {"relu": 4}
    text = prof.table(with_peak=False)
    assert "untimed: 4 op results (relu 4)" in text and "untracked" in text
    assert prof.to_json()["untimed"] == {"relu": 4}


def test_a_wrapper_kept_from_one_profile_times_into_the_next_and_passes_through_outside():
    x = tg.tensor(np.ones((5, 3), np.float32))
    with tg.profile():
        kept = tg.relu  # the wrapper
    assert kept is not tg.relu and kept.__wrapped__ is tg.relu
    np.testing.assert_array_equal(kept(x).data, tg.relu(x).data)  # no profile: straight through
    with tg.profile() as prof:
        kept(x)
    assert _rows(prof, name="relu")[0]["calls"] == 1 and prof.untimed == {}


def test_no_wrapper_or_counting_make_result_left_in_any_module():
    from tapegrad.engine import nn, sparse
    model, x, ei, y = _gcn_setup()
    with tg.profile():
        _gcn_epoch(model, x, ei, y)
    wrappers = {id(w) for _, w in profiler._wrappers.values()}
    assert wrappers
    for mod in list(sys.modules.values()):
        try:
            ns = vars(mod)
        except TypeError:
            continue
        for name, value in list(ns.items()):
            assert id(value) not in wrappers, (getattr(mod, "__name__", mod), name)
            assert value is not profiler._counting_make_result or ns is vars(profiler), name
    assert ops.make_result is nn.make_result is sparse.make_result is _tensor.make_result


# ---- rows and cost models ---------------------------------------------------------------------------------------

def test_adam_rows_group_by_shapes_not_step_scalars_and_have_a_cost():
    tg.manual_seed(0)
    lin = tg.Linear(6, 5)
    opt = tg.optim.Adam(lin.parameters(), lr=0.01)
    x = tg.tensor(np.ones((4, 6), np.float32))

    def step():
        opt.zero_grad()
        (lin(x) ** 2).mean().backward()
        opt.step()
    step()
    with tg.profile() as prof:
        for _ in range(10):
            step()
    adam = _rows(prof, kind="kernel", name="adam_step")
    assert len(adam) == 2 and all(r["calls"] == 10 for r in adam)  # weight and bias, not one row per step
    for r in adam:
        n = 30 if "[5, 6]" in r["signature"] else 5
        assert r["bytes"] == 10 * 7 * n * 4  # reads param, grad, m, v; writes param, m, v
        assert r["flops"] == 10 * 13 * n
        assert r["gbs"] > 0 and "float," in r["signature"] and "0.01" not in r["signature"]


def test_numbers_in_op_arguments_do_not_split_rows():
    x = tg.tensor(np.ones((3, 3), np.float32))
    with tg.profile() as prof:
        for s in (2.0, 3.0, 0.5):
            x * s
    (row,) = _rows(prof, name="mul")
    assert row["calls"] == 3 and row["signature"] == "(float32[3, 3], float)"


def test_lstm_cell_bwd_bytes_are_its_reads_and_writes():
    B, H = 4, 6
    rng = np.random.default_rng(0)
    gates = rng.random((B, 4 * H), dtype=np.float32)
    c_prev, c, gh, gc = (rng.random((B, H), dtype=np.float32) for _ in range(4))
    tg.kernels.lstm_cell_bwd(gates, c_prev, c, gh, gc)
    with tg.profile() as prof:
        tg.kernels.lstm_cell_bwd(gates, c_prev, c, gh, gc)
    (row,) = _rows(prof, kind="kernel", name="lstm_cell_bwd")
    # reads gates (4BH), c_prev, c, grad_h, grad_c; writes grad_z (4BH) and grad_c_prev
    assert row["bytes"] == (4 + 4 + 4 + 1) * B * H * 4


# ---- the trace --------------------------------------------------------------------------------------------------

def test_chrome_trace_of_a_profile_without_trace_raises(tmp_path):
    with tg.profile(trace=False) as prof:
        tg.relu(tg.tensor(np.ones(3, np.float32)))
    with pytest.raises(RuntimeError, match="trace=False"):
        prof.export_chrome_trace(str(tmp_path / "t.json"))
    assert not (tmp_path / "t.json").exists()


def test_chrome_trace_of_an_empty_profile_warns(tmp_path):
    with tg.profile() as prof:
        pass
    with pytest.warns(RuntimeWarning, match="no kernel or op"):
        prof.export_chrome_trace(str(tmp_path / "t.json"))


def test_events_past_the_cap_are_counted_and_marked(tmp_path, monkeypatch):
    monkeypatch.setattr(profiler, "_MAX_EVENTS", 5)
    x = tg.tensor(np.ones(3, np.float32))
    with tg.profile() as prof:
        for _ in range(8):
            tg.relu(x)
    assert len(prof.events) == 5 and prof.events_dropped == 3
    assert _rows(prof, name="relu")[0]["calls"] == 8
    assert "3 events past the cap of 5 were dropped" in prof.table(with_peak=False)
    path = tmp_path / "t.json"
    with pytest.warns(RuntimeWarning, match="3 later ones were dropped"):
        prof.export_chrome_trace(str(path))
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    assert events[-1]["ph"] == "i" and "truncated" in events[-1]["name"]
