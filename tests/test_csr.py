"""CSR: construction and its validation, conversions (scipy, edge_index), the cached transpose, gcn_norm."""
import numpy as np
import pytest
import scipy.sparse as sp

import tapegrad as tg
from tapegrad import CSR


def random_scipy(n_rows=7, n_cols=5, density=0.4, seed=0, dtype=np.float64, index_dtype=np.int32):
    m = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=dtype)
    m.indices = m.indices.astype(index_dtype)
    m.indptr = m.indptr.astype(index_dtype)
    return m


SMALL = dict(indptr=np.array([0, 2, 2, 3]), indices=np.array([0, 2, 1]), data=np.array([1.0, 2.0, 3.0]))


# ---- construction ---------------------------------------------------------------------------------------------

def test_construct_and_basic_facts():
    A = CSR(**SMALL)
    assert A.shape == (3, 3)  # square when every column id is below n_rows
    assert A.nnz == 3 and A.dtype == np.float64 and A.device == "cpu"
    np.testing.assert_array_equal(A.toarray(), [[1, 0, 2], [0, 0, 0], [0, 3, 0]])
    assert "nnz=3" in repr(A)


def test_shape_inferred_from_the_largest_column_and_given_explicitly():
    A = CSR([0, 1, 2], [4, 0])
    assert A.shape == (2, 5)
    assert A.dtype is None  # unweighted: every stored value is 1
    np.testing.assert_array_equal(A.toarray(), [[0, 0, 0, 0, 1], [1, 0, 0, 0, 0]])
    assert CSR([0, 1, 2], [1, 0], shape=(2, 10)).shape == (2, 10)


def test_lists_become_arrays():
    A = CSR([0, 1, 2], [1, 0], [0.5, 2])
    assert A.indptr.dtype == np.int64 and A.data.dtype == np.float32


def test_non_contiguous_inputs_are_made_contiguous():
    big = np.array([0, 9, 1, 9, 2, 9])
    data = np.array([1.0, 0.0, 2.0, 0.0])
    A = CSR(np.array([0, 1, 2]), big[::2][:2], data[::2])
    assert A.indices.flags.c_contiguous and A.data.flags.c_contiguous
    np.testing.assert_array_equal(A.toarray(), [[1, 0], [0, 2]])


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(indptr=[1, 2, 2, 3]), ValueError, "indptr must start at 0"),
    (dict(indptr=[0, 2, 1, 3]), ValueError, "indptr must be non-decreasing"),
    (dict(indptr=[0, 2, 2, 4]), ValueError, "indptr must end at nnz"),
    (dict(indptr=[0, 2, 3], shape=(3, 3)), ValueError, "indptr must have length"),
    (dict(indptr=[]), ValueError, "indptr"),
    (dict(indptr=np.array([0.0, 2.0, 2.0, 3.0])), TypeError, "indptr"),
    (dict(indptr=np.array([[0, 2, 2, 3]])), ValueError, "indptr"),
    (dict(indices=[0, -1, 1]), ValueError, "indices must be non-negative"),
    (dict(indices=[0, 3, 1], shape=(3, 3)), ValueError, "indices must be < n_cols"),
    (dict(indices=np.array([0.0, 2.0, 1.0])), TypeError, "indices"),
    (dict(indices=np.array([[0, 2, 1]])), ValueError, "indices"),
    (dict(data=np.array([1.0, 2.0])), ValueError, "data must have length"),
    (dict(data=np.ones(3, np.float16)), TypeError, "data must be float32 or float64"),
    (dict(data=np.ones(3, np.int64)), TypeError, "data must be float32 or float64"),
    (dict(data=np.ones((3, 1))), ValueError, "data"),
    (dict(data="abc"), TypeError, "data"),
    (dict(shape=(3,)), ValueError, "shape"),
    (dict(shape=(3, -1)), ValueError, "shape"),
])
def test_construction_validates_and_names_the_argument(kwargs, exc, match):
    args = {**SMALL, **kwargs}
    with pytest.raises(exc, match=match):
        CSR(args["indptr"], args["indices"], args["data"], args.get("shape"))


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_int32_and_int64_indices(index_dtype):
    m = random_scipy(index_dtype=index_dtype)
    A = CSR(m.indptr, m.indices, m.data, m.shape)
    assert A.indices.dtype == index_dtype
    np.testing.assert_array_equal(A.toarray(), m.toarray())


