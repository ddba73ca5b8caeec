"""Data sets shipped with tapegrad, and loaders for files in the same formats.

- ``load_planetoid('cora')``: the Cora citation graph with the Planetoid split (Kipf & Welling's data);
  any ``.npz`` in the graph format (``adj_*``, optional ``x_*``, ``y``, split indices) loads from a path.
- ``load_text('tinyshakespeare')``: Tiny Shakespeare as a character vocabulary and an index array.
- ``row_normalize(x)``: D^-1 X on a sparse feature matrix (Kipf & Welling's feature preprocessing).

The graph .npz format (read with ``allow_pickle=False``): ``adj_indptr`` int64 [N+1], ``adj_indices``
int32 [nnz] (symmetric, unweighted, sorted columns); optionally ``x_indptr``, ``x_indices``, ``x_data``,
``x_shape`` (a CSR feature matrix), ``y`` int64 [N] (-1 = unlabelled), ``train_idx``, ``val_idx``,
``test_idx`` int64. A file with only ``adj_*`` keys is structure-only.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.csr import CSR

__all__ = ["Planetoid", "Text", "load_planetoid", "load_text", "row_normalize", "DATA_DIR"]

DATA_DIR = Path(__file__).resolve().parent
_SHIPPED_GRAPHS = {"cora": "cora.npz"}
_SHIPPED_TEXTS = {"tinyshakespeare": "tinyshakespeare.txt", "tiny_shakespeare": "tinyshakespeare.txt",
                  "shakespeare": "tinyshakespeare.txt"}
_FEATURE_KEYS = ("x_indptr", "x_indices", "x_data", "x_shape")
_SPLIT_KEYS = ("train_idx", "val_idx", "test_idx")


@dataclass(repr=False)
class Planetoid:
    """A node-classification graph: adjacency, optional sparse features, labels and split.

    A: CSR [N, N] adjacency (unweighted: ``A.data is None``); x: CSR [N, F] features or None
    (structure-only); y: int64 [N] labels (-1 unlabelled) or None; train_idx / val_idx / test_idx:
    int64 node ids (empty when the file has no split).
    """

    A: CSR
    x: CSR | None
    y: np.ndarray | None
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    name: str = ""

    @property
    def num_nodes(self) -> int:
        return self.A.shape[0]

    @property
    def num_edges(self) -> int:
        """Stored adjacency entries (each undirected edge counts twice)."""
        return self.A.nnz

    @property
    def num_features(self) -> int:
        return 0 if self.x is None else self.x.shape[1]

    @property
    def num_classes(self) -> int:
        if self.y is None or not (self.y >= 0).any():
            return 0
        return int(self.y.max()) + 1

    def __repr__(self) -> str:
        return (f"Planetoid({self.name!r}, num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"num_features={self.num_features}, num_classes={self.num_classes}, "
                f"train/val/test={len(self.train_idx)}/{len(self.val_idx)}/{len(self.test_idx)})")


def _resolve(name_or_path: Any, shipped: dict, kind: str) -> Path:
    if isinstance(name_or_path, str) and name_or_path.lower() in shipped:
        return DATA_DIR / shipped[name_or_path.lower()]
    try:
        path = Path(name_or_path)
    except TypeError:
        raise TypeError(f"expected a data set name or a path, got {type(name_or_path).__name__}") from None
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} named {str(name_or_path)!r}: not a shipped data set "
                                f"({', '.join(sorted(set(shipped)))}) and no such file")
    return path


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{path} is not an .npz archive (no zip header): corrupt, or not a graph file")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError(f"{path} is a single .npy array, not an .npz archive")
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise ValueError(f"{path} is not an .npz archive of plain arrays (numpy would need to unpickle "
                             f"it, which is refused): {e}") from e
        raise ValueError(f"{path} is not a readable .npz archive: {e}") from e
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as e:
        raise ValueError(f"{path} is not a readable .npz archive (corrupt or truncated): {e}") from e


def _int_vector(d: dict, key: str, path: Path) -> np.ndarray:
    a = d[key]
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise ValueError(f"{path}: {key} must be a 1-D integer array, got {a.dtype} {a.shape}")
    return a.astype(np.int64, copy=False)


def _csr(d: dict, prefix: str, data: Any, shape: tuple, path: Path) -> CSR:
    indptr, indices = d[f"{prefix}_indptr"], d[f"{prefix}_indices"]
    if indptr.ndim != 1 or len(indptr) != shape[0] + 1:
        raise ValueError(f"{path}: {prefix}_indptr must have {shape[0] + 1} entries for {shape[0]} rows, "
                         f"got shape {indptr.shape}")
    try:
        return CSR(indptr, indices, data, shape)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: inconsistent {prefix} CSR arrays: {e}") from e


def load_planetoid(name_or_path: Any = "cora") -> Planetoid:
    """Load a graph in the tapegrad .npz format: ``'cora'`` (shipped) or a path to any such file.

    Returns a :class:`Planetoid` (A, x, y, train_idx, val_idx, test_idx, num_nodes, num_features,
    num_classes). Raises FileNotFoundError for an unknown name, ValueError for a corrupt or truncated
    archive, missing keys, inconsistent shapes, node ids or labels out of range.
    """
    path = _resolve(name_or_path, _SHIPPED_GRAPHS, "graph")
    d = _read_npz(path)
    missing = [k for k in ("adj_indptr", "adj_indices") if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a graph file needs adj_indptr and adj_indices")
    if d["adj_indptr"].ndim != 1:
        raise ValueError(f"{path}: adj_indptr must be a 1-D integer array [N + 1], got shape {d['adj_indptr'].shape}")
    n = len(d["adj_indptr"]) - 1
    if n <= 0:
        raise ValueError(f"{path}: the graph has no nodes")
    A = _csr(d, "adj", None, (n, n), path)

    x = None
    present = [k for k in _FEATURE_KEYS if k in d]
    if present:
        if len(present) != len(_FEATURE_KEYS):
            raise ValueError(f"{path}: features need all of {list(_FEATURE_KEYS)}, missing "
                             f"{[k for k in _FEATURE_KEYS if k not in d]}")
        shape = d["x_shape"]
        if shape.shape != (2,) or shape.dtype.kind not in "iu":
            raise ValueError(f"{path}: x_shape must be two integers, got {shape.dtype} {shape.shape}")
        shape = (int(shape[0]), int(shape[1]))
        if shape[0] != n:
            raise ValueError(f"{path}: the features have {shape[0]} rows but the graph has {n} nodes")
        data = d["x_data"]
        if data.dtype.kind != "f":
            raise ValueError(f"{path}: x_data must be floating point, got {data.dtype}")
        x = _csr(d, "x", data.astype(np.float32) if data.dtype not in (np.float32, np.float64) else data, shape, path)

    y = None
    if "y" in d:
        y = _int_vector(d, "y", path)
        if len(y) != n:
            raise ValueError(f"{path}: y has {len(y)} labels but the graph has {n} nodes")
        if (y < -1).any():
            raise ValueError(f"{path}: y holds labels below -1 (-1 marks an unlabelled node)")

    splits = {}
    for key in _SPLIT_KEYS:
        idx = _int_vector(d, key, path) if key in d else np.zeros(0, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{path}: {key} holds node ids outside [0, {n})")
        if idx.size and y is not None and (y[idx] < 0).any():
            raise ValueError(f"{path}: {key} includes unlabelled nodes (y = -1)")
        if idx.size and y is None:
            raise ValueError(f"{path}: {key} given but the file has no labels y")
        splits[key] = idx
    name = path.stem if not (isinstance(name_or_path, str) and name_or_path.lower() in _SHIPPED_GRAPHS) \
        else name_or_path.lower()
    return Planetoid(A, x, y, splits["train_idx"], splits["val_idx"], splits["test_idx"], name)


def row_normalize(x: CSR) -> CSR:
    """D^-1 X: each row divided by its sum (Kipf & Welling's feature preprocessing); rows summing to
    zero stay zero. Keeps the pattern (including any stored zeros); values in X's dtype (float32 for
    an unweighted matrix). Operates on the host and returns a CSR on X's device.
    """
    if not isinstance(x, CSR):
        raise TypeError(f"row_normalize needs a tapegrad.CSR, got {type(x).__name__}")
    host = x.to("cpu")
    dtype = host.dtype or np.dtype(np.float32)
    vals = np.ones(host.nnz, dtype=dtype) if host.data is None else host.data
    counts = np.diff(host.indptr)
    rows = np.repeat(np.arange(len(counts)), counts)
    # bincount, not add.reduceat: reduceat is handed an out-of-range start for trailing empty rows
    sums = np.bincount(rows, weights=vals.astype(np.float64), minlength=len(counts))
    inv = np.where(sums != 0, 1.0 / np.where(sums != 0, sums, 1.0), 0.0)
    out = CSR(host.indptr, host.indices, (vals * inv[rows]).astype(dtype), host.shape)
    return out.to(x.device)


@dataclass(repr=False)
class Text:
    """A character corpus: ``text``, ``vocab`` (sorted distinct characters), ``stoi`` (char -> id),
    and ``data`` (the text as ids: uint8 when the vocabulary has at most 256 characters, else int64)."""

    text: str
    vocab: list[str]
    stoi: dict[str, int] = field(default_factory=dict)
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))

    @property
    def itos(self) -> list[str]:
        return self.vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        try:
            return np.array([self.stoi[ch] for ch in s], dtype=self.data.dtype)
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Any) -> str:
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Text({len(self.text)} characters, vocab_size={len(self.vocab)})"


def load_text(name_or_path: Any = "tinyshakespeare") -> Text:
    """A UTF-8 text file as a character-level corpus: ``'tinyshakespeare'`` (shipped) or a path.

    Returns :class:`Text` with ``vocab`` (sorted list of distinct characters), ``stoi`` and ``data``.
    A file that is not UTF-8 text (binary, NUL bytes) or is empty raises ValueError.
    """
    path = _resolve(name_or_path, _SHIPPED_TEXTS, "text")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ValueError(f"{path} is a binary file (it contains NUL bytes), not UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None
    if not text:
        raise ValueError(f"{path} is empty")
    vocab = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(vocab)}
    if len(vocab) <= 256:
        table = np.zeros(max(map(ord, vocab)) + 1, dtype=np.uint8)
        table[[ord(ch) for ch in vocab]] = np.arange(len(vocab), dtype=np.uint8)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        data = table[codes]
    else:
        data = np.array([stoi[ch] for ch in text], dtype=np.int64)
    return Text(text, vocab, stoi, data)
