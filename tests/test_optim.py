"""Optimisers and gradient clipping against torch.optim / torch.nn.utils on the same params and grads."""
import copy
import math
import pickle

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
    (lambda p: optim.SGD([p[0] * 2], lr=0.1), "non-leaf"),
    (lambda p: optim.SGD([{"params": p}, {"params": p}], lr=0.1), "more than one parameter group"),
    (lambda p: optim.SGD([np.ones(2)], lr=0.1), "only optimize Tensors"),
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
    assert isinstance(total, tg.Tensor) and total.shape == () and total.dtype == np.float64
    assert total.item() == pytest.approx(expect.item(), rel=1e-12)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_names_the_non_finite_parameter_when_asked():
    params = _with_grads()
    params[1].grad[0] = np.nan
    with pytest.raises(FloatingPointError, match="parameter 1"):
        optim.clip_grad_norm(params, 1.0, error_if_nonfinite=True)
    named = [("encoder.weight", params[0]), ("encoder.bias", params[1])]
    before = params[0].grad.copy()
    with pytest.raises(FloatingPointError, match="encoder.bias"):
        optim.clip_grad_norm(named, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(params[0].grad, before)  # nothing scaled on error


def test_clip_grad_norm_error_if_nonfinite_names_an_overflowing_norm():
    p = tg.tensor(np.zeros(2), requires_grad=True)
    p.grad = np.array([1e200, 1e200])
    with pytest.raises(FloatingPointError, match="overflows"):
        optim.clip_grad_norm([p], 1.0, error_if_nonfinite=True)


def test_clip_grad_norm_skips_missing_grads_and_accepts_one_tensor():
    p = tg.tensor(np.ones(4), requires_grad=True)
    assert optim.clip_grad_norm([p], 1.0).item() == 0.0
    p.grad = np.full(4, 2.0)
    assert optim.clip_grad_norm(p, 1.0).item() == pytest.approx(4.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        optim.clip_grad_norm([p], -1.0)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    params = _with_grads(seed=5)
    tparams = [torch.tensor(p.data, requires_grad=True) for p in params]
    for tp, p in zip(tparams, params):
        tp.grad = torch.tensor(p.grad)
    assert torch.nn.utils.clip_grad_value_(tparams, 0.75) is None
    assert optim.clip_grad_value(params, 0.75) is None
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


# ---- torch's parameter-group habits (audit findings 2, 12, 14) ------------------------------------------------

def test_frozen_parameters_are_accepted_and_skipped_as_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(3, 2), (2,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    for name in ("SGD", "Adam", "AdamW"):
        tp = [torch.tensor(a, requires_grad=True) for a in init]
        gp = [tg.tensor(a, requires_grad=True) for a in init]
        tp[0].requires_grad_(False)
        gp[0].requires_grad_(False)
        topt = getattr(torch.optim, name)(tp, lr=0.1)
        gopt = getattr(optim, name)(gp, lr=0.1)
        for gs in grads:
            tp[1].grad = torch.tensor(gs[1])
            gp[1].grad = gs[1].copy()
            topt.step()
            gopt.step()
        np.testing.assert_array_equal(gp[0].data, init[0])  # frozen: untouched
        for a, b in zip(gp, tp):
            np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_a_parameter_listed_twice_in_one_group_warns_and_counts_once():
    # torch 2.13 warns too, but then updates such a parameter twice per step ("in future, this will cause
    # an error"); tapegrad keeps it once, so it trains as torch does with the parameter listed once
    torch = pytest.importorskip("torch")
    init, grad = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    tw = torch.tensor(init, requires_grad=True)
    gw = tg.tensor(init, requires_grad=True)
    topt = torch.optim.SGD([tw], lr=0.1, momentum=0.9)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        gopt = optim.SGD([gw, gw], lr=0.1, momentum=0.9)
    assert len(gopt.param_groups[0]["params"]) == 1
    for _ in range(3):
        tw.grad = torch.tensor(grad)
        gw.grad = grad.copy()
        topt.step()
        gopt.step()
    np.testing.assert_allclose(gw.data, tw.detach().numpy(), rtol=1e-15)


def test_extra_group_keys_are_kept_and_round_trip():
    w = tg.tensor(np.ones(2), requires_grad=True)
    b = tg.tensor(np.ones(2), requires_grad=True)
    opt = optim.SGD([{"params": [w], "name": "head"}, {"params": [b], "name": "body", "tag": None}], lr=0.1)
    assert [g["name"] for g in opt.param_groups] == ["head", "body"]
    assert opt.param_groups[0]["lr"] == 0.1
    state = opt.state_dict()  # the None tag cannot go into an .npz: left out; the names stay
    assert "group1.tag" not in state
    opt2 = optim.SGD([{"params": [w], "name": "x"}, {"params": [b], "name": "y", "tag": None}], lr=0.1)
    opt2.load_state_dict(state)
    assert [g["name"] for g in opt2.param_groups] == ["head", "body"]


def test_add_param_group_fills_defaults_and_trains_as_torch():
    torch = pytest.importorskip("torch")
    a0, b0 = np.array([1.0, 2.0]), np.array([[0.5, -1.0]])
    ga, gb = np.array([0.1, -0.3]), np.array([[0.2, 0.4]])
    ta, tb = torch.tensor(a0, requires_grad=True), torch.tensor(b0, requires_grad=True)
    a, b = tg.tensor(a0, requires_grad=True), tg.tensor(b0, requires_grad=True)
    topt = torch.optim.Adam([ta], lr=0.1, betas=(0.8, 0.9))
    gopt = optim.Adam([a], lr=0.1, betas=(0.8, 0.9))
    topt.add_param_group({"params": [tb], "lr": 0.01})
    gopt.add_param_group({"params": [b], "lr": 0.01})
    assert gopt.param_groups[1]["betas"] == (0.8, 0.9) and gopt.param_groups[1]["lr"] == 0.01
    for _ in range(3):
        ta.grad, tb.grad = torch.tensor(ga), torch.tensor(gb)
        a.grad, b.grad = ga.copy(), gb.copy()
        topt.step()
        gopt.step()
    np.testing.assert_allclose(a.data, ta.detach().numpy(), rtol=1e-14)
    np.testing.assert_allclose(b.data, tb.detach().numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match="more than one parameter group"):
        gopt.add_param_group({"params": [a]})


def test_step_with_a_closure_evaluates_it_with_recording_on_and_returns_its_loss():
    w = tg.tensor(np.array([3.0]), requires_grad=True)
    opt = optim.SGD([w], lr=0.25)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    with tg.no_grad():  # as torch: the closure records even when step is called under no_grad
        loss = opt.step(closure)
    assert loss.item() == 9.0
    np.testing.assert_allclose(w.data, [3.0 - 0.25 * 6.0])
    assert opt.step() is None


def test_zero_grad_set_to_none_false_zeroes_in_place():
    p = tg.tensor(np.ones(2), requires_grad=True)
    s = tg.tensor(np.array(2.0), requires_grad=True)
    opt = optim.SGD([p, s], lr=0.1)
    ((p * p).sum() + s * s).backward()
    g = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is g
    np.testing.assert_array_equal(p.grad, [0.0, 0.0])
    assert float(s.grad) == 0.0
    opt.zero_grad()
    assert p.grad is None and s.grad is None


@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.05, amsgrad=True)),
                                         ("Adam", dict(lr=0.05, betas=(0.3, 0.5), weight_decay=0.1, amsgrad=True)),
                                         ("AdamW", dict(lr=0.05, amsgrad=True)),
                                         ("AdamW", dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.3, amsgrad=True))])
