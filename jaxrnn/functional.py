"""The functional core: PyTorch's ``RNN``, ``LSTM`` and ``GRU`` as pure functions of a torch-named params dict.

Every jaxrnn API runs through here: the Flax linen modules (:mod:`jaxrnn.rnn`,
:mod:`jaxrnn.cells`) and the Flax NNX modules (:mod:`jaxrnn.nnx`) only declare
their parameters and call these functions, so stacking, directions, lengths,
initial states and dropout are written once. Use them directly from plain JAX,
equinox or any pytree-of-arrays code::

    params = jaxrnn.functional.init_params(jax.random.key(0), "lstm", input_size=4, hidden_size=8, num_layers=2)
    output, (h_n, c_n) = jaxrnn.functional.lstm(params, x, batch_first=True)

``params`` is ``{torch state_dict key: array}`` (``weight_ih_l0``,
``bias_hh_l1_reverse``, ...), e.g. ``{k: jnp.asarray(v) for k, v in
torch_lstm.state_dict().items()}``. The layer's structure (``num_layers``,
``bidirectional``, ``bias``, ``proj_size``, ``input_size``, ``hidden_size``)
is read from the keys and shapes; any of them passed explicitly is checked
against the keys. Shapes, with ``D = 2`` if bidirectional else 1 and ``P =
proj_size or hidden_size``::

    x         (L, N, H_in), (N, L, H_in) if batch_first, or unbatched (L, H_in)
    output    (L, N, D*P),  (N, L, D*P) if batch_first, or (L, D*P)
    hx, h_n   (D*num_layers, N, P), or (D*num_layers, P) unbatched
    c_0, c_n  (D*num_layers, N, hidden_size)             LSTM only
    seq_lengths (N,) ints in [0, L]

With ``seq_lengths``, outputs past each sequence's length are zero and the
final states are each sequence's own last valid step (the reverse direction
starts there): exactly what ``pack_padded_sequence`` gives in torch. ``x`` may
also be a :class:`jaxrnn.PackedSequence` (then ``batch_first`` and
``seq_lengths`` do not apply): the output is packed the same way and ``h_n``
is in the original batch order, as torch returns them.

Dropout (between layers, as torch) runs when ``dropout > 0`` and a
``dropout_key`` is given (or ``deterministic=False``, which then requires the
key); ``deterministic=True`` turns it off whatever the key.

The keyword-only loop options (``unroll``, ``hoist_input_projection``,
``fused_backward``, ``cpu_kernel``) are :class:`jaxrnn.recurrence.LoopOptions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.equations import NUM_GATES, Cell, State, kind_of
from jaxrnn.packing import PackedSequence, repack_like, unpack_for_layer
from jaxrnn.padding import check_seq_lengths, lengths_to_mask
from jaxrnn.params import (
    CELLS,
    Stack,
    check_cell_args,
    check_dropout,
    check_layer_args,
    check_loop_options,
    init_arrays,
    layer_shapes,
    suffix,
    weights_of,
)
from jaxrnn.recurrence import LoopOptions, recurrence

__all__ = [
    "cell_step",
    "gru",
    "gru_cell",
    "init_cell_params",
    "init_params",
    "lstm",
    "lstm_cell",
    "rnn",
    "rnn_cell",
    "stacked",
]

Array = jax.Array
Params = Mapping[str, Array]


def init_params(
    key: Array,
    cell: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
    dtype: Any = jnp.float32,
) -> dict[str, Array]:
    """Fresh params for a stacked ``cell`` (``'rnn'``, ``'lstm'`` or ``'gru'``), as torch initialises them.

    Returns ``{torch key: array}`` with the keys and shapes of ``torch.nn.LSTM(input_size, hidden_size,
    num_layers, bias=bias, bidirectional=bidirectional, proj_size=proj_size).state_dict()``, every array
    drawn from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.
    """
    _check_cell_name("init_params", cell)
    check_layer_args(
        "init_params",
        input_size=input_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        bias=bias,
        batch_first=False,
        dropout=0.0,
        bidirectional=bidirectional,
        proj_size=proj_size if cell == "lstm" else 0,
    )
    stack = Stack(cell, input_size, hidden_size, num_layers, bias, bidirectional, proj_size)
    return init_arrays(key, stack.shapes(), hidden_size, dtype)


def init_cell_params(
    key: Array, cell: str, input_size: int, hidden_size: int, bias: bool = True, dtype: Any = jnp.float32
) -> dict[str, Array]:
    """Fresh params for one ``RNNCell``/``LSTMCell``/``GRUCell`` (``weight_ih``, ``weight_hh``, ``bias_ih``, ...)."""
    _check_cell_name("init_cell_params", cell)
    check_cell_args("init_cell_params", input_size=input_size, hidden_size=hidden_size, bias=bias)
    shapes = layer_shapes(NUM_GATES[kind_of(cell)], input_size, hidden_size, bias)
    return init_arrays(key, shapes, hidden_size, dtype)


def _check_cell_name(owner: str, cell: str) -> None:
    if cell not in CELLS:
        raise ValueError(f"{owner}: cell must be one of {CELLS}, got {cell!r}.")


def rnn(
    params: Params,
    x: Array,
    hx: Array | None = None,
    *,
    nonlinearity: str = "tanh",
    seq_lengths: Array | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    deterministic: bool | None = None,
    dropout_key: Array | None = None,
    num_layers: int | None = None,
    bidirectional: bool | None = None,
    unroll: int = 1,
    hoist_input_projection: bool = False,
    fused_backward: bool = False,
    cpu_kernel: str = "auto",
) -> tuple[Array, Array]:
    """``torch.nn.RNN`` as a function: ``(params, x, hx) -> (output, h_n)``; see the module docstring for shapes.

    ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``, ``act`` = ``tanh`` or ``relu`` (``nonlinearity``).
    """
    output, h_n, _ = stacked(
        "rnn",
        params,
        x,
        hx,
        nonlinearity=nonlinearity,
        seq_lengths=seq_lengths,
        batch_first=batch_first,
        dropout=dropout,
        deterministic=deterministic,
        dropout_key=dropout_key,
        expect={"num_layers": num_layers, "bidirectional": bidirectional},
        options=loop_options("jaxrnn.functional.rnn", unroll, hoist_input_projection, fused_backward, cpu_kernel),
        owner="jaxrnn.functional.rnn",
    )
    return output, h_n


def lstm(
    params: Params,
    x: Array,
    hx: tuple[Array, Array] | None = None,
    *,
    seq_lengths: Array | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    deterministic: bool | None = None,
    dropout_key: Array | None = None,
    num_layers: int | None = None,
    bidirectional: bool | None = None,
    proj_size: int | None = None,
    unroll: int = 1,
    hoist_input_projection: bool = False,
    fused_backward: bool = False,
    cpu_kernel: str = "auto",
) -> tuple[Array, tuple[Array, Array]]:
    """``torch.nn.LSTM`` as a function: ``(params, x, (h_0, c_0)) -> (output, (h_n, c_n))``.

    Gates i, f, g, o (:func:`jaxrnn.equations.lstm_combine`); ``weight_hr_l{k}`` in ``params`` makes it an
    LSTM with projections (``proj_size``). See the module docstring for shapes.
    """
    output, state, _ = stacked(
        "lstm",
        params,
        x,
        hx,
        seq_lengths=seq_lengths,
        batch_first=batch_first,
        dropout=dropout,
        deterministic=deterministic,
        dropout_key=dropout_key,
        expect={"num_layers": num_layers, "bidirectional": bidirectional, "proj_size": proj_size},
        options=loop_options("jaxrnn.functional.lstm", unroll, hoist_input_projection, fused_backward, cpu_kernel),
        owner="jaxrnn.functional.lstm",
    )
    return output, state


def gru(
    params: Params,
    x: Array,
    hx: Array | None = None,
    *,
    seq_lengths: Array | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    deterministic: bool | None = None,
    dropout_key: Array | None = None,
    num_layers: int | None = None,
    bidirectional: bool | None = None,
    unroll: int = 1,
    hoist_input_projection: bool = False,
    fused_backward: bool = False,
    cpu_kernel: str = "auto",
) -> tuple[Array, Array]:
    """``torch.nn.GRU`` as a function: ``(params, x, hx) -> (output, h_n)``.

    Gates r, z, n with ``b_hn`` inside the reset product (:func:`jaxrnn.equations.gru_combine`).
    See the module docstring for shapes.
    """
    output, h_n, _ = stacked(
        "gru",
        params,
        x,
        hx,
        seq_lengths=seq_lengths,
        batch_first=batch_first,
        dropout=dropout,
        deterministic=deterministic,
        dropout_key=dropout_key,
        expect={"num_layers": num_layers, "bidirectional": bidirectional},
        options=loop_options("jaxrnn.functional.gru", unroll, hoist_input_projection, fused_backward, cpu_kernel),
        owner="jaxrnn.functional.gru",
    )
    return output, h_n


def loop_options(
    owner: str,
    unroll: int = 1,
    hoist_input_projection: bool = False,
    fused_backward: bool = False,
    cpu_kernel: str = "auto",
    record_states: bool = False,
) -> LoopOptions:
    """Checked :class:`jaxrnn.recurrence.LoopOptions` (``owner`` names the caller in the error)."""
    check_loop_options(owner, unroll, hoist_input_projection, fused_backward, record_states, cpu_kernel)
    return LoopOptions(unroll, hoist_input_projection, fused_backward, cpu_kernel, record_states)


def stacked(
    cell: str,
    params: Params,
    x: Array,
    hx: Any = None,
    *,
    nonlinearity: str = "tanh",
    seq_lengths: Array | None = None,
    batch_first: bool = False,
    dropout: float = 0.0,
    deterministic: bool | None = None,
    dropout_key: Array | None = None,
    expect: Mapping[str, Any] | None = None,
    options: LoopOptions | None = None,
    owner: str = "jaxrnn",
) -> tuple[Array, Any, list[State] | None]:
    """The one implementation behind :func:`rnn`, :func:`lstm`, :func:`gru` and every module.

    ``cell`` is ``'rnn'``, ``'lstm'`` or ``'gru'``; ``expect`` holds structure the caller states (checked
    against ``params``); ``owner`` names the caller in error messages. Returns ``(output, h_n, recorded)``
    with ``h_n`` as the user sees it (``(h_n, c_n)`` for LSTM) and ``recorded`` the list of every step's
    states per layer-direction (``l0``, ``l0_reverse``, ``l1``, ...) when ``options.record_states``, else None.
    """
    _check_cell_name(owner, cell)
    options = options or LoopOptions()
    stack = Stack.from_params(cell, params, owner, **(expect or {}))
    packed = x if isinstance(x, PackedSequence) else None
    if packed is not None:  # torch runs a packed batch as the padded batch with its lengths
        x, seq_lengths = unpack_for_layer(owner, packed, seq_lengths)
        batch_first = False
    x = jnp.asarray(x)
    check_input(owner, x, batch_first)
    if x.shape[-1] != stack.input_size:
        raise ValueError(
            f"{owner}: input has {x.shape[-1]} features in its last axis (shape {tuple(x.shape)}), but "
            f"weight_ih_l0 {tuple(jnp.shape(params['weight_ih_l0']))} takes input_size={stack.input_size}."
        )
    batched = x.ndim == 3
    if not batched:
        if seq_lengths is not None:
            raise ValueError(f"{owner}: seq_lengths needs batched input (N sequences); got unbatched {tuple(x.shape)}.")
        x = x[:, None, :]
    elif batch_first:
        x = jnp.swapaxes(x, 0, 1)
    length, batch, _ = x.shape
    dtype = jnp.result_type(x.dtype, params["weight_ih_l0"].dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = params["weight_ih_l0"].dtype
    x = x.astype(dtype)
    dropout_key = _dropout_key(owner, stack, dropout, deterministic, dropout_key)

    equations = Cell(kind_of(cell, nonlinearity), stack.hidden_size, stack.proj_size)
    D = stack.num_directions
    initial = _initial_state(owner, equations, hx, D * stack.num_layers, batch, batched, dtype)
    mask = None
    if seq_lengths is not None:
        mask = lengths_to_mask(check_seq_lengths(owner, seq_lengths, batch, length), length, batch_first=False)

    layer_input = x
    finals: list[State] = []
    recorded: list[State] = []
    for layer in range(stack.num_layers):
        outputs = []
        for direction in range(D):
            state, out, states = recurrence(
                equations,
                weights_of(params, suffix(layer, direction)),
                layer_input,
                tuple(s[layer * D + direction] for s in initial),
                mask,
                reverse=direction == 1,
                options=options,
            )
            finals.append(state)
            outputs.append(out)
            if states is not None:
                recorded.append(states)
        layer_input = outputs[0] if D == 1 else jnp.concatenate(outputs, axis=-1)
        if dropout_key is not None and layer < stack.num_layers - 1:
            layer_input = dropout_mask(jax.random.fold_in(dropout_key, layer), dropout, layer_input)

    output = layer_input
    final = tuple(jnp.stack(parts) for parts in zip(*finals))  # each (D*num_layers, N, ·)
    if batched:
        if batch_first:
            output = jnp.swapaxes(output, 0, 1)
    else:
        output = output[:, 0]
        final = tuple(s[:, 0] for s in final)
    h_n = final if cell == "lstm" else final[0]
    if packed is not None:
        output = repack_like(output, packed)
    return output, h_n, (recorded if options.record_states else None)


def check_input(owner: str, x: Array, batch_first: bool) -> None:
    """Raises unless ``x`` is ``(L, N, H_in)`` / ``(N, L, H_in)`` or unbatched ``(L, H_in)``."""
    if x.ndim not in (2, 3):
        layout = "(N, L, H_in)" if batch_first else "(L, N, H_in)"
        raise ValueError(f"{owner}: expected input of shape {layout} or unbatched (L, H_in), got {tuple(x.shape)}.")


def dropout_mask(key: Array, rate: float, x: Array) -> Array:
    """Inverted dropout, as ``torch.nn.functional.dropout`` and ``flax.linen.Dropout``: zero each entry with
    probability ``rate``, scale the rest by ``1 / (1 - rate)``; ``rate = 1`` gives zeros."""
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jax.lax.select(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _dropout_key(
    owner: str, stack: Stack, dropout: float, deterministic: bool | None, key: Array | None
) -> Array | None:
    """The key that drives inter-layer dropout in this call, or None when no dropout runs."""
    check_dropout(owner, dropout)
    if deterministic is None:
        deterministic = key is None
    if deterministic or dropout == 0 or stack.num_layers == 1:
        return None
    if key is None:
        raise ValueError(
            f"{owner}: dropout={dropout} with deterministic=False needs a dropout_key (a jax.random key); "
            "pass deterministic=True to run without dropout."
        )
    return key


def _initial_state(
    owner: str, cell: Cell, hx: Any, stack_size: int, batch: int, batched: bool, dtype: Any
) -> tuple[Array, ...]:
    """Validated initial states, each ``(D*num_layers, N, ·)``; zeros when ``hx`` is None."""
    zeros = cell.zero_state((stack_size, batch), dtype)
    if hx is None:
        return zeros
    if cell.has_cell_state:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError(f"{owner}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}.")
        given, names = tuple(hx), ("hx[0] (h_0)", "hx[1] (c_0)")
    else:
        given, names = (hx,), ("hx",)
    states = []
    for state_name, zero, s in zip(names, zeros, given):
        s = jnp.asarray(s)
        want = zero.shape if batched else (zero.shape[0], zero.shape[2])
        if s.shape != want:
            raise ValueError(f"{owner}: expected {state_name} of shape {want}, got {tuple(s.shape)}.")
        states.append((s if batched else s[:, None]).astype(dtype))
    return tuple(states)


def rnn_cell(params: Params, x: Array, hx: Array | None = None, *, nonlinearity: str = "tanh") -> Array:
    """``torch.nn.RNNCell`` as a function: ``x`` ``(N, H_in)`` or ``(H_in,)``, ``hx`` ``(N, H)`` -> ``h'``."""
    return cell_step("rnn", params, x, None if hx is None else (hx,), nonlinearity=nonlinearity)[0]


