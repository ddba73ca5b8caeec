"""Array plumbing shared by the Numba CUDA kernels: what kind of array came in, device views of it,
outputs of the same kind, and launch sizes.

Three kinds of array are accepted by every kernel in this package:

* cupy arrays: passed to the kernels as they are, through :func:`launch`'s lean path (other arrays with
  ``__cuda_array_interface__`` are viewed without a copy through ``cuda.as_cuda_array``). Results and
  temporaries are cupy arrays from cupy's pool when the leading input is one, and the kernels run on
  cupy's current stream, so they are ordered with the cupy work around them without a host sync;
* Numba device arrays (``DeviceNDArray``, or the simulator's ``FakeCUDAArray``): used as they are;
* host NumPy arrays: copied to the device, and results copied back, for convenience in tests.

Nothing here imports cupy unless a cupy array is passed in.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np
from numba import cuda

from .. import direct_launch as dl

CUPY, DEVICE, HOST = "cupy", "device", "host"

# Launch kernels on cupy arrays through the driver directly (see :func:`launch`); 0 turns it off.
FAST_LAUNCH = os.environ.get("TAPEGRAD_NUMBA_FAST_LAUNCH", "1") != "0"


_cupy_ndarray: Any = None  # cupy.ndarray, once a cupy array has come in (this module never imports cupy first)
_get_device = _current_stream = None


def _note_cupy() -> None:
    global _cupy_ndarray, _get_device, _current_stream
    import cupy
    _get_device, _current_stream = cupy.cuda.runtime.getDevice, cupy.cuda.get_current_stream
    _cupy_ndarray = cupy.ndarray


def kind_of(a: Any) -> str:
    """Which kind of array ``a`` is: CUPY, DEVICE (a Numba device array) or HOST."""
    if type(a) is _cupy_ndarray:  # the common case first: one comparison
        return CUPY
    if getattr(a, "__cuda_ndarray__", False):
        return DEVICE
    if type(a).__module__.startswith("cupy"):
        if _cupy_ndarray is None:
            _note_cupy()
        return CUPY
    if hasattr(a, "__cuda_array_interface__"):
        return DEVICE  # a foreign device array: results come back as Numba device arrays
    return HOST


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.startswith("cupy")


def as_device(a: Any) -> Any:
    """What a kernel can take for ``a``: a cupy array as it is (:func:`launch` passes it without a
    conversion), a Numba device array as it is, another device array as a Numba view, a host array
    copied to the device; None stays None."""
    if a is None or type(a) is _cupy_ndarray:
        return a
    if getattr(a, "__cuda_ndarray__", False) or _is_cupy(a):
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
        self.kind = kind
        self.user = out
        if type(out) is _cupy_ndarray and out.shape == shape and out.dtype == dtype:
            self.dev = out  # the engine's case, checked first
            return
        dtype = np.dtype(dtype)
        if out is not None:
            if tuple(out.shape) != tuple(shape):
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
            if np.dtype(out.dtype) != dtype:
                raise ValueError(f"out has dtype {out.dtype}, expected {dtype}")
            self.dev = cuda.device_array(shape, dtype) if kind_of(out) == HOST else as_device(out)
        elif kind == CUPY:
            import cupy
            self.user = self.dev = cupy.empty(shape, dtype)
        else:
            self.dev = cuda.device_array(shape, dtype)

    def result(self) -> Any:
        if self.user is not None:
            if self.user is self.dev:
                return self.user
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
    """A temporary device array; a cupy array from cupy's memory pool when the caller works in cupy."""
    if kind == CUPY:
        import cupy
        return cupy.empty(shape, dtype)
    return cuda.device_array(shape, dtype)


def to_host_scalar(dev: Any, index: int, st: Any) -> Any:
    """dev[index] on the host (waits for the stream)."""
    if _is_cupy(dev):
        return dev[index].item()  # cupy reads it on its current stream, which ``st`` wraps
    host = dev[index:index + 1].copy_to_host(stream=st)
    if st != 0:
        st.synchronize()
    return host[0]


