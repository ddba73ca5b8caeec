"""The R-MAT generator (apps/rmat.py): structure of the CSR, the quadrant law, options and errors."""
import numpy as np
import pytest

from tapegrad import CSR
from tapegrad.apps.rmat import rmat, rmat_edges


def test_rmat_returns_a_square_unweighted_csr_with_int32_sorted_unique_columns():
    A = rmat(10, edge_factor=8, seed=1)
    assert isinstance(A, CSR)
    assert A.shape == (1024, 1024)
    assert A.data is None
    assert A.indptr.dtype == np.int64 and A.indices.dtype == np.int32
    assert A.indptr[0] == 0 and A.indptr[-1] == A.nnz == len(A.indices)
    for i in range(A.shape[0]):
        row = A.indices[A.indptr[i]:A.indptr[i + 1]]
        assert np.all(np.diff(row) > 0), f"row {i} has unsorted or repeated columns"
    assert A.indices.min() >= 0 and A.indices.max() < 1024


def test_rmat_merges_duplicates_of_the_raw_edge_list():
    scale, ef, seed = 9, 16, 4
    rows, cols = rmat_edges(scale, ef << scale, seed=seed)
    want = np.unique(rows * (1 << scale) + cols)
    A = rmat(scale, edge_factor=ef, seed=seed)
    got_rows = np.repeat(np.arange(A.shape[0]), np.diff(A.indptr))
    np.testing.assert_array_equal(got_rows * (1 << scale) + A.indices, want)
    assert A.nnz < ef << scale  # a power-law graph draws some edges twice


def test_rmat_keeps_about_edge_factor_entries_per_node():
    A = rmat(14, edge_factor=16, seed=0)
    per_node = A.nnz / A.shape[0]
    assert 12.0 < per_node <= 16.0, per_node


def test_rmat_is_deterministic_per_seed():
    A, B, C = rmat(11, seed=7), rmat(11, seed=7), rmat(11, seed=8)
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    assert A.nnz != C.nnz or not np.array_equal(A.indices, C.indices)


@pytest.mark.parametrize("a,b,c", [(0.57, 0.19, 0.19), (0.25, 0.25, 0.25), (0.45, 0.15, 0.3)])
def test_rmat_edges_fall_in_each_quadrant_with_its_probability_at_every_level(a, b, c):
    scale, m = 6, 200_000
    rows, cols = rmat_edges(scale, m, a, b, c, seed=2)
    tol = 0.01  # about 9 standard deviations of a proportion over 200k draws
    for level in (0, scale // 2, scale - 1):
        top = ((rows >> level) & 1) == 0
        left = ((cols >> level) & 1) == 0
        assert abs((top & left).mean() - a) < tol
        assert abs((top & ~left).mean() - b) < tol
        assert abs((~top & left).mean() - c) < tol
        assert abs((~top & ~left).mean() - (1 - a - b - c)) < tol


def test_rmat_degrees_are_skewed_with_graph500_parameters_and_flat_when_uniform():
    skewed = np.diff(rmat(14, seed=0).indptr)
    flat = np.diff(rmat(14, a=0.25, b=0.25, c=0.25, seed=0).indptr)
    assert skewed.max() > 50 * skewed.mean()
    assert flat.max() < 4 * flat.mean()
    assert skewed[0] == skewed.max()  # unpermuted: node 0 is the biggest hub


def test_rmat_is_directed_by_default_and_symmetric_on_request():
    A = rmat(10, seed=3).to_scipy()
    assert (A != A.T).nnz > 0
    S = rmat(10, seed=3, symmetric=True)
    s = S.to_scipy()
    assert (s != s.T).nnz == 0
    # the symmetric graph is the union of A and A^T
    assert ((A + A.T).astype(bool) != s.astype(bool)).nnz == 0


def test_rmat_permute_relabels_nodes_keeping_the_degree_sequence():
    A, P = rmat(10, seed=5), rmat(10, seed=5, permute=True)
    assert A.nnz == P.nnz
    np.testing.assert_array_equal(np.sort(np.diff(A.indptr)), np.sort(np.diff(P.indptr)))
    assert not np.array_equal(A.indptr, P.indptr)


def test_rmat_edge_cases_scale_zero_and_no_edges():
    one = rmat(0, edge_factor=3)
    assert one.shape == (1, 1) and one.nnz == 1 and one.indices.tolist() == [0]
    empty = rmat(5, edge_factor=0)
    assert empty.shape == (32, 32) and empty.nnz == 0


@pytest.mark.parametrize("kwargs", [dict(scale=-1), dict(scale=2.5), dict(scale=32), dict(scale=4, a=0.6, b=0.3, c=0.2),
                                    dict(scale=4, b=-0.1), dict(scale=4, edge_factor=-1)])
def test_rmat_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        rmat(**kwargs)
