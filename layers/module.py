"""Module and Parameter: the base every layer builds on, with PyTorch's names and habits."""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..engine.backend import check_device, to_device
from ..engine.tensor import Tensor

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class Parameter(Tensor):
    """A leaf tensor that a Module owns and an optimiser updates (requires_grad is on)."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


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

    # ---- walking ------------------------------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator["Module"]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        seen: set = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, value in vars(mod).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    # ---- modes ----------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ---- dtype and device -----------------------------------------------------------------------------------------
    def to(self, device_or_dtype: Any) -> "Module":
        """Move to 'cpu'/'cuda' or cast to float32/float64, in place (the Parameter objects stay the same)."""
        if isinstance(device_or_dtype, str):
            device = check_device(device_or_dtype)
            for p in self.parameters():
                p.data = to_device(p.data, device)
                p.grad = None if p.grad is None else to_device(p.grad, device)
            for m in self.modules():
                object.__setattr__(m, "device", device)
        else:
            dtype = _float_dtype(device_or_dtype)
            for p in self.parameters():
                p.data = p.data.astype(dtype)
                p.grad = None if p.grad is None else p.grad.astype(dtype)
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
    def state_dict(self) -> dict[str, np.ndarray]:
        """{name: numpy array (a copy, on the host)} in registration order."""
        return {name: np.array(to_device(p.data, "cpu"), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Copy values in by name. Names and shapes must match exactly (unless ``strict=False``, which
        ignores missing and unexpected names but still checks shapes); values are cast to this
        module's dtype and moved to its device."""
        if not hasattr(state, "items"):
            raise TypeError(f"state must be a mapping of name -> array, got {type(state).__name__}")
        params = dict(self.named_parameters())
        missing = [k for k in params if k not in state]
        unexpected = [k for k in state if k not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        staged = {}
        for name, p in params.items():
            if name not in state:
                continue
            value = state[name]
            value = value.numpy() if isinstance(value, Tensor) else value
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            arr = np.asarray(to_device(value, "cpu") if type(value).__module__.startswith("cupy") else value)
            if arr.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {arr.shape} in the state, "
                                 f"{p.shape} in the module")
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"load_state_dict: {name} has non-numeric dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ValueError(f"load_state_dict: {name} holds NaN or Inf")
            staged[name] = arr
        for name, arr in staged.items():  # all checked first: a bad entry changes nothing
            p = params[name]
            p.data = to_device(np.array(arr, dtype=self.dtype, copy=True), self.device)
            p.grad = None
        for m in self.modules():
            m._after_to()

    # ---- printing ------------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = []
        for name, child in self.named_children():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of sub-modules, registered as ``0``, ``1``, ... (PyTorch's naming)."""

    def __init__(self, modules: Any = (), dtype: Any = np.float32, device: str | None = None) -> None:
        super().__init__(dtype, device)
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self)), module)
        return self

    def __len__(self) -> int:
        return sum(1 for _ in self.named_children())

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self.children()))

    def __getitem__(self, i: int) -> Module:
        return list(self.children())[i]


class Sequential(ModuleList):
    """Modules applied one after another."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for m in self:
            x = m(x)
        return x

