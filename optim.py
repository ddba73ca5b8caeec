"""``tapegrad.optim``: optimisers and gradient clipping (implemented in layers/optim.py)."""
from .layers.optim import (SGD, Adam, AdamW, Optimizer, clip_grad_norm, clip_grad_norm_, clip_grad_value,
                           clip_grad_value_)

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm", "clip_grad_norm_", "clip_grad_value",
           "clip_grad_value_"]
