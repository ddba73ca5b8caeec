"""Module and Parameter: the base every layer builds on, with PyTorch's names and habits."""
from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

from ..engine.backend import array_module, check_device, to_device
from ..engine.tensor import Tensor, as_tensor

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype: Any) -> np.dtype:
    if type(dtype).__name__ == "dtype" and type(dtype).__module__ == "torch":  # torch.float64 -> float64
        dtype = str(dtype).rpartition(".")[2]
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _is_device(x: Any) -> bool:
    """'cpu', 'cuda', 'cuda:0' or a torch.device (anything else given to ``to()`` is a dtype)."""
    if isinstance(x, str):
        return x.split(":")[0] in ("cpu", "cuda")
    return type(x).__name__ == "device" and type(x).__module__ == "torch"


class Parameter(Tensor):
    """A leaf tensor that a Module owns and an optimiser updates (requires_grad is on)."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def _as_input(module: "Module", value: Any, name: str) -> Tensor:
    """A Tensor of the module's dtype and device: arrays and lists are converted, Tensors are checked."""
    if isinstance(value, Tensor):
        if value.dtype != module.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but the module's parameters are {module.dtype}; "
                            f"convert one of them (.to({module.dtype.name}))")
        if value.device != module.device:
            raise ValueError(f"{name} is on {value.device} but the module is on {module.device}")
        return value
    try:
        return as_tensor(value, dtype=module.dtype, device=module.device)  # an input is never written: no copy
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a Tensor or an array of numbers, got {type(value).__name__}") from e


def _as_buffer(name: str, value: Any) -> Tensor | None:
    """A buffer's value: a Tensor (not a Parameter: that would make it a parameter) or None; an array is
    wrapped without a copy."""
    if value is None or (isinstance(value, Tensor) and not isinstance(value, Parameter)):
        return value
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy"):
        return as_tensor(value)
    raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (a Tensor, an array or None "
                    "expected)")


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as torch's ``_IncompatibleKeys``: unpack it or read the fields."""

    missing_keys: list
    unexpected_keys: list

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return f"IncompatibleKeys(missing_keys={self.missing_keys}, unexpected_keys={self.unexpected_keys})"

    __str__ = __repr__


def _host_value(name: str, value: Any) -> np.ndarray:
    """A state_dict entry (numpy, tapegrad Tensor, torch tensor of any float dtype, cupy) as a numeric host array."""
    if isinstance(value, Tensor):
        value = value.numpy()
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu()
        try:
            value = value.numpy()
        except TypeError:  # bfloat16, float8...: no numpy dtype; float32 holds them exactly
            if not value.is_floating_point():
                raise TypeError(f"load_state_dict: {name} has torch dtype {value.dtype}, which has no numpy "
                                "equivalent") from None
            value = value.float().numpy()
    elif type(value).__module__.startswith("cupy"):
        value = to_device(value, "cpu")
    arr = np.asarray(value)
    if arr.dtype.kind == "V" and "float" in arr.dtype.name:  # ml_dtypes' bfloat16 and friends
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"load_state_dict: {name} has non-numeric dtype {arr.dtype}")
    return arr


