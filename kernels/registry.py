"""The kernel table: (kernel name, backend) -> implementation, and the one door every call goes through.

Backends: ``cpu`` (Numba njit), ``numba-cuda`` (Numba CUDA), ``cupy`` (CuPy RawKernel). Entries name a
module and an attribute; the module is imported on first use so that ``import tapegrad`` compiles and
loads nothing heavy (numba itself takes a few hundred milliseconds to import).

Every kernel call made by the engine or by the public ``tapegrad.kernels.*`` wrappers goes through
:func:`call`. With no profiler attached it costs one global load and one branch.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

BACKENDS = ("cpu", "numba-cuda", "cupy")
KERNEL_NAMES = (
    "spmm", "sddmm", "csr_transpose", "gcn_norm",
    "lstm_cell_fwd", "lstm_cell_bwd", "rnn_cell_fwd", "rnn_cell_bwd",
    "lstm_step_fwd", "lstm_step_bwd", "rnn_step_fwd", "rnn_step_bwd",
    "lstm_seq_fwd", "lstm_seq_bwd", "rnn_seq_fwd", "rnn_seq_bwd",
    "adam_step", "cross_entropy_fwd", "cross_entropy_bwd",
)
_MODULE_OF_KERNEL = {
    "spmm": "sparse", "sddmm": "sparse", "csr_transpose": "sparse", "gcn_norm": "sparse",
    "lstm_cell_fwd": "recurrent", "lstm_cell_bwd": "recurrent",
    "rnn_cell_fwd": "recurrent", "rnn_cell_bwd": "recurrent",
    "lstm_step_fwd": "recurrent_step", "lstm_step_bwd": "recurrent_step",
    "rnn_step_fwd": "recurrent_step", "rnn_step_bwd": "recurrent_step",
    "lstm_seq_fwd": "recurrent_step", "lstm_seq_bwd": "recurrent_step",
    "rnn_seq_fwd": "recurrent_step", "rnn_seq_bwd": "recurrent_step",
    "adam_step": "optim",
    "cross_entropy_fwd": "loss", "cross_entropy_bwd": "loss",
}
_PACKAGE_OF_BACKEND = {"cpu": "cpu", "numba-cuda": "cuda", "cupy": "cupy"}

# The explicit table, spelled out so `grep "lstm_cell_fwd"` finds every implementation.
TABLE: dict[tuple[str, str], tuple[str, str]] = {
    (name, backend): (f"tapegrad.kernels.{_PACKAGE_OF_BACKEND[backend]}.{_MODULE_OF_KERNEL[name]}", name)
    for name in KERNEL_NAMES
    for backend in BACKENDS
}

_resolved: dict[tuple[str, str], Callable] = {}

# Set by tapegrad.profile(); called as hook(name, backend, fn, args, kwargs) and must return fn's result.
_hook: Callable | None = None

# Which GPU implementation serves device "cuda" unless a call names one.
_gpu_backend = "cupy"


def get(name: str, backend: str) -> Callable:
    """The implementation of kernel ``name`` on ``backend`` (imported on first use)."""
    fn = _resolved.get((name, backend))
    if fn is None:
        try:
            module, attr = TABLE[(name, backend)]
        except KeyError:
            raise ValueError(f"no kernel {name!r} for backend {backend!r}; backends are {BACKENDS}") from None
        fn = getattr(importlib.import_module(module), attr)
        _resolved[(name, backend)] = fn
    return fn


def call(name: str, backend: str, *args: Any, **kwargs: Any) -> Any:
    """Run kernel ``name`` on ``backend``. The single place a profiler hooks in."""
    fn = _resolved.get((name, backend)) or get(name, backend)
    if _hook is None:
        return fn(*args, **kwargs)
    return _hook(name, backend, fn, args, kwargs)


def set_gpu_backend(backend: str) -> None:
    """Choose the implementation used for cupy arrays: ``"cupy"`` or ``"numba-cuda"``."""
    global _gpu_backend
    if backend not in ("cupy", "numba-cuda"):
        raise ValueError(f"gpu backend must be 'cupy' or 'numba-cuda', got {backend!r}")
    _gpu_backend = backend


def gpu_backend() -> str:
    return _gpu_backend


def backend_of(array: Any, backend: str | None = None) -> str:
    """The backend that serves ``array``: ``cpu`` for numpy, the chosen GPU backend for cupy arrays."""
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return backend
    if type(array).__module__.startswith("cupy"):
        return _gpu_backend
    return "cpu"
