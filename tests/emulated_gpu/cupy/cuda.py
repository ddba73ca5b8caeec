"""cupy.cuda: one emulated device, streams and events that do nothing, no graph capture."""
from __future__ import annotations

import contextlib
import itertools
import time
import types

_ptrs = itertools.count(0x1000)


class CUDARuntimeError(RuntimeError):
    pass


def _props(dev=0):
    return {"name": b"emulated cupy (numpy on the host)", "multiProcessorCount": 132, "major": 9, "minor": 0,
            "totalGlobalMem": 80 << 30, "sharedMemPerBlock": 48 << 10, "sharedMemPerBlockOptin": 227 << 10,
            "maxThreadsPerBlock": 1024, "warpSize": 32, "regsPerBlock": 65536, "maxThreadsPerMultiProcessor": 2048,
            "l2CacheSize": 50 << 20, "memoryClockRate": 2619000, "memoryBusWidth": 5120, "clockRate": 1980000,
            "cooperativeLaunch": 1, "pciBusID": 0}


runtime = types.ModuleType("cupy.cuda.runtime")
runtime.getDeviceCount = lambda: 1
runtime.getDevice = lambda: 0
runtime.setDevice = lambda d: None
runtime.getDeviceProperties = _props
runtime.deviceSynchronize = lambda: None
runtime.runtimeGetVersion = lambda: 12080
runtime.driverGetVersion = lambda: 12080
runtime.memGetInfo = lambda: (80 << 30, 80 << 30)
runtime.CUDARuntimeError = CUDARuntimeError
runtime.streamLegacy = 1
runtime.streamPerThread = 2
runtime.is_hip = False
runtime._is_hip_environment = False

driver = types.ModuleType("cupy.cuda.driver")


def _driver_missing(name):
    def f(*a, **k):
        raise NotImplementedError(f"emulated cupy: the CUDA driver ({name}) is not available without a GPU")
    return f


driver.__getattr__ = lambda name: _driver_missing(name)


class Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def use(self):
        pass

    def synchronize(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"

    compute_capability = "90"
    attributes = {"MultiProcessorCount": 132, "MaxSharedMemoryPerBlockOptin": 227 << 10}


class Event:
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None
        self.ptr = next(_ptrs)

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    @property
    def done(self):
        return True


def get_elapsed_time(start, end):
    return (end.t - start.t) * 1e3


class Stream:
    null = None
    _current: list = []

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else next(_ptrs)

    def __enter__(self):
        Stream._current.append(self)
        return self

    def __exit__(self, *exc):
        Stream._current.pop()

    def use(self):
        Stream._current[:] = [self]
        return self

    def synchronize(self):
        pass

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    def begin_capture(self, mode=None):
        raise NotImplementedError("emulated cupy: CUDA graph capture (Stream.begin_capture) needs a GPU")

    def end_capture(self):
        raise NotImplementedError("emulated cupy: CUDA graph capture (Stream.end_capture) needs a GPU")

    def is_capturing(self):
        return False

    @property
    def done(self):
        return True


Stream.null = Stream(null=True)
ExternalStream = Stream


def get_current_stream(device_id=None):
    return Stream._current[-1] if Stream._current else Stream.null


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


def set_allocator(allocator=None):
    pass


def is_available():
    return True


class MemoryPointer:  # only as a name (isinstance checks, annotations)
    pass


memory = types.ModuleType("cupy.cuda.memory")
memory.MemoryPointer = MemoryPointer
memory.using_allocator = using_allocator
