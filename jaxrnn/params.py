"""A recurrent layer's parameters under PyTorch's names: which keys, which shapes, how initialised.

One place answers "what does ``torch.nn.LSTM(10, 20, 2, bidirectional=True)``
hold" for every API: the linen and NNX modules declare exactly
:meth:`Stack.shapes`, the functional core reads the structure back from a
params dict with :meth:`Stack.from_params` (and says which key is wrong), and
:func:`init_arrays` draws PyTorch's initialisation. Also here: the checks of
the constructor arguments the layers share (:func:`check_layer_args`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.backend import check_cpu_kernel
from jaxrnn.equations import NUM_GATES, kind_of

Array = jax.Array
CELLS = ("rnn", "lstm", "gru")
_CLASS = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def layer_shapes(
    num_gates: int, input_size: int, hidden_size: int, bias: bool, proj_size: int = 0, suffix: str = ""
) -> dict[str, tuple[int, ...]]:
    """One cell's (or one layer-direction's) ``{torch name: shape}``, in torch's order."""
    gates = num_gates * hidden_size
    shapes = {f"weight_ih{suffix}": (gates, input_size), f"weight_hh{suffix}": (gates, proj_size or hidden_size)}
    if bias:
        shapes.update({f"bias_ih{suffix}": (gates,), f"bias_hh{suffix}": (gates,)})
    if proj_size:
        shapes[f"weight_hr{suffix}"] = (proj_size, hidden_size)
    return shapes


def suffix(layer: int, direction: int) -> str:
    """``_l{layer}``, plus ``_reverse`` for direction 1: torch's key suffix."""
    return f"_l{layer}" + ("_reverse" if direction else "")


def weights_of(params: Mapping[str, Array], key_suffix: str = "") -> dict[str, Array | None]:
    """The arrays of one cell or layer-direction under suffix-free names, ``None`` where absent."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return {name: params.get(name + key_suffix) for name in names}


@dataclasses.dataclass(frozen=True)
class Stack:
    """The structure of a stacked ``RNN``/``LSTM``/``GRU``: everything its parameter shapes depend on."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of each direction's ``h``: ``proj_size or hidden_size``."""
        return self.proj_size or self.hidden_size

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{torch state_dict key: shape}`` in torch's order (``weight_ih_l0``, ``weight_hh_l0``, ...)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.num_directions * self.output_size
            for direction in range(self.num_directions):
                shapes.update(
                    layer_shapes(
                        NUM_GATES[kind_of(self.cell)],
                        layer_input,
                        self.hidden_size,
                        self.bias,
                        self.proj_size,
                        suffix(layer, direction),
                    )
                )
        return shapes

    @classmethod
    def from_params(cls, cell: str, params: Mapping[str, Any], owner: str, **given: Any) -> Stack:
        """Reads the structure from torch-named ``params`` and checks every key and shape.

        ``given`` holds the arguments the caller stated (``num_layers=2``, ...; ``None`` means "read it from
        the keys"); each must agree with the keys. Raises ``ValueError`` naming every missing, unexpected or
        misshapen key (expected vs got shape).
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"{owner}: params must be a dict of torch-named arrays, got {type(params).__name__}.")
        for key in ("weight_ih_l0", "weight_hh_l0"):
            if key not in params:
                raise ValueError(
                    f"{owner}: params has no {key!r}; expected torch's {_CLASS[cell]} keys "
                    f"(weight_ih_l0, weight_hh_l0, bias_ih_l0, ...), got {sorted(params)}."
                )
        gates = NUM_GATES[kind_of(cell)]
        w_ih, w_hh = (tuple(jnp.shape(params[k])) for k in ("weight_ih_l0", "weight_hh_l0"))
        if len(w_ih) != 2 or len(w_hh) != 2 or w_ih[0] % gates or w_hh[0] != w_ih[0]:
            raise ValueError(
                f"{owner}: weight_ih_l0 {w_ih} and weight_hh_l0 {w_hh} are not {_CLASS[cell]} weights: both "
                f"need {gates}*hidden_size rows."
            )
        found = {
            "input_size": w_ih[1],
            "hidden_size": w_ih[0] // gates,
            "num_layers": 1 + max(int(m[1]) for k in params if (m := re.fullmatch(r"weight_ih_l(\d+)", k))),
            "bias": "bias_ih_l0" in params,
            "bidirectional": "weight_ih_l0_reverse" in params,
        }
        if cell == "lstm":
            found["proj_size"] = int(jnp.shape(params["weight_hr_l0"])[0]) if "weight_hr_l0" in params else 0
        for name, value in given.items():
            if value is not None and name in found and value != found[name]:
                raise ValueError(f"{owner}: {name}={value!r}, but the params hold {name}={found[name]!r}.")
        stack = cls(cell, **found)
        expected = stack.shapes()
        missing = [k for k in expected if k not in params]
        unexpected = [k for k in params if k not in expected]
        mismatched = [
            f"{k}: expected {v}, got {tuple(jnp.shape(params[k]))}"
            for k, v in expected.items()
            if k in params and tuple(jnp.shape(params[k])) != v
        ]
        if missing or unexpected or mismatched:
            problems = [f"missing keys: {', '.join(missing)}"] if missing else []
            problems += [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
            problems += [f"shape mismatch for {m}" for m in mismatched]
            settings = ", ".join(f"{k}={v}" for k, v in found.items())
            raise ValueError(f"{owner}: params do not fit {_CLASS[cell]}({settings}): " + "; ".join(problems) + ".")
        return stack


def init_arrays(
    key: Array, shapes: Mapping[str, tuple[int, ...]], hidden_size: int, dtype: Any = jnp.float32
) -> dict[str, Array]:
    """PyTorch's initialisation: every array ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, one key each."""
    bound = 1.0 / math.sqrt(hidden_size)
    keys = jax.random.split(key, len(shapes))
    return {name: jax.random.uniform(k, shape, dtype, -bound, bound) for k, (name, shape) in zip(keys, shapes.items())}


