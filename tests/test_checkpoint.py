"""tapegrad.save / tapegrad.load: bit-exact round trips of models and optimiser state, resumed training,
atomic writes (a writer killed mid-save), and clear errors that change nothing."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine.nn import cross_entropy
from tapegrad.layers import checkpoint

# A subprocess that runs Numba parallel kernels: GNU OpenMP's busy-waiting workers made a GCN step
# ~20x slower on a shared 2-core machine; passive waiting changes the speed, not the results.
SUBPROCESS_ENV = {**os.environ, "OMP_WAIT_POLICY": "passive"}


# These tests reseed freely; the thread's generator is given back as it was, for the tests after them.
pytestmark = pytest.mark.usefixtures("keep_callers_generator")


# ---- models -------------------------------------------------------------------------------------------------

def small_graph(dtype):
    rng = np.random.default_rng(0)
    n = 40
    adj = rng.random((n, n)) < 0.1
    adj = adj | adj.T
    np.fill_diagonal(adj, False)
    A = tg.CSR.from_edge_index(np.array(np.nonzero(adj)), num_nodes=n)
    x = rng.standard_normal((n, 10)).astype(dtype)
    y = rng.integers(0, 3, n)
    return A, x, y


class TinyLM(tg.Module):
    """Embedding -> 2-layer LSTM (dropout between the layers) -> Linear."""

    def __init__(self, vocab=11, dropout=0.3, dtype=np.float32):
        super().__init__(dtype)
        self.embedding = tg.Embedding(vocab, 6, dtype=dtype)
        self.lstm = tg.LSTM(6, 8, num_layers=2, dropout=dropout, batch_first=True, dtype=dtype)
        self.fc = tg.Linear(8, vocab, dtype=dtype)

    def forward(self, ids):
        out, _ = self.lstm(self.embedding(ids))
        b, t, h = out.shape
        return self.fc(out.reshape(b * t, h))


def make(kind, dtype, opt_name, seed=0, dropout=0.5):
    """(model, optimizer, step(i)) for a GCN or an LSTM language model; step(i) reseeds with 100 + i so
    the dropout masks of iteration i do not depend on what ran before (how a resumed run meets them)."""
    tg.manual_seed(seed)
    if kind == "gcn":
        A, x, y = small_graph(dtype)
        model = tg.GCN(10, 8, 3, dropout=dropout, cached=True, dtype=dtype)

        def loss_fn():
            return cross_entropy(model(x, A), y)
    else:
        ids = np.random.default_rng(1).integers(0, 11, (3, 9))
        model = TinyLM(dropout=dropout, dtype=dtype)

        def loss_fn():
            return cross_entropy(model(ids[:, :-1]), ids[:, 1:].reshape(-1))
    if opt_name == "adam":
        opt = tg.optim.Adam(model.parameters(), lr=0.05, betas=(0.8, 0.95), weight_decay=1e-3)
    else:
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)

    def step(i):
        tg.manual_seed(100 + i)
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return model, opt, step


def params_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def snapshot(model, opt):
    """Everything load() could change: parameter arrays (object and values), grads, optimiser state."""
    return {
        "data": [(p.data, p.data.copy()) for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.copy() for p in model.parameters()],
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] if opt else None,
        "state": opt.state_dict() if opt else None,
    }


def assert_unchanged(model, opt, snap):
    for p, (obj, values) in zip(model.parameters(), snap["data"]):
        assert p.data is obj
        np.testing.assert_array_equal(p.data, values)
    for p, g in zip(model.parameters(), snap["grad"]):
        if g is None:
            assert p.grad is None
        else:
            np.testing.assert_array_equal(p.grad, g)
    if opt is not None:
        assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == snap["groups"]
        assert_state_equal(opt.state_dict(), snap["state"])


def assert_state_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- round trips ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["gcn", "lstm"])
def test_round_trip_is_bit_exact_and_training_resumes_identically(tmp_path, kind, dtype, opt_name):
    path = tmp_path / "ck.npz"
    model, opt, step = make(kind, dtype, opt_name)
    for i in range(3):
        step(i)
    tg.save(path, model, opt)
    saved_params, saved_state = params_of(model), opt.state_dict()
    saved_groups = [dict(g) for g in opt.param_groups]
    for i in range(3, 6):  # the uninterrupted run
        step(i)

    model2, opt2, step2 = make(kind, dtype, opt_name, seed=7)  # other initial weights
    before = params_of(model2)
    assert any(not np.array_equal(before[k], saved_params[k]) for k in before)
    tg.load(path, model2, opt2)
    for k, v in model2.state_dict().items():
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(v, saved_params[k], err_msg=k)
    state2 = opt2.state_dict()
    assert_state_equal(state2, saved_state)
    names = {k.split(".", 1)[1] for k in state2 if k.startswith("param")}
    assert names == ({"step", "exp_avg", "exp_avg_sq"} if opt_name == "adam" else {"momentum_buffer"})
    if opt_name == "adam":
        assert all(int(v) == 3 for k, v in state2.items() if k.endswith(".step"))
        assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    for g2, g in zip(opt2.param_groups, saved_groups):
        assert {k: v for k, v in g2.items() if k != "params"} == {k: v for k, v in g.items() if k != "params"}
    # the optimiser state is bound to the new model's parameters, not copied into some other place
    assert {id(p) for p in opt2.state} == {id(p) for p in model2.parameters()}

    for i in range(3, 6):  # resumed
        step2(i)
    for k, v in model2.state_dict().items():
        np.testing.assert_array_equal(v, model.state_dict()[k], err_msg=k)


def test_file_is_a_plain_npz_without_pickle(tmp_path):
    model, opt, step = make("lstm", np.float32, "adam")
    step(0)
    path = tmp_path / "ck.npz"
    tg.save(path, model, opt)
    with np.load(path, allow_pickle=False) as f:
        files = set(f.files)
        assert all(f[k].dtype != object for k in files)
        assert str(f["format"]) == checkpoint.FORMAT
        np.testing.assert_array_equal(f["model/lstm.weight_hh_l1"], model.lstm.weight_hh_l1.data)
    assert {k for k in files if k.startswith("model/")} == {f"model/{n}" for n, _ in model.named_parameters()}
    assert "optim/param0.exp_avg" in files and "optim/group0.lr" in files
    assert not [p for p in os.listdir(tmp_path) if p != "ck.npz"], "a temporary file was left behind"


def test_save_without_optimizer_then_load_with_one_is_an_error(tmp_path):
    model, opt, step = make("gcn", np.float64, "adam")
    step(0)
    tg.save(tmp_path / "m.npz", model)
    other, opt2, step2 = make("gcn", np.float64, "adam", seed=3)
    step2(0)
    snap = snapshot(other, opt2)
    with pytest.raises(ValueError, match="no optimizer state"):
        tg.load(tmp_path / "m.npz", other, opt2)
    assert_unchanged(other, opt2, snap)
    tg.load(tmp_path / "m.npz", other)  # the model alone loads
    assert_state_equal(other.state_dict(), model.state_dict())


def test_saved_file_mode_follows_the_umask_and_an_overwrite_keeps_the_mode(tmp_path):
    model, _, _ = make("gcn", np.float32, "sgd")
    old = os.umask(0o022)
    try:
        tg.save(tmp_path / "a.npz", model)
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.npz").st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    os.chmod(tmp_path / "a.npz", 0o640)
    tg.save(tmp_path / "a.npz", model)
    assert os.stat(tmp_path / "a.npz").st_mode & 0o777 == 0o640


def test_a_save_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    model, opt, step = make("lstm", np.float64, "sgd")
    step(0)
    path = tmp_path / "ck.npz"
    tg.save(path, model, opt)
    good = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        tg.save(path, model, opt)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.npz"]


# ---- bad files: a clear error, and nothing changes -------------------------------------------------------------

@pytest.fixture
def trained_and_other(tmp_path):
    """A checkpoint of a trained GCN + Adam, and another trained GCN + Adam to load it into."""
    model, opt, step = make("gcn", np.float32, "adam")
    for i in range(2):
        step(i)
    path = tmp_path / "ck.npz"
    tg.save(path, model, opt)
    other, opt2, step2 = make("gcn", np.float32, "adam", seed=5)
    step2(0)
    other.convs[0].lin.weight.grad = np.ones_like(other.convs[0].lin.weight.data)  # grads survive too
    return path, model, opt, other, opt2


def test_truncated_files_raise_value_error_and_change_nothing(trained_and_other):
    path, model, opt, other, opt2 = trained_and_other
    good = path.read_bytes()
    snap = snapshot(other, opt2)
    bad = path.with_name("bad.npz")
    rng = np.random.default_rng(0)
    cuts = [0, 1, 4, 30, len(good) // 2, len(good) - 22, len(good) - 1] + list(rng.integers(1, len(good), 20))
    for cut in cuts:
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            tg.load(bad, other, opt2)
        assert_unchanged(other, opt2, snap)


def test_corrupted_bytes_raise_value_error_or_load_the_exact_original(trained_and_other):
    """Flipping any byte either is caught (CRC, zip structure, npy header) or touched only metadata that
    does not matter (a timestamp); it never loads different numbers."""
    path, model, opt, other, opt2 = trained_and_other
    good = bytearray(path.read_bytes())
    bad = path.with_name("bad.npz")
    rng = np.random.default_rng(1)
    caught = 0
    for pos in rng.choice(len(good), 150, replace=False):
        other2, opt3, step3 = make("gcn", np.float32, "adam", seed=9)
        step3(0)
        snap = snapshot(other2, opt3)
        corrupt = bytearray(good)
        corrupt[pos] ^= 1 << int(rng.integers(8))
        bad.write_bytes(bytes(corrupt))
        try:
            tg.load(bad, other2, opt3)
        except ValueError as e:
            assert "truncated or corrupted" in str(e) or "not a tapegrad checkpoint" in str(e), e
            assert_unchanged(other2, opt3, snap)
            caught += 1
        else:
            assert_state_equal(other2.state_dict(), model.state_dict())
            assert_state_equal(opt3.state_dict(), opt.state_dict())
    assert caught > 100  # almost every byte of the file is data or structure


def test_files_that_are_not_checkpoints(tmp_path, trained_and_other):
    _, _, _, other, opt2 = trained_and_other
    snap = snapshot(other, opt2)
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    np.save(tmp_path / "single.npy", np.ones(3))
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "pickled.npz", format=np.array(checkpoint.FORMAT), obj=np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "wrongformat.npz", format=np.array("tapegrad-checkpoint-999"))
    for name, match in [("plain.npz", "not a tapegrad checkpoint"), ("single.npy", "not a readable"),
                        ("empty.npz", "not a readable"), ("text.npz", "not a readable"),
                        ("pickled.npz", "not a readable"), ("wrongformat.npz", "not a tapegrad checkpoint")]:
        with pytest.raises(ValueError, match=match):
            tg.load(tmp_path / name, other, opt2)
        assert_unchanged(other, opt2, snap)
    with pytest.raises(FileNotFoundError):
        tg.load(tmp_path / "missing.npz", other, opt2)


def test_a_checkpoint_of_another_model_or_optimizer_changes_nothing(tmp_path, trained_and_other):
    path, model, opt, other, opt2 = trained_and_other
    snap = snapshot(other, opt2)
    # another architecture
    lm, lm_opt, lm_step = make("lstm", np.float32, "adam")
    lm_step(0)
    tg.save(tmp_path / "lm.npz", lm, lm_opt)
    with pytest.raises(RuntimeError, match="Missing key.*convs.0.bias.*\n.*Unexpected key.*embedding.weight"):
        tg.load(tmp_path / "lm.npz", other, opt2)
    assert_unchanged(other, opt2, snap)
    # the model fits but the optimiser's state is SGD's: the model must not be loaded alone
    sgd = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tg.save(tmp_path / "sgd.npz", model, sgd)
    with pytest.raises(KeyError, match="momentum"):
        tg.load(tmp_path / "sgd.npz", other, opt2)
    assert_unchanged(other, opt2, snap)
    # an optimiser over fewer parameters than the checkpoint's
    small_opt = tg.optim.Adam(list(other.parameters())[:1], lr=0.01)
    small_snap = snapshot(other, small_opt)
    with pytest.raises(KeyError, match="parameters"):
        tg.load(path, other, small_opt)
    assert_unchanged(other, small_opt, small_snap)
    # right names, wrong shape: of a moment, then of a parameter
    for key, error, match in (("optim/param1.exp_avg", ValueError, "shape"),
                              ("model/convs.1.bias", RuntimeError, "size mismatch for convs.1.bias")):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays[key] = arrays[key][:-1]
        np.savez(tmp_path / "shape.npz", **arrays)
        with pytest.raises(error, match=match):
            tg.load(tmp_path / "shape.npz", other, opt2)
        assert_unchanged(other, opt2, snap)


def test_a_checkpoint_with_non_finite_parameters_loads_as_torch_would(tmp_path, trained_and_other):
    """A diverged run's last checkpoint, kept for inspection, loads (audit finding 5)."""
    path, model, opt, other, opt2 = trained_and_other
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["model/convs.1.bias"] = arrays["model/convs.1.bias"] * np.nan
    arrays["model/convs.0.lin.weight"][0, 0] = -np.inf
    np.savez(tmp_path / "nan.npz", **arrays)
    tg.load(tmp_path / "nan.npz", other, opt2)
    assert np.isnan(other.convs[1].bias.data).all()
    assert other.convs[0].lin.weight.data[0, 0] == -np.inf
    np.testing.assert_array_equal(other.convs[0].lin.weight.data.ravel()[1:],
                                  model.convs[0].lin.weight.data.ravel()[1:])
    # and what save() writes, load() reads back
    m = tg.Linear(2, 2)
    m.weight.data[0, 0] = np.inf
    tg.save(tmp_path / "inf.npz", m)
    m2 = tg.Linear(2, 2)
    tg.load(tmp_path / "inf.npz", m2)
    np.testing.assert_array_equal(m2.weight.data, m.weight.data)


