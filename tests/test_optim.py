"""Optimisers and gradient clipping against torch.optim / torch.nn.utils on the same params and grads."""
import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import optim

SHAPES = [(4, 3), (3,), (2, 1, 2)]


def make_params(seed=0, dtype=np.float64, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]


def grad_sequence(n_steps, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(s)) for s in shapes] for _ in range(n_steps)]


def run_tapegrad(cls, kwargs, n_steps=6, groups=None, shapes=SHAPES):
    params = [tg.tensor(a, requires_grad=True) for a in make_params(shapes=shapes)]
    opt = cls(params if groups is None else groups(params), **kwargs)
    for grads in grad_sequence(n_steps, shapes=shapes):
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
    return [p.data for p in params], opt


def run_torch(name, kwargs, n_steps=6, groups=None, shapes=SHAPES):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(a, requires_grad=True) for a in make_params(shapes=shapes)]
    opt = getattr(torch.optim, name)(params if groups is None else groups(params), **kwargs)
    for grads in grad_sequence(n_steps, shapes=shapes):
        opt.zero_grad()
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        opt.step()
    return [p.detach().numpy() for p in params]


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("SGD", dict(lr=0.1, momentum=0.8, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.05, betas=(0.7, 0.95), weight_decay=0.3)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
def test_matches_torch_over_several_steps(name, kwargs):
    expect = run_torch(name, kwargs)
    got, _ = run_tapegrad(getattr(optim, name), kwargs)
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{k}" for n, k in CONFIGS])
def test_0d_parameters_match_torch(name, kwargs):
    expect = run_torch(name, kwargs, shapes=[()])
    got, _ = run_tapegrad(getattr(optim, name), kwargs, shapes=[()])
    np.testing.assert_allclose(got[0], expect[0], rtol=1e-6, atol=1e-12)


def test_adamw_default_weight_decay_matches_torch():
    expect = run_torch("AdamW", dict(lr=0.01))
    got, opt = run_tapegrad(optim.AdamW, dict(lr=0.01))
    assert opt.param_groups[0]["weight_decay"] == 0.01
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_param_groups_match_torch(name):
    def groups(params):
        return [{"params": params[:1], "lr": 0.2, "weight_decay": 0.1}, {"params": params[1:]}]
    kwargs = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    expect = run_torch(name, kwargs, groups=groups)
    got, opt = run_tapegrad(getattr(optim, name), kwargs, groups=groups)
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[1]["lr"] == 0.05
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-12)


def test_changing_a_groups_lr_takes_effect():
    p = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = 1.0
    p.grad = np.ones(2)
    opt.step()
    np.testing.assert_allclose(p.data, [0.0, 0.0])


def test_float32_parameters_stay_float32_and_in_place():
    p = tg.tensor(np.ones(3, np.float32), requires_grad=True)
    data = p.data
    for cls in (optim.SGD, optim.Adam, optim.AdamW):
        opt = cls([p], lr=0.1)
        p.grad = np.ones(3, np.float32)
        opt.step()
        assert p.dtype == np.float32 and p.data is data


def test_params_without_grad_are_skipped():
    a = tg.tensor(np.ones(2), requires_grad=True)
    b = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, [1.0, 1.0])
    assert not np.allclose(a.data, 1.0)


def test_zero_grad_clears_grads():
    p = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    (p * p).sum().backward()
    opt.zero_grad()
    assert p.grad is None


