"""Tensor and the tape.

A Tensor holds an array (numpy, or cupy on the GPU) and, when it was produced by a differentiable op
while recording, the op's node: its parent tensors and a ``backward`` closure mapping the gradient of
the output to the gradients of the parents. The graph is the chain of nodes reachable from a result,
so a forward pass that is never backpropagated frees itself when its outputs are dropped.

``Tensor.backward`` walks that graph iteratively in reverse topological order (no recursion, so a
10,000-step unrolled chain is fine), accumulates gradients into leaves with ``+``, and releases the
nodes it walked.
"""
from __future__ import annotations

import copy
import functools
import operator
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .backend import array_module, byte_bounds, check_device, device_of, is_cupy, require_cuda, to_device


class _GradMode(threading.local):
    """Per-thread recording state, so each thread records its own graph."""

    def __init__(self) -> None:
        self.enabled = True
        self.anomaly = False
        self.saved: list = []  # the states that grad-mode blocks entered in this thread replaced


_mode = _GradMode()

# Set by tapegrad.profile() so each op's backward is timed; None costs one global load per node.
_profiler = None


class set_grad_enabled:
    """Record (``True``) or not (``False``) inside the block, as torch's: a context manager, reusable and
    nestable, or a decorator (``@tg.no_grad()`` and bare ``@tg.no_grad``)."""

    _enabled = True

    def __init__(self, mode: bool = True) -> None:
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"set_grad_enabled takes a bool, got {type(mode).__name__}")
        self._enabled = bool(mode)

    def __enter__(self) -> None:
        # the previous state goes on this thread's stack, so one object may be entered again, nested,
        # or from several threads at once
        _mode.saved.append(_mode.enabled)
        _mode.enabled = self._enabled

    def __exit__(self, *exc: Any) -> None:
        _mode.enabled = _mode.saved.pop()

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with set_grad_enabled(self._enabled):  # a fresh one per call: calls may overlap in threads
                return fn(*args, **kwargs)
        return wrapper


class _ModeWithoutArgument(set_grad_enabled):
    """A grad mode with no argument, usable as ``@mode`` as well as ``@mode()`` and ``with mode():``."""

    def __new__(cls, fn: Callable | None = None):
        self = super().__new__(cls)
        if fn is not None:  # bare @no_grad: decorate at once
            self.__init__()
            return self(fn)
        return self

    def __init__(self, fn: Callable | None = None) -> None:
        super().__init__(self._enabled)


class no_grad(_ModeWithoutArgument):
    """Record nothing inside the block (inference, optimiser updates)."""

    _enabled = False


class enable_grad(_ModeWithoutArgument):
    """Record inside the block, also within an outer :class:`no_grad`."""

    _enabled = True


def is_grad_enabled() -> bool:
    return _mode.enabled


@contextmanager
def detect_anomaly() -> Iterator[None]:
    """Check every op's forward output and backward gradients for NaN/Inf and name the first culprit."""
    prev = _mode.anomaly
    _mode.anomaly = True
    try:
        yield
    finally:
        _mode.anomaly = prev


# In-place writes to tensors' data (optimiser steps) so far. A node keeps the count at its forward and a
# written tensor the count at its write, so the backward can tell that a tensor an op read was changed
# after that op ran (torch's version counters). Ops keep what they read, not copies: without the check,
# a step between forward and backward would silently give gradients at the new values.
_writes = 0


# The writes into each buffer (the array at the end of a view's ``.base`` chain), so that a write through
# one view is seen by an op that read another (torch's version counters are shared by a tensor and its
# views): id(buffer) -> (weak reference to it, [(first byte, end byte, write count), ...]). Only byte
# ranges that overlap count, so two batches cut from one dataset array stay apart. An entry goes when
# its buffer does. The same holds for cupy arrays on the GPU.
_written_buffers: dict = {}
_MAX_RANGES = 16  # per buffer; past it the oldest two merge into one range that covers both (never less)


def _buffer(a: Any) -> Any:
    base = getattr(a, "base", None)
    while base is not None and (isinstance(base, np.ndarray) or is_cupy(base)):
        a, base = base, getattr(base, "base", None)
    return a


def mark_written(t: "Tensor") -> None:
    """Record that ``t.data`` was changed in place (an optimiser's update, ``-=`` under no_grad): a
    backward through an op that read it, or read any view of the same buffer (``t.detach()``, ``t[:]``),
    before this then raises, as torch's does, instead of using the new values."""
    global _writes
    _writes += 1
    t._version = _writes
    buf = _buffer(t.data)
    key = id(buf)
    entry = _written_buffers.get(key)
    if entry is None or entry[0]() is not buf:
        try:
            ref = weakref.ref(buf, functools.partial(_forget, key))
        except TypeError:
            return
        entry = _written_buffers[key] = (ref, [])
    ranges = entry[1]
    lo, hi = byte_bounds(t.data)
    ranges.append((lo, hi, _writes))
    if len(ranges) > _MAX_RANGES:
        (lo0, hi0, _), (lo1, hi1, w1) = ranges[0], ranges[1]
        ranges[:2] = [(min(lo0, lo1), max(hi0, hi1), w1)]


