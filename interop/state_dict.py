"""Map torch ``state_dict`` keys onto Flax parameter trees (linen variables or NNX modules) and back.

The rule is by name, so whole models port as long as the Flax submodules are
named like the torch attributes (linen ``nn.Dense``/``nn.Embed`` or NNX
``nnx.Linear``/``nnx.Embed``; an NNX list of layers ``layers[0]`` is
``layers.0``, as a torch ``ModuleList``)::

    torch key                     Flax path                          conversion
    rnn.weight_ih_l0              ('rnn', 'weight_ih_l0')            none (jaxrnn keeps torch's layout)
    fc.weight  (nn.Linear)        ('fc', 'kernel')                   transpose (out, in) <-> (in, out)
    fc.bias                       ('fc', 'bias')                     none
    embed.weight (nn.Embedding)   ('embed', 'embedding')             none
    norm.weight (nn.LayerNorm)    ('norm', 'scale')                  none

This module needs numpy only; torch tensors are accepted as values when torch
is installed, but torch is never imported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from interop import flax_cells
from interop.arrays import to_numpy
from interop.keys import Rename, cell_alias, prefix_hint, rename_keys, retie, strip_wrapper, untie
from jaxrnn.cells import _Cell
from jaxrnn.rnn import _StackedRecurrent

# Flax leaf name -> torch leaf name, and whether the array is transposed.
_LEAF_RENAMES = {"kernel": ("weight", True), "embedding": ("weight", False), "scale": ("weight", False)}


class StateDictError(ValueError):
    """A state_dict does not fit a module. ``missing``, ``unexpected`` and ``mismatched`` name the keys; ``lost``
    lists ``(key, why)`` for weights the module has no place for (e.g. ``b_hn`` in ``nnx.GRUCell``)."""

    def __init__(
        self,
        target: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple, tuple]],
        hint: str | None = None,
        lost: list[tuple[str, str]] | None = None,
    ):
        self.target, self.missing, self.unexpected, self.mismatched = target, missing, unexpected, mismatched
        self.hint, self.lost = hint, lost or []
        lines = [f"Error(s) loading state_dict into {target}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for key, expected, got in mismatched:
            lines.append(f"  shape mismatch for {key}: expected {expected}, got {got}")
        for key, why in self.lost:
            lines.append(f"  cannot hold {key}: {why}")
        if hint:
            lines.append(f"  hint: {hint}")
        super().__init__("\n".join(lines))


def torch_key(path: tuple[str, ...], prefix: str = "") -> tuple[str, bool]:
    """Flax parameter path -> (torch state_dict key, whether the array is transposed)."""
    *modules, leaf = path
    leaf, transposed = _LEAF_RENAMES.get(leaf, (leaf, False))
    return prefix + ".".join([*map(str, modules), leaf]), transposed


def _example_inputs(module: nn.Module, state_dict: Mapping[str, Any], prefix: str) -> tuple:
    """Inputs to trace a lone jaxrnn layer or cell, with the input size read from ``weight_ih``."""
    name = "weight_ih_l0" if isinstance(module, _StackedRecurrent) else "weight_ih"
    input_size = module.input_size
    if input_size is None:
        key = prefix + name
        if key not in state_dict:
            raise StateDictError(type(module).__name__, [key], [], [])
        input_size = int(np.shape(state_dict[key])[1])
    shape = (1, 1, input_size) if isinstance(module, _StackedRecurrent) else (1, input_size)
    return (jax.ShapeDtypeStruct(shape, jnp.float32),)


def abstract_params(module: nn.Module, *example_args: Any, **example_kwargs: Any) -> dict[tuple[str, ...], Any]:
    """Flat ``{path: ShapeDtypeStruct}`` of ``module``'s params, traced (no compute) on the example inputs."""
    return _trace(module, example_args, example_kwargs)[0]


