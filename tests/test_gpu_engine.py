"""The engine, layers and optimisers on the GPU against the same code on the CPU.

Every test is marked ``gpu`` and skips without cupy or a usable CUDA device. Each builds one model or
op on the CPU in float64, copies it to ``'cuda'`` and checks outputs and gradients against the CPU run
(both GPU kernel backends where kernels are involved), so the GPU path is held to the CPU path, which
the rest of the suite holds to finite differences and to PyTorch / PyG.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.kernels import registry

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_backend(gpu_kernel_backend):  # `cp` and `gpu_kernel_backend` live in tests/conftest.py
    """Each GPU kernel backend in turn, set as the one the engine uses."""
    before = registry.gpu_backend()
    registry.set_gpu_backend(gpu_kernel_backend)
    yield gpu_kernel_backend
    registry.set_gpu_backend(before)


def _close(got, want, rtol=1e-9, atol=1e-11):
    got = got.numpy() if isinstance(got, tg.Tensor) else (got.get() if hasattr(got, "get") else got)
    want = want.numpy() if isinstance(want, tg.Tensor) else want
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


# ---- tensors and devices -------------------------------------------------------------------------------------
def test_tensor_on_cuda_and_back(cp):
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = tg.tensor(a, device="cuda")
    assert t.device == "cuda" and isinstance(t.data, cp.ndarray)
    assert t.to("cpu").device == "cpu" and t.cpu().device == "cpu"
    np.testing.assert_array_equal(t.numpy(), a)
    assert tg.tensor(a).cuda().device == "cuda"
    assert "device='cuda'" in repr(t)


def test_to_is_differentiable_across_devices(cp):
    x = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = (x.to("cuda") * x.to("cuda")).sum()
    assert y.device == "cuda"
    y.backward()
    assert isinstance(x.grad, np.ndarray)
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])


def test_mixing_devices_in_one_op_is_an_error(cp):
    for a, b in ((tg.tensor(np.ones(3)), tg.tensor(np.ones(3), device="cuda")),
                 (tg.tensor(np.ones(3), device="cuda"), tg.tensor(np.ones(3)))):
        with pytest.raises(ValueError, match="different devices: (cpu and cuda|cuda and cpu)"):
            a + b


def test_an_assigned_grad_must_be_on_the_tensors_device_and_copies_stay_there(cp):
    import copy
    x = tg.tensor(np.ones(3), device="cuda", requires_grad=True)
    with pytest.raises(ValueError, match="assigned grad must be on the tensor's device"):
        x.grad = np.ones(3)  # a host grad would fail inside the optimiser step instead
    with pytest.raises(ValueError, match="assigned grad must be on the tensor's device"):
        tg.tensor(np.ones(3), requires_grad=True).grad = cp.ones(3)
    x.grad = cp.full(3, 2.0)
    c = copy.deepcopy(x)
    assert isinstance(c.data, cp.ndarray) and isinstance(c.grad, cp.ndarray)
    np.testing.assert_array_equal(c.grad.get(), [2.0, 2.0, 2.0])
    c.grad[0] = 7.0
    assert float(x.grad[0].get()) == 2.0  # a copy, not a view
    tg.optim.SGD([x], lr=0.5).step()
    np.testing.assert_array_equal(x.numpy(), [0.0, 0.0, 0.0])


# ---- every op: forward and gradients equal the CPU's -----------------------------------------------------------
def _op_cases():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 5))
    v = rng.standard_normal(5)
    pos = rng.random((4, 5)) + 0.5
    sq = rng.standard_normal((5, 3))
    labels = np.array([0, 2, 4, 1])
    mask = rng.random((4, 5)) > 0.5
    return {
        "add_broadcast": (lambda a, b: a + b, [m, v]),
        "sub_mul_div": (lambda a, b: (a - b) * a / (b * b + 1.0), [m, pos]),
        "pow_neg": (lambda a: (-a) ** 3 + a ** 2, [m]),
        "exp_log": (lambda a: a.exp() + a.log(), [pos]),
        "tanh_sigmoid_relu": (lambda a: a.tanh() + a.sigmoid() + a.relu(), [m]),
        "matmul": (lambda a, b: a @ b, [m, sq]),
        "sum_mean_axes": (lambda a: a.sum(axis=0) + a.mean(axis=0, keepdims=True).sum(axis=0), [m]),
        "reshape_transpose": (lambda a: a.reshape(5, 4).T * 2.0, [m]),
        "index": (lambda a: a[1:3, ::2] * a[[0, 3]][:, :3] + a[[0, 0]][:, 2:], [m]),
        "bool_mask": (lambda a: a[tg.tensor(mask)] * 1.5, [m]),
        "concat_stack_split": (lambda a, b: tg.concat([a, b], axis=0).sum(axis=0)
                               + tg.stack(tg.split(a, [2, 2], axis=0), axis=0).sum(axis=(0, 1)), [m, m * 2]),
        "where_masked_fill": (lambda a, b: tg.where(tg.tensor(mask), a, b) + tg.masked_fill(a, tg.tensor(mask), 0.0),
                              [m, pos]),
        "softmax_log_softmax": (lambda a: a.softmax(axis=1) * 3.0 + a.log_softmax(axis=0), [m]),
        "cross_entropy": (lambda a: tg.cross_entropy(a, tg.tensor(labels)), [m]),
        "cross_entropy_index_ignore": (lambda a: tg.cross_entropy(
            a, tg.tensor(np.array([0, -100, 4, 1])), index=tg.tensor(np.array([3, -1, 1, 3])), reduction="sum"), [m]),
        "cross_entropy_mask_none": (lambda a: tg.cross_entropy(
            a, tg.tensor(labels), index=tg.tensor(np.array([True, False, True, True])), reduction="none"), [m]),
        "mse": (lambda a, b: tg.mse(a, b), [m, pos]),
        "cross_entropy_smoothing_sequence": (lambda a: tg.cross_entropy(a.reshape(2, 2, 5), tg.tensor(np.array(
            [[0, 1, -100, 0, 1], [1, 0, 0, 1, -100]])), label_smoothing=0.1)
            + tg.cross_entropy(a, tg.tensor(labels), index=tg.tensor(np.array([3, 0, 3])), label_smoothing=0.3), [m]),
        "abs_sqrt_pow_tensor": (lambda a, b: abs(a) + b.sqrt() + b ** a + 2.0 ** a, [m, pos]),
        "max_min_argmax": (lambda a: a.max() + a.max(dim=1).values.sum() + tg.min(a, 0, keepdim=True)[0].sum()
                           + a.argmax(1).sum() * 1.0, [m]),
        "shape_names": (lambda a: a.unsqueeze(0).expand(3, 4, 5).flatten(1).squeeze() * 1.0 + a.clone().view(-1),
                        [m]),
        "dim_keywords": (lambda a: tg.cat([a.softmax(dim=0), a.log_softmax(dim=1)], dim=1).sum(dim=1, keepdim=True)
                         * a.mean(dim=0).sum(), [m]),
    }


def test_host_operands_follow_a_gpu_tensor_as_in_the_cpu_ops(cp):
    pred = tg.tensor(np.array([1.0, 2.0, 4.0]), requires_grad=True, device="cuda")
    target = np.array([1.5, 2.0, 3.0])  # a host array next to a GPU prediction moves to the GPU
    loss = tg.mse(pred, target)
    assert loss.device == "cuda"
    loss.backward()
    np.testing.assert_allclose(loss.item(), np.mean((pred.numpy() - target) ** 2))
    np.testing.assert_allclose(cp.asnumpy(pred.grad), 2 * (pred.numpy() - target) / 3)
    assert (pred + target).device == "cuda" and (pred * 2).device == "cuda"
    with tg.no_grad():
        pred -= 0.5  # in place on the GPU array, as torch
        pred += np.array([0.5, 0.5, 0.5])  # a host array follows the GPU tensor here too
        with pytest.raises(ValueError, match="different devices: cuda and cpu"):
            pred *= tg.tensor(np.ones(3))
    assert isinstance(pred.data, cp.ndarray)
    np.testing.assert_allclose(pred.numpy(), [1.0, 2.0, 4.0])


def test_a_python_number_beside_a_gpu_tensor_is_not_copied_to_the_device(cp, monkeypatch):
    x = tg.tensor(np.array([1.0, -2.0, 4.0], np.float32), requires_grad=True, device="cuda")
    i = tg.tensor(np.array([1, 2, 3]), device="cuda")
    copies = []
    for name in ("asarray", "array"):  # the ways a host number becomes a device array
        real = getattr(cp, name)
        monkeypatch.setattr(cp, name, lambda a, *args, _real=real, **kw: (copies.append(a), _real(a, *args, **kw))[1])
    y = (0.5 * x + 1) / 2 - 3.0 * (x - 1.5) ** 2 + tg.where(x.data > 0, x, 0.0) + tg.where(x.data > 0, 0.25, x)
    y.sum().backward()
    k = i * 2 + 1        # an integer tensor with ints stays integer
    f = i * 0.5          # and with a float becomes float32, as torch
    assert not [a for a in copies if not isinstance(a, cp.ndarray)], copies
    monkeypatch.undo()
    xc = tg.tensor(x.numpy(), requires_grad=True)
    yc = (0.5 * xc + 1) / 2 - 3.0 * (xc - 1.5) ** 2 + tg.where(xc.data > 0, xc, 0.0) + tg.where(xc.data > 0, 0.25, xc)
    yc.sum().backward()
    assert y.dtype == np.float32 and isinstance(y.data, cp.ndarray)
    _close(y, yc, rtol=1e-6, atol=1e-6)
    _close(x.grad, xc.grad, rtol=1e-6, atol=1e-6)
    assert k.dtype == np.int64 and f.dtype == np.float32 and isinstance(k.data, cp.ndarray)
    np.testing.assert_array_equal(k.numpy(), [3, 5, 7])
    np.testing.assert_array_equal(f.numpy(), [0.5, 1.0, 1.5])
    from tapegrad.engine import ops
    assert ops.as_tensor(2.0, like=x).device == "cuda"


def test_where_with_a_gpu_mask_and_two_numbers_runs_on_the_gpu_as_torch(cp):
    mask = cp.asarray(np.array([True, False, True]))
    r = tg.where(mask, 1.0, 0.0)  # it asked numpy for the mask before: an implicit-conversion TypeError
    assert isinstance(r.data, cp.ndarray) and r.dtype == np.float32
    np.testing.assert_array_equal(r.numpy(), [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="condition is on cuda and the values on cpu"):
        tg.where(mask, tg.tensor(np.ones(3)), 0.0)


def test_gpu_ids_for_a_host_tensor_are_a_device_error_that_says_so(cp):
    x = tg.tensor(np.ones((3, 2)))
    mask, ids = cp.asarray(np.array([True, False, True])), cp.asarray(np.array([0, 1, 0]))
    # each asked numpy for the GPU array before: an implicit-conversion TypeError naming neither device
    with pytest.raises(ValueError, match="indices are on cuda but the tensor is on cpu"):
        x[mask]
    with pytest.raises(ValueError, match="indices are on cuda but the tensor is on cpu"):
        x[ids, 0]
    with pytest.raises(ValueError, match="targets are on cuda but the logits are on cpu"):
        tg.cross_entropy(x, ids)
    with pytest.raises(ValueError, match=r"row ids \(index\) are on cuda but the logits are on cpu"):
        tg.cross_entropy(x, np.array([0, 1, 0]), index=ids[:2])
    xg = tg.tensor(np.arange(6.0).reshape(3, 2), device="cuda")  # host ids follow a GPU tensor
    np.testing.assert_array_equal(xg[np.array([True, False, True])].numpy(), [[0.0, 1.0], [4.0, 5.0]])


def test_host_arrays_and_lists_follow_a_gpu_tensor_in_comparisons_in_place_ops_and_concat(cp):
    t = tg.tensor(np.array([1.0, 2.0, 3.0]), device="cuda")
    for mask in (t < np.array([2.0, 2.0, 2.0]), t >= [2.0, 2.0, 2.0], t == np.array([1.0, 0.0, 3.0])):
        assert isinstance(mask, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(t == np.array([1.0, 0.0, 3.0])), [True, False, True])
    with tg.no_grad():
        t += [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(t.numpy(), [2.0, 3.0, 4.0])
    for op in (tg.concat, tg.stack):
        joined = op([t, np.array([5.0, 6.0, 7.0])])
        assert joined.device == "cuda" and isinstance(joined.data, cp.ndarray)
        with pytest.raises(ValueError, match="different devices: cpu and cuda"):
            op([t, tg.tensor(np.zeros(3))])
        with pytest.raises(ValueError, match="different devices"):
            t < tg.tensor(np.zeros(3))
    np.testing.assert_array_equal(tg.concat([t, np.array([5.0])]).numpy(), [2.0, 3.0, 4.0, 5.0])


def test_graph_fourier_transforms_of_gpu_signals_use_host_eigenvectors(cp):
    ei = _graph(n=40, seed=2)
    A = tg.CSR.from_edge_index(ei, 40)
    w, U = tg.laplacian_eigh(A, k=5)  # numpy arrays, from scipy
    x = np.random.default_rng(2).standard_normal((40, 3))
    want = tg.graph_fourier(x, U)
    xt = tg.tensor(x, requires_grad=True, device="cuda")
    got = tg.graph_fourier(xt, U)
    assert got.device == "cuda"
    _close(got, want)
    _close(tg.graph_fourier(cp.asarray(x), U), want)
    back = tg.inverse_graph_fourier(got, U)
    _close(back, tg.inverse_graph_fourier(want, U))
    back.sum().backward()
    _close(xt.grad, U @ U.T @ np.ones((40, 3)))


def test_numpy_refuses_a_gpu_tensor_as_torch(cp):
    t = tg.tensor(np.ones(3), device="cuda")
    with pytest.raises(TypeError, match="cuda tensor does not convert to a numpy array implicitly"):
        np.asarray(t)
    np.testing.assert_array_equal(t.numpy(), np.ones(3))


def test_a_list_of_gpu_scalars_makes_a_host_tensor_as_torch(cp):
    losses = [cp.asarray(1.5), cp.asarray(2.5)]  # e.g. loss.data kept from each step
    t = tg.tensor(losses)
    assert t.device == "cpu" and t.dtype == np.float64
    np.testing.assert_array_equal(t.numpy(), [1.5, 2.5])


def test_spmm_of_a_gpu_matrix_and_a_host_array_runs_on_the_gpu(cp):
    A = tg.CSR.from_edge_index(_graph(n=50, seed=4), 50)
    x = np.random.default_rng(4).standard_normal((50, 3))
    want = tg.spmm(A, x).numpy()
    Ag = A.to("cuda")
    for got in (tg.spmm(Ag, x), Ag @ tg.tensor(x, device="cuda"), tg.spmm(Ag, x, values=np.ones(A.nnz))):
        assert got.device == "cuda"
    _close(tg.spmm(Ag, x), want)
    with pytest.raises(ValueError, match="A is on cuda but x is on cpu"):
        tg.spmm(Ag, tg.tensor(x))
    with pytest.raises(ValueError, match="A is on cpu but x is on cuda"):
        tg.spmm(A, cp.asarray(x))  # a GPU array is not copied back for a host matrix


def test_raw_cupy_features_and_edge_index_go_into_a_gpu_gcn(cp):
    ei = _graph(seed=5)
    x = np.random.default_rng(5).standard_normal((300, 24))
    tg.manual_seed(0)
    cpu = tg.GCN(24, 8, 3, num_layers=2, dropout=0.0, dtype=np.float64)
    gpu = tg.GCN(24, 8, 3, num_layers=2, dropout=0.0, dtype=np.float64).to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    want = cpu(x, ei).numpy()
    got = gpu(cp.asarray(x), cp.asarray(ei))  # arrays, not tensors, as for numpy input
    assert got.device == "cuda"
    _close(got, want)
    _close(gpu.convs[0](cp.asarray(x), cp.asarray(ei), cp.ones(ei.shape[1])), cpu.convs[0](x, ei, np.ones(ei.shape[1])))
    _close(cpu(cp.asarray(x), ei), want)  # a GPU array into a CPU model is copied over


def test_unbatched_recurrent_input_with_gpu_lengths(cp):
    tg.manual_seed(0)
    model = tg.LSTM(3, 4, device="cuda")
    x = tg.tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32), device="cuda")
    first3, (h3, _) = model(x[:3])
    for lengths in (tg.tensor(np.array([3]), device="cuda"), cp.asarray([3])):
        out, (h, _) = model(x, lengths=lengths)  # steps past the length are padding: zeros, as torch's
        # float32, and cuBLAS may round a 5-step batch apart from a 3-step one in the last bit
        _close(out, np.concatenate([first3.numpy(), np.zeros((2, 4), np.float32)]), rtol=1e-6, atol=1e-7)
        _close(h, h3.numpy(), rtol=1e-6, atol=1e-7)


def test_optimizer_state_loads_from_gpu_arrays(cp):
    w = tg.Parameter(cp.ones(3))
    opt = tg.optim.Adam([w], lr=0.1)
    (w * w).sum().backward()
    opt.step()
    state = {k: cp.asarray(v) if isinstance(v, np.ndarray) and v.ndim else v for k, v in opt.state_dict().items()}
    other = tg.optim.Adam([tg.Parameter(cp.ones(3))], lr=0.1)
    other.load_state_dict(state)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, opt.state_dict()[k])
    moments = [v for s in other.state.values() for v in s.values() if getattr(v, "ndim", 0)]
    assert moments and all(isinstance(v, cp.ndarray) for v in moments)  # the state lives beside its parameter


@pytest.mark.parametrize("view", [lambda w: w.detach(), lambda w: w[:2], lambda w: w.reshape(3, 1)],
                         ids=["detach", "slice", "reshape"])
def test_an_inplace_write_through_a_view_of_a_saved_gpu_tensor_raises(cp, view):
    w = tg.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True, device="cuda")
    y = (w * w).sum()
    with tg.no_grad():
        v = view(w)
        v += 1
    with pytest.raises(RuntimeError, match="modified in place"):
        y.backward()


def test_an_optimiser_step_on_one_gpu_batch_leaves_another_cut_from_the_same_buffer_alone(cp):
    data = cp.arange(8, dtype=cp.float64).reshape(4, 2)
    first, second = tg.as_tensor(data[:2]), tg.as_tensor(data[2:])
    w = tg.tensor(np.ones((2, 2)), requires_grad=True, device="cuda")
    loss = (second @ w).sum()
    with tg.no_grad():
        first += 1  # bytes of the buffer the backward does not read
    loss.backward()
    np.testing.assert_allclose(cp.asnumpy(w.grad), [[10.0, 10.0], [12.0, 12.0]])
    opt = tg.optim.SGD([w], lr=0.1)
    w.grad = None
    loss = (second @ w).sum()
    opt_w = tg.optim.SGD([w], lr=0.1)
    w.grad = cp.ones((2, 2))
    opt_w.step()  # w's own gradient reads only `second`, so the backward still runs, as torch's
    loss.backward()
    np.testing.assert_allclose(cp.asnumpy(w.grad), [[11.0, 11.0], [13.0, 13.0]])
    loss = (w * w).sum()
    opt.step()  # w was read by the forward and is now changed: the backward would use the new values
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


@pytest.mark.parametrize("name", list(_op_cases()))
def test_op_matches_cpu(cp, name):
    fn, arrays = _op_cases()[name]
    rng = np.random.default_rng(1)
    cpu_in = [tg.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*cpu_in)
    g = rng.standard_normal(out.shape)
    (out * tg.tensor(g)).sum().backward()
    gpu_in = [tg.tensor(a, requires_grad=True, device="cuda") for a in arrays]

    def on_gpu(*xs):  # the op's constant tensors (labels, masks) move with its inputs
        orig = tg.tensor

        def tensor_on_cuda(data, *args, **kw):
            kw.setdefault("device", "cuda")
            return orig(data, *args, **kw)
        tg.tensor = tensor_on_cuda
        try:
            return fn(*xs)
        finally:
            tg.tensor = orig

    out_g = on_gpu(*gpu_in)
    assert out_g.device == "cuda"
    (out_g * tg.tensor(g, device="cuda")).sum().backward()
    _close(out_g, out)
    for a, b in zip(gpu_in, cpu_in):
        assert isinstance(a.grad, cp.ndarray)
        _close(a.grad, b.grad)


def test_cross_entropy_errors_on_gpu_are_the_cpu_errors(cp):
    """cross_entropy checks row ids and targets on the GPU (read back in one transfer) and raises what it
    raises for the same input on the CPU."""
    z = np.random.default_rng(3).standard_normal((4, 3))
    labels = np.array([0, 2, 1, 0])
    cases = {"id too large": dict(target=labels, index=np.array([1, 4])),
             "id too negative": dict(target=labels, index=np.array([-5])),
             "class id": dict(target=np.array([0, 3, 1, 0])),
             "negative class id": dict(target=np.array([0, -2, 1, -100]), index=np.array([True, True, False, True])),
             "every row ignored": dict(target=np.full(4, -100))}
    for name, kwargs in cases.items():
        with pytest.raises(ValueError) as on_cpu:
            tg.cross_entropy(tg.tensor(z), **kwargs)
        with pytest.raises(ValueError) as on_gpu:
            tg.cross_entropy(tg.tensor(z, device="cuda"), **{k: cp.asarray(v) for k, v in kwargs.items()})
        assert str(on_gpu.value) == str(on_cpu.value), name


def test_dropout_and_embedding_on_gpu(cp):
    tg.manual_seed(0)
    x = tg.tensor(np.ones((200, 50)), requires_grad=True, device="cuda")
    y = tg.dropout(x, 0.3, training=True)
    kept = float((y.data != 0).mean())
    assert 0.6 < kept < 0.8
    y.sum().backward()
    assert cp.all((x.grad == 0) | cp.isclose(x.grad, 1 / 0.7))
    masks = []
    for _ in range(2):  # drawn on the device, from the seeded per-thread generator
        tg.manual_seed(7)
        masks.append(tg.dropout(x, 0.5, training=True).data)
    assert bool(cp.array_equal(masks[0], masks[1]))
    assert not bool(cp.array_equal(masks[0], tg.dropout(x, 0.5, training=True).data))
    w = np.random.default_rng(0).standard_normal((10, 4))
    idx = np.array([[1, 2, 1], [9, 0, 1]])
    wc, wg = tg.tensor(w, requires_grad=True), tg.tensor(w, requires_grad=True, device="cuda")
    tg.embedding(wc, tg.tensor(idx)).sum().backward()
    tg.embedding(wg, tg.tensor(idx, device="cuda")).sum().backward()
    _close(wg.grad, wc.grad)


# ---- sparse ops and GCN -----------------------------------------------------------------------------------
def _graph(n=300, seed=0):
    rng = np.random.default_rng(seed)
    deg = np.minimum(rng.zipf(2.0, n), n - 1)
    src = np.repeat(np.arange(n), deg)
    dst = rng.integers(0, n, src.size)
    keep = src != dst
    ei = np.stack([np.concatenate([src[keep], dst[keep]]), np.concatenate([dst[keep], src[keep]])])
    return ei


def test_spmm_op_values_and_x_grads_match_cpu(cp, gpu_backend):
    ei = _graph()
    A = tg.CSR.from_edge_index(ei, num_nodes=300)
    rng = np.random.default_rng(2)
    vals = rng.random(A.nnz)
    x = rng.standard_normal((300, 17))
    vc, xc = tg.tensor(vals, requires_grad=True), tg.tensor(x, requires_grad=True)
    Ag = A.to("cuda")
    vg, xg = tg.tensor(vals, requires_grad=True, device="cuda"), tg.tensor(x, requires_grad=True, device="cuda")
    g = rng.standard_normal((300, 17))
    (tg.spmm(A, xc, values=vc) * tg.tensor(g)).sum().backward()
    out = tg.spmm(Ag, xg, values=vg)
    (out * tg.tensor(g, device="cuda")).sum().backward()
    _close(out, (tg.spmm(A, xc, values=vc)).numpy())
    _close(xg.grad, xc.grad)
    _close(vg.grad, vc.grad)


def test_gcn_norm_on_gpu_matches_cpu(cp, gpu_backend):
    A = tg.CSR.from_edge_index(_graph(), num_nodes=300)
    Pc = tg.gcn_norm(A)
    Pg = tg.gcn_norm(A.to("cuda"))
    np.testing.assert_array_equal(Pg.indptr.get(), Pc.indptr)
    np.testing.assert_array_equal(Pg.indices.get(), Pc.indices)
    np.testing.assert_allclose(Pg.data.get(), Pc.data, rtol=1e-6)


def test_gcn_training_on_gpu_follows_cpu(cp, gpu_backend):
    ei = _graph(seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 24))
    y = rng.integers(0, 4, 300)
    tg.manual_seed(0)
    cpu = tg.GCN(24, 16, 4, num_layers=2, dropout=0.0, dtype=np.float64)
    gpu = tg.GCN(24, 16, 4, num_layers=2, dropout=0.0, dtype=np.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    assert all(p.device == "cuda" for p in gpu.parameters())
    runs = {}
    for name, model, dev in (("cpu", cpu, "cpu"), ("gpu", gpu, "cuda")):
        opt = tg.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
        xt, yt = tg.tensor(x, device=dev), tg.tensor(y, device=dev)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = tg.cross_entropy(model(xt, ei), yt)
            loss.backward()
            tg.optim.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        runs[name] = losses
    np.testing.assert_allclose(runs["gpu"], runs["cpu"], rtol=1e-9)
    for k, v in gpu.state_dict().items():
        assert isinstance(v, np.ndarray)
        np.testing.assert_allclose(v, cpu.state_dict()[k], rtol=1e-8, atol=1e-12)


# ---- recurrent layers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_layer_forward_backward_matches_cpu(cp, gpu_backend, kind, bidirectional):
    T, B, I, H = 7, 5, 6, 8
    rng = np.random.default_rng(4)
    x = rng.standard_normal((T, B, I))
    lengths = np.array([7, 3, 5, 1, 7])
    tg.manual_seed(1)
    cls = getattr(tg, kind)
    cpu = cls(I, H, num_layers=2, bidirectional=bidirectional, dtype=np.float64)
    gpu = cls(I, H, num_layers=2, bidirectional=bidirectional, dtype=np.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    g = None
    grads = {}
    for name, model, dev in (("cpu", cpu, "cpu"), ("gpu", gpu, "cuda")):
        xt = tg.tensor(x, requires_grad=True, device=dev)
        out, state = model(xt, lengths=lengths)
        h_n = state[0] if kind == "LSTM" else state
        if g is None:
            g = rng.standard_normal(out.shape)
        ((out * tg.tensor(g, device=dev)).sum() + (h_n * h_n).sum()).backward()
        grads[name] = (out.numpy(), h_n.numpy(), xt.grad, {k: p.grad for k, p in model.named_parameters()})
    c, gg = grads["cpu"], grads["gpu"]
    _close(gg[0], c[0])
    _close(gg[1], c[1])
    _close(gg[2], c[2])
    for k in c[3]:
        _close(gg[3][k], c[3][k])


@pytest.mark.parametrize("cell", ["LSTMCell", "RNNCell"])
def test_cells_match_cpu(cp, gpu_backend, cell):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4))
    tg.manual_seed(2)
    cpu = getattr(tg, cell)(4, 6, dtype=np.float64)
    gpu = getattr(tg, cell)(4, 6, dtype=np.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    outs = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        xt = tg.tensor(x, requires_grad=True, device=dev)
        state = None
        total = None
        for _ in range(3):
            state = model(xt, state)
            h = state[0] if cell == "LSTMCell" else state
            total = h.sum() if total is None else total + (h * h).sum()
        total.backward()
        outs.append((h.numpy(), xt.grad))
    _close(outs[1][0], outs[0][0])
    _close(outs[1][1], outs[0][1])


def test_float32_lstm_on_gpu_is_close_to_float64_cpu(cp, gpu_backend):
    T, B, I, H = 20, 16, 32, 64
    x = np.random.default_rng(6).standard_normal((T, B, I))
    tg.manual_seed(3)
    cpu = tg.LSTM(I, H, dtype=np.float64)
    gpu = tg.LSTM(I, H, dtype=np.float32, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    out_c, _ = cpu(tg.tensor(x))
    out_g, _ = gpu(tg.tensor(x.astype(np.float32), device="cuda"))
    out_g.sum().backward()
    _close(out_g, out_c, rtol=1e-4, atol=1e-5)
    assert all(isinstance(p.grad, cp.ndarray) and bool(cp.isfinite(p.grad).all()) for p in gpu.parameters())


def test_tbptt_with_clipping_on_gpu_follows_cpu(cp, gpu_backend):
    T, B, I, H = 24, 4, 3, 5
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    tg.manual_seed(4)
    cpu = tg.LSTM(I, H, dtype=np.float64)
    gpu = tg.LSTM(I, H, dtype=np.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    losses = {}
    for name, model, dev in (("cpu", cpu, "cpu"), ("gpu", gpu, "cuda")):
        xt, yt = tg.tensor(x, device=dev), tg.tensor(y, device=dev)

        def segment(a, b, state, with_loss, model=model, xt=xt, yt=yt):
            out, state = model(xt[a:b], state)
            return (tg.mse(out, yt[a:b]) if with_loss else None), state
        trainer = tg.TBPTT(segment, tg.optim.SGD(model.parameters(), lr=0.5), k1=4, k2=6, clip=0.1, length=T)
        losses[name] = []
        while (loss := trainer.step()) is not None:
            losses[name].append(loss)
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-9)


def test_save_and_load_a_gpu_model(cp, tmp_path):
    model = tg.LSTM(3, 4, device="cuda")
    opt = tg.optim.Adam(model.parameters())
    model(tg.tensor(np.ones((2, 1, 3), np.float32), device="cuda"))[0].sum().backward()
    opt.step()
    tg.save(tmp_path / "m.npz", model, opt)
    other = tg.LSTM(3, 4, device="cuda")
    other_opt = tg.optim.Adam(other.parameters())
    tg.load(tmp_path / "m.npz", other, other_opt)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b)
    assert all(p.device == "cuda" for p in other.parameters())


# ---- arrays from other libraries, without copies ------------------------------------------------------------
def test_cupy_arrays_in_and_out_without_copies(cp):
    a = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    t = tg.as_tensor(a)
    assert t.data.data.ptr == a.data.ptr
    assert tg.tensor(a).data.data.ptr != a.data.ptr  # tensor() copies, as torch.tensor
    back = cp.from_dlpack(t)
    assert back.data.ptr == a.data.ptr
    assert cp.asarray(t).data.ptr == a.data.ptr  # __cuda_array_interface__
    assert tg.from_dlpack(a).data.data.ptr == a.data.ptr


def test_torch_cuda_tensors_in_and_out_without_copies(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    src = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    t = tg.as_tensor(src)
    assert t.device == "cuda" and t.data.data.ptr == src.data_ptr()
    t.data[0, 0] = 42.0
    torch.cuda.synchronize()
    assert src[0, 0].item() == 42.0
    out = torch.from_dlpack(t * 2.0)
    assert out.device.type == "cuda" and out[0, 0].item() == 84.0
    y = tg.tensor(np.ones(4, np.float32), device="cuda")
    assert torch.from_dlpack(y).data_ptr() == y.data.data.ptr
    assert torch.as_tensor(y, device="cuda").data_ptr() == y.data.data.ptr  # __cuda_array_interface__


def test_jax_gpu_arrays_in_and_out(cp):
    import os
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    jax = pytest.importorskip("jax")
    try:
        gpus = jax.devices("gpu")
    except Exception as e:
        pytest.skip(f"JAX has no GPU here: {e}")
    jnp = pytest.importorskip("jax.numpy")
    a = jax.device_put(jnp.arange(8, dtype=jnp.float32), gpus[0])
    t = tg.as_tensor(a)
    assert t.device == "cuda"
    np.testing.assert_array_equal(t.numpy(), np.arange(8, dtype=np.float32))
    back = jax.dlpack.from_dlpack(t * 3.0)
    np.testing.assert_array_equal(np.asarray(back), 3 * np.arange(8, dtype=np.float32))


def test_kernels_dispatch_cupy_arrays_to_the_gpu(cp):
    A = tg.CSR.from_edge_index(_graph(), num_nodes=300)
    x = np.random.default_rng(8).standard_normal((300, 8)).astype(np.float32)
    got = tg.kernels.spmm(cp.asarray(A.indptr), cp.asarray(A.indices), None, cp.asarray(x))
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(got.get(), tg.kernels.spmm(A.indptr, A.indices, None, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("graphs", [True, False])
def test_training_steps_replay_recorded_loops_and_follow_cpu(cp, gpu_backend, kind, graphs):
    """Several optimiser steps (weights updated in place, so the slots and graphs are reused), stacked
    layers (two slots of one shape at once), against the same steps on the CPU."""
    from tapegrad.engine import recurrent_cuda
    before = recurrent_cuda.cuda_graphs_enabled()
    recurrent_cuda.set_cuda_graphs(graphs)
    gc.collect()  # earlier tests' graphs, so that their slots are released and cleared
    recurrent_cuda.clear_cuda_graphs()
    # slots still held by something an earlier test left alive are not this test's to check
    earlier = {id(s) for v in recurrent_cuda._slots.values() for s in v}
    try:
        T, B, I, H = 9, 6, 5, 7
        rng = np.random.default_rng(9)
        x, y = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
        tg.manual_seed(5)
        cls = getattr(tg, kind)
        cpu = cls(I, H, num_layers=3, dtype=np.float64)
        gpu = cls(I, H, num_layers=3, dtype=np.float64)
        gpu.load_state_dict(cpu.state_dict())
        gpu.to("cuda")
        losses = {}
        for name, model, dev in (("cpu", cpu, "cpu"), ("gpu", gpu, "cuda")):
            opt = tg.optim.Adam(model.parameters(), lr=0.05)
            xt, yt = tg.tensor(x, device=dev), tg.tensor(y, device=dev)
            losses[name] = []
            for _ in range(4):
                opt.zero_grad()
                loss = tg.mse(model(xt)[0], yt)
                loss.backward()
                opt.step()
                losses[name].append(loss.item())
            with tg.no_grad():  # inference takes (and gives back) slots of its own
                losses[name].append(float(model(xt)[0].sum().item()))
        np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=1e-9)
        for k, v in gpu.state_dict().items():
            np.testing.assert_allclose(v, cpu.state_dict()[k], rtol=1e-8, atol=1e-12)
        slots = [s for v in recurrent_cuda._slots.values() for s in v if id(s) not in earlier]
        assert slots and not any(s.busy for s in slots)
        recorded = [g for s in slots for g in s.graphs.values()]
        if graphs:  # every loop was captured: none fell back to running eagerly
            assert recorded and all(g is not recurrent_cuda._FAILED for g in recorded)
        else:
            assert not recorded
    finally:
        recurrent_cuda.set_cuda_graphs(before)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("mode", ["tiled", "persistent", "per-step", "gemm+cell"])
def test_recurrent_loops_of_each_mode_match_cpu_call_after_call(cp, gpu_backend, monkeypatch, kind, mode):
    """Fused loops in one tiled persistent launch, in one warp-per-unit persistent launch, launched step by
    step, and GEMM + cell steps, each recorded at the first call and replayed at the next, with the weights
    updated in place in between."""
    from tapegrad.engine import recurrent_cuda
    from tapegrad.kernels.cupy import recurrent_step, recurrent_tiled
    if gpu_backend != "cupy" and mode in ("tiled", "persistent"):
        pytest.skip("persistent and tiled loops are CuPy kernels; on numba-cuda these ids would rerun "
                    "the per-step and gemm+cell paths")
    # tiled: a limit of 1 row, so that the batch of 11 is fused only because the tiled loops cover it
    monkeypatch.setattr(recurrent_cuda, "_fused_max_batch", {"gemm+cell": 0, "tiled": 1}.get(mode, 64))
    monkeypatch.setattr(recurrent_step, "PERSISTENT", mode in ("persistent", "tiled"))
    monkeypatch.setattr(recurrent_tiled, "ENABLED", mode == "tiled")
    recurrent_cuda.clear_cuda_graphs()
    T, B, I, H = 9, 11, 6, 40
    if mode == "tiled" and gpu_backend == "cupy":
        assert recurrent_step.tiled_loops(4 if kind == "LSTM" else 1, B, H, np.float64)
    rng = np.random.default_rng(8)
    tg.manual_seed(5)
    cls = getattr(tg, kind)
    cpu = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64)
    gpu = cls(I, H, num_layers=2, bidirectional=True, dtype=np.float64)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    for call in range(3):
        x, g = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, 2 * H))
        res = {}
        for name, model, dev in (("cpu", cpu, "cpu"), ("gpu", gpu, "cuda")):
            model.zero_grad()
            xt = tg.tensor(x, requires_grad=True, device=dev)
            out, state = model(xt)
            h_n = state[0] if kind == "LSTM" else state
            loss = (out * tg.tensor(g, device=dev)).sum() + (h_n * h_n).sum()
            if kind == "LSTM":
                loss = loss + (state[1] * 0.5).sum()
            loss.backward()
            res[name] = (out.numpy(), h_n.numpy(), xt.grad, {k: p.grad for k, p in model.named_parameters()})
        c, gg = res["cpu"], res["gpu"]
        for i in range(3):
            _close(gg[i], c[i])
        for k in c[3]:
            _close(gg[3][k], c[3][k])
        for model in (cpu, gpu):  # an optimiser's in-place update: replayed graphs must read the new weights
            for p in model.parameters():
                p.data -= 0.05 * p.grad
    recurrent_cuda.clear_cuda_graphs()


# ---- the main jobs with device="cuda" ------------------------------------------------------------------------------
def test_gcn_app_trains_on_the_gpu(cp):
    from tapegrad.apps import gcn
    from tapegrad.datasets import load_planetoid, row_normalize
    data = load_planetoid("cora")
    r = gcn.train_one(data, row_normalize(data.x), seed=0, epochs=100, stopping="none", device="cuda")
    assert r["epochs"] == 100 and all(t > 0 for t in r["epoch_ms"])
    # 100 epochs on Cora: 0.78 to 0.82 over 40 seeds on the CPU (GPU dropout masks differ for one seed);
    # the largest class alone gives 0.3
    assert r["test_acc"] > 0.7


def test_charrnn_app_trains_and_samples_on_the_gpu(cp):
    from tapegrad.apps import charrnn
    text = "the quick brown fox jumps over the lazy dog\n" * 40
    vocab = sorted(set(text))
    ids = np.array([vocab.index(ch) for ch in text], dtype=np.int64)
    r = charrnn.train(ids, len(vocab), steps=30, hidden=32, seq_len=16, batch=4, val_chunks=2, device="cuda")
    assert all(p.device == "cuda" for p in r["model"].parameters())
    assert r["losses"][-1] < r["losses"][0] and np.isfinite(r["val_loss"])
    greedy = charrnn.sample(r["model"], vocab, n=20, temperature=0)
    assert len(greedy) == 20
    assert charrnn.sample(r["model"].to("cpu"), vocab, n=20, temperature=0) == greedy  # the same model on the CPU
