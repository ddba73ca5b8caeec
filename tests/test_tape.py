"""The tape: accumulation into leaves, the iterative walk, graph release, no_grad, memory, threads."""
import gc
import threading
import tracemalloc
import weakref

import numpy as np
import pytest

import tapegrad as tg


def leaf(a, dtype=np.float64):
    return tg.tensor(np.asarray(a, dtype=dtype), requires_grad=True)


# ---- accumulation -------------------------------------------------------------------------------------------

def test_grads_accumulate_across_backward_calls():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [3 + 2, 3 + 4])


def test_a_value_used_twice_gets_both_contributions():
    x = leaf(3.0)
    y = x * x + x
    y.backward()
    assert x.grad == 7.0


def test_diamond_graph():
    x = leaf([0.5, -1.0])
    y = x.exp()               # shared subexpression
    a = y * 2
    b = y.tanh()
    (a * b).sum().backward()
    e = np.exp(x.data)
    expect = (2 * np.tanh(e) + 2 * e * (1 - np.tanh(e) ** 2)) * e
    np.testing.assert_allclose(x.grad, expect)


def test_wide_fan_out_and_fan_in():
    x = leaf(np.ones(3))
    total = x * 0
    for k in range(1, 51):
        total = total + x * k
    total.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, sum(range(1, 51))))


def test_leaf_grads_are_independent_writable_arrays():
    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (x + y).sum().backward()  # add hands the same grad_out to both parents
    assert isinstance(x.grad, np.ndarray) and x.grad.flags.writeable
    x.grad *= 10
    np.testing.assert_array_equal(y.grad, [1.0, 1.0])


def test_grad_of_a_leaf_keeps_the_leaf_dtype_through_mixed_precision():
    x = leaf(np.ones((2, 2)), np.float32)
    w = tg.tensor(np.full((2, 2), 0.5))  # float64 constant: y is float64
    y = (x * w).sum(axis=0)
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 0.5)


def test_backward_of_a_leaf_itself():
    x = leaf([1.0, 2.0])
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_non_leaf_tensors_do_not_store_grad():
    x = leaf([1.0])
    y = x * 2
    (y * 3).sum().backward()
    assert y.grad is None and not y.is_leaf
    np.testing.assert_array_equal(x.grad, [6.0])


def test_constants_get_no_grad():
    x = leaf([1.0])
    c = tg.tensor(np.array([2.0]))
    (x * c).sum().backward()
    assert c.grad is None


# ---- backward arguments -------------------------------------------------------------------------------------

def test_backward_of_a_non_scalar_needs_grad():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = x * x
    with pytest.raises(RuntimeError, match="one-element"):
        y.backward()
    g = np.array([[1.0, 0.0], [2.0, -1.0]])
    y.backward(g)
    np.testing.assert_allclose(x.grad, 2 * x.data * g)


def test_backward_grad_can_be_a_tensor_list_or_other_dtype():
    x = leaf([1.0, 2.0], np.float32)
    (x * 2).backward(tg.tensor(np.array([1.0, 1.0])))  # float64 grad for a float32 output
    assert x.grad.dtype == np.float32
    x.grad = None
    (x * 2).backward([1.0, 2.0])
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_backward_grad_of_the_wrong_shape():
    x = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3))


def test_backward_of_a_one_element_non_0d_output():
    x = leaf([[2.0]])
    (x * x).backward()
    np.testing.assert_array_equal(x.grad, [[4.0]])


def test_backward_without_requires_grad_is_an_error():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.tensor(np.ones(2)).sum().backward()


def test_backward_twice_is_an_error_unless_retain_graph():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward()
    x.grad = None
    z = (x * x).sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_allclose(x.grad, 2 * 2 * x.data)
    with pytest.raises(RuntimeError, match="retain_graph"):
        z.backward()


def test_backward_through_a_released_shared_subgraph_is_an_error():
    x = leaf([1.0])
    h = x.exp()
    (h * 2).sum().backward()
    with pytest.raises(RuntimeError, match="released"):
        (h * 3).sum().backward()


def test_detach_stops_gradient():
    x = leaf([1.0, 2.0])
    y = (x * 2).detach() * x
    y.sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)  # not 4 x


# ---- long chains: the walk is iterative ---------------------------------------------------------------------

def test_ten_thousand_step_chain_backpropagates():
    x = leaf([0.5, -0.3])
    y = x
    for _ in range(10_000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001 ** 10_000), rtol=1e-9)


