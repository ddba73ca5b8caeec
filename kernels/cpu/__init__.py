"""Numba CPU kernels. Imported on first use of a CPU kernel, never by ``import tapegrad``.

Numba's OpenMP worker threads spin while they wait for work by default. On a machine with few cores,
where OpenBLAS's threads (and other processes) need the same cores between our kernels, the spinning
threads steal them: a Cora-sized SpMM took 5 ms instead of 50 us. A passive wait policy costs a few
microseconds per parallel region instead, so it is the default here unless the user chose a policy.
It must be set before Numba starts its thread pool, i.e. before the first parallel kernel runs.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
