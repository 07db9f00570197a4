"""Multi-layer, optionally bidirectional ``RNN``, ``LSTM`` and ``GRU`` with PyTorch's semantics.

Each module takes the constructor arguments of its ``torch.nn`` twin, in
torch's order (positionally or by keyword), and returns what it returns::

    RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True,
        batch_first=False, dropout=0.0, bidirectional=False)
    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
         dropout=0.0, bidirectional=False, proj_size=0)
    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
        dropout=0.0, bidirectional=False)

    output, h_n = module.apply(variables, x, hx=None, seq_lengths=None,
                               deterministic=True, rngs={'dropout': key})

(``LSTM``: ``hx`` and the returned state are ``(h, c)`` tuples.) The
JAX-only options (``param_dtype``, ``cpu_kernel``, ...) are keyword-only.

Shapes, with ``D = 2`` if bidirectional else 1, ``P = proj_size or hidden_size``::

    x         (L, N, H_in), (N, L, H_in) if batch_first, or unbatched (L, H_in)
    output    (L, N, D*P),  (N, L, D*P) if batch_first, or (L, D*P)
    hx, h_n   (D*num_layers, N, P), or (D*num_layers, P) unbatched
    c_0, c_n  (D*num_layers, N, hidden_size)             LSTM only
    seq_lengths (N,) ints in [0, L]

Parameters live in ``variables['params']`` under exactly the keys of the torch
module's ``state_dict()`` (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...),
with the same shapes, so import and export are renames of nothing.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn.backend import check_cpu_kernel
from jaxrnn.cells import (
    GRUCell,
    LSTMCell,
    RNNCell,
    State,
    _Cell,
    check_input_size,
    declare_weights,
)
from jaxrnn.padding import check_seq_lengths, lengths_to_mask
from jaxrnn.recurrence import Recurrence

Array = jax.Array


class _StackedRecurrent(nn.Module):
    """The stacking, directions, lengths, states and dropout shared by ``RNN``, ``LSTM`` and ``GRU``.

    Fields ``input_size`` (optional, checked when given), ``hidden_size`` and
    ``num_layers`` here; each layer declares the rest in torch's order (``bias``,
    ``batch_first``, ``dropout``, ``bidirectional``, and RNN's ``nonlinearity``
    before them, LSTM's ``proj_size`` after them); then the keyword-only JAX options ``param_dtype``,
    ``unroll`` (``nn.scan`` unroll) and ``hoist_input_projection`` (project the
    inputs of all steps in one matmul before the scan, as cuDNN does; off by
    default because on a 2-core CPU it measured 1.2-1.8x slower for LSTM/GRU at
    hidden 256-512, see ``Recurrence``); and ``fused_backward`` (a hand-written
    backward pass with the weight gradients as large matmuls after the loop,
    see ``Recurrence``); ``cpu_kernel`` (``"auto"``, ``"never"`` or
    ``"always"``: run float32 layers in jaxrnn's hand-written CPU kernel,
    :mod:`jaxrnn.kernels.cpu`, see ``Recurrence``); and ``record_states`` (store
    every step's states, for :func:`jaxrnn.step_states`).
    """

    input_size: int | None = None
    hidden_size: int | None = None
    num_layers: int = 1
    if TYPE_CHECKING:  # declared by each layer, in torch's order
        bias: bool
        batch_first: bool
        dropout: float
        bidirectional: bool
    param_dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)
    unroll: int = dataclasses.field(default=1, kw_only=True)
    hoist_input_projection: bool = dataclasses.field(default=False, kw_only=True)
    fused_backward: bool = dataclasses.field(default=False, kw_only=True)
    cpu_kernel: str = dataclasses.field(default="auto", kw_only=True)
    record_states: bool = dataclasses.field(default=False, kw_only=True)

    def __post_init__(self) -> None:
        name = type(self).__name__

        def positive_int(field: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {field} must be a positive int, got {value!r}.")

        def boolean(field: str, value: Any) -> None:
            if not isinstance(value, bool):
                raise ValueError(f"{name}: {field} must be a bool, got {value!r}.")

        positive_int("hidden_size", self.hidden_size)
        positive_int("input_size", self.input_size, allow_none=True)
        positive_int("num_layers", self.num_layers)
        for field in ("bias", "batch_first", "bidirectional"):
            boolean(field, getattr(self, field))
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real) or not 0 <= self.dropout <= 1:
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {self.dropout!r}.")
        if self.dropout > 0 and self.num_layers == 1:  # torch warns the same
            warnings.warn(
                f"{name}: dropout acts between recurrent layers, so dropout={self.dropout} with num_layers=1 "
                "does nothing.",
                UserWarning,
                stacklevel=3,
            )
        positive_int("unroll", self.unroll)
        for field in ("hoist_input_projection", "fused_backward", "record_states"):
            boolean(field, getattr(self, field))
        check_cpu_kernel(name, self.cpu_kernel)
        super().__post_init__()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def make_cell(self) -> _Cell:
        """The cell this stack scans (one definition shared by every layer and direction)."""
        raise NotImplementedError

    def _split_hx(self, hx: Any) -> tuple[Array, ...] | None:
        """``hx`` as given by the user -> tuple of stacked states, e.g. ``(h_0,)`` or ``(h_0, c_0)``."""
        return None if hx is None else (hx,)

    def _join_state(self, states: tuple[Array, ...]) -> Any:
        """Tuple of stacked final states -> what the user gets back (``h_n`` or ``(h_n, c_n)``)."""
        return states[0]

    @nn.compact
    def __call__(
        self,
        x: Array,
        hx: Any = None,
        seq_lengths: Array | None = None,
        deterministic: bool = True,
        *,
        h_0: Any = None,
    ) -> tuple[Array, Any]:
        """Runs the stack: ``(x, hx) -> (output, h_n)`` (see the module docstring for shapes).

        ``hx`` is the initial state (torch's name, positional or keyword): ``h_0``, or ``(h_0, c_0)`` for
        LSTM; zeros when None. ``h_0=`` is a deprecated alias of ``hx``.
        """
        name = type(self).__name__
        if h_0 is not None:
            if hx is not None:
                raise ValueError(f"{name}: pass the initial state once, as hx (h_0 is its deprecated alias).")
            warnings.warn(
                f"{name}: h_0= is deprecated; pass the initial state as hx, as torch does.",
                DeprecationWarning,
                stacklevel=2,
            )
            hx = h_0
        x = jnp.asarray(x)
        if x.ndim not in (2, 3):
            layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
            raise ValueError(f"{name}: expected input of shape {layout} or unbatched (L, H_in), got {tuple(x.shape)}.")
        batched = x.ndim == 3
        if not batched:
            if seq_lengths is not None:
                raise ValueError(
                    f"{name}: seq_lengths needs batched input (N sequences); got unbatched {tuple(x.shape)}."
                )
            x = x[:, None, :]
        elif self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        length, batch, _ = x.shape
        check_input_size(name, self.input_size, x)
        dtype = jnp.result_type(x.dtype, self.param_dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = self.param_dtype
        x = x.astype(dtype)

        cell = self.make_cell()
        D = self.num_directions
        stack_size = D * self.num_layers
        initial = self._initial_state(cell, hx, stack_size, batch, batched, dtype)
        mask = None
        if seq_lengths is not None:
            lengths = check_seq_lengths(name, seq_lengths, batch, length)
            mask = lengths_to_mask(lengths, length, batch_first=False)  # (L, N)

        layer_input = x
        finals: list[State] = []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = declare_weights(
                    self,
                    suffix=suffix,
                    input_size=layer_input.shape[-1],
                    hidden_size=self.hidden_size,
                    num_gates=cell.num_gates,
                    bias=self.bias,
                    proj_size=getattr(self, "proj_size", 0),
                    param_dtype=self.param_dtype,
                )
                state, out = Recurrence(
                    cell,
                    reverse=direction == 1,
                    unroll=self.unroll,
                    hoist_input_projection=self.hoist_input_projection,
                    fused_backward=self.fused_backward,
                    cpu_kernel=self.cpu_kernel,
                    record_states=self.record_states,
                    name=f"recurrence{suffix}",
                )(weights, layer_input, tuple(s[layer * D + direction] for s in initial), mask)
                finals.append(state)
                outputs.append(out)
            layer_input = outputs[0] if D == 1 else jnp.concatenate(outputs, axis=-1)
            if self.dropout > 0 and layer < self.num_layers - 1:
                layer_input = nn.Dropout(rate=self.dropout, name=f"dropout_l{layer}")(
                    layer_input, deterministic=deterministic
                )

        output = layer_input
        stacked = tuple(jnp.stack(parts) for parts in zip(*finals))  # each (D*num_layers, N, ·)
        if batched:
            if self.batch_first:
                output = jnp.swapaxes(output, 0, 1)
        else:
            output = output[:, 0]
            stacked = tuple(s[:, 0] for s in stacked)
        return output, self._join_state(stacked)

    def _initial_state(
        self, cell: _Cell, hx: Any, stack_size: int, batch: int, batched: bool, dtype: Any
    ) -> tuple[Array, ...]:
        """Validated initial states, each ``(D*num_layers, N, ·)``; zeros when ``hx`` is None."""
        zeros = cell.zero_state((stack_size, batch), dtype)
        given = self._split_hx(hx)
        if given is None:
            return zeros
        names = ("hx[0] (h_0)", "hx[1] (c_0)") if len(given) == 2 else ("hx",)
        states = []
        for state_name, zero, s in zip(names, zeros, given):
            s = jnp.asarray(s)
            want = zero.shape if batched else (zero.shape[0], zero.shape[2])
            if s.shape != want:
                raise ValueError(f"{type(self).__name__}: expected {state_name} of shape {want}, got {tuple(s.shape)}.")
            states.append((s if batched else s[:, None]).astype(dtype))
        return tuple(states)


class RNN(_StackedRecurrent):
    """Elman RNN, as ``torch.nn.RNN``: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False)``, positionally as in torch: ``RNN(4, 8, 2, 'relu')`` is a
    two-layer ReLU RNN. ``nonlinearity`` is ``'tanh'`` or ``'relu'``.
    See the module docstring of :mod:`jaxrnn.rnn` for the call and shapes.
    """

    nonlinearity: str = "tanh"
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def __post_init__(self) -> None:
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: unknown nonlinearity {self.nonlinearity!r}; expected 'tanh' or 'relu'.")
        super().__post_init__()

    def make_cell(self) -> _Cell:
        return RNNCell(hidden_size=self.hidden_size, bias=self.bias, nonlinearity=self.nonlinearity, parent=None)


class LSTM(_StackedRecurrent):
    """LSTM, as ``torch.nn.LSTM`` (gates i, f, g, o; optional output projection ``proj_size``).

    ``h_0`` and the returned state are tuples ``(h, c)``: ``h`` has ``P = proj_size
    or hidden_size`` features, ``c`` keeps ``hidden_size``. With ``proj_size > 0``
    each layer has ``weight_hr_l{k}`` ``(proj_size, hidden_size)`` and ``output``
    carries ``D*proj_size`` features. See :mod:`jaxrnn.rnn` for the call and shapes.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0)``, positionally as in torch.
    """

    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.proj_size, bool) or not isinstance(self.proj_size, int) or self.proj_size < 0:
            raise ValueError(f"LSTM: proj_size must be a non-negative int, got {self.proj_size!r}.")
        if self.proj_size > 0 and isinstance(self.hidden_size, int) and self.proj_size >= self.hidden_size:
            raise ValueError(
                f"LSTM: proj_size must be smaller than hidden_size, got proj_size={self.proj_size} "
                f"and hidden_size={self.hidden_size}."
            )
        super().__post_init__()

    def make_cell(self) -> _Cell:
        return LSTMCell(hidden_size=self.hidden_size, bias=self.bias, proj_size=self.proj_size, parent=None)

    def _split_hx(self, hx: Any) -> tuple[Array, ...] | None:
        if hx is None:
            return None
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(f"LSTM: hx must be a tuple (h_0, c_0), got {type(hx).__name__}.")
        return tuple(hx)

    def _join_state(self, states: tuple[Array, ...]) -> tuple[Array, Array]:
        return states[0], states[1]


class GRU(_StackedRecurrent):
    """GRU, as ``torch.nn.GRU`` (gates r, z, n; ``b_hn`` inside the reset product).

    See :class:`jaxrnn.GRUCell` for the equations and :mod:`jaxrnn.rnn` for the call and shapes.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False)``, positionally as in torch.
    """

    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    def make_cell(self) -> _Cell:
        return GRUCell(hidden_size=self.hidden_size, bias=self.bias, parent=None)
