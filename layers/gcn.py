r"""Graph convolution (Kipf & Welling, ICLR 2017): GCNConv and the GCN stack, with PyG's names.

Graphs come in two forms:

- a :class:`tapegrad.CSR` adjacency ``A`` [N, N], used as the propagation matrix itself: row ``i``
  gathers from the columns ``j`` it stores, so ``A[i, j]`` is the weight of the message j -> i
  (rows are targets). For an undirected graph (a symmetric A) the distinction does not matter.
- a PyG-style ``edge_index`` [2, E] (numpy array, CPU torch tensor or list), read with PyG's
  ``flow="source_to_target"`` convention: edge e carries a message from ``edge_index[0, e]`` (source)
  to ``edge_index[1, e]`` (target). It becomes the CSR with ``A[target, source] = edge_weight[e]``,
  duplicate edges summed (as PyG's sum aggregation sums their messages).

Node features are a dense [N, F] Tensor (or array), or, for the first layer of a bag-of-words model,
a sparse :class:`tapegrad.CSR` [N, F]: then ``X W`` is one ``spmm`` over the stored entries.
"""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..engine import nn as F
from ..engine import ops
from ..engine import random as _random
from ..engine.backend import array_module, is_cupy, to_device
from ..engine.sparse import gcn_norm, spmm
from ..engine.tensor import Tensor
from ..kernels.csr import CSR
from . import init
from .basic import Linear
from .module import Module, ModuleList


class _GlorotLinear(Linear):
    """PyG's ``Linear(..., weight_initializer='glorot')``: Glorot-uniform weight, no bias by default."""

    def reset_parameters(self) -> None:
        init.glorot_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)


def _host_array(a: Any, name: str) -> np.ndarray:
    """numpy view of an array-like (numpy, list, tapegrad Tensor, torch tensor); a copy of a cupy array."""
    if isinstance(a, Tensor):
        return a.numpy()
    if is_cupy(a):
        return a.get()
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor
        return a.detach().cpu().numpy()
    try:
        return np.asarray(a)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be an array, got {type(a).__name__}") from e


def _feature_tensor(x: Any, dtype: Any, device: str) -> Tensor:
    """Dense features given as an array (numpy, cupy, list, torch tensor) as a Tensor in the layer's dtype
    on its device; a cupy array on the GPU is not sent through the host."""
    if is_cupy(x) and device == "cuda":
        return Tensor(x.astype(dtype, copy=False))
    return Tensor(to_device(np.asarray(_host_array(x, "x"), dtype=dtype), device))


def edge_index_to_csr(edge_index: Any, num_nodes: int, edge_weight: Any = None, dtype: Any = None,
                      one_self_loop: bool = False) -> CSR:
    """The propagation-ready adjacency of a PyG ``edge_index``: ``A[target, source] = weight``.

    edge_index: [2, E] integers, row 0 the sources, row 1 the targets (PyG's ``source_to_target``
    flow); edge_weight: [E] or None (unweighted); duplicate edges are summed. ``one_self_loop``: a
    self-loop listed several times is kept once, with the weight of its last listing (PyG's
    ``add_remaining_self_loops``, which GCNConv's normalisation uses). Returns a CSR [N, N].
    """
    ei = _host_array(edge_index, "edge_index")
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {ei.shape}")
    if ei.dtype.kind not in "iu":
        raise TypeError(f"edge_index must hold integer node ids, got dtype {ei.dtype}")
    if ei.size and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
        raise ValueError(f"edge_index holds node ids in [{int(ei.min())}, {int(ei.max())}], "
                         f"outside [0, {num_nodes}) for a graph of {num_nodes} nodes")
    w = None
    if edge_weight is not None:
        w = _host_array(edge_weight, "edge_weight")
        if w.shape != (ei.shape[1],):
            raise ValueError(f"edge_weight must have shape ({ei.shape[1]},) to match edge_index, got {w.shape}")
        if w.dtype.kind not in "fiu":
            raise TypeError(f"edge_weight must be numeric, got dtype {w.dtype}")
        w = w.astype(np.dtype(dtype) if dtype is not None else np.float32, copy=False)
    if one_self_loop:
        ei, w = _one_self_loop_per_node(ei, w)
    # row = target, column = source: the CSR row i gathers the messages sent to node i.
    return CSR.from_edge_index(ei[::-1], num_nodes=num_nodes, edge_weight=w)


