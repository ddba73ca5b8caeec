"""The engine: Tensor, the tape, and the differentiable ops (each forward beside its backward)."""
from .tensor import Tensor, tensor, as_tensor, from_numpy, from_dlpack, grad, no_grad, enable_grad, set_grad_enabled, is_grad_enabled, detect_anomaly, make_result
from .ops import (add, sub, mul, div, neg, pow, exp, log, tanh, sigmoid, relu, matmul, sum, mean, reshape,
                  transpose, permute, getitem, concat, stack, split, where, masked_fill, softmax, log_softmax,
                  abs, sqrt, floor_divide, unsqueeze, squeeze, flatten, expand, clone)
from .ops import concat as cat  # torch's name
from .extrema import max, min, argmax, argmin
from .nn import cross_entropy, mse, dropout, embedding
from .sparse import spmm, gcn_norm
from .recurrent import lstm_sequence, rnn_sequence
from .recurrent_cuda import set_cuda_graphs, cuda_graphs_enabled
from .gradcheck import gradcheck
from .random import manual_seed
from .backend import cuda_available
