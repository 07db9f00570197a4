"""Looking inside a recurrent layer: every layer's hidden (and cell) state at every step."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.params import suffix
from jaxrnn.rnn import _StackedRecurrent

Array = jax.Array


def step_states(
    module: _StackedRecurrent,
    variables: Any,
    x: Array,
    hx: Any = None,
    seq_lengths: Array | None = None,
) -> dict[str, Array]:
    """Runs ``module`` (an ``RNN``, ``LSTM`` or ``GRU``) and returns the state of every layer at every step.

    Returns ``{'h': (num_layers, D, L, N, P)}``, plus ``'c': (num_layers, D,
    L, N, hidden_size)`` for an LSTM, with ``D`` the number of directions
    (index 1 is the reverse direction), in the input's time order whatever
    ``batch_first`` says (batch_first only moves ``N`` and ``L`` of the
    input). Unbatched input gives ``N = 1``. On steps past a sequence's length
    (``seq_lengths``) the state is the carried one: the last valid state for the
    forward direction, the initial state for the reverse one. Also returns ``'output'``,
    the module's ordinary output from the same run. Recording runs on XLA's
    loop (``cpu_kernel`` does not apply), so in float32 these can differ from
    a call that runs in the CPU kernel by rounding, about 1e-7.
    """
    recording = module.clone(record_states=True)
    (output, _), collections = recording.apply(variables, x, hx, seq_lengths=seq_lengths, mutable=["intermediates"])
    intermediates = collections["intermediates"]
    D = 2 if module.bidirectional else 1
    per_layer = []
    for layer in range(module.num_layers):
        directions = []
        for direction in range(D):
            (states,) = intermediates["states" + suffix(layer, direction)]  # sow keeps a tuple of values
            directions.append(states)
        per_layer.append(directions)
    names = ("h", "c") if len(per_layer[0][0]) == 2 else ("h",)
    result = {
        name: jnp.stack([jnp.stack([d[i] for d in layer]) for layer in per_layer]) for i, name in enumerate(names)
    }
    result["output"] = output
    return result
