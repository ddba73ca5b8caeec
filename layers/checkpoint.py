"""Checkpoints: a module's parameters and an optimiser's state in one .npz, written atomically.

The file is a plain .npz (no pickle): ``model/<name>`` arrays, ``optim/<key>`` arrays and a
``format`` marker. It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target, so a process killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .module import Module

FORMAT = "tapegrad-checkpoint-1"


def save(path: str | os.PathLike, module: Module, optimizer: Any = None) -> None:
    """Write ``module.state_dict()`` (and ``optimizer.state_dict()``) to ``path`` atomically."""
    if not isinstance(module, Module):
        raise TypeError(f"module must be a tapegrad Module, got {type(module).__name__}")
    arrays = {"format": np.array(FORMAT)}
    for name, value in module.state_dict().items():
        arrays[f"model/{name}"] = value
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arrays[f"optim/{key}"] = np.asarray(value)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load(path: str | os.PathLike, module: Module, optimizer: Any = None) -> None:
    """Restore what :func:`save` wrote into ``module`` (and ``optimizer``); bit-exact for the same dtype.

    A missing, truncated or corrupted file, or one that is not a tapegrad checkpoint, raises ValueError
    and leaves the module and optimiser unchanged.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupted?): {e}") from None
    if str(arrays.get("format", "")) != FORMAT:
        raise ValueError(f"{path} is not a tapegrad checkpoint (no '{FORMAT}' marker)")
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    if optimizer is not None and not optim:
        raise ValueError(f"{path} holds no optimizer state")
    module.load_state_dict(model)
    if optimizer is not None:
        optimizer.load_state_dict(optim)
