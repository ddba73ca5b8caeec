"""GCNConv and GCN: parity with torch_geometric (values and gradients), the graph conventions, errors,
a float64 gradcheck and a short Cora training run."""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.datasets import load_planetoid, row_normalize
from tapegrad.layers.gcn import GCN, GCNConv, edge_index_to_csr, sparse_dropout_values

N, F_IN, F_OUT = 9, 5, 3


def _graph(rng, self_loops=True, isolated=True):
    """A small directed graph with (optionally) self-loops and isolated nodes 7 and 8."""
    ei = np.array([[0, 1, 1, 2, 3, 4, 4, 0, 5, 6, 2, 6],
                   [1, 0, 2, 1, 4, 0, 2, 4, 6, 5, 6, 3]])
    if self_loops:
        ei = np.concatenate([ei, [[3, 5], [3, 5]]], axis=1)
    n = N if isolated else 7
    return ei, n


def _pyg_pair(torch, pyg_nn, kw, dtype):
    p = pyg_nn.GCNConv(F_IN, F_OUT, **kw)
    p = p.double() if dtype == np.float64 else p
    if p.bias is not None:
        with torch.no_grad():  # a non-zero bias, so a wrong bias path shows
            p.bias.uniform_(-1, 1)
    ours = GCNConv(F_IN, F_OUT, dtype=dtype, **kw)
    ours.load_state_dict(p.state_dict())
    return p, ours