def _one_self_loop_per_node(ei: np.ndarray, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Drop all but the last listing of each repeated self-loop (other edges untouched, order kept)."""
    loops = np.flatnonzero(ei[0] == ei[1])
    nodes = ei[0, loops]
    if len(np.unique(nodes)) == len(nodes):
        return ei, w
    # torch's index_put in PyG's add_remaining_self_loops leaves the last listed weight
    _, last_rev = np.unique(nodes[::-1], return_index=True)
    keep = np.ones(ei.shape[1], dtype=bool)
    keep[loops] = False
    keep[loops[::-1][last_rev]] = True
    return ei[:, keep], (None if w is None else w[keep])


class GCNConv(Module):
    r"""The graph convolution of Kipf & Welling, "Semi-supervised Classification with Graph
    Convolutional Networks" (ICLR 2017), as ``torch_geometric.nn.GCNConv``:

    .. math::
        \mathbf{X}' = \hat{\mathbf{D}}^{-1/2} \hat{\mathbf{A}} \hat{\mathbf{D}}^{-1/2}
        \mathbf{X} \mathbf{\Theta} + \mathbf{b},

    with :math:`\hat{\mathbf{A}} = \mathbf{A} + \mathbf{I}` (:math:`\mathbf{A} + 2\mathbf{I}` when
    ``improved``) and :math:`\hat{D}_{ii} = \sum_j \hat{A}_{ij}`. Node-wise,

    .. math::
        \mathbf{x}'_i = \mathbf{\Theta}^\top \sum_{j \in \mathcal{N}(i) \cup \{i\}}
        \frac{e_{j,i}}{\sqrt{\hat{d}_j \hat{d}_i}} \mathbf{x}_j + \mathbf{b},

    where :math:`e_{j,i}` is the weight of the edge from source j to target i (1 by default).
    Self-loops are added only to nodes without one (an existing loop keeps its weight); as PyG's
    ``add_remaining_self_loops``, a self-loop listed several times in an edge_index counts once, with
    the weight of its last listing (other duplicate edges are summed, as PyG's sum aggregation does).
    A node of zero degree gets a zero row. The product is evaluated as :math:`(P X) \Theta` or
    :math:`P (X \Theta)`, whichever propagates at the smaller width.

    Args:
        in_channels (int): size of each input node feature vector.
        out_channels (int): size of each output node feature vector.
        improved (bool): use :math:`\mathbf{A} + 2\mathbf{I}` (default ``False``). Note: PyG 2.8 adds
            weight-1 loops when ``improved=True`` and no ``edge_weight`` is passed; this layer always
            adds weight-2 loops (PyG's result with explicit unit edge weights).
        cached (bool): keep the normalised adjacency of the graph last seen and reuse it while the
            same graph object (CSR or edge_index array, and edge_weight) is passed again; for
            transductive training on one graph (default ``False``). ``.to()`` clears it.
        add_self_loops (bool or None): add self-loops before normalising; ``None`` (default) means
            ``normalize``, as in PyG. ``True`` with ``normalize=False`` is an error, as in PyG.
        normalize (bool): apply the symmetric normalisation; if ``False`` the adjacency (with its
            values, or ones) is used as given (default ``True``).
        bias (bool): learn an additive bias (default ``True``).
        dtype: float32 (default) or float64. device: ``'cpu'`` (default) or ``'cuda'``.

    Parameters (PyG's names, so a PyG ``state_dict`` loads unchanged):
        ``bias`` [out_channels] (zeros), ``lin.weight`` [out_channels, in_channels] (Glorot uniform).

    Shapes:
        - x: [N, in_channels] dense Tensor/array, or a CSR [N, in_channels] of features
        - edge_index: CSR adjacency [N, N] (rows are targets), or edge_index [2, E] (source, target)
        - edge_weight: [E] for an edge_index, [nnz] (replacing the stored values) for a CSR, or None
        - output: [N, out_channels]
    """

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, cached: bool = False,
                 add_self_loops: bool | None = None, normalize: bool = True, bias: bool = True,
                 dtype: Any = np.float32, device: str | None = None) -> None:
        super().__init__(dtype, device)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if add_self_loops is None:
            add_self_loops = normalize
        if add_self_loops and not normalize:
            raise ValueError("GCNConv cannot add self-loops without normalisation (add_self_loops=True "
                             "needs normalize=True), as in PyG")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.improved, self.cached = bool(improved), bool(cached)
        self.add_self_loops, self.normalize = bool(add_self_loops), bool(normalize)
        self._cache: tuple | None = None
        self.lin = _GlorotLinear(self.in_channels, self.out_channels, bias=False, dtype=dtype, device=device)
        self.bias = self.new_parameter((self.out_channels,)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        if self.bias is not None:
            init.zeros_(self.bias)
        self._cache = None

    def _after_to(self) -> None:
        self._cache = None

    # ---- the propagation matrix ------------------------------------------------------------------------------
    def propagation_matrix(self, edge_index: Any, num_nodes: int, edge_weight: Any = None) -> CSR:
        """P = D^-1/2 (A + I) D^-1/2 for this layer's settings (or A itself when ``normalize=False``),
        as a CSR [N, N] of the layer's dtype on its device; from the cache when ``cached``."""
        if self.cached and self._cache is not None:
            src, w, P = self._cache
            if src is edge_index and w is edge_weight and P.shape[0] == num_nodes:
                return P
        if num_nodes <= 0:
            raise ValueError("x has zero nodes; a GCN needs at least one node")
        if isinstance(edge_weight, Tensor) and edge_weight.requires_grad:
            raise NotImplementedError("GCNConv treats edge_weight as a constant; gradients with respect to "
                                      "edge weights are not supported")
        if isinstance(edge_index, CSR):
            A = edge_index
            if A.shape != (num_nodes, num_nodes):
                raise ValueError(f"the adjacency (edge_index) has shape {A.shape} but x has {num_nodes} "
                                 f"nodes; expected ({num_nodes}, {num_nodes})")
            if edge_weight is not None:
                w = _host_array(edge_weight, "edge_weight")
                if w.shape != (A.nnz,):
                    raise ValueError(f"edge_weight for a CSR adjacency must have shape ({A.nnz},) (one value "
                                     f"per stored entry), got {w.shape}")
                A = CSR(A.indptr, A.indices, to_device(w.astype(self.dtype), A.device), A.shape)
        elif hasattr(edge_index, "layout") and str(getattr(edge_index, "layout", "")) != "torch.strided":
            raise TypeError("edge_index must be a tapegrad.CSR or a [2, E] edge_index, not a torch sparse "
                            "tensor (convert it with tapegrad.CSR.from_scipy)")
        else:
            A = edge_index_to_csr(edge_index, num_nodes, edge_weight, self.dtype,
                                  one_self_loop=self.normalize and self.add_self_loops)
        A = A.to(self.device)
        if self.normalize:
            P = gcn_norm(A, add_self_loops=self.add_self_loops, improved=self.improved, dtype=self.dtype)
        else:
            P = A if A.dtype == self.dtype else A.astype(self.dtype)
        if self.cached:
            self._cache = (edge_index, edge_weight, P)
        return P

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(self, x: Any, edge_index: Any, edge_weight: Any = None, *, x_values: Tensor | None = None) -> Tensor:
        """[N, in_channels] features and a graph -> [N, out_channels].

        ``x_values`` ([nnz] Tensor, only with a CSR ``x``) replaces the stored feature values: this is
        how :class:`GCN` applies dropout to sparse input features without rebuilding the matrix.
        """
        sparse_x = isinstance(x, CSR)
        if sparse_x:
            if x.shape[1] != self.in_channels:
                raise ValueError(f"x has {x.shape[1]} features but the layer expects in_channels="
                                 f"{self.in_channels}")
            x = x.to(self.device)
        else:
            if x_values is not None:
                raise ValueError("x_values is only meaningful with a sparse (CSR) x")
            if isinstance(x, Tensor):
                if x.dtype != self.dtype:
                    raise TypeError(f"x has dtype {x.dtype} but the layer is {self.dtype}; cast one of them")
            else:
                x = _feature_tensor(x, self.dtype, self.device)
            if x.ndim != 2:
                raise ValueError(f"x must be 2-D [num_nodes, in_channels], got shape {x.shape}")
            if x.shape[1] != self.in_channels:
                raise ValueError(f"x has {x.shape[1]} features but the layer expects in_channels="
                                 f"{self.in_channels}")
        n = x.shape[0]
        P = self.propagation_matrix(edge_index, n, edge_weight)
        w_t = ops.transpose(self.lin.weight)  # [in, out]
        if sparse_x:
            out = spmm(P, spmm(x, w_t, x_values))
        elif self.in_channels > self.out_channels:
            out = spmm(P, ops.matmul(x, w_t))
        else:
            out = ops.matmul(spmm(P, x), w_t)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}"


def sparse_dropout_values(x: CSR, p: float, training: bool = True, dtype: Any = np.float32) -> Tensor | None:
    """Dropout on the stored entries of a sparse feature matrix, as a [nnz] values Tensor (or None).

    Each stored value survives with probability 1 - p and is scaled by 1 / (1 - p) (inverted dropout,
    Kipf & Welling's ``sparse_dropout``); zeros stay zero, so this has the same distribution as dense
    dropout on the densified matrix. Returns None (use the stored values) when not training or p == 0.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return None
    dtype = np.dtype(dtype)
    if p == 1.0:
        vals = array_module(x.indices).zeros(x.nnz, dtype)
    else:  # drawn where the values live, as dense dropout's masks: on the GPU no host draw or transfer
        vals = _random.dropout_mask((x.nnz,), p, x.device, dtype)
    if x.data is not None:
        vals *= x.data.astype(dtype, copy=False)
    return Tensor(vals)


class GCN(Module):
    r"""A stack of :class:`GCNConv` layers (Kipf & Welling):

    .. math::
        \mathbf{H}^{(0)} = \mathbf{X}, \qquad
        \mathbf{H}^{(l+1)} = \sigma\!\left(P\, \mathrm{dropout}(\mathbf{H}^{(l)})\, \mathbf{\Theta}^{(l)}
        + \mathbf{b}^{(l)}\right),

    with :math:`P = \hat{D}^{-1/2} (A + I) \hat{D}^{-1/2}`, :math:`\sigma` = ReLU between layers and
    the identity after the last one (its output are logits). Dropout is applied to the input features
    and to every hidden layer, as in Kipf & Welling. For sparse (CSR) input features the input dropout
    drops stored entries (:func:`sparse_dropout_values`), which equals dense dropout in distribution.

    **Not PyG's** ``torch_geometric.nn.models.GCN``, although the layers and parameter names are PyG's:

    - The arguments are ``GCN(in_channels, hidden_channels, out_channels, *, num_layers=2, ...)``:
      ``out_channels`` is third and required, and everything after it is keyword-only. PyG's order
      is ``GCN(in_channels, hidden_channels, num_layers, out_channels=None, ...)``. A PyG-style
      positional call such as ``GCN(1433, 16, 2, 7)`` raises a TypeError here; it does not build a
      7-layer model. Beware that a 3-argument PyG call ``GCN(1433, 16, 2)`` (2 layers, 16 outputs in
      PyG) means 2 *outputs* here. Keywords for every argument work in both libraries.
    - Dropout is Kipf & Welling's, which differs from PyG in training mode: the default is 0.5 (PyG:
      0.0), and it is applied before *every* conv, input features included. PyG drops only after each
      hidden activation, so its ``num_layers=1`` model has no dropout at all. In eval mode the two agree
      (same weights, same outputs).
    - The activation is always ReLU and there is no normalisation layer: ``act=`` and ``norm=`` are
      refused.

    Args:
        in_channels, hidden_channels, out_channels (int): input, hidden and output widths.
        num_layers (int, keyword-only): number of GCNConv layers (default 2).
        dropout (float, keyword-only): dropout probability (default 0.5).
        cached, improved, add_self_loops, normalize, bias (keyword-only): passed to every
            :class:`GCNConv` (``cached=True`` suits transductive training on one graph).
        dtype, device (keyword-only): as for every Module.

    Parameters: ``convs.0.bias``, ``convs.0.lin.weight``, ... (``convs`` is a ModuleList).

    Shapes: x [N, in_channels] (dense or CSR), edge_index CSR [N, N] or [2, E] -> [N, out_channels].
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, *args: Any,
                 num_layers: int = 2, dropout: float = 0.5, cached: bool = False, improved: bool = False,
                 add_self_loops: bool | None = None, normalize: bool = True, bias: bool = True,
                 dtype: Any = np.float32, device: str | None = None) -> None:
        # *args only catches PyG's positional order, GCN(in, hidden, num_layers, out), with a message
        if args:
            given = ", ".join(repr(a) for a in (in_channels, hidden_channels, out_channels, *args))
            rest = ", <the others as keywords>" if len(args) > 1 else ""
            pyg = f"GCN({in_channels!r}, {hidden_channels!r}, {args[0]!r}, num_layers={out_channels!r}{rest})"
            raise TypeError(f"GCN({given}): tg.GCN takes 3 positional arguments (in_channels, hidden_channels, "
                            f"out_channels), got {3 + len(args)}; num_layers and the rest are keyword-only. "
                            "Unlike PyG's GCN(in_channels, hidden_channels, num_layers, out_channels), "
                            f"out_channels comes third: for PyG's meaning write {pyg}")
        super().__init__(dtype, device)
        for name, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                        ("out_channels", out_channels), ("num_layers", num_layers)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(dropout, (bool, np.bool_)) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a number in [0, 1] (the probability of zeroing an element), "
                            f"got {type(dropout).__name__} {dropout!r}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.in_channels, self.hidden_channels = int(in_channels), int(hidden_channels)
        self.out_channels = int(out_channels)
        self.num_layers, self.dropout = int(num_layers), float(dropout)
        widths = [self.in_channels] + [self.hidden_channels] * (self.num_layers - 1) + [self.out_channels]
        kw = dict(improved=improved, cached=cached, add_self_loops=add_self_loops, normalize=normalize,
                  bias=bias, dtype=dtype, device=device)
        self.convs = ModuleList([GCNConv(widths[i], widths[i + 1], **kw) for i in range(self.num_layers)],
                                dtype=dtype, device=device)

    def forward(self, x: Any, edge_index: Any, edge_weight: Any = None) -> Tensor:
        h = x
        last = self.num_layers - 1
        for i, conv in enumerate(self.convs):
            if isinstance(h, CSR):
                h = h.to(self.device)  # a no-op when the features already live there (pass them so)
                vals = sparse_dropout_values(h, self.dropout, self.training, self.dtype)
                h = conv(h, edge_index, edge_weight, x_values=vals)
            else:
                if not isinstance(h, Tensor):
                    h = _feature_tensor(h, self.dtype, self.device)
                h = conv(F.dropout(h, self.dropout, self.training), edge_index, edge_weight)
            if i < last:
                h = ops.relu(h)
        return h

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_channels}, {self.out_channels}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}")
