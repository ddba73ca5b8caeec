"""Tensor behaviour: construction and dtype rules, properties, operators, promotion, indexing, shapes.

Gradients here are checked against hand-derived values; every op also has a finite-difference
gradcheck in test_ops_gradcheck.py.
"""
import numpy as np
import pytest

import tapegrad as tg
from tapegrad.engine.tensor import from_numpy


def leaf(a, dtype=np.float64):
    return tg.tensor(np.asarray(a, dtype=dtype), requires_grad=True)


# ---- construction and dtypes --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensor_keeps_a_floating_arrays_dtype(dtype):
    a = np.arange(6, dtype=dtype).reshape(2, 3)
    t = tg.tensor(a)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.parametrize("data", [1.5, [1.0, 2.0, 3.0], [[1.0, 2.0]], (1.0, 2.0), [1, 2.5]])
def test_python_floats_and_float_lists_become_float32(data):
    t = tg.tensor(data)
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t.numpy(), np.asarray(data, dtype=np.float32))


@pytest.mark.parametrize("data,dtype", [(2, np.int64), ([1, 2, 3], np.int64), ([[0], [2]], np.int64),
                                        (True, np.bool_), ([True, False], np.bool_)])
def test_python_ints_become_int64_and_bools_bool_as_in_torch(data, dtype):
    t = tg.tensor(data)
    assert t.dtype == dtype
    np.testing.assert_array_equal(t.numpy(), np.asarray(data))


def test_numpy_scalars_keep_their_dtype():
    assert tg.tensor(np.float64(2.5)).dtype == np.float64
    assert tg.tensor(np.float32(2.5)).dtype == np.float32
    assert tg.tensor(np.int64(3)).dtype == np.int64


def test_integer_arrays_stay_integer():
    t = tg.tensor(np.array([0, 2, 1]))
    assert t.dtype == np.int64


def test_dtype_argument_casts():
    assert tg.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert tg.tensor(np.ones(2, np.float64), dtype="float32").dtype == np.float32
    assert tg.tensor([1, 2], dtype=np.int32).dtype == np.int32


def test_float16_is_rejected_with_a_type_error():
    with pytest.raises(TypeError, match="float16"):
        tg.tensor(np.zeros(3, np.float16))


def test_strings_are_rejected():
    with pytest.raises(TypeError):
        tg.tensor(["a", "b"])


def test_requires_grad_on_an_integer_tensor_is_a_type_error():
    with pytest.raises(TypeError, match="int64"):
        tg.tensor(np.array([1, 2]), requires_grad=True)
    with pytest.raises(TypeError):
        tg.tensor(np.array([1, 2])).requires_grad_()
    with pytest.raises(TypeError):
        tg.Tensor(np.array([True]), requires_grad=True)


def test_tensor_from_a_tensor_copies_its_data():
    a = tg.tensor(np.ones(3), requires_grad=True)
    b = tg.tensor(a)
    assert not np.shares_memory(b.data, a.data)
    np.testing.assert_array_equal(b.numpy(), a.numpy())
    assert not b.requires_grad and b.is_leaf


def test_tensor_from_torch():
    torch = pytest.importorskip("torch")
    t = tg.tensor(torch.arange(4, dtype=torch.float64))
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t.numpy(), [0, 1, 2, 3])


def test_device_cpu_and_bad_device():
    t = tg.tensor([1.0], device="cpu")
    assert t.device == "cpu"
    with pytest.raises(ValueError, match="device"):
        tg.tensor([1.0], device="tpu")
    with pytest.raises(TypeError):
        tg.tensor([1.0], device=0)


def test_cuda_device_raises_a_clear_error_without_a_gpu():
    if tg.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda"):
        tg.tensor([1.0], device="cuda")


# ---- properties and conversion ------------------------------------------------------------------------------

def test_properties():
    t = tg.tensor(np.zeros((2, 3, 4)))
    assert t.shape == (2, 3, 4)
    assert t.ndim == 3
    assert t.size == 24
    assert len(t) == 2
    assert t.device == "cpu"
    assert t.is_leaf
    assert t.grad is None
    assert not t.requires_grad


def test_numpy_shares_memory_on_cpu():
    a = np.arange(3.0)
    t = from_numpy(a)
    assert np.shares_memory(t.numpy(), a)
    assert not np.shares_memory(tg.tensor(a).numpy(), a)  # tensor() copies, as torch.tensor