def test_unrolled_rnn_like_chain_of_ten_thousand_steps():
    rng = np.random.default_rng(0)
    w = leaf(rng.standard_normal((3, 3)) * 0.3)
    h = tg.tensor(np.zeros((1, 3)))
    x = tg.tensor(np.ones((1, 3)))
    for _ in range(10_000):
        h = tg.tanh(h @ w + x)
    h.sum().backward()
    assert w.grad.shape == (3, 3) and np.isfinite(w.grad).all()


def test_a_long_chain_that_is_never_backpropagated_frees_without_recursion():
    x = leaf([1.0])
    y = x
    for _ in range(30_000):
        y = y + 1.0
    ref = weakref.ref(y)
    del y
    assert ref() is None


# ---- graph release and memory -------------------------------------------------------------------------------

def test_graph_is_released_after_backward():
    x = leaf(np.ones(4))
    mid = x.exp()
    mid_ref = weakref.ref(mid)
    loss = (mid * 2).sum()
    del mid
    assert mid_ref() is not None  # kept alive by loss's graph
    loss.backward()
    assert mid_ref() is None  # loss still exists, but its graph is gone
    assert loss.item() == pytest.approx(8 * np.e)


def test_retain_graph_keeps_the_graph():
    x = leaf(np.ones(4))
    mid = x.exp()
    mid_ref = weakref.ref(mid)
    loss = (mid * 2).sum()
    del mid
    loss.backward(retain_graph=True)
    assert mid_ref() is not None
    loss.backward()
    assert mid_ref() is None


def test_forward_without_backward_frees_its_graph_by_reference_counting():
    x = leaf(np.ones((8, 8)))
    gc.disable()  # no cycles: plain reference counting must free the graph
    try:
        refs = []
        for _ in range(5):
            mid = x @ x
            refs.append(weakref.ref(mid))
            out = (mid.tanh() * 2).sum()
            del mid, out
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


def test_repeated_forward_without_backward_does_not_grow_memory():
    rng = np.random.default_rng(0)
    w = leaf(rng.standard_normal((64, 64)))
    x = tg.tensor(rng.standard_normal((32, 64)))

    def step():
        h = x
        for _ in range(5):
            h = tg.relu(h @ w)
        return h.mean()

    for _ in range(3):
        step()  # warm up caches
    tracemalloc.start()
    try:
        step()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            loss = step()
        del loss
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # one step's graph holds ~5 * 2 * 32 * 64 * 8 bytes = 160 KB; 200 leaked steps would be ~32 MB
    assert grown < 200_000, grown


def test_training_loop_memory_is_flat():
    rng = np.random.default_rng(1)
    w = leaf(rng.standard_normal((32, 32)) * 0.1)
    x = tg.tensor(rng.standard_normal((16, 32)))

    def step():
        loss = tg.tanh(x @ w).sum()
        loss.backward()
        w.grad = None

    step()
    tracemalloc.start()
    try:
        step()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            step()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 100_000, grown


# ---- no_grad ------------------------------------------------------------------------------------------------

def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with tg.no_grad():
        assert not tg.is_grad_enabled()
        y = (x * 2).exp().sum()
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._node is None
    with pytest.raises(RuntimeError):
        y.backward()


def test_no_grad_nests_and_restores_after_an_exception():
    with tg.no_grad():
        with tg.no_grad():
            pass
        assert not tg.is_grad_enabled()
        with tg.enable_grad():
            assert tg.is_grad_enabled()
            y = leaf([1.0]) * 2
        assert y.requires_grad
        assert not tg.is_grad_enabled()
    assert tg.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with tg.no_grad():
            1 / 0
    assert tg.is_grad_enabled()


def test_no_grad_in_one_thread_does_not_affect_another():
    inside = threading.Event()
    done = threading.Event()
    seen = {}

    def silent():
        with tg.no_grad():
            seen["a_enabled"] = tg.is_grad_enabled()
            inside.set()
            done.wait(5)
            seen["a_records"] = (leaf([1.0]) * 2).requires_grad

    t = threading.Thread(target=silent)
    t.start()
    assert inside.wait(5)
    try:
        assert tg.is_grad_enabled()  # this thread still records
        x = leaf([2.0])
        y = x * x
        assert y.requires_grad
        y.backward()
        np.testing.assert_array_equal(x.grad, [4.0])
    finally:
        done.set()
        t.join(5)
    assert seen == {"a_enabled": False, "a_records": False}


def test_threads_record_and_backpropagate_their_own_graphs():
    errors = []
    results = {}

    def work(k):
        try:
            x = leaf(np.full(3, float(k)))
            y = x
            for _ in range(200):
                y = y * 1.001 + x * 0.0
            y.sum().backward()
            results[k] = x.grad.copy()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    for k in range(4):
        np.testing.assert_allclose(results[k], np.full(3, 1.001 ** 200))