def _forget(key: int, ref: Any) -> None:
    """A written buffer is gone: drop its entry (unless its id already belongs to a newer one)."""
    entry = _written_buffers.get(key)
    if entry is not None and entry[0] is ref:
        _written_buffers.pop(key, None)


def _written_since(t: "Tensor", writes: int) -> bool:
    return getattr(t, "_version", 0) > writes or _buffer_written_since(t.data, writes)


def _buffer_written_since(a: Any, writes: int) -> bool:
    buf = _buffer(a)
    entry = _written_buffers.get(id(buf))
    if entry is None or entry[0]() is not buf:
        return False
    lo, hi = byte_bounds(a)
    return any(w > writes and start < hi and lo < end for start, end, w in entry[1])


class _Size(int):
    """An element count (numpy's ``a.size``) that, called, gives the shape (torch's ``t.size(dim)``)."""

    def __new__(cls, n: int, shape: tuple) -> "_Size":
        self = super().__new__(cls, n)
        self.shape = shape
        return self

    def __call__(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __reduce__(self) -> tuple:  # copies and pickles are plain ints
        return int, (int(self),)


class Node:
    """One recorded op: the parents it read and the closure that turns grad_out into their grads;
    ``writes``: the in-place write count when it ran (see :func:`mark_written`); ``saved``: arrays
    besides the parents' data that its backward reads (its own output for exp, tanh, softmax, ...),
    which must not change before the backward either; ``reads``: the parents whose data the backward
    reads (None: all of them), the only parents that a write after the forward makes an error."""

    __slots__ = ("parents", "backward", "name", "writes", "saved", "reads")

    def __init__(self, parents: tuple, backward: Callable, name: str, saved: tuple = (),
                 reads: tuple | None = None) -> None:
        self.parents = parents
        self.backward = backward
        self.name = name
        self.writes = _writes
        self.saved = saved
        self.reads = reads


def _check_unwritten(node: Node, out: "Tensor") -> None:
    for p in (node.parents if node.reads is None else node.reads):
        if _written_since(p, node.writes):
            raise RuntimeError(
                f"a tensor of shape {p.shape} that the backward of {node.name} needs was modified in place "
                "after the forward (an optimiser step, say); call backward() before step(), or run the "
                "forward again")
    if node.saved and (getattr(out, "_version", 0) > node.writes
                       or any(_buffer_written_since(a, node.writes) for a in node.saved)):
        raise RuntimeError(
            f"a result of {node.name} that its backward reads was modified in place after the forward; "
            "modify a copy (tg.tensor(x) copies, as x.clone() in torch) instead")


def _released(grad_out):
    raise RuntimeError("backward through a graph that was already released by an earlier backward(); "
                       "pass retain_graph=True to the first call to backpropagate twice")


_RELEASED = Node((), _released, "released")

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Tensor:
    """An n-dimensional array that records the ops applied to it when ``requires_grad`` is set.

    ``data`` is the underlying numpy (or cupy) array; ``grad`` is a plain array of the same shape, filled
    by :meth:`backward` for leaves that require grad.
    """

    __slots__ = ("data", "requires_grad", "_grad", "_node", "_version", "__weakref__")
    __array_priority__ = 1000  # so ndarray <op> Tensor defers to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        elif not (isinstance(data, np.ndarray) or is_cupy(data)):
            data = _to_array(data, None)
        self.data = data
        self._grad = None
        self._node = None
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # ---- properties -------------------------------------------------------------------------------
    @property
    def grad(self) -> Any:
        """The gradient accumulated by :meth:`backward`: an array of this tensor's shape, dtype and device
        (numpy on the CPU, cupy on the GPU), or None."""
        return self._grad

    @grad.setter
    def grad(self, g: Any) -> None:
        # checked here, as torch checks it, so a wrong gradient fails where it is assigned rather than
        # inside a later optimiser step (or not at all: a wider grad would broadcast into the update)
        self._grad = None if g is None else _checked_grad(self, g)

    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> "_Size":
        """The number of elements, as numpy's ``size``; called, the shape, as torch's: ``t.size()`` is
        ``t.shape`` and ``t.size(0)`` its first entry."""
        return _Size(self.data.size, self.data.shape)

    def numel(self) -> int:
        """The number of elements, as torch's ``numel()``: ``sum(p.numel() for p in model.parameters())``."""
        return int(self.data.size)

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def __iter__(self) -> Iterator["Tensor"]:
        # without this, Python's fallback iteration stops at the first IndexError: a 0-d tensor would
        # silently iterate as empty
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data.reshape(()))

    def __float__(self) -> float:
        return float(self.item())

    def __format__(self, spec: str) -> str:
        # f"{loss:.4f}" formats the number of a 0-d tensor, as torch's; other shapes take no spec
        if self.data.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(", threshold=50)
        return f"tensor({body}, dtype={self.dtype}{dev}{grad})"

    # ---- copies and pickles ------------------------------------------------------------------------------
    def __getstate__(self) -> tuple:
        # the graph is not kept: a copy.copy or a pickle of a result is a leaf that keeps requires_grad,
        # as torch's (the backward closures could not be pickled, and a copy sharing the original's graph
        # would send its gradients to the original's leaves)
        return None, {"data": self.data, "requires_grad": self.requires_grad, "_grad": self._grad,
                      "_node": None}

    def __setstate__(self, state: tuple) -> None:
        _, slots = state
        self.data = slots["data"]
        self.requires_grad = slots.get("requires_grad", False)
        self._node = None
        self._grad = None
        grad = slots.get("_grad", slots.get("grad"))  # "grad": pickles written before it was checked
        if grad is not None:
            self.grad = grad

    def __deepcopy__(self, memo: dict) -> "Tensor":
        if self._node is not None:
            raise RuntimeError("only leaf tensors (made by the user, not by an op) can be deep-copied, as in "
                               "torch: a copy of a result would share its graph; deep-copy t.detach(), or "
                               "build the copy's graph by running the ops on copied inputs")
        out = type(self).__new__(type(self))
        memo[id(self)] = out
        out.data = copy.deepcopy(self.data, memo)
        out._grad = None if self._grad is None else copy.deepcopy(self._grad, memo)
        out._node = None
        out.requires_grad = self.requires_grad
        return out

    # ---- interchange: other libraries read the data without a copy -------------------------------------
    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """numpy's conversion (``np.asarray(t)``, ``np.array([loss1, loss2])``, ``np.save``): the data as
        :meth:`numpy` gives it. A GPU tensor refuses, as torch's and cupy's do: copy it with ``.cpu()``
        or ``.numpy()``. Without this numpy made an object array of 0-d tensors, one per element."""
        if is_cupy(self.data):
            raise TypeError("a cuda tensor does not convert to a numpy array implicitly; use t.numpy() or "
                            "t.cpu() to copy it to the host")
        a = self.numpy()
        if dtype is not None and a.dtype != dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """DLPack export of the data (no copy), so ``torch.from_dlpack(t)``, ``cupy.from_dlpack(t)`` and
        ``np.from_dlpack(t)`` share this tensor's memory. The graph is not exported."""
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple:
        return self.data.__dlpack_device__()

    @property
    def __cuda_array_interface__(self) -> dict:
        if not is_cupy(self.data):
            raise AttributeError("a CPU tensor has no __cuda_array_interface__ (use .numpy() or DLPack)")
        return self.data.__cuda_array_interface__

    # ---- conversion ------------------------------------------------------------------------------------
    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"only float32/float64 tensors can require grad, got dtype {self.data.dtype}")
        self.requires_grad = bool(flag)
        return self

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def numpy(self) -> np.ndarray:
        """The data as a numpy array (copied off the GPU if needed; shared on the CPU). For a tensor that
        requires grad the shared array is read-only: a write through it would escape the checks that
        keep a backward from using changed values (torch refuses ``.numpy()`` there altogether)."""
        a = to_device(self.data, "cpu")
        if self.requires_grad and a is self.data:
            a = a.view()
            a.flags.writeable = False
        return a

    def item(self) -> float:
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def to(self, device_or_dtype: Any) -> "Tensor":
        """A copy on another device (``'cpu'``/``'cuda'``) or with another float dtype; differentiable."""
        from . import ops
        return ops.to(self, device_or_dtype)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def double(self) -> "Tensor":
        return self.to(np.float64)

    # ---- backward ---------------------------------------------------------------------------------------
    def backward(self, grad: Any = None, retain_graph: bool | None = None, create_graph: bool = False, *,
                 gradient: Any = None) -> None:
        """Backpropagate from this tensor, accumulating into the ``.grad`` of every leaf that requires it.

        ``grad`` (torch's ``gradient=``) defaults to 1 for a one-element tensor. The walked graph is
        released unless ``retain_graph`` is set. Higher-order gradients (``create_graph=True``) are not
        supported.
        """
        if gradient is not None:
            if grad is not None:
                raise TypeError("give the output gradient once: grad= (or positionally) or torch's gradient=")
            grad = gradient
        if create_graph:
            raise NotImplementedError("create_graph=True: tapegrad computes first derivatives only")
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no input requires grad, "
                               "or it was computed under no_grad())")
        xp = array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without grad needs a one-element output, got shape {self.shape}; "
                                   "pass grad= of the same shape")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}")
        backprop(self, grad, bool(retain_graph))

    # ---- operators (the ops live in engine/ops.py) ---------------------------------------------------------
    def __add__(self, other): return _ops.add(self, other)
    def __radd__(self, other): return _ops.add(other, self)
    def __sub__(self, other): return _ops.sub(self, other)
    def __rsub__(self, other): return _ops.sub(other, self)
    def __mul__(self, other): return _ops.mul(self, other)
    def __rmul__(self, other): return _ops.mul(other, self)
    def __truediv__(self, other): return _ops.div(self, other)
    def __rtruediv__(self, other): return _ops.div(other, self)
    def __matmul__(self, other): return _ops.matmul(self, other)
    def __rmatmul__(self, other): return _ops.matmul(other, self)
    def __neg__(self): return _ops.neg(self)
    def __pow__(self, exponent): return _ops.pow(self, exponent)
    def __rpow__(self, base): return _ops._pow_tensor(base, self)
    def __floordiv__(self, other): return _ops.floor_divide(self, other)
    def __rfloordiv__(self, other): return _ops.floor_divide(other, self)
    def __abs__(self): return _ops.abs(self)
    def __getitem__(self, key): return _ops.getitem(self, key)

    def __setitem__(self, key, value):
        raise TypeError("tensors are immutable: x[key] = value is not supported; build the result with "
                        "tg.where / tg.masked_fill, or write to x.data outside the graph")

    # In-place arithmetic, as torch: in place when nothing is being recorded for this tensor (under
    # no_grad, or a tensor that does not require grad), so ``p -= lr * p.grad`` under no_grad updates the
    # parameter; refused on a leaf that requires grad while recording; on a recorded non-leaf it computes
    # out of place and rebinds the name (the graph keeps the old value, which its backward needs).
    def __iadd__(self, other): return _inplace(self, other, "+=", _ops.add)
    def __isub__(self, other): return _inplace(self, other, "-=", _ops.sub)
    def __imul__(self, other): return _inplace(self, other, "*=", _ops.mul)
    def __itruediv__(self, other): return _inplace(self, other, "/=", _ops.div)

    # Comparisons give plain boolean arrays (masks), never graph nodes.
    def __lt__(self, other): return self.data < _operand_for(self, other)
    def __le__(self, other): return self.data <= _operand_for(self, other)
    def __gt__(self, other): return self.data > _operand_for(self, other)
    def __ge__(self, other): return self.data >= _operand_for(self, other)
    def __eq__(self, other): return False if other is None else self.data == _operand_for(self, other)
    def __ne__(self, other): return True if other is None else self.data != _operand_for(self, other)
    # elementwise == would otherwise make Tensors unhashable; the tape keys its sets and dicts by identity
    __hash__ = object.__hash__

    def exp(self): return _ops.exp(self)
    def log(self): return _ops.log(self)
    def tanh(self): return _ops.tanh(self)
    def sigmoid(self): return _ops.sigmoid(self)
    def relu(self): return _ops.relu(self)
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return _ops.sum(self, axis, keepdims, dim=dim, keepdim=keepdim)
    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return _ops.mean(self, axis, keepdims, dim=dim, keepdim=keepdim)
    def reshape(self, *shape): return _ops.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, *dims):
        """``x.transpose(0, 1)`` swaps two axes (torch); no argument reverses them all (``x.T``)."""
        if len(dims) == 1:
            return _ops.transpose(self, dims[0])
        return _ops.transpose(self, dims or None)
    def permute(self, *dims): return _ops.permute(self, *dims)
    def abs(self): return _ops.abs(self)
    def sqrt(self): return _ops.sqrt(self)
    def pow(self, exponent): return _ops.pow(self, exponent)
    def max(self, dim=None, keepdim=False, **kw): return _extrema.max(self, dim, keepdim, **kw)
    def min(self, dim=None, keepdim=False, **kw): return _extrema.min(self, dim, keepdim, **kw)
    def argmax(self, dim=None, keepdim=False): return _extrema.argmax(self, dim, keepdim)
    def argmin(self, dim=None, keepdim=False): return _extrema.argmin(self, dim, keepdim)
    def unsqueeze(self, dim): return _ops.unsqueeze(self, dim)
    def squeeze(self, dim=None): return _ops.squeeze(self, dim)
    def flatten(self, start_dim=0, end_dim=-1): return _ops.flatten(self, start_dim, end_dim)
    def expand(self, *sizes): return _ops.expand(self, *sizes)
    def view(self, *shape):
        """torch's view, as :meth:`reshape` (numpy reshapes without a copy wherever the strides allow)."""
        return self.reshape(*shape)
    def split(self, split_size, dim=0): return _ops.split(self, split_size, dim=dim)
    def clone(self): return _ops.clone(self)
    def contiguous(self):
        """This tensor when its data is C-contiguous, else a differentiable C-contiguous copy (torch's)."""
        return self if self.data.flags.c_contiguous else _ops.clone(self)
    def dim(self) -> int: return self.data.ndim
    def tolist(self) -> Any:
        """The data as (nested) Python numbers, as torch's ``tolist`` (copied off the GPU if needed)."""
        return to_device(self.data, "cpu").tolist()
    def softmax(self, axis=None, *, dim=None): return _ops.softmax(self, axis, dim=dim)
    def log_softmax(self, axis=None, *, dim=None): return _ops.log_softmax(self, axis, dim=dim)

    @property
    def T(self) -> "Tensor":
        return _ops.transpose(self, None)


