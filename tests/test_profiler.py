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
    assert row["calls"] == 4
    assert row["compile_s"] > 0.01  # compiling even a tiny njit function takes tens of ms
    assert row["run_s"] < row["compile_s"]
    assert row["mean_s"] == pytest.approx(row["run_s"] / 4)
    assert abs(row["total_s"] - row["compile_s"] - row["run_s"]) < 1e-12


def test_table_sorted_by_total_time_with_columns():
    model, x, ei, y = _gcn_setup()
    _gcn_epoch(model, x, ei, y)
    with tg.profile() as prof:
        _gcn_epoch(model, x, ei, y)
    totals = [r["total_s"] for r in prof.rows()]
    assert totals == sorted(totals, reverse=True)
    text = prof.table()
    head = text.splitlines()[0]
    for col in ("kind", "name", "backend", "calls", "total ms", "mean us", "jit ms", "GB/s", "GFLOP/s",
                "%bw", "%gemm", "shapes"):
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
    keys = {"kind", "name", "backend", "signature", "calls", "total_s", "compile_s", "run_s", "mean_s",
            "bytes", "flops", "gbs", "gflops", "frac_bandwidth", "frac_gemm"}
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
