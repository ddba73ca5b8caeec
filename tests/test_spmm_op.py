"""The spmm op on the tape: forward and both backwards (dX through A^T, dvalues by SDDMM) against SciPy,
finite differences and torch."""
import numpy as np
import pytest
import scipy.sparse as sp

import tapegrad as tg
from tapegrad import CSR


def random_csr(n_rows, n_cols, density=0.3, seed=0, dtype=np.float64, index_dtype=np.int32, empty_rows=()):
    m = sp.random(n_rows, n_cols, density=density, format="lil", random_state=seed, dtype=dtype)
    for r in empty_rows:
        m.rows[r] = []
        m.data[r] = []
    m = m.tocsr()
    m.indices = m.indices.astype(index_dtype)
    m.indptr = m.indptr.astype(index_dtype)
    return m, CSR(m.indptr, m.indices, m.data, m.shape)


def rand(*shape, seed=1, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_forward_and_grad_x_match_scipy(dtype, index_dtype):
    m, A = random_csr(30, 20, dtype=dtype, index_dtype=index_dtype, empty_rows=(0, 7))
    x = tg.tensor(rand(20, 6, dtype=dtype), requires_grad=True)
    y = tg.spmm(A, x)
    assert y.dtype == dtype and y.shape == (30, 6)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.numpy(), m @ x.data, **tol)
    g = rand(30, 6, seed=2, dtype=dtype)
    y.backward(g)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, m.T @ g, **tol)


def test_unweighted_matrix_uses_ones():
    A = CSR.from_edge_index(np.array([[0, 0, 2], [1, 2, 0]]), num_nodes=3)
    x = tg.tensor(rand(3, 2), requires_grad=True)
    y = tg.spmm(A, x)
    dense = A.toarray()
    np.testing.assert_allclose(y.numpy(), dense @ x.data)
    y.backward(np.ones((3, 2)))
    np.testing.assert_allclose(x.grad, dense.T @ np.ones((3, 2)))


def test_gradcheck_x():
    _, A = random_csr(5, 4, density=0.5, seed=3, empty_rows=(2,))
    x = tg.tensor(rand(4, 3), requires_grad=True)
    assert tg.gradcheck(lambda t: tg.spmm(A, t), [x])


def test_gradcheck_x_and_values_together():
    _, A = random_csr(5, 4, density=0.5, seed=4)
    x = tg.tensor(rand(4, 3), requires_grad=True)
    v = tg.tensor(rand(A.nnz, seed=5), requires_grad=True)
    assert tg.gradcheck(lambda t, w: tg.spmm(A, t, values=w), [x, v])


def test_gradcheck_values_only_with_a_constant_x():
    _, A = random_csr(6, 6, density=0.4, seed=6)
    v = tg.tensor(rand(A.nnz, seed=7), requires_grad=True)
    x = tg.tensor(rand(6, 2))
    assert tg.gradcheck(lambda w: tg.spmm(A, x, values=w), [v])


def test_values_grad_is_the_sampled_dense_product():
    m, A = random_csr(12, 9, density=0.4, seed=8)
    x = tg.tensor(rand(9, 4), requires_grad=True)
    v = tg.tensor(rand(A.nnz, seed=9), requires_grad=True)
    y = tg.spmm(A, x, values=v)
    vm = sp.csr_matrix((v.data, A.indices, A.indptr), shape=A.shape)
    np.testing.assert_allclose(y.numpy(), vm @ x.data, rtol=1e-12)
    g = rand(12, 4, seed=10)
    y.backward(g)
    full = g @ x.data.T  # dL/dA for a dense A; sampled on the pattern
    rows = np.repeat(np.arange(12), np.diff(A.indptr))
    np.testing.assert_allclose(v.grad, full[rows, A.indices], rtol=1e-12)
    np.testing.assert_allclose(x.grad, vm.T @ g, rtol=1e-12)


def test_spmm_through_a_transposed_matrix_with_values():
    _, A = random_csr(6, 4, density=0.5, seed=11)
    At = A.T
    x = tg.tensor(rand(6, 3), requires_grad=True)
    v = tg.tensor(rand(At.nnz, seed=12), requires_grad=True)
    assert tg.gradcheck(lambda t, w: tg.spmm(At, t, values=w), [x, v])


def test_one_dimensional_x():
    m, A = random_csr(7, 5, seed=13)
    x = tg.tensor(rand(5), requires_grad=True)
    y = tg.spmm(A, x)
    assert y.shape == (7,)
    np.testing.assert_allclose(y.numpy(), m @ x.data)
    assert tg.gradcheck(lambda t: tg.spmm(A, t), [x])


def test_matmul_operator_with_a_csr_on_the_left():
    m, A = random_csr(7, 5, seed=14)
    x = tg.tensor(rand(5, 2), requires_grad=True)
    y = A @ x
    np.testing.assert_allclose(y.numpy(), m @ x.data)
    np.testing.assert_allclose(tg.matmul(A, x).numpy(), m @ x.data)


