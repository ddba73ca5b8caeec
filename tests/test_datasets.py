"""Loaders: the shipped Cora and Tiny Shakespeare, files from a path, validation of bad files, and
row normalisation."""
import hashlib
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import tapegrad as tg
from tapegrad.datasets import DATA_DIR, load_planetoid, load_text, row_normalize


def _cora_arrays():
    with np.load(DATA_DIR / "cora.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def test_shipped_files_are_the_published_ones():
    sums = {"cora.npz": "1f5a177c8a59fbb4183fd32be064c36a3a6e8e0ed9f918349618208d4900ff6b",
            "tinyshakespeare.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"}
    for name, digest in sums.items():
        assert hashlib.sha256((DATA_DIR / name).read_bytes()).hexdigest() == digest


def test_load_cora_shapes_split_and_symmetry():
    d = load_planetoid("cora")
    assert (d.num_nodes, d.num_features, d.num_classes) == (2708, 1433, 7)
    assert d.A.shape == (2708, 2708) and d.A.nnz == 10556 and d.A.data is None
    assert d.x.shape == (2708, 1433) and d.x.nnz == 49216 and d.x.dtype == np.float32
    assert d.y.dtype == np.int64 and d.y.shape == (2708,)
    assert (len(d.train_idx), len(d.val_idx), len(d.test_idx)) == (140, 500, 1000)
    assert np.bincount(d.y[d.train_idx]).tolist() == [20] * 7  # 20 labelled nodes per class
    assert not set(d.train_idx) & set(d.val_idx) and not set(d.val_idx) & set(d.test_idx)
    A = d.A.to_scipy()
    assert (A != A.T).nnz == 0
    assert load_planetoid("CORA").num_nodes == 2708


def test_load_from_a_path_and_structure_only(tmp_path):
    a = _cora_arrays()
    path = tmp_path / "only_graph.npz"
    np.savez(path, adj_indptr=a["adj_indptr"], adj_indices=a["adj_indices"])
    d = load_planetoid(path)
    assert d.x is None and d.y is None and d.num_features == 0 and d.num_classes == 0
    assert d.num_nodes == 2708 and len(d.train_idx) == 0
    full = load_planetoid(str(DATA_DIR / "cora.npz"))
    assert full.num_features == 1433


def _write(tmp_path, name="g.npz", drop=(), **changes):
    a = _cora_arrays()
    for k in drop:
        a.pop(k)
    a.update(changes)
    path = tmp_path / name
    np.savez(path, **a)
    return path


@pytest.mark.parametrize("drop,changes,word", [
    (("adj_indices",), {}, "missing"),
    (("x_data",), {}, "x_data"),
    ((), {"y": np.zeros(5, dtype=np.int64)}, "labels"),
    ((), {"x_shape": np.array([10, 1433])}, "rows"),
    ((), {"train_idx": np.array([0, 5000])}, "train_idx"),
    ((), {"y": np.full(2708, -3)}, "below -1"),
    ((), {"y": np.zeros(2708)}, "integer"),
    ((), {"adj_indices": np.full(10556, 9999, dtype=np.int32)}, "adj"),
    ((), {"adj_indptr": np.arange(3)}, "adj"),
])
def test_load_planetoid_rejects_inconsistent_files(tmp_path, drop, changes, word):
    path = _write(tmp_path, drop=drop, **changes)
    with pytest.raises(ValueError, match=word):
        load_planetoid(path)


def test_load_planetoid_rejects_unlabelled_nodes_in_the_split(tmp_path):
    a = _cora_arrays()
    y = a["y"].copy()
    y[a["test_idx"][0]] = -1
    with pytest.raises(ValueError, match="unlabelled"):
        load_planetoid(_write(tmp_path, y=y))


def test_load_planetoid_rejects_corrupt_truncated_and_pickled_files(tmp_path):
    good = (DATA_DIR / "cora.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="npz"):
        load_planetoid(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(ValueError):
        load_planetoid(garbage)
    # a zip whose member is corrupted (CRC / deflate error)
    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("adj_indptr.npy", np.arange(10).tobytes())
        z.writestr("adj_indices.npy", b"\x93NUMPY garbage")
    with pytest.raises(ValueError):
        load_planetoid(broken)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, adj_indptr=np.array([0, 1], dtype=object), adj_indices=np.array([0]))
    with pytest.raises(ValueError, match="pickle"):
        load_planetoid(pickled)
    with pytest.raises(FileNotFoundError, match="cora"):
        load_planetoid("no_such_graph")


def test_row_normalize_rows_sum_to_one_and_empty_rows_stay_zero():
    m = sp.csr_matrix(np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 5.0]], dtype=np.float32))
    out = row_normalize(tg.CSR.from_scipy(m))
    np.testing.assert_allclose(out.toarray(), [[0.25, 0.75, 0], [0, 0, 0], [0, 0.5, 0.5], [0, 0, 1]], rtol=1e-6)
    assert out.dtype == np.float32
    unweighted = tg.CSR(np.array([0, 2, 2, 3]), np.array([0, 2, 1]), None, (3, 3))
    np.testing.assert_allclose(row_normalize(unweighted).toarray(), [[0.5, 0, 0.5], [0, 0, 0], [0, 1, 0]])
    cora = load_planetoid("cora")
    sums = np.asarray(row_normalize(cora.x).to_scipy().sum(1)).ravel()
    nonempty = np.diff(cora.x.indptr) > 0
    np.testing.assert_allclose(sums[nonempty], 1.0, rtol=1e-5)
    with pytest.raises(TypeError):
        row_normalize(m)