def test_a_weight_tied_model_round_trips(tmp_path):
    class Tied(tg.Module):
        def __init__(self):
            super().__init__()
            self.enc = tg.Embedding(10, 4)
            self.dec = tg.Linear(4, 10, bias=False)
            self.dec.weight = self.enc.weight

    a, b = Tied(), Tied()
    opt = tg.optim.Adam(a.parameters(), lr=0.1)
    a.enc.weight.grad = np.ones((10, 4), np.float32)
    opt.step()
    tg.save(tmp_path / "tied.npz", a, opt)
    opt_b = tg.optim.Adam(b.parameters(), lr=0.1)
    tg.load(tmp_path / "tied.npz", b, opt_b)
    assert b.dec.weight is b.enc.weight
    np.testing.assert_array_equal(b.enc.weight.data, a.enc.weight.data)


def test_a_corrupted_member_name_is_caught(tmp_path, trained_and_other):
    """A flipped bit that renames a member in the central directory to another member's name would
    hide one of the twins from a by-name read (zipfile.testzip included)."""
    path, model, opt, other, opt2 = trained_and_other
    good = bytearray(path.read_bytes())
    tail = good.rindex(b"optim/param2.step.npy")  # the central directory's copy of the name
    good[tail + len("optim/param")] = ord("3")
    (tmp_path / "twins.npz").write_bytes(bytes(good))
    snap = snapshot(other, opt2)
    with pytest.raises(ValueError, match="same name"):
        tg.load(tmp_path / "twins.npz", other, opt2)
    assert_unchanged(other, opt2, snap)


