"""Launching a compiled CUDA kernel straight through the driver, its parameters packed into one buffer.

Both GPU backends use this for the launches on their hot paths. The frameworks' own launch paths build a
Python object per argument on every call (CuPy's ``RawKernel.__call__`` one per argument, Numba a device
array per array and a ctypes value per scalar), and that costs the host more than the driver's
``cuLaunchKernel`` itself. Here the layout of a kernel's parameters is worked out once (:class:`Params`);
a call packs its values into a buffer of the calling thread with one ``struct.pack_into`` and hands the
driver an array of pointers into that buffer (``kernelParams``): the driver copies each parameter with
the size the compiled kernel declares for it, so each value only needs its own size and alignment.

Parameters that are the same on every call of a plan (sizes, scratch buffers) are packed once into each
buffer; they must be the last ones, so that a call writes one contiguous head.

Nothing here imports CuPy before the first launch; the driver binding is CuPy's (``cupy_backends``).
"""
from __future__ import annotations

import ctypes
import struct
import threading
from typing import Any, Sequence

# struct codes of the scalar parameter types the kernels take (native sizes and alignment: '@').
CODES = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
         "int64": "q", "uint64": "Q", "float32": "f", "float64": "d", "bool": "?"}
POINTER = "P"


class Params:
    """The parameter layout of one kernel: ``codes`` (a struct code per parameter, in order), of which the
    last ``len(fixed)`` take the values ``fixed`` on every call (device arrays as their addresses: the
    caller keeps them alive). ``head`` packs the others: ``params.head.pack_into(buffer, 0, *values)``."""

    __slots__ = ("head", "fixed", "_size", "_offsets", "_local", "__weakref__")

    def __init__(self, codes: Sequence[str], fixed: Sequence[Any] = ()) -> None:
        codes = list(codes)
        n_head = len(codes) - len(fixed)
        if n_head < 0:
            raise ValueError(f"{len(fixed)} fixed values for {len(codes)} parameters")
        # a prefix of a native struct is laid out as in the whole, so the head's offsets are the whole's
        self.head = struct.Struct("@" + "".join(codes[:n_head]))
        fixed = tuple(v.data.ptr if c == POINTER and hasattr(v, "data") else v for v, c in zip(fixed, codes[n_head:]))
        self.fixed = (struct.Struct("@" + "".join(codes)), n_head, fixed)
        self._offsets = [struct.calcsize("@" + "".join(codes[:i + 1])) - struct.calcsize("@" + codes[i])
                         for i in range(len(codes))]
        self._size = max(struct.calcsize("@" + "".join(codes)), 1)
        self._local = threading.local()  # each host thread packs its calls into a buffer of its own

    def buffer(self) -> tuple:
        """(this thread's parameter buffer, address of its array of pointers to each parameter)."""
        entry = getattr(self._local, "entry", None)
        if entry is None:
            entry = self._local.entry = self._new_buffer()
        return entry

    def _new_buffer(self) -> tuple:
        buf = ctypes.create_string_buffer(self._size)
        whole, n_head, fixed = self.fixed
        if fixed:  # the fixed tail, written once: pack the whole layout with zeros in the head
            zeros = [0] * n_head
            whole.pack_into(buf, 0, *zeros, *fixed)
        base = ctypes.addressof(buf)
        pointers = (ctypes.c_void_p * max(len(self._offsets), 1))(*[base + o for o in self._offsets])
        # the buffer and the pointer array live as long as the entry (a thread's, for this layout)
        return buf, ctypes.addressof(pointers), pointers


def code_of(value: Any) -> str:
    """The struct code a launch passes ``value`` with: a device array's address, or a scalar of the
    numpy type it has (Python ints as int64 and floats as float64, as CuPy passes them)."""
    if hasattr(value, "data") and hasattr(value, "__cuda_array_interface__"):
        return POINTER
    if isinstance(value, bool):
        return CODES["bool"]
    if isinstance(value, int):
        return CODES["int64"]
    if isinstance(value, float):
        return CODES["float64"]
    name = getattr(getattr(value, "dtype", None), "name", None)
    if name in CODES:
        return CODES[name]
    raise TypeError(f"cannot pass {type(value).__name__} to a kernel launched directly")


_driver = None


def driver() -> Any:
    """CuPy's binding of the CUDA driver API (imported on first use)."""
    global _driver
    if _driver is None:
        from cupy_backends.cuda.api import driver as d
        _driver = d
    return _driver


def launch(handle: int, grid: tuple, block: tuple, shared: int, stream: int, params: int) -> None:
    """cuLaunchKernel(handle, grid, block, shared, stream, params); raises CuPy's CUDADriverError."""
    driver().launchKernel(handle, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared, stream,
                          params, 0)
