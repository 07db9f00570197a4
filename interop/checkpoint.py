"""Checkpoint files as named arrays, whatever torch container they come in, without running code from them.

:func:`interop.read_checkpoint` detects the format from the bytes (:func:`interop.formats.sniff`),
reads it, finds the model's tensors in it and reports what it left out:

======================  ==========================================================
format                  how it is read
======================  ==========================================================
torch.save (zip)        torch's restricted unpickler; unknown globals become inert
torch.save (legacy)     placeholders (``interop.inert_pickle``), so a pickled
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
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from interop import inert_pickle
from interop.arrays import to_numpy
from interop.formats import FORMATS, CheckpointError, sniff
from interop.torch_zip import TorchZipReader

#: The entries of a training dict that hold the model's state dict, in the order they are looked for:
#: pytorch/examples and most tutorials, Lightning ('state_dict'), and common hand-written layouts.
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
      checksums: what guards the bytes: ``'verified'`` (a torch zip file,
        TorchScript or ``.pt2``: every record read matched its CRC-32), or why
        nothing could be checked (:data:`interop.checkpoint.NO_CHECKSUMS`).
    """

    path: str
    format: str
    state_dict: dict[str, np.ndarray]
    entry: str = ""
    left_out: list[str] = dataclasses.field(default_factory=list)
    checksums: str = "verified"


