"""Layers: what users build models from."""
from .module import Module, ModuleList, Parameter, Sequential
from .basic import Dropout, Embedding, Linear, ReLU
from . import init, optim