class Module:
    """Base class of layers.

    Parameters and sub-modules are found by walking the instance's attributes in the order they were
    set (so names and order match PyTorch's for the same attribute names). Every module has a float
    ``dtype`` (float32 by default) and a ``device``; ``to()`` converts its parameters in place, so an
    optimiser built earlier keeps working.
    """

    def __init__(self, dtype: Any = np.float32, device: str | None = None) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "dtype", _float_dtype(dtype))
        object.__setattr__(self, "device", check_device(device))

    def __setattr__(self, name: str, value: Any) -> None:
        # As torch: a plain Tensor put where a parameter is registered would silently drop it from
        # parameters() (and from the optimiser's view); only a Parameter or None may replace one.
        if isinstance(self.__dict__.get(name), Parameter) and value is not None and not isinstance(value, Parameter):
            raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} of "
                            f"{type(self).__name__} (a Parameter or None expected); wrap it in "
                            f"tapegrad.Parameter, or assign to .data to change the values")
        if name in self._buffer_flags():  # as torch: assigning to a buffer's name replaces the buffer
            value = _as_buffer(name, value)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._buffer_flags().pop(name, None)
        object.__delattr__(self, name)

    # ---- the subclass contract ---------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (each layer defines its own initialisation)."""
        for child in self.children():
            child.reset_parameters()

    def extra_repr(self) -> str:
        return ""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ---- helpers for subclasses --------------------------------------------------------------------------------
    def new_parameter(self, shape: tuple) -> Parameter:
        """An uninitialised parameter of this module's dtype and device (``reset_parameters`` fills it)."""
        data = np.zeros(shape, dtype=self.dtype)
        return Parameter(to_device(data, self.device))

    @staticmethod
    def _check_name(name: Any, kind: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"{kind} name must be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{kind} name must be non-empty and contain no '.', got {name!r}")

    def add_module(self, name: str, module: "Module | None") -> None:
        """Register ``module`` as the child ``name`` (the same as ``setattr``), as torch's."""
        self._check_name(name, "module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if name in self.__dict__ and not isinstance(self.__dict__[name], (Module, type(None))):
            raise KeyError(f"attribute {name!r} already exists")
        setattr(self, name, module)

    register_module = add_module

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (a Parameter, or None for an absent one such as ``bias=False``) as ``name``."""
        self._check_name(name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter {name!r} (a Parameter or None "
                            "expected)")
        if name in self.__dict__ and not isinstance(self.__dict__[name], (Parameter, type(None))):
            raise KeyError(f"attribute {name!r} already exists")
        setattr(self, name, param)

    def _buffer_flags(self) -> dict[str, bool]:
        """{buffer name: persistent}, in registration order (a module pickled before buffers existed has none)."""
        flags = self.__dict__.get("_buffer_names")
        if flags is None:
            flags = {}
            object.__setattr__(self, "_buffer_names", flags)
        return flags

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register ``tensor`` as the buffer ``name``, as torch's: state that is not a parameter (running
        statistics, a fixed mask). A buffer is an attribute that ``buffers()`` / ``named_buffers()`` list,
        that ``to()`` moves (and casts, if it is floating point) and that, when ``persistent``, is saved and
        loaded by ``state_dict()`` / ``load_state_dict()``; the optimiser never sees it. ``None`` registers
        an absent buffer (skipped everywhere); a numpy or cupy array is wrapped in a Tensor, sharing it."""
        self._check_name(name, "buffer")
        if name in self.__dict__ and name not in self._buffer_flags():
            raise KeyError(f"attribute {name!r} already exists")
        tensor = _as_buffer(name, tensor)
        self._buffer_flags()[name] = bool(persistent)
        object.__setattr__(self, name, tensor)

    # ---- walking ------------------------------------------------------------------------------------------------
    def _raw_children(self) -> Iterator[tuple[str, "Module"]]:
        """Every attribute that holds a Module, in order, a shared child under each of its names."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        seen: set = set()
        for name, value in self._raw_children():
            if id(value) not in seen:
                seen.add(id(value))
                yield name, value

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, "Module"]]:
        """This module and every sub-module, each once (a shared child under its first name), as torch's."""
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._raw_children():
            yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target: str) -> "Module":
        """The sub-module at the dotted path ``target`` (``""`` is this module), as torch's."""
        mod: Module = self
        if target == "":
            return mod
        for item in target.split("."):
            child = vars(mod).get(item)
            if not isinstance(child, Module):
                raise AttributeError(f"{type(mod).__name__} has no attribute `{item}`" if child is None
                                     else f"`{item}` is not a Module")
            mod = child
        return mod

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(name, parameter) pairs; a parameter shared by several modules comes once, under its first name."""
        seen: set = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_name, mod in mods:
            for name, value in vars(mod).items():
                if isinstance(value, Parameter) and (not remove_duplicate or id(value) not in seen):
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        """(name, buffer) pairs (``None`` buffers left out); a shared buffer comes once, under its first name."""
        seen: set = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        for mod_name, mod in mods:
            for name in mod._buffer_flags():
                value = vars(mod).get(name)
                if value is not None and (not remove_duplicate or id(value) not in seen):
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def _state_slots(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """state_dict's entries in torch's order: each module's parameters, then its persistent buffers,
        then its children's; shared ones under each name."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, persistent in self._buffer_flags().items():
            value = vars(self).get(name)
            if persistent and value is not None:
                yield prefix + name, value
        for name, child in self._raw_children():
            yield from child._state_slots(f"{prefix}{name}.")

    # ---- modes ----------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"training mode is expected to be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Switch gradient tracking of every parameter on or off (freezing), as torch's."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``set_to_none=False``: fill it with zeros instead), as torch's."""
        for p in self.parameters():
            _zero_grad(p, set_to_none)

    def apply(self, fn: Callable[["Module"], Any]) -> "Module":
        """Call ``fn`` on every sub-module (children first) and then on this module; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ---- dtype and device -----------------------------------------------------------------------------------------
    def to(self, *args: Any, device: Any = None, dtype: Any = None, non_blocking: bool = False) -> "Module":
        """Move and/or cast in place (the Parameter objects stay the same), as torch's ``to``:
        ``to('cuda')``, ``to(np.float64)``, ``to(torch.float64)``, ``to('cpu', np.float64)``,
        ``to(device=..., dtype=...)``. dtypes are float32/float64; devices 'cpu'/'cuda' (or a torch.device).
        Buffers move too, and are cast only if they are floating point, as torch's."""
        for a in args:
            if _is_device(a) and device is None:
                device = a
            elif not _is_device(a) and dtype is None:
                dtype = a
            else:
                raise TypeError(f"to() got more than one {'device' if _is_device(a) else 'dtype'}: {args}")
        if device is None and dtype is None:
            raise TypeError("to() needs a device ('cpu'/'cuda') and/or a float dtype")
        if device is not None:
            device = check_device(str(device))
            for p in self.parameters():
                p.data = to_device(p.data, device)
                p.grad = None if p.grad is None else to_device(p.grad, device)
            for b in self.buffers():
                b.data = to_device(b.data, device)
            for m in self.modules():
                object.__setattr__(m, "device", device)
        if dtype is not None:
            dtype = _float_dtype(dtype)
            for p in self.parameters():
                p.data = p.data.astype(dtype)
                p.grad = None if p.grad is None else p.grad.astype(dtype)
            for b in self.buffers():
                if b.dtype.kind == "f":  # as torch: integer and bool buffers (counters, masks) keep their dtype
                    b.data = b.data.astype(dtype)
            for m in self.modules():
                object.__setattr__(m, "dtype", dtype)
        for m in self.modules():
            m._after_to()
        return self

    def _after_to(self) -> None:
        """Hook for modules that cache derived arrays (e.g. a normalised adjacency)."""

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self) -> "Module":
        return self.to("cuda")

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    # ---- state -------------------------------------------------------------------------------------------------------
    def state_dict(self, *, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> dict[str, Any]:
        """{name: numpy array (a copy, on the host)} of the parameters and persistent buffers, in torch's
        order (each module's parameters, then its buffers, then its children), every registered name (a
        parameter shared by two modules appears under both, as in torch). ``keep_vars``: the Tensor
        objects themselves; ``prefix`` is put before every name; ``destination``: a dict to fill."""
        out = {} if destination is None else destination
        for name, p in self._state_slots(prefix):
            out[name] = p if keep_vars else np.array(to_device(p.data, "cpu"), copy=True)
        return out

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy values in by name, as torch's: returns ``(missing_keys, unexpected_keys)``.

        With ``strict`` (default) a missing or unexpected name raises RuntimeError listing all of them;
        a shape mismatch raises RuntimeError in either mode, and a failing load changes nothing.
        Values (numpy, tapegrad, torch of any float dtype incl. bfloat16, NaN/Inf too) are cast to each
        parameter's (or persistent buffer's) dtype and moved to its device. A parameter registered under two names (tied
        weights) takes the value of the last of them, as in torch.
        """
        self._stage_state_dict(state_dict, strict)()
        return IncompatibleKeys(*self._key_mismatch(state_dict))

    def _key_mismatch(self, state: Any) -> tuple[list, list]:
        names = [n for n, _ in self._state_slots()]
        known = set(names)
        return [k for k in names if k not in state], [k for k in state if k not in known]

    def _stage_state_dict(self, state: Any, strict: bool = True) -> Callable[[], None]:
        """Check ``state`` against this module and return a function that applies it (and cannot fail)."""
        if not hasattr(state, "items"):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state).__name__}")
        missing, unexpected = self._key_mismatch(state)
        errors = []
        if strict and missing:
            errors.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ". ")
        if strict and unexpected:
            errors.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ". ")
        staged = []
        for name, p in self._state_slots():
            if name not in state:
                continue
            arr = _host_value(name, state[name])
            if arr.shape != p.shape:
                errors.append(f"size mismatch for {name}: copying a param with shape {arr.shape} from "
                              f"checkpoint, the shape in current model is {p.shape}.")
                continue
            staged.append((p, arr))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n\t" + "\n\t".join(errors))

        def commit() -> None:  # in registration order: of a tied parameter's names the last one wins
            for p, arr in staged:
                p.data = to_device(np.array(arr, dtype=p.dtype, copy=True), p.device)
                p.grad = None
            for m in self.modules():
                m._after_to()
        return commit

    # ---- printing ------------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = []
        for name, child in self._raw_children():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


def _zero_grad(p: Tensor, set_to_none: bool) -> None:
    g = p.grad
    if set_to_none or g is None:
        p.grad = None
    elif isinstance(g, np.generic) or not getattr(g.flags, "writeable", True):  # a 0-d scalar, a read-only view
        p.grad = array_module(g).zeros_like(g)
    else:  # in place, as torch's zero_()
        g[...] = 0


class ModuleList(Module):
    """A list of sub-modules, registered as ``0``, ``1``, ... (PyTorch's naming): ``append``, ``extend``,
    ``insert``, ``pop``, ``m[i] = layer``, ``del m[i]`` (the rest renumbered, as torch), ``+``, ``+=``."""

    def __init__(self, modules: Iterable[Module] | None = (), dtype: Any = np.float32,
                 device: str | None = None) -> None:
        super().__init__(dtype, device)
        if modules is not None:
            self.extend(modules)

    @staticmethod
    def _checked(container: Module, module: Any) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"{type(container).__name__} holds Modules, got {type(module).__name__}")
        return module

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self)), self._checked(self, module))
        return self

    def extend(self, modules: Iterable[Module]) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def _items(self) -> list[tuple[str, Module]]:
        return list(self._raw_children())

    def _set_items(self, items: list[tuple[str, Module]]) -> None:
        """Make ``items`` the children, in that order (attribute order is what the walkers follow)."""
        for name, _ in self._items():
            object.__delattr__(self, name)
        for name, m in items:
            object.__setattr__(self, name, m)

    def _index(self, idx: Any, n: int, inserting: bool = False) -> int:
        """``idx`` as a position in [0, n) (in [0, n] for ``insert``), IndexError outside, as torch's."""
        i = operator.index(idx)
        hi = n + 1 if inserting else n
        if not -n <= i < hi:
            raise IndexError(f"index {i} is out of range for {type(self).__name__} of length {n}")
        return i + n if i < 0 else i

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Module]:
        return iter([m for _, m in self._items()])

    def _sliced(self, items: list[tuple[str, Module]]) -> "ModuleList":
        new = type(self).__new__(type(self))
        Module.__init__(new, self.dtype, self.device)
        for _, m in items:
            new.append(m)
        return new

    def __getitem__(self, i: int | slice) -> Any:
        items = self._items()
        if isinstance(i, slice):
            return self._sliced(items[i])
        return items[self._index(i, len(items))][1]

    def __setitem__(self, i: int, module: Module) -> None:
        """Replace the module at position ``i`` (its name is kept)."""
        items = self._items()
        setattr(self, items[self._index(i, len(items))][0], self._checked(self, module))

    def __delitem__(self, i: int | slice) -> None:
        """Remove the module(s) at ``i``; the rest are renumbered ``0, 1, ...``, as torch's."""
        items = self._items()
        drop = set(range(len(items))[i]) if isinstance(i, slice) else {self._index(i, len(items))}
        self._set_items([(str(k), m) for k, m in enumerate(m for j, (_, m) in enumerate(items) if j not in drop)])

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index``; the modules from there on are renumbered up by one."""
        modules = [m for _, m in self._items()]
        modules.insert(self._index(index, len(modules), inserting=True), self._checked(self, module))
        self._set_items([(str(k), m) for k, m in enumerate(modules)])

    def pop(self, i: int | slice) -> Module:
        """Remove and return the module at ``i`` (the rest renumbered), as torch's."""
        module = self[i]
        del self[i]
        return module

    def __iadd__(self, modules: Iterable[Module]) -> "ModuleList":
        return self.extend(modules)

    def __add__(self, other: Iterable[Module]) -> "ModuleList":
        return ModuleList(list(self) + list(other), self.dtype, self.device)