# ---- scipy --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_from_scipy_round_trip(fmt):
    m = random_scipy(dtype=np.float64).asformat(fmt)
    A = CSR.from_scipy(m)
    assert A.shape == m.shape and A.dtype == np.float64
    back = A.to_scipy()
    assert sp.isspmatrix_csr(back)
    np.testing.assert_array_equal(back.toarray(), m.toarray())


def test_from_scipy_sums_duplicates_and_converts_integer_values():
    m = sp.coo_matrix((np.array([1, 2, 5]), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(2, 2))
    A = CSR.from_scipy(m)
    assert A.nnz == 2 and A.dtype == np.float32
    np.testing.assert_array_equal(A.toarray(), [[0, 3], [5, 0]])


def test_from_scipy_accepts_sparse_arrays_and_rejects_dense():
    A = CSR.from_scipy(sp.csr_array(np.eye(3)))
    np.testing.assert_array_equal(A.toarray(), np.eye(3))
    with pytest.raises(TypeError, match="scipy"):
        CSR.from_scipy(np.eye(3))


def test_to_scipy_does_not_share_memory_with_the_csr():
    A = CSR.from_scipy(random_scipy())
    before = A.toarray()
    m = A.to_scipy()
    m.data *= 100
    m.indices[:] = 0
    np.testing.assert_array_equal(A.toarray(), before)


def test_unweighted_to_scipy_gives_ones():
    A = CSR([0, 2, 3], [0, 1, 1])
    np.testing.assert_array_equal(A.to_scipy().toarray(), [[1, 1], [0, 1]])


# ---- from_edge_index ----------------------------------------------------------------------------------------

def test_from_edge_index_matches_scipy_and_sums_duplicates():
    ei = np.array([[0, 2, 1, 2, 0], [1, 0, 2, 0, 1]])
    A = CSR.from_edge_index(ei)
    expect = sp.coo_matrix((np.ones(5), (ei[0], ei[1])), shape=(3, 3)).toarray()
    np.testing.assert_array_equal(A.toarray(), expect)
    assert A.shape == (3, 3) and A.nnz == 3


def test_from_edge_index_without_duplicates_is_unweighted():
    A = CSR.from_edge_index(np.array([[0, 1], [1, 0]]), num_nodes=4)
    assert A.dtype is None and A.shape == (4, 4)
    np.testing.assert_array_equal(A.toarray()[:2, :2], [[0, 1], [1, 0]])


def test_from_edge_index_with_weights_sorts_columns_within_rows():
    ei = np.array([[1, 0, 1, 1], [2, 0, 0, 2]])
    w = np.array([0.5, 1.0, 2.0, 0.25])
    A = CSR.from_edge_index(ei, edge_weight=w)
    assert A.dtype == np.float64
    np.testing.assert_array_equal(A.indices, [0, 0, 2])
    np.testing.assert_array_equal(A.toarray(), [[1, 0, 0], [2, 0, 0.75], [0, 0, 0]])


def test_from_edge_index_accepts_torch():
    torch = pytest.importorskip("torch")
    A = CSR.from_edge_index(torch.tensor([[0, 1], [1, 2]]), edge_weight=torch.tensor([1.0, 2.0]))
    np.testing.assert_array_equal(A.toarray(), [[0, 1, 0], [0, 0, 2], [0, 0, 0]])


@pytest.mark.parametrize("ei,kwargs,exc,match", [
    (np.array([0, 1]), {}, ValueError, r"\[2, E\]"),
    (np.array([[0.0], [1.0]]), {}, TypeError, "integers"),
    (np.array([[0], [3]]), dict(num_nodes=3), ValueError, "outside"),
    (np.array([[-1], [0]]), dict(num_nodes=3), ValueError, "outside"),
    (np.zeros((2, 0), np.int64), {}, ValueError, "num_nodes"),
    (np.array([[0], [1]]), dict(edge_weight=np.ones(2)), ValueError, "edge_weight"),
    (np.array([[0], [1]]), dict(edge_weight=np.ones(1, np.complex64)), TypeError, "edge_weight"),
    (np.array([[0], [1]]), dict(edge_weight=np.ones(1, bool)), TypeError, "edge_weight"),
])
def test_from_edge_index_errors(ei, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CSR.from_edge_index(ei, **kwargs)


# ---- transpose ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_transpose_matches_scipy_and_is_cached(index_dtype):
    m = random_scipy(9, 6, index_dtype=index_dtype)
    A = CSR.from_scipy(m)
    At = A.transpose()
    assert At.shape == (6, 9)
    np.testing.assert_array_equal(At.toarray(), m.toarray().T)
    assert A.T is At
    assert At.T is A
    assert At.indices.dtype == A.indices.dtype


def test_transpose_permutation_maps_values_both_ways():
    A = CSR.from_scipy(random_scipy(8, 8, density=0.5, seed=3))
    At = A.T
    np.testing.assert_array_equal(At.data, A.data[A.transpose_permutation()])
    np.testing.assert_array_equal(A.data, At.data[At.transpose_permutation()])


def test_transpose_of_an_unweighted_matrix_with_empty_rows_and_columns():
    A = CSR([0, 2, 2, 3, 3], [0, 3, 0], shape=(4, 5))
    At = A.T
    assert At.data is None and At.shape == (5, 4)
    np.testing.assert_array_equal(At.toarray(), A.toarray().T)


def test_astype():
    A = CSR([0, 1, 2], [1, 0])
    B = A.astype(np.float64)
    assert B.dtype == np.float64
    np.testing.assert_array_equal(B.data, [1.0, 1.0])
    assert CSR.from_scipy(random_scipy()).astype(np.float32).dtype == np.float32


def test_to_cpu_is_itself_and_bad_devices_are_rejected():
    A = CSR(**SMALL)
    assert A.to("cpu") is A
    with pytest.raises(ValueError, match="device"):
        A.to("tpu")


# ---- gcn_norm -----------------------------------------------------------------------------------------------

def dense_gcn_norm(a, add_self_loops=True, fill=1.0):
    a = a.astype(np.float64).copy()
    if add_self_loops:
        diag = np.diag(a).copy()
        np.fill_diagonal(a, np.where(diag != 0, diag, fill))
    deg = a.sum(1)
    dis = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return dis[:, None] * a * dis[None, :]


def test_gcn_norm_matches_the_dense_formula():
    m = random_scipy(10, 10, density=0.3, seed=5)
    m.setdiag(0)
    m.eliminate_zeros()
    A = CSR.from_scipy(m)
    P = tg.gcn_norm(A)
    assert P.dtype == np.float64  # follows A's values
    np.testing.assert_allclose(P.toarray(), dense_gcn_norm(m.toarray()), rtol=1e-12)


def test_gcn_norm_improved_and_without_self_loops():
    ei = np.array([[0, 1, 1, 2], [1, 0, 2, 1]])
    A = CSR.from_edge_index(ei, num_nodes=4)  # node 3 is isolated
    dense = A.toarray()
    np.testing.assert_allclose(tg.gcn_norm(A, improved=True).toarray(), dense_gcn_norm(dense, fill=2.0),
                               rtol=1e-6)
    P = tg.gcn_norm(A, add_self_loops=False)
    np.testing.assert_allclose(P.toarray(), dense_gcn_norm(dense, add_self_loops=False), rtol=1e-6)
    assert np.isfinite(P.toarray()).all() and (P.toarray()[3] == 0).all()


def test_gcn_norm_keeps_an_existing_self_loop_weight():
    A = CSR([0, 2, 3], [0, 1, 0], np.array([3.0, 1.0, 1.0]))
    np.testing.assert_allclose(tg.gcn_norm(A).toarray(), dense_gcn_norm(A.toarray()), rtol=1e-12)


def test_gcn_norm_dtypes():
    A = CSR.from_edge_index(np.array([[0, 1], [1, 0]]))
    assert tg.gcn_norm(A).dtype == np.float32  # unweighted: float32
    assert tg.gcn_norm(A, dtype=np.float64).dtype == np.float64
    assert tg.gcn_norm(A.astype(np.float64)).dtype == np.float64
    with pytest.raises(TypeError):
        tg.gcn_norm(A, dtype=np.int32)


def test_gcn_norm_errors():
    with pytest.raises(ValueError, match="square"):
        tg.gcn_norm(CSR([0, 1], [3]))
    with pytest.raises(TypeError, match="CSR"):
        tg.gcn_norm(np.eye(3))


# ---- audit fixes: small index dtypes, from_scipy copies, from_edge_index orientation, sizes ---------------------

@pytest.mark.parametrize("index_dtype", [np.int8, np.uint8, np.int16])
def test_transpose_of_small_integer_indices_holds_row_ids_beyond_their_range(index_dtype):
    # more rows than the index dtype holds: A^T stores A's row ids, which must not wrap
    n = int(np.iinfo(index_dtype).max) + 60
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 3, n).astype(index_dtype)
    A = CSR(np.arange(n + 1), indices, rng.standard_normal(n), (n, 3))
    At = A.T
    assert At.indices.dtype == np.int32 and int(At.indices.max()) == n - 1 and int(At.indices.min()) >= 0
    np.testing.assert_array_equal(At.toarray(), A.toarray().T)
    np.testing.assert_array_equal(At.data, A.data[A.transpose_permutation()])


def test_transpose_keeps_a_small_index_dtype_that_holds_every_row_id():
    A = CSR(np.arange(101), np.zeros(100, np.int8), None, (100, 1))  # row ids up to 99 fit int8
    assert A.T.indices.dtype == np.int8
    np.testing.assert_array_equal(A.T.toarray(), A.toarray().T)


def test_from_scipy_leaves_the_caller_s_matrix_and_arrays_unchanged():
    data, indices, indptr = np.array([1., 2., 3.]), np.array([1, 0, 1], np.int32), np.array([0, 3, 3], np.int32)
    m = sp.csr_matrix((data, indices, indptr), shape=(2, 2))  # unsorted, with a duplicate (0, 1)
    A = CSR.from_scipy(m)
    np.testing.assert_array_equal(data, [1, 2, 3])
    np.testing.assert_array_equal(indices, [1, 0, 1])
    np.testing.assert_array_equal(indptr, [0, 3, 3])
    assert m.nnz == 3  # the duplicate is still there in the caller's matrix
    np.testing.assert_array_equal(A.toarray(), [[2, 4], [0, 0]])
    for a in (A.indptr, A.indices, A.data):
        for b in (data, indices, indptr, m.data, m.indices, m.indptr):
            assert not np.shares_memory(a, b)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_from_scipy_does_not_share_memory_so_later_edits_do_not_reach_the_matrix(fmt):
    m = sp.csr_matrix(np.array([[0., 2.], [3., 0.]])).asformat(fmt)
    A = CSR.from_scipy(m)
    x = tg.tensor(np.eye(2), requires_grad=True)
    tg.spmm(A, x).sum().backward()  # caches A^T
    m.data *= 10
    x.grad = None
    y = tg.spmm(A, x)
    y.sum().backward()
    np.testing.assert_array_equal(y.data, [[0, 2], [3, 0]])
    np.testing.assert_array_equal(x.grad, A.toarray().T @ np.ones((2, 2)))  # forward and backward agree


def test_from_scipy_value_dtypes():
    assert CSR.from_scipy(sp.csr_matrix(np.eye(2, dtype=np.int64))).dtype == np.float32
    assert CSR.from_scipy(sp.csr_matrix(np.eye(2, dtype=np.float32))).dtype == np.float32
    with pytest.raises(TypeError, match="complex"):
        CSR.from_scipy(sp.csr_matrix(np.eye(2) * (1 + 1j)))


DIRECTED = np.array([[0, 0, 1, 3, 3], [1, 2, 2, 0, 2]])  # row 0 sources, row 1 targets


def test_from_edge_index_orientation_by_flow():
    adj = np.zeros((4, 4))
    adj[DIRECTED[0], DIRECTED[1]] = 1
    np.testing.assert_array_equal(CSR.from_edge_index(DIRECTED).toarray(), adj)  # A[source, target]
    np.testing.assert_array_equal(CSR.from_edge_index(DIRECTED, flow="target_to_source").toarray(), adj)
    np.testing.assert_array_equal(CSR.from_edge_index(DIRECTED, flow="source_to_target").toarray(), adj.T)
    with pytest.raises(ValueError, match="flow"):
        CSR.from_edge_index(DIRECTED, flow="in")


def test_from_edge_index_default_is_pyg_to_scipy_sparse_matrix():
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("torch_geometric.utils")
    ref = utils.to_scipy_sparse_matrix(torch.tensor(DIRECTED), num_nodes=4).toarray()
    np.testing.assert_array_equal(CSR.from_edge_index(DIRECTED, 4).toarray(), ref)


@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_of_gcn_norm_with_flow_equals_pyg_gcnconv_on_a_directed_graph(flow, weighted):
    torch = pytest.importorskip("torch")
    pyg_nn = pytest.importorskip("torch_geometric.nn")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3))
    w = rng.uniform(0.5, 2.0, DIRECTED.shape[1]) if weighted else None
    conv = pyg_nn.GCNConv(3, 3, bias=False, flow=flow).double()
    conv.lin.weight.data = torch.eye(3, dtype=torch.float64)  # the layer is then P x: PyG's propagation
    ref = conv(torch.tensor(x), torch.tensor(DIRECTED), None if w is None else torch.tensor(w)).detach().numpy()
    P = tg.gcn_norm(CSR.from_edge_index(DIRECTED, 4, w, flow=flow), dtype=np.float64)
    np.testing.assert_allclose(tg.spmm(P, x).numpy(), ref, rtol=1e-12, atol=1e-12)
    # and the default orientation is not PyG's GCN on this directed graph (so the flag matters)
    if flow == "source_to_target":
        P0 = tg.gcn_norm(CSR.from_edge_index(DIRECTED, 4, w), dtype=np.float64)
        assert np.abs(tg.spmm(P0, x).numpy() - ref).max() > 0.1


