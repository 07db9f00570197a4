"""Reading torch checkpoints safely: ``.pt``/``.pth``/``.bin`` (weights only) and ``.safetensors``."""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from interop.state_dict import to_numpy

_NESTED_KEYS = ("state_dict", "model_state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as a dict of named arrays."""


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(hasattr(v, "detach") for v in obj.values())


def _select_state_dict(obj: Any, path: str, key: str | None) -> Mapping[str, Any]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            keys = list(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: has no entry {key!r}; top-level entries: {keys}.")
        obj = obj[key]
        if not _is_tensor_dict(obj):
            raise CheckpointError(f"{path}: entry {key!r} is not a dict of tensors.")
        return obj
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for nested in _NESTED_KEYS:
            if _is_tensor_dict(obj.get(nested)):
                return obj[nested]
        raise CheckpointError(
            f"{path}: holds no state_dict; top-level entries are {list(obj)}. "
            f"Pass key=... to choose the entry that holds the model's tensors."
        )
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors).")


def load_checkpoint(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """Reads a checkpoint's tensors as ``{name: numpy array}``.

    * ``.pt``, ``.pth``, ``.bin``: ``torch.load(weights_only=True)``. A file that
      needs arbitrary unpickling (a pickled ``nn.Module`` or custom object) is
      refused with :class:`CheckpointError`, never executed. A plain state_dict
      is returned as is; from a training checkpoint dict the entry
      ``state_dict``, ``model_state_dict`` or ``model`` is taken, or ``key``.
    * ``.safetensors``: read with ``safetensors.numpy`` (torch not needed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(path)
        if key is not None:
            raise CheckpointError(f"{path}: key= selects an entry of a torch checkpoint; safetensors files are flat.")
        return dict(tensors)
    if ext not in (".pt", ".pth", ".bin"):
        raise CheckpointError(
            f"{path}: unknown checkpoint extension {ext!r}; expected .pt, .pth, .bin or .safetensors."
        )

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it needs {found[1]})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: it contains pickled Python objects{what}, and jaxrnn only reads weights "
            f"(torch.load with weights_only=True). Save the weights instead: torch.save(model.state_dict(), path)."
        ) from None
    return {name: to_numpy(value) for name, value in _select_state_dict(obj, path, key).items()}