#: Why a file's bytes could not be checked, by format (and for zip files torch wrote without CRC-32s).
NO_CHECKSUMS = {
    "torch-legacy": "none: the legacy (pre-1.6) torch format stores no checksum",
    "safetensors": "none: safetensors files store no checksum",
    "absent": "none: the file was written without CRC-32s (torch.utils.serialization.config.save.compute_crc32=False)",
}


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
        first of :data:`interop.checkpoint.STATE_DICT_ENTRIES` that is one.

    Returns:
      A :class:`Checkpoint`: the state dict, where it was found, and what was left out.

    Every record of a torch zip file (``torch.save``, TorchScript, ``.pt2``)
    is checked against its CRC-32 as it is read, and every declared size
    before memory is allocated for it (:mod:`interop.torch_zip`); legacy torch
    files and safetensors carry no checksum (``Checkpoint.checksums`` says so).

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: naming the file and the cause: empty, truncated or
        damaged (a record whose CRC-32 fails, with the tensors stored there;
        sizes that do not add up), a git-lfs pointer, not a checkpoint, no
        state dict inside (listing the entries there are), or a pickle that
        names ``os``/``sys``. Nothing else comes out of a damaged or hostile
        file.
    """
    path = os.fspath(path)
    fmt = None
    try:
        fmt = sniff(path)
        return _read(path, fmt, key)
    except (CheckpointError, FileNotFoundError):
        raise
    except MemoryError:
        raise CheckpointError(f"{path}: a damaged file: it declares more memory than this machine has.") from None
    except Exception as e:  # whatever else a damaged file trips in the readers: named, never raw
        kind = FORMATS.get(fmt, "checkpoint")
        cause = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(
            f"{path}: a damaged {kind}: reading it failed ({type(e).__name__}{': ' + cause if cause else ''})."
        ) from None


def _read(path: str, fmt: str, key: str | None) -> Checkpoint:
    if fmt == "safetensors":
        if key is not None:
            raise CheckpointError(
                f"{path}: key={key!r} selects an entry of a torch checkpoint; safetensors files are flat."
            )
        return Checkpoint(path, fmt, _read_safetensors(path), checksums=NO_CHECKSUMS["safetensors"])
    if fmt == "torch-export":
        if key is not None:
            raise CheckpointError(f"{path}: key={key!r} selects an entry of a torch checkpoint; .pt2 weights are flat.")
        state_dict, checksums = _read_exported_program(path)
        return Checkpoint(path, fmt, state_dict, checksums=checksums)
    obj, reader = _unpickle(path, fmt)
    left_out: list[str] = []
    obj = inert_pickle.resolve(obj, lambda where, o: left_out.append(f"{where}: {o.global_name}"))
    if reader is not None and reader.damaged:
        raise _damaged(path, fmt, reader, obj)
    entry, tensors = _select(obj, path, key)
    left_out = [item for item in left_out if not (entry and item.startswith(entry + "."))]
    checksums = NO_CHECKSUMS["torch-legacy"] if reader is None else _checksums(reader)
    state_dict = {name: to_numpy(value) for name, value in tensors.items()}
    return Checkpoint(path, fmt, state_dict, entry, left_out, checksums)


def _checksums(reader: TorchZipReader) -> str:
    """:attr:`Checkpoint.checksums` for a zip file: ``'verified'``, or why its records carry none."""
    return "verified" if reader.checksums == "verified" else NO_CHECKSUMS["absent"]


def _damaged(path: str, fmt: str, reader: TorchZipReader, obj: Any) -> CheckpointError:
    """The error for tensor records whose CRC-32 failed, naming the tensors stored in each."""
    record_of = {reader.storages[record]: record for record in reader.damaged}
    stored: dict[str, list[str]] = {record: [] for record in reader.damaged}
    for where, tensor in _tensors(obj):
        record = record_of.get(tensor.untyped_storage().data_ptr())
        if record is not None:
            stored[record].append(where)
    parts = []
    for record, message in reader.damaged.items():
        names = stored[record]
        holds = f" It holds {', '.join(names[:8])}{' and more' if len(names) > 8 else ''}." if names else ""
        parts.append(message + holds)
    return CheckpointError(f"{path}: a damaged {fmt} file: " + " ".join(parts))


def _tensors(obj: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """``(path, torch tensor)`` for every tensor in a loaded checkpoint: in dicts, lists, tuples and modules."""
    if hasattr(obj, "untyped_storage"):
        yield where or "(top level)", obj
    elif inert_pickle.is_module(obj):
        for name, value in inert_pickle.module_state_dict(obj).items():
            yield from _tensors(value, f"{where}.{name}" if where else name)
    elif isinstance(obj, Mapping):
        for name, value in obj.items():
            yield from _tensors(value, f"{where}.{name}" if where else str(name))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{where}.{i}" if where else str(i))


def _unpickle(path: str, fmt: str) -> tuple[Any, TorchZipReader | None]:
    try:
        if fmt == "torch-legacy":
            return inert_pickle.load_legacy(path), None
        return inert_pickle.load_zip_pickle(path)
    except pickle.UnpicklingError as e:
        cause = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        if "is blocked" in cause:
            raise CheckpointError(
                f"{path}: refused: its pickle calls into os/sys ({cause}), which no checkpoint needs: the file is "
                "built to run code when loaded. Do not torch.load it."
            ) from None
        raise CheckpointError(
            f"{path}: its pickle cannot be read without running code from it ({cause}); jaxrnn never does that."
        ) from None
    except ImportError as e:
        raise CheckpointError(f"{path}: cannot be read with this torch: {e}") from None
    except EOFError:
        raise CheckpointError(f"{path}: a damaged {fmt} file: its pickle ends early.") from None
    except (RuntimeError, OSError, zipfile.BadZipFile) as e:
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: a damaged {fmt} file ({cause}). It was probably not copied or downloaded completely."
        ) from None


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


def _read_exported_program(path: str) -> tuple[dict[str, np.ndarray], str]:
    """The parameters and persistent buffers of a ``torch.export.save`` archive, read from its weight files
    as its ``model_weights_config.json`` lays them out (the graph is never loaded), and what its checksums said."""
    import ml_dtypes

    out: dict[str, np.ndarray] = {}
    with TorchZipReader(path) as archive:
        records = archive.get_all_records()
        configs = [n for n in records if re.search(r"(^|/)data/weights/(\w+)_weights_config\.json$", n)]
        if not configs:
            raise CheckpointError(f"{path}: a torch.export archive without a weights config (no weights to read).")
        for config_name in configs:
            folder = config_name.rsplit("/", 1)[0]
            model = re.search(r"(\w+)_weights_config\.json$", config_name)[1]
            scope = "" if len(configs) == 1 else model + "."
            raw_config = archive.get_record(config_name)
            try:
                config = json.loads(raw_config)["config"]
                entries = [(name, entry, f"{folder}/{entry['path_name']}") for name, entry in config.items()]
            except (KeyError, TypeError, AttributeError, ValueError) as e:
                raise CheckpointError(
                    f"{path}: a torch.export archive whose {config_name} is damaged ({e!r})."
                ) from None
            for name, entry, record in entries:
                out[scope + name] = _pt2_tensor(path, name, archive.read(record), entry, ml_dtypes)
    return out, _checksums(archive)


def _pt2_tensor(path: str, name: str, raw: bytes, entry: Mapping[str, Any], ml_dtypes: Any) -> np.ndarray:
    """One weight of a ``.pt2`` archive from its record's bytes, its sizes and strides checked against them."""
    if entry.get("use_pickle"):  # a tensor torch.save'd on its own: read as any torch zip file is
        tensor, _ = inert_pickle.load_zip_pickle(f"{path}:{name}", file=io.BytesIO(raw))
        if not hasattr(tensor, "untyped_storage"):
            raise CheckpointError(f"{path}: weight {name!r} holds a {type(tensor).__name__}, not a tensor.")
        return to_numpy(tensor)
    meta = entry["tensor_meta"]
    dtype_name = _PT2_DTYPES.get(meta["dtype"])
    if dtype_name is None:
        raise CheckpointError(f"{path}: weight {name!r} has dtype code {meta['dtype']}, which jaxrnn does not read.")
    dtype = np.dtype(getattr(ml_dtypes, dtype_name)) if dtype_name == "bfloat16" else np.dtype(dtype_name)
    sizes = [int(s["as_int"]) for s in meta["sizes"]]
    strides = [int(s["as_int"]) for s in meta["strides"]]
    offset = int(meta["storage_offset"]["as_int"])
    elements = len(raw) // dtype.itemsize
    last = offset + sum((n - 1) * st for n, st in zip(sizes, strides)) if all(n > 0 for n in sizes) else offset - 1
    if len(sizes) != len(strides) or min([offset, *sizes, *strides], default=0) < 0 or last >= elements:
        raise CheckpointError(
            f"{path}: weight {name!r} declares sizes {sizes}, strides {strides} and offset {offset}, which do not fit "
            f"its {elements} stored elements: the archive is damaged."
        )
    storage = np.frombuffer(raw, dtype, count=elements)
    itemsize = dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=sizes, strides=[st * itemsize for st in strides], writeable=False
    )
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
