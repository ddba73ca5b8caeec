"""pytest plugin: tapegrad's GPU tests on the emulated cupy beside it (numpy arrays in host memory).

    PYTHONPATH=tests/emulated_gpu python -m pytest -m gpu -p emulated_gpu_plugin tests/test_gpu_engine.py ...

Without a GPU these tests would all skip, and the engine's GPU path (the same op code with ``xp = cupy``)
would go unchecked until a session has one. Under the emulator they run the host code a GPU run runs:
the engine, the layers and optimisers, the kernel wrappers' checks, against cupy's operand rules.

What it patches in tapegrad, and nothing else:

1. ``kernels.registry.get(name, "cupy" | "numba-cuda")`` returns the CPU kernel wrapped: emulated arrays are
   unwrapped (the CPU kernel reads and writes the very numpy arrays behind them, so ``out=`` arguments are
   written in place), array results are wrapped back (an array that *is* one of the arguments comes back as
   that argument's wrapper, so ``kernel(..., out) is out`` holds as on the GPU). So the GPU kernels
   themselves are not checked here: the simulator tests (tests/cudasim) and a real GPU do that.
2. Two CuPy RawKernels the engine launches outside the registry, emulated by name with numpy from the CUDA
   source's own contract (the host code around the launch - checks, result handling - still runs):
   ``tapegrad_csr_stats_*`` (kernels/cupy/sparse.csr_stats) and ``tapegrad_step_gemm_*``
   (kernels/cupy/recurrent.step_gemm, used by loops recorded as CUDA graphs).

Every other RawKernel/RawModule launch, CUDA graph capture and the driver raise
NotImplementedError("emulated cupy: ..."); the tests that need them are skipped (:data:`NEEDS_A_GPU`).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import cupy
from cupy._core import _unwrap, ndarray


def _back(r, wrapped):
    if isinstance(r, np.ndarray):
        for f in wrapped:
            if f._a is r:
                return f
        return ndarray._of(r)
    if isinstance(r, np.generic):
        return ndarray._of(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_back(v, wrapped) for v in r)
    if isinstance(r, list):
        return [_back(v, wrapped) for v in r]
    return r


def _on_cpu(name, cpu_fn):
    @functools.wraps(cpu_fn)
    def gpu_kernel(*args, **kwargs):
        wrapped = [a for a in list(args) + list(kwargs.values()) if isinstance(a, ndarray)]
        for a in list(args) + list(kwargs.values()):
            if isinstance(a, np.ndarray):  # the real GPU kernels take device arrays only
                raise TypeError(f"emulated cupy: GPU kernel {name} got a numpy array")
        r = cpu_fn(*_unwrap(args), **_unwrap(kwargs))
        return _back(r, wrapped)
    gpu_kernel.cpu_kernel = cpu_fn
    return gpu_kernel


# ---- RawKernels emulated by name (launch args as the CUDA source takes them) ------------------------------
def _csr_stats(grid, block, args, **kw):
    indptr, indices, n_rows, nnz, out = args
    p, i, o = indptr._a, indices._a, out._a
    n_rows, nnz = int(n_rows), int(nnz)
    o[0] = np.uint64(np.int64(p[0]))
    if n_rows and np.any(p[1:n_rows + 1].astype(np.int64) < p[:n_rows].astype(np.int64)):
        o[1] = 1
    o[2] = np.uint64(np.int64(p[n_rows]))
    v = i[:nnz].astype(np.int64)
    if np.any(v < 0):
        o[3] = 1
    nonneg = v[v >= 0]
    if nonneg.size:
        o[4] = max(int(o[4]), int(nonneg.max()) + 1)


def _step_gemm(grid, block, args, **kw):
    a, b, out, M, N, K, trans_b, accumulate = args
    r = a._a @ (b._a.T if int(trans_b) else b._a)
    out._a[...] = out._a + r if int(accumulate) else r


_EMULATED = {"tapegrad_csr_stats_": _csr_stats, "tapegrad_step_gemm_": _step_gemm}


class _EmulatedModule:
    def __init__(self, code=None, options=(), **kw):
        self.code = code

    def get_function(self, name):
        for prefix, fn in _EMULATED.items():
            if name.startswith(prefix):
                return fn
        return _GPUOnly(name)


class _GPUOnly:
    def __init__(self, name):
        self.name = name

    def __call__(self, *a, **k):
        raise NotImplementedError(f"emulated cupy: RawKernel {self.name} cannot run without a GPU")


def pytest_configure(config):
    install()


def install() -> None:
    """Serve the GPU kernel table with the CPU kernels (and the two RawKernels above) for emulated arrays."""
    assert getattr(cupy, "EMULATED", False), "emulated_gpu_plugin needs tests/emulated_gpu first on PYTHONPATH"
    cupy.RawModule = _EmulatedModule
    from tapegrad.kernels import registry
    orig_get = registry.get

    def get(name, backend):
        if backend in ("cupy", "numba-cuda"):
            key = (name, backend)
            fn = registry._resolved.get(key)
            if fn is None or not hasattr(fn, "cpu_kernel"):
                if key not in registry.TABLE:
                    return orig_get(name, backend)  # its own error
                fn = registry._resolved[key] = _on_cpu(name, orig_get(name, "cpu"))
            return fn
        return orig_get(name, backend)

    registry.get = get
    for key in [k for k in registry._resolved if k[1] != "cpu"]:
        del registry._resolved[key]


# Tests that launch GPU kernels or the driver themselves, or capture CUDA graphs: test name -> why.
NEEDS_A_GPU = {
    "test_numba_sddmm_shared_memory_reduction_matches_shuffles": "launches numba-cuda kernels directly",
    "test_numba_fast_launch_matches_numba_launch_and_is_used": "launches numba-cuda kernels directly",
    "test_numba_planned_launches_match_numba_launch_and_are_used": "launches numba-cuda kernels directly",
    "test_cupy_direct_launch_matches_cupy_launch_and_is_used": "launches CuPy kernels through the driver",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", item.name)
        why = NEEDS_A_GPU.get(name)
        params = getattr(getattr(item, "callspec", None), "params", {})
        if name == "test_training_steps_replay_recorded_loops_and_follow_cpu" and params.get("graphs"):
            why = "asserts that the loops were captured as CUDA graphs"
        if why:
            item.add_marker(pytest.mark.skip(reason=f"needs a GPU under the emulated cupy: {why}"))


def pytest_report_header(config):
    import tapegrad
    return f"emulated cupy {cupy.__version__} from {cupy.__file__}; tapegrad from {tapegrad.__file__}"
