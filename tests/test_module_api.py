"""Module, Linear, Embedding and Dropout: PyTorch's API habits (load_state_dict's result and errors, tied
weights, attribute checks, the small helper methods), against torch where it is installed."""
import numpy as np
import pytest

import tapegrad as tg


def _torch():
    return pytest.importorskip("torch")


# ---- load_state_dict: result and errors (audit finding 3) -------------------------------------------------------

def test_load_state_dict_returns_torchs_named_tuple():
    torch = _torch()
    t, g = torch.nn.Linear(3, 2), tg.Linear(3, 2)
    sd = {"weight": np.zeros((2, 3), np.float32), "extra": np.zeros(1, np.float32)}
    rt = t.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    rg = g.load_state_dict(sd, strict=False)
    missing, unexpected = rg
    assert (missing, unexpected) == (rt.missing_keys, rt.unexpected_keys) == (["bias"], ["extra"])
    assert rg.missing_keys == ["bias"] and rg.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(g.weight.data, 0.0)
    ok = g.load_state_dict(g.state_dict())
    assert ok == ([], []) and repr(ok) == repr(t.load_state_dict(t.state_dict())) == "<All keys matched successfully>"


def test_strict_mismatches_raise_runtime_error_listing_everything_and_change_nothing():
    g = tg.Sequential(tg.Linear(3, 2), tg.Linear(2, 4))
    before = {k: v.copy() for k, v in g.state_dict().items()}
    bad = {"0.weight": np.zeros((3, 3)), "0.bias": np.zeros(2), "1.weight": np.zeros((4, 3)),
           "extra": np.zeros(1), "more": np.zeros(1)}
    with pytest.raises(RuntimeError) as e:
        g.load_state_dict(bad)
    msg = str(e.value)
    assert msg.startswith("Error(s) in loading state_dict for Sequential:")
    assert 'Missing key(s) in state_dict: "1.bias".' in msg
    assert 'Unexpected key(s) in state_dict: "extra", "more".' in msg
    assert "size mismatch for 0.weight: copying a param with shape (3, 3) from checkpoint, the shape in " \
           "current model is (2, 3)." in msg
    assert "size mismatch for 1.weight" in msg
    for k, v in g.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # strict=False still refuses shapes (as torch), but not names
    with pytest.raises(RuntimeError, match="size mismatch for 0.weight"):
        g.load_state_dict(bad, strict=False)
    assert g.load_state_dict({"1.bias": np.ones(4)}, strict=False).missing_keys == ["0.weight", "0.bias", "1.weight"]


def test_torch_raises_the_same_exception_type_for_the_same_mistakes():
    torch = _torch()
    t, g = torch.nn.Linear(3, 2), tg.Linear(3, 2)
    for sd in ({"weight": np.zeros((2, 3), np.float32)}, {"weight": np.zeros((3, 3), np.float32),
                                                          "bias": np.zeros(2, np.float32)}):
        with pytest.raises(RuntimeError):
            t.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
        with pytest.raises(RuntimeError):
            g.load_state_dict(sd)


# ---- tied weights (finding 4) ------------------------------------------------------------------------------------

