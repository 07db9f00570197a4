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

These modules only declare the parameters (:class:`jaxrnn.params.Stack`) and
call :func:`jaxrnn.functional.stacked`, the same function the NNX modules
(:mod:`jaxrnn.nnx`) and the functional API run.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrnn import functional
from jaxrnn.cells import check_input_size, declare_params
from jaxrnn.packing import PackedSequence
from jaxrnn.params import Stack, check_layer_args, suffix

Array = jax.Array


def resolve_hx(owner: str, hx: Any, h_0: Any) -> Any:
    """``hx``, or the deprecated ``h_0=`` alias (with a warning); both at once is an error."""
    if h_0 is None:
        return hx
    if hx is not None:
        raise ValueError(f"{owner}: pass the initial state once, as hx (h_0 is its deprecated alias).")
    warnings.warn(
        f"{owner}: h_0= is deprecated; pass the initial state as hx, as torch does.", DeprecationWarning, stacklevel=3
    )
    return h_0


class _StackedRecurrent(nn.Module):
    """The fields and the call shared by ``RNN``, ``LSTM`` and ``GRU``.

    Fields ``input_size`` (optional, checked when given), ``hidden_size`` and
    ``num_layers`` here; each layer declares the rest in torch's order (``bias``,
    ``batch_first``, ``dropout``, ``bidirectional``, and RNN's ``nonlinearity``
    before them, LSTM's ``proj_size`` after them); then the keyword-only JAX options ``param_dtype``,
    ``unroll``, ``hoist_input_projection``, ``fused_backward`` and ``cpu_kernel``
    (how the loop runs: :class:`jaxrnn.recurrence.LoopOptions`; ``cpu_kernel`` is
    ``"auto"``, ``"never"`` or ``"always"``, see :mod:`jaxrnn.backend`), and
    ``record_states`` (store every step's states, for :func:`jaxrnn.step_states`).
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

    cell: ClassVar[str]

    def __post_init__(self) -> None:
        check_layer_args(
            type(self).__name__,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            proj_size=getattr(self, "proj_size", 0),
            nonlinearity=getattr(self, "nonlinearity", "tanh"),
            unroll=self.unroll,
            hoist_input_projection=self.hoist_input_projection,
            fused_backward=self.fused_backward,
            record_states=self.record_states,
            cpu_kernel=self.cpu_kernel,
            stacklevel=4,
        )
        super().__post_init__()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def stack(self, input_size: int) -> Stack:
        """The parameter structure of this layer for inputs of ``input_size`` features."""
        return Stack(
            self.cell,
            input_size,
            self.hidden_size,
            self.num_layers,
            self.bias,
            self.bidirectional,
            getattr(self, "proj_size", 0),
        )

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
        LSTM; zeros when None. ``h_0=`` is a deprecated alias of ``hx``. Dropout between layers runs when
        ``deterministic=False``, from the ``'dropout'`` rng (``rngs={'dropout': key}``).
        """
        name = type(self).__name__
        hx = resolve_hx(name, hx, h_0)
        if isinstance(x, PackedSequence):  # packed in, packed out; functional.stacked unpacks it
            features = jnp.asarray(x.data)
        else:
            x = features = jnp.asarray(x)
            functional.check_input(name, x, self.batch_first)
        stack = self.stack(check_input_size(name, self.input_size, features))
        params = declare_params(self, stack.shapes(), self.hidden_size, self.param_dtype)
        training = not deterministic and self.dropout > 0 and self.num_layers > 1
        output, h_n, recorded = functional.stacked(
            self.cell,
            params,
            x,
            hx,
            nonlinearity=getattr(self, "nonlinearity", "tanh"),
            seq_lengths=seq_lengths,
            batch_first=self.batch_first,
            dropout=self.dropout,
            deterministic=not training,
            dropout_key=self.make_rng("dropout") if training else None,
            options=functional.loop_options(
                name,
                self.unroll,
                self.hoist_input_projection,
                self.fused_backward,
                self.cpu_kernel,
                self.record_states,
            ),
            owner=name,
        )
        if recorded is not None:
            directions = [(layer, d) for layer in range(self.num_layers) for d in range(self.num_directions)]
            for (layer, direction), states in zip(directions, recorded):
                self.sow("intermediates", "states" + suffix(layer, direction), states)
        return output, h_n


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

    cell: ClassVar[str] = "rnn"


class LSTM(_StackedRecurrent):
    """LSTM, as ``torch.nn.LSTM`` (gates i, f, g, o; optional output projection ``proj_size``).

    ``hx`` and the returned state are tuples ``(h, c)``: ``h`` has ``P = proj_size
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

    cell: ClassVar[str] = "lstm"


class GRU(_StackedRecurrent):
    """GRU, as ``torch.nn.GRU`` (gates r, z, n; ``b_hn`` inside the reset product).

    See :func:`jaxrnn.equations.gru_combine` for the equations and :mod:`jaxrnn.rnn` for the call and shapes.

    ``GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
    bidirectional=False)``, positionally as in torch.
    """

    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False

    cell: ClassVar[str] = "gru"
