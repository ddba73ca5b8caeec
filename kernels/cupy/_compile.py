"""Lazily built, memoised CUDA C kernels for the CuPy backend (the habit of ``cupyx/scipy/sparse``).

A kernel source is a :class:`string.Template` over the element type ``$T``, index types ``$I`` / ``$P``
and vector width ``$VEC``; :func:`kernel` fills it in, compiles it with NVRTC on first use and caches
the result per (source, device). Kernel names carry a ``tapegrad_`` prefix and a type suffix
(``tapegrad_spmm_f32_i32_p64_v4``) so they never collide with other libraries' kernels in a profile.
Nothing is compiled at import time.
"""
from __future__ import annotations

import functools
import os
import threading
from string import Template

import cupy
import numpy as np

from .. import direct_launch as dl

# -std=c++17 is CuPy 14's default; spelt out so older CuPy compiles the same source.
OPTIONS = ("-std=c++17",)

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
          np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64",
           np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}

# Shared by every module: an aligned vector of N scalars (one 8- or 16-byte load when N > 1), its
# loads and stores, and the row that holds a stored entry.
COMMON = r"""
template <typename S, int N> struct alignas(sizeof(S) * N) tg_vec { S v[N]; };

template <typename S, int N>
__device__ __forceinline__ void tg_load(const S* __restrict__ p, S (&a)[N]) {
    const tg_vec<S, N> t = *reinterpret_cast<const tg_vec<S, N>*>(p);
#pragma unroll
    for (int q = 0; q < N; ++q) a[q] = t.v[q];
}

template <typename S, int N>
__device__ __forceinline__ void tg_store(S* __restrict__ p, const S (&a)[N]) {
    tg_vec<S, N> t;
#pragma unroll
    for (int q = 0; q < N; ++q) t.v[q] = a[q];
    *reinterpret_cast<tg_vec<S, N>*>(p) = t;
}

// The row r with indptr[r] <= k < indptr[r + 1]; needs 0 <= k < indptr[n_rows].
template <typename Q>
__device__ __forceinline__ long long tg_row_of(const Q* __restrict__ indptr, long long n_rows, long long k) {
    long long lo = 1, hi = n_rows;
    while (lo < hi) {
        const long long mid = (lo + hi) >> 1;
        if ((long long)indptr[mid] > k) hi = mid; else lo = mid + 1;
    }
    return lo - 1;
}
"""


def ctype(dtype) -> str:
    try:
        return _CTYPE[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"no CUDA kernel for dtype {np.dtype(dtype)}; use float32/float64 values and "
                        "int32/int64 indices") from None


def suffix(dtype) -> str:
    ctype(dtype)
    return _SUFFIX[np.dtype(dtype)]


def render(template: str, **subs) -> str:
    return COMMON + Template(template).substitute(**subs)


@functools.cache
def _module(source: str, device_id: int) -> cupy.RawModule:
    return cupy.RawModule(code=source, options=OPTIONS)


_FUNCTIONS: dict = {}


def kernel(source: str, name: str):
    """The compiled kernel ``name`` of ``source`` on the current device (compiled once per device).

    The function handles are memoised too: a launch is on the host's critical path, and looking the
    kernel up in its module again costs a driver call each time."""
    key = (source, name, cupy.cuda.runtime.getDevice())
    fn = _FUNCTIONS.get(key)
    if fn is None:
        fn = _FUNCTIONS[key] = _module(source, key[2]).get_function(name)
    return fn


ndarray = cupy.ndarray
get_device = cupy.cuda.runtime.getDevice
current_stream = cupy.cuda.get_current_stream


# The checks below read ``_c_contiguous``, a plain attribute of a cupy array (CuPy 13 and later):
# ``flags`` builds an object per call, and these checks run on every launch.
def contiguous(a):
    """``a`` as a C-contiguous cupy array: itself when it already is one (the common, fast case)."""
    if type(a) is ndarray and a._c_contiguous:
        return a
    return cupy.ascontiguousarray(cupy.asarray(a))


def plain(arrays, dtype) -> bool:
    """Whether every array is a C-contiguous cupy ndarray of ``dtype``: the case the engine's calls are in,
    which a kernel wrapper can launch without converting or copying anything."""
    for a in arrays:
        if type(a) is not ndarray or not a._c_contiguous or a.dtype != dtype:
            return False
    return True


