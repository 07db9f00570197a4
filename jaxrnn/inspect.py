"""Looking inside a recurrent layer: every layer's hidden (and cell) state at every step, and how far back the
loss's gradient reaches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn.equations import NUM_GATES, Cell, gate_weights, kind_of, project
from jaxrnn.params import suffix, weights_of
from jaxrnn.rnn import _StackedRecurrent

Array = jax.Array

__all__ = ["gradient_norms_by_distance", "hidden_state_gradients", "step_states"]


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


def hidden_state_gradients(
    cell: str, params: Mapping[str, Array], x: Array, loss: Callable[[Array], Array], nonlinearity: str = "tanh"
) -> Array:
    """``dL/dh_t`` at every step of a one-layer, one-direction layer, where ``L = loss(h_T)``.

    Args:
      cell: ``'rnn'``, ``'lstm'`` or ``'gru'``.
      params: the layer's parameters under torch's names (``weight_ih_l0``, ...).
      x: ``(N, L, H_in)``, batch first.
      loss: the scalar loss of the last hidden state ``h_T`` ``(N, P)``
        (a head and a criterion, say).
      nonlinearity: an RNN's, ``'tanh'`` or ``'relu'``.

    Returns:
      ``(L, N, P)``: the gradient of ``L`` with respect to ``h_t``, found by
      re-running the layer's step with a zero perturbation added to each
      ``h_t`` and differentiating with respect to the perturbations. How its
      norm falls with the distance ``L - 1 - t`` is how far back the loss can
      still teach the layer.
    """
    weights = weights_of(params, "_l0")
    if weights["weight_hh"] is None:
        raise ValueError(f"hidden_state_gradients: expected a layer's weight_hh_l0, got keys {sorted(params)}.")
    kind = kind_of(cell, nonlinearity)
    num_gates = NUM_GATES[kind]
    projection = weights["weight_hr"]
    hidden = int(weights["weight_hh"].shape[0]) // num_gates
    layer_cell = Cell(kind, hidden, 0 if projection is None else int(projection.shape[0]))
    ih, hh = gate_weights(weights, num_gates)
    gx = project(ih, jnp.swapaxes(x, 0, 1))  # G arrays (L, N, H)

    def loss_of_perturbations(perturbations: Array) -> Array:
        def body(state: Any, inputs: tuple) -> tuple:
            gx_t, eps_t = inputs
            state, _ = layer_cell.combine(gx_t, project(hh, state[0]), state, projection)
            return (state[0] + eps_t,) + state[1:], None

        state, _ = jax.lax.scan(body, layer_cell.zero_state((x.shape[0],), x.dtype), (gx, perturbations))
        return loss(state[0])

    return jax.grad(loss_of_perturbations)(jnp.zeros((x.shape[1], x.shape[0], layer_cell.output_size), x.dtype))


def gradient_norms_by_distance(grads: Array) -> np.ndarray:
    """The mean over the batch of ``||dL/dh_t||``, indexed by the distance from the loss.

    Args:
      grads: ``(L, N, P)``, as :func:`hidden_state_gradients` returns them.

    Returns:
      ``(L,)`` float64: index ``d`` is step ``L - 1 - d``. The norms are taken in
      float64: in float32 the squares of entries below about 1e-19 underflow, and a
      vanishing gradient's norm would read 0 long before the gradient is 0.
    """
    return np.linalg.norm(np.asarray(grads, np.float64), axis=-1).mean(axis=1)[::-1]
