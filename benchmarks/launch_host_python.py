"""The Python part of a GPU kernel launch, measured on a machine without a GPU.

    python benchmarks/launch_host_python.py [--profile]

Needs cupy and numba-cuda installed (a cupy wheel imports without a GPU), no GPU. It times the launch
rows of ``gpu_bench.py --only launch`` (spmm and lstm_cell_fwd, each through the CuPy and the numba-cuda
backend's planned launch, and a bare ``Launch`` call) with everything but the driver real: cupy arrays
over host memory, the wrappers' checks, the plan lookup and the parameter packing. The driver's
``cuLaunchKernel``, the current device and the current stream are stubs, so their cost (about 5 us
per launch on the GPU machines measured so far) is not in these figures. What is left is the part that
tapegrad's own code decides, comparable from commit to commit on one machine.

Each row is the median of 9 rounds of 20,000 calls, the rows taking turns round by round.
"""
from __future__ import annotations

import ctypes
import statistics
import sys
import time

import numpy as np

import cupy
from cupy.cuda import memory
from numba.core import types
from numba.np.numpy_support import from_dtype

from tapegrad.kernels import direct_launch as dl
from tapegrad.kernels.cuda import _device as dv
from tapegrad.kernels.cuda import recurrent as nrec
from tapegrad.kernels.cuda import sparse as nsp
from tapegrad.kernels.cupy import _compile as cc
from tapegrad.kernels.cupy import recurrent as crec
from tapegrad.kernels.cupy import sparse as csp

_HOST_BUFFERS: list = []  # the host memory behind the stand-in device arrays, alive for the whole run


def _host_pointer(nbytes: int) -> memory.MemoryPointer:
    buf = ctypes.create_string_buffer(nbytes + 256)
    _HOST_BUFFERS.append(buf)
    base = -(-ctypes.addressof(buf) // 256) * 256  # aligned as a CuPy allocation is
    return memory.MemoryPointer(memory.UnownedMemory(base, nbytes, None, device_id=0), 0)


def _array(a: np.ndarray) -> cupy.ndarray:
    """A cupy array over host memory holding a copy of ``a``."""
    a = np.ascontiguousarray(a)
    p = _host_pointer(max(a.nbytes, 1))
    ctypes.memmove(p.ptr, a.ctypes.data, a.nbytes)
    return cupy.ndarray(a.shape, a.dtype, memptr=p)


class _Driver:
    """Stands in for CuPy's driver binding: counts the launches that reach it."""
    CUDADriverError = RuntimeError
    launches = 0

    @staticmethod
    def launchKernel(*args) -> None:  # noqa: N802 - the binding's name
        _Driver.launches += 1


class _Stream:
    ptr = 0


class _Kernel:
    class kernel:  # noqa: N801 - CuPy's attribute
        ptr = 0xF00

    def __call__(self, *args, **kwargs):
        raise AssertionError("CuPy's own launch taken: the direct launch was refused")


def _numba_plan(kernel, blocks, threads, args, varying, shared=0):
    """dv.plan without Numba's compiled kernel: the parameter layout from the arguments' types."""
    argtypes = tuple(types.Array(from_dtype(a.dtype), a.ndim, "C") if isinstance(a, cupy.ndarray)
                     else types.boolean if isinstance(a, (bool, np.bool_)) else types.int64 if isinstance(a, int)
                     else from_dtype(np.dtype(type(a))) for a in args)
    codes, fixed, keep = dv._planned_layout(argtypes, args, varying)
    return dv.Planned(0, int(blocks), int(threads), shared, dl.Params(codes, fixed), keep)


def _stub_the_gpu() -> None:
    cupy.cuda.set_allocator(_host_pointer)
    dl._driver = _Driver
    cc.get_device, cc.current_stream, cc.kernel = (lambda: 0), (lambda: _Stream), (lambda source, name: _Kernel())
    code_of = dl.code_of  # a cupy array's __cuda_array_interface__ asks the driver for the current stream
    dl.code_of = lambda v: dl.POINTER if isinstance(v, cupy.ndarray) else code_of(v)
    csp._spmm_scratch = lambda dev, stream, dtype, n_carry, n_tickets: (
        _array(np.zeros(max(n_carry, 1), dtype)), _array(np.zeros(max(n_tickets, 1), np.uint32)))
    nsp._spmm_scratch = lambda kind, n_seg, F, dtype: (
        _array(np.zeros((n_seg, 2, F), dtype)), _array(np.zeros((n_seg, F), np.uint32)))
    dv._note_cupy()
    dv._get_device, dv._current_stream, dv._simulated = (lambda: 0), (lambda: _Stream), (lambda: False)
    dv.launch, dv.plan = (lambda *args, **kwargs: None), _numba_plan
    nsp._import_cc()


def main(argv: list[str]) -> int:
    _stub_the_gpu()
    B, H = 8, 32
    z, gates = _array(np.zeros((B, 4 * H), np.float32)), _array(np.zeros((B, 4 * H), np.float32))
    c_prev, c, h = (_array(np.zeros((B, H), np.float32)) for _ in range(3))
    indptr, indices = _array(np.arange(65, dtype=np.int64)), _array(np.arange(64, dtype=np.int32))
    data, x, out = _array(np.ones(64, np.float32)), _array(np.ones((64, 32), np.float32)), _array(np.ones((64, 32), np.float32))
    cases = {
        "spmm kernel (cupy)": lambda: csp.spmm(indptr, indices, data, x, out),
        "lstm_cell_fwd kernel (cupy)": lambda: crec.lstm_cell_fwd(z, c_prev, gates, c, h),
        "spmm kernel (numba-cuda)": lambda: nsp.spmm(indptr, indices, data, x, out),
        "lstm_cell_fwd kernel (numba-cuda)": lambda: nrec.lstm_cell_fwd(z, c_prev, gates, c, h),
    }
    for f in cases.values():
        f()  # the first call of each makes its plan
    launch = next(iter(csp._SPMM_PLANS.values()))
    cases["cc.Launch of the spmm plan alone"] = lambda: launch(
        0, indptr.data.ptr, indices.data.ptr, data.data.ptr, x.data.ptr, out.data.ptr)
    before = _Driver.launches
    for f in cases.values():
        f()
    if _Driver.launches - before != len(cases):
        raise AssertionError("a case did not reach the driver through its planned launch")
    times: dict = {k: [] for k in cases}
    n = 20000
    for _ in range(9):
        for name, f in cases.items():
            t = time.perf_counter()
            for _ in range(n):
                f()
            times[name].append((time.perf_counter() - t) / n * 1e6)
    print("host Python per launch (driver, device and stream stubbed), median of 9 rounds:")
    for name, v in times.items():
        print(f"  {name:36s} {statistics.median(v):6.3f} us")
    if "--profile" in argv:
        import cProfile
        for name, f in cases.items():
            print("==", name)
            cProfile.runctx("for _ in range(20000): f()", {}, {"f": f}, sort="tottime")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
