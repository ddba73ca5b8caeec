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
    params.head.pack_into(buf, 0, *(a.ctypes.data for a in later))
    want = []
    for a in (later[0], 12, first[1], False, later[1], 0.25):
        want += [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides] if isinstance(a, np.ndarray) else [a]
    assert _read(address, "".join(codes)) == want
    with pytest.raises(ValueError):
        dv._planned_layout(argtypes, args, (4, 0))  # the head is packed in parameter order
    with pytest.raises(ValueError):
        dv._planned_layout(argtypes, args, (1,))  # a scalar has no address to vary


class _Plain(_FakeDeviceArray):
    _c_contiguous = True


class _Strided(_FakeDeviceArray):
    _c_contiguous = False


class _Recorder:
    """A plan that records what it was launched with; ``ok``: what it returns (False: the driver refused)."""

    def __init__(self, ok=True):
        self.ok, self.calls = ok, []

    def __call__(self, stream, *addresses):
        self.calls.append((stream, addresses))
        return self.ok


def test_lean_call_keys_plain_arrays_by_dtype_shape_alignment_and_launches_a_kept_plan():
    """direct_launch.lean_call, the hot path of the planned launches: None for arrays that cannot take a
    plan (another class, not C-contiguous, missing); the key otherwise, which tells apart every dtype,
    shape, address alignment mod 16, device and ``extra``; True once a plan is kept under the key, which
    it launches with the stream and the arrays' addresses in order."""
    lean = dl.lean_call(2)
    device = [0]
    a, b = _Plain(np.zeros((4, 6), np.float32)), _Plain(np.zeros((4, 6), np.float32))
    plans: dict = {}

    def call(*arrays, extra="x"):
        return lean(plans, _Plain, lambda: device[0], 7, extra, *arrays)
    key = call(a, b)
    assert key == ("x", 0, (a.data.ptr | b.data.ptr) & 15, a.dtype, (4, 6), b.dtype, (4, 6))
    plan = plans[key] = _Recorder()
    assert call(a, b) is True and plan.calls == [(7, (a.data.ptr, b.data.ptr))]
    assert call(b, a) is True and plan.calls[-1] == (7, (b.data.ptr, a.data.ptr))
    others = {
        "dtype": call(a, _Plain(np.zeros((4, 6), np.float64))),
        "shape": call(a, _Plain(np.zeros((6, 4), np.float32))),
        "extra": call(a, b, extra="y"),
        "alignment": call(a, _Plain(np.zeros(25, np.float32)[1:].reshape(4, 6))),
    }
    device[0] = 1
    others["device"] = call(a, b)
    for why, other in others.items():
        assert other not in (None, True, key), why
    assert len(plan.calls) == 2  # none of those took the plan
    device[0] = 0
    assert call(a, _Strided(np.zeros((4, 6), np.float32))) is None
    assert call(a, _FakeDeviceArray(np.zeros((4, 6), np.float32))) is None  # not the class asked for
    assert call(a, None) is None
    plans[key] = _Recorder(ok=False)  # the driver refused: the caller launches as usual, with the key
    assert call(a, b) == key
    plans[key] = _Recorder(ok=None)  # only False means refused: a launch is never repeated
    assert call(a, b) is True


def test_numba_lean_applies_only_with_the_fast_path_on_a_cupy_array_seen_and_no_simulator(monkeypatch):
    """kernels/cuda/_device.py::lean: the planned launch of the numba-cuda wrappers, on cupy's current
    stream and device; off (None) where the fast path is off, no cupy array has come in, or the
    simulator runs."""
    pytest.importorskip("numba")
    from tapegrad.kernels.cuda import _device as dv

    class Stream:
        ptr = 5
    monkeypatch.setattr(dv, "_cupy_ndarray", _Plain)
    monkeypatch.setattr(dv, "_get_device", lambda: 3)
    monkeypatch.setattr(dv, "_current_stream", lambda: Stream)
    monkeypatch.setattr(dv, "FAST_LAUNCH", True)
    monkeypatch.setattr(dv, "_simulated", lambda: False)
    a = _Plain(np.zeros((2, 3), np.float32))
    plans: dict = {}
    key = dv.lean(plans, ("k", True), a)
    assert key == (("k", True), 3, a.data.ptr & 15, a.dtype, (2, 3))
    plan = plans[key] = _Recorder()
    assert dv.lean(plans, ("k", True), a) is True and plan.calls == [(5, (a.data.ptr,))]
    for setting, value in (("FAST_LAUNCH", False), ("_cupy_ndarray", None), ("_simulated", lambda: True)):
        with monkeypatch.context() as m:
            m.setattr(dv, setting, value)
            assert dv.lean(plans, ("k", True), a) is None, setting
    assert len(plan.calls) == 1


def test_numba_launch_and_plan_keeps_a_plan_only_for_calls_that_launched_the_given_arrays(monkeypatch):
    """kernels/cuda/_device.py::launch_and_plan keeps a planned launch under the key of the arrays a
    wrapper was given only when those are the arrays it launched (a converted or newly allocated array
    sits at another address, and the plan would be for its dtype, not the one the key names; another kind
    of device array is not planned), and never without a key."""
    pytest.importorskip("numba")
    from tapegrad.kernels.cuda import _device as dv
    launched, planned = [], []
    monkeypatch.setattr(dv, "_cupy_ndarray", _Plain)
    monkeypatch.setattr(dv, "launch", lambda kernel, blocks, threads, kind, *args: launched.append(args))
    monkeypatch.setattr(dv, "plan", lambda kernel, blocks, threads, args, varying: planned.append(varying) or "plan")
    a, b = _Plain(np.zeros(4, np.float32)), _Plain(np.zeros(4, np.float32))
    converted = _Plain(np.zeros(4, np.float64))
    plans: dict = {}
    dv.launch_and_plan(plans, "k1", "kernel", 1, 32, "cupy", (a, 3, b), (0, 2), (a, b))
    dv.launch_and_plan(plans, "k2", "kernel", 1, 32, "cupy", (a, 3, converted), (0, 2), (a, b))
    dv.launch_and_plan(plans, None, "kernel", 1, 32, "cupy", (a, 3, b), (0, 2), (a, b))
    dv.launch_and_plan(plans, "k3", "kernel", 1, 32, "cupy", (a, 3, _FakeDeviceArray(b.a)), (0, 2), (a, b))
    # k2 and k3 are kept as not plannable (None): their calls take the general path without a retry
    assert len(launched) == 4 and plans == {"k1": "plan", "k2": None, "k3": None} and planned == [(0, 2)]
    for key in ("k1", "k2"):
        dv.launch_and_plan(plans, key, "kernel", 1, 32, "cupy", (a, 3, b), (0, 2), (a, b))
    assert planned == [(0, 2)]  # a key seen before is not planned again


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