def _raw(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _operand_for(t: Tensor, other: Any) -> Any:
    """The array (or number) of ``other`` for an in-place op or a comparison with ``t``, on t's device: a
    host array or list follows a GPU tensor, as in the arithmetic ops (cupy refuses numpy operands); a
    tensor or GPU array on another device is refused."""
    data = other.data if isinstance(other, Tensor) else other
    if type(data) is type(t.data) or isinstance(data, (int, float)):
        return data  # the common case, in training loops: an array of the same kind, or a number
    if isinstance(other, Tensor) and other.device != t.device or is_cupy(data) and not is_cupy(t.data):
        raise ValueError(f"operands are on different devices: {t.device} and {device_of(data)}")
    if isinstance(data, (np.ndarray, list, tuple)) and is_cupy(t.data):
        data = to_device(np.asarray(_gpu_items_on_host(data)) if isinstance(data, (list, tuple)) else data, "cuda")
    return data


_INPLACE = {"+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv}


def _inplace(t: Tensor, other: Any, op: str, out_of_place: Callable) -> Tensor:
    if t.requires_grad and _mode.enabled:
        if t._node is None:
            raise RuntimeError(f"a leaf tensor that requires grad is used in an in-place operation ({op}); "
                               "do it under tg.no_grad() (an update), or write y = x + ... to make a new tensor")
        return out_of_place(t, other)
    # numpy's / cupy's own in-place op: same-kind casting (float64 into float32 is fine, a float into an
    # integer tensor raises, as in torch), broadcasting into t's shape only
    _INPLACE[op](t.data, _operand_for(t, other))
    mark_written(t)  # a graph that read t before this can no longer backpropagate through it
    return t


def _to_array(data: Any, dtype: Any) -> Any:
    """The array behind ``data``, cast to ``dtype`` when given; see :func:`_wrap` for the rules."""
    return _wrap(data, dtype)[0]


def _wrap(data: Any, dtype: Any) -> tuple:
    """``(array, shared)``: the array behind ``data`` in ``dtype`` (when given), and whether it still shares
    memory with ``data``.

    As torch.tensor infers them: Python floats (and lists holding one) become float32, Python ints
    int64, bools bool; numpy scalars and arrays keep their dtype; arrays and DLPack / CUDA array
    producers are taken without a copy (``shared``).
    """
    dtype = None if dtype is None else np.dtype(dtype)
    shared = True
    if isinstance(data, np.ndarray) or is_cupy(data):
        arr = data
    elif hasattr(data, "__dlpack_device__") and not isinstance(data, np.generic):
        arr = _from_dlpack(data)  # torch, JAX, ...
    elif hasattr(data, "__cuda_array_interface__"):
        require_cuda()
        import cupy  # a GPU array from another library (Numba, ...)
        arr = cupy.asarray(data)
    elif isinstance(data, np.generic):
        arr, shared = np.asarray(data), False
    else:
        try:
            arr = np.asarray(data)
        except TypeError:  # cupy arrays in it refuse implicit conversion
            arr = None
        if arr is None or arr.dtype == object:  # cupy arrays or Tensors in a list: take their arrays (rare, so
            data = _gpu_items_on_host(data)      # not looked for before numpy's own conversion)
            arr = np.asarray(data)
        shared = False
        kind = arr.dtype.kind
        if kind == "f" and dtype is None and not (arr.dtype == np.float64 and _holds_float64(data)):
            dtype = np.dtype(np.float32)
        elif kind == "u" and dtype is None:  # numpy's choice for an int above int64's range
            raise ValueError(f"cannot make a tensor from {type(data).__name__}: an integer does not fit in int64")
        elif kind not in "biuf":
            raise TypeError(f"cannot make a tensor from {type(data).__name__} (array dtype {arr.dtype})")
    if dtype is not None and arr.dtype != dtype:
        arr, shared = arr.astype(dtype), False
    return arr, shared


def _gpu_items_on_host(data: Any) -> Any:
    """Nested lists with Tensors or cupy arrays in them (a list of 0-d losses) as host arrays, as
    torch.tensor makes a CPU tensor of (CUDA) scalar tensors; ``data`` itself when there are none."""
    if isinstance(data, (list, tuple)):
        items = [_gpu_items_on_host(v) for v in data]
        return items if any(a is not b for a, b in zip(items, data)) else data
    if isinstance(data, Tensor):
        data = data.data
    return data.get() if is_cupy(data) else data


def _holds_float64(data: Any) -> bool:
    """Whether nested lists hold a numpy float64 (scalar or array), from which torch.tensor infers float64
    (Python floats alone give float32)."""
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, (np.float64, np.ndarray, Tensor)) and x.dtype == np.float64:
            return True
    return False


_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


def _from_dlpack(obj: Any) -> Any:
    """The array behind a DLPack producer, without a copy: cupy for CUDA memory, numpy for host memory."""
    device_type = int(obj.__dlpack_device__()[0])
    if device_type in _DLPACK_CUDA:
        require_cuda()
        import cupy
        return cupy.from_dlpack(obj)
    if device_type != 1:  # kDLCPU
        raise TypeError(f"cannot take an array from DLPack device type {device_type}: tapegrad holds host "
                        "(numpy) or CUDA (cupy) memory")
    return np.from_dlpack(obj)


def from_dlpack(obj: Any, requires_grad: bool = False) -> "Tensor":
    """A leaf tensor sharing the memory of any DLPack producer (torch, JAX, cupy, numpy), no copy.

    GPU memory becomes a cupy-backed tensor on ``'cuda'``, host memory a numpy-backed one on ``'cpu'``.
    Writes through either side are seen by the other.
    """
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"{type(obj).__name__} does not support DLPack (no __dlpack__ method)")
    arr = _from_dlpack(obj)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"tapegrad tensors hold real numbers or booleans; got dtype {arr.dtype}")
    return Tensor(arr, requires_grad=requires_grad)


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None, device: str | None = None) -> Tensor:
    """Make a leaf tensor from a copy of ``data``, as ``torch.tensor`` does.

    dtypes as torch infers them: Python floats (and lists of them) become float32, Python ints int64,
    bools bool; arrays keep their dtype (float64 stays float64, integer ids stay integer).
    ``device='cuda'`` puts the data on the GPU (cupy).

    The data is always copied, so later writes to the tensor (an optimiser step) never reach the
    caller's array and the other way round. :func:`from_numpy` and :func:`from_dlpack` share memory
    instead, as ``torch.from_numpy`` / ``torch.from_dlpack`` do.
    """
    if isinstance(data, Tensor):
        data = data.data
    arr, shared = _wrap(data, dtype)
    if device is not None:
        moved = to_device(arr, check_device(device))
        shared = shared and moved is arr
        arr = moved
    if shared:
        arr = arr.copy()
    return Tensor(_checked(arr), requires_grad=requires_grad)