def test_manual_seed_is_per_thread():
    def masks():
        tg.manual_seed(3)
        return tg.dropout(tg.tensor(np.ones(50)), 0.5).numpy()

    out = {}

    def other():
        out["thread"] = masks()

    tg.manual_seed(99)
    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    np.testing.assert_array_equal(out["thread"], masks())


# ---- anomaly detection --------------------------------------------------------------------------------------

def test_detect_anomaly_names_the_op():
    x = leaf([-1.0, 1.0])
    with tg.detect_anomaly():
        with pytest.raises(FloatingPointError, match="log"):
            with np.errstate(invalid="ignore"):
                tg.log(x)
        y = leaf([0.0, 1.0])
        out = (y ** 0.5).sum()
        with pytest.raises(FloatingPointError, match="backward of pow"):
            with np.errstate(divide="ignore"):
                out.backward()


# ---- make_result: the contract every op builds on -----------------------------------------------------------

def test_make_result_records_only_when_a_parent_requires_grad():
    a = tg.tensor(np.ones(2))
    out = tg.engine.make_result(a.data * 2, (a,), lambda g: (g * 2,), "double")
    assert not out.requires_grad and out._node is None
    b = leaf(np.ones(2))
    out = tg.engine.make_result(b.data * 2, (a, b), lambda g: (None, g * 2), "double")
    assert out.requires_grad
    out.sum().backward()
    np.testing.assert_array_equal(b.grad, [2.0, 2.0])


def test_make_result_broadcast_grads_are_summed_to_the_parent_shape():
    b = leaf(np.ones((1, 3)))
    out = tg.engine.make_result(np.ones((4, 3)), (b,), lambda g: (g,), "broadcast")
    out.backward(np.ones((4, 3)))
    np.testing.assert_array_equal(b.grad, [[4.0, 4.0, 4.0]])


def test_make_result_grad_broadcastable_up_to_the_parent_is_expanded():
    b = leaf(np.ones((2, 3)))
    out = tg.engine.make_result(b.data.sum(), (b,), lambda g: (g,), "sum_all")  # grad_out is 0-d
    out.backward()
    np.testing.assert_array_equal(b.grad, np.ones((2, 3)))
    assert b.grad.flags.writeable


def test_tensors_hash_by_identity_as_the_backward_walk_relies_on():
    # backprop keys its gradient dict by Tensor objects; an elementwise __eq__ would break that
    a, b = tg.tensor([1.0]), tg.tensor([1.0])
    assert tg.Tensor.__hash__ is object.__hash__
    assert len({a: 1, b: 2}) == 2


# ---- in-place writes between forward and backward (torch's version counters) ----------------------------------
@pytest.mark.parametrize("make_opt", [lambda ps: tg.optim.SGD(ps, lr=0.1), lambda ps: tg.optim.Adam(ps, lr=0.1)],
                         ids=["SGD", "Adam"])
def test_an_optimiser_step_between_forward_and_backward_raises_instead_of_using_the_new_values(make_opt):
    w = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    opt = make_opt([w])
    (w * w).sum().backward()
    opt.step()  # w changes in place; the graph below was recorded before it
    stale = (w * w).sum()
    w.grad = np.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="modified in place after the forward"):
        stale.backward()


def test_a_retained_graph_cannot_be_reused_after_a_step_but_a_new_forward_can():
    w = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    opt = tg.optim.SGD([w], lr=0.5)
    loss = (w * w).sum()
    loss.backward(retain_graph=True)
    np.testing.assert_array_equal(w.grad, [2.0, 4.0, 6.0])
    opt.step()  # w = [0, 0, 0]
    with pytest.raises(RuntimeError, match="the backward of mul"):
        loss.backward()
    opt.zero_grad()
    (w * w + w).sum().backward()  # recorded after the step: the check does not fire
    np.testing.assert_array_equal(w.grad, [1.0, 1.0, 1.0])


def test_a_step_on_other_parameters_leaves_a_graph_that_does_not_read_them_usable():
    a = tg.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = tg.tensor(np.array([3.0]), requires_grad=True)
    loss = (a * a).sum()
    b.grad = np.ones(1)
    tg.optim.SGD([b], lr=0.1).step()  # b is written, a is not
    loss.backward()
    np.testing.assert_array_equal(a.grad, [2.0, 4.0])
    np.testing.assert_allclose(b.data, [2.9])
