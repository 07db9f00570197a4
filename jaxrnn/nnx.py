"""PyTorch's ``RNN``, ``LSTM``, ``GRU`` and their cells as Flax NNX modules.

Eager modules with torch's constructors (positional or keyword) plus
``rngs=``, torch's parameter names as ``nnx.Param`` attributes
(``model.weight_ih_l0``, ``model.bias_hh_l1_reverse``, ...), torch's
initialisation, and torch's call::

    from flax import nnx
    import jaxrnn.nnx

    lstm = jaxrnn.nnx.LSTM(4, 8, num_layers=2, batch_first=True, rngs=nnx.Rngs(0))
    output, (h_n, c_n) = lstm(x)                       # x (N, L, 4) -> output (N, L, 8)
    output, (h_n, c_n) = lstm(x, (h_n, c_n), seq_lengths=lengths)

The shapes are those of :mod:`jaxrnn.rnn`. Like ``nnx.Dropout``, a module
starts in training mode (``deterministic=False``): with ``dropout > 0`` and
more than one layer, dropout between layers draws from the ``'dropout'``
stream of the ``rngs`` given at construction. ``model.eval()`` turns it off
and ``model.train()`` back on (or pass ``deterministic=`` to the call).

These modules hold parameters only; every call runs
:func:`jaxrnn.functional.stacked` (cells: :func:`jaxrnn.functional.cell_step`),
the same code as the linen modules and the functional API, so the three give
bit-identical results from the same weights. ``cpu_kernel`` and the other
loop options are those of :class:`jaxrnn.recurrence.LoopOptions`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrnn import functional
from jaxrnn.cells import flax_step
from jaxrnn.equations import NUM_GATES, kind_of
from jaxrnn.params import Stack, check_cell_args, check_layer_args, init_arrays, layer_shapes

Array = jax.Array

__all__ = ["GRU", "GRUCell", "FlaxGRUCell", "FlaxLSTMCell", "FlaxRNNCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]


def _dropout_key(rngs: Any, owner: str) -> Array:
    """A key from what the caller passed as ``rngs``: a key, an ``nnx.Rngs`` or an ``nnx.RngStream``."""
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise TypeError(f"{owner}: rngs must be an nnx.Rngs, an nnx.RngStream or a jax key, got {type(rngs).__name__}.")


def _check_eager(owner: str, input_size: Any, rngs: Any) -> None:
    """What an NNX module needs at construction, since it creates its parameters then."""
    if input_size is None:
        raise ValueError(f"{owner}: input_size is required (NNX modules create their parameters eagerly).")
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"{owner}: rngs must be an nnx.Rngs (e.g. rngs=nnx.Rngs(0)), got {type(rngs).__name__}.")


class _Stacked(nnx.Module):
    """The parameters and call shared by :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    cell: ClassVar[str]

    def _setup(
        self,
        *,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        proj_size: int = 0,
        nonlinearity: str = "tanh",
        param_dtype: Any,
        unroll: int,
        hoist_input_projection: bool,
        fused_backward: bool,
        cpu_kernel: str,
        deterministic: bool,
        rngs: nnx.Rngs,
    ) -> None:
        owner = type(self).__name__
        check_layer_args(
            owner,
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            proj_size=proj_size,
            nonlinearity=nonlinearity,
            unroll=unroll,
            hoist_input_projection=hoist_input_projection,
            fused_backward=fused_backward,
            cpu_kernel=cpu_kernel,
            stacklevel=4,
        )
        _check_eager(owner, input_size, rngs)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, dropout, bidirectional
        self.proj_size, self.nonlinearity = proj_size, nonlinearity
        self.param_dtype = jnp.dtype(param_dtype)
        self.unroll, self.hoist_input_projection, self.fused_backward = unroll, hoist_input_projection, fused_backward
        self.cpu_kernel = cpu_kernel
        self.deterministic = deterministic
        stack = Stack(self.cell, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
        self.param_names = tuple(stack.shapes())
        for name, value in init_arrays(rngs.params(), stack.shapes(), hidden_size, self.param_dtype).items():
            setattr(self, name, nnx.Param(value))
        uses_dropout = dropout > 0 and num_layers > 1
        self.rngs = rngs["dropout"].fork() if uses_dropout else nnx.data(None)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def params(self) -> dict[str, Array]:
        """The parameters as ``{torch state_dict key: array}``, what :mod:`jaxrnn.functional` takes."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    def __call__(
        self,
        x: Array,
        hx: Any = None,
        *,
        seq_lengths: Array | None = None,
        deterministic: bool | None = None,
        rngs: Any = None,
    ) -> tuple[Array, Any]:
        """``(x, hx) -> (output, h_n)``, as torch's ``forward(input, hx)``; shapes as in :mod:`jaxrnn.rnn`.

        ``hx``: ``h_0``, or ``(h_0, c_0)`` for LSTM; zeros when None. ``seq_lengths`` ``(N,)``: valid steps per
        sequence (``pack_padded_sequence``'s results). ``deterministic`` overrides the module's mode for this
        call; ``rngs`` (a key, ``nnx.Rngs`` or ``nnx.RngStream``) overrides the dropout stream.
        """
        owner = type(self).__name__
        deterministic = self.deterministic if deterministic is None else deterministic
        training = not deterministic and self.dropout > 0 and self.num_layers > 1
        key = None
        if training:
            source = rngs if rngs is not None else self.rngs
            if source is None:
                raise ValueError(f"{owner}: dropout in training mode needs rngs; pass rngs= to the call.")
            key = _dropout_key(source, owner)
        output, h_n, _ = functional.stacked(
            self.cell,
            self.params(),
            x,
            hx,
            nonlinearity=self.nonlinearity,
            seq_lengths=seq_lengths,
            batch_first=self.batch_first,
            dropout=self.dropout,
            deterministic=not training,
            dropout_key=key,
            options=functional.loop_options(
                owner, self.unroll, self.hoist_input_projection, self.fused_backward, self.cpu_kernel
            ),
            owner=owner,
        )
        return output, h_n


class RNN(_Stacked):
    """Elman RNN, as ``torch.nn.RNN``: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, ``act`` tanh or relu.

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, *, rngs)``.
    """

    cell: ClassVar[str] = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        param_dtype: Any = jnp.float32,
        unroll: int = 1,
        hoist_input_projection: bool = False,
        fused_backward: bool = False,
        cpu_kernel: str = "auto",
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            nonlinearity=nonlinearity,
            param_dtype=param_dtype,
            unroll=unroll,
            hoist_input_projection=hoist_input_projection,
            fused_backward=fused_backward,
            cpu_kernel=cpu_kernel,
            deterministic=deterministic,
            rngs=rngs,
        )


class LSTM(_Stacked):
    """LSTM, as ``torch.nn.LSTM`` (gates i, f, g, o; optional output projection ``proj_size``).

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, proj_size=0, *, rngs)``. ``hx`` and the returned state are ``(h, c)`` tuples.
    """

    cell: ClassVar[str] = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        param_dtype: Any = jnp.float32,
        unroll: int = 1,
        hoist_input_projection: bool = False,
        fused_backward: bool = False,
        cpu_kernel: str = "auto",
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            proj_size=proj_size,
            param_dtype=param_dtype,
            unroll=unroll,
            hoist_input_projection=hoist_input_projection,
            fused_backward=fused_backward,
            cpu_kernel=cpu_kernel,
            deterministic=deterministic,
            rngs=rngs,
        )


class GRU(_Stacked):
    """GRU, as ``torch.nn.GRU`` (gates r, z, n; ``b_hn`` inside the reset product).

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False, *, rngs)``.
    """

    cell: ClassVar[str] = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        param_dtype: Any = jnp.float32,
        unroll: int = 1,
        hoist_input_projection: bool = False,
        fused_backward: bool = False,
        cpu_kernel: str = "auto",
        deterministic: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(
            input_size=input_size,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=dropout,
            bidirectional=bidirectional,
            param_dtype=param_dtype,
            unroll=unroll,
            hoist_input_projection=hoist_input_projection,
            fused_backward=fused_backward,
            cpu_kernel=cpu_kernel,
            deterministic=deterministic,
            rngs=rngs,
        )


class _Cell(nnx.Module):
    """The parameters and call shared by :class:`RNNCell`, :class:`LSTMCell` and :class:`GRUCell`."""

    cell: ClassVar[str]

    def _setup(
        self, input_size: int, hidden_size: int, bias: bool, nonlinearity: str, param_dtype: Any, rngs: nnx.Rngs
    ) -> None:
        owner = type(self).__name__
        check_cell_args(owner, input_size=input_size, hidden_size=hidden_size, bias=bias, nonlinearity=nonlinearity)
        _check_eager(owner, input_size, rngs)
        self.input_size, self.hidden_size, self.bias, self.nonlinearity = input_size, hidden_size, bias, nonlinearity
        self.param_dtype = jnp.dtype(param_dtype)
        shapes = layer_shapes(NUM_GATES[kind_of(self.cell)], input_size, hidden_size, bias)
        self.param_names = tuple(shapes)
        for name, value in init_arrays(rngs.params(), shapes, hidden_size, self.param_dtype).items():
            setattr(self, name, nnx.Param(value))

    def params(self) -> dict[str, Array]:
        """The parameters as ``{torch state_dict key: array}`` (``weight_ih``, ``weight_hh``, ``bias_ih``, ...)."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    def _step(self, x: Array, state: tuple | None) -> tuple:
        owner = type(self).__name__
        return functional.cell_step(self.cell, self.params(), x, state, nonlinearity=self.nonlinearity, owner=owner)


