"""Where arrays live: numpy on the CPU, cupy on an NVIDIA GPU.

The engine writes its array math against the module returned by :func:`array_module`, so the same op
code runs on both devices; only the kernel table differs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds as _numpy_byte_bounds
except ImportError:  # numpy < 2
    _numpy_byte_bounds = np.byte_bounds

DEVICES = ("cpu", "cuda")


def is_cupy(a: Any) -> bool:
    return type(a).__module__.startswith("cupy")


def array_module(a: Any):
    """numpy or cupy, whichever owns ``a``."""
    if is_cupy(a):
        import cupy
        return cupy
    return np


def host_values(xp, *scalars: Any) -> list:
    """The values of 0-d arrays as Python numbers. On the GPU they come back in one transfer (one host
    sync for all of them: the checks of an op read their results together); numpy's need none."""
    if xp is np:
        return [s.item() for s in scalars]
    return xp.stack(scalars).tolist()


def byte_bounds(a: Any) -> tuple[int, int]:
    """(first byte, one past the last byte) that array ``a`` spans in its memory, for numpy or cupy
    arrays (numpy's version reads ``__array_interface__``, which cupy arrays do not have)."""
    if is_cupy(a):
        import cupy
        return cupy.byte_bounds(a)
    return _numpy_byte_bounds(a)


def device_of(a: Any) -> str:
    return "cuda" if is_cupy(a) else "cpu"


def check_device(device: str | None) -> str:
    """Normalise a device name; ``cuda:0`` and ``cuda`` both mean the current GPU."""
    if device is None:
        return "cpu"
    if type(device).__name__ == "device" and type(device).__module__ == "torch":
        device = str(device)  # torch.device('cuda:0'), as users pass it
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    name = device.split(":")[0]
    if name not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if name == "cuda":
        require_cuda()
    return name


_cuda_error: str | None = None
_cuda_checked = False


def require_cuda() -> None:
    """Raise a RuntimeError that says why device='cuda' cannot be used here, if it cannot."""
    global _cuda_checked, _cuda_error
    if not _cuda_checked:
        _cuda_checked = True
        try:
            import cupy
        except ImportError as e:
            _cuda_error = (f"device='cuda' is unavailable: cupy is not installed ({e}); "
                           "install it with pip install 'tapegrad[cuda12]' or 'tapegrad[cuda13]'")
        except Exception as e:  # a broken install: say so every time, not once
            _cuda_error = f"device='cuda' is unavailable: importing cupy failed ({type(e).__name__}: {e})"
        else:
            try:
                n = cupy.cuda.runtime.getDeviceCount()
            except Exception as e:  # driver missing, no device, ...
                _cuda_error = f"device='cuda' is unavailable: cupy cannot reach a CUDA device ({e})"
            else:
                if n == 0:
                    _cuda_error = "device='cuda' is unavailable: no CUDA device was found"
    if _cuda_error is not None:
        raise RuntimeError(_cuda_error)


def cuda_available() -> bool:
    try:
        require_cuda()
    except RuntimeError:
        return False
    return True


def to_device(a: Any, device: str) -> Any:
    """Move an array to ``device`` ('cpu' or 'cuda'); no copy when it is already there."""
    device = check_device(device)
    if device == "cpu":
        return a.get() if is_cupy(a) else a
    import cupy
    return a if is_cupy(a) else cupy.asarray(a)