def test_float32_x_with_float64_values_and_float64_downstream_grads():
    _, A = random_csr(8, 8, seed=15)  # float64 values
    x = tg.tensor(rand(8, 3, dtype=np.float32), requires_grad=True)
    v = tg.tensor(A.data.astype(np.float32), requires_grad=True)
    y = tg.spmm(A, x, values=v)
    assert y.dtype == np.float32
    (y * np.full((8, 3), 0.5)).sum().backward()  # float64 grad_out arrives at a float32 op
    assert x.grad.dtype == np.float32 and v.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, A.to_scipy().T @ np.full((8, 3), 0.5), rtol=1e-5)


def test_non_contiguous_x_is_handled():
    m, A = random_csr(6, 5, seed=16)
    base = tg.tensor(rand(2, 5), requires_grad=True)
    x = base.T  # [5, 2], not C-contiguous
    y = tg.spmm(A, x)
    np.testing.assert_allclose(y.numpy(), m @ base.data.T)
    y.backward(np.ones((6, 2)))
    np.testing.assert_allclose(base.grad, (m.T @ np.ones((6, 2))).T)


def test_repeated_backward_reuses_the_cached_transpose():
    _, A = random_csr(10, 10, seed=17)
    x = tg.tensor(rand(10, 2), requires_grad=True)
    tg.spmm(A, x).sum().backward()
    At = A.T
    tg.spmm(A, x).sum().backward()
    assert A.T is At


def test_no_graph_without_grad():
    _, A = random_csr(4, 4, seed=18)
    y = tg.spmm(A, tg.tensor(rand(4, 2)))
    assert not y.requires_grad
    with tg.no_grad():
        y = tg.spmm(A, tg.tensor(rand(4, 2), requires_grad=True))
    assert not y.requires_grad


def test_errors():
    _, A = random_csr(4, 3, seed=19)
    with pytest.raises(TypeError, match="CSR"):
        tg.spmm(np.eye(3), tg.tensor(rand(3, 2)))
    with pytest.raises(ValueError, match="columns"):
        tg.spmm(A, tg.tensor(rand(4, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        tg.spmm(A, tg.tensor(np.ones((3, 2), np.int64)))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        tg.spmm(A, tg.tensor(rand(3, 2, 2)))
    with pytest.raises(ValueError, match="values"):
        tg.spmm(A, tg.tensor(rand(3, 2)), values=tg.tensor(np.ones(A.nnz + 1)))


def test_vjp_vs_torch_on_a_realistic_graph():
    torch = pytest.importorskip("torch")
    m, A = random_csr(300, 300, density=0.02, seed=20, empty_rows=(5, 17))
    xa, va = rand(300, 32, seed=21), rand(A.nnz, seed=22)
    x = tg.tensor(xa, requires_grad=True)
    v = tg.tensor(va, requires_grad=True)
    y = tg.relu(tg.spmm(A, x, values=v))
    rows = np.repeat(np.arange(300), np.diff(A.indptr))
    tx = torch.tensor(xa, requires_grad=True)
    tv = torch.tensor(va, requires_grad=True)
    cols = torch.as_tensor(A.indices.astype(np.int64))
    tA = torch.zeros(300, 300, dtype=torch.float64).index_put((torch.as_tensor(rows), cols), tv, accumulate=True)
    ty = torch.relu(tA @ tx)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rand(300, 32, seed=23)
    y.backward(g)
    gx, gv = torch.autograd.grad(ty, (tx, tv), torch.tensor(g))
    np.testing.assert_allclose(x.grad, gx.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v.grad, gv.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8, np.int16])
@pytest.mark.parametrize("weighted", [False, True])
def test_grad_x_with_small_integer_indices_and_more_rows_than_they_hold(index_dtype, weighted):
    # A^T stores A's row ids: they exceed the index dtype, and must not wrap in the backward
    n = int(np.iinfo(index_dtype).max) + 60
    rng = np.random.default_rng(3)
    indices = rng.integers(0, 4, 2 * n).astype(index_dtype)
    indptr = np.arange(0, 2 * n + 1, 2)
    data = rng.standard_normal(2 * n) if weighted else None
    A = CSR(indptr, indices, data, (n, 4))
    m = A.to_scipy().astype(np.float64)
    x = tg.tensor(rand(4, 3), requires_grad=True)
    g = rand(n, 3, seed=5)
    y = tg.spmm(A, x)
    np.testing.assert_allclose(y.numpy(), m @ x.data, rtol=1e-10, atol=1e-12)
    y.backward(g)
    np.testing.assert_allclose(x.grad, m.T @ g, rtol=1e-10, atol=1e-12)
    torch = pytest.importorskip("torch")
    tA = torch.sparse_coo_tensor(np.stack([np.repeat(np.arange(n), 2), indices.astype(np.int64)]),
                                 torch.tensor(m.data if weighted else np.ones(2 * n)), (n, 4),
                                 check_invariants=True)
    tx = torch.tensor(x.data, requires_grad=True)
    torch.sparse.mm(tA, tx).backward(torch.tensor(g))
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x_dtype,v_dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_values_of_another_dtype_than_x_are_refused(x_dtype, v_dtype):
    _, A = random_csr(5, 4, seed=20)
    x = tg.tensor(rand(4, 2, dtype=x_dtype))
    with pytest.raises(TypeError, match="values have dtype .* but x has"):
        tg.spmm(A, x, values=tg.tensor(A.data.astype(v_dtype), requires_grad=True))
