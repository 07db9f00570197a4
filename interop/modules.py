"""``from_torch`` / ``to_torch``: one recurrent module at a time, both ways, losslessly."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

import jaxrnn
import jaxrnn.nnx
from interop.arrays import to_numpy
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
_NNX = {name: getattr(jaxrnn.nnx, name) for name in _SPECS}
_JAX_TO_TORCH = {cls: name for name, (cls, _) in _SPECS.items()} | {cls: name for name, cls in _NNX.items()}
APIS = ("linen", "nnx", "functional")


def _spec_for_torch(module: Any) -> tuple[type[nn.Module], tuple[str, ...]]:
    import torch

    for name, spec in _SPECS.items():
        if type(module) is getattr(torch.nn, name):
            return spec
    raise TypeError(
        f"from_torch: expected torch.nn.RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, got {type(module).__name__}. "
        "For a whole model, use interop.load_state_dict(flax_model, torch_model.state_dict(), example_input)."
    )


def from_torch(module: Any, api: str = "linen", *, rngs: nnx.Rngs | None = None) -> Any:
    """A torch recurrent module -> its jaxrnn twin, configured and weighted identically, in one of three APIs.

    Accepts ``torch.nn.RNN``, ``LSTM``, ``GRU``, ``RNNCell``, ``LSTMCell`` and
    ``GRUCell``. Parameters are copied bit for bit in their own dtype
    (float64 needs ``jax.config.update('jax_enable_x64', True)``).

    * ``api="linen"``: ``(jaxrnn_module, variables)``; call ``module.apply(variables, x, hx)``.
    * ``api="nnx"``: a :mod:`jaxrnn.nnx` module in eval mode (as torch's eval mode: no dropout);
      call ``module(x, hx)``. ``rngs`` seeds its dropout stream (default ``nnx.Rngs(0)``).
    * ``api="functional"``: ``(params, kwargs)``: call ``jaxrnn.functional.lstm(params, x, hx, **kwargs)``
      (``rnn``/``gru``/``lstm_cell``/... by the torch class); ``kwargs`` holds ``batch_first``,
      ``dropout`` and RNN's ``nonlinearity``; the rest is read from the params' keys.
    """
    if api not in APIS:
        raise ValueError(f"from_torch: api must be one of {APIS}, got {api!r}.")
    cls, fields = _spec_for_torch(module)
    dtype = next(module.parameters()).dtype
    param_dtype = jnp.dtype(str(dtype).removeprefix("torch."))
    if param_dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"from_torch: the torch module is {dtype}, but JAX's 64-bit mode is off, so its weights would be "
            "rounded to float32. Enable it with jax.config.update('jax_enable_x64', True), or convert the "
            "module with .float() first."
        )
    config = {f: getattr(module, f) for f in fields}
    if api == "functional":
        params = {k: jnp.asarray(to_numpy(v), param_dtype) for k, v in module.state_dict().items()}
        return params, {k: config[k] for k in ("batch_first", "dropout", "nonlinearity") if k in config}
    if api == "nnx":
        nnx_module = _NNX[type(module).__name__](**config, param_dtype=param_dtype, rngs=rngs or nnx.Rngs(0))
        load_state_dict(nnx_module, module.state_dict())
        nnx_module.eval()
        return nnx_module
    jax_module = cls(**config, param_dtype=param_dtype)
    return jax_module, load_state_dict(jax_module, module.state_dict())


def to_torch(module: nn.Module | nnx.Module, variables: dict[str, Any] | None = None) -> Any:
    """A jaxrnn layer or cell -> the equivalent torch module (in eval mode).

    linen: ``to_torch(module, variables)``; NNX: ``to_torch(module)`` (its parameters are in the module).
    """
    import torch

    if type(module) not in _JAX_TO_TORCH:
        raise TypeError(
            f"to_torch: expected a jaxrnn RNN, LSTM, GRU or cell (linen or NNX), got {type(module).__name__}. "
            "For a whole model, use interop.to_state_dict(variables or nnx_module) and torch_model.load_state_dict."
        )
    is_nnx = isinstance(module, nnx.Module)
    if is_nnx == (variables is not None):
        raise TypeError(
            "to_torch: an NNX module holds its parameters: call to_torch(module)."
            if is_nnx
            else "to_torch: a linen module needs its variables: call to_torch(module, variables)."
        )
    name = _JAX_TO_TORCH[type(module)]
    _, fields = _SPECS[name]
    state = to_state_dict(module if is_nnx else variables)
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
