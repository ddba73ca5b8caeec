"""The emulated ``cupy.ndarray`` and the operand rules of CuPy's ufuncs and routines."""
from __future__ import annotations

import functools
import numbers

import numpy as np

from . import _names

_SCALARS = (numbers.Number, np.generic, bool)


class _Unsupported(TypeError):
    pass


def _wrap(r):
    """numpy results as cupy arrays: arrays and numpy scalars (a 0-d array, as CuPy's reductions give)."""
    if isinstance(r, np.ndarray):
        return ndarray._of(r)
    if isinstance(r, np.generic):
        return ndarray._of(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(x) for x in r)
    if isinstance(r, list):
        return [_wrap(x) for x in r]
    return r


def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _check_operands(args, depth=1):
    """CuPy takes cupy arrays and scalars; a numpy array (any ndim) raises TypeError. Lists/tuples (of
    arrays, for concatenate/stack) are looked into one level."""
    for x in args:
        if isinstance(x, np.ndarray):
            raise _Unsupported(f"Unsupported type {type(x)}")
        if depth and isinstance(x, (list, tuple)):
            _check_operands(x, depth - 1)


def _hostable(x) -> bool:
    return isinstance(x, (ndarray, np.ndarray)) or isinstance(x, _SCALARS) or x is None


class _MemoryPointer:
    __slots__ = ("ptr", "_owner")

    def __init__(self, ptr, owner):
        self.ptr, self._owner = ptr, owner

    def __add__(self, offset):
        return _MemoryPointer(self.ptr + offset, self._owner)

    def __int__(self):
        return self.ptr

    @property
    def device(self):
        from .cuda import Device
        return Device(0)

    @property
    def device_id(self):
        return 0


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, c, f, o):
        self.c_contiguous, self.f_contiguous, self.owndata = c, f, o

    def __getitem__(self, key):
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous, "OWNDATA": self.owndata,
                "C": self.c_contiguous, "F": self.f_contiguous}[key]

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


class _Capsule:
    """What ``__dlpack__`` hands over: the array itself (consumed by cupy.from_dlpack only)."""
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array


