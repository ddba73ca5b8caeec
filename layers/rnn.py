"""Recurrent layers with PyTorch's signatures, parameter names and gate order: RNN, LSTM, RNNCell, LSTMCell.

Each layer-direction of a multi-layer RNN/LSTM is one node on the tape
(:func:`tapegrad.engine.recurrent.lstm_sequence` / :func:`~tapegrad.engine.recurrent.rnn_sequence`), so a
long sequence costs one recorded op per layer and direction, not one per step. A model saved from
``torch.nn.LSTM(...).state_dict()`` loads unchanged (same names, shapes and order).
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from ..engine import nn as F
from ..engine import ops
from ..engine.backend import array_module, to_device
from ..engine.recurrent import lstm_sequence, rnn_sequence
from ..engine.tensor import Tensor, as_tensor
from . import init
from .module import Module, _as_input

__all__ = ["LSTM", "RNN", "LSTMCell", "RNNBase", "RNNCell", "RNNCellBase"]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _empty_batch(module: Module, inputs: tuple, out_shape: tuple, n_states: int):
    """torch's result for a batch of 0 sequences, which the engine's recurrences refuse: empty outputs
    [T, 0, D*H] and states [L*D, 0, H] on the graph of every parameter and input (so a loss summed over
    them backpropagates zeros, as in torch), returned as ``_run`` returns them."""
    xp = array_module(inputs[0].data)
    anchor = None
    for t in [*module.parameters(), *(i for i in inputs if i is not None)]:
        term = ops.sum(t)
        anchor = term if anchor is None else anchor + term

    def empty(shape: tuple) -> Tensor:
        return Tensor(xp.zeros(shape, dtype=module.dtype)) * anchor

    state = (0, module.hidden_size)
    return (empty(out_shape), [empty(state) for _ in range(n_states)],
            [empty(state) for _ in range(n_states if module._gate_mult == 4 else 0)])


def _check_bool(name: str, value: Any) -> bool:
    """torch's check: a string such as 'False' is truthy, so only real booleans are taken."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be of type bool, got: {type(value).__name__}")
    return bool(value)


def _check_proj_size(proj_size: Any) -> int:
    if isinstance(proj_size, (bool, np.bool_)) or not isinstance(proj_size, numbers.Integral):
        raise TypeError(f"proj_size should be an integer (0: no projection), got {type(proj_size).__name__} "
                        f"{proj_size!r}")
    if proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size}")
    if proj_size > 0:
        raise NotImplementedError(f"proj_size={proj_size}: LSTMs with projections are not supported by tapegrad; "
                                  "only proj_size=0 (no projection, torch's default) is")
    return 0


