"""The parameter packing behind the GPU backends' direct launches, checked on the CPU.

A direct launch hands the driver an array of pointers, one per kernel parameter, into a buffer packed
by :class:`tapegrad.kernels.direct_launch.Params`. These tests read the parameters back through those
pointers, as the driver would, and compare them with the values each kernel ABI expects: a pointer per
array for the CuPy kernels, and Numba's flattened array (meminfo, parent, nitems, itemsize, data,
shape, strides) for the Numba CUDA kernels. No GPU is needed: host memory stands in for device memory.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

from tapegrad.kernels import direct_launch as dl

_CTYPES = {"P": ctypes.c_void_p, "q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float,
           "d": ctypes.c_double, "?": ctypes.c_bool, "I": ctypes.c_uint32, "b": ctypes.c_int8}


def _read(params_address: int, codes: str) -> list:
    """The parameters as the driver reads them: through the pointer array, each with its declared type."""
    pointers = (ctypes.c_void_p * len(codes)).from_address(params_address)
    out = []
    for p, c in zip(pointers, codes):
        v = _CTYPES[c].from_address(p).value
        out.append(0 if v is None else v)  # a null pointer reads back as None
    return out


class _FakeDeviceArray:
    """A host array dressed as a cupy array: what the packers read (shape, strides, size, data.ptr)."""

    class _Data:
        def __init__(self, ptr):
            self.ptr = ptr

    def __init__(self, a: np.ndarray):
        self.a = a
        self.shape, self.strides, self.size, self.ndim, self.dtype = a.shape, a.strides, a.size, a.ndim, a.dtype
        self.data = self._Data(a.ctypes.data)
        self.__cuda_array_interface__ = {}


def test_params_pack_head_per_call_and_fixed_tail_once():
    codes = "PPqiPdf"
    tail = (_FakeDeviceArray(np.zeros(3)), 2.5, np.float32(0.75))
    params = dl.Params(list(codes), {4: tail[0], 5: tail[1], 6: tail[2]})
    buf, address, _ = params.buffer()
    params.head.pack_into(buf, 0, 0x1000, 0x2008, -(2 ** 40), -7)
    assert _read(address, codes) == [0x1000, 0x2008, -(2 ** 40), -7, tail[0].data.ptr, 2.5, 0.75]
    params.head.pack_into(buf, 0, 16, 32, 5, 6)  # a later call rewrites the head only
    assert _read(address, codes) == [16, 32, 5, 6, tail[0].data.ptr, 2.5, 0.75]
    assert params.buffer()[1] == address  # the same buffer call after call in one thread


def test_params_give_each_thread_its_own_buffer():
    params = dl.Params(["q"])
    mine = params.buffer()[1]
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(params.buffer()[1]))
    t.start()
    t.join()
    assert theirs and theirs[0] != mine


def test_params_fixed_values_anywhere_among_the_parameters():
    """Fixed values before, between and after the ones a call packs, of mixed sizes."""
    codes = "iPqfd?P"
    fixed = {0: -3, 3: np.float32(0.5), 5: True}
    params = dl.Params(list(codes), fixed)
    buf, address, _ = params.buffer()
    params.head.pack_into(buf, 0, 0xABC0, 2 ** 40 + 1, -1.25, 0xDEF8)
    assert _read(address, codes) == [-3, 0xABC0, 2 ** 40 + 1, 0.5, -1.25, True, 0xDEF8]


def test_params_refuse_fixed_positions_outside_the_parameters():
    with pytest.raises(ValueError):
        dl.Params(["q"], {1: 2})


@pytest.mark.parametrize("value,code", [(np.int32(3), "i"), (np.int64(3), "q"), (3, "q"), (2.0, "d"),
                                        (np.float32(1), "f"), (True, "?"), (np.uint32(1), "I")])
def test_code_of_scalars_follows_their_type(value, code):
    assert dl.code_of(value) == code


def test_code_of_device_array_is_a_pointer_and_unknown_types_are_refused():
    assert dl.code_of(_FakeDeviceArray(np.zeros(2))) == dl.POINTER
    with pytest.raises(TypeError):
        dl.code_of("a string")


def test_numba_abi_layout_matches_numba_flattening(monkeypatch):
    """The Numba CUDA backend's packer (kernels/cuda/_device.py) for C-contiguous arrays of rank 1..3,
    a strided array ('A' layout) and scalars of four types, read back through the pointer array."""
    pytest.importorskip("numba")
    from numba.core import types

    from tapegrad.kernels.cuda import _device as dv
    monkeypatch.setattr(dv, "_cupy_ndarray", _FakeDeviceArray)
    base = np.arange(60, dtype=np.float32)
    arrays = [np.arange(5, dtype=np.int64), base.reshape(6, 10), np.zeros((2, 3, 4)), base.reshape(6, 10)[:, ::3]]
    args = tuple(_FakeDeviceArray(a) for a in arrays) + (7, np.float32(1.5), True, np.float64(-2.0))
    argtypes = (types.Array(types.int64, 1, "C"), types.Array(types.float32, 2, "C"),
                types.Array(types.float64, 3, "C"), types.Array(types.float32, 2, "A"),
                types.int64, types.float32, types.boolean, types.float64)
    codes, source = dv._layout(argtypes, args)
    plan = dv._Plan(0, codes, source)
    buf, address, _ = plan.params.buffer()
    plan.pack(plan.params.head.pack_into, buf, args)
    want = []
    for a in arrays:
        want += [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides]
    want += [7, 1.5, True, -2.0]
    assert _read(address, "".join(codes)) == want


def test_numba_abi_layout_declines_arrays_it_cannot_lay_out(monkeypatch):
    pytest.importorskip("numba")
    from numba.core import types

    from tapegrad.kernels.cuda import _device as dv
    monkeypatch.setattr(dv, "_cupy_ndarray", _FakeDeviceArray)
    host = np.zeros(3)  # not the cupy type: the Numba launch handles it
    assert dv._layout((types.Array(types.float64, 1, "C"),), (host,)) is None
    assert dv._layout((types.UniTuple(types.int64, 2),), ((1, 2),)) is None


def test_numba_planned_layout_packs_only_the_varying_addresses(monkeypatch):
    """A planned launch (kernels/cuda/_device.py::Planned) fixes every value of Numba's ABI at the planning
    call's, except the addresses of the arrays it was told vary: a later call with other arrays of the
    same shapes reads back as the ABI of that call."""
    pytest.importorskip("numba")
    from numba.core import types

    from tapegrad.kernels import direct_launch as dl
    from tapegrad.kernels.cuda import _device as dv
    monkeypatch.setattr(dv, "_cupy_ndarray", _FakeDeviceArray)
    first = [np.zeros((4, 6), np.float32), np.arange(9, dtype=np.int32), np.ones((2, 3, 5))]
    argtypes = (types.Array(types.float32, 2, "C"), types.int64, types.Array(types.int32, 1, "C"),
                types.boolean, types.Array(types.float64, 3, "C"), types.float32)
    args = (_FakeDeviceArray(first[0]), 12, _FakeDeviceArray(first[1]), False, _FakeDeviceArray(first[2]),
            np.float32(0.25))
    codes, fixed, keep = dv._planned_layout(argtypes, args, (0, 4))
    assert keep == (args[2],)  # the one fixed array, kept alive with the plan
    params = dl.Params(codes, fixed)
    later = [np.empty((4, 6), np.float32), np.empty((2, 3, 5))]
    buf, address, _ = params.buffer()
    dl.packer("PP")(params.head.pack_into, buf, *(_FakeDeviceArray(a) for a in later))
    want = []
    for a in (later[0], 12, first[1], False, later[1], 0.25):
        want += [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides] if isinstance(a, np.ndarray) else [a]
    assert _read(address, "".join(codes)) == want
    with pytest.raises(ValueError):
        dv._planned_layout(argtypes, args, (4, 0))  # the head is packed in parameter order
    with pytest.raises(ValueError):
        dv._planned_layout(argtypes, args, (1,))  # a scalar has no address to vary


def test_numba_planned_launch_gate_takes_only_plain_arrays_of_the_planned_shapes(monkeypatch):
    """What decides that a numba-cuda cell call may reuse a planned launch (kernels/cuda/recurrent.py::
    _lean_key): every array given, of the cupy type, C-contiguous, of one dtype and of the expected shape.
    Any other call gets no key and takes the general path; the key holds dtype, sizes, activation and
    device, so calls that differ in any of them never share a plan."""
    pytest.importorskip("numba")
    from tapegrad.kernels.cuda import _device as dv
    from tapegrad.kernels.cuda import recurrent as nrec

    class Plain(_FakeDeviceArray):
        _c_contiguous = True

    class Strided(_FakeDeviceArray):
        _c_contiguous = False
    monkeypatch.setattr(dv, "_cupy_ndarray", Plain)
    monkeypatch.setattr(dv, "_get_device", lambda: 3)
    monkeypatch.setattr(dv, "FAST_LAUNCH", True)
    monkeypatch.setattr(dv, "_simulated", lambda: False)
    B, H = 4, 5
    shapes = ((B, H), (B, H))

    def arrays(dtype=np.float32, shape=(B, H), kind=Plain):
        return kind(np.zeros(shape, dtype)), Plain(np.zeros((B, H), np.float32))
    key = nrec._lean_key(nrec._rnn_fwd, arrays(), shapes, True)
    assert key == (nrec._rnn_fwd, np.dtype(np.float32), (B, H), True, nrec.BLOCK, nrec.MAX_BLOCKS, 3)
    block = nrec.BLOCK
    monkeypatch.setattr(nrec, "BLOCK", 32)  # tests patch the launch constants small: a plan of their own
    assert nrec._lean_key(nrec._rnn_fwd, arrays(), shapes, True) != key
    monkeypatch.setattr(nrec, "BLOCK", block)
    assert nrec._lean_key(nrec._rnn_fwd, arrays(), shapes, False) != key
    assert nrec._lean_key(nrec._rnn_fwd, arrays(np.float64), shapes, True) is None  # mixed dtypes
    assert nrec._lean_key(nrec._rnn_fwd, arrays(shape=(B, H + 1)), shapes, True) is None
    assert nrec._lean_key(nrec._rnn_fwd, arrays(kind=Strided), shapes, True) is None
    assert nrec._lean_key(nrec._rnn_fwd, (arrays()[0], None), shapes, True) is None
    assert nrec._lean_key(nrec._rnn_fwd, (np.zeros((B, H), np.float32),) * 2, shapes, True) is None  # host
    monkeypatch.setattr(dv, "FAST_LAUNCH", False)
    assert nrec._lean_key(nrec._rnn_fwd, arrays(), shapes, True) is None


def test_evict_oldest_keeps_a_plan_cache_under_its_limit_in_insertion_order():
    plans = {k: k for k in range(10)}
    dl.evict_oldest(plans, 4)
    assert list(plans) == [7, 8, 9]  # room for one more under the limit
    dl.evict_oldest(plans, 4)
    assert list(plans) == [7, 8, 9]


def test_evict_oldest_from_many_threads_at_once_never_raises():
    plans: dict = {}
    errors = []

    def churn(base):
        try:
            for k in range(2000):
                dl.evict_oldest(plans, 8)
                plans[(base, k)] = k
        except Exception as e:  # noqa: BLE001 - any error is the failure
            errors.append(e)
    threads = [threading.Thread(target=churn, args=(b,)) for b in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(plans) <= 8 + len(threads)