# ---- launching ----------------------------------------------------------------------------------------------
# Numba's own launch (``kernel[grid, block, stream](*args)``) costs the host 0.2-0.6 ms per call on cupy
# arrays: each array is typed and wrapped as a Numba device array, and each argument goes through a
# ctypes conversion. For cupy work :func:`launch` does this once per (kernel, argument types, device):
# it lets Numba launch the first call (which compiles the kernel), looks up the compiled kernel and the
# types Numba gave each argument, and from then on packs the arguments as Numba's kernel ABI lays them
# out and hands them to cuLaunchKernel (:mod:`tapegrad.kernels.direct_launch`).
#
# Numba's kernel ABI flattens an array argument into (meminfo, parent, nitems, itemsize, data,
# shape[ndim], strides[ndim]) and passes scalars by value.

_plans: dict = {}


class _Plan:
    """How to launch one compiled kernel: its handle, the parameter layout and a packer."""

    __slots__ = ("handle", "params", "pack")

    def __init__(self, handle: int, codes: list, pack_source: str) -> None:
        self.handle = handle
        self.params = dl.Params(codes)
        namespace: dict = {}
        exec(pack_source, namespace)  # a packer with one expression per value: the per-call work is this
        self.pack = namespace["pack"]


def _array_values(i: int, a: Any, layout: str) -> tuple[list, list]:
    """(lines that read argument i's shape once, the ABI's values for it): for a C-contiguous layout the
    element count and strides follow from the shape, which saves reading them from the array."""
    n, itemsize = a.ndim, np.dtype(a.dtype).itemsize
    lines = [f"    x{i} = a[{i}]", f"    s{i} = x{i}.shape"]
    dims = [f"s{i}[{d}]" for d in range(n)]
    if layout == "C":
        size = "*".join(dims) if dims else "1"
        strides = ["*".join(dims[d + 1:] + [str(itemsize)]) for d in range(n)]
    else:
        size = f"x{i}.size"
        lines.append(f"    t{i} = x{i}.strides")
        strides = [f"t{i}[{d}]" for d in range(n)]
    return lines, ["0", "0", size, str(itemsize), f"x{i}.data.ptr"] + dims + strides


def _layout(argtypes: tuple, args: tuple) -> tuple[list, str] | None:
    """(struct codes of every parameter, source of the packer) for arguments of Numba types ``argtypes``;
    None where an argument is of a type this does not lay out (an array that is not a cupy ndarray)."""
    from numba.core import types
    codes, lines, values = [], [], []
    for i, ty in enumerate(argtypes):
        if isinstance(ty, types.Array):
            if type(args[i]) is not _cupy_ndarray:
                return None
            codes += [dl.POINTER, dl.POINTER, "q", "q", dl.POINTER] + ["q"] * (2 * ty.ndim)
            more, vals = _array_values(i, args[i], ty.layout)
            lines += more
            values += vals
        elif str(ty) in dl.CODES:
            codes.append(dl.CODES[str(ty)])
            values.append(f"a[{i}]")
        else:
            return None
    source = "def pack(pack_into, buf, a):\n" + "".join(line + "\n" for line in lines)
    return codes, source + f"    pack_into(buf, 0, {', '.join(values)})\n"


def _make_plan(kernel: Any, args: tuple) -> _Plan | None:
    """The plan for these arguments' types, from the kernel Numba compiled for them; None where the fast
    path does not apply (an argument type it does not lay out, or no compiled kernel to find)."""
    argtypes = tuple(kernel.typeof_pyval(a) for a in args)
    compiled = kernel.overloads.get(argtypes)
    layout = _layout(argtypes, args) if compiled is not None else None
    if layout is None:
        return None
    return _Plan(int(compiled._codelibrary.get_cufunc().handle), *layout)


