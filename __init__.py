"""tapegrad: a small reverse-mode tape autodiff engine on Numba CPU kernels and CuPy / Numba-CUDA GPU
kernels, with GCN, RNN and LSTM layers on top.

    import tapegrad as tg
    x = tg.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()      # x.grad == 2 x
"""
from .engine import (Tensor, tensor, as_tensor, from_numpy, from_dlpack, grad, no_grad, enable_grad, set_grad_enabled, is_grad_enabled, detect_anomaly, gradcheck,
                     manual_seed, cuda_available, set_cuda_graphs, cuda_graphs_enabled,
                     add, sub, mul, div, neg, pow, exp, log, tanh, sigmoid, relu, matmul, sum, mean, reshape,
                     transpose, permute, concat, stack, split, where, masked_fill, softmax, log_softmax,
                     cross_entropy, mse, dropout, embedding, spmm, gcn_norm,
                     abs, sqrt, floor_divide, unsqueeze, squeeze, flatten, expand, clone, cat, max, min, argmax,
                     argmin)
from .kernels import CSR
from . import kernels

__version__ = "0.1.0"

from . import layers, optim
from .layers import (Module, ModuleList, Parameter, Sequential, Linear, Embedding, Dropout, ReLU, GCN, GCNConv,
                     RNN, LSTM, RNNCell, LSTMCell, TBPTT, detach_state)
from .layers.graph import (normalized_laplacian, laplacian_eigh, graph_fourier, inverse_graph_fourier,
                           grid_graph, reorder_nodes)
from . import datasets
from .layers.checkpoint import save, load


def profile(trace: bool = True):
    """``with tapegrad.profile() as prof:`` records every kernel and engine op; see engine/profiler.py."""
    from .engine.profiler import profile as _profile
    return _profile(trace)
