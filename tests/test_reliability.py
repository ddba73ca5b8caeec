"""Reliability: flat memory over long training, 10,000-step BPTT, clipping that names its culprit,
bitwise determinism (in-process, across processes, across threads) and anomaly detection that names
the first bad op.

The long runs happen in subprocesses (a clean resident-memory measurement, no other test's arrays);
they import this file for the workloads, so the in-process and subprocess runs are the same code.
"""
import json
import math
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.apps.charrnn import CharLSTM, make_streams, n_windows, sequence_loss, window
from tapegrad.datasets import load_planetoid, load_text, row_normalize
from tapegrad.engine.nn import cross_entropy
from tapegrad.layers.tbptt import detach_state

HERE = os.path.dirname(os.path.abspath(__file__))
# GNU OpenMP's busy-waiting workers made a GCN step on Cora ~20x slower (35 ms instead of 1.7 ms) on a
# shared 2-core machine; passive waiting changes the speed of the subprocesses, not their results.
SUBPROCESS_ENV = {**os.environ, "OMP_WAIT_POLICY": "passive"}


# These tests reseed freely; the thread's generator is given back as it was, for the tests after them.
pytestmark = pytest.mark.usefixtures("keep_callers_generator")


# ---- workloads (also run by the subprocesses) ---------------------------------------------------------------

_CORA = None


def cora():
    global _CORA
    if _CORA is None:
        data = load_planetoid("cora")
        _CORA = (data, row_normalize(data.x))
    return _CORA


def small_graph():
    rng = np.random.default_rng(0)
    n = 50
    adj = rng.random((n, n)) < 0.1
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    A = tg.CSR.from_edge_index(np.array(np.nonzero(adj)), num_nodes=n)
    return A, rng.standard_normal((n, 12)).astype(np.float32), rng.integers(0, 3, n)


def gcn_workload(seed, graph="cora"):
    """(model, train_step(), forward_only()) for Kipf & Welling's GCN (dropout 0.5, Adam)."""
    tg.manual_seed(seed)
    if graph == "cora":
        data, x = cora()
        A, y, idx = data.A, data.y, data.train_idx
        model = tg.GCN(data.num_features, 16, data.num_classes, dropout=0.5, cached=True)
    else:
        A, x, y = small_graph()
        idx = np.arange(len(y))
        model = tg.GCN(12, 8, 3, dropout=0.5, cached=True)
    opt = tg.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)

    def train_step():
        opt.zero_grad()
        loss = cross_entropy(model(x, A), y, idx)
        loss.backward()
        opt.step()

    def forward_only():  # recorded (grad mode on), never backpropagated, dropped by the caller
        return cross_entropy(model(x, A), y, idx)
    return model, train_step, forward_only


def lstm_workload(seed, num_layers=1, dropout=0.0, hidden=32, batch=8, seq_len=16):
    """(model, train_step(), forward_only()) for the char-LSTM app's model: windows of Tiny Shakespeare
    with the state carried (detached) from one window to the next, clipping and Adam."""
    tg.manual_seed(seed)
    ids = np.asarray(load_text("tinyshakespeare").data[:20_000], dtype=np.int64)
    streams = make_streams(ids, batch)
    nw = n_windows(streams, seq_len)
    model = CharLSTM(int(ids.max()) + 1, hidden_size=hidden, embed_size=16, num_layers=num_layers)
    if dropout:
        model.lstm.dropout = dropout
    opt = tg.optim.Adam(model.parameters(), lr=3e-3)
    box = {"k": 0, "state": None}

    def train_step():
        x, y = window(streams, box["k"] % nw, seq_len)
        box["k"] += 1
        opt.zero_grad()
        loss, state = sequence_loss(model, x, y, box["state"])
        loss.backward()
        tg.optim.clip_grad_norm(model.named_parameters(), 5.0)
        opt.step()
        box["state"] = detach_state(state)

    def forward_only():
        x, y = window(streams, box["k"] % nw, seq_len)
        box["k"] += 1
        return sequence_loss(model, x, y, None)[0]
    return model, train_step, forward_only