def launch(kernel: Any, blocks: int, threads: int, kind: str, *args: Any, shared: int = 0) -> None:
    """``kernel[blocks, threads, stream(kind), shared](*args)``: for cupy work (kind CUPY, every array a
    cupy array) through the lean path described above, on cupy's current stream."""
    if kind == CUPY and FAST_LAUNCH and not _simulated():
        if _cupy_ndarray is None:
            _note_cupy()
        nd = _cupy_ndarray
        # what decides the compiled kernel and the parameter layout: an array's dtype, rank and layout, a
        # scalar's type
        key = (kernel, _get_device(), *[(a.dtype.char, a.ndim, a._c_contiguous, a._f_contiguous)
                                        if type(a) is nd else type(a) for a in args])
        plan = _plans.get(key, False)
        if plan:
            buf, params, _ = plan.params.buffer()
            plan.pack(plan.params.head.pack_into, buf, args)
            try:
                dl.driver().launchKernel(plan.handle, blocks, 1, 1, threads, 1, 1, shared, _current_stream().ptr,
                                         params, 0)
                return
            except dl.driver().CUDADriverError:  # refused before it ran (a thread with no context, say):
                pass  # Numba launches this call, and reports the error if it is a real one
        kernel[blocks, threads, stream(kind), shared](*args)
        if plan is False:  # first call with these types: Numba compiled it; plan the next ones
            try:
                _plans[key] = _make_plan(kernel, args)
            except Exception:  # anything unexpected in Numba's internals: stay on Numba's launch
                _plans[key] = None
        return
    kernel[blocks, threads, stream(kind), shared](*args)


# ---- planned launches -----------------------------------------------------------------------------------------
# The kernel wrappers the engine calls once per step (spmm, the cell kernels) go one step further: every
# argument's type and every value but the arrays' addresses follow from the arrays' dtypes and shapes and a
# few constants, so :func:`lean` keys a :class:`Planned` launch on those and a later call packs the
# addresses alone: no per-argument typing, no Numba ABI flattening of shapes and strides.

def lean(plans: dict, extra: Any, *arrays: Any) -> Any:
    """A wrapper's planned launch (:func:`direct_launch.lean_call` on cupy's current stream and device):
    True when ``plans`` held a plan for these arrays and it launched; else the key to keep a plan for
    them under, or None where planned launches do not apply (the fast path off, no cupy array seen yet,
    the simulator) or these arrays cannot take one. ``extra``: what else decides the launch (kernel,
    launch constants, flags)."""
    if not (FAST_LAUNCH and _cupy_ndarray is not None) or _simulated():
        return None
    return dl.lean_call(len(arrays))(plans, _cupy_ndarray, _get_device, _current_stream().ptr, extra, *arrays)


def plannable(*arrays: Any) -> bool:
    """Whether planned launches apply (as in :func:`lean`) to a call of these arrays: every one (None
    aside) a C-contiguous cupy ndarray. For a wrapper that keys its plans itself (spmm)."""
    if not (FAST_LAUNCH and _cupy_ndarray is not None) or _simulated():
        return False
    for a in arrays:
        if a is not None and (type(a) is not _cupy_ndarray or not a._c_contiguous):
            return False
    return True


def launch_and_plan(plans: dict, key: Any, kernel: Any, blocks: int, threads: int, kind: str, args: tuple,
                    varying: tuple, given: tuple, limit: int = 256) -> None:
    """:func:`launch`, then keep the planned launch of this call under ``key`` (from :func:`lean`, None:
    none) for the next calls: only when the arrays launched at positions ``varying`` are at the addresses
    of the arrays ``given`` to the wrapper, that is when the call converted, copied or allocated none of
    them (a plan is made for the dtypes and shapes its key names); otherwise None is kept, and calls with
    that key take the general path without trying again."""
    launch(kernel, blocks, threads, kind, *args)
    if key is not None and key not in plans:
        same = all(type(args[i]) is _cupy_ndarray and args[i].data.ptr == a.data.ptr for i, a in zip(varying, given))
        # None: calls with this key are not planned, and not looked at again
        remember(plans, key, plan(kernel, blocks, threads, args, varying) if same else None, limit)