def test_item_and_its_error():
    assert tg.tensor(np.array([[2.5]])).item() == 2.5
    assert isinstance(tg.tensor(np.float64(1.0)).item(), float)
    with pytest.raises(ValueError, match="one element"):
        tg.tensor(np.ones(2)).item()


def test_detach_shares_data_and_cuts_the_graph():
    x = leaf([1.0, 2.0])
    y = x * 3
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    assert np.shares_memory(d.data, y.data)
    (x * d).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 6.0])  # d is a constant: no path through y


def test_repr_mentions_dtype_and_requires_grad():
    r = repr(leaf([1.0]))
    assert "float64" in r and "requires_grad=True" in r


def test_to_dtype_is_differentiable_and_grad_keeps_the_leaf_dtype():
    x = leaf([1.0, 2.0], np.float32)
    y = x.double()
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [2.0, 4.0])
    assert x.float() is x
    with pytest.raises(TypeError):
        x.to(np.int32)
    assert x.to("cpu") is x


# ---- operators and promotion --------------------------------------------------------------------------------

def test_arithmetic_operators_match_numpy():
    a = np.array([[1.0, -2.0, 3.0]])
    b = np.array([[0.5], [4.0]])
    ta, tb = tg.tensor(a), tg.tensor(b)
    np.testing.assert_allclose((ta + tb).numpy(), a + b)
    np.testing.assert_allclose((ta - tb).numpy(), a - b)
    np.testing.assert_allclose((ta * tb).numpy(), a * b)
    np.testing.assert_allclose((ta / tb).numpy(), a / b)
    np.testing.assert_allclose((-ta).numpy(), -a)
    np.testing.assert_allclose((tb ** 2).numpy(), b ** 2)
    np.testing.assert_allclose((tb ** 0.5).numpy(), b ** 0.5)
    np.testing.assert_allclose((tb @ ta).numpy(), b @ a)


def test_reflected_operators_with_python_numbers():
    t = tg.tensor(np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose((2 + t).numpy(), [3, 4, 6])
    np.testing.assert_allclose((2 - t).numpy(), [1, 0, -2])
    np.testing.assert_allclose((2 * t).numpy(), [2, 4, 8])
    np.testing.assert_allclose((2 / t).numpy(), [2, 1, 0.5])


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "@"])
def test_ndarray_on_the_left_gives_a_tensor_with_gradient(op):
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = leaf([[0.5, -1.0], [2.0, 3.0]])
    y = eval(f"a {op} x")
    assert isinstance(y, tg.Tensor)
    np.testing.assert_allclose(y.numpy(), eval(f"a {op} x.data"))
    y.sum().backward()
    g = {"+": np.ones((2, 2)), "-": -np.ones((2, 2)), "*": a, "/": -a / x.data ** 2,
         "@": a.T @ np.ones((2, 2))}[op]
    np.testing.assert_allclose(x.grad, g)


def test_numpy_scalar_on_the_left_keeps_float32():
    t = tg.tensor([1.0, 2.0])
    y = np.float64(2.0) * t
    assert isinstance(y, tg.Tensor) and y.dtype == np.float32


@pytest.mark.parametrize("scalar", [2.5, 3, np.float64(0.5), True])
def test_float32_with_a_python_number_stays_float32(scalar):
    t = tg.tensor([1.0, 2.0])
    for y in (t + scalar, scalar * t, t / scalar, t ** 2.0):
        assert y.dtype == np.float32
    if isinstance(scalar, bool):  # torch refuses subtraction with a bool
        with pytest.raises(TypeError, match="bool"):
            t - scalar
    else:
        assert (t - scalar).dtype == np.float32


def test_float32_with_an_integer_array_stays_float32():
    t = tg.tensor([1.0, 2.0])
    assert (t + np.array([1, 2])).dtype == np.float32


def test_float32_with_float64_promotes_and_grads_keep_each_leafs_dtype():
    a = leaf([1.0, 2.0], np.float32)
    b = leaf([3.0, 4.0], np.float64)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64
    np.testing.assert_allclose(a.grad, [3.0, 4.0])
    np.testing.assert_allclose(b.grad, [1.0, 2.0])


