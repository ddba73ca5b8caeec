"""Array plumbing shared by the Numba CUDA kernels: what kind of array came in, device views of it,
outputs of the same kind, and launch sizes.

Three kinds of array are accepted by every kernel in this package:

* cupy arrays (and anything else with ``__cuda_array_interface__``): viewed without a copy through
  ``cuda.as_cuda_array``. Results and temporaries are cupy arrays from cupy's pool when the leading
  input is one, and the kernels run on cupy's current stream, so they are ordered with the cupy work
  around them without a host sync;
* Numba device arrays (``DeviceNDArray``, or the simulator's ``FakeCUDAArray``): used as they are;
* host NumPy arrays: copied to the device, and results copied back, for convenience in tests.

Nothing here imports cupy unless a cupy array is passed in.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda

CUPY, DEVICE, HOST = "cupy", "device", "host"


def kind_of(a: Any) -> str:
    """Which kind of array ``a`` is: CUPY, DEVICE (a Numba device array) or HOST."""
    if getattr(a, "__cuda_ndarray__", False):
        return DEVICE
    if type(a).__module__.startswith("cupy"):
        return CUPY
    if hasattr(a, "__cuda_array_interface__"):
        return DEVICE  # a foreign device array: results come back as Numba device arrays
    return HOST


def as_device(a: Any) -> Any:
    """A Numba device view of ``a`` (no copy for device arrays); None stays None."""
    if a is None:
        return None
    if getattr(a, "__cuda_ndarray__", False):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a, sync=False)  # ordered by running on the producer's stream
    return cuda.to_device(np.ascontiguousarray(a))


class Output:
    """An output of a given kind: ``dev`` is what a kernel writes, ``result()`` what the caller gets.

    When the caller passed ``out`` it is filled and returned; a host ``out`` is filled by a copy back.
    """

    __slots__ = ("kind", "user", "dev")

    def __init__(self, shape: tuple, dtype: Any, kind: str, out: Any = None):
        dtype = np.dtype(dtype)
        self.kind = kind
        self.user = out
        if out is not None:
            if tuple(out.shape) != tuple(shape):
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
            if np.dtype(out.dtype) != dtype:
                raise ValueError(f"out has dtype {out.dtype}, expected {dtype}")
            self.dev = cuda.device_array(shape, dtype) if kind_of(out) == HOST else as_device(out)
        elif kind == CUPY:
            import cupy
            self.user = cupy.empty(shape, dtype)
            self.dev = cuda.as_cuda_array(self.user, sync=False)
        else:
            self.dev = cuda.device_array(shape, dtype)

    def result(self) -> Any:
        if self.user is not None:
            if kind_of(self.user) == HOST:
                host = self.dev.copy_to_host()
                self.user[...] = host
            return self.user
        if self.kind == HOST:
            return self.dev.copy_to_host()
        return self.dev


def stream(kind: str) -> Any:
    """The stream to launch on: cupy's current stream for cupy work, else Numba's default (0)."""
    if kind != CUPY:
        return 0
    import cupy
    ptr = cupy.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def scratch(shape: tuple, dtype: Any, kind: str) -> Any:
    """A temporary device array; from cupy's memory pool when the caller works in cupy."""
    if kind == CUPY:
        import cupy
        return cuda.as_cuda_array(cupy.empty(shape, dtype), sync=False)
    return cuda.device_array(shape, dtype)


def to_host_scalar(dev: Any, index: int, st: Any) -> Any:
    """dev[index] on the host (waits for the stream)."""
    host = dev[index:index + 1].copy_to_host(stream=st)
    if st != 0:
        st.synchronize()
    return host[0]


def launch_shape(n_threads: int, block: int, max_blocks: int) -> tuple[int, int]:
    """(blocks, threads per block) for a grid-stride loop over ``n_threads`` logical threads."""
    block = max(1, int(block))
    blocks = max(1, min(math.ceil(max(n_threads, 1) / block), int(max_blocks)))
    return blocks, block


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def is_simulator() -> bool:
    """True under NUMBA_ENABLE_CUDASIM=1, where warp shuffles do not exist."""
    try:
        from numba.cuda.core import config  # the numba-cuda package
    except ImportError:  # numba's built-in numba.cuda
        from numba.core import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))
