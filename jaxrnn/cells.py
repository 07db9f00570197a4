"""``RNNCell``, ``LSTMCell`` and ``GRUCell`` as Flax linen modules: one step, like ``torch.nn.RNNCell`` and friends.

Each module declares torch's parameters (``weight_ih``, ``weight_hh``,
``bias_ih``, ``bias_hh``, torch's shapes and initialisation) and calls
:func:`jaxrnn.functional.cell_step`; the equations are
:mod:`jaxrnn.equations`'. ``h_new = cell.apply(variables, x, hx)``.

Shapes (``G`` gates: 1 for RNN, 4 for LSTM, 3 for GRU; ``H`` is ``hidden_size``)::

    x          (N, H_in) or unbatched (H_in,)
    hx, h'     (N, H) or (H,)             LSTM: hx = (h, c), both (N, H)
    weight_ih  (G*H, H_in)     bias_ih  (G*H,)
    weight_hh  (G*H, H)        bias_hh  (G*H,)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn import functional
from jaxrnn.equations import NUM_GATES, State, kind_of
from jaxrnn.params import check_cell_args, layer_shapes, uniform_init

Array = jax.Array


def check_input_size(owner: str, expected: int | None, x: Array) -> int:
    """Returns the feature size of ``x``, raising if it differs from ``expected``."""
    got = x.shape[-1]
    if expected is not None and got != expected:
        raise ValueError(
            f"{owner}: input has {got} features in its last axis (shape {tuple(x.shape)}), but input_size={expected}."
        )
    return got


def declare_params(
    module: nn.Module, shapes: dict[str, tuple[int, ...]], hidden_size: int, param_dtype: Any
) -> dict[str, Array]:
    """Declares (or fetches) ``module``'s params ``{torch name: shape}`` with torch's init, checking existing shapes."""
    init = uniform_init(1.0 / math.sqrt(hidden_size))
    params = {}
    for name, shape in shapes.items():
        existing = module.get_variable("params", name)
        if existing is not None and tuple(existing.shape) != shape:
            raise ValueError(
                f"{type(module).__name__}: parameter {name} has shape {tuple(existing.shape)}, but this call "
                f"needs {shape}: these variables were made for another input size."
            )
        params[name] = module.param(name, init, shape, param_dtype)
    return params


class _Cell(nn.Module):
    """What the three cells share: fields, checks and the one-step ``__call__``.

    Like torch's cells the first two fields are ``input_size`` (optional here:
    inferred from ``x``) and ``hidden_size``.
    """

    input_size: int | None = None
    hidden_size: int | None = None
    bias: bool = True
    param_dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)

    cell: ClassVar[str]

    def __post_init__(self) -> None:
        check_cell_args(
            type(self).__name__,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            bias=self.bias,
            nonlinearity=getattr(self, "nonlinearity", "tanh"),
        )
        super().__post_init__()

    def _call(self, x: Array, state: State | None) -> State:
        name = type(self).__name__
        x = jnp.asarray(x)
        if x.ndim not in (1, 2):
            raise ValueError(f"{name}: expected input of shape (N, H_in) or (H_in,), got {tuple(x.shape)}.")
        input_size = check_input_size(name, self.input_size, x)
        proj_size = getattr(self, "proj_size", 0)
        shapes = layer_shapes(NUM_GATES[kind_of(self.cell)], input_size, self.hidden_size, self.bias, proj_size)
        params = declare_params(self, shapes, self.hidden_size, self.param_dtype)
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        return functional.cell_step(self.cell, params, x, state, nonlinearity=nonlinearity, owner=name)


class RNNCell(_Cell):
    """Elman cell, as ``torch.nn.RNNCell``: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``.

    Call: ``h_new = cell.apply(variables, x, hx=None)`` with ``x`` ``(N, H_in)``
    or ``(H_in,)`` and ``hx``/``h_new`` ``(N, H)`` or ``(H,)``; zero ``hx`` when
    omitted. ``nonlinearity`` is ``'tanh'`` or ``'relu'``.
    """

    nonlinearity: str = "tanh"
    cell: ClassVar[str] = "rnn"

    @nn.compact
    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._call(x, None if hx is None else (hx,))[0]


class LSTMCell(_Cell):
    """LSTM cell, as ``torch.nn.LSTMCell`` (gate order i, f, g, o; :func:`jaxrnn.equations.lstm_combine`).

    Call: ``(h_new, c_new) = cell.apply(variables, x, hx=None)`` with ``x``
    ``(N, H_in)`` or ``(H_in,)`` and ``hx = (h, c)``: ``h`` ``(N, P)``, ``c``
    ``(N, H)`` (no ``N`` when unbatched); zeros when omitted. ``proj_size`` is
    not an argument of ``torch.nn.LSTMCell``: with it the cell also holds
    ``weight_hr`` ``(P, H)``, as one layer of ``torch.nn.LSTM(proj_size=P)``.
    """

    proj_size: int = 0
    cell: ClassVar[str] = "lstm"

    @nn.compact
    def __call__(self, x: Array, hx: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}.")
        h, c = self._call(x, None if hx is None else tuple(hx))
        return h, c


class GRUCell(_Cell):
    """GRU cell, as ``torch.nn.GRUCell`` (gate order r, z, n; ``b_hn`` inside the reset product;
    :func:`jaxrnn.equations.gru_combine`).

    Call: ``h_new = cell.apply(variables, x, hx=None)`` with ``x`` ``(N, H_in)``
    or ``(H_in,)`` and ``hx``/``h_new`` ``(N, H)`` or ``(H,)``.
    """

    cell: ClassVar[str] = "gru"

    @nn.compact
    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._call(x, None if hx is None else (hx,))[0]


# -- Flax's cell convention --------------------------------------------------------------------------------------
# flax.linen.RNN, nn.Bidirectional and the nn.scan idiom drive a cell as ``carry, y = cell(carry, x)`` with
# ``cell.initialize_carry(rng, input_shape)`` and ``cell.num_feature_axes``. The Flax* cells below are jaxrnn's
# torch-exact cells in that convention: the same parameters (torch's names, shapes and initialisation) and the
# same step; only the call's order differs.


def flax_step(step: Callable[[State], State], carry: Any, *, lstm: bool) -> tuple[Any, Array]:
    """Flax's ``carry, y = cell(carry, x)`` over a torch-convention step ``state -> state`` (``x`` bound in it): the
    carry is the state (LSTM ``(h, c)``, else ``h``), ``y`` its ``h``. The linen and NNX Flax* cells both call it."""
    state = step(tuple(carry) if lstm else (carry,))
    return (tuple(state) if lstm else state[0]), state[0]


class _FlaxConvention:
    """What the Flax* cells add: ``initialize_carry`` and ``num_feature_axes``, as ``flax.linen.RNNCellBase``."""

    num_feature_axes: ClassVar[int] = 1  # one feature axis: inputs are (*batch, H_in)

    def _carry_shapes(self, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        batch = tuple(input_shape[:-1])
        return ((*batch, self.hidden_size),)

    def initialize_carry(self, rng: Any, input_shape: tuple[int, ...]) -> Any:
        """Zeros, as torch's default initial state: ``(*batch, H)``; for LSTM ``(h, c)``. ``input_shape`` is one
        step's input shape, ``(*batch, H_in)``; ``rng`` is unused (Flax's signature)."""
        del rng
        zeros = tuple(jnp.zeros(shape, self.param_dtype) for shape in self._carry_shapes(input_shape))
        return zeros if isinstance(self, LSTMCell) else zeros[0]

    def _flax_step(self, carry: Any, x: Array) -> tuple[Any, Array]:
        return flax_step(lambda state: self._call(x, state), carry, lstm=isinstance(self, LSTMCell))


class FlaxRNNCell(_FlaxConvention, RNNCell):
    """:class:`RNNCell` in Flax's cell convention, for ``flax.linen.RNN``, ``nn.Bidirectional`` and ``nn.scan``.

    ``h, y = cell(h, x)`` with ``x`` ``(N, H_in)`` and ``h = y`` ``(N, H)``; e.g.
    ``nn.RNN(jaxrnn.FlaxRNNCell(4, 8))(x)`` with ``x`` ``(N, L, H_in)`` gives ``(N, L, H)``, equal to
    :class:`jaxrnn.RNN`'s output with the same weights (which stays the faster layer: it projects every step's
    input in one matmul and can run the CPU kernel).
    """

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:  # type: ignore[override]
        return self._flax_step(carry, x)


class FlaxLSTMCell(_FlaxConvention, LSTMCell):
    """:class:`LSTMCell` in Flax's cell convention: ``(h, c), y = cell((h, c), x)`` with ``y = h``.

    The carry is in torch's order ``(h, c)`` (Flax's own ``nn.LSTMCell`` keeps ``(c, h)``): ``h`` ``(N, P)`` with
    ``proj_size = P``, else ``(N, H)``; ``c`` ``(N, H)``.
    """

    def _carry_shapes(self, input_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        batch = tuple(input_shape[:-1])
        return (*batch, self.proj_size or self.hidden_size), (*batch, self.hidden_size)

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], x: Array) -> tuple[tuple[Array, Array], Array]:  # type: ignore[override]
        return self._flax_step(carry, x)


class FlaxGRUCell(_FlaxConvention, GRUCell):
    """:class:`GRUCell` in Flax's cell convention: ``h, y = cell(h, x)`` with ``y = h`` ``(N, H)``."""

    @nn.compact
    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:  # type: ignore[override]
        return self._flax_step(carry, x)