def test_integer_tensor_with_a_python_float_is_not_truncated():
    t = tg.tensor(np.array([1, 2]))
    np.testing.assert_allclose((t * 2.5).numpy(), [2.5, 5.0])
    np.testing.assert_allclose((t + 0.5).numpy(), [1.5, 2.5])
    assert (t * 2.5).dtype == np.float32 and (t + 0.5).dtype == np.float32  # torch's default dtype
    assert (t * 2).dtype == np.int64


def test_integer_mean_is_a_float():
    np.testing.assert_allclose(tg.tensor(np.array([1, 2])).mean().numpy(), 1.5)


def test_pow_takes_a_tensor_exponent_and_refuses_other_objects():
    np.testing.assert_allclose((tg.tensor([2.0, 3.0]) ** tg.tensor([2.0, 0.5])).numpy(), [4.0, 3.0 ** 0.5], rtol=1e-6)
    with pytest.raises(TypeError, match="real exponent"):
        tg.tensor([1.0]) ** "2"


def test_comparisons_give_boolean_arrays():
    t = tg.tensor(np.array([1.0, 2.0, 3.0]))
    m = t > 1.5
    assert isinstance(m, np.ndarray) and m.dtype == bool
    np.testing.assert_array_equal(m, [False, True, True])
    np.testing.assert_array_equal(t <= tg.tensor(np.array([1.0, 1.0, 5.0])), [True, False, True])


def test_eq_and_ne_are_elementwise_masks_like_the_other_comparisons():
    t = tg.tensor(np.array([0.0, 1.0, 0.0, 2.0]))
    for m, expect in ((t == 0, [True, False, True, False]), (t != 0, [False, True, False, True]),
                      (t == tg.tensor(np.array([0.0, 0.0, 1.0, 2.0])), [True, False, False, True]),
                      (0 == t, [True, False, True, False])):
        assert isinstance(m, np.ndarray) and m.dtype == bool
        np.testing.assert_array_equal(m, expect)
    assert (t == None) is False and (t != None) is True  # noqa: E711 (torch answers so too)
    assert hash(t) == object.__hash__(t)


# ---- matmul shapes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((2, 3), (3, 4)),
                                   ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((3,), (5, 3, 4)),
                                   ((5, 2, 3), (3,)), ((5, 1, 2, 3), (4, 3, 2))])
def test_matmul_shapes_and_grads_follow_numpy(sa, sb):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    ta, tb = leaf(a), leaf(b)
    y = ta @ tb
    expect = a @ b
    assert y.shape == np.shape(expect)
    np.testing.assert_allclose(y.numpy(), expect)
    g = rng.standard_normal(np.shape(expect))
    y.backward(g)
    assert ta.grad.shape == sa and tb.grad.shape == sb


def test_vector_dot_vector_is_0d():
    x = leaf([1.0, 2.0, 3.0])
    y = x @ x
    assert y.shape == ()
    assert y.item() == 14.0
    y.backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])


def test_matmul_errors():
    with pytest.raises(ValueError, match="do not match"):
        tg.tensor(np.ones((2, 3))) @ tg.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match="dimension"):
        tg.matmul(tg.tensor(np.float64(1.0)), tg.tensor(np.ones(2)))


# ---- reductions ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [None, 0, 1, -1, -2, (0, 2), (-1, 0), [1]])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sum_and_mean_match_numpy_with_any_axes(axis, keepdims):
    a = np.random.default_rng(1).standard_normal((2, 3, 4))
    ax = tuple(axis) if isinstance(axis, list) else axis
    for name in ("sum", "mean"):
        x = leaf(a)
        y = getattr(x, name)(axis=axis, keepdims=keepdims)
        expect = getattr(a, name)(axis=ax, keepdims=keepdims)
        assert y.shape == np.shape(expect)
        np.testing.assert_allclose(y.numpy(), expect)
        y.backward(np.ones(y.shape))
        n = a.size / np.size(expect)
        np.testing.assert_allclose(x.grad, np.full(a.shape, 1.0 if name == "sum" else 1.0 / n))


def test_reductions_of_a_0d_tensor():
    s = leaf(3.0)
    for axis in (None, 0, -1):
        y = s.sum(axis)
        assert y.shape == () and y.item() == 3.0
    y = s.mean()
    y.backward()
    assert s.grad == 1.0


def test_reduction_axis_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        tg.tensor(np.ones((2, 3))).sum(axis=2)
    with pytest.raises(ValueError, match="out of range"):
        tg.tensor(np.ones((2, 3))).mean(axis=-3)


