"""The Numba CPU recurrent-cell kernels against the NumPy references, plus a finite-difference check
of the LSTM backward against its own forward (so the backward math is checked independently of the
reference)."""
from __future__ import annotations

import numpy as np
import pytest

from tapegrad.kernels import reference as ref
from tapegrad.kernels import registry
from tapegrad.kernels.cpu import recurrent as K

DTYPES = [np.float32, np.float64]
# float32: the kernels' exp / tanh polynomials are within 2.5 ulp; with the cell's arithmetic a few
# ulp more. atol covers values that cancel to near zero: c = f c_prev + i g, and in the backward
# 1 - tanh(c)^2, where 1 ulp of tanh(c) near 1 is 6e-8 absolute. Measured on 100 random [64, 256]
# cells (inputs ~ N(0, 2)): at most 0.41 of this tolerance.
TOL = {np.float32: {"rtol": 1e-6, "atol": 1e-6}, np.float64: {"rtol": 1e-13, "atol": 1e-13}}
SHAPES = [(1, 1), (1, 7), (3, 1), (5, 17), (4, 33), (64, 256)]


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def lstm_inputs(rng, B, H, dtype, scale=2.0):
    z = rand(rng, (B, 4 * H), dtype, scale)
    c_prev = rand(rng, (B, H), dtype)
    grad_h = rand(rng, (B, H), dtype)
    grad_c = rand(rng, (B, H), dtype)
    return z, c_prev, grad_h, grad_c


def close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


# ---------------------------------------------------------------------------------------------------
# LSTM forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
def test_lstm_cell_fwd_matches_reference(B, H, dtype):
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(B * 100 + H), B, H, dtype)
    gates, c, h = K.lstm_cell_fwd(z, c_prev)
    r_gates, r_c, r_h = ref.lstm_cell_fwd(z, c_prev)
    for out in (gates, c, h):
        assert out.dtype == dtype
    close(gates, r_gates, dtype)
    close(c, r_c, dtype)
    close(h, r_h, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_fills_given_outputs(dtype):
    B, H = 5, 9
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(1), B, H, dtype)
    gates = np.full((B, 4 * H), np.nan, dtype)
    c, h = np.full((B, H), np.nan, dtype), np.full((B, H), np.nan, dtype)
    out = K.lstm_cell_fwd(z, c_prev, gates, c, h)
    assert out[0] is gates and out[1] is c and out[2] is h
    for a, b in zip(out, ref.lstm_cell_fwd(z, c_prev)):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", [(1, 1), (3, 13), (64, 256)])
def test_lstm_cell_fwd_gates_is_z_activates_in_place(B, H, dtype):
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(2), B, H, dtype)
    expected = ref.lstm_cell_fwd(z, c_prev)
    zz = z.copy()
    gates, c, h = K.lstm_cell_fwd(zz, c_prev, gates=zz)
    assert gates is zz
    for a, b in zip((gates, c, h), expected):
        close(a, b, dtype)


