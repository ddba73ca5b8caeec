"""Random numbers for dropout and initialisation, one generator per thread.

A generator per thread makes two threads that each seed and train their own model get exactly the
results they get one after the other. ``manual_seed`` seeds the calling thread's generator.
"""
from __future__ import annotations

import threading

import numpy as np

from .backend import to_device

_DEFAULT_SEED = 0


class _ThreadGenerator(threading.local):
    def __init__(self) -> None:
        self.seed = _DEFAULT_SEED
        self.rng = np.random.default_rng(_DEFAULT_SEED)
        self.device_rng = None  # a cupy RandomState, made on first use on the GPU


_state = _ThreadGenerator()


def manual_seed(seed: int) -> None:
    """Seed this thread's generator (dropout masks, parameter initialisation)."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _state.seed = int(seed)
    _state.rng = np.random.default_rng(int(seed))
    _state.device_rng = None


def generator() -> np.random.Generator:
    return _state.rng


def uniform(shape: tuple, device: str = "cpu", low: float = 0.0, high: float = 1.0, dtype=np.float64):
    """U(low, high) samples drawn on the host (so CPU and GPU runs with one seed see the same numbers)."""
    a = _state.rng.uniform(low, high, size=shape).astype(dtype, copy=False)
    return a if device == "cpu" else to_device(a, device)


def dropout_mask(shape: tuple, p: float, device: str, dtype) -> object:
    """A dropout mask: 0 with probability ``p``, else 1 / (1 - p), drawn where the data lives.

    On the GPU the draws come from a per-thread cupy generator seeded by :func:`manual_seed`, so a mask
    costs no host work and no transfer; CPU and GPU masks differ for one seed, as in PyTorch."""
    dtype = np.dtype(dtype)
    scale = dtype.type(1.0 / (1.0 - p))
    if device == "cpu":
        return (_state.rng.uniform(0.0, 1.0, size=shape) >= p).astype(dtype) * scale
    import cupy
    if _state.device_rng is None:
        _state.device_rng = cupy.random.RandomState(_state.seed)
    return (_state.device_rng.random_sample(shape, dtype=dtype) >= p).astype(dtype) * scale