def test_amsgrad_matches_torch_bit_close_in_float64(name, kwargs):
    # 12 steps with gradients that shrink, so v falls below its running maximum and AMSGrad differs from Adam
    shapes = SHAPES + [()]
    rng = np.random.default_rng(11)
    grads = [[rng.standard_normal(s) * 0.5 ** k for s in shapes] for k in range(12)]
    torch = pytest.importorskip("torch")
    tp = [torch.tensor(a, requires_grad=True) for a in make_params(shapes=shapes)]
    gp = [tg.tensor(a, requires_grad=True) for a in make_params(shapes=shapes)]
    topt = getattr(torch.optim, name)(tp, **kwargs)
    gopt = getattr(optim, name)(gp, **kwargs)
    plain = getattr(optim, name)([tg.tensor(a, requires_grad=True) for a in make_params(shapes=shapes)],
                                 **{**kwargs, "amsgrad": False})
    for gs in grads:
        for t, p, q, g in zip(tp, gp, [p for grp in plain.param_groups for p in grp["params"]], gs):
            t.grad, p.grad, q.grad = torch.tensor(g), np.array(g), np.array(g)
        topt.step()
        gopt.step()
        plain.step()
    for p, t in zip(gp, tp):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=4e-16, atol=1e-17)
    assert not np.allclose(gp[0].data, plain.param_groups[0]["params"][0].data, rtol=1e-6)