def _index(key):
    """An index as CuPy takes it: cupy arrays unwrapped; lists and numpy arrays copied to the device
    (accepted); a 0-d cupy integer array is an array index, as in CuPy (not a scalar)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        return key._a
    return key


def _is_basic(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    for k in keys:
        if k is None or k is Ellipsis or isinstance(k, slice):
            continue
        if isinstance(k, (bool, np.bool_)):
            return False
        if isinstance(k, (numbers.Integral, np.integer)):
            continue
        return False
    return True


_RED = {"axis", "out", "keepdims"}
_METHOD_KWARGS = {  # CuPy's ndarray methods (core.pyx): no where=, initial=, ... as numpy's have
    "sum": _RED | {"dtype"}, "prod": _RED | {"dtype"}, "mean": _RED | {"dtype"}, "max": _RED, "min": _RED,
    "all": _RED, "any": _RED, "argmax": _RED | {"dtype"}, "argmin": _RED | {"dtype"},
    "var": _RED | {"dtype", "ddof"}, "std": _RED | {"dtype", "ddof"}, "cumsum": {"axis", "dtype", "out"},
    "cumprod": {"axis", "dtype", "out"}, "reshape": {"order"}, "ravel": {"order"}, "flatten": {"order"},
    "transpose": set(), "swapaxes": set(), "squeeze": {"axis"}, "take": {"axis", "out"},
    "clip": {"min", "max", "out"}, "nonzero": set(), "repeat": {"axis"}, "dot": {"out"}, "round": {"decimals", "out"},
}


def _defers(other) -> bool:
    """CuPy's _should_use_rop: another type with a higher __array_priority__ and no __array_ufunc__ (a
    tapegrad Tensor) gets its reflected operator; anything else goes to the ufunc, which refuses it."""
    if _hostable(other):
        return False
    try:
        return getattr(other, "__array_ufunc__") is None
    except AttributeError:
        return getattr(other, "__array_priority__", 0) > ndarray.__array_priority__


def _binary(op):
    def f(self, other):
        if _defers(other):
            return NotImplemented
        return _ufunc_call(op, (self, other), {})
    return f


def _rbinary(op):
    def f(self, other):
        if _defers(other):
            return NotImplemented
        return _ufunc_call(op, (other, self), {})
    return f


def _inplace(op):
    def f(self, other):  # CuPy's in-place operators call the ufunc with out=self: no deferring
        _ufunc_call(op, (self, other), {"out": self})
        return self
    return f


def _ufunc_call(uf, args, kwargs, method="__call__"):
    out = kwargs.get("out")
    for x in args:  # CuPy's _preprocess_args: cupy arrays and scalars only
        if not (isinstance(x, ndarray) or isinstance(x, _SCALARS) or x is None):
            raise _Unsupported(f"Unsupported type {type(x)}")
    if out is not None:
        _check_operands(out if isinstance(out, tuple) else (out,), depth=0)
    kwargs = dict(kwargs)
    if out is not None:
        kwargs["out"] = _unwrap(out)
    r = getattr(uf, method)(*_unwrap(args), **kwargs)
    if out is not None and method != "at":
        return out
    return _wrap(r)


class ndarray:  # shown as cupy.ndarray
    """A cupy array over a numpy array (host memory). Weak references work, as on CuPy 14's ndarray
    (``cupy.ndarray.__weakrefoffset__`` is 24 on the installed cupy-cuda12x 14.2.0)."""

    __slots__ = ("_a", "_base", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None:
            raise NotImplementedError("emulated cupy: ndarray(memptr=...) over raw device memory")
        self._a = np.empty(shape, dtype, order=order)
        self._base = None

    @classmethod
    def _of(cls, a, parent=None):
        """Wrap numpy array ``a``; a view of ``parent``'s memory gets CuPy's ``base`` (the root array: CuPy
        sets ``view.base = a.base if a.base is not None else a``), so ``.base`` chains are stable objects."""
        if parent is not None and a is parent._a:
            return parent
        self = object.__new__(cls)
        self._a = a
        self._base = None
        if parent is not None and a.base is not None and np.may_share_memory(a, parent._a):
            self._base = parent._base if parent._base is not None else parent
        return self

    def _view(self, r):
        return _wrap(r) if not isinstance(r, np.ndarray) else ndarray._of(r, self)

    # ---- what numpy must not do implicitly ---------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    def __array_ufunc__(self, uf, method, *inputs, **kwargs):
        for x in inputs + tuple(kwargs.get("out", ()) or ()):
            if not (_hostable(x)):
                return NotImplemented
        return _ufunc_call(uf, inputs, kwargs, method)

    def __array_function__(self, func, types, args, kwargs):
        import cupy
        name = func.__name__
        if name not in _names.MODULE_NAMES:
            return NotImplemented
        return getattr(cupy, name)(*args, **kwargs)

    # ---- attributes --------------------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)

    @shape.setter
    def shape(self, value):
        v = self._a.view()
        v.shape = value  # no-copy reshape or error, as CuPy
        self._a = v

    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    _c_contiguous = property(lambda self: self._a.flags.c_contiguous)
    _f_contiguous = property(lambda self: self._a.flags.f_contiguous)
    real = property(lambda self: _wrap(self._a.real))
    imag = property(lambda self: _wrap(self._a.imag))

    @property
    def T(self):
        return self if self.ndim < 2 else self._view(self._a.T)

    @property
    def mT(self):
        return self._view(self._a.mT)

    @property
    def flags(self):
        f = self._a.flags
        return _Flags(f.c_contiguous, f.f_contiguous, self._a.base is None)

    @property
    def data(self):
        return _MemoryPointer(self._a.__array_interface__["data"][0], self)

    @property
    def base(self):
        return self._base

    @property
    def device(self):
        from .cuda import Device
        return Device(0)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self.dtype.descr, "stream": 1,
                "version": 3, "strides": None if self._a.flags.c_contiguous else self.strides,
                "data": (self.data.ptr if self.size else 0, False)}

    def __dlpack__(self, stream=None, **kwargs):
        return _Capsule(self)

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA, device 0

    def toDlpack(self):
        return _Capsule(self)

    # ---- conversion ------------------------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape/dtype mismatch in set")
        self._a[...] = arr

    def item(self):
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self):
        return self._a.tolist()

    def fill(self, value):
        if isinstance(value, np.ndarray):
            if value.shape != ():
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        self._a.fill(_unwrap(value))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None:
            raise TypeError("casting is not supported yet")
        return ndarray._of(self._a.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        return ndarray._of(self._a.copy(order=order))

    def view(self, dtype=None, *args):
        return self._view(self._a.view() if dtype is None else self._a.view(dtype))

    def __getattr__(self, name):
        """The rest of CuPy's ndarray methods (sum, reshape, ...), run by numpy, results wrapped."""
        if name.startswith("_") or name not in _names.NDARRAY_ATTRS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        fn = getattr(self._a, name)
        if not callable(fn):
            return _wrap(fn)
        allowed = _METHOD_KWARGS.get(name)

        @functools.wraps(fn)
        def method(*args, **kwargs):
            if allowed is not None and not set(kwargs) <= allowed:
                raise TypeError(f"emulated cupy: cupy.ndarray.{name}() takes no {sorted(set(kwargs) - allowed)} "
                                "(numpy's does, CuPy's not)")
            if "out" in kwargs and kwargs["out"] is not None:
                out = kwargs["out"]
                _check_operands((out,), 0)
                fn(*_unwrap(args), **{**kwargs, "out": out._a})
                return out
            return self._view(fn(*_unwrap(args), **_unwrap(kwargs)))
        return method

    # ---- Python protocol --------------------------------------------------------------------------------
    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return bool(self._a)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __complex__(self):
        return complex(self._a)

    def __repr__(self):
        return repr(self._a)

    def __str__(self):
        return str(self._a)

    def __format__(self, spec):
        return format(self._a.item() if self.ndim == 0 else self._a, spec)

    def __reduce__(self):
        return (_rebuild, (self.get(),))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __getitem__(self, key):
        key = _index(key)
        r = self._a[key]
        if not isinstance(r, np.ndarray):  # integer indexing: a 0-d view, as CuPy's
            r = self._a[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return self._view(r)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.shape != () and _is_basic(key):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        if not (_hostable(value) or isinstance(value, (list, tuple))):
            raise TypeError(f"Unsupported type {type(value)}")
        self._a[_index(key)] = _unwrap(value)

    def __neg__(self):
        return _ufunc_call(np.negative, (self,), {})

    def __pos__(self):
        return _ufunc_call(np.positive, (self,), {})

    def __abs__(self):
        return _ufunc_call(np.absolute, (self,), {})

    def __invert__(self):
        return _ufunc_call(np.invert, (self,), {})


_BINOPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
           "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power, "matmul": np.matmul,
           "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor, "lshift": np.left_shift,
           "rshift": np.right_shift}
