"""Launching a compiled CUDA kernel straight through the driver, its parameters packed into one buffer.

Both GPU backends use this for the launches on their hot paths. The frameworks' own launch paths build a
Python object per argument on every call (CuPy's ``RawKernel.__call__`` one per argument, Numba a device
array per array and a ctypes value per scalar), and that costs the host more than the driver's
``cuLaunchKernel`` itself. Here the layout of a kernel's parameters is worked out once (:class:`Params`);
a call packs its values into a buffer of the calling thread with one ``struct.pack_into`` and hands the
driver an array of pointers into that buffer (``kernelParams``): the driver copies each parameter with
the size the compiled kernel declares for it, so each value only needs its own size and alignment.

Parameters that are the same on every call of a plan (sizes, strides, scratch buffers) are packed once
into each buffer, apart from the ones a call writes, so that a call writes one contiguous head.

Nothing here imports CuPy before the first launch; the driver binding is CuPy's (``cupy_backends``).
"""
from __future__ import annotations

import ctypes
import functools
import struct
import threading
from typing import Any, Mapping, Sequence

# struct codes of the scalar parameter types the kernels take (native sizes and alignment: '@').
CODES = {"int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
         "int64": "q", "uint64": "Q", "float32": "f", "float64": "d", "bool": "?"}
POINTER = "P"


def _offsets(codes: Sequence[str]) -> list[int]:
    """Offsets of each value in a native struct of ``codes``."""
    return [struct.calcsize("@" + "".join(codes[:i + 1])) - struct.calcsize("@" + codes[i])
            for i in range(len(codes))]


class Params:
    """The parameter layout of one kernel: ``codes`` (a struct code per parameter, in order), of which the
    ones at the positions in ``fixed`` take the values there on every call (device arrays as their
    addresses: the caller keeps them alive). The others, the head, are what a call packs:
    ``params.head.pack_into(buffer, 0, *values)``, in parameter order.

    The buffer holds the head first and the fixed values after it, whatever their positions among the
    parameters: the driver finds each parameter through its own pointer, so one ``pack_into`` writes all
    that changes from call to call."""

    __slots__ = ("head", "_fixed", "_size", "_offsets", "local", "__weakref__")

    def __init__(self, codes: Sequence[str], fixed: Mapping[int, Any] | None = None) -> None:
        codes, fixed = list(codes), dict(fixed or {})
        if not all(0 <= i < len(codes) for i in fixed):
            raise ValueError(f"fixed positions {sorted(fixed)} outside the {len(codes)} parameters")
        head = [i for i in range(len(codes)) if i not in fixed]
        tail = sorted(fixed)
        self.head = struct.Struct("@" + "".join(codes[i] for i in head))
        start = -(-self.head.size // 16) * 16  # the fixed values from an aligned offset, in a struct of their own
        tail_struct = struct.Struct("@" + "".join(codes[i] for i in tail))
        values = tuple(fixed[i].data.ptr if codes[i] == POINTER and hasattr(fixed[i], "data") else fixed[i]
                       for i in tail)
        self._fixed = (tail_struct, start, values)
        offsets = dict(zip(head, _offsets([codes[i] for i in head])))
        offsets.update(zip(tail, (start + o for o in _offsets([codes[i] for i in tail]))))
        self._offsets = [offsets[i] for i in range(len(codes))]
        self._size = max(start + tail_struct.size, 1)
        self.local = threading.local()  # each host thread packs its calls into a buffer of its own: .entry

    def buffer(self) -> tuple:
        """(this thread's parameter buffer, address of its array of pointers to each parameter, the array)."""
        entry = getattr(self.local, "entry", None)
        if entry is None:
            entry = self.local.entry = self._new_buffer()
        return entry

    def _new_buffer(self) -> tuple:
        buf = ctypes.create_string_buffer(self._size)
        tail_struct, start, values = self._fixed
        if values:
            tail_struct.pack_into(buf, start, *values)
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


@functools.cache
def lean_call(n_arrays: int):
    """The hot path of a kernel wrapper that launches through a plan cache, for calls of ``n_arrays``
    arrays: ``lean(plans, ndarray, device, stream, extra, a0, a1, ...)`` returns

    - None when the arrays cannot take a plan: not every one a C-contiguous array of class ``ndarray``
      (a missing optional array, None, is not one);
    - True when ``plans`` holds a plan for them and it launched: ``plan(stream, address0, address1, ...)``,
      which returns False only where the driver refused the launch (anything else counts as launched, so
      that a call is never launched twice);
    - else the key a plan for them is kept under: ``extra`` (whatever else decides the launch: kernel,
      launch constants, flags), ``device()``, the alignment of their addresses mod 16, and each array's
      dtype and shape. The caller checks such a call in full, launches it and keeps the plan it made
      under this key, so that a hit needs no other check: the key holds everything the plan was made for.

    Straight-line code, made once per number of arrays: at the rate a recurrent loop launches, a loop
    over the arrays and a function call per check cost the host more than the checks themselves."""
    a = [f"a{i}" for i in range(n_arrays)]
    p = [f"p{i}" for i in range(n_arrays)]
    source = "\n".join([
        f"def lean(plans, nd, device, stream, extra, {', '.join(a)}):",
        f"    if not ({' and '.join(f'type({x}) is nd and {x}._c_contiguous' for x in a)}):",
        "        return None",
        *(f"    {q} = {x}.data.ptr" for x, q in zip(a, p)),
        f"    key = (extra, device(), ({' | '.join(p)}) & 15, {', '.join(f'{x}.dtype, {x}.shape' for x in a)})",
        "    plan = plans.get(key)",
        f"    if plan is not None and plan(stream, {', '.join(p)}) is not False:",
        "        return True",
        "    return key",
        ""])
    namespace: dict = {}
    exec(source, namespace)
    return namespace["lean"]


def evict_oldest(plans: dict, limit: int) -> None:
    """Drop a plan cache's oldest entries until there is room for one more under ``limit``; safe when two
    threads evict at once (each drops what is still there)."""
    while len(plans) >= limit:
        try:
            plans.pop(next(iter(plans)), None)
        except (RuntimeError, StopIteration):  # another thread changed the cache meanwhile: look again
            continue


_driver = None


def driver() -> Any:
    """CuPy's binding of the CUDA driver API (imported on first use)."""
    global _driver
    if _driver is None:
        from cupy_backends.cuda.api import driver as d
        _driver = d
    return _driver