class _TiedTorch:
    @staticmethod
    def make(torch):
        class TM(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = torch.nn.Embedding(10, 4)
                self.dec = torch.nn.Linear(4, 10, bias=False)
                self.dec.weight = self.enc.weight
        return TM()


class _Tied(tg.Module):
    def __init__(self):
        super().__init__()
        self.enc = tg.Embedding(10, 4)
        self.dec = tg.Linear(4, 10, bias=False)
        self.dec.weight = self.enc.weight


def test_tied_weights_state_dict_lists_every_name_and_loads_torchs():
    torch = _torch()
    t, g = _TiedTorch.make(torch), _Tied()
    assert list(g.state_dict()) == list(t.state_dict()) == ["enc.weight", "dec.weight"]
    assert [n for n, _ in g.named_parameters()] == [n for n, _ in t.named_parameters()] == ["enc.weight"]
    g.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    assert g.dec.weight is g.enc.weight
    np.testing.assert_array_equal(g.enc.weight.data, t.enc.weight.detach().numpy())


def test_tied_weights_that_disagree_take_the_last_name_as_torch():
    torch = _torch()
    t, g = _TiedTorch.make(torch), _Tied()
    a, b = np.ones((10, 4), np.float32), np.full((10, 4), 2.0, np.float32)
    t.load_state_dict({"enc.weight": torch.tensor(a), "dec.weight": torch.tensor(b)})
    g.load_state_dict({"enc.weight": a, "dec.weight": b})
    np.testing.assert_array_equal(g.enc.weight.data, t.enc.weight.detach().numpy())
    np.testing.assert_array_equal(g.enc.weight.data, b)
    # a dict with only one of the names: torch reports the other one missing
    missing = g.load_state_dict({"enc.weight": a}, strict=False).missing_keys
    assert missing == t.load_state_dict({"enc.weight": torch.tensor(a)}, strict=False).missing_keys == ["dec.weight"]
    np.testing.assert_array_equal(g.dec.weight.data, a)


def test_shared_child_module_is_listed_under_both_names_but_walked_once():
    torch = _torch()
    lin = tg.Linear(2, 2)
    s = tg.Sequential(lin, lin)
    tl = torch.nn.Linear(2, 2)
    ts = torch.nn.Sequential(tl, tl)
    assert list(s.state_dict()) == list(ts.state_dict())
    assert len(list(s.modules())) == len(list(ts.modules())) == 2
    assert [n for n, _ in s.named_modules()] == [n for n, _ in ts.named_modules()]
    assert len(list(s.parameters())) == len(list(ts.parameters())) == 2
    assert len(s) == len(ts) == 2


# ---- values: non-finite, half precision (findings 5, 15) ----------------------------------------------------------

def test_non_finite_values_load_as_in_torch():
    g = tg.Linear(2, 2)
    w = np.array([[np.inf, np.nan], [-np.inf, 1.0]], np.float32)
    g.load_state_dict({"weight": w, "bias": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(g.weight.data, w)


@pytest.mark.parametrize("tdtype", ["bfloat16", "float16", "float64"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduced_precision_torch_state_dicts_are_converted_to_the_parameter_dtype(tdtype, dtype):
    torch = _torch()
    t = torch.nn.Linear(3, 2).to(getattr(torch, tdtype))
    ref = torch.nn.Linear(3, 2).to(getattr(torch, {np.float32: "float32", np.float64: "float64"}[dtype]))
    ref.load_state_dict(t.state_dict())  # what torch makes of it
    g = tg.Linear(3, 2, dtype=dtype)
    g.load_state_dict(t.state_dict())
    assert g.weight.dtype == dtype
    np.testing.assert_array_equal(g.weight.data, ref.weight.detach().numpy())
    np.testing.assert_array_equal(g.bias.data, ref.bias.detach().numpy())


def test_a_non_numeric_entry_is_a_type_error_naming_the_key():
    torch = _torch()
    g = tg.Linear(3, 2)
    with pytest.raises(TypeError, match="weight"):
        g.load_state_dict({"weight": np.zeros((2, 3), complex), "bias": np.zeros(2)})
    with pytest.raises(TypeError, match="bias"):
        g.load_state_dict({"weight": np.zeros((2, 3)), "bias": torch.zeros(2, dtype=torch.complex64)})


# ---- attribute checks and modes (finding 13) ------------------------------------------------------------------------

def test_assigning_a_plain_tensor_to_a_parameter_raises_type_error_as_torch():
    torch = _torch()
    g, t = tg.Linear(2, 3), torch.nn.Linear(2, 3)
    with pytest.raises(TypeError):
        t.weight = torch.zeros(3, 2, requires_grad=True)
    with pytest.raises(TypeError, match="cannot assign Tensor as parameter 'weight'"):
        g.weight = tg.tensor(np.zeros((3, 2), np.float32), requires_grad=True)
    assert [n for n, _ in g.named_parameters()] == ["weight", "bias"]
    g.weight = tg.Parameter(np.zeros((3, 2), np.float32))  # a Parameter is fine
    g.bias = None  # so is None, as torch
    assert [n for n, _ in g.named_parameters()] == ["weight"]
    g.other = tg.tensor(np.zeros(2))  # a Tensor under a new name is a plain attribute
    assert [n for n, _ in g.named_parameters()] == ["weight"]


@pytest.mark.parametrize("mode", ["no", 1, None])
def test_train_needs_a_bool(mode):
    torch = _torch()
    with pytest.raises(ValueError):
        torch.nn.Linear(2, 2).train(mode)
    g = tg.Linear(2, 2)
    with pytest.raises(ValueError, match="bool"):
        g.train(mode)
    assert g.training is True
    assert g.train(False).training is False and g.train(np.bool_(True)).training is True


# ---- the small torch names (finding 14) ------------------------------------------------------------------------------

def _mlp():
    return tg.Sequential(tg.Linear(2, 3), tg.ReLU(), tg.Linear(3, 1))


def test_zero_grad_set_to_none_and_requires_grad_():
    m = _mlp()
    m(np.ones((4, 2), np.float32)).sum().backward()
    grads = [p.grad for p in m.parameters()]
    m.zero_grad(set_to_none=False)
    assert all(p.grad is g for p, g in zip(m.parameters(), grads))
    assert all(not p.grad.any() for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    assert m.requires_grad_(False) is m
    assert not any(p.requires_grad for p in m.parameters())
    m[0].requires_grad_()
    assert [p.requires_grad for p in m.parameters()] == [True, True, False, False]
    # frozen layers and the optimiser, the fine-tuning idiom
    opt = tg.optim.SGD(m.parameters(), lr=0.1)
    m(np.ones((4, 2), np.float32)).sum().backward()
    frozen = m[2].weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(m[2].weight.data, frozen)


def test_apply_visits_children_first_then_self_as_torch():
    torch = _torch()
    m = _mlp()
    t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    seen, tseen = [], []
    assert m.apply(lambda mod: seen.append(type(mod).__name__)) is m
    t.apply(lambda mod: tseen.append(type(mod).__name__))
    assert seen == tseen


def test_add_module_register_parameter_and_get_submodule():
    m = _mlp()
    m.add_module("head", tg.Linear(1, 1))
    assert m.get_submodule("head") is m.head
    assert m.get_submodule("0") is m[0] and m.get_submodule("") is m
    m.head.register_parameter("scale", tg.Parameter(np.ones(1, np.float32)))
    m.head.register_parameter("shift", None)
    assert "head.scale" in m.state_dict() and "head.shift" not in m.state_dict()
    with pytest.raises(AttributeError, match="nothere"):
        m.get_submodule("head.nothere")
    with pytest.raises(TypeError):
        m.add_module("x", "not a module")
    with pytest.raises(KeyError, match="'.'"):
        m.add_module("a.b", tg.ReLU())
    with pytest.raises(TypeError, match="Parameter"):
        m.register_parameter("p", tg.tensor(np.ones(1)))


def test_state_dict_prefix_keep_vars_destination_as_torch():
    torch = _torch()
    m = _mlp()
    t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert list(m.state_dict(prefix="m.")) == list(t.state_dict(prefix="m."))
    kv = m.state_dict(keep_vars=True)
    assert kv["0.weight"] is m[0].weight
    dest = {"x": 1}
    assert m.state_dict(destination=dest) is dest and list(dest)[:2] == ["x", "0.weight"]


def test_to_takes_a_device_and_a_dtype_and_torch_dtypes():
    torch = _torch()
    m = _mlp()
    opt = tg.optim.SGD(m.parameters(), lr=0.1)
    assert m.to("cpu", np.float64) is m
    assert all(p.dtype == np.float64 for p in m.parameters()) and m.dtype == np.float64 and m[0].dtype == np.float64
    m.to(torch.float32)
    assert all(p.dtype == np.float32 for p in m.parameters())
    m.to(device=torch.device("cpu"), dtype=torch.float64)
    assert m.device == "cpu" and m[2].dtype == np.float64
    assert opt.param_groups[0]["params"][0] is m[0].weight  # the same Parameter objects
    with pytest.raises(TypeError, match="float32 or float64"):
        m.to(torch.float16)
    with pytest.raises(TypeError):
        m.to()


def test_module_list_extend_and_sequential_slices_as_torch():
    torch = _torch()
    ml = tg.ModuleList([]).extend([tg.ReLU(), tg.Linear(2, 2)])
    assert len(ml) == 2 and list(ml.state_dict()) == ["1.weight", "1.bias"]
    assert isinstance(ml[0:1], tg.ModuleList) and len(ml[0:1]) == 1
    m = _mlp()
    t = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    head = m[0:2]
    assert isinstance(head, tg.Sequential)
    assert list(m[1:].state_dict()) == list(t[1:].state_dict()) == ["2.weight", "2.bias"]  # names kept
    x = np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(head(x).numpy(), m[1](m[0](x)).numpy())
    assert head[0] is m[0]


def test_parameter_numel_counts_elements():
    m = _mlp()
    assert sum(p.numel() for p in m.parameters()) == 2 * 3 + 3 + 3 * 1 + 1


# ---- Linear: input dtype and rank (findings 7, 10) -------------------------------------------------------------------

def test_linear_casts_arrays_to_its_dtype_and_refuses_tensors_of_another():
    torch = _torch()
    lin32 = tg.Linear(3, 2)
    assert lin32(np.ones((1, 3))).dtype == np.float32
    assert lin32([[1.0, 2.0, 3.0]]).dtype == np.float32
    assert lin32(torch.ones(1, 3, dtype=torch.float64)).dtype == np.float32
    with pytest.raises(RuntimeError):
        torch.nn.Linear(3, 2)(torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype float64"):
        lin32(tg.tensor(np.ones((1, 3))))
    lin64 = tg.Linear(3, 2, dtype=np.float64)
    with pytest.raises(TypeError, match="dtype float32"):
        lin64(tg.tensor(np.ones((1, 3), np.float32)))
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_allclose(lin64(x).numpy(), x @ lin64.weight.data.T + lin64.bias.data, rtol=1e-15)


def test_linear_refuses_a_0d_input_and_a_wrong_width_naming_them():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tg.Linear(3, 2)(np.float32(1.0))
    with pytest.raises(ValueError, match="in_features=3"):
        tg.Linear(3, 2)(np.ones((2, 4), np.float32))
    assert tg.Linear(3, 2)(np.ones(3, np.float32)).shape == (2,)


@pytest.mark.parametrize("args,match", [((-2, 3), "num_embeddings"), ((0, 3), "num_embeddings"),
                                        ((4, 0), "embedding_dim"), ((2.5, 3), "num_embeddings"),
                                        ((4, 3, 4), "padding_idx"), ((4, 3, -5), "padding_idx")])
def test_embedding_checks_its_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        tg.Embedding(*args)


@pytest.mark.parametrize("padding_idx", [0, 2, -1])
def test_embedding_padding_idx_matches_torch(padding_idx):
    torch = _torch()
    t = torch.nn.Embedding(4, 3, padding_idx=padding_idx).double()
    g = tg.Embedding(4, 3, padding_idx=padding_idx, dtype=np.float64)
    assert g.padding_idx == t.padding_idx
    assert not g.weight.data[g.padding_idx].any()  # zero-initialised
    with torch.no_grad():
        t.weight[t.padding_idx] = 5.0  # a padding row set by the user: read as is, never trained
    g.load_state_dict({"weight": t.weight.detach().numpy()})
    ids = np.array([[0, 1, 2, 3], [3, 3, 2, 0]])
    gt = torch.tensor(np.random.default_rng(0).standard_normal((2, 4, 3)))
    out_t = t(torch.tensor(ids))
    out_t.backward(gt)
    out = g(ids)
    out.backward(gt.numpy())
    np.testing.assert_array_equal(out.numpy(), out_t.detach().numpy())
    np.testing.assert_allclose(g.weight.grad, t.weight.grad.numpy(), rtol=1e-15)
    assert not g.weight.grad[g.padding_idx].any()
    assert "padding_idx" in repr(g)


def test_dropout_accepts_torchs_inplace_argument():
    torch = _torch()
    torch.nn.Dropout(0.5, inplace=False)
    d = tg.Dropout(0.5, inplace=False)
    assert d.eval()(np.ones(3, np.float32)).numpy().tolist() == [1.0, 1.0, 1.0]


# ---- buffers (audit f08) ---------------------------------------------------------------------------------------

class _Stats(tg.Module):
    """A parameter, a float buffer, an integer counter, a non-persistent buffer and an absent one."""

    def __init__(self):
        super().__init__()
        self.scale = tg.Parameter(np.ones(3, np.float32))
        self.register_buffer("running_mean", tg.tensor(np.arange(3, dtype=np.float32)))
        self.register_buffer("num_batches_tracked", tg.tensor(np.array(5, dtype=np.int64)))
        self.register_buffer("mask", tg.tensor(np.ones(3, np.float32)), persistent=False)
        self.register_buffer("absent", None)


class _Net(tg.Module):
    def __init__(self):
        super().__init__()
        self.stats = _Stats()
        self.register_buffer("step", np.zeros((), np.int64))  # an array is wrapped in a Tensor
        self.head = tg.Linear(3, 2)


def _torch_net():
    torch = pytest.importorskip("torch")

    class Stats(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.register_buffer("running_mean", torch.arange(3, dtype=torch.float32))
            self.register_buffer("num_batches_tracked", torch.tensor(5))
            self.register_buffer("mask", torch.ones(3), persistent=False)
            self.register_buffer("absent", None)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stats = Stats()
            self.register_buffer("step", torch.zeros((), dtype=torch.int64))
            self.head = torch.nn.Linear(3, 2)

    return Net()


def test_buffers_are_listed_and_saved_in_torchs_order():
    ours, theirs = _Net(), _torch_net()
    assert [n for n, _ in ours.named_buffers()] == [n for n, _ in theirs.named_buffers()] == [
        "step", "stats.running_mean", "stats.num_batches_tracked", "stats.mask"]
    assert all(isinstance(b, tg.Tensor) and not b.requires_grad for b in ours.buffers())
    assert list(ours.state_dict()) == list(theirs.state_dict())  # no non-persistent, no None buffer
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert [n for n, _ in ours.stats.named_buffers(prefix="s", recurse=False)] == [
        "s.running_mean", "s.num_batches_tracked", "s.mask"]


def test_buffers_load_from_a_torch_state_dict_and_back():
    ours, theirs = _Net(), _torch_net()
    with __import__("torch").no_grad():
        theirs.stats.running_mean.copy_(theirs.stats.running_mean * 7 + 1)
        theirs.stats.num_batches_tracked += 3
    assert not ours.load_state_dict(theirs.state_dict()).missing_keys
    np.testing.assert_array_equal(ours.stats.running_mean.numpy(), [1.0, 8.0, 15.0])
    assert ours.stats.num_batches_tracked.dtype == np.int64 and ours.stats.num_batches_tracked.item() == 8
    sd = ours.state_dict()
    with pytest.raises(RuntimeError, match="stats.running_mean"):
        _Net().load_state_dict({k: v for k, v in sd.items() if k != "stats.running_mean"})
    with pytest.raises(RuntimeError, match="Unexpected.*stats.mask"):
        _Net().load_state_dict({**sd, "stats.mask": np.zeros(3)})


def test_to_moves_buffers_and_casts_only_the_floating_ones_as_torch():
    torch = pytest.importorskip("torch")
    ours, theirs = _Net(), _torch_net()
    mean = ours.stats.running_mean
    ours.to(np.float64)
    theirs.to(torch.float64)
    for (n, b), (_, t) in zip(ours.named_buffers(), theirs.named_buffers()):
        assert str(b.dtype) == str(t.dtype).rpartition(".")[2], n
    assert ours.stats.running_mean is mean  # cast in place, as parameters are
    ours.to("cpu")
    assert all(b.device == "cpu" for b in ours.buffers())


def test_buffer_registration_errors_and_assignment_as_torch():
    m = _Stats()
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("scale", tg.tensor(np.zeros(1)))
    with pytest.raises(KeyError):
        m.register_buffer("a.b", tg.tensor(np.zeros(1)))
    with pytest.raises(TypeError, match="buffer"):
        m.register_buffer("w", tg.Parameter(np.zeros(1)))
    with pytest.raises(TypeError, match="buffer"):
        m.running_mean = 3.0
    m.running_mean = tg.tensor(np.full(3, 2.0, np.float32))  # replaces the buffer
    np.testing.assert_array_equal(m.state_dict()["running_mean"], [2.0, 2.0, 2.0])
    m.absent = tg.tensor(np.zeros(2, np.float32))  # a None buffer filled in later is saved
    assert "absent" in m.state_dict()
    del m.mask
    assert "mask" not in dict(m.named_buffers())
    import copy
    c = copy.deepcopy(m)
    np.testing.assert_array_equal(c.running_mean.numpy(), m.running_mean.numpy())
    assert c.running_mean is not m.running_mean and list(c.state_dict()) == list(m.state_dict())


# ---- containers as torch's (audit f08) ---------------------------------------------------------------------

def test_sequential_from_an_ordered_dict_keeps_the_names():
    torch = pytest.importorskip("torch")
    from collections import OrderedDict
    ours = tg.Sequential(OrderedDict([("fc", tg.Linear(3, 4)), ("act", tg.ReLU()), ("out", tg.Linear(4, 2))]))
    theirs = torch.nn.Sequential(OrderedDict([("fc", torch.nn.Linear(3, 4)), ("act", torch.nn.ReLU()),
                                              ("out", torch.nn.Linear(4, 2))]))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["fc.weight", "fc.bias", "out.weight", "out.bias"]
    ours.load_state_dict(theirs.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    # float32: torch's GEMM sums in another order, so a value near 0 differs by a few ulp of the inputs
    np.testing.assert_allclose(ours(x).numpy(), theirs(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert [n for n, _ in ours[1:].named_children()] == ["act", "out"]
    ours[0] = tg.Linear(3, 4)  # the name is kept
    assert [n for n, _ in ours.named_children()] == ["fc", "act", "out"]


def _shapes(container):
    return [(name, tuple(m.weight.shape)) for name, m in container.named_children()]


@pytest.mark.parametrize("kind", ["ModuleList", "Sequential"])
def test_list_operations_match_torch(kind):
    torch = pytest.importorskip("torch")
    ours = getattr(tg, kind)(*([[tg.Linear(1, k) for k in (1, 2, 3)]] if kind == "ModuleList"
                               else [tg.Linear(1, k) for k in (1, 2, 3)]))
    theirs = getattr(torch.nn, kind)(*([[torch.nn.Linear(1, k) for k in (1, 2, 3)]] if kind == "ModuleList"
                                       else [torch.nn.Linear(1, k) for k in (1, 2, 3)]))

    def same():
        assert _shapes(ours) == [(n, tuple(m.weight.shape)) for n, m in theirs.named_children()]
        assert list(ours.state_dict()) == list(theirs.state_dict())

    for lib, c in (("tg", ours), ("torch", theirs)):
        L = tg.Linear if lib == "tg" else torch.nn.Linear
        r = c.insert(0, L(1, 4))
        assert (r is c) if kind == "Sequential" else (r is None)
        c.insert(len(c) - 1, L(1, 5))  # torch's ModuleList.insert takes no negative index
        c.insert(len(c), L(1, 6))
        c[1] = L(1, 7)
        c[-1] = L(1, 8)
        del c[2]
        assert c.append(L(1, 9)) is c
        assert c.extend([L(1, 10), L(1, 11)]) is c
        del c[1:5:2]
        popped = c.pop(0)
        assert popped.weight.shape[0] == 4
    same()
    with pytest.raises(IndexError):
        ours[10]
    with pytest.raises(IndexError):
        ours.insert(20, tg.Linear(1, 1))
    with pytest.raises(TypeError):
        ours.append(np.zeros(1))


def test_container_arithmetic_matches_torch():
    torch = pytest.importorskip("torch")
    a, b = tg.Sequential(tg.Linear(1, 2), tg.Linear(1, 3)), tg.Sequential(tg.Linear(1, 4))
    ta, tb = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.Linear(1, 3)), torch.nn.Sequential(torch.nn.Linear(1, 4))
    for ours, theirs in ((a + b, ta + tb), (a * 2, ta * 2), (2 * b, 2 * tb)):
        assert isinstance(ours, tg.Sequential)
        assert _shapes(ours) == [(n, tuple(m.weight.shape)) for n, m in theirs.named_children()]
    assert (a * 2)[2] is a[0]  # the same modules repeated, as torch's
    a += b
    ta += tb
    assert _shapes(a) == [(n, tuple(m.weight.shape)) for n, m in ta.named_children()]
    ml = tg.ModuleList([tg.Linear(1, 2)]) + [tg.Linear(1, 5)]
    assert isinstance(ml, tg.ModuleList) and _shapes(ml) == [("0", (2, 1)), ("1", (5, 1))]
    with pytest.raises(ValueError):
        a + tg.ModuleList()
    with pytest.raises(ValueError):
        a * 0