def test_from_edge_index_with_source_to_target_flow_is_what_gcnconv_builds():
    from tapegrad.layers.gcn import edge_index_to_csr
    w = np.array([1, 2, 3, 4, 5])
    ours = CSR.from_edge_index(DIRECTED, 4, w, flow="source_to_target")
    theirs = edge_index_to_csr(DIRECTED, 4, w)
    assert ours.dtype == theirs.dtype == np.float32  # integer weights become float32 on both paths
    np.testing.assert_array_equal(ours.toarray(), theirs.toarray())


def test_from_edge_index_integer_and_float16_weights_become_float32():
    for w in (np.array([2, 3]), np.array([2, 3], np.uint8), np.array([2, 3], np.float16)):
        A = CSR.from_edge_index(np.array([[0, 1], [1, 0]]), edge_weight=w)
        assert A.dtype == np.float32
        np.testing.assert_array_equal(A.toarray(), [[0, 2], [3, 0]])
    assert CSR.from_edge_index(np.array([[0], [1]]), edge_weight=np.ones(1)).dtype == np.float64


def test_from_edge_index_sums_duplicate_self_loops_as_pyg_after_coalesce():
    ei = np.array([[0, 0, 0, 1], [0, 0, 1, 0]])
    w = np.array([2., 3., 1., 1.])
    A = CSR.from_edge_index(ei, 2, w)
    np.testing.assert_array_equal(A.toarray(), [[5, 1], [1, 0]])  # the two loops summed: 2 + 3
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_geometric")
    from torch_geometric.nn.conv.gcn_conv import gcn_norm as pyg_gcn_norm
    from torch_geometric.utils import coalesce
    e2, w2 = coalesce(torch.tensor(ei), torch.tensor(w), 2)
    e3, w3 = pyg_gcn_norm(e2, w2, 2)
    Q = sp.coo_matrix((w3.numpy(), (e3[1].numpy(), e3[0].numpy())), shape=(2, 2)).toarray()
    np.testing.assert_allclose(tg.gcn_norm(A, dtype=np.float64).toarray(), Q, rtol=1e-12)


