"""State-dict key mapping that users should not have to write by hand.

* :func:`rename_keys`: a ``rename=`` option, as a mapping (exact keys, or
  module paths ending in ``'.'``) or a function; ``None`` drops a key.
* :func:`untie` / :func:`retie`: weights a torch model shares between two
  attributes (``decoder.weight = encoder.weight``) are one array in jaxrnn.
* :func:`strip_wrapper` removes the ``module.`` (DataParallel/DDP),
  ``model.`` (Lightning) and ``_orig_mod.`` (``torch.compile``) prefixes when
  that, and only that, makes the keys fit; :func:`prefix_hint` names the
  prefix that would fit otherwise.
* :func:`cell_alias` / :func:`cell_keys`: the keys of an ``nn.LSTMCell``
  (``weight_ih``) and of a one-layer ``nn.LSTM`` (``weight_ih_l0``) are the
  same weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from interop.arrays import to_numpy

Rename = Mapping[str, "str | None"] | Callable[[str], "str | None"]

# Prefixes that wrappers add in front of a model's own keys.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LAYER_KEY = re.compile(r"^(.*?)(weight_ih|weight_hh|bias_ih|bias_hh)_l0$")


def rename_keys(state_dict: Mapping[str, Any], rename: Rename | None) -> dict[str, Any]:
    """``state_dict`` with its keys renamed, in the same order.

    ``rename`` is a function ``key -> new key or None`` (None drops the key),
    or a mapping whose keys are exact keys (``'decoder.bias': 'fc_bias'``) or
    module paths ending in ``'.'`` (``'encoder.': 'embed.'`` renames every key
    under ``encoder.``); an exact key wins over a path, a longer path over a
    shorter one. Two keys renamed to the same name are an error.
    """
    if rename is None:
        return dict(state_dict)
    if not (callable(rename) or isinstance(rename, Mapping)):
        raise TypeError(f"rename: expected a mapping or a function, got {type(rename).__name__}.")
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new = rename(key) if callable(rename) else _renamed(key, rename)
        if new is None:
            continue
        if new in out:
            raise ValueError(f"rename: two keys become {new!r} (the second is {key!r}).")
        out[new] = value
    return out


def _renamed(key: str, rename: Mapping[str, str | None]) -> str | None:
    if key in rename:
        return rename[key]
    paths = [p for p in rename if p.endswith(".") and key.startswith(p)]
    if not paths:
        return key
    path = max(paths, key=len)
    return None if rename[path] is None else rename[path] + key[len(path) :]


def untie(state_dict: Mapping[str, Any], tied: Mapping[str, str] | None) -> dict[str, Any]:
    """One key per shared weight: for each ``alias: source`` pair of ``tied`` (keys as the file names them),
    the alias is dropped when it equals the source, and becomes the source when the file kept only the alias
    (``safetensors.torch.save_model`` keeps one name of a shared tensor).

    Raises:
      ValueError: alias and source are both present and differ (the file's model is not tied).
    """
    out = dict(state_dict)
    for alias, source in (tied or {}).items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if source not in out:
            out[source] = value
            continue
        a, b = to_numpy(value), to_numpy(out[source])
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
            how = f"shapes {a.shape} vs {b.shape}" if a.shape != b.shape else "values"
            raise ValueError(
                f"tied: {alias!r} and {source!r} differ ({how}), so the file's model does not share them; "
                "load it without tied= (into an untied model)."
            )
    return out


def retie(state_dict: Mapping[str, Any], tied: Mapping[str, str] | None) -> dict[str, Any]:
    """Each ``alias: source`` pair of ``tied`` written out under both names, as torch's ``state_dict()`` of a
    tied model has it (the alias placed where the source is)."""
    out = dict(state_dict)
    for alias, source in (tied or {}).items():
        if source not in out:
            raise KeyError(f"tied: {source!r} (the weight {alias!r} shares) is not among the keys {list(out)}.")
        out[alias] = out[source]
    return out


def strip_wrapper(
    state_dict: Mapping[str, Any], fits: Callable[[Mapping[str, Any]], bool]
) -> tuple[dict[str, Any], str]:
    """``(state_dict, '')`` if ``fits(state_dict)``; else, if removing one wrapper prefix (or a chain of two,
    e.g. ``module.model.``) from the keys that have it makes it fit, and exactly one such prefix does,
    ``(stripped state_dict, prefix)``; else ``(state_dict, '')`` unchanged."""
    if fits(state_dict):
        return dict(state_dict), ""
    found = []
    for chain in _chains():
        stripped = {(k[len(chain) :] if k.startswith(chain) else k): v for k, v in state_dict.items()}
        if len(stripped) == len(state_dict) and fits(stripped):
            found.append((stripped, chain))
    return found[0] if len(found) == 1 else (dict(state_dict), "")


def _chains() -> list[str]:
    singles = list(WRAPPER_PREFIXES)
    return singles + [a + b for a in singles for b in singles if a != b]


def prefix_hint(expected: Collection[str], state_dict: Mapping[str, Any]) -> str | None:
    """A prefix ``p`` such that ``p + key`` is in ``state_dict`` for every expected key, if there is one."""
    expected = list(expected)
    if not expected:
        return None
    first = expected[0]
    for key in state_dict:
        if key.endswith(first) and key != first:
            p = key[: -len(first)]
            if all(p + k in state_dict for k in expected):
                return p
    return None


def cell_alias(key: str, expected: Collection[str]) -> str | None:
    """The ``nn.LSTMCell``/``GRUCell``/``RNNCell`` key that holds ``key`` of a one-layer unidirectional layer
    (``rnn.weight_ih_l0`` -> ``rnn.weight_ih``), or None when ``key`` is not such a layer's."""
    found = _LAYER_KEY.match(key)
    if found is None:
        return None
    base = found[1]
    layer = {k[len(base) :] for k in expected if k.startswith(base) and "." not in k[len(base) :]}
    if not layer <= {name + "_l0" for name in _CELL_NAMES}:
        return None  # more than one layer, bidirectional, or a projection: not a cell's layout
    return base + found[2]


def cell_keys(layer_prefix: str, cell_prefix: str | None = None) -> dict[str, str]:
    """The ``rename=`` mapping from a one-layer jaxrnn layer's keys to an ``nn.*Cell``'s, e.g. for
    ``to_state_dict(variables, rename=cell_keys('rnn.', 'cell.'))`` to load into a torch model that runs an
    ``nn.LSTMCell`` named ``cell`` in a loop. (Loading such a file needs no mapping: see
    :func:`interop.keys.cell_alias`.)"""
    cell_prefix = layer_prefix if cell_prefix is None else cell_prefix
    return {f"{layer_prefix}{name}_l0": f"{cell_prefix}{name}" for name in _CELL_NAMES}