class Planned:
    """A launch of one compiled kernel with all but some arrays' addresses fixed: the grid, the block, the
    scalars, the other arrays and every array's shape and strides are those of the call it was planned
    from. ``planned(stream, *addresses)`` launches it on that stream with the arrays at the positions
    ``varying`` at those addresses; the arrays there must have the planned shapes, dtypes and layouts:
    the wrapper's key guarantees it. Returns False, launching nothing, where the driver refuses the
    launch (the caller then launches as usual)."""

    __slots__ = ("handle", "blocks", "threads", "shared", "params", "keep", "_launch", "_pack_into", "_local")

    def __init__(self, handle: int, blocks: int, threads: int, shared: int, params: dl.Params, keep: tuple) -> None:
        self.handle, self.blocks, self.threads, self.shared, self.params = handle, blocks, threads, shared, params
        self.keep = keep  # the fixed arrays, alive as long as their addresses are packed
        self._launch = dl.driver().launchKernel
        self._pack_into = params.head.pack_into
        self._local = params.local

    def __call__(self, stream: int, *addresses: int) -> bool:
        entry = getattr(self._local, "entry", None) or self.params.buffer()
        self._pack_into(entry[0], 0, *addresses)
        try:
            self._launch(self.handle, self.blocks, 1, 1, self.threads, 1, 1, self.shared, stream, entry[1], 0)
        except dl.driver().CUDADriverError:
            return False
        return True


def _planned_layout(argtypes: tuple, args: tuple, varying: tuple) -> tuple | None:
    """(codes, fixed values by position, fixed arrays to keep alive) of a :class:`Planned` launch: every
    value of Numba's ABI fixed at this call's, but the addresses of the arrays at positions ``varying``
    (ascending); None where an argument is of a type this does not lay out."""
    from numba.core import types
    codes, fixed, data_at = [], {}, {}
    for i, ty in enumerate(argtypes):
        a = args[i]
        if isinstance(ty, types.Array):
            if type(a) is not _cupy_ndarray:
                return None
            values = [0, 0, a.size, np.dtype(a.dtype).itemsize, a.data.ptr, *a.shape, *a.strides]
            codes_i = [dl.POINTER, dl.POINTER, "q", "q", dl.POINTER] + ["q"] * (2 * ty.ndim)
            data_at[i] = len(codes) + 4
        elif str(ty) in dl.CODES:
            values, codes_i = [a], [dl.CODES[str(ty)]]
        else:
            return None
        fixed.update((len(codes) + k, v) for k, v in enumerate(values))
        codes += codes_i
    if list(varying) != sorted(varying) or not all(i in data_at for i in varying):
        raise ValueError(f"varying positions {varying} must be ascending positions of arrays")
    for i in varying:
        del fixed[data_at[i]]
    keep = tuple(a for i, a in enumerate(args) if i in data_at and i not in varying)
    return codes, fixed, keep


def plan(kernel: Any, blocks: int, threads: int, args: tuple, varying: tuple, shared: int = 0) -> Planned | None:
    """The :class:`Planned` launch of ``kernel`` for a call with ``args`` that Numba has already compiled
    it for (by :func:`launch`), or None where it cannot be planned (Numba's internals included: a
    version that lays them out otherwise keeps Numba's own launch)."""
    try:
        argtypes = tuple(kernel.typeof_pyval(a) for a in args)
        compiled = kernel.overloads.get(argtypes)
        layout = _planned_layout(argtypes, args, varying) if compiled is not None else None
        if layout is None:
            return None
        codes, fixed, keep = layout
        handle = int(compiled._codelibrary.get_cufunc().handle)
    except ValueError:
        raise  # a wrapper's mistake (varying positions), not Numba's
    except Exception:
        return None
    return Planned(handle, int(blocks), int(threads), int(shared), dl.Params(codes, fixed), keep)


def remember(plans: dict, key: Any, planned: Planned | None, limit: int = 256) -> None:
    """plans[key] = planned (None too: not plannable, do not try again), dropping the oldest past limit."""
    dl.evict_oldest(plans, limit)
    plans[key] = planned


def launch_shape(n_threads: int, block: int, max_blocks: int) -> tuple[int, int]:
    """(blocks, threads per block) for a grid-stride loop over ``n_threads`` logical threads."""
    block = max(1, int(block))
    blocks = max(1, min(math.ceil(max(n_threads, 1) / block), int(max_blocks)))
    return blocks, block


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.cache
def _simulated() -> bool:
    return is_simulator()


def is_simulator() -> bool:
    """True under NUMBA_ENABLE_CUDASIM=1, where warp shuffles do not exist."""
    try:
        from numba.cuda.core import config  # the numba-cuda package
    except ImportError:  # numba's built-in numba.cuda
        from numba.core import config
    return bool(getattr(config, "ENABLE_CUDASIM", False))