def test_amsgrad_state_round_trips():
    params, opt = run_tapegrad(optim.Adam, dict(lr=0.05, amsgrad=True), n_steps=3)
    state = opt.state_dict()
    assert "param0.max_exp_avg_sq" in state
    opt2 = optim.Adam([tg.tensor(p, requires_grad=True) for p in params], lr=0.05, amsgrad=True)
    opt2.load_state_dict(state)
    np.testing.assert_array_equal(opt2.state[opt2.param_groups[0]["params"][0]]["max_exp_avg_sq"],
                                  state["param0.max_exp_avg_sq"])


# ---- clip_grad_norm: every norm_type and non-finite gradient as torch (audit findings 1, 8, 9) ---------------

def _clip_both(grads, max_norm, norm_type, **kw):
    torch = pytest.importorskip("torch")
    tp, gp = [], []
    for g in grads:
        t = torch.zeros(len(g), dtype=torch.float64, requires_grad=True)
        t.grad = torch.tensor(g, dtype=torch.float64)
        p = tg.Parameter(np.zeros(len(g)))
        p.grad = np.array(g, dtype=np.float64)
        tp.append(t)
        gp.append(p)
    expect = float(torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type, **kw))
    got = float(optim.clip_grad_norm_(gp, max_norm, norm_type=norm_type, **kw))
    return expect, got, [t.grad.numpy() for t in tp], [p.grad for p in gp]


INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("grads,norm_type", [
    ([[0.1, -3.0, 2.0], [0.5]], -INF),
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], -INF),
    ([[1.0, 0.0, -2.0]], 0),
    ([[1.0, 0.0, -2.0], [3.0, 0.0], [0.0, 0.0]], 0.0),  # torch: the count of parameters with a nonzero grad
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], "inf"),
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], "-inf"),
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], "2"),
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], -2.0),
    ([[1.0, 0.0, -2.0], [3.0, 0.2]], -2.0),
    ([[1.0, 0.5, -2.0], [3.0, 0.2]], 0.5),
], ids=lambda v: repr(v))
def test_clip_grad_norm_norm_types_match_torch(grads, norm_type):
    expect, got, tgrads, ggrads = _clip_both(grads, 0.1, norm_type)
    assert got == pytest.approx(expect, rel=1e-13)
    for a, b in zip(ggrads, tgrads):
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("grads,norm_type", [
    ([[1.0, INF], [3.0]], 2.0),        # inf, and the grads become 0 and NaN
    ([[1.0, NAN], [3.0]], 2.0),        # nan, all NaN
    ([[1.0, INF], [NAN]], 2.0),        # NaN wins
    ([[1.0, INF], [3.0]], INF),
    ([[1.0, NAN], [3.0]], INF),
    ([[1.0, NAN], [3.0]], -INF),
    ([[1.0, INF], [0.2]], -INF),       # the min is finite: only finite grads scaled
    ([[1e200, 1e200]], 2.0),           # finite grads whose norm overflows
    ([[1.0, INF], [3.0]], 1.0),
], ids=lambda v: repr(v))
def test_clip_grad_norm_non_finite_by_default_matches_torch(grads, norm_type):
    expect, got, tgrads, ggrads = _clip_both(grads, 1.0, norm_type)
    np.testing.assert_equal(got, expect)
    for a, b in zip(ggrads, tgrads):
        np.testing.assert_allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize("bad", ["fro", None, NAN, "two", True])