def test_lstm_cell_fwd_gates_same_memory_as_z_through_two_views():
    # What a layer does: lstm_cell_fwd(zbuf[t], ..., gates=zbuf[t]) makes two view objects.
    dtype, B, H = np.float32, 4, 6
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(3), B, H, dtype)
    zbuf = np.stack([z, z])
    expected = ref.lstm_cell_fwd(z, c_prev)
    _, c, h = K.lstm_cell_fwd(zbuf[1], c_prev, gates=zbuf[1])
    for a, b in zip((zbuf[1], c, h), expected):
        close(a, b, dtype)
    np.testing.assert_array_equal(zbuf[0], z)  # the other step untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_gates_overlapping_z_shifted(dtype):
    # gates one row behind z in the same buffer: the kernel must not read z after overwriting it.
    B, H = 5, 7
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(4), B, H, dtype)
    expected = ref.lstm_cell_fwd(z, c_prev)
    buf = np.zeros((B + 1, 4 * H), dtype)
    buf[1:] = z
    _, c, h = K.lstm_cell_fwd(buf[1:], c_prev, gates=buf[:-1])
    for a, b in zip((buf[:-1], c, h), expected):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_c_written_over_c_prev(dtype):
    B, H = 3, 10
    z, c_prev, _, _ = lstm_inputs(np.random.default_rng(5), B, H, dtype)
    expected = ref.lstm_cell_fwd(z, c_prev)
    state = c_prev.copy()
    gates, c, h = K.lstm_cell_fwd(z, state, c=state)
    assert c is state
    for a, b in zip((gates, c, h), expected):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_large_inputs_saturate_without_nan(dtype):
    rng = np.random.default_rng(6)
    B, H = 8, 40
    z = rng.uniform(-50, 50, (B, 4 * H)).astype(dtype)
    z[0, :8] = [50, -50, 100, -100, 1e4, -1e4, 88.5, -88.5]
    c_prev = rng.uniform(-50, 50, (B, H)).astype(dtype)
    gates, c, h = K.lstm_cell_fwd(z, c_prev)
    with np.errstate(over="ignore"):  # the reference's exp(-x) overflows to inf for x << 0
        expected = ref.lstm_cell_fwd(z, c_prev)
    for a, b in zip((gates, c, h), expected):
        assert np.all(np.isfinite(a))
        close(a, b, dtype)
    sig = np.concatenate([gates[:, :2 * H], gates[:, 3 * H:]], axis=1)
    assert np.all((sig >= 0) & (sig <= 1)) and np.all(np.abs(gates[:, 2 * H:3 * H]) <= 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_propagates_nan(dtype):
    z = np.zeros((1, 8), dtype)
    z[0, [0, 1, 2, 3]] = np.nan  # H = 2: i and f of both units
    z[0, 4], z[0, 6] = np.nan, np.nan  # g and o of unit 0
    gates, c, h = K.lstm_cell_fwd(z, np.ones((1, 2), dtype))
    assert np.isnan(gates[0, [0, 1, 4, 6]]).all()
    assert np.isnan(c[0, 0]) and np.isnan(h[0, 0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_fwd_activations_within_3_ulp_of_exact(dtype):
    # A dense grid through the kernels' exp / tanh polynomials. The float64 "exact" values are NumPy's
    # own, a couple of ulp off themselves, hence 4 ulp there.
    x = np.concatenate([np.linspace(-30, 30, 200_001), np.geomspace(1e-300, 10, 20_001)])
    if dtype == np.float64:
        x = np.concatenate([x, np.linspace(-700, 700, 10_001)])
    x = np.concatenate([x, -x]).astype(dtype)
    H = x.size
    gates, _, _ = K.lstm_cell_fwd(np.tile(x, 4)[None, :], np.zeros((1, H), dtype))
    x64 = x.astype(np.float64)
    sig, tanh = 1.0 / (1.0 + np.exp(-x64)), np.tanh(x64)
    max_ulps = 3.0 if dtype == np.float32 else 4.0
    for got, exact in ((gates[0, :H], sig), (gates[0, H:2 * H], sig), (gates[0, 2 * H:3 * H], tanh),
                       (gates[0, 3 * H:], sig)):
        ulps = np.abs(got - exact) / np.spacing(np.abs(exact).astype(dtype))
        assert ulps.max() <= max_ulps


# ---------------------------------------------------------------------------------------------------
# LSTM backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
def test_lstm_cell_bwd_matches_reference(B, H, dtype):
    z, c_prev, grad_h, grad_c = lstm_inputs(np.random.default_rng(B * 100 + H + 7), B, H, dtype)
    gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    r_grad_z, r_grad_c_prev = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    assert grad_z.dtype == dtype and grad_c_prev.dtype == dtype
    close(grad_z, r_grad_z, dtype)
    close(grad_c_prev, r_grad_c_prev, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_bwd_fills_given_outputs(dtype):
    B, H = 4, 11
    z, c_prev, grad_h, grad_c = lstm_inputs(np.random.default_rng(8), B, H, dtype)
    gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    grad_z, grad_c_prev = np.full((B, 4 * H), np.nan, dtype), np.full((B, H), np.nan, dtype)
    out = K.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c, grad_z, grad_c_prev)
    assert out[0] is grad_z and out[1] is grad_c_prev
    for a, b in zip(out, ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)):
        close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", [(1, 1), (3, 13), (64, 256)])
def test_lstm_cell_bwd_grad_c_prev_is_grad_c_overwrites_in_place(B, H, dtype):
    z, c_prev, grad_h, grad_c = lstm_inputs(np.random.default_rng(9), B, H, dtype)
    gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    expected = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    carry = grad_c.copy()
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, c_prev, c, grad_h, carry, grad_c_prev=carry)
    assert grad_c_prev is carry
    close(grad_z, expected[0], dtype)
    close(grad_c_prev, expected[1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_bwd_grad_z_is_gates(dtype):
    # Not needed by the layers, but must not read a gate after overwriting it with its gradient.
    B, H = 3, 9
    z, c_prev, grad_h, grad_c = lstm_inputs(np.random.default_rng(10), B, H, dtype)
    gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    expected = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    g = gates.copy()
    grad_z, grad_c_prev = K.lstm_cell_bwd(g, c_prev, c, grad_h, grad_c, grad_z=g)
    assert grad_z is g
    close(grad_z, expected[0], dtype)
    close(grad_c_prev, expected[1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_bwd_grad_c_prev_is_c_prev(dtype):
    # grad_c_prev holds dc while c_prev is still needed: the kernel must read c_prev from a copy.
    B, H = 3, 9
    z, c_prev, grad_h, grad_c = lstm_inputs(np.random.default_rng(11), B, H, dtype)
    gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    expected = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    cp = c_prev.copy()
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, cp, c, grad_h, grad_c, grad_c_prev=cp)
    close(grad_z, expected[0], dtype)
    close(grad_c_prev, expected[1], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_bwd_large_inputs_stay_finite(dtype):
    rng = np.random.default_rng(12)
    B, H = 6, 20
    z = rng.uniform(-50, 50, (B, 4 * H)).astype(dtype)
    c_prev = rng.uniform(-50, 50, (B, H)).astype(dtype)
    with np.errstate(over="ignore"):
        gates, c, _ = ref.lstm_cell_fwd(z, c_prev)
    grad_h, grad_c = rand(rng, (B, H), dtype), rand(rng, (B, H), dtype)
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    expected = ref.lstm_cell_bwd(gates, c_prev, c, grad_h, grad_c)
    assert np.all(np.isfinite(grad_z)) and np.all(np.isfinite(grad_c_prev))
    close(grad_z, expected[0], dtype)
    close(grad_c_prev, expected[1], dtype)


@pytest.mark.parametrize("B,H", [(1, 1), (2, 3)])
def test_lstm_cell_bwd_matches_finite_differences_of_fwd(B, H):
    # L = sum(h * w1) + sum(c * w2), so grad_h = w1 and grad_c = w2 (c's direct use).
    rng = np.random.default_rng(13)
    z, c_prev, w1, w2 = lstm_inputs(rng, B, H, np.float64, scale=1.0)

    def loss(z, c_prev):
        _, c, h = K.lstm_cell_fwd(z, c_prev)
        return np.sum(h * w1) + np.sum(c * w2)

    gates, c, _ = K.lstm_cell_fwd(z, c_prev)
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, c_prev, c, w1, w2)

    eps = 1e-6
    for x, grad in ((z, grad_z), (c_prev, grad_c_prev)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            saved = x[idx]
            x[idx] = saved + eps
            up = loss(z, c_prev)
            x[idx] = saved - eps
            down = loss(z, c_prev)
            x[idx] = saved
            numeric[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Elman RNN


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,H", SHAPES)
def test_rnn_cell_fwd_and_bwd_match_reference(B, H, dtype, relu):
    rng = np.random.default_rng(B * 100 + H + 14)
    z, grad_h = rand(rng, (B, H), dtype, 2.0), rand(rng, (B, H), dtype)
    h = K.rnn_cell_fwd(z, relu=relu)
    assert h.dtype == dtype
    close(h, ref.rnn_cell_fwd(z, relu=relu), dtype)
    grad_z = K.rnn_cell_bwd(h, grad_h, relu=relu)
    assert grad_z.dtype == dtype
    close(grad_z, ref.rnn_cell_bwd(h, grad_h, relu=relu), dtype)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_cell_in_place_and_given_outputs(dtype, relu):
    rng = np.random.default_rng(15)
    B, H = 6, 19
    z, grad_h = rand(rng, (B, H), dtype, 2.0), rand(rng, (B, H), dtype)
    expected_h = ref.rnn_cell_fwd(z, relu=relu)
    expected_gz = ref.rnn_cell_bwd(expected_h, grad_h, relu=relu)

    out = np.full((B, H), np.nan, dtype)
    assert K.rnn_cell_fwd(z, out, relu=relu) is out
    close(out, expected_h, dtype)
    zz = z.copy()
    assert K.rnn_cell_fwd(zz, zz, relu=relu) is zz  # h is z
    close(zz, expected_h, dtype)

    gz = np.full((B, H), np.nan, dtype)
    assert K.rnn_cell_bwd(expected_h, grad_h, gz, relu=relu) is gz
    close(gz, expected_gz, dtype)
    gh = grad_h.copy()
    assert K.rnn_cell_bwd(expected_h, gh, gh, relu=relu) is gh  # grad_z is grad_h
    close(gh, expected_gz, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rnn_cell_fwd_large_inputs(dtype):
    z = np.array([[-1e4, -50, -9, -0.5, 0, 1e-30, 0.5, 9, 50, 1e4]], dtype)
    h = K.rnn_cell_fwd(z)
    close(h, np.tanh(z), dtype)
    np.testing.assert_array_equal(K.rnn_cell_fwd(z, relu=True), np.maximum(z, 0))


def test_rnn_cell_bwd_matches_finite_differences_of_fwd():
    rng = np.random.default_rng(16)
    z, w = rand(rng, (2, 3), np.float64), rand(rng, (2, 3), np.float64)
    z[0, 0] = 0.3  # keep relu away from its kink
    for relu in (False, True):
        z[np.abs(z) < 1e-3] = 0.1
        grad = K.rnn_cell_bwd(K.rnn_cell_fwd(z, relu=relu), w, relu=relu)
        eps = 1e-6
        numeric = np.zeros_like(z)
        for idx in np.ndindex(z.shape):
            zp, zm = z.copy(), z.copy()
            zp[idx] += eps
            zm[idx] -= eps
            numeric[idx] = (np.sum(K.rnn_cell_fwd(zp, relu=relu) * w)
                            - np.sum(K.rnn_cell_fwd(zm, relu=relu) * w)) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Shapes and dispatch


def test_empty_batch():
    z = np.zeros((0, 8), np.float32)
    gates, c, h = K.lstm_cell_fwd(z, np.zeros((0, 2), np.float32))
    assert gates.shape == (0, 8) and c.shape == h.shape == (0, 2)
    grad_z, grad_c_prev = K.lstm_cell_bwd(gates, c, c, h, h)
    assert grad_z.shape == (0, 8) and grad_c_prev.shape == (0, 2)


def test_wrong_output_shape_raises():
    z, c_prev = np.zeros((2, 8)), np.zeros((2, 2))
    with pytest.raises(ValueError, match="gates"):
        K.lstm_cell_fwd(z, c_prev, gates=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="z"):
        K.lstm_cell_fwd(np.zeros((2, 6)), c_prev)
    with pytest.raises(ValueError, match="grad_c_prev"):
        K.lstm_cell_bwd(z, c_prev, c_prev, c_prev, c_prev, grad_c_prev=np.zeros((2, 3)))
    with pytest.raises(ValueError, match="h"):
        K.rnn_cell_fwd(c_prev, np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["lstm_cell_fwd", "lstm_cell_bwd", "rnn_cell_fwd", "rnn_cell_bwd"])
def test_registry_serves_these_kernels_on_cpu(name):
    assert registry.get(name, "cpu") is getattr(K, name)


# ---------------------------------------------------------------------------------------------------
# process defaults set by tapegrad.kernels.cpu


def test_keep_freed_heap_leaves_user_malloc_settings_alone(monkeypatch):
    import os

    from tapegrad.kernels import cpu

    monkeypatch.setenv("MALLOC_TOP_PAD_", "0")
    assert cpu._keep_freed_heap() is False
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert cpu._keep_freed_heap() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    for key in [k for k in os.environ if k.startswith("MALLOC_") and k.endswith("_")]:
        monkeypatch.delenv(key)
    assert cpu._keep_freed_heap() is cpu._running_glibc()


def test_openmp_spin_is_bounded_unless_the_user_chose_a_wait_setting(monkeypatch):
    import os

    from tapegrad.kernels import cpu

    for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(key, raising=False)
    assert cpu._bound_openmp_spin() is True
    assert os.environ["GOMP_SPINCOUNT"] == "10000" and os.environ["KMP_BLOCKTIME"] == "0"
    for key, value in (("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "300000"), ("KMP_BLOCKTIME", "200")):
        for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv(key, value)
        assert cpu._bound_openmp_spin() is False
        assert os.environ[key] == value  # the user's choice stands, and nothing else was added
        assert [k for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME") if k in os.environ] == [key]


# ---- whole steps (recurrent GEMM + cell), the CPU entries the GPU loops' logic tests run on ------------------

def test_step_kernels_match_the_references():
    from tapegrad.kernels import reference as ref
    from tapegrad.kernels.cpu import recurrent_step as S
    rng = np.random.default_rng(5)
    B, H = 5, 7
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    h_prev, w, z, c_prev = r(B, H), r(4 * H, H), r(B, 4 * H), r(B, H)
    got = S.lstm_step_fwd(h_prev, w, z.copy(), c_prev, np.empty((B, H)), np.empty((B, H)))
    want = ref.lstm_step_fwd(h_prev, w, z.copy(), c_prev, np.empty((B, H)), np.empty((B, H)))
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_, rtol=1e-12, atol=1e-12)
    w_t = np.ascontiguousarray(w.T)
    for dz_next in (None, r(B, 4 * H)):
        for grad_out in (None, r(B, H)):
            grad_h, grad_c = r(B, H), r(B, H)
            args = (dz_next, w_t, grad_h, grad_out, want[0], c_prev, want[1])
            gz, gc = S.lstm_step_bwd(*args, grad_c.copy(), np.empty((B, 4 * H)))
            wz, wc = ref.lstm_step_bwd(*args, grad_c.copy(), np.empty((B, 4 * H)))
            np.testing.assert_allclose(gz, wz, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(gc, wc, rtol=1e-12, atol=1e-12)
            # the pre-activation gradient is the cell's backward of dL/dh_t, written out by hand
            gh = dz_next @ w if dz_next is not None else grad_h  # dz_{t+1} W_hh
            gh = gh + (0 if grad_out is None else grad_out)
            np.testing.assert_allclose(gz, ref.lstm_cell_bwd(want[0], c_prev, want[1], gh, grad_c)[0], rtol=1e-12)
    wr, p = r(H, H), r(B, H)
    for relu in (False, True):
        h = S.rnn_step_fwd(h_prev, wr, p, np.empty((B, H)), relu)
        np.testing.assert_allclose(h, np.maximum(p + h_prev @ wr.T, 0) if relu else np.tanh(p + h_prev @ wr.T),
                                   rtol=1e-12)
        dz_next, grad_out = r(B, H), r(B, H)
        gz = S.rnn_step_bwd(dz_next, np.ascontiguousarray(wr.T), None, grad_out, h, np.empty((B, H)), relu)
        gh = dz_next @ wr + grad_out
        np.testing.assert_allclose(gz, gh * (h > 0) if relu else gh * (1 - h * h), rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # the reference's 1 / (1 + inf) = 0
@pytest.mark.parametrize("dtype,low", [(np.float32, -90.0), (np.float64, -710.0)])
def test_a_saturated_gate_is_exactly_closed_and_minus_zero_keeps_its_sign(dtype, low):
    """sigmoid(z) is 0 below the exp clamp, as the reference and torch give (it was 1.6e-38 in float32,
    so a closed forget gate let a huge c_prev through); tanh(-0.0) is -0.0."""
    H = 3
    z = np.zeros((2, 4 * H), dtype)
    z[0, H:2 * H] = [low, -np.inf, -1e30]     # forget gate of row 0: far below the clamp
    z[0, :H] = low                            # input gate too
    z[1, 2 * H:3 * H] = -0.0                  # the g gate's tanh of -0.0
    c_prev = np.full((2, H), 1e30 if dtype == np.float32 else 1e300, dtype)
    gates, c, h = registry.get("lstm_cell_fwd", "cpu")(z, c_prev)
    want = ref.lstm_cell_fwd(z, c_prev)
    np.testing.assert_array_equal(gates[0, :2 * H], 0.0)
    np.testing.assert_array_equal(c[0], want[1][0])
    assert np.all(np.signbit(gates[1, 2 * H:3 * H])) and np.all(np.signbit(want[0][1, 2 * H:3 * H]))