def _trace(module: nn.Module, example_args: tuple, example_kwargs: dict) -> tuple[dict[tuple, Any], dict[tuple, Any]]:
    """:func:`abstract_params`, and ``{path: module}`` of the Flax recurrent cells called while tracing."""
    # Arrays (and ShapeDtypeStructs) are traced abstractly; anything else (flags like
    # deterministic=True) stays a Python value the module can branch on.
    leaves, treedef = jax.tree.flatten((example_args, example_kwargs))
    is_array = [isinstance(leaf, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)) for leaf in leaves]

    def init(*arrays: Any) -> Any:
        it = iter(arrays)
        args, kwargs = jax.tree.unflatten(treedef, [next(it) if a else leaf for leaf, a in zip(leaves, is_array)])
        return module.init(jax.random.key(0), *args, **kwargs)

    cells = {}

    def record(call: Any, args: Any, kwargs: Any, context: Any) -> Any:
        if isinstance(context.module, nn.RNNCellBase):
            cells.setdefault(context.module.path, context.module)
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(init, *[leaf for leaf, a in zip(leaves, is_array) if a])
    return traverse_util.flatten_dict(dict(variables.get("params", {}))), cells


def load_state_dict(
    module: nn.Module | nnx.Module,
    state_dict: Mapping[str, Any],
    *example_args: Any,
    prefix: str = "",
    strict: bool = True,
    rename: Rename | None = None,
    tied: Mapping[str, str] | None = None,
    **example_kwargs: Any,
) -> Any:
    """Loads a torch ``state_dict`` into Flax ``variables`` for a linen ``module``, or into an NNX module in place.

    Args:
      module: a jaxrnn layer or cell, or any Flax model built from jaxrnn
        layers, ``nn.Dense``, ``nn.Embed`` (and ``nn.LayerNorm``) whose
        submodule names match the torch attribute names; or the same in Flax
        NNX (:mod:`jaxrnn.nnx` layers, ``nnx.Linear``, ``nnx.Embed``,
        ``nnx.LayerNorm``), whose parameters are replaced in place.
      state_dict: ``{key: tensor or array}``, e.g. ``torch_model.state_dict()``
        or :func:`interop.load_checkpoint`'s result.
      *example_args: inputs to trace a linen ``module.init`` with (shapes
        only; nothing is computed); ``**example_kwargs`` the same by keyword. Not needed for a lone jaxrnn
        layer or cell (its input size is read from ``weight_ih``), nor for an
        NNX module (its parameters already exist).
      prefix: prepended to every expected key, e.g. ``'rnn.'`` to load the
        ``rnn`` submodule of a torch model into a lone jaxrnn layer.
      strict: when False, keys of ``state_dict`` that the module does not use
        are ignored. Missing keys and shape mismatches are always errors.
      rename: the file's keys -> the module's (see :func:`interop.keys.rename_keys`):
        a function, or a mapping of exact keys and module paths ending in
        ``'.'``, e.g. ``{'encoder.': 'embed.', 'decoder.': 'fc.'}``.
      tied: ``{alias: source}`` for weights the torch model shares, in the
        file's key names, e.g. ``{'decoder.weight': 'encoder.weight'}``: the
        alias must equal the source (or stand in for it, when the file kept
        only the alias) and is then not an unexpected key under ``strict``.

    Flax's own recurrent cells (``nn.LSTMCell``, ``nn.OptimizedLSTMCell``,
    ``nn.GRUCell``, ``nn.SimpleCell`` and the NNX ones) stand for the torch
    layer their ``nn.RNN``/``nnx.RNN`` is named after (``lstm`` ->
    ``lstm.weight_ih_l0``; ``lstm_l1`` -> ``lstm.weight_ih_l1``;
    ``nn.Bidirectional``'s ``backward_rnn`` -> ``_reverse``), their weights
    converted to Flax's layout (see :mod:`interop.flax_cells`). Weights such
    a cell cannot hold raise :class:`StateDictError` (``lost`` names them);
    a cell whose activations are not torch's raises ValueError.

    Keys also fit without being asked when (a) every key carries one wrapper
    prefix (``module.`` from DataParallel/DDP, ``model.`` from Lightning,
    ``_orig_mod.`` from ``torch.compile``) and removing it, and no other,
    makes them fit; (b) a one-layer unidirectional jaxrnn layer is loaded
    from an ``nn.LSTMCell``/``GRUCell``/``RNNCell``'s keys (``weight_ih``
    for ``weight_ih_l0``).

    Returns:
      linen: ``{'params': ...}`` with each array converted to the dtype the
      module declares (``param_dtype``). NNX: the module itself, its
      ``nnx.Param`` values replaced (each in its own dtype).

    Warns:
      NarrowingWarning: once, when weights are rounded to a narrower dtype
        (a float64 checkpoint into float32 parameters), naming the keys and
        the ``param_dtype=`` that keeps them.

    Raises:
      StateDictError: listing every missing, unexpected and misshapen key
        (misshapen with expected vs got shape, in torch's layout), with a
        hint when all expected keys sit under another prefix. Nothing is
        changed when it raises.
      ValueError: a ``tied`` pair whose two weights differ.
    """
    target = type(module).__name__
    state_dict = rename_keys(untie(state_dict, tied), rename)
    if isinstance(module, nnx.Module):
        if example_args or example_kwargs:
            raise TypeError(f"load_state_dict: {target} is an NNX module; it needs no example inputs.")
        variables = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
        expected = {path: v[...] for path, v in variables.items()}
        flat = _match_flax(target, expected, lambda: dict(nnx.iter_graph(module)), state_dict, prefix, strict)
        for path, value in flat.items():
            variables[path][...] = value
        return module
    if not example_args and not example_kwargs:
        if not isinstance(module, (_StackedRecurrent, _Cell)):
            raise TypeError(
                f"load_state_dict: pass example inputs for {target} (e.g. load_state_dict(model, sd, x)) "
                "so its parameter shapes can be traced; only lone jaxrnn layers and cells infer them."
            )
        example_args = _example_inputs(module, state_dict, prefix)
    expected, modules = _trace(module, example_args, example_kwargs)
    flat = _match_flax(target, expected, lambda: modules, state_dict, prefix, strict)
    return {"params": traverse_util.unflatten_dict(flat)}