def as_tensor(data: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """``data`` as a tensor without a copy where none is needed, as ``torch.as_tensor``.

    A Tensor of that dtype and device comes back as it is; an array (numpy, cupy, or any DLPack or
    ``__cuda_array_interface__`` producer: torch, JAX, Numba) of that dtype on that device is shared,
    so writes through either side are seen by the other. Anything else is converted (a copy), with
    the dtypes :func:`tensor` infers.
    """
    if isinstance(data, Tensor):
        if (dtype is None or data.dtype == np.dtype(dtype)) and (device is None or data.device == check_device(device)):
            return data
        data = data.data
    arr, _ = _wrap(data, dtype)
    if device is not None:
        arr = to_device(arr, check_device(device))
    return Tensor(_checked(arr))


def _checked(arr: Any) -> Any:
    if arr.dtype.kind == "f" and arr.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"tapegrad computes in float32 or float64; got {arr.dtype} (pass dtype=)")
    if arr.dtype.kind not in "biuf":  # complex, strings, objects
        raise TypeError(f"tapegrad tensors hold real numbers or booleans; got dtype {arr.dtype}")
    return arr


def from_numpy(a: np.ndarray) -> Tensor:
    """A leaf tensor sharing the memory of numpy array ``a`` (no copy), as ``torch.from_numpy``.

    Writes through either side are seen by the other, an optimiser step included; :func:`tensor`
    copies instead.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"from_numpy expects a numpy.ndarray, got {type(a).__name__}")
    if a.dtype.kind == "f" and a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"tapegrad computes in float32 or float64; got {a.dtype}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"tapegrad tensors hold real numbers or booleans; got dtype {a.dtype}")
    return Tensor(a)


def _checked_grad(t: Tensor, g: Any) -> Any:
    """``g`` as ``t``'s gradient: an array of ``t``'s shape, dtype and device (a Tensor gives its data)."""
    if isinstance(g, Tensor):
        g = g.data
    elif isinstance(g, np.generic):
        g = np.asarray(g)
    if not (isinstance(g, np.ndarray) or is_cupy(g)):
        raise TypeError(f"an assigned grad must be an array (numpy on the CPU, cupy on the GPU), a Tensor or "
                        f"None, got {type(g).__name__}")
    if device_of(g) != t.device:
        raise ValueError(f"an assigned grad must be on the tensor's device ({t.device}), got one on {device_of(g)}")
    if g.shape != t.shape:
        raise ValueError(f"an assigned grad must have the tensor's shape {tuple(t.shape)}, got {tuple(g.shape)}")
    if g.dtype != t.dtype:
        raise TypeError(f"an assigned grad must have the tensor's dtype {t.dtype}, got {g.dtype} (convert it "
                        f"with .astype first)")
    return g


def _array(a: Any) -> Any:
    """numpy reduces 0-d arithmetic to scalars: op results and grads stay arrays for 0-d tensors too."""
    return np.asarray(a) if isinstance(a, np.generic) else a


def make_result(data: Any, parents: Sequence[Tensor], backward: Callable, name: str,
                saved: tuple = (), reads: tuple | None = None) -> Tensor:
    """Wrap an op's output, recording a node when recording is on and a parent requires grad.

    ``backward(grad_out)`` returns one gradient (or None) per parent, each of the parent's shape or
    broadcastable to it (the walk sums broadcast axes away). ``saved``: arrays other than the parents'
    data that the backward reads (``(data,)`` when it uses the result itself), so that an in-place
    write to them, or to any view of their buffers, before the backward is an error. ``reads``: the
    parents whose data the backward reads, when not all of them (``()`` for add, whose gradients need
    no values), so that writing another parent (an optimiser step on a weight whose own gradient
    needs only the input) is no error, as in torch.
    """
    out = Tensor.__new__(Tensor)
    out.data = np.asarray(data) if isinstance(data, np.generic) else data
    out._grad = None
    out._node = None
    out.requires_grad = False
    mode = _mode
    if mode.enabled:
        for p in parents:
            if p.requires_grad:
                out.requires_grad = True
                out._node = Node(parents if type(parents) is tuple else tuple(parents), backward, name, saved,
                                 reads)
                break
    if mode.anomaly:
        _check_finite(data, f"the forward of {name}")
    return out


def _check_finite(a: Any, where: str) -> None:
    xp = array_module(a)
    if a.dtype.kind == "f" and not bool(xp.isfinite(a).all()):
        raise FloatingPointError(f"anomaly: {where} produced NaN or Inf")


def unbroadcast(grad: Any, shape: tuple) -> Any:
    """Sum ``grad`` down to ``shape``, undoing numpy broadcasting.

    A grad that is itself broadcastable to ``shape`` (constant along an axis, as an op may return it)
    is expanded instead.
    """
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    elif extra < 0:
        grad = grad.reshape((1,) * -extra + grad.shape)
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if grad.shape != tuple(shape):
        grad = array_module(grad).broadcast_to(grad, shape)
    return grad.reshape(shape)


def _topological_order(root: Tensor) -> list:
    """Tensors that need a gradient, children after parents, found with an explicit stack."""
    # Tensors hash by identity (__hash__ is object's; == is elementwise), so they key the set and dicts.
    order: list = []
    seen: set = set()
    stack = [(root, False)]
    push, pop, mark = stack.append, stack.pop, seen.add
    while stack:
        t, expanded = pop()
        if expanded:
            order.append(t)
            continue
        if t in seen:
            continue
        mark(t)
        push((t, True))
        node = t._node
        if node is not None:
            for p in node.parents:
                if p.requires_grad and p not in seen:
                    push((p, False))
    return order


def backprop(root: Tensor, grad: Any, retain_graph: bool = False, capture: dict | None = None,
             stop_at_capture: bool = False) -> None:
    """Walk the graph from ``root`` with ``grad_out = grad``, accumulating into the leaves' ``.grad``.

    With ``capture`` (a dict keyed by tensors), no ``.grad`` is written: the total gradient reaching
    each key is stored as its value instead. With ``stop_at_capture`` the walk does not go on through a
    key, so a key that is not a leaf counts as an independent variable (what gradcheck perturbs).
    """
    order = _topological_order(root)
    grads = {root: grad}
    anomaly = _mode.anomaly
    for t in reversed(order):
        g = grads.pop(t, None)
        node = t._node
        if g is None:
            if node is not None and not retain_graph:
                t._node = _RELEASED
            continue
        if capture is not None:
            if t in capture:
                capture[t] = g.astype(t.data.dtype, copy=True)
                if stop_at_capture:
                    continue
            if node is None:
                continue
        if node is None:
            g = g.astype(t.data.dtype, copy=True)
            t._grad = g if t._grad is None else _array(t._grad + g)
            continue
        if node.writes != _writes:  # something was written since this op ran: was it one it needs?
            _check_unwritten(node, t)
        parent_grads = node.backward(g) if _profiler is None else _profiler.backward_hook(node, g)
        if anomaly:
            for pg in parent_grads:
                if pg is not None:
                    _check_finite(pg, f"the backward of {node.name}")
        for p, pg in zip(node.parents, parent_grads):
            if pg is None or not p.requires_grad:
                continue
            pd = p.data
            if pg.shape != pd.shape:
                pg = unbroadcast(pg, pd.shape)
            if pg.dtype != pd.dtype:
                # a float32 tensor used with a float64 one gets float64 grad_out; every backward (and
                # every kernel it calls) sees grads of its own output's dtype, as in torch
                pg = pg.astype(pd.dtype)
            if isinstance(pg, np.generic):
                pg = np.asarray(pg)
            prev = grads.get(p)
            grads[p] = pg if prev is None else _array(prev + pg)
        if not retain_graph:
            t._node = _RELEASED


def grad(output: Tensor, inputs: Tensor | Sequence[Tensor], grad_output: Any = None,
         retain_graph: bool | None = None, create_graph: bool = False, allow_unused: bool | None = None, *,
         grad_outputs: Any = None, stop_at_inputs: bool = False) -> tuple:
    """The gradients of ``output`` with respect to ``inputs`` (a tensor or a sequence of them), as
    ``torch.autograd.grad``: a tuple of one array per input, without touching any ``.grad``.

    Each is the total derivative, also where one input is computed from another (h = 3x: d/dx counts
    the path through h). An input that ``output`` does not depend on raises, as in torch, unless
    ``allow_unused=True`` (its entry is then None). ``grad_outputs`` is torch's name for
    ``grad_output``; the graph is kept whatever ``retain_graph`` says, and ``create_graph=True``
    (higher-order gradients) is not supported. ``stop_at_inputs=True`` treats every input as an
    independent variable instead (d/dx then leaves out the paths through h, and an input reached only
    through another gives None), which is what perturbing each input alone, as gradcheck does, measures."""
    if grad_outputs is not None:
        if grad_output is not None:
            raise TypeError("give grad_output or torch's grad_outputs, not both")
        grad_output = grad_outputs
    if isinstance(output, (list, tuple)):
        if len(output) != 1:
            raise NotImplementedError("grad() of several outputs: sum them into one first (with grad_output "
                                      "weights, sum((w * y).sum() for w, y in ...))")
        output = output[0]
        if isinstance(grad_output, (list, tuple)) and len(grad_output) == 1:
            grad_output = grad_output[0]
    if create_graph:
        raise NotImplementedError("create_graph=True: tapegrad computes first derivatives only")
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"grad(): input {i} is a {type(t).__name__}, not a Tensor")
        if not t.requires_grad:
            raise RuntimeError(f"grad(): input {i} does not require grad")
    if not output.requires_grad:
        raise RuntimeError("grad() of an output that does not require grad")
    xp = array_module(output.data)
    if grad_output is None:
        if output.data.size != 1:
            raise RuntimeError(f"grad() without grad_output needs a one-element output, got shape {output.shape}")
        grad_output = xp.ones_like(output.data)
    else:
        grad_output = xp.asarray(_raw(grad_output), dtype=output.dtype)
        if grad_output.shape != output.shape:
            raise ValueError(f"grad_output has shape {grad_output.shape}, expected {output.shape}")
    capture = {t: None for t in inputs}
    backprop(output, grad_output, retain_graph=True, capture=capture, stop_at_capture=stop_at_inputs)
    grads = tuple(capture[t] for t in inputs)
    if not allow_unused and not stop_at_inputs:
        unused = [i for i, g in enumerate(grads) if g is None]
        if unused:
            raise RuntimeError(f"grad(): input {unused[0]} was not used to compute the output; pass "
                               "allow_unused=True to get None for it (as torch)")
    return grads


from . import ops as _ops  # noqa: E402  (operators above resolve ops at call time)
from . import extrema as _extrema  # noqa: E402