def _uniform_init(module: Module, hidden_size: int) -> None:
    """Every weight and bias U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as PyTorch's RNNs."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        init.uniform_(p, -bound, bound)


class RNNBase(Module):
    """What RNN and LSTM share: the parameter table, argument checks and the layer / direction loop."""

    _gate_mult = 1  # 4 for an LSTM: the gates are stacked along the first axis of each weight

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: Any = np.float32, device: str | None = None) -> None:
        super().__init__(dtype, device)
        self.mode = mode
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a number in [0, 1] (the probability of zeroing an element), "
                             f"got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout={dropout} and num_layers=1: dropout acts only between layers, "
                          "so it does nothing here", stacklevel=3)
        self.bias = _check_bool("bias", bias)
        self.batch_first = _check_bool("batch_first", batch_first)
        self.proj_size = 0  # torch's attribute; LSTM(proj_size > 0) is refused
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        gates = self._gate_mult * self.hidden_size
        directions = 2 if self.bidirectional else 1
        # Registration order = PyTorch's: per layer, per direction, w_ih, w_hh, b_ih, b_hh.
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.hidden_size * directions
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = [f"weight_ih{suffix}", f"weight_hh{suffix}"]
                setattr(self, names[0], self.new_parameter((gates, layer_input)))
                setattr(self, names[1], self.new_parameter((gates, self.hidden_size)))
                if self.bias:
                    names += [f"bias_ih{suffix}", f"bias_hh{suffix}"]
                    setattr(self, names[2], self.new_parameter((gates,)))
                    setattr(self, names[3], self.new_parameter((gates,)))
                self._flat_weights_names.extend(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_init(self, self.hidden_size)

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch compacts cuDNN weights here); kept so PyTorch code runs unchanged."""

    @property
    def all_weights(self) -> list[list[Tensor]]:
        """Parameters grouped per layer-direction: [[w_ih, w_hh, b_ih, b_hh], ...] (no biases if bias=False)."""
        per = 4 if self.bias else 2
        flat = [getattr(self, n) for n in self._flat_weights_names]
        return [flat[i:i + per] for i in range(0, len(flat), per)]

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    # ---- argument handling ----------------------------------------------------------------------------------
    def _prepare_input(self, input: Any) -> tuple[Tensor, bool]:
        if type(input).__name__ == "PackedSequence":  # torch's, told apart without importing torch
            raise TypeError("input is a PackedSequence; tapegrad's RNNs take the padded batch and its lengths "
                            "instead: padded, lengths = torch.nn.utils.rnn.pad_packed_sequence(packed, "
                            f"batch_first={self.batch_first}), then call the layer as (padded, lengths=lengths), "
                            "which gives packed-sequence semantics")
        x = _as_input(self, input, "input")
        if x.ndim not in (2, 3):
            raise ValueError(f"input must be 3-D ({'[B, T, I]' if self.batch_first else '[T, B, I]'}) or "
                             f"2-D unbatched [T, I], got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features in its last dimension, "
                             f"expected input_size={self.input_size} (input shape {x.shape})")
        batched = x.ndim == 3
        shape = x.shape
        if not batched:
            x = ops.reshape(x, (x.shape[0], 1, x.shape[1]))
        elif self.batch_first:
            x = ops.transpose(x, (1, 0, 2))
        if x.shape[0] == 0:
            raise ValueError(f"input has sequence length 0 (input shape {shape}); an RNN needs at least one step")
        return x, batched

    def _prepare_state(self, state: Any, name: str, batch: int, batched: bool) -> Tensor | None:
        """``state`` [L*D, B, H] (or [L*D, H] unbatched) as a Tensor [L*D, B, H], or None."""
        if state is None:
            return None
        s = _as_input(self, state, name)
        expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
        if not batched:
            want = (expected[0], expected[2])
            if s.shape != want:
                raise ValueError(f"{name} must have shape {want} for unbatched input, got {s.shape}")
            return ops.reshape(s, expected)
        if s.shape != expected:
            raise ValueError(f"{name} must have shape {expected} "
                             "(num_layers * num_directions, batch, hidden_size), got " f"{s.shape}")
        return s

    @staticmethod
    def _prepare_lengths(lengths: Any, batched: bool) -> Any:
        if lengths is None or batched:
            return lengths
        arr = np.asarray(to_device(lengths.data if isinstance(lengths, Tensor) else lengths, "cpu"))
        if arr.size != 1:
            raise ValueError(f"lengths for an unbatched input must be one number, got shape {arr.shape}")
        return arr.reshape(1)

    def _finish_output(self, out: Tensor, batched: bool) -> Tensor:
        if not batched:
            return ops.reshape(out, (out.shape[0], out.shape[2]))
        if self.batch_first:
            return ops.transpose(out, (1, 0, 2))
        return out

    def _finish_state(self, states: list, batched: bool) -> Tensor:
        s = ops.stack(states, axis=0) if len(states) > 1 else ops.reshape(states[0], (1,) + states[0].shape)
        return s if batched else ops.reshape(s, (s.shape[0], s.shape[2]))

    def _run(self, x: Tensor, h0: Tensor | None, c0: Tensor | None, lengths: Any):
        """The layer / direction loop; returns (output [T, B, D*H], [h_n per layer-direction], [c_n ...])."""
        B = x.shape[1]
        if B == 0:
            return _empty_batch(self, (x, h0, c0), (x.shape[0], 0, self.num_directions * self.hidden_size),
                                self.num_layers * self.num_directions)
        zeros = None
        if h0 is None or (self._gate_mult == 4 and c0 is None):
            xp = array_module(x.data)
            zeros = Tensor(xp.zeros((B, self.hidden_size), dtype=self.dtype))
        weights = self.all_weights
        h_ns, c_ns = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                k = layer * self.num_directions + direction
                w = weights[k]
                b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
                h_init = zeros if h0 is None else ops.getitem(h0, k)
                if self._gate_mult == 4:
                    c_init = zeros if c0 is None else ops.getitem(c0, k)
                    out, h_n, c_n = lstm_sequence(layer_input, h_init, c_init, w[0], w[1], b_ih, b_hh,
                                                  lengths=lengths, reverse=bool(direction))
                    c_ns.append(c_n)
                else:
                    out, h_n = rnn_sequence(layer_input, h_init, w[0], w[1], b_ih, b_hh,
                                            nonlinearity=self.nonlinearity, lengths=lengths,
                                            reverse=bool(direction))
                outs.append(out)
                h_ns.append(h_n)
            layer_input = outs[0] if len(outs) == 1 else ops.concat(outs, axis=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        return layer_input, h_ns, c_ns

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(RNNBase):
    r"""A multi-layer Elman RNN, as ``torch.nn.RNN``.

    For each element of the input sequence, each layer computes

    .. math::
        h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    (ReLU instead of tanh with ``nonlinearity='relu'``), where :math:`x_t` is the input of layer 1 or,
    for a deeper layer, the previous layer's output (times a dropout mask in training, if ``dropout``).

    Args:
        input_size: features of the input x.
        hidden_size: features of the hidden state h.
        num_layers: stacked layers (default 1).
        nonlinearity: ``'tanh'`` (default) or ``'relu'``.
        bias: use b_ih and b_hh (default True). A bool, as for batch_first: torch's check, since a
            string such as 'False' would read as True.
        batch_first: input and output are [B, T, feature] instead of [T, B, feature] (not h_n). Default False.
        dropout: probability of dropout on the outputs of every layer but the last, in training (default 0).
        bidirectional: also run each layer from the end (default False); outputs are concatenated.
        dtype: float32 (default) or float64. device: ``'cpu'`` (default) or ``'cuda'``.

    Inputs: ``input, hx=None, lengths=None``
        - input: [T, B, input_size] ([B, T, input_size] if batch_first), or unbatched [T, input_size].
          T >= 1; B may be 0 (empty outputs of these shapes, as torch's).
        - hx: [num_layers * num_directions, B, hidden_size] initial states (zeros if None);
          [num_layers * num_directions, hidden_size] for unbatched input.
        - lengths: None, or integers [B] in [1, T]: a padded batch with PyTorch's packed-sequence
          semantics (outputs zero past each length, h_n the state at each sequence's last step).

    Outputs: ``output, h_n``
        - output: [T, B, num_directions * hidden_size] (batch_first: [B, T, ...]), the last layer's h_t.
        - h_n: [num_layers * num_directions, B, hidden_size], the final state of every layer-direction.

    Attributes:
        weight_ih_l[k]: [hidden_size, input_size] for k = 0, else [hidden_size, num_directions * hidden_size].
        weight_hh_l[k]: [hidden_size, hidden_size]. bias_ih_l[k], bias_hh_l[k]: [hidden_size].
        The reverse direction's parameters carry the suffix ``_reverse``. All are initialised
        :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with :math:`k = 1 / \text{hidden\_size}`.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: Any = np.float32, device: str | None = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype, device)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Tensor, Tensor]:
        x, batched = self._prepare_input(input)
        h0 = self._prepare_state(hx, "hx", x.shape[1], batched)
        out, h_ns, _ = self._run(x, h0, None, self._prepare_lengths(lengths, batched))
        return self._finish_output(out, batched), self._finish_state(h_ns, batched)


class LSTM(RNNBase):
    r"""A multi-layer long short-term memory RNN, as ``torch.nn.LSTM``.

    For each element of the input sequence, each layer computes

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    where :math:`\sigma` is the sigmoid and :math:`\odot` the elementwise product; :math:`x_t` is the
    input of layer 1 or, for a deeper layer, the previous layer's output (times a dropout mask in
    training, if ``dropout``).

    Args:
        input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, dtype=float32, device=None: as for :class:`RNN`.
        proj_size: 0 (default, torch's: no projection) is the only value accepted; an LSTM with
            projections (proj_size > 0) raises NotImplementedError.

    Inputs: ``input, hx=None, lengths=None``
        - input: [T, B, input_size] ([B, T, input_size] if batch_first), or unbatched [T, input_size].
        - hx: a tuple (h_0, c_0), each [num_layers * num_directions, B, hidden_size] (zeros if None);
          [num_layers * num_directions, hidden_size] for unbatched input.
        - lengths: None, or integers [B] in [1, T] (padded batch, packed-sequence semantics).

    Outputs: ``output, (h_n, c_n)``
        - output: [T, B, num_directions * hidden_size] (batch_first: [B, T, ...]), the last layer's h_t.
        - h_n, c_n: [num_layers * num_directions, B, hidden_size], the final hidden and cell states.

    Attributes:
        weight_ih_l[k]: [4 * hidden_size, input_size] for k = 0, else [4 * hidden_size,
        num_directions * hidden_size], the gates stacked (W_ii | W_if | W_ig | W_io).
        weight_hh_l[k]: [4 * hidden_size, hidden_size]. bias_ih_l[k], bias_hh_l[k]: [4 * hidden_size].
        The reverse direction's parameters carry the suffix ``_reverse``. All are initialised
        :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with :math:`k = 1 / \text{hidden\_size}`.
    """

    _gate_mult = 4

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, dtype: Any = np.float32, device: str | None = None) -> None:
        _check_proj_size(proj_size)
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, device)

    def forward(self, input: Any, hx: Any = None, lengths: Any = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, batched = self._prepare_input(input)
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx for an LSTM must be a tuple (h_0, c_0)")
            h0 = self._prepare_state(hx[0], "hx[0] (h_0)", x.shape[1], batched)
            c0 = self._prepare_state(hx[1], "hx[1] (c_0)", x.shape[1], batched)
        out, h_ns, c_ns = self._run(x, h0, c0, self._prepare_lengths(lengths, batched))
        return self._finish_output(out, batched), (self._finish_state(h_ns, batched),
                                                   self._finish_state(c_ns, batched))


# ---- cells -------------------------------------------------------------------------------------------------

class RNNCellBase(Module):
    _gate_mult = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool, dtype: Any, device: str | None) -> None:
        super().__init__(dtype, device)
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.bias = _check_bool("bias", bias)  # stricter than torch's cells, which read 'False' as True
        gates = self._gate_mult * self.hidden_size
        self.weight_ih = self.new_parameter((gates, self.input_size))
        self.weight_hh = self.new_parameter((gates, self.hidden_size))
        if self.bias:
            self.bias_ih = self.new_parameter((gates,))
            self.bias_hh = self.new_parameter((gates,))
        else:
            self.bias_ih = self.bias_hh = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_init(self, self.hidden_size)

    def _prepare(self, input: Any) -> tuple[Tensor, bool]:
        x = _as_input(self, input, "input")
        if x.ndim not in (1, 2):
            raise ValueError(f"input must be 2-D [B, input_size] or 1-D unbatched [input_size], "
                             f"got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features in its last dimension, "
                             f"expected input_size={self.input_size} (input shape {x.shape})")
        batched = x.ndim == 2
        x = ops.reshape(x, (1,) + (x.shape if batched else (1, x.shape[0])))
        return x, batched

    def _state(self, state: Any, name: str, batch: int, batched: bool) -> Tensor:
        if state is None:
            return as_tensor(np.zeros((batch, self.hidden_size), dtype=self.dtype), device=self.device)
        s = _as_input(self, state, name)
        want = (batch, self.hidden_size) if batched else (self.hidden_size,)
        if s.shape != want:
            raise ValueError(f"{name} must have shape {want} to match the input, got {s.shape}")
        return s if batched else ops.reshape(s, (1, self.hidden_size))

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s


class RNNCell(RNNCellBase):
    r"""One step of an Elman RNN, as ``torch.nn.RNNCell``:

    .. math::
        h' = \tanh(x W_{ih}^T + b_{ih} + h W_{hh}^T + b_{hh})

    (ReLU with ``nonlinearity='relu'``).

    Args: input_size, hidden_size, bias=True, nonlinearity='tanh', dtype=float32, device=None.

    ``forward(input, hx=None)``: input [B, input_size] or [input_size]; hx [B, hidden_size] or
    [hidden_size] (zeros if None) -> h' of hx's shape.
    Parameters: weight_ih [hidden_size, input_size], weight_hh [hidden_size, hidden_size], bias_ih,
    bias_hh [hidden_size]; all :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, :math:`k = 1 / \text{hidden\_size}`.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 dtype: Any = np.float32, device: str | None = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, dtype, device)

    def forward(self, input: Any, hx: Any = None) -> Tensor:
        x, batched = self._prepare(input)
        h = self._state(hx, "hx", x.shape[1], batched)
        if x.shape[1] == 0:
            return _empty_batch(self, (x, h), (0, self.hidden_size), 0)[0]
        _, h_new = rnn_sequence(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                nonlinearity=self.nonlinearity)
        return h_new if batched else ops.reshape(h_new, (self.hidden_size,))