def uniform_init(bound: float):
    """PyTorch's recurrent init as a Flax initializer: ``U(-bound, bound)``."""

    def init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _positive_int(owner: str, field: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{owner}: {field} must be a positive int, got {value!r}.")


def _boolean(owner: str, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {field} must be a bool, got {value!r}.")


def check_cell_args(owner: str, *, input_size: Any, hidden_size: Any, bias: Any, nonlinearity: str = "tanh") -> None:
    """Raises ``ValueError`` naming the argument unless a cell's arguments are valid (``input_size`` may be None)."""
    _positive_int(owner, "hidden_size", hidden_size)
    _positive_int(owner, "input_size", input_size, allow_none=True)
    _boolean(owner, "bias", bias)
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{owner}: unknown nonlinearity {nonlinearity!r}; expected 'tanh' or 'relu'.")


def check_layer_args(
    owner: str,
    *,
    input_size: Any,
    hidden_size: Any,
    num_layers: Any,
    bias: Any,
    batch_first: Any,
    dropout: Any,
    bidirectional: Any,
    proj_size: Any = 0,
    nonlinearity: str = "tanh",
    unroll: Any = 1,
    hoist_input_projection: Any = False,
    fused_backward: Any = False,
    record_states: Any = False,
    cpu_kernel: Any = "auto",
    stacklevel: int = 3,
) -> None:
    """Raises ``ValueError`` naming the argument unless a stacked layer's arguments are valid.

    Warns, as torch does, when ``dropout > 0`` with one layer (dropout acts between layers).
    """
    check_cell_args(owner, input_size=input_size, hidden_size=hidden_size, bias=bias, nonlinearity=nonlinearity)
    _positive_int(owner, "num_layers", num_layers)
    for field, value in (("batch_first", batch_first), ("bidirectional", bidirectional)):
        _boolean(owner, field, value)
    check_dropout(owner, dropout)
    if dropout > 0 and num_layers == 1:  # torch warns the same
        warnings.warn(
            f"{owner}: dropout acts between recurrent layers, so dropout={dropout} with num_layers=1 does nothing.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size < 0:
        raise ValueError(f"{owner}: proj_size must be a non-negative int, got {proj_size!r}.")
    if proj_size > 0 and proj_size >= hidden_size:
        raise ValueError(
            f"{owner}: proj_size must be smaller than hidden_size, got proj_size={proj_size} "
            f"and hidden_size={hidden_size}."
        )
    check_loop_options(owner, unroll, hoist_input_projection, fused_backward, record_states, cpu_kernel)


def check_dropout(owner: str, dropout: Any) -> None:
    """Raises ``ValueError`` unless ``dropout`` is a number in [0, 1]."""
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
        raise ValueError(f"{owner}: dropout must be a number in [0, 1], got {dropout!r}.")


def check_loop_options(
    owner: str, unroll: Any, hoist_input_projection: Any, fused_backward: Any, record_states: Any, cpu_kernel: Any
) -> None:
    """Raises ``ValueError`` naming the option unless the loop options are valid (see ``LoopOptions``)."""
    _positive_int(owner, "unroll", unroll)
    for field, value in (
        ("hoist_input_projection", hoist_input_projection),
        ("fused_backward", fused_backward),
        ("record_states", record_states),
    ):
        _boolean(owner, field, value)
    check_cpu_kernel(owner, cpu_kernel)
