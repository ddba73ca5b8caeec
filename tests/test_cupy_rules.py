"""The rules of cupy that tapegrad's GPU path depends on, and that tests/emulated_gpu imitates.

Marked ``gpu``: on a machine with a GPU these run against the real cupy (benchmarks/gpu_check.sh runs
them), and in the suite they run against the emulated cupy (tests/test_gpu_paths_emulated.py). Where the
two disagree, one of these fails, and the emulator has to follow the real cupy.
"""
from __future__ import annotations

import weakref

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_arrays_take_weak_references_and_have_byte_bounds(cp):
    a = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    assert weakref.ref(a)() is a  # the engine tracks writes per buffer through weak references
    lo, hi = cp.byte_bounds(a)
    assert lo == a.data.ptr and hi - lo == a.nbytes
    lo_v, hi_v = cp.byte_bounds(a[1:, ::2])
    assert lo < lo_v < hi_v <= hi
    assert not hasattr(a, "__array_interface__")  # so numpy's byte_bounds cannot take it


def test_a_view_of_a_view_has_the_root_array_as_its_base(cp):
    a = cp.zeros((4, 4))
    assert a.base is None
    assert a[1:].base is a and a[1:][1:].base is a and a.T.base is a


def test_numpy_takes_no_gpu_array_implicitly(cp):
    a = cp.ones(3)
    with pytest.raises(TypeError):
        np.asarray(a)
    with pytest.raises(TypeError):
        np.asarray([cp.asarray(1.0), cp.asarray(2.0)])
    np.testing.assert_array_equal(a.get(), [1.0, 1.0, 1.0])


def test_gpu_ops_refuse_numpy_array_operands_and_take_scalars(cp):
    a = cp.ones(3)
    for host in (np.ones(3), np.array(2.0)):
        with pytest.raises(TypeError):
            a + host
        with pytest.raises(TypeError):
            cp.maximum(a, host)
    with pytest.raises(TypeError):
        cp.matmul(cp.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError):
        a += np.ones(3)
    assert float((a * np.float32(2.0) + 1.5).sum()) == 10.5


def test_a_numpy_scalar_on_either_side_is_a_kernel_argument_in_the_arrays_dtype(cp):
    # the engine keeps a Python number beside a GPU tensor as a numpy scalar of the tensor's dtype (no
    # host-to-device copy); numpy hands a scalar on the left to cupy's __array_ufunc__ as it is
    for dtype in (np.float32, np.float64):
        a = cp.arange(1, 4, dtype=dtype)
        s = a.dtype.type(0.5)
        for r in (a * s, s * a, s - a, s / a, a ** a.dtype.type(2), cp.where(a > 1, a, s), cp.where(a > 1, s, a)):
            assert isinstance(r, cp.ndarray) and r.dtype == dtype
        np.testing.assert_allclose((s - a).get(), [-0.5, -1.5, -2.5])
        np.testing.assert_allclose((s / a).get(), [0.5, 0.25, 1 / 6], rtol=1e-6)
    i = cp.arange(3)
    assert (i * np.int64(2)).dtype == i.dtype and (np.int64(2) + i).dtype == i.dtype


def test_reductions_and_integer_indexing_give_0d_gpu_arrays(cp):
    a = cp.arange(6.0).reshape(2, 3)
    for r in (a.sum(), a.max(), a[1, 2], cp.sum(a)):
        assert isinstance(r, cp.ndarray) and r.ndim == 0
    assert float(a.sum()) == 15.0 and a[1, 2].item() == 5.0
    assert cp.stack([a.min(), a.max()]).tolist() == [0.0, 5.0]