# Launch the kernels of a Launch plan through the driver directly (see direct_launch); 0 turns it off, and
# every launch goes through CuPy's RawKernel call instead.
DIRECT_LAUNCH = os.environ.get("TAPEGRAD_CUPY_DIRECT_LAUNCH", "1") != "0"


class Launch:
    """A compiled kernel with its launch worked out: grid, block, dynamic shared memory and the trailing
    arguments ``tail``, the same on every call. A call passes the current stream's handle (CuPy's own
    call, the fallback, launches on the current stream) and the values of the leading
    arguments, of the types of ``head`` (the example this launch was planned from: cupy arrays and numpy
    scalars); an array is passed as its address (``a.data.ptr``), which the caller has usually read
    already to check its alignment.

    The launch goes through the driver directly, the parameters packed in one call
    (:mod:`tapegrad.kernels.direct_launch`), or through CuPy's own ``RawKernel`` call when
    ``DIRECT_LAUNCH`` is off or the driver refuses the direct one (a thread with no current context, for
    instance: CuPy's call sets one up, or raises the error CuPy would raise). CuPy passes an address given
    as a Python int as the same 8 bytes.
    """

    __slots__ = ("fn", "grid", "block", "shared", "tail", "params", "_pack_into", "_launch", "_args", "_local")

    def __init__(self, fn, grid: tuple, block: tuple, head: tuple, tail: tuple = (), shared: int = 0):
        self.fn, self.shared, self.tail = fn, int(shared), tuple(tail)
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.block = tuple(block) + (1,) * (3 - len(block))
        codes = [dl.code_of(v) for v in head]
        self.params = dl.Params(codes + [dl.code_of(v) for v in self.tail],
                                {len(codes) + i: v for i, v in enumerate(self.tail)})
        self._pack_into = self.params.head.pack_into
        self._local = self.params.local  # this thread's buffer, read without a call on the hot path
        self._launch = dl.driver().launchKernel
        g, b = self.grid, self.block
        self._args = (getattr(fn, "kernel", fn).ptr, g[0], g[1], g[2], b[0], b[1], b[2], self.shared)

    def __call__(self, stream: int, *values) -> bool:
        """Launch on the stream of handle ``stream`` (the current one); True, as it always launches."""
        if DIRECT_LAUNCH:
            entry = getattr(self._local, "entry", None) or self.params.buffer()
            self._pack_into(entry[0], 0, *values)
            try:
                self._launch(*self._args, stream, entry[1], 0)
                return True
            except dl.driver().CUDADriverError:
                pass  # CuPy's own launch below: it either succeeds or raises the error as CuPy reports it
        self.fn(self.grid, self.block, values + self.tail, shared_mem=self.shared)
        return True


# Launch plans of the elementwise kernels: under lean's keys for the cell kernels, under launch_elementwise's
# for Adam (one per parameter size and alignment); at most _MAX_PLANS, a bound far above a model's needs
# (a plan is a few hundred bytes), the oldest dropped first.
_PLANS: dict = {}
_MAX_PLANS = 4096


def lean(extra, *arrays):
    """A cell kernel's launch through its plan (:func:`direct_launch.lean_call` over ``_PLANS``, on the
    current stream and device): True when launched; else the key a plan for these arrays is kept under
    (:func:`plan_elementwise` makes it), or None when they are not all C-contiguous cupy arrays."""
    return dl.lean_call(len(arrays))(_PLANS, ndarray, get_device, current_stream().ptr, extra, *arrays)


