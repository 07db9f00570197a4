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

**The gates' gradients are never joined along the feature axis.** A
projection (:func:`project`) is one matmul ``(..., K) @ (K, G*H)`` split into
``G`` arrays ``(..., H)``, one per gate, as torch computes it. Its derivative
(a ``jax.custom_jvp``) takes each gate's rows of the weight on their own:
transposed for ``jax.grad``, the input's gradient is ``sum_g d_g @ W_g`` and the
weight's is the gates' ``(H, K)`` blocks stacked along the rows, each block
contiguous. The derivative JAX would write for ``split`` instead joins the
gates' ``(N, H)`` gradients side by side into ``(N, G*H)`` (an XLA
``concatenate`` along the minor axis), and XLA's CPU compiler (jaxlib 0.10.2)
emits wrong machine code for some of those joins on AVX-512 hosts: a float64
GRU with batch 4, hidden 5 and ``unroll > 1`` got gradients 2-20% off
(tests/test_xla_miscompile.py shows it without jaxrnn). The forward program is
the one it always was.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
State = tuple[Array, ...]
Weights = dict[str, Array | None]
Gates = tuple[Array, ...]  # one (..., H) array per gate, in torch's gate order

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
NUM_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_ACTIVATIONS = {"rnn_tanh": jnp.tanh, "rnn_relu": jax.nn.relu}


def kind_of(cell: str, nonlinearity: str = "tanh") -> str:
    """``('rnn', 'relu') -> 'rnn_relu'``, ``('lstm', _) -> 'lstm'``: the name of a cell's equations."""
    return f"rnn_{nonlinearity}" if cell == "rnn" else cell


class GateWeights(NamedTuple):
    """One projection's arrays, made once before a loop over time (:func:`gate_weights`).

    Attributes:
      weight: ``(G*H, K)``, torch's layout (``weight_ih`` or ``weight_hh``).
      weight_t: ``(K, G*H)``, ``weight.T``: inside XLA's CPU loop a matmul against a
        pre-transposed matrix measured ~10% faster per step than one that transposes
        on the fly (LSTM, batch 32, hidden 256, jax 0.10.2).
      bias: ``(G*H,)`` or None.
      num_gates: ``G``.
    """

    weight: Array
    weight_t: Array
    bias: Array | None
    num_gates: int


def gate_weights(weights: Weights, num_gates: int) -> tuple[GateWeights, GateWeights]:
    """The input and hidden projections' :class:`GateWeights`: ``(ih, hh)``."""
    return tuple(
        GateWeights(weights[f"weight_{p}"], weights[f"weight_{p}"].T, weights[f"bias_{p}"], num_gates)
        for p in ("ih", "hh")
    )


def gate_blocks(array: Array, num_gates: int) -> tuple[Array, ...]:
    """``(G*H, ...) -> G`` arrays ``(H, ...)``: each gate's rows (torch stacks the gates' rows)."""
    rows = array.shape[0] // num_gates
    return tuple(array[g * rows : (g + 1) * rows] for g in range(num_gates))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _project(num_gates: int, a: Array, weight: Array, weight_t: Array, bias: Array | None) -> Gates:
    """``split(a @ weight_t + bias, G)``; its derivative is taken gate by gate (see the module docstring)."""
    y = a @ weight_t
    if bias is not None:
        y = y + bias
    return tuple(jnp.split(y, num_gates, axis=-1))


@functools.partial(_project.defjvp, symbolic_zeros=True)
def _project_jvp(num_gates: int, primals: tuple, tangents: tuple) -> tuple[Gates, Gates]:
    """Each gate's tangent from its own rows: ``da @ W_g.T + a @ dW_g.T + db_g``.

    ``weight_t`` is ``weight.T``: its tangent is read from ``weight``'s. Transposed for
    reverse mode, this gives ``da = sum_g d_g @ W_g`` and ``dW`` as the gates' row blocks
    stacked along the rows, so the gates' gradients are never joined along the feature axis.
    """
    a, weight, weight_t, bias = primals
    d_a, d_weight, _, d_bias = tangents
    out = _project(num_gates, a, weight, weight_t, bias)
    shape = out[0].shape
    parts = [[] for _ in range(num_gates)]
    if not isinstance(d_a, SymbolicZero):
        for part, rows in zip(parts, gate_blocks(weight, num_gates)):
            part.append(d_a @ rows.T)
    if not isinstance(d_weight, SymbolicZero):
        for part, d_rows in zip(parts, gate_blocks(d_weight, num_gates)):
            part.append(a @ d_rows.T)
    if bias is not None and not isinstance(d_bias, SymbolicZero):
        for part, d_b in zip(parts, gate_blocks(d_bias, num_gates)):
            part.append(jnp.broadcast_to(d_b, shape))
    tangent = tuple(sum(part[1:], part[0]) if part else jnp.zeros(shape, out[0].dtype) for part in parts)
    return out, tangent


def project(weights: GateWeights, a: Array) -> Gates:
    """``a @ weight.T + bias``, one ``(..., H)`` array per gate: ``(..., K) -> G`` arrays ``(..., H)``.

    One matmul, split into the gates; its derivative takes each gate's rows on their own.
    """
    return _project(weights.num_gates, a, weights.weight, weights.weight_t, weights.bias)


def rnn_combine(activation, gx: Gates, gh: Gates, state: State) -> tuple[State, Array]:
    """Elman, as ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``."""
    h = activation(gx[0] + gh[0])
    return (h,), h


def lstm_combine(gx: Gates, gh: Gates, state: State, weight_hr: Array | None) -> tuple[State, Array]:
    """LSTM, as ``torch.nn.LSTM``.

    Gate order i, f, g, o::

        i, f, g, o = W_ih x + b_ih + W_hh h + b_hh      (each gate's rows)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')          then h' = W_hr h' when proj_size > 0
    """
    _, c = state
    i, f, g, o = (a + b for a, b in zip(gx, gh))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    if weight_hr is not None:
        h = h @ weight_hr.T
    return (h, c), h


def gru_combine(gx: Gates, gh: Gates, state: State) -> tuple[State, Array]:
    """GRU, as ``torch.nn.GRU``.

    Gate order r, z, n; ``b_hn`` inside the reset product::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h
    """
    (h,) = state
    x_r, x_z, x_n = gx
    h_r, h_z, h_n = gh
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

    def combine(self, gx: Gates, gh: Gates, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        """The step after both projections (each ``G`` arrays ``(..., H)``): ``(state, h)``."""
        if self.kind == "lstm":
            return lstm_combine(gx, gh, state, weight_hr)
        if self.kind == "gru":
            return gru_combine(gx, gh, state)
        return rnn_combine(_ACTIVATIONS[self.kind], gx, gh, state)

    def step(self, weights: Weights, state: State, x: Array) -> tuple[State, Array]:
        """One whole step from the raw input ``x`` ``(..., H_in)``: ``(state, h)``."""
        ih, hh = gate_weights(weights, self.num_gates)
        return self.combine(project(ih, x), project(hh, state[0]), state, weights["weight_hr"])