for _n, _u in _BINOPS.items():
    setattr(ndarray, f"__{_n}__", _binary(_u))
    setattr(ndarray, f"__r{_n}__", _rbinary(_u))
    setattr(ndarray, f"__i{_n}__", _inplace(_u))
for _n, _u in {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
               "ge": np.greater_equal}.items():
    setattr(ndarray, f"__{_n}__", _binary(_u))


def _rebuild(host):
    return ndarray._of(host)


class ufunc:
    """A CuPy ufunc: numpy's, with CuPy's operand rules."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = self.name = uf.__name__
        self.nin, self.nout, self.nargs, self.types = uf.nin, uf.nout, uf.nargs, uf.types

    def __call__(self, *args, **kwargs):
        return _ufunc_call(self._uf, args, kwargs)

    _SCATTER = {"add": "add", "maximum": "max", "minimum": "min"}
    _SCATTER_DTYPES = {"add": "int32 float16 float32 float64 uint32 uint64",
                       "max": "int32 float32 float64 uint32 uint64", "min": "int32 float32 float64 uint32 uint64"}

    def _method(self, method, *args, **kwargs):
        if method == "at":  # CuPy: a._scatter_op(indices, b, op); host indices and b are copied over
            a, idx, *rest = args
            op = self._SCATTER.get(self.name)
            if op is None:
                raise NotImplementedError(f"`{self.name}.at` is not supported yet")
            if not isinstance(a, ndarray):
                raise TypeError(f"{self.name}.at: a must be a cupy.ndarray")
            if a.dtype.name not in self._SCATTER_DTYPES[op].split():
                raise TypeError(f"scatter_{op} only supports {self._SCATTER_DTYPES[op]} as data type, got {a.dtype}")
            getattr(self._uf, "at")(a._a, _index(idx), *_unwrap(rest))
            return None
        if method in ("reduce", "accumulate") and self.name not in ("add", "multiply"):
            raise NotImplementedError(f"`{self.name}.{method}` is not supported yet")
        if method == "reduceat":
            raise NotImplementedError(f"`{self.name}.reduceat` is not supported yet")
        return _ufunc_call(self._uf, args, kwargs, method)

    def reduce(self, *a, **k):
        return self._method("reduce", *a, **k)

    def accumulate(self, *a, **k):
        return self._method("accumulate", *a, **k)

    def reduceat(self, *a, **k):
        return self._method("reduceat", *a, **k)

    def outer(self, *a, **k):
        return self._method("outer", *a, **k)

    def at(self, *a, **k):
        return self._method("at", *a, **k)

    def __repr__(self):
        return f"<ufunc '{self.name}'>"


# functions that take host data and copy it to the device; the rest refuse numpy arrays
def asarray(a, dtype=None, order=None, *, blocking=False):
    if isinstance(a, ndarray):
        r = np.asarray(a._a, dtype=dtype, order=order)
        return ndarray._of(r, a)  # a itself when nothing changes, as CuPy
    if hasattr(a, "__cuda_array_interface__"):
        inner = getattr(a, "data", None)  # a tapegrad Tensor (or other producer) over an emulated array
        if isinstance(inner, ndarray) and inner.data.ptr == a.__cuda_array_interface__["data"][0]:
            return asarray(inner, dtype, order)
        raise NotImplementedError("emulated cupy: __cuda_array_interface__ of a foreign producer")
    return ndarray._of(np.array(_host(a), dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        return ndarray._of(np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
    if hasattr(obj, "__cuda_array_interface__"):
        return array(asarray(obj), dtype, copy, order, subok, ndmin)
    return ndarray._of(np.array(_host(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def _host(x):
    """Host data for asarray/array: nested lists may hold cupy arrays (CuPy accepts them)."""
    if isinstance(x, (list, tuple)) and any(isinstance(v, (ndarray, list, tuple)) for v in x):
        return [_host(v) for v in x]
    if isinstance(x, ndarray):
        return x._a
    return x


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    if out is not None:
        out[...] = a
        return out
    return np.asarray(a, order=order)


def from_dlpack(obj, *, device=None, copy=None):
    if isinstance(obj, _Capsule):
        return ndarray._of(obj.array._a.view(), obj.array)
    if not hasattr(obj, "__dlpack__"):
        raise TypeError(f"{type(obj).__name__} does not support DLPack")
    cap = obj.__dlpack__()
    if isinstance(cap, _Capsule):
        return ndarray._of(cap.array._a.view(), cap.array)
    raise NotImplementedError("emulated cupy: from_dlpack of a producer other than this emulator (host memory)")


fromDlpack = from_dlpack


def get_array_module(*args):
    import cupy
    return cupy if any(isinstance(a, ndarray) for a in args) else np


_CREATION_LIKE = {"zeros", "ones", "empty", "full", "arange", "linspace", "eye", "identity", "tri", "indices",
                  "logspace", "fromfunction", "frombuffer"}
# how many leading positional arguments are array operands (CuPy refuses numpy arrays there); the rest are
# host parameters (split points, shapes, axes, take's indices), which CuPy reads on the host or copies over
_N_ARRAY_ARGS = {"where": 3, "clip": 3, "dot": 2, "matmul": 2, "vdot": 2, "inner": 2, "outer": 2, "tensordot": 2, "kron": 2,
                 "take_along_axis": 2, "put_along_axis": 3, "may_share_memory": 2, "shares_memory": 2,
                 "copyto": 2, "array_equal": 2, "allclose": 2, "isclose": 2, "searchsorted": 2, "bincount": 2,
                 "broadcast_arrays": 99, "cross": 2, "place": 3, "putmask": 3, "select": 2, "choose": 2,
                 "einsum": 99, "cov": 2, "corrcoef": 2, "histogram": 2, "digitize": 2, "interp": 3, "lexsort": 1,
                 "ix_": 99, "meshgrid": 99, "atleast_1d": 99, "atleast_2d": 99, "atleast_3d": 99}


_JOIN = {"concatenate", "stack", "vstack", "hstack", "dstack", "column_stack", "block"}


def _check_signature(name, args, kwargs):
    """Arguments real CuPy's function does not take raise TypeError (numpy's extras: where=, initial=, ...)."""
    params = _names.SIGNATURES.get(name)
    if params is None:
        return
    var_pos = any(k == 2 for _, k in params)
    var_kw = any(k == 4 for _, k in params)
    n_pos = sum(1 for _, k in params if k in (0, 1))
    if len(args) > n_pos and not var_pos:
        raise TypeError(f"emulated cupy: cupy.{name}() takes {n_pos} positional arguments, got {len(args)}")
    names = {p for p, k in params if k in (1, 3)}
    for k in kwargs:
        if k not in names and not var_kw:
            raise TypeError(f"emulated cupy: cupy.{name}() got an unexpected keyword argument {k!r} (numpy has it, CuPy not)")


def module_function(name, fn):
    n_arrays = 0 if name in _CREATION_LIKE else _N_ARRAY_ARGS.get(name, 1)

    @functools.wraps(fn)
    def f(*args, **kwargs):
        _check_signature(name, args, kwargs)
        _check_operands(args[:n_arrays])
        if name in _JOIN and args:
            for x in args[0]:
                if not isinstance(x, ndarray):
                    raise TypeError(f"Only cupy arrays can be concatenated (got {type(x).__name__})")
        if kwargs.get("out") is not None:
            _check_operands((kwargs["out"],), 0)
        out = kwargs.get("out")
        r = fn(*_unwrap(args), **_unwrap(kwargs))
        if isinstance(out, ndarray):
            return out
        if args and isinstance(args[0], ndarray) and isinstance(r, np.ndarray):
            return ndarray._of(r, args[0])  # reshape/transpose/... of a: a view with CuPy's base
        return _wrap(r)
    return f


ndarray.__module__ = "cupy"
ndarray.__qualname__ = ndarray.__name__ = "ndarray"
