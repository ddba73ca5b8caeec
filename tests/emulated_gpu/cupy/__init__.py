"""emulated cupy: a numpy-backed stand-in for CuPy, to run tapegrad's GPU code paths on a machine without a GPU.

Not a simulator of CUDA: arrays live in host memory. What it keeps from real CuPy (14.x) is the Python-level
contract that host code can get wrong:

* ``cupy.ndarray`` is its own class (module ``cupy``) with ``__slots__``; weak references work (as on
  real CuPy 14: ``cupy.ndarray.__weakrefoffset__ != 0``); no ``__array_interface__`` (so numpy's
  ``byte_bounds`` fails on it), no ``__index__``, no ``setflags``; ``cupy.byte_bounds`` exists.
* implicit conversion to numpy fails: ``np.asarray(a)`` / ``__array__`` raise TypeError; ``.get()`` and
  ``cupy.asnumpy`` copy to the host.
* ufuncs and array functions refuse ``numpy.ndarray`` operands (TypeError "Unsupported type ..."); Python
  and numpy scalars are fine. Indices may be lists / numpy arrays (CuPy copies them to the device).
* reductions and integer indexing give 0-d cupy arrays, not numpy scalars; ``a[0]`` is a view.
* ``a[basic index] = numpy_array`` goes through ``fill`` and raises ValueError for a non-0-d numpy array.
* only names real CuPy has are exposed (module functions, ndarray attributes).

Anything only a GPU can do (RawKernel/RawModule/ElementwiseKernel launches, CUDA graph capture, the driver)
raises ``NotImplementedError("emulated cupy: ...")``.
"""
from __future__ import annotations

import numpy as _np

from . import _names
from ._core import (ndarray, _wrap, _unwrap, _check_operands, asarray, array, asnumpy, ufunc,  # noqa: F401
                    from_dlpack, fromDlpack, get_array_module, _Unsupported)
from . import cuda, random, cublas  # noqa: F401

__version__ = "14.2.0+emulated"
EMULATED = True

# host data is accepted (copied to the "device") only by these
asanyarray = asarray


def _gpu_only(what):
    class _GPUOnly:
        def __init__(self, *args, **kwargs):
            self._args = args

        def __call__(self, *args, **kwargs):
            raise NotImplementedError(f"emulated cupy: {what} cannot run without a GPU")

        def get_function(self, name):
            return _GPUOnly(*self._args)

    _GPUOnly.__name__ = what
    return _GPUOnly


RawKernel = _gpu_only("RawKernel")
RawModule = _gpu_only("RawModule")
ElementwiseKernel = _gpu_only("ElementwiseKernel")
ReductionKernel = _gpu_only("ReductionKernel")


def fuse(*args, **kwargs):
    raise NotImplementedError("emulated cupy: cupy.fuse cannot run without a GPU")


def is_available():
    return True


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0

    def n_free_blocks(self):
        return 0


_pool, _pinned_pool = _MemoryPool(), _MemoryPool()


def get_default_memory_pool():
    return _pool


def get_default_pinned_memory_pool():
    return _pinned_pool


_ufunc_cache: dict = {}


def __getattr__(name):
    """Any other public CuPy name that numpy also has: dtypes and constants as numpy's, functions forwarded
    to numpy with cupy-operand checks and the results wrapped."""
    if name not in _names.MODULE_NAMES:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (emulated cupy exposes CuPy's public names)")
    obj = getattr(_np, name)
    if name in _names.UFUNCS:
        f = _ufunc_cache.get(name)
        if f is None:
            f = _ufunc_cache[name] = ufunc(obj)
        return f
    if isinstance(obj, type) or not callable(obj):  # dtypes (float32, ...), constants, numpy classes
        return obj
    return _core.module_function(name, obj)


from . import _core  # noqa: E402


def byte_bounds(a):
    """cupy.byte_bounds: (first byte, one past the last byte) of a cupy array's memory (device addresses;
    here the host addresses of the numpy array behind it)."""
    if not isinstance(a, ndarray):
        raise TypeError(f"byte_bounds expects a cupy.ndarray, got {type(a).__name__}")
    try:
        from numpy.lib.array_utils import byte_bounds as numpy_byte_bounds
    except ImportError:  # numpy < 2
        numpy_byte_bounds = _np.byte_bounds
    return numpy_byte_bounds(a._a)
