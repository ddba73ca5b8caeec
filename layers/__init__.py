"""Layers: what users build models from."""
from .module import Module, ModuleList, Parameter, Sequential
from .basic import Dropout, Embedding, Linear, ReLU
from .gcn import GCN, GCNConv
from .tbptt import TBPTT, detach_state, tbptt_windows
from . import graph, init, lr_scheduler, optim
from .rnn import LSTM, RNN, LSTMCell, RNNCell