def test_clip_grad_norm_refuses_other_norm_types_naming_norm_type(bad):
    p = tg.Parameter(np.zeros(2))
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="norm_type"):
        optim.clip_grad_norm([p], 1.0, norm_type=bad)
    np.testing.assert_array_equal(p.grad, [1.0, 1.0])


def test_torch_names_of_the_clipping_functions():
    assert optim.clip_grad_norm_ is optim.clip_grad_norm
    assert optim.clip_grad_value_ is optim.clip_grad_value
    assert tg.optim.clip_grad_norm_ is optim.clip_grad_norm
    p = tg.Parameter(np.zeros(2))
    p.grad = np.array([3.0, -4.0])
    assert optim.clip_grad_norm_([p], 1.0, foreach=None).item() == pytest.approx(5.0)
    optim.clip_grad_value_([p], 0.1, foreach=None)
    np.testing.assert_allclose(p.grad, [0.1, -0.1])


# ---- optimiser state keyed by the parameter (audit f06) ----------------------------------------------------

def _linear_steps(model, opt, n):
    x = np.random.default_rng(7).standard_normal((8, 3))
    for _ in range(n):
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.1, amsgrad=True),
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
], ids=["adam", "adamw-amsgrad", "sgd-nesterov"])
@pytest.mark.parametrize("clone", [copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))],
                         ids=["deepcopy", "pickle"])
def test_a_copied_model_and_optimizer_continue_exactly_as_the_original(make, clone):
    tg.manual_seed(0)
    model = tg.Linear(3, 2, dtype=np.float64)
    opt = make(model.parameters())
    _linear_steps(model, opt, 3)
    model2, opt2 = clone((model, opt))
    # the copy's state belongs to the copy's parameters, not the original's
    assert {id(p) for p in opt2.state} == {id(p) for p in model2.parameters()}
    _linear_steps(model, opt, 4)
    _linear_steps(model2, opt2, 4)
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert p2 is not p
        np.testing.assert_array_equal(p2.data, p.data, err_msg=name)


def test_optimizer_state_is_read_by_the_parameter_as_in_torch():
    model = tg.Linear(3, 2, dtype=np.float64)
    opt = optim.Adam(model.parameters(), lr=0.1)
    _linear_steps(model, opt, 2)
    st = opt.state[model.weight]
    assert int(st["step"]) == 2
    assert st["exp_avg"].shape == model.weight.shape
    assert model.bias in opt.state
    assert set(opt.state_dict()) >= {"param0.step", "param0.exp_avg", "param1.exp_avg_sq"}


# ---- clip_grad_norm returns a 0-d Tensor, as torch's (audit f04) -------------------------------------------

@pytest.mark.parametrize("dtypes", [("float32",), ("float64",), ("float32", "float64"), ("float64", "float32")],
                         ids=lambda d: "+".join(d))
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 0])
def test_clip_grad_norm_returns_a_0d_tensor_of_torchs_dtype(dtypes, norm_type):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(4 + i).astype(d) * 3 for i, d in enumerate(dtypes)]
    tparams, params = [], []
    for g in grads:
        t = torch.zeros(len(g), dtype=getattr(torch, str(g.dtype)), requires_grad=True)
        t.grad = torch.tensor(g)
        p = tg.Parameter(np.zeros(len(g), dtype=g.dtype))
        p.grad = g.copy()
        tparams.append(t)
        params.append(p)
    expect = torch.nn.utils.clip_grad_norm_(tparams, 1.0, norm_type=norm_type)
    got = optim.clip_grad_norm_(params, 1.0, norm_type=norm_type)
    assert isinstance(got, tg.Tensor) and got.shape == tuple(expect.shape) == ()
    assert str(got.dtype) == str(expect.dtype).rpartition(".")[2]
    assert got.device == "cpu" and not got.requires_grad
    assert got.item() == pytest.approx(expect.item(), rel=1e-6)
    assert float(got) == got.item() and f"{got:.3f}" == f"{expect.item():.3f}"


