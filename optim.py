"""``tapegrad.optim``: optimisers, gradient clipping (layers/optim.py) and learning-rate schedulers
(``tapegrad.optim.lr_scheduler``, layers/lr_scheduler.py)."""
import sys

from .layers import lr_scheduler
from .layers.optim import (SGD, Adam, AdamW, Optimizer, clip_grad_norm, clip_grad_norm_, clip_grad_value,
                           clip_grad_value_)

# so torch's spelling ``from tapegrad.optim.lr_scheduler import StepLR`` works although optim is a module
sys.modules[__name__ + ".lr_scheduler"] = lr_scheduler

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm", "clip_grad_norm_", "clip_grad_value",
           "clip_grad_value_", "lr_scheduler"]
