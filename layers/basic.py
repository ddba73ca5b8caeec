"""Small building blocks: Linear, Embedding, Dropout, ReLU."""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ..engine import nn as F
from ..engine import ops
from ..engine.backend import array_module
from ..engine.ops import as_tensor
from ..engine.tensor import Tensor
from . import init
from .module import Module, _as_input


def _check_sizes(**sizes: Any) -> None:
    for name, v in sizes.items():
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


class Linear(Module):
    r"""y = x W^T + b, as torch.nn.Linear.

    Args: in_features, out_features, bias=True, dtype=float32, device=None.
    Shapes: x [*, in_features] (at least 1-D) -> [*, out_features]; weight [out_features, in_features],
    bias [out_features]. Arrays, lists and torch tensors are cast to the module's dtype; a Tensor of
    another dtype raises TypeError (as the other layers, and torch, do).
    Initialisation U(-1/sqrt(in_features), 1/sqrt(in_features)) for both, as PyTorch's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = np.float32,
                 device: str | None = None) -> None:
        super().__init__(dtype, device)
        _check_sizes(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = self.new_parameter((out_features, in_features))
        self.bias = self.new_parameter((out_features,)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Any) -> Tensor:
        x = _as_input(self, x, "input")
        if x.ndim == 0:
            raise ValueError(f"Linear needs an input of at least 1 dimension [*, in_features={self.in_features}], "
                             "got a 0-d (scalar) input")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features in its last dimension, expected "
                             f"in_features={self.in_features} (input shape {x.shape})")
        lead = x.shape[:-1]
        if x.ndim != 2:  # one 2-D GEMM: numpy's batched matmul against a transposed view skips BLAS
            x = ops.reshape(x, (-1, x.shape[-1]))
        y = ops.matmul(x, ops.transpose(self.weight))
        if self.bias is not None:
            y = y + self.bias
        return y if len(lead) == 1 else ops.reshape(y, lead + (self.out_features,))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """Lookup table [num_embeddings, embedding_dim], initialised N(0, 1) as torch.nn.Embedding.

    Args: num_embeddings, embedding_dim, padding_idx=None, dtype=float32, device=None.
    ``padding_idx`` (negative counts from the end): that row is initialised to zeros and gets no
    gradient, so it stays what it is set to (torch's semantics). Shapes: integer ids [*] -> [*, embedding_dim].
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: Any = np.float32, device: str | None = None) -> None:
        super().__init__(dtype, device)
        _check_sizes(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        if padding_idx is not None:
            if not isinstance(padding_idx, numbers.Integral) or isinstance(padding_idx, bool) or \
                    not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be an integer in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % num_embeddings
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = padding_idx
        self.weight = self.new_parameter((self.num_embeddings, self.embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, ids: Any) -> Tensor:
        out = F.embedding(self.weight, ids)
        if self.padding_idx is None:
            return out
        # where the id is padding_idx, the same numbers as a constant: no gradient reaches that row
        xp = array_module(out.data)
        is_pad = xp.asarray(ids.data if isinstance(ids, Tensor) else ids) == self.padding_idx
        return ops.where(is_pad[..., None], Tensor(out.data), out)

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"


class Dropout(Module):
    """Inverted dropout, as torch.nn.Dropout. ``inplace`` is accepted for torch's signature; the result
    is always a new Tensor (the tape keeps the input)."""

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p
        self.inplace = bool(inplace)

    def forward(self, x: Any) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x: Any) -> Tensor:
        return ops.relu(as_tensor(x))