def _match_flax(
    target: str,
    expected: Mapping[tuple, Any],
    modules: Callable[[], Mapping[tuple, Any]],
    state_dict: Mapping[str, Any],
    prefix: str,
    strict: bool,
) -> dict[tuple, Any]:
    """:func:`_match`, with Flax's own recurrent cells seen in torch's layout (:mod:`interop.flax_cells`);
    ``modules()`` (``{path: module}``, asked for only when there are such cells) lets it check that each cell
    computes what torch's layer does."""
    cells = flax_cells.find(expected)
    if not cells:
        return _match(target, expected, state_dict, prefix, strict)
    flax_cells.check_functions(cells, modules())

    def key_of(path: tuple) -> str:
        return torch_key(path, prefix)[0]

    try:
        flat = _match(target, flax_cells.torch_view(expected, cells), state_dict, prefix, strict)
    except StateDictError as error:
        hints = ([error.hint] if error.hint else []) + flax_cells.hints(cells, error.missing, error.unexpected, key_of)
        raise StateDictError(
            target, error.missing, error.unexpected, error.mismatched, " ".join(hints) or None
        ) from None
    dtypes = {path: value.dtype for path, value in expected.items()}
    flat, lost = flax_cells.from_torch(flat, cells, dtypes, key_of)
    if lost:
        raise StateDictError(target, [], [], [], lost=lost)
    return flat


def _match(
    target: str, expected: Mapping[tuple, Any], state_dict: Mapping[str, Any], prefix: str, strict: bool
) -> dict[tuple, Any]:
    """``{path: array}`` for every expected path (anything with ``.shape``/``.dtype``), from the state_dict.

    Raises :class:`StateDictError` naming every missing, unexpected and misshapen key.
    """
    keys = {path: torch_key(path, prefix) for path in expected}
    wanted = [key for key, _ in keys.values()]

    def source(key: str, sd: Mapping[str, Any]) -> str | None:
        if key in sd:
            return key
        alias = cell_alias(key, wanted)
        return alias if alias is not None and alias in sd else None

    state_dict, _ = strip_wrapper(state_dict, lambda sd: all(source(k, sd) is not None for k in wanted))
    flat: dict[tuple, Any] = {}
    missing, mismatched, used, narrowed = [], [], set(), []
    for path, abstract in expected.items():
        key, transposed = keys[path]
        want = tuple(reversed(abstract.shape)) if transposed else tuple(abstract.shape)
        found = source(key, state_dict)
        if found is None:
            missing.append(key)
            continue
        used.add(found)
        value = to_numpy(state_dict[found])
        if tuple(value.shape) != want:
            mismatched.append((found, want, tuple(value.shape)))
            continue
        if _narrower(abstract.dtype, value.dtype):
            narrowed.append((found, value.dtype, jnp.dtype(abstract.dtype)))
        flat[path] = jnp.asarray(value.T if transposed else value, dtype=abstract.dtype)
    # Keys outside the prefix belong to other parts of a bigger checkpoint: not unexpected.
    unexpected = [k for k in state_dict if k.startswith(prefix) and k not in used] if strict else []
    if missing or unexpected or mismatched:
        hint = None
        if missing:
            under = prefix_hint(wanted, state_dict)
            if under is not None:
                hint = f"every expected key is in the state_dict under {under!r}: pass prefix={under + prefix!r}."
        raise StateDictError(target, missing, unexpected, mismatched, hint)
    if narrowed:
        _warn_narrowing(target, narrowed)
    return flat


