"""Inputs for the cross-entropy kernels' tests on every backend (CPU, simulator, GPU), each checked
against kernels/reference.py: row subsets with negative and repeated ids, ignored targets, and (in the
forward) targets and ids out of range, which must count and give NaN without reading out of bounds."""
import numpy as np

from tapegrad.kernels import reference as ref


def cases(sizes=((20, 7, 10), (9, 40, None), (12, 3, 5), (6, 70, 4), (5, 2, 0))):
    """(name, logits, target, rows) for float32 and float64; C = 40 and 70 make a row span several lanes."""
    rng = np.random.default_rng(7)
    for n, c, m in sizes:
        for dtype in (np.float32, np.float64):
            z = (rng.standard_normal((n, c)) * 3).astype(dtype)
            t = rng.integers(0, c, n).astype(np.int64)
            t[::4] = -100
            rows = None if m is None else rng.integers(-n, n, m).astype(np.int64)
            if rows is not None and m > 2:
                rows[1] = rows[2]  # a repeated id
            yield f"{n}x{c}_{m}_{np.dtype(dtype).name}", z, t, rows


def with_errors(z, t, rows):
    """The same inputs with one target and (where there are row ids) one id out of range."""
    t = t.copy()
    t[1] = z.shape[1] + 2
    if rows is not None and len(rows):
        rows = rows.copy()
        rows[0] = -z.shape[0] - 1
    return t, rows


def forward(fn, z, t, rows, xp=np):
    m = z.shape[0] if rows is None else len(rows)
    outs = [xp.empty(m, z.dtype) for _ in range(3)] + [xp.zeros(3, np.int64)]
    fn(z, t, rows, -100, *outs)
    return outs


def backward(fn, z, t, rows, zmax, logsum, scale, xp=np):
    m = z.shape[0] if rows is None else len(rows)
    grad = xp.empty((m, z.shape[1]), z.dtype)
    fn(z, t, rows, zmax, logsum, scale, -100, grad)
    return grad


def scales(z, rows):
    m = z.shape[0] if rows is None else len(rows)
    return np.asarray(0.25, z.dtype), np.linspace(-1, 2, m).astype(z.dtype)


def tolerance(dtype):
    return dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


def reference_forward(z, t, rows):
    return forward(ref.cross_entropy_fwd, z, t, rows)


def check_against_reference(fwd, bwd, z, t, rows, xp=np, dev=np.asarray, host=np.asarray):
    """``fwd`` and ``bwd`` (a backend's kernels, taking arrays made by ``dev`` and allocating with ``xp``)
    give the reference's values, counts and gradients, with and without out-of-range entries."""
    tol = tolerance(z.dtype)

    def on_dev(a):
        return None if a is None else dev(a)
    for targets, ids in ((t, rows), with_errors(z, t, rows)):
        want = reference_forward(z, targets, ids)
        got = forward(fwd, on_dev(z), on_dev(targets), on_dev(ids), xp=xp)
        np.testing.assert_array_equal(host(got[3]), want[3])
        if targets is not t and (ids is None or len(ids)):
            assert want[3][1] + want[3][2] >= 1  # the out-of-range entries were counted
        for g, w in zip(got[:3], want[:3]):
            np.testing.assert_allclose(host(g), w, **tol)  # NaN where the reference has NaN
    want = reference_forward(z, t, rows)
    for scale in scales(z, rows):
        got = backward(bwd, on_dev(z), on_dev(t), on_dev(rows), dev(want[1]), dev(want[2]), dev(scale), xp=xp)
        np.testing.assert_allclose(host(got), backward(ref.cross_entropy_bwd, z, t, rows, *want[1:3], scale), **tol)
