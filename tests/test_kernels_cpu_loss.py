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
