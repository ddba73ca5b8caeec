"""Numba CPU kernels. Imported on first use of a CPU kernel, never by ``import tapegrad``.

Two process-wide defaults are set here, each only where the user has not chosen otherwise:

- Numba's OpenMP worker threads keep spinning after a parallel kernel, waiting for the next one: GNU
  OpenMP (libgomp) spins 300,000 rounds by default (about 3.5 ms here), Intel's runtime 200 ms. On a
  machine with few cores the spinning threads steal the cores that OpenBLAS's threads (and other
  processes) need between our kernels: a Cora-sized SpMM took 5 ms instead of 50 us. Not spinning at
  all (a passive policy) costs a wake-up per parallel call instead, slow on a virtual machine: a PubMed
  SpMM back to back took 0.37 ms instead of 0.30, and a torch RNN run in the same process after
  tapegrad's kernels took 11 ms instead of 3.9 (torch's OpenMP pool inherits the setting). So the spin
  is bounded: ``GOMP_SPINCOUNT=10000`` (about 0.15 ms) for libgomp. Intel's runtime, which some Numba
  builds use, gets ``KMP_BLOCKTIME=0`` (no spin, as before; not measured here). Neither is set where
  the user chose a wait policy or either variable. They must be set before the OpenMP runtime starts its thread pool, i.e.
  before the first parallel kernel runs; where torch was imported first, its runtime (which Numba
  then shares) has already read them.
- glibc's malloc hands freed memory back to the OS once more than ``trim_threshold`` is free at the
  top of the heap, and by default that threshold follows the largest block freed so far (twice it).
  A recurrent training step allocates several arrays of a few MB (states, gates, gradients) and frees
  them all at the end, so every step got fresh pages from the kernel: ~4000 page faults, a quarter
  of an LSTM step (T=50, B=64, H=256: 46 ms instead of 34 ms on a 2-core VM). Fixed thresholds keep
  up to 128 MB of freed heap for reuse and serve blocks up to 32 MB from the heap (larger ones are
  mmapped, and NumPy asks for huge pages for them). See :func:`_keep_freed_heap`.
"""
import os

_SPIN_VARIABLES = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}


def _bound_openmp_spin() -> bool:
    """Set the spin variables above unless the user chose any wait setting. True when set."""
    if "OMP_WAIT_POLICY" in os.environ or any(k in os.environ for k in _SPIN_VARIABLES):
        return False
    os.environ.update(_SPIN_VARIABLES)
    return True


_bound_openmp_spin()

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
