"""Small building blocks: Linear, Embedding, Dropout, ReLU."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..engine import nn as F
from ..engine import ops
from ..engine.ops import as_tensor
from ..engine.tensor import Tensor
from . import init
from .module import Module


class Linear(Module):
    r"""y = x W^T + b, as torch.nn.Linear.

    Args: in_features, out_features, bias=True, dtype=float32, device=None.
    Shapes: x [*, in_features] -> [*, out_features]; weight [out_features, in_features], bias [out_features].
    Initialisation U(-1/sqrt(in_features), 1/sqrt(in_features)) for both, as PyTorch's.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: Any = np.float32,
                 device: str | None = None) -> None:
        super().__init__(dtype, device)
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
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
        x = as_tensor(x)
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
    """Lookup table [num_embeddings, embedding_dim], initialised N(0, 1) as torch.nn.Embedding."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: Any = np.float32, device: str | None = None) -> None:
        super().__init__(dtype, device)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = self.new_parameter((num_embeddings, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.normal_(self.weight)

    def forward(self, ids: Any) -> Tensor:
        return F.embedding(self.weight, ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Any) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    def forward(self, x: Any) -> Tensor:
        return ops.relu(as_tensor(x))