class NarrowingWarning(UserWarning):
    """Weights loaded into parameters of a narrower dtype (e.g. a float64 checkpoint into float32 parameters)."""


def _narrower(dtype: Any, than: Any) -> bool:
    """Whether floating ``dtype`` holds fewer bits than floating ``than`` (so ``than``'s values get rounded)."""
    dtype, than = jnp.dtype(dtype), jnp.dtype(than)
    floating = jnp.issubdtype(dtype, jnp.floating) and jnp.issubdtype(than, jnp.floating)
    return floating and jnp.finfo(dtype).bits < jnp.finfo(than).bits


def _warn_narrowing(target: str, narrowed: list[tuple[str, Any, Any]]) -> None:
    """One warning for a load that rounded weights: which keys, from what to what, and the ``param_dtype=`` that
    keeps them."""
    narrowed = sorted(narrowed, key=lambda item: item[0])  # the same message whatever order the module lists them
    keys = ", ".join(key for key, _, _ in narrowed[:8])
    keys += f" and {len(narrowed) - 8} more" if len(narrowed) > 8 else ""
    wider = max((jnp.dtype(d) for _, d, _ in narrowed), key=lambda d: jnp.finfo(d).bits)
    into = sorted({jnp.dtype(d).name for _, _, d in narrowed})
    keep = f"build {target} with param_dtype=jnp.{wider.name}"
    if wider.itemsize == 8 and not jax.config.jax_enable_x64:
        keep += " after jax.config.update('jax_enable_x64', True) (JAX's 64-bit mode is off)"
    warnings.warn(
        f"load_state_dict: {len(narrowed)} weights of the state_dict are {wider.name} but {target}'s parameters are "
        f"{' and '.join(into)}, so they were rounded: {keys}. To keep them, {keep}.",
        NarrowingWarning,
        stacklevel=4,
    )


def to_state_dict(
    variables: Mapping[str, Any] | nnx.Module,
    prefix: str = "",
    *,
    rename: Rename | None = None,
    tied: Mapping[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """Flax linen ``variables``, or an NNX module -> torch-style ``{key: numpy array}``.

    The inverse of :func:`load_state_dict`, Flax's own recurrent cells included
    (their weights in torch's layout; where a cell has one bias per gate,
    ``bias_ih`` gets it and ``bias_hh`` is zero). Feed it to
    ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in ...})``.
    ``rename`` maps jaxrnn's keys to the torch model's (e.g.
    ``{'embed.': 'encoder.'}``, or :func:`interop.keys.cell_keys` for a
    model that runs an ``nn.LSTMCell``); ``tied`` (``{alias: source}``, in
    the torch model's names, e.g. ``{'decoder.weight': 'encoder.weight'}``)
    writes a shared weight under both names, as torch's strict
    ``load_state_dict`` of a tied model wants it.
    """
    if isinstance(variables, nnx.Module):
        params = {path: v[...] for path, v in nnx.to_flat_state(nnx.state(variables, nnx.Param))}
    elif not isinstance(variables, Mapping) or "params" not in variables:
        raise KeyError(
            "to_state_dict: expected Flax variables with a 'params' collection or an NNX module, got "
            f"{list(variables) if isinstance(variables, Mapping) else type(variables).__name__}."
        )
    else:
        params = traverse_util.flatten_dict(dict(variables["params"]))
    cells = flax_cells.find(params)
    if cells and isinstance(variables, nnx.Module):  # linen variables carry no modules to check
        flax_cells.check_functions(cells, dict(nnx.iter_graph(variables)))
    params = flax_cells.to_torch(params, cells)
    return retie(rename_keys(_torch_arrays(params, prefix), rename), tied)


def _torch_arrays(params: Mapping[tuple, Any], prefix: str) -> dict[str, np.ndarray]:
    out = {}
    for path, value in params.items():
        key, transposed = torch_key(path, prefix)
        array = np.array(value)  # a writable copy, so torch.from_numpy takes it without complaint
        out[key] = np.ascontiguousarray(array.T) if transposed else array
    return out