def test_a_training_loop_reduces_the_loss():
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((64, 3)))
    w_true = np.array([[1.0], [-2.0], [0.5]])
    y = x.data @ w_true
    w = tg.tensor(np.zeros((3, 1)), requires_grad=True)
    opt = optim.Adam([w], lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        loss = tg.mse(x @ w, y)
        loss.backward()
        opt.step()
    np.testing.assert_allclose(w.data, w_true, atol=1e-3)


@pytest.mark.parametrize("make,match", [
    (lambda p: optim.SGD(p[0], lr=0.1), "single tensor"),
    (lambda p: optim.SGD([], lr=0.1), "empty"),
    (lambda p: optim.SGD([tg.tensor(np.ones(2))], lr=0.1), "require grad"),
    (lambda p: optim.SGD([p[0] * 2], lr=0.1), "leaf"),
    (lambda p: optim.SGD([p[0], p[0]], lr=0.1), "more than one"),
    (lambda p: optim.SGD([{"params": p, "foo": 1}], lr=0.1), "unknown"),
    (lambda p: optim.SGD([("w", p[0])], lr=0.1), "named_parameters"),
    (lambda p: optim.SGD(p, lr=-1.0), "lr"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "nesterov"),
    (lambda p: optim.Adam(p, betas=(1.0, 0.9)), "betas"),
])
def test_bad_arguments(make, match):
    params = [tg.tensor(np.ones(2), requires_grad=True)]
    with pytest.raises((TypeError, ValueError), match=match):
        make(params)


# ---- state_dict ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs", [(optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                                        (optim.Adam, dict(lr=0.05, betas=(0.8, 0.9))),
                                        (optim.AdamW, dict(lr=0.05, weight_decay=0.2))])
def test_state_dict_round_trip_resumes_identically(cls, kwargs):
    grads = grad_sequence(8, seed=3)

    def fresh():
        params = [tg.tensor(a, requires_grad=True) for a in make_params()]
        return params, cls(params, **kwargs)

    def step(params, opt, gs):
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()

    ref_params, ref_opt = fresh()
    for gs in grads:
        step(ref_params, ref_opt, gs)

    params, opt = fresh()
    for gs in grads[:4]:
        step(params, opt, gs)
    state = opt.state_dict()
    saved = [p.data.copy() for p in params]
    # mutate the live state: the saved dict must be a copy
    for st in opt.state.values():
        for v in st.values():
            v[...] = 123
    params2, opt2 = fresh()
    for p, s in zip(params2, saved):
        p.data[...] = s
    opt2.param_groups[0]["lr"] = 999.0  # restored from the state dict
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == kwargs["lr"]
    for gs in grads[4:]:
        step(params2, opt2, gs)
    for p, r in zip(params2, ref_params):
        np.testing.assert_allclose(p.data, r.data, rtol=1e-12, atol=1e-14)


def test_state_dict_betas_round_trip_as_a_tuple():
    p = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.Adam([p], betas=(0.5, 0.6))
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups[0]["betas"] == (0.5, 0.6)


def test_load_state_dict_rejects_mismatches():
    p = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = np.ones(2)
    opt.step()
    state = opt.state_dict()
    q = tg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match="shape"):
        optim.SGD([q], lr=0.1, momentum=0.9).load_state_dict(state)
    with pytest.raises(KeyError):
        optim.SGD([p], lr=0.1).load_state_dict({"param5.momentum_buffer": np.ones(2)})
    with pytest.raises(KeyError):
        optim.SGD([p], lr=0.1).load_state_dict({"bogus": 1})
    with pytest.raises(KeyError):
        optim.SGD([p], lr=0.1).load_state_dict({"group0.betas": (0.9, 0.9)})


# ---- clipping -----------------------------------------------------------------------------------------------

def _with_grads(seed=4, scale=3.0):
    rng = np.random.default_rng(seed)
    params = [tg.tensor(a, requires_grad=True) for a in make_params()]
    for p in params:
        p.grad = np.asarray(rng.standard_normal(p.shape) * scale)
    return params