def test_load_text_tinyshakespeare():
    t = load_text("tinyshakespeare")
    assert len(t.text) == 1115394 and len(t.vocab) == 65 and len(t) == 1115394
    assert t.vocab == sorted(t.vocab) and t.vocab[0] == "\n"
    assert t.data.dtype == np.uint8 and t.data.max() == 64
    assert t.decode(t.data[:14]) == "First Citizen:"
    assert all(t.stoi[ch] == i for i, ch in enumerate(t.vocab))
    np.testing.assert_array_equal(t.encode("First"), t.data[:5])
    with pytest.raises(ValueError, match="vocabulary"):
        t.encode("\u00e9")


def test_load_text_from_path_large_vocab_and_bad_files(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text("ba\u00e9ab", encoding="utf-8")
    t = load_text(p)
    assert t.vocab == ["a", "b", "\u00e9"] and t.data.tolist() == [1, 0, 2, 0, 1]
    big = tmp_path / "big.txt"
    big.write_text("".join(chr(0x4E00 + i) for i in range(300)), encoding="utf-8")
    tb = load_text(big)
    assert tb.data.dtype == np.int64 and len(tb.vocab) == 300 and tb.decode(tb.data) == big.read_text("utf-8")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        load_text(latin)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="binary"):
        load_text(binary)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        load_text(empty)
    with pytest.raises(FileNotFoundError):
        load_text(tmp_path / "missing.txt")


@pytest.mark.parametrize("dense", [
    [[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]],               # the last row empty
    [[0.0, 0.0], [1.0, 3.0], [0.0, 0.0], [0.0, 0.0]],   # empty first and two empty last rows
    [[0.0, 0.0], [0.0, 0.0]],                           # no entries at all
])
def test_row_normalize_with_empty_rows_at_either_end(dense):
    m = sp.csr_matrix(np.array(dense, dtype=np.float32))
    sums = np.asarray(m.sum(1)).ravel()
    expect = np.divide(m.toarray(), sums[:, None], out=np.zeros(m.shape), where=sums[:, None] != 0)
    np.testing.assert_allclose(row_normalize(tg.CSR.from_scipy(m)).toarray(), expect, rtol=1e-6)
    unweighted = tg.CSR(m.indptr, m.indices, None, m.shape)
    np.testing.assert_allclose(row_normalize(unweighted).toarray(), (m.toarray() != 0) / np.maximum(
        (m.toarray() != 0).sum(1, keepdims=True), 1), rtol=1e-6)


def test_load_planetoid_names_a_2d_adj_indptr(tmp_path):
    path = tmp_path / "adj2d.npz"
    np.savez(path, adj_indptr=np.array([[0, 1, 2]]), adj_indices=np.array([1, 0], np.int32))
    with pytest.raises(ValueError, match="adj_indptr must be a 1-D"):
        load_planetoid(path)
