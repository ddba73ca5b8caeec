"""Spectral tools and the pixel grid: normalised Laplacian vs scipy, eigenbasis, graph Fourier transform,
and a 3x3 convolution written as message passing on grid_graph."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import laplacian as scipy_laplacian
from scipy.signal import correlate2d

import tapegrad as tg
from tapegrad.layers.graph import (GRID_OFFSETS_8, graph_fourier, grid_graph, grid_shift, inverse_graph_fourier,
                                   laplacian_eigh, normalized_laplacian)


def _random_graph(n, density, seed, weighted=True, loops=True):
    rng = np.random.default_rng(seed)
    m = sp.random(n, n, density=density, random_state=seed, format="csr")
    m = m + m.T
    if not weighted:
        m.data[:] = 1.0
    if loops:
        m = m + sp.diags(rng.uniform(0, 2, n) * (rng.random(n) < 0.3))
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    return m


@pytest.mark.parametrize("seed,weighted", [(0, True), (1, False), (2, True)])
def test_normalized_laplacian_matches_scipy_including_isolated_nodes_and_loops(seed, weighted):
    m = _random_graph(30, 0.04, seed, weighted)  # sparse enough to leave isolated nodes
    m = sp.lil_matrix(m)
    m[4, :] = 0
    m[:, 4] = 0
    m[4, 4] = 3.0  # a node whose only entry is a self-loop counts as isolated
    m = sp.csr_matrix(m)
    ref = scipy_laplacian(m, normed=True).toarray()
    L = normalized_laplacian(tg.CSR.from_scipy(m))
    assert isinstance(L, tg.CSR) and L.dtype == np.float64
    np.testing.assert_allclose(L.toarray(), ref, rtol=1e-12, atol=1e-14)
    deg = np.asarray(m.sum(1)).ravel() - m.diagonal()
    np.testing.assert_array_equal(np.diag(L.toarray()), (deg > 0).astype(float))
    assert L.toarray()[4].sum() == 0  # the isolated node's row is all zero


def test_normalized_laplacian_accepts_unweighted_csr_and_dense():
    A = grid_graph(3, 4)
    assert A.data is None
    ref = scipy_laplacian(A.to_scipy().astype(np.float64), normed=True).toarray()
    np.testing.assert_allclose(normalized_laplacian(A).toarray(), ref, atol=1e-14)
    np.testing.assert_allclose(normalized_laplacian(A.toarray()).toarray(), ref, atol=1e-14)
    with pytest.raises(ValueError, match="square"):
        normalized_laplacian(np.ones((2, 3)))
    with pytest.raises(TypeError):
        normalized_laplacian([[0, 1], [1, 0]])


def test_laplacian_eigh_full_spectrum_is_an_orthonormal_eigenbasis():
    m = _random_graph(25, 0.1, 3)
    w, U = laplacian_eigh(m)
    L = normalized_laplacian(m).toarray()
    assert w.shape == (25,) and U.shape == (25, 25)
    assert np.all(np.diff(w) >= -1e-12) and w[0] > -1e-10 and w[-1] < 2 + 1e-10
    np.testing.assert_allclose(U.T @ U, np.eye(25), atol=1e-10)
    np.testing.assert_allclose(L @ U, U * w, atol=1e-10)


def test_laplacian_eigh_sparse_k_smallest_agree_with_dense():
    n = 400  # a ring with random chords: connected, with a clear spectral gap, so Lanczos is quick
    rng = np.random.default_rng(5)
    src = np.concatenate([np.arange(n), rng.integers(0, n, 2 * n)])
    dst = np.concatenate([(np.arange(n) + 1) % n, rng.integers(0, n, 2 * n)])
    keep = src != dst
    A = tg.CSR.from_scipy(sp.csr_matrix((np.ones(keep.sum()), (src[keep], dst[keep])), shape=(n, n)) +
                          sp.csr_matrix((np.ones(keep.sum()), (dst[keep], src[keep])), shape=(n, n)))
    k = 6
    w_sparse, U_sparse = laplacian_eigh(A, k=k, dense=False)
    w_dense, _ = laplacian_eigh(A, k=k)
    np.testing.assert_allclose(w_sparse, w_dense, atol=1e-8)
    L = normalized_laplacian(A).to_scipy()
    np.testing.assert_allclose(L @ U_sparse, U_sparse * w_sparse, atol=1e-6)
    assert abs(w_sparse[0]) < 1e-8  # a connected graph has one zero eigenvalue
    with pytest.raises(ValueError, match="k"):
        laplacian_eigh(A, k=0)


def test_graph_fourier_round_trip_and_parseval():
    m = _random_graph(20, 0.15, 4)
    _, U = laplacian_eigh(m)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 3))
    x_hat = graph_fourier(x, U)
    np.testing.assert_allclose(x_hat, U.T @ x, atol=1e-12)
    np.testing.assert_allclose(inverse_graph_fourier(x_hat, U), x, atol=1e-12)
    np.testing.assert_allclose((x_hat ** 2).sum(), (x ** 2).sum(), rtol=1e-12)
    v = rng.standard_normal(20)
    np.testing.assert_allclose(inverse_graph_fourier(graph_fourier(v, U), U), v, atol=1e-12)


def test_graph_fourier_is_differentiable_for_tensors():
    m = _random_graph(8, 0.3, 5)
    _, U = laplacian_eigh(m)
    rng = np.random.default_rng(1)
    x = tg.tensor(rng.standard_normal((8, 2)), requires_grad=True)
    assert tg.gradcheck(lambda x: graph_fourier(x, U), [x])
    assert tg.gradcheck(lambda x: inverse_graph_fourier(x, U[:, :5]), [tg.tensor(rng.standard_normal((5, 2)),
                                                                                    requires_grad=True)])
    # a low-pass filter in the spectral domain: gradients reach x
    y = inverse_graph_fourier(graph_fourier(x, U[:, :3]), U[:, :3])
    y.sum().backward()
    np.testing.assert_allclose(x.grad, U[:, :3] @ U[:, :3].T @ np.ones((8, 2)), atol=1e-12)
    with pytest.raises(ValueError, match="nodes"):
        graph_fourier(np.ones((7, 2)), U)


def test_grid_graph_structure():
    A = grid_graph(3, 4)
    dense = A.toarray()
    assert A.shape == (12, 12) and A.data is None
    np.testing.assert_array_equal(dense, dense.T)
    assert np.all(np.diag(dense) == 0)
    deg = dense.sum(1).reshape(3, 4)
    np.testing.assert_array_equal(deg, [[3, 5, 5, 3], [5, 8, 8, 5], [3, 5, 5, 3]])
    deg4 = grid_graph(3, 4, diagonal=False).toarray().sum(1).reshape(3, 4)
    np.testing.assert_array_equal(deg4, [[2, 3, 3, 2], [3, 4, 4, 3], [2, 3, 3, 2]])
    assert grid_graph(1, 1).nnz == 0
    with pytest.raises(ValueError, match="height"):
        grid_graph(0, 3)


def _offsets_of(A, height, width):
    """Split the grid adjacency by relative offset: {(dr, dc): CSR with the entries of that offset}."""
    m = A.to_scipy().tocoo()
    dr = m.col // width - m.row // width
    dc = m.col % width - m.row % width
    out = {}
    for off in GRID_OFFSETS_8:
        sel = (dr == off[0]) & (dc == off[1])
        out[off] = tg.CSR.from_scipy(sp.csr_matrix((m.data[sel], (m.row[sel], m.col[sel])), shape=m.shape))
    return out


def test_3x3_convolution_equals_message_passing_on_the_grid():
    h, w = 5, 7
    rng = np.random.default_rng(2)
    img = rng.standard_normal((h, w))
    kernel = rng.standard_normal((3, 3))
    ref = correlate2d(img, kernel, mode="same", boundary="fill", fillvalue=0)
    A = grid_graph(h, w)
    parts = _offsets_of(A, h, w)
    x = tg.tensor(img.reshape(-1, 1))
    out = x * kernel[1, 1]  # the centre pixel: a self-loop
    for (dr, dc), S in parts.items():
        out = out + tg.spmm(S, x) * kernel[dr + 1, dc + 1]
        np.testing.assert_array_equal(S.toarray(), grid_shift(h, w, dr, dc).toarray())
    np.testing.assert_allclose(out.numpy().reshape(h, w), ref, atol=1e-12)
    # the offsets partition the graph
    np.testing.assert_array_equal(sum(S.toarray() for S in parts.values()), A.toarray())


def test_multichannel_3x3_convolution_equals_message_passing_with_gradients():
    h, w, c_in, c_out = 4, 5, 3, 2
    rng = np.random.default_rng(3)
    img = rng.standard_normal((h, w, c_in))
    K = rng.standard_normal((3, 3, c_in, c_out))  # one weight matrix per relative offset
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)))
    ref = np.zeros((h, w, c_out))
    for r in range(h):
        for c in range(w):
            ref[r, c] = np.einsum("abi,abio->o", padded[r:r + 3, c:c + 3], K)

    x = tg.tensor(img.reshape(-1, c_in), requires_grad=True)
    weights = {off: tg.tensor(K[off[0] + 1, off[1] + 1], requires_grad=True) for off in [(0, 0)] + list(GRID_OFFSETS_8)}

    def conv(x, *ws):
        out = x @ ws[0]
        for (dr, dc), wt in zip(GRID_OFFSETS_8, ws[1:]):
            out = out + tg.spmm(grid_shift(h, w, dr, dc), x) @ wt
        return out
    ws = [weights[(0, 0)]] + [weights[o] for o in GRID_OFFSETS_8]
    np.testing.assert_allclose(conv(x, *ws).numpy().reshape(h, w, c_out), ref, atol=1e-12)
    torch = pytest.importorskip("torch")
    xt = torch.tensor(img.transpose(2, 0, 1)[None], requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(K.transpose(3, 2, 0, 1)), padding=1)
    np.testing.assert_allclose(yt[0].detach().numpy().transpose(1, 2, 0), ref, atol=1e-12)
    g = rng.standard_normal((h * w, c_out))
    conv(x, *ws).backward(g)
    yt.backward(torch.tensor(g.reshape(h, w, c_out).transpose(2, 0, 1)[None]))
    np.testing.assert_allclose(x.grad.reshape(h, w, c_in), xt.grad[0].numpy().transpose(1, 2, 0), atol=1e-12)


@pytest.mark.parametrize("method", ["rcm", "degree"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reorder_nodes_relabels_the_graph_consistently(method, weighted):
    from tapegrad.apps.rmat import rmat
    A = rmat(9, edge_factor=4, seed=3)
    if weighted:
        A = tg.CSR(A.indptr, A.indices, np.random.default_rng(0).random(A.nnz), A.shape)
    B, perm = tg.reorder_nodes(A, method)
    n = A.shape[0]
    assert sorted(perm.tolist()) == list(range(n)) and B.shape == A.shape and B.nnz == A.nnz
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(n)
    x = np.random.default_rng(1).standard_normal((n, 5))
    np.testing.assert_allclose(tg.kernels.spmm(B.indptr, B.indices, B.data, x[perm])[inverse],
                               tg.kernels.spmm(A.indptr, A.indices, A.data, x), rtol=1e-12, atol=1e-12)
    assert all(np.all(np.diff(B.indices[B.indptr[i]:B.indptr[i + 1]]) > 0) for i in range(n))  # sorted rows
    if method == "degree":
        deg = np.diff(A.indptr) + np.bincount(A.indices, minlength=n)
        assert np.all(np.diff(deg[perm]) <= 0)


def test_reorder_nodes_rcm_narrows_the_band_of_a_scrambled_grid():
    A = tg.grid_graph(12, 12)
    scramble = np.random.default_rng(2).permutation(A.shape[0])
    S, _ = tg.reorder_nodes(A, "degree")  # any relabelling, then scramble it
    m = S.to_scipy()[scramble][:, scramble].tocsr()
    S = tg.CSR(m.indptr, m.indices, None, m.shape)
    R, _ = tg.reorder_nodes(S, "rcm")

    def bandwidth(M):
        rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
        return int(np.abs(rows - M.indices).max())
    assert bandwidth(R) <= 2 * 12 < bandwidth(S)


def test_reorder_nodes_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        tg.reorder_nodes(tg.CSR([0, 1, 2], [0, 2], None, (2, 3)))
    with pytest.raises(ValueError, match="method"):
        tg.reorder_nodes(tg.grid_graph(2, 2), "metis")
    with pytest.raises(TypeError):
        tg.reorder_nodes(np.eye(3))


# ---- audit fixes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["rcm", "degree"])
def test_reorder_nodes_keeps_merged_repeated_entries_of_an_unweighted_graph(method):
    A = tg.CSR(np.array([0, 2, 3, 4]), np.array([1, 1, 2, 0], dtype=np.int32), None, (3, 3))  # A[0, 1] twice
    B, perm = tg.reorder_nodes(A, method)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(3)
    np.testing.assert_array_equal(B.toarray()[np.ix_(inverse, inverse)], A.toarray())  # a relabelling of A
    x = np.random.default_rng(0).standard_normal((3, 2))
    np.testing.assert_allclose(tg.spmm(B, x[perm]).numpy()[inverse], tg.spmm(A, x).numpy(), rtol=1e-12)


def test_reorder_nodes_stays_unweighted_without_repeats():
    B, _ = tg.reorder_nodes(tg.grid_graph(3, 3), "rcm")
    assert B.data is None


@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8])
def test_reorder_nodes_gives_relabelled_ids_a_dtype_that_holds_them(index_dtype):
    # 300 nodes whose column ids all fit the small dtype, but the relabelled ids go up to 299
    n = 300
    rows = np.arange(n)
    m = sp.csr_matrix((np.ones(n), (rows, rows % 100)), shape=(n, n))
    A = tg.CSR(m.indptr, m.indices.astype(index_dtype), None, (n, n))
    B, perm = tg.reorder_nodes(A, "degree")
    assert int(B.indices.min()) >= 0 and B.indices.dtype == np.int32
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(n)
    x = np.random.default_rng(0).standard_normal((n, 2))
    np.testing.assert_allclose(tg.spmm(B, x[perm]).numpy()[inverse], tg.spmm(A, x).numpy(), rtol=1e-12)


def _directed_cycle():
    D = np.zeros((3, 3))
    D[0, 1] = D[1, 2] = D[2, 0] = 1.0
    return D


@pytest.mark.parametrize("make", [
    lambda: _directed_cycle(),  # pattern not symmetric
    lambda: sp.csr_matrix(_directed_cycle()),
    lambda: tg.CSR.from_edge_index(np.array([[0, 1, 2], [1, 2, 0]])),
    lambda: np.array([[0.0, 1.0], [2.0, 0.0]]),  # pattern symmetric, values not
])
def test_normalized_laplacian_and_eigh_refuse_a_directed_graph(make):
    with pytest.raises(ValueError, match="symmetric"):
        normalized_laplacian(make())
    with pytest.raises(ValueError, match="symmetric"):
        laplacian_eigh(make())


def test_normalized_laplacian_is_scipy_s_default_convention_on_symmetric_graphs():
    m = _random_graph(20, 0.2, 7)
    got = normalized_laplacian(m).toarray()
    np.testing.assert_allclose(got, scipy_laplacian(m, normed=True, use_out_degree=False).toarray(), atol=1e-14)
    np.testing.assert_allclose(got, scipy_laplacian(m, normed=True, use_out_degree=True).toarray(), atol=1e-14)


def test_normalized_laplacian_accepts_rounding_level_asymmetry_of_float32_weights():
    m = _random_graph(15, 0.3, 8).astype(np.float32)
    noisy = m.copy()
    sign = np.sign(np.random.default_rng(0).standard_normal(m.nnz)).astype(np.float32)
    noisy.data = noisy.data * (1 + np.float32(2e-7) * sign)  # an ulp or two off, one way or the other
    assert noisy.dtype == np.float32 and abs(noisy - noisy.T).max() > 0
    np.testing.assert_allclose(normalized_laplacian(noisy).toarray(), normalized_laplacian(m).toarray(), atol=1e-6)


def test_normalized_laplacian_dtype_must_be_float():
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int64"):
        normalized_laplacian(np.eye(2), dtype=np.int64)
    assert normalized_laplacian(np.ones((2, 2)), dtype=np.float32).dtype == np.float32


def test_graph_fourier_takes_lists():
    U = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    np.testing.assert_allclose(graph_fourier([1.0, 2.0, 3.0], U), U.T @ [1.0, 2.0, 3.0], atol=1e-14)
    np.testing.assert_allclose(inverse_graph_fourier([1.0, 2.0, 3.0], U), U @ [1.0, 2.0, 3.0], atol=1e-14)
    with pytest.raises(ValueError, match="x must be 1-D or 2-D"):
        graph_fourier(np.ones((3, 1, 1)), U)
