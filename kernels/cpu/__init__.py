"""Numba CPU kernels. Imported on first use of a CPU kernel, never by ``import tapegrad``.

Two process-wide defaults are set here, each only where the user has not chosen otherwise:

- Numba's OpenMP worker threads spin while they wait for work by default. On a machine with few cores,
  where OpenBLAS's threads (and other processes) need the same cores between our kernels, the spinning
  threads steal them: a Cora-sized SpMM took 5 ms instead of 50 us. A passive wait policy costs a few
  microseconds per parallel region instead, so it is the default here unless the user chose a policy.
  It must be set before Numba starts its thread pool, i.e. before the first parallel kernel runs.
- glibc's malloc hands freed memory back to the OS once more than ``trim_threshold`` is free at the
  top of the heap, and by default that threshold follows the largest block freed so far (twice it).
  A recurrent training step allocates several arrays of a few MB (states, gates, gradients) and frees
  them all at the end, so every step got fresh pages from the kernel: ~4000 page faults, a quarter
  of an LSTM step (T=50, B=64, H=256: 46 ms instead of 34 ms on a 2-core VM). Fixed thresholds keep
  up to 128 MB of freed heap for reuse and serve blocks up to 32 MB from the heap (larger ones are
  mmapped, and NumPy asks for huge pages for them). See :func:`_keep_freed_heap`.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 128 << 20


def _running_glibc() -> bool:
    """True when this process runs on glibc (asked of the C library itself, unlike platform.libc_ver)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or a C library that lacks the name
        return False


def _keep_freed_heap() -> bool:
    """Fix glibc's malloc trim / mmap thresholds (see the module docstring). True when set.

    Left alone where the C library is not glibc, or where the user tuned malloc through the
    environment (``MALLOC_*_`` variables or ``GLIBC_TUNABLES``).
    """
    import ctypes

    if not _running_glibc():
        return False
    if os.environ.get("GLIBC_TUNABLES") or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Order matters little; both calls also turn off glibc's dynamic adjustment of the two thresholds.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


_keep_freed_heap()