def test_mean_over_no_elements_is_nan_as_torch():
    torch = pytest.importorskip("torch")
    for a, axis in ((np.ones((0, 3)), 0), (np.ones((0, 3)), None), (np.ones((2, 0)), 1)):
        want = torch.tensor(a).mean() if axis is None else torch.tensor(a).mean(dim=axis)
        x = tg.tensor(a, requires_grad=True)
        got = x.mean(axis=axis)
        assert got.shape == tuple(want.shape)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        got.sum().backward()
        assert x.grad.shape == a.shape


def test_numpy_of_a_tensor_that_requires_grad_is_a_read_only_view():
    w = tg.tensor([1.0, 2.0], requires_grad=True)
    y = (w * w).sum()
    view = w.numpy()
    with pytest.raises(ValueError, match="read-only"):
        view[:] += 1  # would change what y's backward reads, unseen (torch refuses .numpy() here)
    y.backward()
    np.testing.assert_array_equal(w.grad, [2.0, 4.0])
    c = tg.tensor([1.0, 2.0])
    c.numpy()[0] = 5.0  # a constant shares its array writably, as torch's .numpy()
    assert c.numpy()[0] == 5.0


# ---- shapes -------------------------------------------------------------------------------------------------

def test_reshape_spellings():
    x = leaf(np.arange(6.0))
    assert x.reshape(2, 3).shape == (2, 3)
    assert x.reshape((3, 2)).shape == (3, 2)
    assert x.reshape([-1, 2]).shape == (3, 2)
    assert x.reshape(-1).shape == (6,)
    assert tg.reshape(x, -1).shape == (6,)
    y = x.reshape(2, 3)
    y.backward(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.grad, np.arange(6.0))


def test_transpose_permutations_including_negative_axes():
    a = np.arange(24.0).reshape(2, 3, 4)
    g = np.random.default_rng(2).standard_normal((4, 2, 3))
    for axes in [(2, 0, 1), (-1, 0, 1), (-1, -3, -2)]:
        x = leaf(a)
        y = x.transpose(axes)
        np.testing.assert_array_equal(y.numpy(), a.transpose(2, 0, 1))
        y.backward(g)
        np.testing.assert_array_equal(x.grad, g.transpose(1, 2, 0))


def test_transpose_of_two_axes_swaps_them_as_torch_and_a_full_permutation_still_permutes():
    a = np.arange(24.0).reshape(2, 3, 4)
    x = leaf(a)
    y = x.transpose(2, 1, 0)  # a full permutation (ndim != 2): numpy's meaning, kept
    np.testing.assert_array_equal(y.numpy(), np.swapaxes(a, 0, 2))
    assert x.transpose(0, -1, 1).shape == (2, 4, 3)
    np.testing.assert_array_equal(x.transpose(0, 2).numpy(), np.swapaxes(a, 0, 2))  # torch: swap two
    np.testing.assert_array_equal(tg.transpose(x, -1, 1).numpy(), np.swapaxes(a, 1, 2))
    b = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(tg.tensor(b).transpose(0, 1).numpy(), b.T)  # torch: a swap, not the identity
    np.testing.assert_array_equal(tg.tensor(b).transpose(1, 0).numpy(), b.T)
    np.testing.assert_array_equal(tg.tensor(b).transpose((0, 1)).numpy(), b.T)
    np.testing.assert_array_equal(tg.tensor(np.arange(3.0)).transpose(0, 0).numpy(), np.arange(3.0))
    with pytest.raises(ValueError, match="two axes"):
        x.transpose(0)


def test_T_reverses_axes_and_transpose_rejects_bad_axes():
    a = np.arange(24.0).reshape(2, 3, 4)
    assert tg.tensor(a).T.shape == (4, 3, 2)
    assert tg.tensor(np.ones(3)).T.shape == (3,)
    with pytest.raises(ValueError):
        tg.tensor(a).transpose(0, 0, 1)
    with pytest.raises(ValueError, match="out of range"):
        tg.tensor(a).transpose(0, 3)
    with pytest.raises(ValueError, match="permutation"):
        tg.tensor(a).permute(0, 0, 1)


# ---- indexing -----------------------------------------------------------------------------------------------