def lstm_cell(params: Params, x: Array, hx: tuple[Array, Array] | None = None) -> tuple[Array, Array]:
    """``torch.nn.LSTMCell`` as a function: ``x`` ``(N, H_in)`` or ``(H_in,)``, ``hx = (h, c)`` -> ``(h', c')``.

    ``params`` may hold ``weight_hr`` ``(P, H)`` (the projection :class:`jaxrnn.LSTM` uses): ``h`` then has ``P``
    features.
    """
    if hx is not None and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
        raise ValueError(f"jaxrnn.functional.lstm_cell: hx must be a tuple (h, c), got {type(hx).__name__}.")
    h, c = cell_step("lstm", params, x, None if hx is None else tuple(hx))
    return h, c


def gru_cell(params: Params, x: Array, hx: Array | None = None) -> Array:
    """``torch.nn.GRUCell`` as a function: ``x`` ``(N, H_in)`` or ``(H_in,)``, ``hx`` ``(N, H)`` -> ``h'``."""
    return cell_step("gru", params, x, None if hx is None else (hx,))[0]


def cell_step(
    cell: str, params: Params, x: Array, state: State | None, *, nonlinearity: str = "tanh", owner: str | None = None
) -> State:
    """One step of a lone cell (the implementation of :func:`rnn_cell` and friends and of every cell module)."""
    owner = owner or f"jaxrnn.functional.{cell}_cell"
    _check_cell_name(owner, cell)
    weights = weights_of(params)
    gates = NUM_GATES[kind_of(cell)]
    if weights["weight_ih"] is None or weights["weight_hh"] is None:
        raise ValueError(f"{owner}: params need 'weight_ih' and 'weight_hh' (torch's cell keys), got {sorted(params)}.")
    rows, input_size = jnp.shape(weights["weight_ih"])
    hidden = rows // gates
    proj = int(jnp.shape(weights["weight_hr"])[0]) if weights["weight_hr"] is not None else 0
    expected = layer_shapes(gates, input_size, hidden, weights["bias_ih"] is not None, proj)
    bad = [
        f"{k}: expected {v}, got {tuple(jnp.shape(params[k])) if k in params else 'missing'}"
        for k, v in expected.items()
        if k not in params or tuple(jnp.shape(params[k])) != v
    ]
    bad += [f"unexpected key {k}" for k in params if k not in expected]
    if rows % gates or bad:
        raise ValueError(f"{owner}: params do not fit a cell with {gates} gate(s): " + "; ".join(bad or [f"{rows=}"]))
    x = jnp.asarray(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"{owner}: expected input of shape (N, H_in) or (H_in,), got {tuple(x.shape)}.")
    if x.shape[-1] != input_size:
        raise ValueError(
            f"{owner}: input has {x.shape[-1]} features in its last axis (shape {tuple(x.shape)}), but "
            f"input_size={input_size}."
        )
    equations = Cell(kind_of(cell, nonlinearity), hidden, proj)
    if state is None:
        state = equations.zero_state(x.shape[:-1], jnp.result_type(x, weights["weight_hh"]))
    state = tuple(jnp.asarray(s) for s in state)
    for name, size, s in zip(("h", "c"), (equations.output_size, hidden), state):
        want = x.shape[:-1] + (size,)
        if s.shape != want:
            raise ValueError(
                f"{owner}: expected hx {name} of shape {want} for input of shape {tuple(x.shape)}, "
                f"got {tuple(s.shape)}."
            )
    new_state, _ = equations.step(weights, state, x)
    return new_state