def _elementwise(source_of, name: str, dtype, F: int, n: int, block: int, max_blocks: int, example, tail,
                 ptrs: int) -> Launch:
    """The Launch of a grid-stride kernel over n elements of rows of width F, vectorised as widely as F
    and ``ptrs`` (the arrays' addresses or-ed together) allow; ``example``: its leading arguments."""
    vec = _vec_of(dtype, F, ptrs)
    source, sfx = source_of(np.dtype(dtype), vec)
    blocks, threads = launch_shape(-(-n // vec), block, max_blocks)
    return Launch(kernel(source, f"tapegrad_{name}_{sfx}"), (blocks,), (threads,), tuple(example), tail)


def plan_elementwise(key, source_of, name: str, dtype, F: int, n: int, block: int, max_blocks: int, arrays,
                     tail=()) -> None:
    """Launch a call that :func:`lean` keyed (``key``, not None) and that the caller has checked in full,
    and keep its plan for the next calls with that key. Arguments as :func:`launch_elementwise`'s."""
    if n <= 0:
        return
    addresses, ptrs = _addresses(arrays)
    plan = _elementwise(source_of, name, dtype, F, n, block, max_blocks, arrays, tail, ptrs)
    dl.evict_oldest(_PLANS, _MAX_PLANS)
    _PLANS[key] = plan
    plan(current_stream().ptr, *addresses)


def launch_elementwise(source_of, name: str, dtype, F: int, n: int, block: int, max_blocks: int, arrays,
                       scalars=(), tail=()):
    """Launch the grid-stride kernel ``name`` over ``n`` elements of rows of width F, vectorised as widely
    as F and the arrays' alignment allow (:func:`vec_width`); ``source_of(dtype, vec)`` gives (source,
    suffix). The kernel's arguments are ``arrays + scalars + tail``: ``tail`` holds values that a plan
    fixes (hashable: they are part of its key), ``scalars`` values that change from call to call.
    Everything but the arrays' addresses and the scalars is looked up once per (name, dtype, F, n, tail,
    alignment, device). Nothing is launched for n = 0."""
    if n <= 0:
        return
    addresses, ptrs = _addresses(arrays)
    key = (name, dtype, F, n, ptrs & 15, block, max_blocks, get_device(), tail)
    plan = _PLANS.get(key)
    if plan is None:
        dl.evict_oldest(_PLANS, _MAX_PLANS)
        plan = _PLANS[key] = _elementwise(source_of, name, dtype, F, n, block, max_blocks,
                                          tuple(arrays) + tuple(scalars), tail, ptrs)
    plan(current_stream().ptr, *addresses, *scalars)


_PER_THREAD_STREAM = 2  # cudaStreamPerThread's handle


def stream_key(ptr: int | None = None):
    """The current stream (of handle ``ptr`` when the caller has read it already), as a key for
    per-stream state (scratch buffers reused call after call): its handle, and the host thread too for
    the per-thread default stream, whose handle is 2 in every thread but which is a different stream in
    each."""
    if ptr is None:
        ptr = current_stream().ptr
    return (ptr, threading.get_ident()) if ptr == _PER_THREAD_STREAM else ptr


def _addresses(arrays) -> tuple[list, int]:
    """(the arrays' addresses, those addresses or-ed together: aligned to k bytes when every one is)."""
    addresses = []
    ptrs = 0
    for a in arrays:  # one pass, no comprehension: a call costs more than these few reads
        p = a.data.ptr
        addresses.append(p)
        ptrs |= p
    return addresses, ptrs


def _vec_of(dtype, F: int, ptrs: int) -> int:
    """Widest vector (16 bytes: float4 / double2, else 8 bytes, else 1) that divides F and to which
    ``ptrs`` (addresses or-ed together) is aligned."""
    itemsize = np.dtype(dtype).itemsize
    for width in (16 // itemsize, 8 // itemsize):
        if width > 1 and F % width == 0 and ptrs % (itemsize * width) == 0:
            return width
    return 1


def vec_width(dtype, F: int, *arrays) -> int:
    """Widest vector (16 bytes: float4 / double2, else 8 bytes, else 1) that divides F and to which
    every array's base pointer is aligned."""
    return _vec_of(dtype, F, _addresses(arrays)[1])


def launch_shape(n_threads: int, block: int, max_blocks: int) -> tuple[int, int]:
    block = max(1, int(block))
    blocks = max(1, min(-(-max(int(n_threads), 1) // block), int(max_blocks)))
    return blocks, block


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def finish(buf, out):
    """Hand a kernel's result back: ``buf`` itself, or copied into the caller's ``out`` when the kernel had
    to write a scratch buffer (``out`` not a C-contiguous cupy array, or a host array)."""
    if out is None or out is buf:
        return buf
    if isinstance(out, cupy.ndarray):
        out[...] = buf
    else:
        out[...] = cupy.asnumpy(buf)
    return out
