"""Checkpoint files as named arrays, whatever torch container they come in, without running code from them.

:func:`read_checkpoint` detects the format from the bytes (:func:`interop.formats.sniff`),
reads it, finds the model's tensors in it and reports what it left out:

======================  ==========================================================
format                  how it is read
======================  ==========================================================
torch.save (zip)        torch's restricted unpickler; unknown globals become inert
torch.save (legacy)     placeholders (:mod:`interop.inert_pickle`), so a pickled
Lightning ``.ckpt``     ``nn.Module``, an ``argparse.Namespace`` or a vocabulary
                        object next to the weights costs nothing and runs nothing
TorchScript             its ``data.pkl``, the same way (its code is never loaded)
torch.export ``.pt2``   the weight files the archive lists (no graph is loaded)
safetensors             ``safetensors.numpy`` (no torch needed)
======================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from interop import inert_pickle
from interop.arrays import to_numpy
from interop.formats import CheckpointError, sniff

# Entries of a training-checkpoint dict that hold the model, in the order they are tried:
# pytorch/examples and most tutorials, Lightning ('state_dict'), and common hand-written layouts.
STATE_DICT_ENTRIES = ("state_dict", "model_state_dict", "model", "net", "network", "module", "model_state")


@dataclasses.dataclass
class Checkpoint:
    """What :func:`read_checkpoint` found in a file.

    Attributes:
      path: the file.
      format: a key of :data:`interop.formats.FORMATS` (``'torch'``, ``'safetensors'``, ...).
      state_dict: ``{key: numpy array}`` in torch's key order.
      entry: where in the file the state dict was: ``''`` for the whole file,
        else the entry's path, e.g. ``'state_dict'`` or ``'model'`` (a pickled
        ``nn.Module``'s weights come from its parameters and persistent buffers).
      left_out: ``'path: class'`` for every object in the file that was not
        loaded (kept as an inert placeholder), e.g. ``'args: argparse.Namespace'``.
    """

    path: str
    format: str
    state_dict: dict[str, np.ndarray]
    entry: str = ""
    left_out: list[str] = dataclasses.field(default_factory=list)


def load_checkpoint(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
    """A checkpoint's model tensors as ``{name: numpy array}``: :func:`read_checkpoint`'s ``state_dict``."""
    return read_checkpoint(path, key).state_dict


def read_checkpoint(path: str | os.PathLike, key: str | None = None) -> Checkpoint:
    """Reads the model's tensors from a torch or safetensors file, never running code from it.

    Args:
      path: a ``torch.save`` file (``.pt``/``.pth``/``.bin``/``.ckpt``, zip or
        legacy format), a TorchScript archive, a ``torch.export`` ``.pt2``, or
        a ``.safetensors`` file. The format is read from the bytes; the
        extension does not matter.
      key: the entry that holds the model, as a dotted path through nested
        dicts (``'model'``, ``'checkpoint.weights'``). By default: the whole
        file if it is a dict of tensors or a pickled ``nn.Module``, else the
        first of :data:`STATE_DICT_ENTRIES` that is one.

    Returns:
      A :class:`Checkpoint`: the state dict, where it was found, and what was left out.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: naming the file and the cause: empty, truncated or
        damaged, a git-lfs pointer, not a checkpoint, no state dict inside
        (listing the entries there are), or a pickle that names ``os``/``sys``.
    """
    path = os.fspath(path)
    fmt = sniff(path)
    if fmt == "safetensors":
        if key is not None:
            raise CheckpointError(
                f"{path}: key={key!r} selects an entry of a torch checkpoint; safetensors files are flat."
            )
        return Checkpoint(path, fmt, _read_safetensors(path))
    if fmt == "torch-export":
        if key is not None:
            raise CheckpointError(f"{path}: key={key!r} selects an entry of a torch checkpoint; .pt2 weights are flat.")
        return Checkpoint(path, fmt, _read_exported_program(path))
    obj = _unpickle(path, fmt)
    left_out: list[str] = []
    obj = inert_pickle.resolve(obj, lambda where, o: left_out.append(f"{where}: {o.global_name}"))
    entry, tensors = _select(obj, path, key)
    left_out = [item for item in left_out if not (entry and item.startswith(entry + "."))]
    return Checkpoint(path, fmt, {name: to_numpy(value) for name, value in tensors.items()}, entry, left_out)


def _unpickle(path: str, fmt: str) -> Any:
    try:
        if fmt == "torch-legacy":
            return inert_pickle.load_legacy(path)
        return inert_pickle.load_zip_pickle(path)
    except pickle.UnpicklingError as e:
        cause = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "is blocked" in cause:
            raise CheckpointError(
                f"{path}: refused: its pickle calls into os/sys ({cause}), which no checkpoint needs: the file is "
                "built to run code when loaded. Do not torch.load it."
            ) from None
        _raise_if_corrupt(path, fmt)
        raise CheckpointError(
            f"{path}: its pickle cannot be read without running code from it ({cause}); jaxrnn never does that."
        ) from None
    except ImportError as e:
        raise CheckpointError(f"{path}: cannot be read with this torch: {e}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        _raise_if_corrupt(path, fmt)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: a damaged {fmt} file ({cause}). It was probably not copied or downloaded completely."
        ) from None


def _raise_if_corrupt(path: str, fmt: str) -> None:
    """Raises a CheckpointError naming the first zip record whose bytes fail their CRC check, if any."""
    if fmt == "torch-legacy":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        bad = f"(the archive itself: {e})"
    if bad is not None:
        raise CheckpointError(
            f"{path}: a damaged {fmt} file: record {bad} fails its CRC check, so its bytes changed after torch wrote "
            "them (a bad copy or download)."
        )


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # safetensors raises its own SafetensorError, a plain Exception
        raise CheckpointError(f"{path}: a damaged safetensors file ({e}).") from None


# torch._export.serde.schema.ScalarType -> numpy dtype name, for the weight files of a .pt2 archive.
_PT2_DTYPES = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    34: "uint32",
    35: "uint64",
}


def _read_exported_program(path: str) -> dict[str, np.ndarray]:
    """The parameters and persistent buffers of a ``torch.export.save`` archive, read from its weight files
    as its ``model_weights_config.json`` lays them out (the graph is never loaded)."""
    import ml_dtypes

    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            configs = [n for n in archive.namelist() if re.search(r"data/weights/(\w+)_weights_config\.json$", n)]
            if not configs:
                raise CheckpointError(f"{path}: a torch.export archive without a weights config (no weights to read).")
            for config_name in configs:
                folder = config_name.rsplit("/", 1)[0]
                model = re.search(r"(\w+)_weights_config\.json$", config_name)[1]
                scope = "" if len(configs) == 1 else model + "."
                for name, entry in json.loads(archive.read(config_name))["config"].items():
                    raw = archive.read(f"{folder}/{entry['path_name']}")
                    out[scope + name] = _pt2_tensor(path, name, raw, entry, ml_dtypes)
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: a damaged torch.export archive ({type(e).__name__}: {e}).") from None
    return out


def _pt2_tensor(path: str, name: str, raw: bytes, entry: Mapping[str, Any], ml_dtypes: Any) -> np.ndarray:
    if entry.get("use_pickle"):  # a tensor torch.save'd on its own: weights only, nothing else allowed
        import torch

        return to_numpy(torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True))
    meta = entry["tensor_meta"]
    dtype_name = _PT2_DTYPES.get(meta["dtype"])
    if dtype_name is None:
        raise CheckpointError(f"{path}: weight {name!r} has dtype code {meta['dtype']}, which jaxrnn does not read.")
    dtype = np.dtype(getattr(ml_dtypes, dtype_name)) if dtype_name == "bfloat16" else np.dtype(dtype_name)
    sizes = [int(s["as_int"]) for s in meta["sizes"]]
    strides = [int(s["as_int"]) * dtype.itemsize for s in meta["strides"]]
    offset = int(meta["storage_offset"]["as_int"])
    storage = np.frombuffer(raw, dtype)
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=sizes, strides=strides, writeable=False)
    return np.array(view)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and (hasattr(v, "detach") or isinstance(v, np.ndarray)) for k, v in obj.items())
    )


def _as_state_dict(obj: Any) -> dict[str, Any] | None:
    if _is_tensor_dict(obj):
        return dict(obj)
    if inert_pickle.is_module(obj):
        return inert_pickle.module_state_dict(obj) or None
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, inert_pickle.Unloaded):
        return obj.global_name
    if isinstance(obj, Mapping):
        return f"dict of {len(obj)}"
    return type(obj).__name__


def _select(obj: Any, path: str, key: str | None) -> tuple[str, dict[str, Any]]:
    if key is not None:
        value = obj
        for i, part in enumerate(key.split(".")):
            if not isinstance(value, Mapping) or part not in value:
                where = ".".join(key.split(".")[:i]) or "the top level"
                entries = list(value) if isinstance(value, Mapping) else _describe(value)
                raise CheckpointError(
                    f"{path}: has no entry {key!r} ({part!r} is not in {where}, which holds {entries})."
                )
            value = value[part]
        state_dict = _as_state_dict(value)
        if state_dict is None:
            raise CheckpointError(f"{path}: entry {key!r} is a {_describe(value)}, not a state dict or a module.")
        return key, state_dict
    state_dict = _as_state_dict(obj)
    if state_dict is not None:
        return "", state_dict
    if isinstance(obj, Mapping):
        for entry in STATE_DICT_ENTRIES:
            state_dict = _as_state_dict(obj.get(entry))
            if state_dict is not None:
                return entry, state_dict
        entries = ", ".join(f"{k!r} ({_describe(v)})" for k, v in obj.items())
        raise CheckpointError(
            f"{path}: holds no state dict: none of its entries is a dict of tensors or a module. Its entries: "
            f"{entries}. Pass key=... to choose one."
        )
    raise CheckpointError(f"{path}: holds a {_describe(obj)}, not a state dict (a dict of tensors) or a module.")
