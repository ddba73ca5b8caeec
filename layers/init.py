"""Parameter initialisation, drawn from the engine's per-thread generator (``tapegrad.manual_seed``)."""
from __future__ import annotations

import math

import numpy as np

from ..engine import random as _random
from ..engine.backend import to_device
from .module import Parameter


def _fill(p: Parameter, host: np.ndarray) -> Parameter:
    p.data = to_device(host.astype(p.data.dtype, copy=False), p.device)
    p.grad = None
    return p


def uniform_(p: Parameter, low: float, high: float) -> Parameter:
    """U(low, high), sampled in float64 on the host and cast (the same numbers on every device)."""
    return _fill(p, _random.generator().uniform(low, high, size=p.shape))


def normal_(p: Parameter, mean: float = 0.0, std: float = 1.0) -> Parameter:
    return _fill(p, _random.generator().normal(mean, std, size=p.shape))


def zeros_(p: Parameter) -> Parameter:
    return _fill(p, np.zeros(p.shape))


def glorot_(p: Parameter) -> Parameter:
    """Glorot / Xavier uniform for a [fan_in, fan_out] or [fan_out, fan_in] matrix: U(+-sqrt(6 / (in + out)))."""
    fan_a, fan_b = p.shape[-2], p.shape[-1]
    bound = math.sqrt(6.0 / (fan_a + fan_b))
    return uniform_(p, -bound, bound)