WORKLOADS = {"gcn": gcn_workload, "lstm": lstm_workload,
             "lstm-dropout": lambda seed: lstm_workload(seed, num_layers=2, dropout=0.3),
             "lstm-2layer": lambda seed: lstm_workload(seed, num_layers=2)}


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_run(name, mode, iterations=1000):
    """RSS after iteration 50 and after the last one (and every 50 in between), as a dict."""
    _, train_step, forward_only = WORKLOADS[name](0)
    fn = train_step if mode == "train" else forward_only
    kept = []  # mode "leak": keep every forward's output, and so its graph, to show the probe sees it
    series = {}
    for i in range(1, iterations + 1):
        out = fn()
        if mode == "leak":
            kept.append(out)
        if i % 50 == 0:
            series[i] = rss_bytes()
    return {"rss_50": series[50], "rss_last": series[iterations], "series": series}


def train_params(name, seed, steps):
    model, train_step, _ = WORKLOADS[name](seed)
    for _ in range(steps):
        train_step()
    return model.state_dict()


def run_in_subprocesses(calls):
    """Run ``calls`` ([(function name, args)]) each in its own fresh interpreter, all at once; their
    JSON-printed results in order."""
    code = ("import sys, json; sys.path.insert(0, {here!r}); import test_reliability as T; "
            "print('RESULT', json.dumps(getattr(T, {fn!r})(*{args!r})))")
    procs = [subprocess.Popen([sys.executable, "-c", code.format(here=HERE, fn=fn, args=tuple(args))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=SUBPROCESS_ENV)
             for fn, args in calls]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-3000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
        out.append(json.loads(line[len("RESULT "):]))
    return out


def save_params(name, seed, steps, path):
    np.savez(path, **train_params(name, seed, steps))
    return path


# ---- memory ---------------------------------------------------------------------------------------------------

def test_memory_is_flat_over_1000_iterations_of_training_and_of_forward_only():
    names = [("gcn", "train"), ("gcn", "forward"), ("lstm", "train"), ("lstm", "forward")]
    results = run_in_subprocesses([("memory_run", (n, m)) for n, m in names] + [("memory_run", ("gcn", "leak", 150))])
    report = []
    for (n, m), r in zip(names + [("gcn", "leak")], results):
        growth = r["rss_last"] / r["rss_50"] - 1
        report.append(f"{n} {m}: RSS {r['rss_50'] / 2**20:.1f} MiB at 50, {r['rss_last'] / 2**20:.1f} MiB "
                      f"at the end ({100 * growth:+.2f}%)")
    print("\n".join(report))
    for r, line in zip(results, report[:-1]):
        assert r["rss_last"] < 1.05 * r["rss_50"], line
    # the probe works: keeping 150 forward graphs alive (dropout masks, activations) shows up plainly
    assert results[-1]["rss_last"] > 1.2 * results[-1]["rss_50"], report[-1]


# ---- BPTT and clipping ----------------------------------------------------------------------------------------

def test_lstm_bptt_through_10000_steps_has_no_recursion_error_and_matches_torch():
    """tests/test_rnn.py covers the Elman RNN; this is the LSTM layer, checked against torch."""
    torch = pytest.importorskip("torch")
    T, I, H = 10_000, 2, 3
    tg.manual_seed(3)
    lstm = tg.LSTM(I, H, dtype=np.float64)
    x = np.random.default_rng(3).standard_normal((T, 1, I))
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default: a recursive walk of the tape would fail
    try:
        out, (h_n, c_n) = lstm(x)
        ((out * out).sum() + c_n.sum()).backward()
    finally:
        sys.setrecursionlimit(limit)
    ref = torch.nn.LSTM(I, H).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.from_numpy(getattr(lstm, name).data))
    tout, (_, tc) = ref(torch.from_numpy(x))
    ((tout * tout).sum() + tc.sum()).backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, p in ref.named_parameters():
        g = getattr(lstm, name).grad
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


