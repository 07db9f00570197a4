"""One step of each recurrent cell, as plain functions of arrays (no framework).

Every API of jaxrnn (the functional core, the Flax linen and Flax NNX modules)
and both loops over time (XLA's and the CPU kernel's reference) use these
equations; there is no other copy. A step is split into the two parts a fast
scanned layer needs:

* the *input projection* ``gx = x @ weight_ih.T + bias_ih``, which does not
  depend on the state and so can be done for all time steps at once, and
* the *recurrence* ``combine(gx, gh, state, weight_hr) -> (state, h)`` with
  ``gh = h @ weight_hh.T + bias_hh``, the part that must run step by step.

Shapes (``G`` gates: 1 for RNN, 4 for LSTM, 3 for GRU; ``H`` is
``hidden_size``; ``P`` is ``proj_size`` or ``H`` when it is 0)::

    weight_ih  (G*H, H_in)     bias_ih  (G*H,)
    weight_hh  (G*H, P)        bias_hh  (G*H,)
    weight_hr  (P, H)          LSTM with proj_size > 0 only

A state is always a tuple: ``(h,)`` for RNN and GRU, ``(h, c)`` for LSTM,
with ``h`` of shape ``(..., P)`` and ``c`` of ``(..., H)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
State = tuple[Array, ...]
Weights = dict[str, Array | None]

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_ACTIVATIONS = {"rnn_tanh": jnp.tanh, "rnn_relu": jax.nn.relu}


def kind_of(cell: str, nonlinearity: str = "tanh") -> str:
    """``('rnn', 'relu') -> 'rnn_relu'``, ``('lstm', _) -> 'lstm'``: the name of a cell's equations."""
    return f"rnn_{nonlinearity}" if cell == "rnn" else cell


def project_input(weights: Weights, x: Array) -> Array:
    """``x @ weight_ih.T + bias_ih``: ``(..., H_in) -> (..., G*H)``."""
    gx = x @ weights["weight_ih"].T
    if weights["bias_ih"] is not None:
        gx = gx + weights["bias_ih"]
    return gx


def project_hidden(weights: Weights, h: Array) -> Array:
    """``h @ weight_hh.T + bias_hh``: ``(..., P) -> (..., G*H)``."""
    gh = h @ weights["weight_hh"].T
    if weights["bias_hh"] is not None:
        gh = gh + weights["bias_hh"]
    return gh


def rnn_combine(activation, gx: Array, gh: Array, state: State) -> tuple[State, Array]:
    """Elman, as ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""
    h = activation(gx + gh)
    return (h,), h


def lstm_combine(gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
    """LSTM, as ``torch.nn.LSTM`` (gate order i, f, g, o)::

    i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh, 4)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h' = sigmoid(o) * tanh(c')          then h' = W_hr h' when proj_size > 0
    """
    _, c = state
    i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if weight_hr is not None:
        h = h @ weight_hr.T
    return (h, c), h


def gru_combine(gx: Array, gh: Array, state: State) -> tuple[State, Array]:
    """GRU, as ``torch.nn.GRU`` (gate order r, z, n; ``b_hn`` inside the reset product)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
    """
    (h,) = state
    x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)
    h = (1.0 - z) * n + z * h
    return (h,), h


@dataclasses.dataclass(frozen=True)
class Cell:
    """The equations of one cell kind at one size: what the loop over time scans.

    Attributes:
      kind: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` or ``"gru"``.
      hidden_size: ``H``.
      proj_size: LSTM's output projection ``P`` (0: none).
    """

    kind: str
    hidden_size: int
    proj_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cell kind {self.kind!r}; expected one of {KINDS}.")

    @property
    def num_gates(self) -> int:
        return NUM_GATES[self.kind]

    @property
    def has_cell_state(self) -> bool:
        return self.kind == "lstm"

    @property
    def output_size(self) -> int:
        """Features of ``h``: ``proj_size or hidden_size``."""
        return self.proj_size or self.hidden_size

    def zero_state(self, batch_shape: tuple[int, ...], dtype: Any) -> State:
        """All-zero state: ``(h,)`` or ``(h, c)``, each ``batch_shape + (features,)``."""
        h = jnp.zeros(batch_shape + (self.output_size,), dtype)
        if self.has_cell_state:
            return (h, jnp.zeros(batch_shape + (self.hidden_size,), dtype))
        return (h,)

    def combine(self, gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        """The step after both projections (each ``(..., G*H)``): ``(state, h)``."""
        if self.kind == "lstm":
            return lstm_combine(gx, gh, state, weight_hr)
        if self.kind == "gru":
            return gru_combine(gx, gh, state)
        return rnn_combine(_ACTIVATIONS[self.kind], gx, gh, state)

    def step(self, weights: Weights, state: State, x: Array) -> tuple[State, Array]:
        """One whole step from the raw input ``x`` ``(..., H_in)``: ``(state, h)``."""
        return self.combine(project_input(weights, x), project_hidden(weights, state[0]), state, weights["weight_hr"])
