"""Checkpoints: a module's parameters and an optimiser's state in one .npz, written atomically.

The file is a plain .npz (no pickle): ``model/<name>`` arrays, ``optim/<key>`` arrays and a
``format`` marker. It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the target, so a process killed mid-save leaves the previous checkpoint intact (a killed
writer may leave its ``.tmp-*.npz`` behind; it is never read).

Loading checks everything before it changes anything: the zip's CRCs, the marker, and that the
parameters and optimiser state fit the module and optimiser. A file that fails any check raises and
leaves both untouched.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .module import Module

FORMAT = "tapegrad-checkpoint-1"


def _new_file_mode(path: str) -> int:
    """What ``open(path, 'w')`` would give: the existing file's mode, else 0o666 minus the umask.

    mkstemp creates 0o600, which would silently make every checkpoint private to its writer.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    umask = 0o022
    try:  # read, not set: os.umask() would change it for every thread for a moment
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


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
    for key, value in arrays.items():
        if value.dtype.hasobject:
            raise TypeError(f"cannot save {key!r}: dtype {value.dtype} would need pickle")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fchmod(f.fileno(), _new_file_mode(path))
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


def _read(path: str) -> dict[str, np.ndarray]:
    """Every array of the checkpoint, or ValueError if the file is not a complete, intact checkpoint."""
    try:
        # The CRCs first: a corrupted .npy header could otherwise ask numpy for a huge allocation, or
        # parse into a different (valid) array before the CRC at the end of the member is checked.
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if len(set(names)) != len(names):  # a flipped name: reading by name would see one of the twins only
                raise ValueError("two members have the same name")
            for info in z.infolist():  # by entry, not by name (testzip's way), so every member is checked
                with z.open(info) as f:  # also compares the member's two copies of its name
                    while f.read(1 << 20):
                        pass
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  any way of failing to read is the same error for the caller
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                         f"{type(e).__name__}: {e}") from None


def load(path: str | os.PathLike, module: Module, optimizer: Any = None) -> None:
    """Restore what :func:`save` wrote into ``module`` (and ``optimizer``); bit-exact for the same dtype.

    A truncated or corrupted file, or one that is not a tapegrad checkpoint, raises ValueError; a
    checkpoint of another architecture raises RuntimeError listing every missing and unexpected name
    and every shape mismatch, as ``load_state_dict`` does; an optimiser state that does not fit raises
    KeyError (names) or ValueError (shapes). Either way the module and the optimiser are left
    unchanged. Non-finite values (a diverged run kept for inspection) load as they are. A missing
    file raises FileNotFoundError.
    """
    if not isinstance(module, Module):
        raise TypeError(f"module must be a tapegrad Module, got {type(module).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    arrays = _read(path)
    marker = arrays.get("format")
    if marker is None or marker.dtype.kind != "U" or marker.shape != () or str(marker) != FORMAT:
        raise ValueError(f"{path} is not a tapegrad checkpoint (no '{FORMAT}' marker)")
    model = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    if optimizer is not None and not optim:
        raise ValueError(f"{path} holds no optimizer state")
    # The module first (names, shapes, dtypes: RuntimeError or TypeError), so a checkpoint of another
    # architecture is reported as such and not as an optimiser moment of the wrong shape; then the
    # optimiser state; nothing is applied until both have passed, and applying cannot fail.
    try:
        commit_model = module._stage_state_dict(model, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not fit this {type(module).__name__}: {e}") from None
    stage = getattr(optimizer, "_stage_state_dict", None)
    commit = stage(optim) if stage is not None else None
    commit_model()
    if commit is not None:
        commit()
    elif optimizer is not None:  # an optimiser of another library: no separate check step
        optimizer.load_state_dict(optim)