def _index_grad(a, key, g=None):
    x = leaf(a)
    y = x[key]
    np.testing.assert_array_equal(y.numpy(), a[key.data if isinstance(key, tg.Tensor) else key])
    g = np.ones(y.shape) if g is None else g
    y.backward(g)
    return x.grad


def test_basic_slicing_scatters_back():
    a = np.arange(12.0).reshape(3, 4)
    expect = np.zeros((3, 4))
    expect[1:, ::2] = 1
    np.testing.assert_array_equal(_index_grad(a, (slice(1, None), slice(None, None, 2))), expect)
    expect = np.zeros((3, 4))
    expect[-1] = 1
    np.testing.assert_array_equal(_index_grad(a, -1), expect)
    expect = np.zeros((3, 4))
    expect[::-1, 1] = [1, 2, 3]
    np.testing.assert_array_equal(_index_grad(a, (slice(None, None, -1), 1), np.array([1.0, 2.0, 3.0])), expect)


def test_integer_array_indexing_with_repeats_adds():
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(_index_grad(a, [0, 2, 0, 0]), np.array([[3.0] * 4, [0] * 4, [1.0] * 4]))
    # a (rows, cols) pair with a repeated element
    g = _index_grad(a, (np.array([1, 1, -1]), np.array([2, 2, 0])), np.array([1.0, 10.0, 5.0]))
    expect = np.zeros((3, 4))
    expect[1, 2] = 11.0
    expect[2, 0] = 5.0
    np.testing.assert_array_equal(g, expect)
    # an array index mixed with a slice
    g = _index_grad(a, (slice(None), [3, 3]))
    expect = np.zeros((3, 4))
    expect[:, 3] = 2
    np.testing.assert_array_equal(g, expect)


def test_integer_tensor_as_an_index():
    a = np.arange(6.0).reshape(3, 2)
    g = _index_grad(a, tg.tensor(np.array([2, 2])))
    np.testing.assert_array_equal(g, [[0, 0], [0, 0], [2, 2]])


def test_boolean_mask_indexing():
    a = np.arange(6.0).reshape(2, 3)
    mask = np.array([[True, False, True], [False, True, True]])
    g = _index_grad(a, mask, np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(g, [[1, 0, 2], [0, 3, 4]])
    g = _index_grad(a, np.array([False, True]))
    np.testing.assert_array_equal(g, [[0, 0, 0], [1, 1, 1]])


def test_none_and_ellipsis_indexing():
    a = np.arange(6.0).reshape(2, 3)
    x = leaf(a)
    y = x[None, ..., 1]
    assert y.shape == (1, 2)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 1, 0], [0, 1, 0]])


def test_index_on_a_0d_result_and_iteration():
    x = leaf([1.0, 2.0, 3.0])
    parts = list(x)
    assert len(parts) == 3 and parts[1].item() == 2.0
    (parts[0] * parts[2]).backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0])


def test_iterating_a_0d_tensor_is_an_error_not_an_empty_loop():
    with pytest.raises(TypeError, match="0-d"):
        list(tg.tensor(1.0))


def test_truth_value_and_float_of_one_element_tensors():
    assert not tg.tensor(0.0) and tg.tensor([[3.0]])
    with pytest.raises(ValueError, match="ambiguous"):
        bool(tg.tensor([1.0, 2.0]))
    assert float(tg.tensor(np.array([2.5]))) == 2.5
    with pytest.raises(ValueError):
        float(tg.tensor([1.0, 2.0]))


def test_0d_results_and_grads_are_arrays_not_numpy_scalars():
    x = leaf(3.0)
    y = x * x
    assert isinstance(y.data, np.ndarray) and isinstance(y.numpy(), np.ndarray)
    assert isinstance(tg.tensor(np.ones(3)).sum().data, np.ndarray)
    y.backward()
    (x * x).backward()  # accumulation of two 0-d grads
    assert isinstance(x.grad, np.ndarray) and x.grad.flags.writeable and x.grad == 12.0


@pytest.mark.parametrize("a", [np.array([1j]), np.array(["a"]), np.array([object()])])
def test_non_real_arrays_are_rejected(a):
    with pytest.raises(TypeError, match="dtype"):
        tg.tensor(a)


def test_numel_counts_elements_of_any_tensor_as_torch():
    assert tg.tensor(np.zeros((2, 3, 4))).numel() == 24
    assert tg.tensor(1.5).numel() == 1
    assert tg.tensor(np.zeros((0, 5))).numel() == 0