class TwoPart(tg.Module):
    """An LSTM body registered before a Linear head, so the head is not the first parameter."""

    def __init__(self):
        super().__init__(np.float32)
        self.body = tg.LSTM(3, 4, dtype=np.float32)
        self.head = tg.Linear(5, 2, dtype=np.float32)


def test_clip_grad_norm_on_named_parameters_reports_the_total_norm():
    tg.manual_seed(0)
    model = TwoPart()
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    z = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    out, _ = model.body(x)
    ((out * out).sum() * 50 + (model.head(z) ** 2).sum()).backward()
    grads = {n: p.grad.astype(np.float64) for n, p in model.named_parameters()}
    expect = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    total = tg.optim.clip_grad_norm(model.named_parameters(), 1.0)
    assert expect > 1.0  # the clipping did something
    assert float(total) == pytest.approx(expect, rel=1e-6)  # a float32 0-d tensor, as torch returns
    after = math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))
    assert after == pytest.approx(1.0, rel=1e-5)
    for n, p in model.named_parameters():  # one common factor
        np.testing.assert_allclose(p.grad, grads[n] / (expect + 1e-6), rtol=1e-6, err_msg=n)


def test_clip_grad_norm_names_the_parameter_whose_gradient_went_non_finite():
    tg.manual_seed(0)
    model = TwoPart()
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    model.head.weight.data[...] = 1e-20
    z = np.full((7, 5), 1e30, np.float32)
    out, _ = model.body(x)
    # the head's output (5e10) and the loss (~1e22) are finite, but head.weight's gradient,
    # 1e10 * sum(z) = 7e40, overflows float32; the body's gradients stay finite
    loss = (out * out).sum() + (model.head(z) * 1e10).sum()
    assert np.isfinite(loss.item())
    with np.errstate(over="ignore"):
        loss.backward()
    bad = [n for n, p in model.named_parameters() if not np.isfinite(p.grad).all()]
    assert bad and bad[0].startswith("head."), bad
    assert all(np.isfinite(p.grad).all() for n, p in model.named_parameters() if n.startswith("body."))
    before = {n: p.grad.copy() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=bad[0].replace(".", r"\.")):
        tg.optim.clip_grad_norm(model.named_parameters(), 1.0, error_if_nonfinite=True)
    for n, p in model.named_parameters():  # nothing was scaled
        np.testing.assert_array_equal(p.grad, before[n])


# ---- determinism ----------------------------------------------------------------------------------------------

def assert_same_params(a, b):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.mark.parametrize("name,steps", [("gcn", 8), ("lstm-dropout", 20)])
def test_same_seed_gives_bitwise_identical_parameters_in_process(name, steps):
    a = train_params(name, 11, steps)
    b = train_params(name, 11, steps)
    assert_same_params(a, b)
    c = train_params(name, 12, steps)  # the seed matters (init and dropout masks)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    if name == "lstm-dropout":  # and the dropout between the layers really ran
        d = train_params("lstm-2layer", 11, steps)
        assert any(not np.array_equal(a[k], d[k]) for k in a)


def test_same_seed_gives_bitwise_identical_parameters_in_two_processes(tmp_path):
    calls = [("save_params", (name, 11, steps, str(tmp_path / f"{name}-{i}.npz")))
             for name, steps in (("gcn", 8), ("lstm-dropout", 20)) for i in range(2)]
    run_in_subprocesses(calls)
    for name, steps in (("gcn", 8), ("lstm-dropout", 20)):
        with np.load(tmp_path / f"{name}-0.npz") as f0, np.load(tmp_path / f"{name}-1.npz") as f1:
            a, b = dict(f0), dict(f1)
        assert_same_params(a, b)
        assert_same_params(a, train_params(name, 11, steps))  # and the same as this process


