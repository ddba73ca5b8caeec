"""Every differentiable op: a float64 central-difference gradcheck on tiny shapes (broadcasting included),
then a random-direction VJP check against torch autograd on realistic shapes (skipped without torch).

spmm has its own file (test_spmm_op.py); this file covers the dense ops, losses, dropout and embedding.
"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine import ops  # permute: not exported as tg.permute yet

RNG = np.random.default_rng(1234)


def rand(*shape, low=None, away_from_zero=False):
    a = RNG.standard_normal(shape)
    if away_from_zero:  # keep relu / abs-like kinks and 1/x poles out of the finite-difference stencil
        a = np.sign(a) * (np.abs(a) + 0.2)
    if low is not None:
        a = np.abs(a) + low
    return a


def P(*arrays):
    """Inputs that require grad (float64)."""
    return [tg.tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]


def _seeded_dropout(x, p, training):
    tg.manual_seed(7)  # the same mask on every finite-difference evaluation
    return tg.dropout(x, p, training)


Y3 = np.array([2, 0, 1, 2])

# (id, fn, input arrays) -- each input requires grad
CASES = [
    ("add", lambda a, b: a + b, (rand(2, 3), rand(2, 3))),
    ("add_broadcast_row", lambda a, b: a + b, (rand(2, 3), rand(3))),
    ("add_broadcast_both", lambda a, b: a + b, (rand(3, 1, 4), rand(2, 1))),
    ("add_0d", lambda a, b: a + b, (rand(2, 3), rand())),
    ("add_python_number", lambda a: 2.5 + a, (rand(2, 3),)),
    ("sub_broadcast", lambda a, b: a - b, (rand(2, 1), rand(1, 3))),
    ("rsub_number", lambda a: 1.0 - a, (rand(3),)),
    ("mul", lambda a, b: a * b, (rand(2, 3), rand(2, 3))),
    ("mul_broadcast", lambda a, b: a * b, (rand(4, 1, 3), rand(2, 3))),
    ("mul_same_tensor_twice", lambda a: a * a, (rand(3, 2),)),
    ("div", lambda a, b: a / b, (rand(2, 3), rand(2, 3, away_from_zero=True))),
    ("div_broadcast", lambda a, b: a / b, (rand(2, 1), rand(1, 3, away_from_zero=True))),
    ("rdiv_number", lambda a: 2.0 / a, (rand(3, away_from_zero=True),)),
    ("neg", lambda a: -a, (rand(2, 3),)),
    ("pow_2", lambda a: a ** 2, (rand(2, 3),)),
    ("pow_3", lambda a: tg.pow(a, 3), (rand(2, 3),)),
    ("pow_half", lambda a: a ** 0.5, (rand(2, 3, low=0.5),)),
    ("pow_negative", lambda a: a ** -1.5, (rand(4, low=0.5),)),
    ("pow_0", lambda a: a ** 0, (rand(3),)),
    ("exp", tg.exp, (rand(2, 3),)),
    ("log", tg.log, (rand(2, 3, low=0.3),)),
    ("tanh", tg.tanh, (rand(2, 3),)),
    ("sigmoid", tg.sigmoid, (rand(2, 3),)),
    ("relu", tg.relu, (rand(2, 3, away_from_zero=True),)),
    ("method_exp_log_chain", lambda a: (a.exp() + 1).log().tanh().sigmoid().relu(), (rand(3, 2),)),
    ("matmul_2d", lambda a, b: a @ b, (rand(2, 3), rand(3, 4))),
    ("matmul_vec_vec", lambda a, b: a @ b, (rand(3), rand(3))),
    ("matmul_vec_mat", lambda a, b: a @ b, (rand(3), rand(3, 2))),
    ("matmul_mat_vec", lambda a, b: a @ b, (rand(2, 3), rand(3))),
    ("matmul_batched", lambda a, b: a @ b, (rand(2, 2, 3), rand(2, 3, 2))),
    ("matmul_batch_broadcast", lambda a, b: a @ b, (rand(2, 1, 2, 3), rand(3, 3, 2))),
    ("matmul_batch_with_2d", lambda a, b: a @ b, (rand(2, 2, 3), rand(3, 2))),
    ("sum_all", lambda a: a.sum(), (rand(2, 3),)),
    ("sum_axis0", lambda a: a.sum(0), (rand(2, 3),)),
    ("sum_neg_axis_keepdims", lambda a: a.sum(axis=-1, keepdims=True), (rand(2, 3, 2),)),
    ("sum_two_axes", lambda a: tg.sum(a, (0, -1)), (rand(2, 3, 2),)),
    ("sum_0d", lambda a: a.sum(), (rand(),)),
    ("mean_all", lambda a: a.mean(), (rand(2, 3),)),
    ("mean_axis_keepdims", lambda a: tg.mean(a, axis=1, keepdims=True), (rand(2, 3, 2),)),
    ("reshape", lambda a: a.reshape(3, -1) * np.arange(6.0).reshape(3, 2), (rand(2, 3),)),
    ("transpose_T", lambda a: a.T @ np.ones((2, 1)), (rand(2, 3),)),
    ("transpose_axes", lambda a: tg.transpose(a, (1, -1, 0)), (rand(2, 3, 2),)),
    ("transpose_method_varargs", lambda a: a.transpose(2, 1, 0), (rand(2, 3, 2),)),
    ("getitem_slice", lambda a: a[1:, ::-2], (rand(3, 4),)),
    ("getitem_int", lambda a: a[-1], (rand(3, 4),)),
    ("getitem_repeats", lambda a: a[[0, 2, 0, 0]], (rand(3, 2),)),
    ("getitem_pairs_repeats", lambda a: a[np.array([1, 1, 0]), np.array([0, 0, 1])], (rand(2, 2),)),
    ("getitem_mixed", lambda a: a[:, [2, 2, 0]], (rand(2, 3),)),
    ("getitem_bool_mask", lambda a: a[np.array([[True, False, True], [False, True, True]])], (rand(2, 3),)),
    ("getitem_bool_rows", lambda a: a[np.array([True, False, True])], (rand(3, 2),)),
    ("getitem_none_ellipsis", lambda a: a[None, ..., 0], (rand(2, 3),)),
    ("concat_axis0", lambda a, b: tg.concat([a, b]), (rand(2, 3), rand(1, 3))),
    ("concat_neg_axis", lambda a, b, c: tg.concat([a, b, c], axis=-1), (rand(2, 1), rand(2, 3), rand(2, 2))),
    ("concat_with_constant", lambda a: tg.concat([a, np.ones((1, 2))], axis=0), (rand(2, 2),)),
    ("stack_axis0", lambda a, b: tg.stack([a, b]), (rand(2, 3), rand(2, 3))),
    ("stack_neg_axis", lambda a, b: tg.stack([a, b], axis=-1), (rand(2, 3), rand(2, 3))),
    ("split_equal", lambda a: tg.split(a, 2, axis=1)[1] * 3 + tg.split(a, 2, axis=1)[0], (rand(2, 4),)),
    ("split_sizes", lambda a: tg.concat(tg.split(a, [1, 3], axis=-1)[::-1], axis=-1), (rand(2, 4),)),
    ("where", lambda a, b: tg.where(np.array([[True, False, True]]), a, b), (rand(2, 3), rand(2, 3))),
    ("where_broadcast", lambda a, b: tg.where(np.array([[True], [False]]), a, b), (rand(1, 3), rand(2, 1))),
    ("where_scalar_branch", lambda a: tg.where(np.array([True, False, True]), a, 0.0), (rand(3),)),
    ("masked_fill", lambda a: tg.masked_fill(a, np.array([[True, False], [False, False]]), -1e9).softmax(-1),
     (rand(2, 2),)),
    ("softmax_last", lambda a: tg.softmax(a), (rand(3, 4),)),
    ("softmax_axis0", lambda a: tg.softmax(a, axis=0), (rand(3, 4),)),
    ("log_softmax_last", lambda a: tg.log_softmax(a), (rand(3, 4),)),
    ("log_softmax_3d", lambda a: a.log_softmax(axis=1), (rand(2, 3, 2),)),
    ("cross_entropy_mean", lambda z: tg.cross_entropy(z, Y3), (rand(4, 3),)),
    ("cross_entropy_sum", lambda z: tg.cross_entropy(z, Y3, reduction="sum"), (rand(4, 3),)),
    ("cross_entropy_none", lambda z: tg.cross_entropy(z, Y3, reduction="none"), (rand(4, 3),)),
    ("cross_entropy_index", lambda z: tg.cross_entropy(z, Y3, index=[3, 1, 3]), (rand(4, 3),)),
    ("cross_entropy_bool_index", lambda z: tg.cross_entropy(z, Y3, index=np.array([1, 0, 1, 1], bool)),
     (rand(4, 3),)),
    ("cross_entropy_ignore", lambda z: tg.cross_entropy(z, np.array([2, -100, 1, 0])), (rand(4, 3),)),
    ("cross_entropy_negative_index", lambda z: tg.cross_entropy(z, np.array([2, -100, 1, 0]), index=[-1, 1, -4, -1],
                                                                 reduction="sum"), (rand(4, 3),)),
    ("mse_mean", lambda a: tg.mse(a, np.ones((2, 3))), (rand(2, 3),)),
    ("mse_sum", lambda a: tg.mse(a, np.ones((2, 3)), reduction="sum"), (rand(2, 3),)),
    ("mse_none", lambda a: tg.mse(a, np.ones((2, 3)), reduction="none"), (rand(2, 3),)),
    ("mse_target_grad", lambda a, t: tg.mse(a, t), (rand(2, 3), rand(2, 3))),
    ("dropout_train", lambda a: _seeded_dropout(a, 0.4, True), (rand(4, 5),)),
    ("dropout_eval", lambda a: _seeded_dropout(a, 0.4, False) * 2, (rand(4, 5),)),
    ("embedding", lambda w: tg.embedding(w, np.array([[0, 2], [2, 2]])), (rand(3, 2),)),
    ("embedding_1d_ids", lambda w: tg.embedding(w, [1, 1, 0]), (rand(3, 4),)),
    ("diamond", lambda a: (lambda y: y * y + y.exp())(a * 2 - 1), (rand(2, 2),)),
    # the fixes of the engine audit (/work/audit/engine/REPORT.md): each changed op, in float64
    ("sigmoid_wide_range", tg.sigmoid, (np.array([[-40.0, -20.0, -3.0], [0.5, 20.0, 40.0]]),)),
    ("sigmoid_log_bce", lambda a: -tg.log(tg.sigmoid(a)), (np.array([-30.0, -17.0, -1.0, 2.0]),)),
    ("transpose_pair_swap", lambda a: tg.transpose(a, 0, 2), (rand(2, 3, 2),)),
    ("transpose_pair_2d", lambda a: a.transpose(0, 1) @ np.arange(2.0), (rand(2, 3),)),
    ("permute", lambda a: a.permute(2, 0, 1), (rand(2, 3, 2),)),
    ("permute_tuple_negative", lambda a: ops.permute(a, (-1, 0, 1)), (rand(2, 3, 2),)),
    ("getitem_int_slice_array", lambda a: a[0, :, [1, 2, 1]], (rand(2, 3, 4),)),
    ("getitem_int_slice_mask", lambda a: a[1, :, np.array([True, False, True, False])], (rand(2, 3, 4),)),
    ("getitem_int_none_array", lambda a: a[0, None, :, [3, 0]], (rand(2, 3, 4),)),
    ("split_chunks", lambda a: tg.concat(tg.split(a, 2, axis=1)[::-1], axis=1), (rand(2, 5),)),
    ("where_int_branch", lambda a: tg.where(np.array([True, False, True]), a, np.array([1, 2, 3])), (rand(3),)),
    ("masked_fill_0d_tensor_value", lambda a, v: tg.masked_fill(a, np.array([[True, False, True]]), v),
     (rand(2, 3), rand())),
    ("mse_int_target", lambda a: tg.mse(a, np.array([[1, 2, 3], [0, 1, 2]])), (rand(2, 3),)),
    ("div_by_int_array", lambda a: a / np.array([1, 2, 4]), (rand(2, 3),)),
    ("mul_int_0d", lambda a: a * np.array(3), (rand(2, 3),)),
    # torch's names added after the porting audit (/work/audit/porting/REPORT.md)
    ("abs", lambda a: abs(a) + tg.abs(a * 2), (rand(2, 3, away_from_zero=True),)),
    ("sqrt", lambda a: a.sqrt() * tg.sqrt(a), (rand(2, 3, low=0.3),)),
    ("pow_tensor_exponent", lambda a, b: a ** b, (rand(2, 3, low=0.3), rand(2, 3))),
    ("pow_tensor_exponent_broadcast", lambda a, b: tg.pow(a, b), (rand(2, 3, low=0.3), rand(3))),
    ("rpow", lambda b: 2.0 ** b + np.array([1.5, 3.0]) ** b, (rand(3, 2),)),
    ("max_all", lambda a: tg.max(a) * 2 + a.min(), (rand(3, 4),)),
    ("max_dim", lambda a: a.max(dim=1).values + tg.max(a, 0, keepdim=True).values.sum(), (rand(3, 4),)),
    ("min_dim_negative", lambda a: tg.min(a, -1)[0], (rand(2, 3, 4),)),
    ("sum_mean_dim_keepdim", lambda a: a.sum(dim=1, keepdim=True) * a.mean(dim=(0, 2)).sum(), (rand(2, 3, 4),)),
    ("softmax_dim_cat_stack", lambda a: tg.cat([a.softmax(dim=0), tg.log_softmax(a, dim=1)], dim=1).sum(0)
     + tg.stack(list(a.split(1, dim=0)), dim=2).sum(), (rand(2, 3),)),
    ("unsqueeze_squeeze_flatten", lambda a: tg.unsqueeze(a, 1).squeeze(1).flatten()[:3] * a.unsqueeze(-1).flatten(1, 2)[1],
     (rand(2, 3),)),
    ("squeeze_dim", lambda a: tg.squeeze(a, (0, 2)) * 2, (rand(1, 3, 1),)),
    ("expand", lambda a: a.expand(4, 2, -1) * np.arange(12.0).reshape(4, 1, 3), (rand(2, 1) * np.ones((1, 3)),)),
    ("expand_size_one", lambda a: tg.expand(a, (2, 3, 4)), (rand(3, 1),)),
    ("cross_entropy_sequence", lambda z: tg.cross_entropy(z, np.array([[0, 2, -100], [1, 1, 0]]), reduction="sum"),
     (rand(2, 3, 3),)),
    ("cross_entropy_label_smoothing", lambda z: tg.cross_entropy(z, np.array([2, -100, 1, 0]), index=[3, 0, 0, 1],
                                                                  label_smoothing=0.2), (rand(4, 3),)),
    ("cross_entropy_one_sample", lambda z: tg.cross_entropy(z, np.array(2)), (rand(4),)),
    ("clone_view_contiguous", lambda a: a.clone() * a.view(6).reshape(3, 2).T.contiguous(), (rand(2, 3),)),
]


@pytest.mark.parametrize("fn,arrays", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradcheck(fn, arrays):
    assert tg.gradcheck(fn, P(*arrays))


PUBLIC_OPS = {"tapegrad.engine.ops": ("add", "sub", "mul", "div", "neg", "pow", "exp", "log", "tanh", "sigmoid",
                                       "relu", "matmul", "sum", "mean", "reshape", "transpose", "permute",
                                       "getitem", "concat", "stack", "split", "where", "masked_fill", "softmax",
                                       "log_softmax", "abs", "sqrt", "unsqueeze", "squeeze", "flatten",
                                       "expand", "clone"),
              "tapegrad.engine.extrema": ("max", "min"),
              "tapegrad.engine.nn": ("cross_entropy", "mse", "dropout", "embedding")}


def test_every_public_op_has_a_gradcheck_case(monkeypatch):
    """Runs every case with each public op wrapped to record that it was called (through tg.<op>, a
    Tensor method or operator, or the module), so a deleted case shows as an op nobody calls."""
    import importlib
    called = set()

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            called.add(name)
            return fn(*args, **kwargs)
        return wrapper
    for module_name, names in PUBLIC_OPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            wrapped = recording(name, getattr(module, name))
            monkeypatch.setattr(module, name, wrapped)
            for alias in (tg, tg.engine):  # the names the package re-exports
                if hasattr(alias, name):
                    monkeypatch.setattr(alias, name, wrapped)
    for _, fn, arrays in CASES:
        fn(*P(*arrays))
    missing = {n for names in PUBLIC_OPS.values() for n in names} - called
    assert not missing, f"no gradcheck case calls {sorted(missing)}"


def test_gradcheck_with_a_constant_input():
    a, = P(rand(2, 3))
    b = tg.tensor(rand(3))  # no grad: only a is checked
    assert tg.gradcheck(lambda x, y: x * y, [a, b])


# ---- gradcheck itself -------------------------------------------------------------------------------------

def _wrong_square(x):
    def backward(g):
        return (g * 3 * x.data,)  # should be 2x
    return tg.engine.make_result(x.data ** 2, (x,), backward, "wrong_square")


def test_gradcheck_catches_a_wrong_gradient_and_names_the_input():
    with pytest.raises(AssertionError, match="input 0"):
        tg.gradcheck(_wrong_square, P(rand(3)))


def test_gradcheck_needs_float64_and_an_input_that_requires_grad():
    with pytest.raises(TypeError, match="float64"):
        tg.gradcheck(lambda x: x * 2, [tg.tensor(np.ones(2, np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="requires grad"):
        tg.gradcheck(lambda x: x * 2, [tg.tensor(np.ones(2))])
    with pytest.raises(TypeError):
        tg.gradcheck(lambda x: x * 2, [np.ones(2)])


def test_gradcheck_leaves_inputs_and_grads_clean():
    x, = P(rand(2, 2))
    before = x.data.copy()
    tg.gradcheck(lambda t: t.exp(), [x])
    np.testing.assert_array_equal(x.data, before)
    assert x.grad is None


def test_gradcheck_keeps_the_callers_grads_also_when_it_fails():
    x, = P(rand(3))
    w = tg.tensor(rand(3), requires_grad=True)  # read through a closure: gets no grad either
    x.grad = np.full(3, 7.0)
    assert tg.gradcheck(lambda t: (t * w).exp(), [x])
    np.testing.assert_array_equal(x.grad, 7.0)
    assert w.grad is None
    before = x.data.copy()
    with pytest.raises(AssertionError, match="input 0"):
        tg.gradcheck(_wrong_square, [x])
    np.testing.assert_array_equal(x.grad, 7.0)
    np.testing.assert_array_equal(x.data, before)


def test_gradcheck_of_an_input_given_twice():
    x, = P(rand(3))
    assert tg.gradcheck(lambda a, b: a * b, [x, x])
    assert tg.gradcheck(lambda a, b: a * b.exp() + b, [x, x])
    with pytest.raises(AssertionError, match="input 0"):  # a wrong backward in either place shows
        tg.gradcheck(lambda a, b: a + _wrong_square(b), [x, x])


def test_gradcheck_of_a_non_leaf_input_checks_it_as_an_independent_variable():
    x, = P(rand(3))
    h = x * 2.0 + 1.0
    assert tg.gradcheck(lambda a: a.exp() * a, [h])
    assert tg.gradcheck(lambda a, b: a * b, [x, h])  # h is held fixed when x moves, as in the check
    assert x.grad is None
    h.sum().backward()  # the caller's graph through h is still there
    np.testing.assert_array_equal(x.grad, 2.0)
    with pytest.raises(AssertionError, match="input 0"):
        tg.gradcheck(_wrong_square, [h])


def test_gradcheck_still_works_when_fn_reads_its_inputs_through_a_closure():
    w, = P(rand(2, 3))
    assert tg.gradcheck(lambda *_: (w * w).sum(axis=0), [w])


# ---- random-direction VJP against torch on realistic shapes -------------------------------------------------

def _vjp_vs_torch(tg_fn, torch_fn, arrays, atol=1e-10, rtol=1e-9):
    torch = pytest.importorskip("torch")
    xs = [tg.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out = tg_fn(*xs)
    tout = torch_fn(*ts)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=atol, rtol=rtol)
    v = np.random.default_rng(5).standard_normal(out.shape)
    out.backward(v)
    grads = torch.autograd.grad(tout, ts, torch.tensor(v), allow_unused=True)
    for i, (x, tgrad) in enumerate(zip(xs, grads)):
        expect = np.zeros(x.shape) if tgrad is None else tgrad.numpy()
        np.testing.assert_allclose(x.grad, expect, atol=atol, rtol=rtol, err_msg=f"input {i}")


def _torch():
    return pytest.importorskip("torch")


def test_vjp_elementwise_broadcast_vs_torch():
    a, b = rand(64, 1, 32), rand(16, 32, away_from_zero=True)
    _vjp_vs_torch(lambda x, y: (x + y) * (x - y) / y, lambda x, y: (x + y) * (x - y) / y, [a, b])


def test_vjp_unary_vs_torch():
    torch = _torch()
    a = rand(128, 64, away_from_zero=True)
    _vjp_vs_torch(lambda x: tg.tanh(x) + tg.sigmoid(x) * tg.relu(x) - tg.exp(-x * x) + (x * x + 1).log()
                  + (x * x + 1) ** 0.5 - x ** 3,
                  lambda x: torch.tanh(x) + torch.sigmoid(x) * torch.relu(x) - torch.exp(-x * x)
                  + torch.log(x * x + 1) + (x * x + 1) ** 0.5 - x ** 3, [a])


def test_vjp_matmul_batched_vs_torch():
    torch = _torch()
    _vjp_vs_torch(lambda x, y: x @ y, torch.matmul, [rand(8, 1, 32, 24), rand(5, 24, 16)])
    _vjp_vs_torch(lambda x, y: x @ y, torch.matmul, [rand(100), rand(3, 100, 7)])
    _vjp_vs_torch(lambda x, y: x @ y, torch.matmul, [rand(100), rand(100)])


def test_vjp_reductions_and_shapes_vs_torch():
    torch = _torch()
    a = rand(16, 12, 10)
    _vjp_vs_torch(lambda x: x.sum(axis=(0, -1), keepdims=True) * x.mean(1, keepdims=True),
                  lambda x: x.sum(dim=(0, -1), keepdim=True) * x.mean(1, keepdim=True), [a])
    _vjp_vs_torch(lambda x: x.transpose(2, 0, 1).reshape(10, -1).T,
                  lambda x: x.permute(2, 0, 1).reshape(10, -1).T, [a])
    _vjp_vs_torch(lambda x: x.transpose(2, 1, 0), lambda x: x.transpose(0, 2), [a])


def test_vjp_indexing_vs_torch():
    torch = _torch()
    a = rand(50, 8)
    idx = np.random.default_rng(3).integers(0, 50, size=200)  # many repeats
    mask = np.random.default_rng(4).random((50, 8)) > 0.5
    _vjp_vs_torch(lambda x: x[idx], lambda x: x[torch.as_tensor(idx)], [a])
    _vjp_vs_torch(lambda x: x[mask], lambda x: x[torch.as_tensor(mask)], [a])
    _vjp_vs_torch(lambda x: x[5:40:3, [1, 1, 7]], lambda x: x[5:40:3][:, [1, 1, 7]], [a])


def test_vjp_concat_stack_split_where_vs_torch():
    torch = _torch()
    a, b = rand(20, 6), rand(20, 4)
    _vjp_vs_torch(lambda x, y: tg.concat([x, y, x], axis=1), lambda x, y: torch.cat([x, y, x], 1), [a, b])
    _vjp_vs_torch(lambda x, y: tg.stack([x, y * 2], axis=1), lambda x, y: torch.stack([x, y * 2], 1),
                  [a, rand(20, 6)])
    _vjp_vs_torch(lambda x: tg.split(x, [2, 4], axis=-1)[1] * tg.split(x, [2, 4], axis=-1)[0][:, :1],
                  lambda x: torch.split(x, [2, 4], -1)[1] * torch.split(x, [2, 4], -1)[0][:, :1], [a])
    cond = np.random.default_rng(6).random((20, 1)) > 0.5
    _vjp_vs_torch(lambda x, y: tg.where(cond, x, y), lambda x, y: torch.where(torch.as_tensor(cond), x, y),
                  [a, rand(1, 6)])
    m = np.random.default_rng(7).random((20, 6)) > 0.7
    _vjp_vs_torch(lambda x: tg.masked_fill(x, m, 0.5), lambda x: x.masked_fill(torch.as_tensor(m), 0.5), [a])


def test_vjp_softmax_family_vs_torch():
    torch = _torch()
    a = rand(32, 10, 7) * 5
    _vjp_vs_torch(lambda x: tg.softmax(x, axis=1), lambda x: torch.softmax(x, 1), [a])
    _vjp_vs_torch(lambda x: tg.log_softmax(x), lambda x: torch.log_softmax(x, -1), [a])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vjp_cross_entropy_vs_torch(reduction):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(8)
    z = rand(200, 10) * 3
    y = rng.integers(0, 10, size=200)
    y[rng.random(200) < 0.1] = -100
    _vjp_vs_torch(lambda x: tg.cross_entropy(x, y, reduction=reduction),
                  lambda x: F.cross_entropy(x, torch.as_tensor(y), reduction=reduction), [z])
    idx = rng.choice(200, size=60, replace=False)
    _vjp_vs_torch(lambda x: tg.cross_entropy(x, y, index=idx, reduction=reduction),
                  lambda x: F.cross_entropy(x[torch.as_tensor(idx)], torch.as_tensor(y[idx]), reduction=reduction),
                  [z])


def test_vjp_mse_vs_torch():
    torch = _torch()
    F = torch.nn.functional
    for reduction in ("mean", "sum", "none"):
        _vjp_vs_torch(lambda x, t: tg.mse(x, t, reduction=reduction),
                      lambda x, t: F.mse_loss(x, t, reduction=reduction), [rand(40, 3), rand(40, 3)])


def test_vjp_embedding_vs_torch():
    torch = _torch()
    ids = np.random.default_rng(9).integers(0, 30, size=(12, 7))
    _vjp_vs_torch(lambda w: tg.embedding(w, ids), lambda w: torch.nn.functional.embedding(torch.as_tensor(ids), w),
                  [rand(30, 16)])


# ---- op-specific behaviour not covered by a gradient check --------------------------------------------------

def test_dropout_scales_survivors_and_is_identity_in_eval():
    tg.manual_seed(0)
    x = tg.tensor(np.ones((200, 50)), requires_grad=True)
    y = tg.dropout(x, 0.3)
    vals = np.unique(y.numpy())
    np.testing.assert_allclose(vals, [0.0, 1 / 0.7])
    assert abs((y.numpy() == 0).mean() - 0.3) < 0.02
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.numpy())  # d/dx (x * mask) = mask, and x = 1
    assert tg.dropout(x, 0.3, training=False) is x
    assert tg.dropout(x, 0.0) is x
    np.testing.assert_array_equal(tg.dropout(x, 1.0).numpy(), 0.0)
    with pytest.raises(ValueError):
        tg.dropout(x, 1.5)


def test_dropout_is_reproducible_with_manual_seed():
    x = tg.tensor(np.ones((10, 10)))
    tg.manual_seed(11)
    a = tg.dropout(x, 0.5).numpy()
    tg.manual_seed(11)
    b = tg.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        tg.manual_seed(-1)


def test_cross_entropy_errors():
    z = tg.tensor(rand(4, 3))
    with pytest.raises(ValueError, match=r"target must have shape \(\) to match logits \(4,\)"):
        tg.cross_entropy(tg.tensor(rand(4)), Y3)  # one sample of 4 classes takes one class id
    with pytest.raises(ValueError, match="0-d"):
        tg.cross_entropy(tg.tensor(1.0), Y3)
    with pytest.raises(TypeError, match="integer"):
        tg.cross_entropy(z, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        tg.cross_entropy(z, np.array([0, 1]))
    with pytest.raises(ValueError, match="class ids"):
        tg.cross_entropy(z, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="row ids"):
        tg.cross_entropy(z, Y3, index=[4])
    with pytest.raises(ValueError, match="reduction"):
        tg.cross_entropy(z, Y3, reduction="avg")
    with pytest.raises(ValueError, match="no rows"):
        tg.cross_entropy(z, Y3, index=[])
    with pytest.raises(ValueError, match="length"):
        tg.cross_entropy(z, Y3, index=np.array([True, False]))
    with pytest.raises(ValueError, match="row ids"):
        tg.cross_entropy(z, Y3, index=[-5, 0])
    with pytest.raises(ValueError, match="row ids"):
        tg.cross_entropy(z, Y3, index=np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(ValueError, match="class ids"):
        tg.cross_entropy(z, np.array([0, 1, -3, -100]))  # -100 is ignored, -3 is not
    # a row outside index is not read, as torch's cross_entropy(x[index], y[index]) does not read it
    assert np.isfinite(tg.cross_entropy(z, np.array([0, 1, 2, 5]), index=[0, 1, 2]).item())
    with pytest.raises(ValueError, match="at least one class"):
        tg.cross_entropy(tg.tensor(rand(4, 0)), Y3)
    with pytest.raises(ValueError, match="row ids"):
        tg.cross_entropy(tg.tensor(rand(0, 3)), np.zeros(0, np.int64), index=[0])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint64])
def test_cross_entropy_takes_row_ids_of_any_integer_dtype_on_any_graph_size(dtype):
    """Row ids in a dtype narrower than the row count (int8 ids of a 300-row input), negative ones
    counting from the end, give the loss and gradient of the same ids in int64."""
    z = tg.tensor(rand(300, 3), requires_grad=True)
    y = np.arange(300) % 3
    ids = [0, 7, 120] + ([-1, -2] if np.dtype(dtype).kind == "i" else [])
    want = tg.cross_entropy(z, y, index=np.array(ids, np.int64), reduction="sum")
    want.backward()
    want_grad, z.grad = z.grad.copy(), None
    got = tg.cross_entropy(z, y, index=np.array(ids, dtype), reduction="sum")
    got.backward()
    assert got.item() == want.item()
    np.testing.assert_array_equal(z.grad, want_grad)


def test_cross_entropy_reads_every_check_back_at_once(monkeypatch):
    """cross_entropy's checks of row ids and targets, and its count of rows, come back from the device
    in one transfer (the forward kernel's three counts): on the GPU, one host sync per call."""
    from tapegrad.engine import nn
    reads = []

    def counted(a, device):
        reads.append((a.shape, device))
        return to_device(a, device)
    to_device = nn.to_device
    monkeypatch.setattr(nn, "to_device", counted)
    z = tg.tensor(rand(4, 3))
    for index in (None, [3, -1], np.array([1, 0, 1, 1], bool), []):
        reads.clear()
        tg.cross_entropy(z, Y3, index=index, reduction="sum")
        assert reads == [((3,), "cpu")], index


def test_cross_entropy_over_no_rows_with_sum_is_zero():
    z = tg.tensor(rand(4, 3), requires_grad=True)
    loss = tg.cross_entropy(z, Y3, index=np.array([], dtype=np.int64), reduction="sum")
    assert loss.item() == 0.0
    loss.backward()
    np.testing.assert_array_equal(z.grad, 0.0)
    assert tg.cross_entropy(z, Y3, index=[], reduction="none").shape == (0,)


def test_cross_entropy_float32_is_stable_for_large_logits():
    z = tg.tensor(np.array([[1000.0, 0.0], [0.0, -1000.0]], np.float32), requires_grad=True)
    loss = tg.cross_entropy(z, np.array([1, 1]))
    assert loss.dtype == np.float32 and np.isfinite(loss.item())
    np.testing.assert_allclose(loss.item(), 1000.0, rtol=1e-6)  # both rows pick a logit 1000 below the max


def test_mse_shape_mismatch_and_reduction_errors():
    with pytest.raises(ValueError, match="shape"):
        tg.mse(tg.tensor(np.ones((2, 3))), np.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        tg.mse(tg.tensor(np.ones(3)), np.ones(3), reduction="avg")


def test_embedding_errors_and_weight_as_array():
    w = tg.tensor(rand(5, 2), requires_grad=True)
    with pytest.raises(TypeError, match="integers"):
        tg.embedding(w, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        tg.embedding(w, [5])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        tg.embedding(w, [-1])
    with pytest.raises(ValueError, match="2-D"):
        tg.embedding(tg.tensor(rand(5)), [0])
    out = tg.embedding(rand(5, 2), [1, 1])
    assert out.shape == (2, 2) and not out.requires_grad
    assert tg.embedding(w, []).shape == (0, 2)


def test_split_errors():
    x = tg.tensor(np.ones((2, 5)))
    with pytest.raises(ValueError, match="add up"):
        tg.split(x, [2, 2], axis=1)
    with pytest.raises(ValueError, match="non-negative"):
        tg.split(x, [6, -1], axis=1)
    with pytest.raises(ValueError, match="positive"):
        tg.split(x, 0, axis=1)
    with pytest.raises(ValueError, match="out of range"):
        tg.split(x, 1, axis=2)
    with pytest.raises(TypeError, match="split_size"):
        tg.split(x, 1.5)
    assert [p.shape for p in tg.split(x, 1, axis=-1)] == [(2, 1)] * 5  # torch: chunks of size 1
    assert [p.shape for p in tg.split(x, 2, axis=1)] == [(2, 2), (2, 2), (2, 1)]
    assert [p.shape for p in tg.split(x, 7, axis=1)] == [(2, 5)]


def test_concat_and_stack_need_tensors():
    with pytest.raises(ValueError):
        tg.concat([])
    with pytest.raises(ValueError):
        tg.stack([])


def test_softmax_handles_minus_inf_masks():
    x = tg.tensor(np.array([[0.0, -np.inf, 1.0]]), requires_grad=True)
    y = tg.softmax(x)
    np.testing.assert_allclose(y.numpy(), [[1 / (1 + np.e), 0.0, np.e / (1 + np.e)]])
    y.backward(np.array([[1.0, 2.0, 3.0]]))
    assert np.isfinite(x.grad).all() and x.grad[0, 1] == 0.0


def test_sigmoid_does_not_overflow():
    x = tg.tensor(np.array([-1000.0, 0.0, 1000.0], np.float32))
    np.testing.assert_allclose(tg.sigmoid(x).numpy(), [0.0, 0.5, 1.0])


def test_vjp_torch_names_vs_torch():
    torch = _torch()
    a, b = rand(6, 5, low=0.2), rand(6, 5)
    _vjp_vs_torch(lambda x, y: x ** y + 3.0 ** y + abs(y) + x.sqrt(), lambda x, y: x ** y + 3.0 ** y + y.abs() + x.sqrt(),
                  [a, b])
    ties = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, -1.0]])  # torch shares a full max's gradient among ties
    _vjp_vs_torch(lambda x: x.max() * 1.0, lambda x: x.max() * 1.0, [ties])
    _vjp_vs_torch(lambda x: x.min() * 1.0, lambda x: x.min() * 1.0, [ties])
    _vjp_vs_torch(lambda x: x.max(dim=1).values, lambda x: x.max(dim=1).values, [ties])  # to the first index
    _vjp_vs_torch(lambda x: x.min(0, keepdim=True)[0], lambda x: x.min(0, keepdim=True)[0], [ties])
    c = rand(2, 1, 3)
    _vjp_vs_torch(lambda x: x.expand(4, 2, 5, 3).flatten(1, 2).unsqueeze(0).squeeze(), lambda x: x.expand(4, 2, 5, 3)
                  .flatten(1, 2).unsqueeze(0).squeeze(), [c])
    t = torch.tensor(ties)
    x = tg.tensor(ties)
    for got, want in ((x.argmax(), t.argmax()), (x.argmax(1), t.argmax(1)), (x.argmin(0, keepdim=True),
                      t.argmin(0, keepdim=True)), (x.max(dim=1).indices, t.max(dim=1).indices),
                      (x.min(-1)[1], t.min(-1)[1])):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("shape,target_shape", [((4, 3, 5), (4, 5)), ((5,), ()), ((2, 3, 2, 4), (2, 2, 4))])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_of_torchs_other_shapes_vs_torch(shape, target_shape, reduction):
    """[C] logits with a 0-d target, and [N, C, d1, ...] with [N, d1, ...] targets (a sequence model's
    [B, C, T]): torch's values and gradients, ignored positions included."""
    torch = _torch()
    z = rand(*shape)
    t = RNG.integers(0, shape[0] if len(shape) == 1 else shape[1], target_shape)
    if len(target_shape):
        t.flat[0] = -100
    _vjp_vs_torch(lambda x: tg.cross_entropy(x, t, reduction=reduction),
                  lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(t), reduction=reduction), [z])
    with pytest.raises(ValueError, match="target must have shape"):
        tg.cross_entropy(tg.tensor(z), np.zeros(7, np.int64))
    if len(shape) > 2:
        with pytest.raises(ValueError, match="index= selects rows of 2-D logits"):
            tg.cross_entropy(tg.tensor(z), t, index=[0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("e", [0.1, 1.0])
def test_cross_entropy_label_smoothing_vs_torch(reduction, e):
    """torch's label_smoothing, ignored rows and a row subset with a repeated id included."""
    torch = _torch()
    z = rand(6, 4)
    t = RNG.integers(0, 4, 6)
    t[1] = -100
    idx = [5, 0, 0, -1, 1]
    _vjp_vs_torch(lambda x: tg.cross_entropy(x, t, index=idx, reduction=reduction, label_smoothing=e),
                  lambda x: torch.nn.functional.cross_entropy(x[torch.tensor(idx)], torch.tensor(t)[torch.tensor(idx)],
                                                              reduction=reduction, label_smoothing=e), [z])
    seq = rand(2, 4, 3)
    ts = RNG.integers(0, 4, (2, 3))
    _vjp_vs_torch(lambda x: tg.cross_entropy(x, ts, reduction=reduction, label_smoothing=e),
                  lambda x: torch.nn.functional.cross_entropy(x, torch.tensor(ts), reduction=reduction,
                                                              label_smoothing=e), [seq])
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="label_smoothing"):
            tg.cross_entropy(tg.tensor(z), t, label_smoothing=bad)
