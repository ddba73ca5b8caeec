"""The engine behaves as torch where a PyTorch user would expect it to: the findings F01-F14 of the engine
audit (/work/audit/engine/REPORT.md), one section each.

Each test checks tapegrad's own answer (values, dtypes, errors); the parts that compare with torch skip
without it.
"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine import ops
from tapegrad.engine.tensor import from_numpy, grad


def _torch():
    return pytest.importorskip("torch")


def leaf(a, dtype=np.float64):
    return tg.tensor(np.asarray(a, dtype=dtype), requires_grad=True)


# ---- F01 / F04: sigmoid -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_accurate_over_the_whole_range(dtype):
    x = np.concatenate([np.linspace(-120, 60, 2001), [-np.inf, np.inf, 0.0, -0.0]]).astype(dtype)
    got = tg.sigmoid(tg.tensor(x)).numpy()
    assert got.dtype == dtype
    with np.errstate(over="ignore"):
        exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))
    exact = exact.astype(dtype)
    # a few units in the last place, tiny values included (the old tanh form gave 0 below -17 in float32)
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(got[exact > tiny], exact[exact > tiny], rtol=4 * np.finfo(dtype).eps, atol=0)
    assert got[x == -np.inf] == 0 and got[x == np.inf] == 1
    assert np.isnan(tg.sigmoid(tg.tensor(np.array([np.nan], dtype))).numpy()).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_matches_torch_including_large_negative_inputs(dtype):
    torch = _torch()
    v = np.array([-100.0, -40.0, -20.0, -17.0, -10.0, -1e-3, 0.0, 3.0, 17.0, 40.0], dtype)
    x = leaf(v, dtype)
    y = tg.sigmoid(x)
    t = torch.tensor(v, requires_grad=True)
    ty = torch.sigmoid(t)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    tiny = np.finfo(dtype).tiny  # torch flushes sigmoid(-100) to 0 in float32; tapegrad keeps the subnormal
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=rtol, atol=tiny)
    y.backward(np.ones_like(v))
    ty.sum().backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=rtol, atol=tiny)


def test_minus_log_sigmoid_at_minus_20_in_float32_is_finite_as_in_torch():
    x = leaf([-20.0], np.float32)
    loss = -tg.log(tg.sigmoid(x)).sum()
    loss.backward()
    np.testing.assert_allclose(loss.item(), 20.0, rtol=1e-6)
    np.testing.assert_allclose(x.grad, [-1.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_])
def test_sigmoid_of_an_integer_tensor_is_float32_not_zeros(dtype):
    v = np.array([-2, 0, 1, 3]).astype(dtype)
    y = tg.sigmoid(tg.tensor(v))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), 1 / (1 + np.exp(-v.astype(np.float64))), rtol=1e-6)


# ---- F02: == and != ---------------------------------------------------------------------------------------

def test_eq_and_ne_masks_work_in_masked_fill_and_where_as_in_torch():
    a = np.array([0.0, 1.0, 0.0, 2.0])
    x = tg.tensor(a)
    np.testing.assert_array_equal(tg.masked_fill(x, x == 0, -1.0).numpy(), [-1, 1, -1, 2])
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(tg.where(x != 0, 1 / x, 0.0).numpy(), [0, 1, 0, 0.5])
    torch = _torch()
    t = torch.from_numpy(a)
    np.testing.assert_array_equal(x == 0, (t == 0).numpy())
    np.testing.assert_array_equal(x != 0, (t != 0).numpy())


def test_tensors_still_key_dicts_and_sets_by_identity():
    a, b = tg.tensor([1.0]), tg.tensor([1.0])
    assert len({a, b}) == 2 and {a: 1, b: 2}[b] == 2
    assert a in [a] and a in {a}


# ---- F03: tensor() copies, from_numpy() shares --------------------------------------------------------------

def test_tensor_copies_so_an_optimiser_step_leaves_the_callers_array_alone():
    w0 = np.array([1.0, 2.0, 3.0])
    w = tg.tensor(w0, requires_grad=True)
    (w * w).sum().backward()
    tg.optim.SGD([w], lr=0.5).step()
    np.testing.assert_array_equal(w0, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(w.numpy(), [0.0, 0.0, 0.0])


def test_from_numpy_shares_memory_as_torch_from_numpy():
    a = np.array([1.0, 2.0, 3.0])
    w = from_numpy(a)
    assert np.shares_memory(w.data, a) and w.is_leaf and not w.requires_grad
    w.requires_grad_()
    (w * w).sum().backward()
    tg.optim.SGD([w], lr=0.5).step()
    np.testing.assert_array_equal(a, [0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match="ndarray"):
        from_numpy([1.0, 2.0])
    with pytest.raises(TypeError, match="float16"):
        from_numpy(np.zeros(2, np.float16))


def test_tensor_docstring_says_which_shares_and_which_copies():
    doc = tg.tensor.__doc__
    assert "copies" in doc or "copy" in doc
    assert "from_numpy" in doc and "share" in doc


def test_tensor_copies_a_torch_tensor_and_from_dlpack_shares_it():
    torch = _torch()
    t = torch.arange(3, dtype=torch.float64)
    copied, shared = tg.tensor(t), tg.from_dlpack(t)
    t += 1
    np.testing.assert_array_equal(copied.numpy(), [0, 1, 2])
    np.testing.assert_array_equal(shared.numpy(), [1, 2, 3])


def test_tensor_with_a_dtype_or_device_copies_once_and_keeps_values():
    a = np.arange(4, dtype=np.float64)
    t = tg.tensor(a, dtype=np.float32, device="cpu")
    assert t.dtype == np.float32 and not np.shares_memory(t.data, a)
    np.testing.assert_array_equal(t.numpy(), a)


# ---- F05: losses and dropout on integer input ----------------------------------------------------------------

def test_cross_entropy_of_integer_logits_is_a_type_error_naming_logits():
    with pytest.raises(TypeError, match="logits"):
        tg.cross_entropy(tg.tensor(np.array([[1, 2], [3, 0]])), np.array([0, 1]))


def test_dropout_of_an_integer_tensor_in_training_is_a_type_error_as_in_torch():
    x = tg.tensor(np.full(6, 10))
    with pytest.raises(TypeError, match="input"):
        tg.dropout(x, 0.3)
    assert tg.dropout(x, 0.3, training=False) is x  # torch returns it too
    assert tg.dropout(x, 0.0) is x


def test_mse_promotes_like_the_binary_ops():
    p, t = np.array([1, 2]), np.array([1.6, 2.4])
    loss = tg.mse(tg.tensor(p), t)
    assert loss.dtype == np.float64
    np.testing.assert_allclose(loss.item(), 0.26)
    x32 = leaf([1.0, 2.0], np.float32)
    loss = tg.mse(x32, np.array([1.5, 2.5]))  # float32 with float64: float64, grad in float32
    assert loss.dtype == np.float64
    loss.backward()
    assert x32.grad.dtype == np.float32
    np.testing.assert_allclose(x32.grad, [-0.5, -0.5])
    assert tg.mse(x32, [1.5, 2.5]).dtype == np.float32  # a float list is float32
    with pytest.raises(TypeError, match="float"):
        tg.mse(tg.tensor(np.array([1, 2])), np.array([1, 3]))
    torch = _torch()
    ref = torch.nn.functional.mse_loss(torch.from_numpy(p), torch.from_numpy(t))
    assert str(ref.dtype) == "torch.float64"
    np.testing.assert_allclose(tg.mse(tg.tensor(p), t).item(), ref.item())


def test_mse_of_empty_input_is_nan_as_in_torch():
    assert np.isnan(tg.mse(tg.tensor(np.zeros(0)), np.zeros(0)).item())
    assert tg.mse(tg.tensor(np.zeros(0)), np.zeros(0), reduction="sum").item() == 0.0
    x = leaf(np.zeros(0))
    tg.mse(x, np.zeros(0)).backward()
    assert x.grad.shape == (0,)


# ---- F06: gradcheck (more in test_ops_gradcheck.py) ---------------------------------------------------------

def test_grad_returns_gradients_without_touching_dot_grad():
    x = leaf([1.0, 2.0])
    x.grad = np.array([5.0, 5.0])
    h = x * 3.0
    y = (h * h).sum()
    gx, gh = grad(y, [x, h])
    np.testing.assert_array_equal(gh, 2 * h.data)
    np.testing.assert_array_equal(gx, 18 * x.data)  # the total derivative, through h, as torch.autograd.grad
    gx, gh = grad(y, [x, h], stop_at_inputs=True)
    assert gx is None  # h is an independent variable: no path from y to x avoids it
    np.testing.assert_array_equal(grad(y, [x])[0], 18 * x.data)
    np.testing.assert_array_equal(x.grad, [5.0, 5.0])


def test_gradcheck_passes_a_repeated_and_a_non_leaf_input_as_torch_gradcheck():
    x = leaf([0.5, -1.0, 2.0])
    assert tg.gradcheck(lambda a, b: a * b, [x, x])
    assert tg.gradcheck(lambda a: a.exp(), [x * 1.0])
    x.grad = np.array([7.0, 7.0, 7.0])
    tg.gradcheck(lambda a: a.exp(), [x])
    np.testing.assert_array_equal(x.grad, [7.0, 7.0, 7.0])


# ---- F07: type promotion ------------------------------------------------------------------------------------

_DTYPES = ["bool", "int32", "int64", "float32", "float64"]


def _operand(kind, dtype, lib):
    """A dimensioned tensor, a 0-d tensor or a Python number of ``dtype`` in tapegrad or torch."""
    if kind == "number":
        return {"bool": True, "int32": 2, "int64": 3, "float32": 2.5, "float64": 0.5}[dtype]
    a = np.array([1, 3, 2] if kind == "dim" else 2).astype(dtype)
    if lib == "tg":
        return tg.tensor(a)
    import torch
    return torch.from_numpy(a)


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
@pytest.mark.parametrize("kind_b", ["dim", "0d", "number"])
@pytest.mark.parametrize("dtype_b", _DTYPES)
@pytest.mark.parametrize("kind_a", ["dim", "0d"])
@pytest.mark.parametrize("dtype_a", _DTYPES)
def test_binary_op_result_dtype_and_values_match_torch(op, dtype_a, kind_a, dtype_b, kind_b):
    torch = _torch()
    ta, tb = _operand(kind_a, dtype_a, "torch"), _operand(kind_b, dtype_b, "torch")
    a, b = _operand(kind_a, dtype_a, "tg"), _operand(kind_b, dtype_b, "tg")
    try:
        expect = eval(f"ta {op} tb")
    except RuntimeError:  # subtraction with a bool: torch refuses it, and so must we
        assert op == "-" and "bool" in (dtype_a, dtype_b)
        for x, y in ((a, b), (b, a)):
            with pytest.raises(TypeError, match="bool"):
                x - y
        return
    for got in (eval(f"a {op} b"), eval(f"b {op} a") if op in "+*" else None):
        if got is None:
            continue
        assert str(got.dtype) == str(expect.dtype).replace("torch.", ""), (dtype_a, kind_a, dtype_b, kind_b)
        np.testing.assert_allclose(got.numpy().astype(np.float64), expect.numpy().astype(np.float64), rtol=1e-6)


def test_a_0d_float64_tensor_does_not_widen_a_float32_one_and_grads_keep_each_dtype():
    x = leaf([1.0, 2.0], np.float32)
    s = leaf(3.0, np.float64)
    y = x * s
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32 and s.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [3.0, 3.0])
    np.testing.assert_allclose(s.grad, 3.0)
    assert (x + np.array(2.0)).dtype == np.float32
    assert (x + np.array([2.0, 1.0])).dtype == np.float64  # a dimensioned float64 array does widen


@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sigmoid", "softmax", "log_softmax"])
def test_float_unary_ops_of_integers_give_float32(name):
    v = np.array([1, 2, 3])
    y = getattr(tg, name)(tg.tensor(v))
    assert y.dtype == np.float32
    expect = getattr(tg, name)(tg.tensor(v.astype(np.float64))).numpy()
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-6)


def test_pow_where_masked_fill_and_mean_of_integers_follow_torch():
    i = tg.tensor(np.array([1, 2, 3]))
    assert (i ** 0.5).dtype == np.float32 and (i ** 2).dtype == np.int64
    np.testing.assert_allclose((i ** 0.5).numpy(), np.sqrt([1, 2, 3]), rtol=1e-6)
    m = np.array([True, False, False])
    y = tg.where(m, i, 0.5)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), [1, 0.5, 0.5])
    y = tg.masked_fill(i, m, 0.5)
    assert y.dtype == np.int64  # masked_fill keeps the tensor's dtype (the value is cast to it)
    np.testing.assert_array_equal(y.numpy(), [0, 2, 3])
    assert tg.mean(i).dtype == np.float32
    assert (tg.tensor(np.array([1, 2], np.int32)) / 2).dtype == np.float32
    torch = _torch()
    ti = torch.tensor([1, 2, 3])
    assert str((ti ** 0.5).dtype) == "torch.float32"
    assert str(torch.where(torch.from_numpy(m), ti, 0.5).dtype) == "torch.float32"
    np.testing.assert_array_equal(ti.masked_fill(torch.from_numpy(m), 0.5).numpy(), [0, 2, 3])


def test_masked_fill_with_a_0d_tensor_value_passes_it_the_gradient():
    x = leaf([1.0, 2.0, 3.0], np.float32)
    v = leaf(5.0, np.float64)
    y = tg.masked_fill(x, np.array([True, False, True]), v)
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 1, 0])
    assert v.grad.dtype == np.float64 and v.grad == 2.0


# ---- F08: tensor() of Python data ---------------------------------------------------------------------------

@pytest.mark.parametrize("data", [[0, 2, 1], 5, [[1], [2]], 1.5, [1.0, 2.0], [1, 2.5], True, [True, False],
                                  [2 ** 24 + 1], []])
def test_tensor_of_python_data_has_torchs_dtype(data):
    torch = _torch()
    t, ref = tg.tensor(data), torch.tensor(data)
    assert str(t.dtype) == str(ref.dtype).replace("torch.", "")
    np.testing.assert_array_equal(t.numpy(), ref.numpy())


def test_int_lists_work_as_targets_and_ids_and_large_ints_are_exact():
    assert tg.tensor([2 ** 24 + 1]).item() == 2 ** 24 + 1
    logits = tg.tensor(np.zeros((3, 4)), requires_grad=True)
    loss = tg.cross_entropy(logits, tg.tensor([0, 2, 1]))
    np.testing.assert_allclose(loss.item(), np.log(4))
    np.testing.assert_array_equal(tg.embedding(tg.tensor(np.eye(4)), tg.tensor([1, 3])).numpy(), np.eye(4)[[1, 3]])
    with pytest.raises(TypeError, match="int64"):
        tg.tensor([[1], [2]], requires_grad=True)  # as torch: only floats require grad
    assert tg.tensor([[1], [2]], dtype=np.float32, requires_grad=True).dtype == np.float32
    with pytest.raises(ValueError, match="int64"):
        tg.tensor([2 ** 63])


# ---- F09: integers and index arrays separated by a slice ----------------------------------------------------

_MASK = np.array([True, False, True, False])
_KEYS = [
    (0, slice(None), [1, 2]),
    (1, slice(None), _MASK),
    (0, None, slice(None), [3, 0]),
    (Ellipsis, 0, [1, 2]),
    (0, Ellipsis, [1, 2, 2]),
    ([0, 1], 1, [1, 2]),
    ([0, 1], slice(None), 0),
    (slice(None), 0, [1, 2]),
    (-1, slice(1, None), np.array([[0, 1], [2, 3]])),
    (np.array([True, False]), slice(None), 2),
]


@pytest.mark.parametrize("key", _KEYS, ids=[str(i) for i in range(len(_KEYS))])
def test_mixed_integer_and_array_indexing_matches_torch(key):
    torch = _torch()
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = leaf(a)
    t = torch.tensor(a, requires_grad=True)
    tkey = tuple(torch.from_numpy(np.asarray(k)) if isinstance(k, (list, np.ndarray)) else k for k in key)
    y, ty = x[key], t[tkey]
    assert y.shape == tuple(ty.shape)
    np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(g)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(x.grad, t.grad.numpy())


def test_integer_then_array_index_is_the_torch_shape_without_torch():
    x = tg.tensor(np.arange(24.0).reshape(2, 3, 4))
    y = x[0, :, [1, 2]]
    assert y.shape == (3, 2)
    np.testing.assert_array_equal(y.numpy(), np.arange(24.0).reshape(2, 3, 4)[0][:, [1, 2]])


# ---- F10: split ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 4, 6, 7, [6], [2, 4], [0, 6], [1, 0, 5]])
def test_split_matches_torch(size):
    torch = _torch()
    a = np.random.default_rng(2).standard_normal((3, 6))
    x = leaf(a)
    t = torch.tensor(a, requires_grad=True)
    parts, tparts = tg.split(x, size, axis=1), torch.split(t, size, dim=1)
    assert [p.shape for p in parts] == [tuple(p.shape) for p in tparts]
    w = [np.random.default_rng(3 + i).standard_normal(p.shape) for i, p in enumerate(parts)]
    sum(((p * wi).sum() for p, wi in zip(parts, w)), tg.tensor(0.0)).backward()
    sum((tp * torch.from_numpy(wi)).sum() for tp, wi in zip(tparts, w)).backward()
    np.testing.assert_allclose(x.grad, t.grad.numpy())


def test_split_of_an_int_means_chunk_size_without_torch():
    x = tg.tensor(np.arange(6.0))
    assert [p.shape for p in tg.split(x, 2)] == [(2,), (2,), (2,)]
    assert [p.shape for p in tg.split(x[:4], 3)] == [(3,), (1,)]
    assert [p.shape for p in tg.split(tg.tensor(np.zeros(0)), 2)] == [(0,)]
    with pytest.raises(ValueError, match="non-negative"):
        tg.split(x[:4], [5, -1])
    with pytest.raises(ValueError, match="add up"):
        tg.split(x, [2, 2])


# ---- F11: transpose and permute -----------------------------------------------------------------------------

def test_transpose_of_two_dims_and_permute_match_torch():
    torch = _torch()
    a = np.random.default_rng(4).standard_normal((2, 3, 4))
    cases = [(lambda x: x.transpose(0, 1), lambda t: t.transpose(0, 1), a[0]),
             (lambda x: x.transpose(0, 2), lambda t: t.transpose(0, 2), a),
             (lambda x: tg.transpose(x, -1, 0), lambda t: torch.transpose(t, -1, 0), a),
             (lambda x: x.permute(2, 0, 1), lambda t: t.permute(2, 0, 1), a),
             (lambda x: ops.permute(x, (1, 2, 0)), lambda t: t.permute((1, 2, 0)), a),
             (lambda x: x.T, lambda t: t.permute(2, 1, 0), a)]
    for f, tf, v in cases:
        x, t = leaf(v), torch.tensor(v, requires_grad=True)
        y, ty = f(x), tf(t)
        np.testing.assert_array_equal(y.numpy(), ty.detach().numpy())
        g = np.random.default_rng(5).standard_normal(y.shape)
        y.backward(g)
        ty.backward(torch.from_numpy(g))
        np.testing.assert_array_equal(x.grad, t.grad.numpy())


# ---- F12 / F13: clear errors and torch's answers at the edges -------------------------------------------------

@pytest.mark.parametrize("name,args,expect", [
    ("exp", (np.array([1.0, 2.0]),), np.exp([1.0, 2.0])),
    ("sum", (np.array([1.0, 2.0]),), 3.0),
    ("relu", ([1.0, -2.0],), [1.0, 0.0]),
    ("log", (np.float64(2.0),), np.log(2.0)),
    ("tanh", (0.5,), np.tanh(0.5)),
])
def test_unary_ops_and_reductions_take_arrays_and_numbers(name, args, expect):
    np.testing.assert_allclose(getattr(tg, name)(*args).numpy(), expect, rtol=1e-6)


def test_non_numeric_inputs_are_type_errors_naming_the_op():
    with pytest.raises(TypeError, match="exp"):
        tg.exp("a")
    with pytest.raises(TypeError, match="sum"):
        tg.sum(object())
    with pytest.raises(TypeError, match="real"):
        tg.tensor(np.ones(2)) * np.array([1j, 2])
    with pytest.raises(TypeError, match="real"):
        tg.exp(np.array([1j]))


def test_where_of_two_numbers_and_its_condition_must_be_boolean():
    y = tg.where(np.array([True, False]), 1.0, 2.0)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), [1.0, 2.0])
    with pytest.raises(TypeError, match="boolean"):
        tg.where(np.array([0.5, 0.0]), tg.tensor(np.ones(2)), tg.tensor(np.zeros(2)))
    with pytest.raises(TypeError, match="boolean"):
        tg.masked_fill(tg.tensor(np.ones(2)), np.array([1, 0]), 0.0)


def test_axis_errors_name_the_axis():
    x = tg.tensor(np.ones(2))
    with pytest.raises(ValueError, match="axis 5"):
        tg.concat([x, x], axis=5)
    with pytest.raises(ValueError, match="0-d"):
        tg.concat([tg.tensor(1.0), tg.tensor(2.0)])
    with pytest.raises(ValueError, match="axis 3"):
        tg.split(tg.tensor(np.ones(4)), 2, axis=3)
    with pytest.raises(ValueError, match="axis 2"):
        tg.stack([x, x], axis=2)
    with pytest.raises(TypeError, match="axis"):
        tg.tensor(np.ones((2, 3))).sum(axis=1.0)
    with pytest.raises(ValueError, match="more than once"):
        tg.tensor(np.ones((2, 3))).sum(axis=(0, 0))
    with pytest.raises(ValueError, match="more than once"):
        tg.tensor(np.ones((2, 3))).mean(axis=(0, -2))
    with pytest.raises(ValueError, match="axis 2"):
        tg.softmax(tg.tensor(np.ones((2, 3))), axis=2)


@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((0, 3), 0), ((0, 3), -1)])
def test_softmax_over_an_empty_tensor_is_empty_as_in_torch(shape, axis):
    for f in (tg.softmax, tg.log_softmax):
        x = leaf(np.zeros(shape))
        y = f(x, axis)
        assert y.shape == shape and y.dtype == np.float64
        y.backward(np.zeros(shape))
        assert x.grad.shape == shape


def test_setitem_and_len_of_0d_are_clear_type_errors():
    x = tg.tensor(np.ones(3))
    with pytest.raises(TypeError, match="immutable"):
        x[0] = 1.0
    with pytest.raises(TypeError, match="0-d"):
        len(tg.tensor(1.0))


# ---- F14: in-place operators on a leaf ----------------------------------------------------------------------

def _inplace(t, op):
    ns = {"t": t}
    exec(f"t {op} 2.0", ns)
    return ns["t"]


@pytest.mark.parametrize("op,expect", [("+=", [3, 4]), ("-=", [-1, 0]), ("*=", [2, 4]), ("/=", [0.5, 1])])
def test_inplace_operator_on_a_leaf_that_requires_grad_raises_as_torch(op, expect):
    w = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="leaf"):
        _inplace(w, op)
    h = _inplace(w * 1.0, op)  # a recorded non-leaf: a new node (the graph keeps the old value)
    assert not h.is_leaf
    np.testing.assert_allclose(h.numpy(), expect)
    c = tg.tensor([1.0, 2.0])
    assert _inplace(c, op) is c  # a constant: in place, as torch
    np.testing.assert_allclose(c.numpy(), expect)
    with tg.no_grad():  # an update: in place, the same leaf, as torch's manual SGD step
        v = _inplace(w, op)
    assert v is w and w.requires_grad and w.is_leaf
    np.testing.assert_allclose(w.numpy(), expect)


def test_manual_sgd_step_under_no_grad_updates_the_parameter_as_torch():
    torch = _torch()
    wt = torch.ones(3, dtype=torch.float64, requires_grad=True)
    (wt * wt).sum().backward()
    with torch.no_grad():
        wt -= 0.1 * wt.grad
    lin = tg.Linear(3, 1)
    w = tg.tensor(np.ones(3), requires_grad=True)
    (w * w).sum().backward()
    with tg.no_grad():
        w -= 0.1 * w.grad
        lin.weight -= 1.0  # a module's parameter, through setattr: stays the registered Parameter
    np.testing.assert_array_equal(w.numpy(), wt.detach().numpy())
    assert w.is_leaf and w.requires_grad
    assert any(p is lin.weight for p in lin.parameters())


def test_an_inplace_update_after_the_forward_makes_its_backward_raise_as_torch():
    w = tg.tensor(np.ones(3), requires_grad=True)
    y = (w * w).sum()
    with tg.no_grad():
        w -= 0.5
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_inplace_into_an_integer_tensor_refuses_a_float_as_torch():
    t = tg.tensor([1, 2])
    with pytest.raises(TypeError):
        t += 0.5


def test_inplace_operator_on_a_leaf_is_refused_where_torch_refuses_it():
    torch = _torch()
    for requires_grad, grad_mode in ((True, True), (True, False), (False, True)):
        wt = torch.ones(3, requires_grad=requires_grad)
        w = tg.tensor(np.ones(3), requires_grad=requires_grad)
        ctx_t = torch.enable_grad() if grad_mode else torch.no_grad()
        ctx = tg.enable_grad() if grad_mode else tg.no_grad()
        with ctx_t:
            try:
                wt += 1
                torch_raised = False
            except RuntimeError:
                torch_raised = True
        with ctx:
            try:
                w += 1
                raised = False
            except RuntimeError:
                raised = True
        assert raised == torch_raised, (requires_grad, grad_mode)


def test_a_0d_integer_tensor_index_mixed_with_an_index_array_is_an_integer_as_in_torch():
    torch = _torch()
    x = np.arange(24.0).reshape(2, 3, 4)
    for key_t, key in (((torch.tensor(0), slice(None), [1, 2]), (tg.tensor(0), slice(None), [1, 2])),
                       ((torch.tensor(1), slice(None), torch.tensor([True, False, True, True])),
                        (np.array(1), slice(None), np.array([True, False, True, True])))):
        want = torch.tensor(x)[key_t].numpy()
        t = tg.tensor(x, requires_grad=True)
        got = t[key]
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.numpy(), want)
        got.sum().backward()
        xt = torch.tensor(x, requires_grad=True)
        xt[key_t].sum().backward()
        np.testing.assert_array_equal(t.grad, xt.grad.numpy())


def test_grad_of_nested_inputs_is_the_total_derivative_as_torch_autograd_grad():
    torch = _torch()
    xt = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ht = 3 * xt
    yt = (ht * ht).sum() + xt.sum()
    want = torch.autograd.grad(yt, [xt, ht])
    x = tg.tensor([1.0, 2.0], dtype=np.float64, requires_grad=True)
    h = 3.0 * x
    y = (h * h).sum() + x.sum()
    gx, gh = grad(y, [x, h])
    np.testing.assert_array_equal(gx, want[0].numpy())  # [19, 37]
    np.testing.assert_array_equal(gh, want[1].numpy())


@pytest.mark.parametrize("op", ["concat", "stack"])
def test_concat_and_stack_promote_as_torch_cat(op):
    torch = _torch()
    f32 = np.array([1.5, 2.5], np.float32)
    i64 = np.array([3, 4], np.int64)
    f64 = np.array([0.25, 0.5], np.float64)
    torch_op = torch.cat if op == "concat" else torch.stack
    for parts in ((f32, i64), (i64, f32), (f32, f64), (i64, i64)):
        want = torch_op([torch.from_numpy(p) for p in parts])
        got = getattr(tg, op)([tg.tensor(p) for p in parts])
        assert got.dtype == np.dtype(str(want.dtype).rpartition(".")[2]), parts
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    a = tg.tensor(f32, requires_grad=True)
    b = tg.tensor(f64, requires_grad=True)
    getattr(tg, op)([a, b]).sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad, [1.0, 1.0])


@pytest.mark.filterwarnings("ignore:Creating a tensor from a list of numpy.ndarrays")  # torch's, about speed
def test_tensor_of_a_list_infers_float64_from_numpy_float64_values_as_torch():
    torch = _torch()
    for data in ([np.float64(0.1), np.float64(0.2)], [1.0, np.float64(0.1)], [np.array([0.1, 0.2])],
                 [0.1, 0.2], [[1.0], [np.float32(2.0)]], [1, 2]):
        want = torch.tensor(data)
        got = tg.tensor(data)
        assert got.dtype == np.dtype(str(want.dtype).rpartition(".")[2]), data
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_negating_a_bool_tensor_is_refused_as_torch():
    torch = _torch()
    with pytest.raises(RuntimeError):
        -torch.tensor([True, False])
    with pytest.raises(TypeError, match="bool"):
        -tg.tensor([True, False])


# ---- second audit (/work/audit/engine2): writes through views and to outputs, grad modes, size() ----------------
@pytest.mark.parametrize("view", [lambda w: w.detach(), lambda w: w[:], lambda w: w.reshape(3, 1)],
                         ids=["detach", "slice", "reshape"])
def test_an_inplace_write_through_a_view_of_a_saved_tensor_raises_as_torch(view):
    torch = _torch()
    for lib, no_grad, w in ((torch, torch.no_grad, torch.tensor([1.0, 2.0, 3.0], requires_grad=True)),
                            (tg, tg.no_grad, tg.tensor([1.0, 2.0, 3.0], requires_grad=True))):
        y = (w * w).sum()
        with no_grad():
            v = view(w)
            v += 1
        with pytest.raises(RuntimeError, match="modified" if lib is tg else None):
            y.backward()


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "softmax", "log_softmax"])
def test_an_inplace_write_to_an_output_the_backward_reads_raises_as_torch(name):
    torch = _torch()
    xt = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    yt = getattr(torch, name)(xt, dim=0) if "softmax" in name else getattr(torch, name)(xt)
    with torch.no_grad():
        yt *= 0
    with pytest.raises(RuntimeError):
        yt.sum().backward()
    x = tg.tensor([0.3, -0.7], requires_grad=True)
    y = getattr(tg, name)(x)
    with tg.no_grad():
        y *= 0
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_an_inplace_write_to_an_output_that_add_does_not_read_is_fine():
    x = tg.tensor([0.3, -0.7], requires_grad=True)
    y = x + 1.0
    with tg.no_grad():
        y *= 2  # add's backward reads nothing of its own: no error, the gradient of sum(y) wrt x is 1
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0, 1.0])


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_sequence_output_and_h_n_are_separate_and_writing_output_is_caught(kind):
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 2, 2
    G = 4 * H if kind == "lstm" else H
    args = [tg.tensor(a, requires_grad=True) for a in (rng.standard_normal((T, B, I)), rng.standard_normal((B, H)))]
    state = [tg.tensor(rng.standard_normal((B, H)), requires_grad=True)] if kind == "lstm" else []
    weights = [tg.tensor(rng.standard_normal(s), requires_grad=True) for s in ((G, I), (G, H))]
    res = getattr(tg.engine, f"{kind}_sequence")(*args, *state, *weights)
    out, h_n = res[0], res[1]
    before = h_n.numpy().copy()
    assert not np.shares_memory(out.numpy(), h_n.numpy())
    with tg.no_grad():
        out *= 0.0
    np.testing.assert_array_equal(h_n.numpy(), before)  # as torch: h_n is its own tensor
    with pytest.raises(RuntimeError, match="modified in place"):
        h_n.sum().backward()  # the backward reads the buffer out was written through


def test_sequence_ops_name_a_missing_state_and_a_non_bool_reverse():
    x, h, w, u = np.zeros((3, 2, 4)), np.zeros((2, 5)), np.zeros((20, 4)), np.zeros((20, 5))
    with pytest.raises(TypeError, match="c0 is required"):
        tg.engine.lstm_sequence(x, h, None, w, u)
    with pytest.raises(TypeError, match="h0 is required"):
        tg.engine.rnn_sequence(x, None, np.zeros((5, 4)), np.zeros((5, 5)))
    with pytest.raises(TypeError, match="reverse must be a bool"):
        tg.engine.lstm_sequence(x, h, h, w, u, reverse="no")


def test_grad_modes_are_reusable_nestable_and_decorate_with_or_without_parentheses():
    x = tg.tensor([1.0], requires_grad=True)
    ctx = tg.no_grad()
    with ctx:
        with ctx:
            assert not (x * 2).requires_grad
        with tg.enable_grad():
            assert (x * 2).requires_grad
        assert not tg.is_grad_enabled()
    assert tg.is_grad_enabled()

    @tg.no_grad
    def bare():
        return (x * 2).requires_grad

    @tg.no_grad()
    def called():
        return (x * 2).requires_grad
    assert bare() is False and called() is False and tg.is_grad_enabled()
    with tg.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    with pytest.raises(TypeError):
        tg.set_grad_enabled("no")


def test_size_is_the_element_count_and_called_the_shape_as_torch():
    torch = _torch()
    a = np.zeros((3, 4))
    t, tt = tg.tensor(a), torch.tensor(a)
    assert t.size() == tuple(tt.size()) and t.size(1) == tt.size(1) and t.size(-1) == tt.size(-1)
    assert t.size == a.size == tt.numel()


def test_argument_order_mistakes_against_torch_habits_are_named():
    with pytest.raises(TypeError, match="weight, ids"):
        tg.embedding(tg.tensor([1, 2]), tg.tensor(np.ones((3, 2))))
    with pytest.raises(TypeError, match="weight="):
        tg.cross_entropy(tg.tensor(np.ones((3, 2))), [0, 1, 1], np.array([1.0, 2.0]))


def test_a_torch_device_is_accepted_where_a_device_name_is():
    torch = _torch()
    assert tg.tensor([1.0], device=torch.device("cpu")).device == "cpu"
    assert tg.Linear(2, 3, device=torch.device("cpu")).device == "cpu"


def test_an_inplace_write_to_a_quotient_raises_because_divs_backward_reads_it():
    a = tg.tensor([1.0, 2.0], requires_grad=True)
    b = tg.tensor([2.0, 4.0], requires_grad=True)
    y = a / b
    with tg.no_grad():
        y *= 100
    with pytest.raises(RuntimeError, match="result of div"):
        y.sum().backward()


def test_writes_to_one_batch_of_a_dataset_array_leave_another_batchs_graph_alone_as_torch():
    torch = _torch()
    data = np.random.default_rng(0).standard_normal((64, 3))
    w = tg.tensor(np.ones((3, 1)), requires_grad=True)
    first, second = tg.from_numpy(data[:32]), tg.from_numpy(data[32:])
    loss = (first @ w).sum()
    second /= 2.0  # normalising the next batch in place: no byte of the first batch changes
    loss.backward()
    wt = torch.ones((3, 1), dtype=torch.float64, requires_grad=True)
    (torch.from_numpy(data[:32]) @ wt).sum().backward()
    np.testing.assert_array_equal(w.grad, wt.grad.numpy())
    overlapping = tg.from_numpy(data[16:48])
    loss = (first @ w).sum()
    overlapping *= 0.0  # rows 16..31 of the first batch do change
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


def test_size_copies_and_pickles_as_a_plain_int():
    import copy
    import pickle
    s = tg.tensor(np.zeros((3, 4))).size
    for c in (copy.copy(s), copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert c == 12 and type(c) is int


def test_one_no_grad_object_shared_by_threads_restores_each_threads_own_state():
    import threading
    ctx = tg.no_grad()
    inside, results = threading.Barrier(2), {}

    def run(name, enabled):
        with tg.set_grad_enabled(enabled):
            with ctx:
                inside.wait()  # both threads inside the shared block at once
            results[name] = tg.is_grad_enabled()
    threads = [threading.Thread(target=run, args=(n, e)) for n, e in (("A", True), ("B", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"A": True, "B": False}


def test_a_written_buffers_record_goes_with_the_buffer():
    import importlib
    import gc
    import weakref
    tape = importlib.import_module("tapegrad.engine.tensor")
    ps = [tg.tensor(np.zeros(4), requires_grad=True) for _ in range(50)]
    for p in ps:
        p.grad = np.ones(4)
    tg.optim.SGD(ps, lr=0.1).step()
    # these buffers' own entries, by identity: the table's size also moves when earlier tests' garbage is
    # collected, which made a count-based check fail now and then
    keys = [id(p.data) for p in ps]
    refs = [weakref.ref(p.data) for p in ps]
    assert all(tape._written_buffers[k][0]() is r() for k, r in zip(keys, refs))
    del ps, p
    gc.collect()
    assert all(r() is None for r in refs)
    # gone with their buffers (an id may already name a newer buffer, whose entry is alive)
    assert all(k not in tape._written_buffers or tape._written_buffers[k][0]() is not None for k in keys)


# ---- assigned gradients, copies and pickles ------------------------------------------------------------------

@pytest.mark.parametrize("bad, error", [
    (np.ones(3), ValueError),                    # another shape: would broadcast into the optimiser's update
    (np.ones((2, 1)), ValueError),
    (np.ones(2, np.float32), TypeError),         # another dtype
    (np.ones(2, np.int64), TypeError),
    (5.0, TypeError),                            # not an array
    ([1.0, 2.0], TypeError),
])
def test_an_assigned_grad_is_checked_where_it_is_assigned_as_torch(bad, error):
    x = leaf([1.0, 2.0])
    with pytest.raises(error, match="assigned grad"):
        x.grad = bad
    assert x.grad is None  # the refused value was not stored
    torch = pytest.importorskip("torch")
    xt = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises((RuntimeError, TypeError)):  # torch refuses each of them too
        xt.grad = torch.as_tensor(np.asarray(bad)) if isinstance(bad, np.ndarray) else bad


def test_an_assigned_grad_of_the_right_kind_is_stored_and_used():
    x = leaf([1.0, 2.0])
    x.grad = tg.tensor([0.5, 0.5], dtype=np.float64)  # a Tensor gives its array
    assert isinstance(x.grad, np.ndarray)
    (x * 2).sum().backward()                           # and the backward accumulates into it
    np.testing.assert_array_equal(x.grad, [2.5, 2.5])
    s = leaf(3.0)
    s.grad = np.float64(1.0)                           # a numpy scalar for a 0-d tensor
    assert isinstance(s.grad, np.ndarray) and s.grad.shape == ()
    x.grad = None
    assert x.grad is None


def test_deepcopy_copies_a_leaf_and_refuses_a_result_as_torch():
    import copy
    x = leaf([1.0, 2.0])
    x.grad = np.array([3.0, 4.0])
    c = copy.deepcopy(x)
    assert c.requires_grad and c.is_leaf and type(c) is type(x)
    assert not np.shares_memory(c.data, x.data) and not np.shares_memory(c.grad, x.grad)
    np.testing.assert_array_equal(c.grad, [3.0, 4.0])
    y = x * 3
    # a copy that kept y's graph sent its gradients to a copy of x, so x.grad silently stayed as it was
    with pytest.raises(RuntimeError, match="leaf tensors"):
        copy.deepcopy(y)
    torch = _torch()
    with pytest.raises(RuntimeError):
        copy.deepcopy(torch.ones(2, requires_grad=True) * 3)
    model = tg.Linear(3, 2)
    twin = copy.deepcopy(model)  # parameters are leaves: a module deep-copies, its weights apart
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p.data, q.data)
        assert not np.shares_memory(p.data, q.data)


@pytest.mark.parametrize("how", ["pickle", "copy"])
def test_a_pickled_or_copied_result_is_a_leaf_that_keeps_requires_grad_as_torch(how):
    import copy
    import pickle
    x = leaf([1.0, 2.0])
    y = x * 3  # its backward is a closure: pickling it failed with "Can't pickle local object"
    c = pickle.loads(pickle.dumps(y)) if how == "pickle" else copy.copy(y)
    assert c.is_leaf and c.requires_grad and c.grad is None
    np.testing.assert_array_equal(c.data, [3.0, 6.0])
    (c * c).sum().backward()
    np.testing.assert_array_equal(c.grad, [6.0, 12.0])
    assert x.grad is None  # nothing reached the original's leaf
    torch = _torch()
    xt = torch.tensor([1.0, 2.0], requires_grad=True)
    ct = pickle.loads(pickle.dumps(xt * 3)) if how == "pickle" else copy.copy(xt * 3)
    assert ct.is_leaf and ct.requires_grad


def test_a_pickled_leaf_keeps_its_grad():
    import pickle
    x = leaf([1.0, 2.0])
    x.grad = np.array([0.25, 0.5])
    c = pickle.loads(pickle.dumps(x))
    np.testing.assert_array_equal(c.grad, [0.25, 0.5])
    assert c.requires_grad and c.is_leaf


def test_a_0d_tensor_formats_as_its_number_as_torch():
    t = tg.tensor(np.float32(3.14159))
    assert f"{t:.2f}" == "3.14" and f"{t}" == format(np.float32(3.14159).item())
    with pytest.raises(TypeError):
        f"{tg.tensor([1.0, 2.0]):.2f}"
    torch = _torch()
    assert f"{torch.tensor(3.14159):.2f}" == "3.14"
    with pytest.raises(TypeError):
        f"{torch.tensor([1.0, 2.0]):.2f}"


def test_numpy_converts_a_tensor_to_a_numeric_array_as_torch():
    import io
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    t = tg.tensor(a, requires_grad=True)
    got = np.asarray(t)  # an object array of 0-d tensors before (a 300x300 tensor took 0.25 s)
    assert got.dtype == np.float32 and got.shape == (3, 2) and not got.flags.writeable
    np.testing.assert_array_equal(got, a)
    losses = np.array([t.sum(), t.mean()])
    assert losses.dtype == np.float32 and losses.tolist() == [15.0, 2.5]
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    copied = np.array(t)
    copied[0, 0] = 7.0  # np.array copies: the tensor keeps its value
    assert t.data[0, 0] == 0.0
    np.save(io.BytesIO(), t, allow_pickle=False)
    assert tg.tensor([tg.tensor(np.float64(1.0)), tg.tensor(np.float64(2.0))]).dtype == np.float64
    torch = _torch()
    assert np.asarray(torch.tensor(a)).dtype == np.float32


# ---- torch's names (porting audit, /work/audit/porting/REPORT.md f01, f08) -------------------------------------

def test_dim_and_keepdim_are_torchs_names_for_axis_and_keepdims():
    x = leaf(np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(x.sum(dim=1, keepdim=True).numpy(), x.sum(axis=1, keepdims=True).numpy())
    np.testing.assert_array_equal(tg.mean(x, dim=(0, 2)).numpy(), x.mean(axis=(0, 2)).numpy())
    assert tg.cat([x, x], dim=2).shape == (2, 3, 8) and tg.stack([x, x], dim=-1).shape == (2, 3, 4, 2)
    assert [p.shape for p in tg.split(x, 3, dim=2)] == [(2, 3, 3), (2, 3, 1)]
    np.testing.assert_array_equal(x.softmax(dim=0).numpy(), tg.softmax(x, axis=0).numpy())
    for call in (lambda: x.sum(axis=0, dim=1), lambda: x.mean(1, keepdims=True, keepdim=True),
                 lambda: tg.concat([x], axis=0, dim=0)):
        with pytest.raises(TypeError, match="not both"):
            call()


def test_floor_division_matches_torch_and_has_no_derivative_as_torch():
    a = np.array([-7.0, -1.5, 0.5, 7.0])
    x = leaf(a)
    got = x // 2
    np.testing.assert_array_equal(got.numpy(), np.floor(a / 2))
    np.testing.assert_array_equal((7 // tg.tensor([2, -2, 3])).numpy(), [3, -4, 2])
    with pytest.raises(RuntimeError, match="derivative of floor division"):
        got.sum().backward()
    torch = _torch()
    np.testing.assert_array_equal((torch.tensor(a) // 2).numpy(), got.numpy())


def test_torch_reduction_and_shape_methods_edge_cases():
    x = tg.tensor(np.array([[1.0, 4.0], [4.0, 2.0]]))
    assert x.max().item() == 4.0 and x.argmax().item() == 1 and x.dim() == 2 and x.tolist() == [[1.0, 4.0], [4.0, 2.0]]
    values, indices = x.max(dim=0)
    assert values.tolist() == [4.0, 4.0] and indices.tolist() == [1, 0]
    assert x.max(0, keepdim=True).values.shape == (1, 2) and x.argmax(1, keepdim=True).shape == (2, 1)
    with pytest.raises(TypeError, match="keepdim"):
        x.max(keepdim=True)
    with pytest.raises(ValueError, match="empty"):
        tg.tensor(np.zeros((0, 3))).max()
    assert x.squeeze(0).shape == (2, 2)        # a dimension of another length stays, as torch
    assert tg.tensor(np.zeros((1, 2, 1))).squeeze().shape == (2,)
    with pytest.raises(ValueError, match="only length-1 dimensions expand"):
        x.expand(3, 3)
    assert x.contiguous() is x and x.T.contiguous().data.flags.c_contiguous
    assert tg.flatten(tg.tensor(3.0)).shape == (1,)
    assert (2 ** tg.tensor([1, 2, 3])).tolist() == [2, 4, 8]
    with pytest.raises(ValueError, match="negative integer powers"):
        tg.tensor([1, 2]) ** tg.tensor([1, -1])
    torch = _torch()
    t = torch.tensor([[1.0, 4.0], [4.0, 2.0]])
    assert t.max(dim=0).indices.tolist() == [1, 0] and t.squeeze(0).shape == (2, 2)
    assert (2 ** torch.tensor([1, 2, 3])).tolist() == [2, 4, 8]


# ---- f07: a write after the forward is an error only where the backward reads what was written -------------

_WRITE_CASES = {
    # name: (forward, which input is written afterwards); x and w require grad, c does not
    "add_then_write_addend": (lambda x, w, c: (x + w).sum(), "w"),
    "linear_constant_input_then_step": (lambda x, w, c: (c @ w.T).sum(), "w"),        # w's grad reads c only
    "linear_then_write_input": (lambda x, w, c: (x @ w.T).sum(), "w"),                # x's grad reads w
    "mul_then_write_factor": (lambda x, w, c: (x * w).sum(), "x"),
    "mul_constant_then_write_weight": (lambda x, w, c: (c * w).sum(), "w"),
    "exp_then_write_input": (lambda x, w, c: x.exp().sum(), "x"),                     # exp reads its output
    "log_then_write_input": (lambda x, w, c: (x * x + 1).log().sum() + x.log().sum(), "x"),
    "view_then_write_base": (lambda x, w, c: (x.reshape(-1) * w.reshape(-1)).sum(), "x"),
    "div_then_write_numerator": (lambda x, w, c: (x / w).sum(), "x"),
    "div_then_write_denominator": (lambda x, w, c: (x / w).sum(), "w"),
}


@pytest.mark.parametrize("name", sorted(_WRITE_CASES))
def test_a_write_after_the_forward_fails_the_backward_where_torch_does_and_never_gives_a_wrong_gradient(name):
    torch = _torch()
    fn, written = _WRITE_CASES[name]
    rng = np.random.default_rng(3)
    x0, w0, c0 = rng.random((2, 3)) + 1, rng.random((2, 3)) + 1, rng.random((2, 3)) + 1

    def run(lib, write=True):
        if lib == "torch":
            x, w = (torch.tensor(a, requires_grad=True) for a in (x0, w0))
            loss = fn(x, w, torch.tensor(c0))
            with torch.no_grad():
                if write:
                    {"x": x, "w": w}[written].sub_(0.5)
        else:
            x, w = (tg.tensor(a, requires_grad=True) for a in (x0, w0))
            loss = fn(x, w, tg.tensor(c0))
            with tg.no_grad():
                if write:
                    {"x": x, "w": w}[written].__isub__(0.5)
        try:
            loss.backward()
        except RuntimeError as e:
            assert "modified" in str(e) or "inplace" in str(e)
            return None
        return [None if v.grad is None else np.asarray(v.grad) for v in (x, w)]

    def same(got, want):
        for g, t in zip(got, want):
            assert (g is None) == (t is None)
            if g is not None:
                np.testing.assert_allclose(g, t, rtol=1e-12)
    want, got = run("torch"), run("tapegrad")
    if want is not None:  # torch runs: so do we, with its gradients
        assert got is not None, "torch runs the backward, tapegrad raises"
        same(got, want)
    elif got is not None:  # torch raises because its formula needs the changed value; ours did not need it
        same(got, run("torch", write=False))


def test_grad_and_backward_take_torchs_arguments():
    x, unused = leaf([1.0, 2.0, 3.0]), leaf([1.0])
    y = (x ** 2).sum()
    (gx,) = tg.grad(y, x, retain_graph=True)  # a single tensor, as torch.autograd.grad takes it
    np.testing.assert_array_equal(gx, [2.0, 4.0, 6.0])
    with pytest.raises(RuntimeError, match="input 1 was not used"):
        tg.grad(y, [x, unused])
    assert tg.grad([y], [x, unused], grad_outputs=[np.float64(2.0)], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.grad(y, [tg.tensor([1.0])])
    with pytest.raises(NotImplementedError, match="first derivatives"):
        tg.grad(y, x, create_graph=True)
    z = x * 2
    z.backward(gradient=np.ones(3))
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])
    with pytest.raises(TypeError, match="once"):
        (x * 2).backward(np.ones(3), gradient=np.ones(3))
    torch = _torch()
    xt, ut = torch.tensor([1.0, 2.0, 3.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    yt = (xt ** 2).sum()
    with pytest.raises(RuntimeError):
        torch.autograd.grad(yt, [xt, ut], retain_graph=True)
    assert torch.autograd.grad(yt, [xt, ut], allow_unused=True)[1] is None


def test_writes_to_inputs_whose_values_a_backward_does_not_read_are_no_error_as_torch():
    """embedding, max along a dim, dropout and mse read indices, masks or their own differences in the
    backward, not their inputs' values: a write to the input after the forward is fine, as in torch."""
    torch = _torch()
    w = leaf(np.arange(6.0).reshape(3, 2))
    x = leaf([[1.0, 5.0], [7.0, 2.0]])
    losses = [tg.embedding(w, np.array([0, 2, 2])).sum(), x.max(dim=1).values.sum(),
              tg.dropout(x, 0.5, True).sum(), tg.mse(x, np.zeros((2, 2)))]
    with tg.no_grad():
        w -= 1.0
        x -= 1.0
    for loss in losses:
        loss.backward()
    np.testing.assert_array_equal(w.grad, [[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    wt = torch.tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    lt = torch.nn.functional.embedding(torch.tensor([0, 2, 2]), wt).sum()
    with torch.no_grad():
        wt -= 1.0
    lt.backward()
    np.testing.assert_array_equal(wt.grad.numpy(), w.grad)


def test_a_leaf_that_requires_grad_only_after_the_forward_gets_no_gradient_as_torch():
    torch = _torch()
    x = tg.tensor(np.array([1.0, 2.0]))  # no grad at the forward
    w = leaf([10.0, 20.0])
    loss = (x * w).sum() + (x.reshape(1, 2) @ w.reshape(2, 1)).sum()
    x.requires_grad_(True)
    with tg.no_grad():
        w -= 100.0  # x's gradient would read the written w: it must not be made at all
    loss.backward()
    assert x.grad is None
    np.testing.assert_array_equal(w.grad, [2.0, 4.0])
    xt = torch.tensor([1.0, 2.0], dtype=torch.float64)
    wt = torch.tensor([10.0, 20.0], dtype=torch.float64, requires_grad=True)
    lt = (xt * wt).sum()
    xt.requires_grad_(True)
    lt.backward()
    assert xt.grad is None


def test_max_over_everything_sends_the_gradient_to_a_nan_as_torch():
    torch = _torch()
    for op in ("max", "min"):
        x = leaf([1.0, np.nan, 3.0])
        getattr(x, op)().backward()
        xt = torch.tensor([1.0, np.nan, 3.0], requires_grad=True)
        getattr(xt, op)().backward()
        np.testing.assert_array_equal(x.grad, xt.grad.numpy())
