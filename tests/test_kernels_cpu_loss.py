"""The CPU cross-entropy kernels (kernels/cpu/loss.py) against the NumPy reference."""
import numpy as np
import pytest

from loss_cases import cases, check_against_reference, forward
from tapegrad.kernels.cpu import loss as cl

CASES = list(cases())


@pytest.mark.parametrize("name,z,t,rows", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("parallel", [False, True])
def test_cross_entropy_kernels_match_the_reference(name, z, t, rows, parallel, monkeypatch):
    monkeypatch.setattr(cl, "_PARALLEL_MIN_WORK", 1 if parallel else 1 << 40)
    check_against_reference(cl.cross_entropy_fwd, cl.cross_entropy_bwd, z, t, rows)


def test_a_nan_logit_makes_its_row_nan_as_numpy():
    z = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
    loss, zmax, logsum, stats = forward(cl.cross_entropy_fwd, z, np.array([0, 2]), None)
    assert np.isnan(loss[0]) and np.isnan(zmax[0]) and np.isfinite(loss[1])
    assert stats.tolist() == [2, 0, 0]


def test_float32_rows_of_many_classes_keep_float32_precision():
    """The sum of exponentials is added up in float64 (one term at a time in float32 lost digits with C:
    a relative error of 5e-6 at C = 50,000)."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, 50_000)).astype(np.float32)
    t = rng.integers(0, 50_000, 4)
    loss = forward(cl.cross_entropy_fwd, z, t, None)[0]
    z64 = z.astype(np.float64)
    m = z64.max(axis=1)
    exact = m + np.log(np.exp(z64 - m[:, None]).sum(axis=1)) - z64[np.arange(4), t]
    np.testing.assert_allclose(loss, exact, rtol=3e-7)
