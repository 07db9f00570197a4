"""One-step recurrent cells with PyTorch's equations, parameter names and layout.

A cell is split into the two parts a fast scanned layer needs:

* the *input projection* ``gx = x @ weight_ih.T + bias_ih``, which does not
  depend on the state and so can be done for all time steps at once, and
* the *recurrence* ``step(weights, state, gx) -> (state, h)``, the part that
  must run step by step.

``RNNCell``, ``LSTMCell`` and ``GRUCell`` are Flax modules usable alone, like
``torch.nn.RNNCell`` and friends: ``h_new = cell.apply(variables, x, hx)``.
The stacked modules in :mod:`jaxrnn.rnn` reuse the same ``step`` functions
and the same :func:`declare_weights`, so there is one definition of each cell.

Shapes (``G`` is the number of gates: 1 for RNN, 4 for LSTM, 3 for GRU;
``H`` is ``hidden_size``; ``P`` is ``proj_size`` or ``H`` when it is 0)::

    weight_ih  (G*H, H_in)     bias_ih  (G*H,)
    weight_hh  (G*H, P)        bias_hh  (G*H,)
    weight_hr  (P, H)          LSTM with proj_size > 0 only

Inside the stacked layers a state is always a tuple: ``(h,)`` for RNN and GRU,
``(h, c)`` for LSTM, with ``h`` of shape ``(..., P)`` and ``c`` of ``(..., H)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
State = tuple[Array, ...]
Weights = dict[str, Array | None]

NONLINEARITIES = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def uniform_init(bound: float) -> nn.initializers.Initializer:
    """PyTorch's recurrent init: ``U(-bound, bound)`` with ``bound = 1/sqrt(hidden_size)``."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def project_input(weights: Weights, x: Array) -> Array:
    """``x @ weight_ih.T + bias_ih``: ``(..., H_in) -> (..., G*H)``."""
    gx = x @ weights["weight_ih"].T
    if weights["bias_ih"] is not None:
        gx = gx + weights["bias_ih"]
    return gx


def _project_hidden(weights: Weights, h: Array) -> Array:
    """``h @ weight_hh.T + bias_hh``: ``(..., P) -> (..., G*H)``."""
    gh = h @ weights["weight_hh"].T
    if weights["bias_hh"] is not None:
        gh = gh + weights["bias_hh"]
    return gh


def declare_weights(
    module: nn.Module,
    *,
    suffix: str,
    input_size: int,
    hidden_size: int,
    num_gates: int,
    bias: bool,
    proj_size: int = 0,
    param_dtype: Any = jnp.float32,
) -> Weights:
    """Declares (or fetches) one cell's parameters on ``module`` under PyTorch's names.

    ``suffix`` is ``""`` for a lone cell and ``"_l{k}"`` / ``"_l{k}_reverse"``
    inside a stacked layer, giving exactly the keys of the torch ``state_dict``.
    Returns the arrays under suffix-free names (``weight_ih``, ...), with
    ``None`` for the biases when ``bias=False`` and for ``weight_hr`` without
    a projection.
    """
    init = uniform_init(1.0 / math.sqrt(hidden_size))
    out_size = proj_size or hidden_size
    gates = num_gates * hidden_size

    def param(name: str, shape: tuple[int, ...]) -> Array:
        existing = module.get_variable("params", name + suffix)
        if existing is not None and tuple(existing.shape) != shape:
            raise ValueError(
                f"{type(module).__name__}: parameter {name + suffix} has shape {tuple(existing.shape)}, but this "
                f"call needs {shape} (input features {input_size}): these variables were made for another input size."
            )
        return module.param(name + suffix, init, shape, param_dtype)

    return {
        "weight_ih": param("weight_ih", (gates, input_size)),
        "weight_hh": param("weight_hh", (gates, out_size)),
        "bias_ih": param("bias_ih", (gates,)) if bias else None,
        "bias_hh": param("bias_hh", (gates,)) if bias else None,
        "weight_hr": param("weight_hr", (proj_size, hidden_size)) if proj_size else None,
    }


def check_input_size(owner: str, expected: int | None, x: Array) -> int:
    """Returns the feature size of ``x``, raising if it differs from ``expected``."""
    got = x.shape[-1]
    if expected is not None and got != expected:
        raise ValueError(
            f"{owner}: input has {got} features in its last axis (shape {tuple(x.shape)}), but input_size={expected}."
        )
    return got