def test_optimizer_load_state_dict_is_atomic():
    model, opt, step = make("gcn", np.float64, "adam")
    step(0)
    snap = snapshot(model, opt)
    good = opt.state_dict()
    bad_entries = [("param99.exp_avg", np.zeros(2), KeyError), ("param0.bogus", np.zeros(2), KeyError),
                   ("param0.exp_avg", np.zeros(2), ValueError), ("param0.step", np.array(1.5), ValueError),
                   ("group7.lr", np.array(1.0), KeyError), ("nonsense", np.array(1.0), KeyError)]
    for key, value, err in bad_entries:
        # valid entries first (a new lr, zeroed moments), then the bad one: none of them may be applied
        state = {**{k: (np.zeros_like(v) if "exp_avg" in k else v) for k, v in good.items()},
                 "group0.lr": np.array(123.0), key: value}
        with pytest.raises(err):
            opt.load_state_dict(state)
        assert opt.param_groups[0]["lr"] == 0.05
        assert_unchanged(model, opt, snap)


# ---- a writer killed mid-save ---------------------------------------------------------------------------------

BIG_SHAPES = {"a": (4096, 2048), "b": (2048, 2048), "c": (1000,)}  # 50 MB of float32


class Big(tg.Module):
    def __init__(self):
        super().__init__()
        for name, shape in BIG_SHAPES.items():
            setattr(self, name, self.new_parameter(shape))


