"""Initialisations from the literature, as opt-in changes to a layer's parameters (torch's default is untouched).

* :func:`irnn`: Le, Jaitly & Hinton (2015), "A Simple Way to Initialize Recurrent
  Networks of Rectified Linear Units": a ReLU RNN (``nonlinearity='relu'``) whose
  recurrent weights start as the identity, biases at zero and input weights small,
  so at first each unit keeps its value and gradients pass through time unchanged.
* :func:`forget_gate_bias`: Gers, Schmidhuber & Cummins (2000); Jozefowicz,
  Zaremba & Sutskever (2015): an LSTM's forget gate starts open, ``sigmoid(b_f)``
  with ``b_f = 1`` (torch's default ``b_f`` is uniform around 0, a gate near 0.5
  that halves the cell state every step).

Both take what each API holds: a params dict under torch's names (a linen layer's
``variables['params']['rnn']``, or :mod:`jaxrnn.functional`'s params), returning
a new dict; or a :mod:`jaxrnn.nnx` layer, whose parameters are replaced in
place (and which is returned). Every layer and direction of a stack is changed.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

__all__ = ["forget_gate_bias", "irnn"]

Array = jax.Array
Params = TypeVar("Params")  # a params dict, or a jaxrnn.nnx layer (one exists only once Flax NNX is imported)

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)(_l\d+(?:_reverse)?)?$")


def irnn(params: Params, key: Array, *, input_std: float = 1e-3, recurrent_scale: float = 1.0) -> Params:
    """Le et al.'s IRNN initialisation of an ``RNN`` (use it with ``nonlinearity='relu'``).

    ``weight_hh = recurrent_scale * I`` ``(H, H)``, both biases zero,
    ``weight_ih ~ N(0, input_std^2)`` ``(H, H_in)`` (Le et al. draw input
    weights from N(0, 0.001^2)), for every layer and direction.

    Raises:
      ValueError: the parameters are not a plain RNN's (an LSTM's or GRU's
        ``weight_hh`` is ``(gates * H, H)``), or have no recurrent weights.
    """

    def change(name: str, value: Array, index: int) -> Array:
        kind = _KEY.match(name)[1]
        if kind == "weight_hh":
            if value.shape[0] != value.shape[1]:
                raise ValueError(
                    f"irnn: {name} is {tuple(value.shape)}, not square: the identity initialisation is for a plain "
                    "RNN (an LSTM's or GRU's weight_hh stacks its gates)."
                )
            return recurrent_scale * jnp.eye(value.shape[0], dtype=value.dtype)
        if kind == "weight_ih":
            return input_std * jax.random.normal(jax.random.fold_in(key, index), value.shape, value.dtype)
        return jnp.zeros_like(value)

    return _apply("irnn", params, change)


def forget_gate_bias(params: Params, value: float = 1.0) -> Params:
    """An LSTM's forget-gate bias set to ``value``: ``b_ih[H:2H] = value`` and ``b_hh[H:2H] = 0`` (torch's gate
    order is i, f, g, o, so the forget gate's rows are the second quarter), for every layer and direction; the
    other gates keep their biases.

    Raises:
      ValueError: the parameters are not an LSTM's (no ``bias_ih`` of ``4 * H`` rows), or have no biases.
    """

    def change(name: str, array: Array, index: int) -> Array:
        kind, suffix = _KEY.match(name).groups()
        if kind not in ("bias_ih", "bias_hh"):
            return array
        hidden = _hidden_size(arrays, suffix or "")
        if array.shape[0] != 4 * hidden:
            raise ValueError(
                f"forget_gate_bias: {name} has {array.shape[0]} rows for hidden size {hidden}, not an LSTM's 4 * "
                f"{hidden}: the forget gate exists only in an LSTM."
            )
        forget = value if kind == "bias_ih" else 0.0
        return array.at[hidden : 2 * hidden].set(jnp.asarray(forget, array.dtype))

    arrays = _arrays("forget_gate_bias", params)
    if not any(_KEY.match(name)[1] == "bias_ih" for name in arrays):
        raise ValueError("forget_gate_bias: the layer has no biases (bias=False); there is no forget-gate bias to set.")
    return _apply("forget_gate_bias", params, change)


def _hidden_size(arrays: Mapping[str, Array], suffix: str) -> int:
    """H of one layer-direction: ``weight_hr``'s columns with a projection, else ``weight_hh``'s."""
    projection = arrays.get("weight_hr" + suffix)
    return int((projection if projection is not None else arrays["weight_hh" + suffix]).shape[1])


def _arrays(owner: str, params: Any) -> dict[str, Array]:
    """The layer's ``{torch name: array}``, from a params dict or a jaxrnn NNX layer."""
    if isinstance(params, Mapping):
        arrays = dict(params)
    elif (nnx := sys.modules.get("flax.nnx")) is not None and isinstance(params, nnx.Module):
        arrays = {name: value[...] for name, value in vars(params).items() if isinstance(value, nnx.Param)}
    else:
        raise TypeError(f"{owner}: expected a params dict or a jaxrnn.nnx layer, got {type(params).__name__}.")
    unknown = [name for name in arrays if not _KEY.match(str(name))]
    if unknown or not any(_KEY.match(name)[1] == "weight_hh" for name in arrays):
        raise ValueError(
            f"{owner}: expected one recurrent layer's parameters under torch's names (weight_ih_l0, weight_hh_l0, "
            f"...), got keys {sorted(map(str, arrays))}; pass the layer's own dict, e.g. variables['params']['rnn']."
        )
    return arrays


def _apply(owner: str, params: Any, change: Any) -> Any:
    arrays = _arrays(owner, params)
    changed = {name: change(name, value, i) for i, (name, value) in enumerate(arrays.items())}
    if not isinstance(params, Mapping):  # a jaxrnn.nnx layer (checked by _arrays)
        for name, value in changed.items():
            getattr(params, name)[...] = value
        return params
    return type(params)(changed) if not isinstance(params, dict) else changed