class LSTMCell(RNNCellBase):
    r"""One step of an LSTM, as ``torch.nn.LSTMCell``:

    .. math::
        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(c')
        \end{array}

    Args: input_size, hidden_size, bias=True, dtype=float32, device=None.

    ``forward(input, hx=None)``: input [B, input_size] or [input_size]; hx a tuple (h, c), each
    [B, hidden_size] or [hidden_size] (zeros if None) -> (h', c').
    Parameters: weight_ih [4 * hidden_size, input_size], weight_hh [4 * hidden_size, hidden_size],
    bias_ih, bias_hh [4 * hidden_size], gates stacked (i, f, g, o); all
    :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, :math:`k = 1 / \text{hidden\_size}`.
    """

    _gate_mult = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = np.float32,
                 device: str | None = None) -> None:
        super().__init__(input_size, hidden_size, bias, dtype, device)

    def forward(self, input: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        x, batched = self._prepare(input)
        if hx is None:
            h = c = self._state(None, "hx", x.shape[1], batched)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise ValueError("hx for an LSTMCell must be a tuple (h, c)")
            h = self._state(hx[0], "hx[0] (h)", x.shape[1], batched)
            c = self._state(hx[1], "hx[1] (c)", x.shape[1], batched)
        if x.shape[1] == 0:
            empty = _empty_batch(self, (x, h, c), (0, self.hidden_size), 0)[0]
            return empty, empty * 1
        _, h_new, c_new = lstm_sequence(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if batched:
            return h_new, c_new
        return ops.reshape(h_new, (self.hidden_size,)), ops.reshape(c_new, (self.hidden_size,))