class Sequential(ModuleList):
    """Modules applied one after another: ``Sequential(a, b, c)`` names them ``0``, ``1``, ``2``;
    ``Sequential(OrderedDict([("fc", a), ("act", b)]))`` keeps the given names, as torch's. A slice is a
    Sequential again (keeping the names); ``m[i] = layer`` keeps the name; ``del m[i]``, ``insert`` and
    ``pop`` renumber the modules ``0, 1, ...``, as torch's."""

    def __init__(self, *modules: Module) -> None:
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            super().__init__()
            for name, m in modules[0].items():
                self.add_module(name, self._checked(self, m))
        else:
            super().__init__(modules)

    def _sliced(self, items: list[tuple[str, Module]]) -> "Sequential":
        new = type(self).__new__(type(self))
        Module.__init__(new, self.dtype, self.device)
        for name, m in items:
            setattr(new, name, m)
        return new

    def insert(self, index: int, module: Module) -> "Sequential":
        super().insert(index, module)
        return self  # torch's Sequential.insert returns the container (its ModuleList.insert returns None)

    def __add__(self, other: "Sequential") -> "Sequential":
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other)} is given.")
        return Sequential(*self, *other)

    def __iadd__(self, other: "Sequential") -> "Sequential":
        if not isinstance(other, Sequential):
            raise ValueError(f"add operator supports only objects of Sequential class, but {type(other)} is given.")
        return self.extend(list(other))

    def __mul__(self, times: int) -> "Sequential":
        if not isinstance(times, int) or isinstance(times, bool):
            raise TypeError(f"unsupported operand type(s) for *: {type(self)} and {type(times)}")
        if times <= 0:
            raise ValueError(f"Non-positive multiplication factor {times} for {type(self)}")
        return Sequential(*(list(self) * times))  # the same module objects, repeated, as torch's

    __rmul__ = __mul__

    def __imul__(self, times: int) -> "Sequential":
        repeated = self * times  # checks ``times`` as torch's
        return self.extend(list(repeated)[len(self):])

    def forward(self, x: Any) -> Any:
        for m in self:
            x = m(x)
        return x
