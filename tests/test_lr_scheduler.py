"""tapegrad.optim.lr_scheduler against torch.optim.lr_scheduler: the same learning rates, step for step."""
import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.optim import lr_scheduler

torch = pytest.importorskip("torch")

# torch warns when its scheduler steps before its optimizer has; some tests here step schedulers alone
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of:UserWarning")

N_STEPS = 30


def _pair(opt_name="SGD", lrs=(0.1, 0.03), **kw):
    """The same optimizer in both libraries, with one parameter group per entry of ``lrs``."""
    tgroups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    ggroups = [{"params": [tg.Parameter(np.zeros(2))], "lr": lr} for lr in lrs]
    return getattr(torch.optim, opt_name)(tgroups, **kw), getattr(tg.optim, opt_name)(ggroups, **kw)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


CASES = [
    ("StepLR", dict(step_size=4)),
    ("StepLR", dict(step_size=3, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[3, 7, 7, 20])),
    ("MultiStepLR", dict(milestones=[5, 12], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=10)),            # past T_max the cosine comes back up, as torch's
    ("CosineAnnealingLR", dict(T_max=7, eta_min=0.001)),
    ("LinearLR", dict()),
    ("LinearLR", dict(start_factor=0.1, end_factor=0.8, total_iters=12)),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e) ** 0.5)),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{sorted(k)}" for n, k in CASES])
def test_the_learning_rates_match_torch_for_30_steps(name, kwargs):
    topt, gopt = _pair()
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    gsched = getattr(tg.optim.lr_scheduler, name)(gopt, **kwargs)
    assert [g["initial_lr"] for g in gopt.param_groups] == [g["initial_lr"] for g in topt.param_groups] == [0.1, 0.03]
    assert gsched.last_epoch == tsched.last_epoch == 0
    np.testing.assert_allclose(gsched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=0)
    seen = set()
    for _ in range(N_STEPS):
        topt.step()
        gopt.step()
        tsched.step()
        gsched.step()
        assert gsched.last_epoch == tsched.last_epoch
        np.testing.assert_allclose(_lrs(gopt), _lrs(topt), rtol=1e-12, atol=0)
        np.testing.assert_allclose(gsched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=0)
        seen.add(round(_lrs(gopt)[0], 15))
    assert len(seen) > 1  # the schedule did change the rate


def test_lambda_lr_takes_one_function_per_group_as_torch():
    fns = [lambda e: 0.95 ** e, lambda e: 1.0 + e]
    topt, gopt = _pair()
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, fns)
    gsched = lr_scheduler.LambdaLR(gopt, fns)
    for _ in range(10):
        tsched.step()
        gsched.step()
    np.testing.assert_allclose(gsched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
    with pytest.raises(ValueError):
        lr_scheduler.LambdaLR(gopt, fns[:1])


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(mode="min", factor=0.5, patience=2, cooldown=1, min_lr=0.004),
    dict(mode="max", factor=0.3, patience=1, threshold=0.05, threshold_mode="abs", min_lr=[0.01, 0.0]),
    dict(mode="min", patience=0, threshold=0.1, threshold_mode="rel", eps=1e-3),
], ids=["defaults", "cooldown-min_lr", "max-abs", "rel-eps"])
def test_reduce_lr_on_plateau_matches_torch_on_a_metric_sequence(kwargs):
    rng = np.random.default_rng(0)
    # improving, then a long plateau with noise, a late improvement and a rising tail
    metrics = list(1.0 / (1 + np.arange(6))) + list(0.17 + 0.01 * rng.standard_normal(18)) + [0.05] + \
        list(0.05 + 0.02 * np.arange(15))
    if kwargs.get("mode") == "max":
        metrics = [-m for m in metrics]
    topt, gopt = _pair("Adam")
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kwargs)
    gsched = lr_scheduler.ReduceLROnPlateau(gopt, **kwargs)
    assert gsched.get_last_lr() == tsched.get_last_lr()
    changes = 0
    for i, m in enumerate(metrics):
        before = _lrs(gopt)
        tsched.step(torch.tensor(m, dtype=torch.float64))
        gsched.step(tg.tensor(np.float64(m)))  # a 0-d Tensor, as a loss would be
        assert (gsched.last_epoch, gsched.num_bad_epochs, gsched.cooldown_counter, gsched.best) == \
            (tsched.last_epoch, tsched.num_bad_epochs, tsched.cooldown_counter, tsched.best), i
        np.testing.assert_allclose(_lrs(gopt), _lrs(topt), rtol=1e-12, atol=0, err_msg=str(i))
        np.testing.assert_allclose(gsched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=0)
        changes += _lrs(gopt) != before
    assert changes >= 1


def test_state_dict_resumes_a_schedule_as_torch():
    topt, gopt = _pair()
    gsched = lr_scheduler.CosineAnnealingLR(gopt, T_max=12, eta_min=0.01)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=12, eta_min=0.01)
    for _ in range(5):
        gsched.step()
        tsched.step()
    state = gsched.state_dict()
    assert "optimizer" not in state and state["last_epoch"] == 5 and state["T_max"] == 12
    assert set(tsched.state_dict()) - {"_get_lr_called_within_step"} <= set(state)
    # a fresh run: the optimizer's groups come back with their lr and initial_lr, then the scheduler
    _, gopt2 = _pair()
    for g2, g in zip(gopt2.param_groups, gopt.param_groups):
        g2["lr"], g2["initial_lr"] = g["lr"], g["initial_lr"]
    gsched2 = lr_scheduler.CosineAnnealingLR(gopt2, T_max=1)
    gsched2.load_state_dict(state)
    for _ in range(10):
        gsched.step()
        gsched2.step()
        tsched.step()
        assert gsched2.get_last_lr() == gsched.get_last_lr()
        np.testing.assert_allclose(gsched2.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
    plateau = lr_scheduler.ReduceLROnPlateau(gopt, mode="max")
    plateau.step(1.0)
    restored = lr_scheduler.ReduceLROnPlateau(gopt2)
    restored.load_state_dict(plateau.state_dict())
    assert restored.mode == "max" and restored.best == 1.0 and restored.mode_worse == -math.inf


def test_resuming_with_last_epoch_needs_initial_lr_and_continues_as_torch():
    topt, gopt = _pair()
    with pytest.raises(KeyError, match="initial_lr"):
        lr_scheduler.StepLR(gopt, step_size=2, last_epoch=3)
    for g in topt.param_groups + gopt.param_groups:
        g["initial_lr"] = 0.2
    tsched = torch.optim.lr_scheduler.ExponentialLR(topt, gamma=0.5, last_epoch=3)
    gsched = lr_scheduler.ExponentialLR(gopt, gamma=0.5, last_epoch=3)
    for _ in range(4):
        np.testing.assert_allclose(gsched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12)
        tsched.step()
        gsched.step()


def test_torch_spellings_of_the_module_and_argument_checks():
    from tapegrad.optim.lr_scheduler import StepLR
    assert tg.optim.lr_scheduler.StepLR is StepLR is lr_scheduler.StepLR
    with pytest.raises(TypeError, match="not an Optimizer"):
        StepLR(object(), step_size=1)
    _, gopt = _pair()
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(gopt, factor=1.0)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(gopt, mode="up")
    with pytest.raises(ValueError):
        lr_scheduler.LinearLR(gopt, start_factor=0.0)
    with pytest.raises(ValueError):
        lr_scheduler.ReduceLROnPlateau(gopt, min_lr=[0.1])
