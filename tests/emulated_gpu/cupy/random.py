"""cupy.random: numpy's generators with results on the emulated device (different streams from real CuPy's,
as real CuPy's differ from numpy's)."""
from __future__ import annotations

import numpy as np

from ._core import _wrap, _unwrap
from . import _names


class RandomState:
    def __init__(self, seed=None, method=None):
        self._rs = np.random.RandomState(None if seed is None else int(seed) % (1 << 32))

    def random_sample(self, size=None, dtype=float):
        return _wrap(np.asarray(self._rs.random_sample(size)).astype(dtype, copy=False))

    def rand(self, *size, dtype=float):
        return self.random_sample(size or None, dtype)

    def standard_normal(self, size=None, dtype=float):
        return _wrap(np.asarray(self._rs.standard_normal(size)).astype(dtype, copy=False))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        return _wrap(np.asarray(self._rs.normal(_unwrap(loc), _unwrap(scale), size)).astype(dtype, copy=False))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return _wrap(np.asarray(self._rs.uniform(_unwrap(low), _unwrap(high), size)).astype(dtype, copy=False))

    def __getattr__(self, name):
        if name not in _names.RANDOMSTATE_METHODS:
            raise AttributeError(name)
        fn = getattr(self._rs, name)
        return lambda *a, **k: _wrap(fn(*_unwrap(a), **_unwrap(k)))


_global = RandomState()


def seed(s=None):
    global _global
    _global = RandomState(s)


def get_random_state():
    return _global


def __getattr__(name):
    return getattr(_global, name)