class RNNCell(_Cell):
    """Elman cell, as ``torch.nn.RNNCell(input_size, hidden_size, bias=True, nonlinearity='tanh')``, plus ``rngs``.

    ``h_new = cell(x, hx=None)``: ``x`` ``(N, H_in)`` or ``(H_in,)``, ``hx``/``h_new`` ``(N, H)`` or ``(H,)``.
    """

    cell: ClassVar[str] = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self._setup(input_size, hidden_size, bias, nonlinearity, param_dtype, rngs)

    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._step(x, None if hx is None else (hx,))[0]


class LSTMCell(_Cell):
    """LSTM cell, as ``torch.nn.LSTMCell(input_size, hidden_size, bias=True)``, plus ``rngs``.

    ``(h_new, c_new) = cell(x, hx=None)`` with ``hx = (h, c)``, each ``(N, H)`` or ``(H,)``.
    """

    cell: ClassVar[str] = "lstm"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs
    ) -> None:
        self._setup(input_size, hidden_size, bias, "tanh", param_dtype, rngs)

    def __call__(self, x: Array, hx: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
        if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError(f"LSTMCell: hx must be a tuple (h, c), got {type(hx).__name__}.")
        h, c = self._step(x, None if hx is None else tuple(hx))
        return h, c


class GRUCell(_Cell):
    """GRU cell, as ``torch.nn.GRUCell(input_size, hidden_size, bias=True)``, plus ``rngs``.

    ``h_new = cell(x, hx=None)``: ``x`` ``(N, H_in)`` or ``(H_in,)``, ``hx``/``h_new`` ``(N, H)`` or ``(H,)``.
    """

    cell: ClassVar[str] = "gru"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, *, param_dtype: Any = jnp.float32, rngs: nnx.Rngs
    ) -> None:
        self._setup(input_size, hidden_size, bias, "tanh", param_dtype, rngs)

    def __call__(self, x: Array, hx: Array | None = None) -> Array:
        return self._step(x, None if hx is None else (hx,))[0]