@pytest.mark.parametrize("max_norm,norm_type", [(1.0, 2.0), (100.0, 2.0), (0.5, 1.0), (0.7, math.inf), (2.0, 3.0)])
def test_clip_grad_norm_matches_torch(max_norm, norm_type):
    torch = pytest.importorskip("torch")
    params = _with_grads()
    tparams = [torch.tensor(p.data, requires_grad=True) for p in params]
    for tp, p in zip(tparams, params):
        tp.grad = torch.tensor(p.grad)
    expect = torch.nn.utils.clip_grad_norm_(tparams, max_norm, norm_type=norm_type)
    total = optim.clip_grad_norm(params, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(float(expect), rel=1e-12)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_names_the_non_finite_parameter():
    params = _with_grads()
    params[1].grad[0] = np.nan
    with pytest.raises(FloatingPointError, match="parameter 1"):
        optim.clip_grad_norm(params, 1.0)
    named = [("encoder.weight", params[0]), ("encoder.bias", params[1])]
    with pytest.raises(FloatingPointError, match="encoder.bias"):
        optim.clip_grad_norm(named, 1.0)
    before = params[0].grad.copy()
    assert math.isnan(optim.clip_grad_norm(params, 1.0, error_if_nonfinite=False))
    np.testing.assert_array_equal(params[0].grad, before)


def test_clip_grad_norm_skips_missing_grads_and_accepts_one_tensor():
    p = tg.tensor(np.ones(4), requires_grad=True)
    assert optim.clip_grad_norm([p], 1.0) == 0.0
    p.grad = np.full(4, 2.0)
    assert optim.clip_grad_norm(p, 1.0) == pytest.approx(4.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        optim.clip_grad_norm([p], -1.0)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    params = _with_grads(seed=5)
    tparams = [torch.tensor(p.data, requires_grad=True) for p in params]
    for tp, p in zip(tparams, params):
        tp.grad = torch.tensor(p.grad)
    torch.nn.utils.clip_grad_value_(tparams, 0.75)
    optim.clip_grad_value(params, 0.75)
    for p, tp in zip(params, tparams):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())
    with pytest.raises(ValueError):
        optim.clip_grad_value(params, -1.0)


def test_clipping_gradients_produced_by_backward():
    # the grads the tape hands out must be writable arrays that clipping can change in place
    x = tg.tensor(np.ones(3), requires_grad=True)
    y = tg.tensor(np.ones(3), requires_grad=True)
    (x * 10 + y * 10).sum().backward()
    optim.clip_grad_value([x, y], 1.0)
    np.testing.assert_array_equal(x.grad, [1.0, 1.0, 1.0])
    optim.clip_grad_norm([x, y], 1.0)
    assert np.linalg.norm(np.concatenate([x.grad, y.grad])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd,decay", [(0.0, 1.0), (0.1, 1.0), (0.0, 0.995)], ids=["plain", "l2", "decoupled"])
@pytest.mark.parametrize("beta1", [0.9, 0.3], ids=["b1=0.9", "b1=0.3"])  # torch's lerp takes its other form
def test_adam_step_kernel_gives_the_reference_bits(dtype, wd, decay, beta1):
    """The CPU kernel (one pass, no FMA contraction) against the reference's array operations, bit for bit,
    over several steps and with a strided gradient; a strided parameter takes the reference's path with the
    same result."""
    from tapegrad.kernels import reference as ref
    from tapegrad.kernels.cpu import optim as cpu_optim
    rng = np.random.default_rng(4)
    shape = (37, 5)
    p0 = rng.standard_normal(shape).astype(dtype)
    p = [p0, p0.copy()]
    m = [np.zeros(shape, dtype) for _ in range(2)]
    v = [np.zeros(shape, dtype) for _ in range(2)]
    for step in range(1, 5):
        g = rng.standard_normal(shape).astype(dtype)
        args = (beta1, 0.999, 1e-2 / (1 - beta1 ** step), np.sqrt(1 - 0.999 ** step), 1e-8, wd, decay)
        ref.adam_step(p[0], g, m[0], v[0], *args)
        cpu_optim.adam_step(p[1], g, m[1], v[1], *args)
        for a, b in zip((p[0], m[0], v[0]), (p[1], m[1], v[1])):
            assert a.tobytes() == b.tobytes()
    g = np.asfortranarray(rng.standard_normal(shape).astype(dtype))  # a transposed GEMM's gradient
    ref.adam_step(p[0], g, m[0], v[0], *args)
    cpu_optim.adam_step(p[1], g, m[1], v[1], *args)
    for a, b in zip((p[0], m[0], v[0]), (p[1], m[1], v[1])):
        assert a.tobytes() == b.tobytes()
    pt = np.asfortranarray(p[1])  # the fallback path
    cpu_optim.adam_step(pt, np.ones(shape, dtype), np.asfortranarray(m[1]), np.asfortranarray(v[1]),
                        *args)
    want = p[1].copy()
    ref.adam_step(want, np.ones(shape, dtype), m[1].copy(), v[1].copy(), *args)
    np.testing.assert_array_equal(pt, want)
