"""How the tiled persistent recurrent loops (recurrent_tiled.py) cut a layer into blocks: pure Python, no
CuPy, so that the planning is tested on any machine.

A block owns U hidden units and R batch rows for the whole loop; its threads each hold KS consecutive
weights of one row of W_hh (forward: of a gate row, over K = H; backward: of W_hh^T's row of a unit,
over K = NG H) in registers.
"""
from __future__ import annotations

import functools

import numpy as np

THREADS = 256  # per block, when the tile has that many (column, segment) pairs
MAX_ROWS = 32  # rows per block; the partials take threads * R elements of shared memory
SMEM_MAX_BYTES = 48 * 1024  # the dynamic shared memory a block may have without opting in
# registers of W_hh per thread: past this the kernel would spill, and the warp-per-unit loops take over
MAX_KS = {np.dtype(np.float32): 64, np.dtype(np.float64): 32}


@functools.cache
def plan(ng: int, B: int, H: int, dtype, sms: int):
    """(U units, R rows, threads, KS forward, KS backward, shared memory bytes) of a block, or None when no
    tiling fits: at most ``sms`` blocks, KS weights per thread within MAX_KS, both kernels' shared memory
    within SMEM_MAX_BYTES. Among those that fit, the smallest block work per step (R U), then the widest U
    (fewer reads of the state rows across the grid), then the most threads."""
    dtype = np.dtype(dtype)
    best = None
    for U, nt in ((u, n) for u in (64, 32, 16, 8, 4, 2, 1) for n in (THREADS, 128, 64, 32)):
        if ng * U > nt or H % U:
            continue
        sf, sb = nt // (ng * U), nt // U
        if H % sf or (ng * H) % sb:
            continue
        ksf, ksb = H // sf, ng * H // sb
        if max(ksf, ksb) > MAX_KS[dtype]:
            continue
        n_ut = H // U
        if n_ut > sms:
            continue
        R = -(-B // (sms // n_ut))  # rows per block such that the grid fits in one wave
        if R > MAX_ROWS or R * U > nt:  # a thread per (row, unit) applies the cell
            continue
        smem = max(R * H, R * ng * H) * dtype.itemsize + nt * R * dtype.itemsize
        if smem > SMEM_MAX_BYTES:
            continue
        key = (R * U, -U, -nt)
        if best is None or key < best[0]:
            best = (key, U, R, nt, ksf, ksb, smem)
    return None if best is None else best[1:]
