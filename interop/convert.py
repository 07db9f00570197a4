"""``from_torch`` / ``to_torch``: one recurrent module at a time, both ways, losslessly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxrnn
from interop.state_dict import load_state_dict, to_state_dict

# torch class name -> (jaxrnn class, constructor arguments shared by both).
_STACKED = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL = ("input_size", "hidden_size", "bias")
_SPECS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "RNN": (jaxrnn.RNN, _STACKED + ("nonlinearity",)),
    "LSTM": (jaxrnn.LSTM, _STACKED + ("proj_size",)),
    "GRU": (jaxrnn.GRU, _STACKED),
    "RNNCell": (jaxrnn.RNNCell, _CELL + ("nonlinearity",)),
    "LSTMCell": (jaxrnn.LSTMCell, _CELL),
    "GRUCell": (jaxrnn.GRUCell, _CELL),
}
_JAX_TO_TORCH = {cls: name for name, (cls, _) in _SPECS.items()}


def _spec_for_torch(module: Any) -> tuple[type[nn.Module], tuple[str, ...]]:
    import torch

    for name, spec in _SPECS.items():
        if type(module) is getattr(torch.nn, name):
            return spec
    raise TypeError(
        f"from_torch: expected torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, got {type(module).__name__}. "
        "For a whole model, use interop.load_state_dict(flax_model, torch_model.state_dict(), example_input)."
    )


def from_torch(module: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A torch recurrent module -> ``(jaxrnn_module, variables)`` configured and weighted identically.

    Accepts ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and
    ``GRUCell``. Parameters are copied bit for bit in their own dtype
    (float64 needs ``jax.config.update('jax_enable_x64', True)``).
    """
    cls, fields = _spec_for_torch(module)
    dtype = next(module.parameters()).dtype
    param_dtype = jnp.dtype(str(dtype).removeprefix("torch."))
    if param_dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"from_torch: the torch module is {dtype}, but JAX's 64-bit mode is off, so its weights would be "
            "rounded to float32. Enable it with jax.config.update('jax_enable_x64', True), or convert the "
            "module with .float() first."
        )
    jax_module = cls(**{f: getattr(module, f) for f in fields}, param_dtype=param_dtype)
    return jax_module, load_state_dict(jax_module, module.state_dict())


def to_torch(module: nn.Module, variables: dict[str, Any]) -> Any:
    """A jaxrnn layer or cell and its ``variables`` -> the equivalent torch module (in eval mode)."""
    import torch

    if type(module) not in _JAX_TO_TORCH:
        raise TypeError(
            f"to_torch: expected a jaxrnn RNN, LSTM, GRU or cell, got {type(module).__name__}. "
            "For a whole model, use interop.to_state_dict(variables) and torch_model.load_state_dict."
        )
    name = _JAX_TO_TORCH[type(module)]
    _, fields = _SPECS[name]
    state = to_state_dict(variables)
    config = {f: getattr(module, f) for f in fields}
    if config["input_size"] is None:
        key = "weight_ih_l0" if "num_layers" in config else "weight_ih"
        if key not in state:
            raise KeyError(f"to_torch: variables['params'] has no {key!r}; got {sorted(state)}.")
        config["input_size"] = int(state[key].shape[1])
    dtype = getattr(torch, str(next(iter(state.values())).dtype))
    torch_module = getattr(torch.nn, name)(**config, dtype=dtype)
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return torch_module.eval()