class _Cell(nn.Module):
    """What the three cells share: fields, checks and the one-step ``__call__``.

    Subclasses set ``num_gates`` and define ``step``. Like torch's cells the
    first two fields are ``input_size`` (optional here: inferred from ``x``)
    and ``hidden_size``.
    """

    input_size: int | None = None
    hidden_size: int | None = None
    bias: bool = True
    param_dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)

    num_gates: ClassVar[int]
    has_cell_state: ClassVar[bool] = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.hidden_size, int) or self.hidden_size <= 0:
            raise ValueError(f"{name}: hidden_size must be a positive int, got {self.hidden_size!r}.")
        if self.input_size is not None and (not isinstance(self.input_size, int) or self.input_size <= 0):
            raise ValueError(f"{name}: input_size must be a positive int or None, got {self.input_size!r}.")
        super().__post_init__()

    @property
    def output_size(self) -> int:
        """Features of ``h``."""
        return self.hidden_size

    def zero_state(self, batch_shape: tuple[int, ...], dtype: Any) -> State:
        h = jnp.zeros(batch_shape + (self.output_size,), dtype)
        if self.has_cell_state:
            return (h, jnp.zeros(batch_shape + (self.hidden_size,), dtype))
        return (h,)

    def step(self, weights: Weights, state: State, gx: Array) -> tuple[State, Array]:
        """One time step from the projected input ``gx`` ``(..., G*H)``; returns ``(state, h)``."""
        return self.combine(gx, _project_hidden(weights, state[0]), state, weights["weight_hr"])

    def combine(self, gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        """The step after both projections: ``gx = W_ih x + b_ih``, ``gh = W_hh h + b_hh`` (each ``(..., G*H)``).

        Elementwise except for LSTM's ``weight_hr`` projection; ``step`` is
        ``combine(gx, W_hh h + b_hh, state, weight_hr)``.
        """
        raise NotImplementedError

    def _weights(self, x: Array) -> Weights:
        return declare_weights(
            self,
            suffix="",
            input_size=check_input_size(type(self).__name__, self.input_size, x),
            hidden_size=self.hidden_size,
            num_gates=self.num_gates,
            bias=self.bias,
            proj_size=getattr(self, "proj_size", 0),
            param_dtype=self.param_dtype,
        )

    def _check_state(self, x: Array, state: State) -> None:
        names = ("h", "c")
        sizes = (self.output_size, self.hidden_size)
        for name, size, s in zip(names, sizes, state):
            want = x.shape[:-1] + (size,)
            if s.shape != want:
                raise ValueError(
                    f"{type(self).__name__}: expected hx {name} of shape {want} for input of shape "
                    f"{tuple(x.shape)}, got {tuple(s.shape)}."
                )

    def _call(self, x: Array, state: State | None) -> State:
        x = jnp.asarray(x)
        if x.ndim not in (1, 2):
            raise ValueError(
                f"{type(self).__name__}: expected input of shape (N, H_in) or (H_in,), got {tuple(x.shape)}."
            )
        weights = self._weights(x)
        if state is None:
            state = self.zero_state(x.shape[:-1], jnp.result_type(x, weights["weight_hh"]))
        state = tuple(jnp.asarray(s) for s in state)
        self._check_state(x, state)
        new_state, _ = self.step(weights, state, project_input(weights, x))
        return new_state


class RNNCell(_Cell):
    """Elman cell, as ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Call: ``h_new = cell.apply(variables, x, hx=None)`` with ``x`` ``(N, H_in)``
    or ``(H_in,)`` and ``hx``/``h_new`` ``(N, H)`` or ``(H,)``; zero ``hx`` when
    omitted. ``nonlinearity`` is ``'tanh'`` or ``'relu'``.
    """

    nonlinearity: str = "tanh"
    num_gates: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(
                f"{type(self).__name__}: unknown nonlinearity {self.nonlinearity!r}; expected 'tanh' or 'relu'."
            )
        super().__post_init__()

    def combine(self, gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        h = NONLINEARITIES[self.nonlinearity](gx + gh)
        return (h,), h

    @nn.compact
    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._call(x, None if hx is None else (hx,))[0]


class LSTMCell(_Cell):
    """LSTM cell, as ``torch.nn.LSTMCell`` (gate order i, f, g, o)::

        i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh, 4)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(c')          then h' = W_hr h' when proj_size > 0

    Call: ``(h_new, c_new) = cell.apply(variables, x, hx=None)`` with ``x``
    ``(N, H_in)`` or ``(H_in,)`` and ``hx = (h, c)``: ``h`` ``(N, P)``, ``c``
    ``(N, H)`` (no ``N`` when unbatched); zeros when omitted. ``proj_size`` is
    not an argument of ``torch.nn.LSTMCell``; it exists so ``jaxrnn.LSTM`` can
    share this cell.
    """

    proj_size: int = 0
    num_gates: ClassVar[int] = 4
    has_cell_state: ClassVar[bool] = True

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def combine(self, gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        _, c = state
        i, f, g, o = jnp.split(gx + gh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        if weight_hr is not None:
            h = h @ weight_hr.T
        return (h, c), h

    @nn.compact
    def __call__(self, x: Array, hx: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}.")
        return self._call(x, None if hx is None else tuple(hx))


class GRUCell(_Cell):
    """GRU cell, as ``torch.nn.GRUCell`` (gate order r, z, n; ``b_hn`` inside the reset product)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Call: ``h_new = cell.apply(variables, x, hx=None)`` with ``x`` ``(N, H_in)``
    or ``(H_in,)`` and ``hx``/``h_new`` ``(N, H)`` or ``(H,)``.
    """

    num_gates: ClassVar[int] = 3

    def combine(self, gx: Array, gh: Array, state: State, weight_hr: Array | None) -> tuple[State, Array]:
        (h,) = state
        x_r, x_z, x_n = jnp.split(gx, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return (h,), h

    @nn.compact
    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._call(x, None if hx is None else (hx,))[0]