def test_clip_grad_norm_without_any_gradient_returns_a_float32_zero_as_torch():
    torch = pytest.importorskip("torch")
    expect = torch.nn.utils.clip_grad_norm_([torch.zeros(2, dtype=torch.float64, requires_grad=True)], 1.0)
    got = optim.clip_grad_norm_([tg.Parameter(np.zeros(2))], 1.0)
    assert isinstance(got, tg.Tensor) and got.shape == () and got.item() == expect.item() == 0.0
    assert got.dtype == np.float32 and expect.dtype == torch.float32


# ---- torch's maximize= / foreach= / fused= keywords (audit f08) ---------------------------------------------

MAXIMIZE_CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("Adam", dict(lr=0.05, weight_decay=0.1)),
    ("Adam", dict(lr=0.05, betas=(0.3, 0.99), amsgrad=True)),
    ("AdamW", dict(lr=0.05, weight_decay=0.3)),
    ("AdamW", dict(lr=0.05, amsgrad=True)),
]


@pytest.mark.parametrize("name,kwargs", MAXIMIZE_CONFIGS, ids=[f"{n}-{k}" for n, k in MAXIMIZE_CONFIGS])
def test_maximize_matches_torch_step_for_step(name, kwargs):
    torch = pytest.importorskip("torch")
    tparams = [torch.tensor(a, requires_grad=True) for a in make_params()]
    gparams = [tg.tensor(a, requires_grad=True) for a in make_params()]
    topt = getattr(torch.optim, name)(tparams, maximize=True, **kwargs)
    gopt = getattr(optim, name)(gparams, maximize=True, **kwargs)
    assert gopt.param_groups[0]["maximize"] is True
    for grads in grad_sequence(5):
        for t, p, g in zip(tparams, gparams, grads):
            t.grad, p.grad = torch.tensor(g), g.copy()
        topt.step()
        gopt.step()
        for t, p, g in zip(tparams, gparams, grads):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-14, atol=1e-15)
            np.testing.assert_array_equal(p.grad, g)  # the gradient itself is not negated in place


def test_maximize_ascends_and_round_trips_through_state_dict():
    p = tg.tensor(np.zeros(2), requires_grad=True)
    opt = optim.SGD([p], lr=0.5, maximize=True)
    p.grad = np.array([1.0, -2.0])
    opt.step()
    np.testing.assert_array_equal(p.data, [0.5, -1.0])  # along the gradient
    state = opt.state_dict()
    assert state["group0.maximize"] == True  # noqa: E712  (a numpy bool)
    other = optim.SGD([tg.tensor(np.zeros(2), requires_grad=True)], lr=0.5)
    other.load_state_dict(state)
    assert other.param_groups[0]["maximize"] is True


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_foreach_and_fused_are_accepted_kept_in_the_groups_and_change_nothing(cls):
    torch = pytest.importorskip("torch")
    tkeys = set(getattr(torch.optim, cls.__name__)([torch.zeros(1, requires_grad=True)]).param_groups[0])
    plain, plain_opt = run_tapegrad(cls, dict(lr=0.05))
    for kw in (dict(foreach=True), dict(foreach=False, fused=False), dict(fused=True)):
        got, opt = run_tapegrad(cls, dict(lr=0.05, **kw))
        for g, e in zip(got, plain):
            np.testing.assert_array_equal(g, e)
        assert {"maximize", "foreach", "fused", "differentiable"} <= set(opt.param_groups[0]) <= tkeys
        # the same checkpoint entries as before these keywords existed
        assert opt.state_dict().keys() == plain_opt.state_dict().keys()
        assert not [k for k in opt.state_dict() if k.split(".")[1] in ("maximize", "foreach", "fused")]
    with pytest.raises(RuntimeError, match="fused.*foreach"):
        cls([tg.tensor(np.zeros(1), requires_grad=True)], foreach=True, fused=True)
    with pytest.raises(NotImplementedError, match="differentiable"):
        cls([tg.tensor(np.zeros(1), requires_grad=True)], differentiable=True)