WRITER = textwrap.dedent("""
    import sys, time
    import tapegrad as tg
    shapes = {shapes!r}

    class Big(tg.Module):
        def __init__(self):
            super().__init__()
            for name, shape in shapes.items():
                setattr(self, name, self.new_parameter(shape))

    path, version = sys.argv[1], int(sys.argv[2])
    model = Big()
    while True:
        version += 1
        for p in model.parameters():
            p.data[...] = version
        print("start", version, flush=True)
        t = time.perf_counter()
        tg.save(path, model)
        print("done", version, time.perf_counter() - t, flush=True)
""")


def test_a_writer_killed_mid_save_never_leaves_a_partial_checkpoint(tmp_path):
    path = tmp_path / "big.npz"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(shapes=BIG_SHAPES))
    model = Big()
    tg.save(path, model)  # version 0: all zeros
    full_size = os.path.getsize(path)
    version, rng = 0, np.random.default_rng(0)
    kills = mid_save = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(version)], stdout=subprocess.PIPE,
                                text=True, env=SUBPROCESS_ENV)
        started = done = version
        durations = []
        try:
            # let one or two saves complete (to time them), then kill at a random moment of the next
            wanted = int(rng.integers(2, 4))
            while True:
                line = proc.stdout.readline()
                assert line, "the writer died on its own"
                word, v, *rest = line.split()
                if word == "done":
                    done = int(v)
                    durations.append(float(rest[0]))
                    continue
                started = int(v)
                if started - version == wanted:
                    time.sleep(rng.uniform(0.0, 1.2 * max(durations)))
                    break
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        kills += 1
        for line in out.splitlines():
            word, v, *_ = line.split()
            if word == "done":
                done = max(done, int(v))
            else:
                started = max(started, int(v))
        mid_save += started > done
        assert proc.returncode == -signal.SIGKILL

        assert os.path.getsize(path) == full_size
        tg.load(path, model)  # raises if the file is partial
        values = {name: np.unique(p.data) for name, p in model.named_parameters()}
        loaded = int(values["a"][0])
        assert all(v.tolist() == [loaded] for v in values.values()), "a mix of versions"
        # the last completed version, or the one whose rename landed just before the kill
        assert loaded in (done, started), (loaded, done, started)
        assert loaded >= version
        version = loaded
    assert mid_save >= 2, f"only {mid_save} of {kills} kills landed during a save"
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]
    assert len(leftovers) <= kills  # a killed writer may leave its temporary file, never the target