# -- Flax's cell convention: for nnx.RNN (see jaxrnn.cells' Flax* cells for linen) ------------------------------


class _FlaxConvention:
    """What the Flax* cells add: ``initialize_carry`` and ``num_feature_axes``, as ``flax.nnx.RNNCellBase``."""

    num_feature_axes: ClassVar[int] = 1  # one feature axis: inputs are (*batch, H_in)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None) -> Any:
        """Zeros, as torch's default initial state: ``(*batch, H)``; for LSTM ``(h, c)``. ``input_shape`` is one
        step's input shape, ``(*batch, H_in)``; ``rngs`` and ``carry_init`` are Flax's arguments (a
        ``carry_init`` initializer replaces the zeros)."""
        shape = (*input_shape[:-1], self.hidden_size)
        init = carry_init or (lambda key, shape, dtype: jnp.zeros(shape, dtype))
        key = None if carry_init is None else (rngs.carry() if isinstance(rngs, nnx.Rngs) else rngs())
        if isinstance(self, LSTMCell):
            keys = (None, None) if key is None else tuple(jax.random.split(key))
            return tuple(init(k, shape, self.param_dtype) for k in keys)
        return init(key, shape, self.param_dtype)

    def _flax_step(self, carry: Any, x: Array) -> tuple[Any, Array]:
        return flax_step(lambda state: self._step(x, state), carry, lstm=isinstance(self, LSTMCell))


class FlaxRNNCell(_FlaxConvention, RNNCell):
    """:class:`RNNCell` in Flax's cell convention, for ``nnx.RNN``: ``h, y = cell(h, x)`` with ``y = h`` ``(N, H)``.

    ``nnx.RNN(jaxrnn.nnx.FlaxRNNCell(4, 8, rngs=rngs))(x)`` with ``x`` ``(N, L, H_in)`` gives ``(N, L, H)``, equal to
    :class:`RNN`'s output with the same weights (which stays the faster layer).
    """

    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:  # type: ignore[override]
        return self._flax_step(carry, x)


class FlaxLSTMCell(_FlaxConvention, LSTMCell):
    """:class:`LSTMCell` in Flax's cell convention: ``(h, c), y = cell((h, c), x)`` with ``y = h``; the carry in
    torch's order ``(h, c)`` (Flax's own ``nnx.LSTMCell`` keeps ``(c, h)``), each ``(N, H)``."""

    def __call__(self, carry: tuple[Array, Array], x: Array) -> tuple[tuple[Array, Array], Array]:  # type: ignore[override]
        return self._flax_step(carry, x)


class FlaxGRUCell(_FlaxConvention, GRUCell):
    """:class:`GRUCell` in Flax's cell convention: ``h, y = cell(h, x)`` with ``y = h`` ``(N, H)``."""

    def __call__(self, carry: Array, x: Array) -> tuple[Array, Array]:  # type: ignore[override]
        return self._flax_step(carry, x)