@pytest.mark.parametrize("pair", [("gcn", "lstm-dropout"), ("gcn", "gcn"), ("lstm-dropout", "lstm-dropout")])
def test_two_threads_training_at_once_match_training_one_after_the_other(pair):
    """Each thread seeds its own generator (tg.manual_seed is per thread) and builds its own model."""
    jobs = [(pair[0], 21, 6 if pair[0] == "gcn" else 15), (pair[1], 22, 6 if pair[1] == "gcn" else 15)]
    small = {"gcn": lambda seed: gcn_workload(seed, graph="small")}

    def train(name, seed, steps, spans=None, barrier=None):
        model, train_step, _ = small.get(name, WORKLOADS[name])(seed)
        if barrier is not None:
            barrier.wait()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step()
        if spans is not None:
            spans.append((t0, time.perf_counter()))
        return model.state_dict()

    sequential = [train(*job) for job in jobs]
    tg.manual_seed(999)  # the main thread's generator must not matter to the threads

    results, errors, spans = [None, None], [], []
    barrier = threading.Barrier(2)

    def worker(i):
        try:
            results[i] = train(*jobs[i], spans=spans, barrier=barrier)
        except BaseException as e:  # noqa: BLE001  reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    # A small GCN trains in about 2 ms, less than the interpreter's 5 ms thread switch interval: switch
    # often, so that the two trainings do interleave rather than run one after the other by chance.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    (s0, e0), (s1, e1) = spans
    assert s0 < e1 and s1 < e0, "the two trainings did not overlap"
    for seq, par in zip(sequential, results):
        assert_same_params(seq, par)


# ---- anomaly detection ----------------------------------------------------------------------------------------

def test_detect_anomaly_names_the_first_forward_op_not_the_ones_after_it():
    w = tg.tensor(np.array([[1.0, -2.0]]), requires_grad=True)
    x = tg.tensor(np.array([[1.0], [2.0]]))
    with tg.detect_anomaly():
        with np.errstate(invalid="ignore"), pytest.raises(FloatingPointError) as e:
            h = x @ w                         # [[1, -2], [2, -4]]: finite
            y = tg.log(h)                     # NaN for the negatives: the culprit
            (tg.exp(y) * 2).sum()             # would be NaN too
    assert "forward of log" in str(e.value)
    assert "exp" not in str(e.value) and "mul" not in str(e.value)
    with np.errstate(invalid="ignore"):       # outside the block the same code runs silently
        assert np.isnan((tg.exp(tg.log(x @ w)) * 2).sum().item())


def test_detect_anomaly_names_a_div_whose_backward_overflows():
    a = tg.tensor(np.full(3, 1e-10), requires_grad=True)
    b = tg.tensor(np.full(3, 1e-310), requires_grad=True)
    with tg.detect_anomaly():
        out = (a / b * 1e-300).sum()          # forward: 1e300 * 1e-300, all finite
        assert out.item() == pytest.approx(3.0)
        with np.errstate(over="ignore"), pytest.raises(FloatingPointError, match="the backward of div"):
            out.backward()                    # d/db = -grad * (a / b) / b = -1 / 1e-310: inf


def test_detect_anomaly_names_the_first_backward_op_in_a_chain():
    x = tg.tensor(np.array([0.0, 4.0]), requires_grad=True)
    with tg.detect_anomaly():
        loss = ((x * 3.0) ** 0.5 * 2.0).sum()  # sqrt at 0: finite forward, inf derivative
        with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(FloatingPointError) as e:
            loss.backward()
    # backward meets sum, mul(2), pow, mul(3): pow is the first to produce inf; mul(3) would pass it on
    assert "the backward of pow" in str(e.value)


def test_detect_anomaly_in_a_model_names_the_op_after_the_lstm():
    tg.manual_seed(0)
    lstm = tg.LSTM(2, 3, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((5, 1, 2))
    with tg.detect_anomaly():
        out, _ = lstm(x)                      # in (-1, 1): fine
        with np.errstate(invalid="ignore"), pytest.raises(FloatingPointError, match="forward of log"):
            tg.log(out).sum()                 # log of the negative outputs