@pytest.mark.parametrize("num_nodes,exc", [(2.5, TypeError), (3.0, TypeError), ("3", TypeError), (True, TypeError),
                                           (None, None), (np.int64(3), None), (0, ValueError)])
def test_from_edge_index_num_nodes_must_be_an_integer(num_nodes, exc):
    ei = np.array([[0, 1], [1, 0]])
    if exc is None:
        assert CSR.from_edge_index(ei, num_nodes).shape[0] == (2 if num_nodes is None else 3)
    else:
        with pytest.raises(exc, match="num_nodes"):
            CSR.from_edge_index(ei, num_nodes)


@pytest.mark.parametrize("indptr,indices,match", [
    ([0.0, 1.7, 2.0], [0, 1], "indptr must hold integers"),
    ([0, 1, 2], [0.9, 1.2], "indices must hold integers"),
    ([0, 1, 2], [True, False], "indices must hold integers"),
])
def test_float_index_lists_are_refused_not_truncated(indptr, indices, match):
    with pytest.raises(TypeError, match=match):
        CSR(indptr, indices)


def test_empty_index_lists_are_fine():
    A = CSR([0, 0], [], shape=(1, 1))
    assert A.nnz == 0 and A.indices.dtype == np.int64


@pytest.mark.parametrize("shape,exc", [
    (2, TypeError), ("ab", TypeError), ((None, 2), TypeError), ((2.5, 2), TypeError), ((2, True), TypeError),
    ((2, 2, 2), ValueError), ((2, -1), ValueError),
])
def test_bad_shapes_are_named(shape, exc):
    with pytest.raises(exc, match="shape must be a pair of non-negative integers"):
        CSR([0, 1, 2], [0, 1], None, shape)


def test_shape_accepts_numpy_integers():
    assert CSR([0, 1, 2], [0, 1], None, (np.int64(2), np.int32(3))).shape == (2, 3)