CASES = [
    ("default", {}, False),
    ("edge_weight", {}, True),
    ("improved_weighted", {"improved": True}, True),
    ("no_normalize", {"normalize": False}, False),
    ("no_normalize_weighted", {"normalize": False}, True),
    ("no_self_loops", {"add_self_loops": False}, True),
    ("no_bias", {"bias": False}, False),
    ("cached", {"cached": True}, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw,weighted", CASES, ids=[c[0] for c in CASES])
def test_gcnconv_matches_pyg_forward_and_gradients(name, kw, weighted, dtype):
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    rng = np.random.default_rng(1)
    ei, n = _graph(rng)
    _check_against_pyg(torch, pyg_nn, kw, weighted, dtype, rng, ei, n, torch.tensor(ei))  # a torch edge_index too


def _check_against_pyg(torch, pyg_nn, kw, weighted, dtype, rng, ei, n, ours_ei):
    """Our GCNConv (given ``ours_ei``) against PyG's (given ``ei``) with the same weights: output and the
    gradients of x, the weight and the bias."""
    w = rng.uniform(0.5, 2.0, ei.shape[1]).astype(dtype) if weighted else None
    x = rng.standard_normal((n, F_IN)).astype(dtype)
    g = rng.standard_normal((n, F_OUT)).astype(dtype)
    p, ours = _pyg_pair(torch, pyg_nn, kw, dtype)
    xt = torch.tensor(x, requires_grad=True)
    out_p = p(xt, torch.tensor(ei), None if w is None else torch.tensor(w))
    out_p.backward(torch.tensor(g))
    xx = tg.tensor(x, requires_grad=True)
    out = ours(xx, ours_ei, w)
    out.backward(g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), out_p.detach().numpy(), **tol)
    np.testing.assert_allclose(xx.grad, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(ours.lin.weight.grad, p.lin.weight.grad.numpy(), **tol)
    if p.bias is not None:
        np.testing.assert_allclose(ours.bias.grad, p.bias.grad.numpy(), **tol)


def test_gcnconv_improved_unweighted_matches_pyg_with_explicit_unit_weights():
    # PyG 2.8 adds weight-1 loops when improved=True and edge_weight is None (its add_remaining_self_loops
    # drops the fill value without weights); we implement A + 2I as documented, which PyG gives when
    # passed explicit unit weights.
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    rng = np.random.default_rng(2)
    ei, n = _graph(rng, self_loops=False)
    x = rng.standard_normal((n, F_IN))
    p, ours = _pyg_pair(torch, pyg_nn, {"improved": True}, np.float64)
    ref = p(torch.tensor(x), torch.tensor(ei), torch.ones(ei.shape[1], dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(ours(x, ei).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_gcnconv_state_dict_keys_and_shapes_equal_pyg():
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    for bias in (True, False):
        p = pyg_nn.GCNConv(F_IN, F_OUT, bias=bias)
        ours = GCNConv(F_IN, F_OUT, bias=bias)
        assert list(ours.state_dict()) == list(p.state_dict())
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in p.state_dict().items()}


def test_gcn_state_dict_names():
    model = GCN(F_IN, 8, F_OUT, num_layers=3)
    assert list(model.state_dict()) == ["convs.0.bias", "convs.0.lin.weight", "convs.1.bias", "convs.1.lin.weight",
                                        "convs.2.bias", "convs.2.lin.weight"]
    assert model.state_dict()["convs.1.lin.weight"].shape == (8, 8)


def test_gcnconv_sparse_features_match_dense_and_pyg():
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    rng = np.random.default_rng(3)
    ei, n = _graph(rng)
    for f_out in (2, 8):  # narrower and wider than the input: both product orders
        dense = rng.standard_normal((n, F_IN)) * (rng.random((n, F_IN)) < 0.4)
        dense[7] = 0  # an empty feature row
        xs = tg.CSR.from_scipy(__import__("scipy.sparse", fromlist=["csr_matrix"]).csr_matrix(dense))
        p = pyg_nn.GCNConv(F_IN, f_out).double()
        ours = GCNConv(F_IN, f_out, dtype=np.float64)
        ours.load_state_dict(p.state_dict())
        out_sparse = ours(xs, ei)
        out_dense = ours(dense, ei)
        ref = p(torch.tensor(dense), torch.tensor(ei))
        np.testing.assert_allclose(out_sparse.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out_dense.numpy(), ref.detach().numpy(), rtol=1e-10, atol=1e-12)
        g = rng.standard_normal(out_sparse.shape)
        out_sparse.backward(g)
        ref.backward(torch.tensor(g))
        np.testing.assert_allclose(ours.lin.weight.grad, p.lin.weight.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_csr_adjacency_rows_are_targets_and_equal_edge_index_form():
    rng = np.random.default_rng(4)
    ei, n = _graph(rng)
    w = rng.uniform(0.5, 2.0, ei.shape[1])
    A = edge_index_to_csr(ei, n, w, np.float64)
    dense = np.zeros((n, n))
    np.add.at(dense, (ei[1], ei[0]), w)  # A[target, source]
    np.testing.assert_allclose(A.toarray(), dense)
    conv = GCNConv(F_IN, F_OUT, dtype=np.float64)
    x = rng.standard_normal((n, F_IN))
    np.testing.assert_allclose(conv(x, A).numpy(), conv(x, ei, w).numpy(), rtol=1e-12, atol=1e-14)
    # normalize=False: plain A X W + b with rows as targets
    plain = GCNConv(F_IN, F_OUT, normalize=False, dtype=np.float64)
    W = plain.lin.weight.numpy()
    np.testing.assert_allclose(plain(x, ei, w).numpy(), dense @ x @ W.T, rtol=1e-12, atol=1e-12)


def test_gcnconv_matches_dense_formula_with_isolated_nodes_and_existing_loops():
    rng = np.random.default_rng(5)
    ei, n = _graph(rng)  # nodes 3 and 5 already have a self-loop; 7 and 8 are isolated
    conv = GCNConv(F_IN, F_OUT, dtype=np.float64)
    with tg.no_grad():
        conv.bias.data[:] = rng.standard_normal(F_OUT)
    A = np.zeros((n, n))
    np.add.at(A, (ei[1], ei[0]), 1.0)
    A_hat = A + np.diag((np.diag(A) == 0).astype(float))  # only missing loops are added
    d = A_hat.sum(1)
    P = A_hat / np.sqrt(np.outer(d, d))
    x = rng.standard_normal((n, F_IN))
    ref = P @ x @ conv.lin.weight.numpy().T + conv.bias.numpy()
    out = conv(x, ei).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[7:], np.broadcast_to(x[7:] @ conv.lin.weight.numpy().T + conv.bias.numpy(),
                                                         (2, F_OUT)), rtol=1e-12)


def test_gcnconv_gradcheck_float64():
    rng = np.random.default_rng(6)
    ei, n = _graph(rng)
    for f_in, f_out in ((3, 2), (2, 3)):
        conv = GCNConv(f_in, f_out, dtype=np.float64)
        with tg.no_grad():
            conv.bias.data[:] = rng.standard_normal(f_out)
        x = tg.tensor(rng.standard_normal((n, f_in)), requires_grad=True)

        def fn(x, w, b):
            return conv(x, ei)
        assert tg.gradcheck(fn, [x, conv.lin.weight, conv.bias])


def test_gcn_gradcheck_float64_sparse_input_eval_mode():
    rng = np.random.default_rng(7)
    ei, n = _graph(rng)
    import scipy.sparse as sp
    xs = tg.CSR.from_scipy(sp.random(n, 4, density=0.5, random_state=1, format="csr"))
    model = GCN(4, 3, 2, dtype=np.float64).eval()
    params = list(model.parameters())
    assert tg.gradcheck(lambda *ps: model(xs, ei), params)


def test_cached_reuses_normalisation_for_the_same_graph_only():
    rng = np.random.default_rng(8)
    ei, n = _graph(rng)
    x = rng.standard_normal((n, F_IN)).astype(np.float32)
    conv = GCNConv(F_IN, F_OUT, cached=True)
    P1 = conv.propagation_matrix(ei, n)
    assert conv.propagation_matrix(ei, n) is P1
    other = ei[:, :5].copy()
    P2 = conv.propagation_matrix(other, n)
    assert P2 is not P1 and P2.nnz != P1.nnz
    conv(x, ei)
    conv.to(np.float64)
    assert conv._cache is None
    assert conv(x.astype(np.float64), ei).dtype == np.float64


def test_sparse_dropout_values_keeps_expected_fraction_and_scale():
    import scipy.sparse as sp
    xs = tg.CSR.from_scipy(sp.random(200, 50, density=0.3, random_state=0, format="csr", dtype=np.float32))
    tg.manual_seed(0)
    vals = sparse_dropout_values(xs, 0.5, training=True).numpy()
    kept = vals != 0
    assert abs(kept.mean() - 0.5) < 0.05
    np.testing.assert_allclose(vals[kept], 2 * xs.data[kept], rtol=1e-6)
    assert sparse_dropout_values(xs, 0.5, training=False) is None


def test_gcn_input_dropout_on_sparse_and_dense_features_agree_in_eval_and_differ_in_train():
    rng = np.random.default_rng(9)
    ei, n = _graph(rng)
    dense = (rng.random((n, F_IN)) < 0.5).astype(np.float32)
    import scipy.sparse as sp
    xs = tg.CSR.from_scipy(sp.csr_matrix(dense))
    model = GCN(F_IN, 4, F_OUT)
    model.eval()
    np.testing.assert_allclose(model(xs, ei).numpy(), model(dense, ei).numpy(), rtol=1e-5, atol=1e-6)
    model.train()
    tg.manual_seed(1)
    a = model(xs, ei).numpy()
    tg.manual_seed(2)
    b = model(xs, ei).numpy()
    assert not np.allclose(a, b)


@pytest.mark.parametrize("bad,exc,word", [
    (lambda conv, x, ei: conv(x[:, :3], ei), ValueError, "in_channels"),
    (lambda conv, x, ei: conv(x, np.array([[0, 1], [1, 99]])), ValueError, "edge_index"),
    (lambda conv, x, ei: conv(x, np.array([[0, -1], [1, 2]])), ValueError, "edge_index"),
    (lambda conv, x, ei: conv(x, ei.astype(np.float64)), TypeError, "edge_index"),
    (lambda conv, x, ei: conv(x, ei[:1]), ValueError, "edge_index"),
    (lambda conv, x, ei: conv(x[:0], ei[:, :0]), ValueError, "zero nodes"),
    (lambda conv, x, ei: conv(x, ei, np.ones(3)), ValueError, "edge_weight"),
    (lambda conv, x, ei: conv(x, tg.CSR.from_edge_index(np.array([[0, 1], [1, 2]]), num_nodes=4)), ValueError, "shape"),
    (lambda conv, x, ei: conv(tg.tensor(x.astype(np.float64)), ei), TypeError, "dtype"),
    (lambda conv, x, ei: conv(x[0], ei), ValueError, "2-D"),
])
def test_gcnconv_rejects_bad_input_with_a_clear_error(bad, exc, word):
    rng = np.random.default_rng(10)
    ei, n = _graph(rng)
    x = rng.standard_normal((n, F_IN)).astype(np.float32)
    conv = GCNConv(F_IN, F_OUT)
    with pytest.raises(exc, match=word):
        bad(conv, x, ei)


def test_gcnconv_constructor_errors():
    with pytest.raises(ValueError, match="in_channels"):
        GCNConv(0, 3)
    with pytest.raises(ValueError, match="normalize"):
        GCNConv(3, 3, add_self_loops=True, normalize=False)
    with pytest.raises(ValueError, match="num_layers"):
        GCN(3, 4, 2, num_layers=0)


def test_gcn_trains_on_cora_short_run():
    data = load_planetoid("cora")
    x = row_normalize(data.x)
    tg.manual_seed(0)
    model = GCN(data.num_features, 16, data.num_classes, cached=True)
    opt = tg.optim.Adam([dict(params=list(model.convs[0].parameters()), weight_decay=5e-4),
                         dict(params=list(model.convs[1].parameters()), weight_decay=0.0)], lr=0.01)
    for _ in range(100):
        model.train()
        opt.zero_grad()
        loss = tg.cross_entropy(model(x, data.A), data.y, data.train_idx)
        loss.backward()
        opt.step()
    model.eval()
    with tg.no_grad():
        pred = model(x, data.A).numpy().argmax(1)
    acc = (pred[data.test_idx] == data.y[data.test_idx]).mean()
    assert acc > 0.75, acc


def test_app_run_json_output(capsys):
    from tapegrad.apps import gcn as app
    assert app.main(["--data", "cora", "--seeds", "1", "--epochs", "30", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out.strip())
    assert set(out) == {"test_acc_mean", "test_acc_std", "epoch_ms_median"}
    assert 0.5 < out["test_acc_mean"] <= 1.0 and out["test_acc_std"] == 0.0 and out["epoch_ms_median"] > 0


def test_app_rejects_structure_only_graph(tmp_path, capsys):
    from tapegrad.apps import gcn as app
    d = np.load(str(__import__("tapegrad.datasets", fromlist=["DATA_DIR"]).DATA_DIR / "cora.npz"))
    path = tmp_path / "structure.npz"
    np.savez(path, adj_indptr=d["adj_indptr"], adj_indices=d["adj_indices"])
    assert app.main(["--data", str(path), "--seeds", "1"]) == 1
    assert "no node features" in capsys.readouterr().err


DUP_LOOP_CASES = [
    ("default", {}, False),
    ("weighted", {}, True),
    ("improved_weighted", {"improved": True}, True),
    ("no_self_loops_weighted", {"add_self_loops": False}, True),  # no loop handling: duplicates sum, as PyG
    ("no_normalize", {"normalize": False}, True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,kw,weighted", DUP_LOOP_CASES, ids=[c[0] for c in DUP_LOOP_CASES])
def test_gcnconv_with_repeated_self_loops_matches_pyg(name, kw, weighted, dtype):
    """A self-loop listed several times counts once, with its last listed weight, as PyG's
    add_remaining_self_loops (audit finding 6); repeated non-loop edges stay summed."""
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    rng = np.random.default_rng(3)
    ei, n = _graph(rng)  # loops on 3 and 5
    extra = np.array([[3, 0, 5, 3, 1, 1, 0],
                      [3, 0, 5, 3, 0, 0, 0]])  # 3 three times in all, 5 twice, 0 twice, 1->0 three times
    ei = np.concatenate([ei, extra], axis=1)
    order = rng.permutation(ei.shape[1])  # the last listing is wherever the shuffle puts it
    ei = ei[:, order]
    _check_against_pyg(torch, pyg_nn, kw, weighted, dtype, rng, ei, n, ei)


def test_edge_index_to_csr_one_self_loop_keeps_the_last_listed_weight():
    ei = np.array([[0, 0, 1, 0, 1],
                   [0, 0, 0, 0, 1]])
    w = np.array([0.5, 3.0, 2.0, 7.0, 4.0])
    A = edge_index_to_csr(ei, 2, w, np.float64, one_self_loop=True)
    B = edge_index_to_csr(ei, 2, w, np.float64)
    sp = pytest.importorskip("scipy.sparse")
    da = sp.csr_matrix((A.data, A.indices, A.indptr), shape=A.shape).toarray()
    db = sp.csr_matrix((B.data, B.indices, B.indptr), shape=B.shape).toarray()
    np.testing.assert_array_equal(da, [[7.0, 2.0], [0.0, 4.0]])  # A[target, source]
    np.testing.assert_array_equal(db, [[10.5, 2.0], [0.0, 4.0]])  # the default still sums


# ---- tg.GCN is not PyG's models.GCN: the differences are refused or documented (audit 2, findings 1, 2, 8) ----

def test_gcn_refuses_pygs_positional_order_and_says_how_to_write_it():
    # PyG: GCN(in, hidden, num_layers, out). Here that used to build 7 layers with 2 outputs, silently.
    with pytest.raises(TypeError, match=r"out_channels comes third.*GCN\(1433, 16, 7, num_layers=2\)"):
        GCN(1433, 16, 2, 7)
    with pytest.raises(TypeError, match="keyword-only"):
        GCN(10, 16, 3, 2, 0.5)
    model = GCN(1433, 16, 7, num_layers=2)
    assert (model.num_layers, model.out_channels, len(model.state_dict())) == (2, 7, 4)


def test_gcn_arguments_after_out_channels_are_keyword_only():
    import inspect
    params = list(inspect.signature(GCN.__init__).parameters.values())[1:]
    assert [p.name for p in params[:3]] == ["in_channels", "hidden_channels", "out_channels"]
    assert params[3].kind is inspect.Parameter.VAR_POSITIONAL  # only there to explain the PyG order
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[4:])
    assert {p.name for p in params[4:]} >= {"num_layers", "dropout", "cached", "bias", "dtype", "device"}


def test_gcn_refuses_pygs_act_and_norm():
    with pytest.raises(TypeError, match="act"):
        GCN(10, 16, 3, act="relu")
    with pytest.raises(TypeError, match="norm"):
        GCN(10, 16, 3, norm=None)


def test_gcn_docstring_states_its_differences_from_pygs_gcn():
    doc = " ".join(GCN.__doc__.split())
    assert "Not PyG's" in doc and "GCN(1433, 16, 2, 7)" in doc
    assert "input features included" in doc and "PyG drops only after each hidden activation" in doc
    assert "default is 0.5 (PyG: 0.0)" in doc


def test_gcn_dropout_placement_is_kipfs_input_and_hidden():
    """The documented behaviour (unchanged): a 1-layer GCN still drops its input in training."""
    rng = np.random.default_rng(0)
    ei, n = _graph(rng)
    x = rng.normal(size=(n, F_IN))
    model = GCN(F_IN, 4, F_OUT, num_layers=1, dtype=np.float64)
    tg.manual_seed(0)
    train_out = model(x, ei).numpy()
    model.eval()
    assert not np.allclose(train_out, model(x, ei).numpy())


@pytest.mark.parametrize("kw, exc, match", [
    (dict(hidden_channels=0), ValueError, "hidden_channels must be a positive integer, got 0"),
    (dict(in_channels=0), ValueError, "in_channels"),
    (dict(out_channels=0), ValueError, "out_channels"),
    (dict(num_layers=True), ValueError, "num_layers"),
    (dict(num_layers=2.0), ValueError, "num_layers"),
    (dict(dropout="0.5"), TypeError, "dropout must be a number.*str"),
    (dict(dropout=True), TypeError, "dropout"),
    (dict(dropout=1.5), ValueError, "dropout"),
])
def test_gcn_constructor_errors_name_the_right_argument(kw, exc, match):
    args = dict(in_channels=10, hidden_channels=16, out_channels=3) | kw
    with pytest.raises(exc, match=match):
        GCN(**args)
