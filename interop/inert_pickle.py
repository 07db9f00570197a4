"""Reading the pickles inside torch files without running any code from them.

torch's own restricted unpickler (the one behind ``torch.load(weights_only=True)``)
reads the file; every global it does not allow by default (a model class, an
``argparse.Namespace``, a numpy scalar, ``builtins.exec`` in a crafted file) is
registered, for this one load, through ``torch.serialization.safe_globals`` as
an :class:`Unloaded` placeholder class carrying the global's name. Calling or
instantiating a placeholder records its arguments and nothing else: no
``__reduce__`` target runs, no class is imported from the file. Globals from
``os``/``sys`` are refused by torch itself, placeholder or not, so a file that
names them is refused whole.

Afterwards, placeholders that are pickled ``nn.Module``s (or TorchScript
objects) yield their ``state_dict`` (:func:`module_state_dict`), and numeric
numpy scalars and arrays are rebuilt from their bytes (:func:`materialize`);
everything else stays an inert :class:`Unloaded`, reported by class name.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from interop.formats import CheckpointError
from interop.torch_zip import TorchZipReader

_MODULE_FIELDS = frozenset({"_parameters", "_buffers", "_modules"})


class Unloaded:
    """An object from a checkpoint that was not built: its global's name and its pickled arguments and state.

    Attributes:
      global_name: the pickled global, e.g. ``'argparse.Namespace'`` or ``'__main__.RNNModel'``.
      args: the arguments the pickle passed to the global.
      state: what the pickle passed to ``__setstate__`` (for most objects, their ``__dict__``), or None.
      items: entries the pickle set on it (for dict subclasses such as ``collections.defaultdict``).
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Unloaded:
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def __repr__(self) -> str:
        return f"<{self.global_name}, not loaded>"


def placeholders(names: list[str]) -> list[tuple[type, str]]:
    """One :class:`Unloaded` subclass per global name, as ``(class, name)`` pairs for ``safe_globals``."""
    return [(type(name.rsplit(".", 1)[-1], (Unloaded,), {"global_name": name}), name) for name in sorted(names)]


def _pickle_module(unpickler_base: type) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.serialization._load``: torch's restricted unpickler, plus item
    assignment on placeholders (torch's allows it on dict, OrderedDict and Counter only)."""

    class Unpickler(unpickler_base):  # type: ignore[misc, valid-type]
        def _check_set_item_target(self, opcode: str) -> None:
            if not isinstance(self.stack[-1], Unloaded):
                super()._check_set_item_target(opcode)

    return types.SimpleNamespace(Unpickler=Unpickler)


# What this module uses of torch's loader (torch >= 2.6; checked, so another version fails with a clear message).
_HOOKS = {
    "torch.serialization": ("_load", "safe_globals"),
    "torch._weights_only_unpickler": (
        "Unpickler",
        "get_globals_in_pkl",
        "_get_allowed_globals",
        "_get_user_allowed_globals",
    ),
}


def _torch_loader() -> tuple[Any, Any]:
    """``(torch.serialization, torch._weights_only_unpickler)``, after checking they have the hooks used here."""
    import importlib

    import torch

    modules = [importlib.import_module(name) for name in _HOOKS]
    lacking = [f"{m.__name__}.{a}" for m, attrs in zip(modules, _HOOKS.values()) for a in attrs if not hasattr(m, a)]
    if lacking:
        raise ImportError(
            f"torch {torch.__version__} lacks {', '.join(lacking)}, which interop uses to read pickles without "
            "running them (torch >= 2.6 has them)."
        )
    return modules[0], modules[1]


def _unknown_globals(restricted: Any, names: set[str]) -> list[str]:
    allowed = set(restricted._get_allowed_globals()) | set(restricted._get_user_allowed_globals())
    return [n for n in names if n not in allowed]


def load_zip_pickle(
    path: str, pickle_file: str = "data.pkl", file: BinaryIO | None = None, *, verify: bool = True
) -> tuple[Any, TorchZipReader]:
    """The object pickled as ``pickle_file`` in the torch zip archive at ``path``, tensors on the CPU, and the
    (closed) :class:`~interop.torch_zip.TorchZipReader` that read it: every record it read was checked against
    its CRC-32, and its ``damaged`` names the tensor records that failed (read anyway, to be named). ``file``:
    the archive's bytes, when they are not a file of their own (``path`` then only names them in messages).
    ``verify=False`` skips the CRC-32 comparison (to measure its cost; sizes are still checked).

    Raises ``pickle.UnpicklingError`` (from torch) if the pickle uses what even
    placeholders cannot stand in for: a global from ``os``/``sys``, or an
    opcode torch's restricted unpickler does not implement; CheckpointError
    for a record that fails its CRC-32 or whose sizes do not add up.
    """
    serialization, restricted = _torch_loader()
    with TorchZipReader(path, file, verify=verify) as archive:
        names = restricted.get_globals_in_pkl(io.BytesIO(archive.get_record(pickle_file)))
        _check_torch_names(path, names)
        with serialization.safe_globals(placeholders(_unknown_globals(restricted, names))):
            obj = serialization._load(
                archive, "cpu", _pickle_module(restricted.Unpickler), pickle_file=pickle_file, encoding="utf-8"
            )
    return obj, archive


def _check_torch_names(path: str, names: set[str]) -> None:
    """Refuses a pickle that names something torch does not have (a damaged name, e.g. ``torch.FloatSporage``):
    each ``torch...`` global whose module is loaded must exist there. Nothing is imported."""
    for name in sorted(names):
        module, _, attr = name.rpartition(".")
        loaded = sys.modules.get(module)
        if module.split(".")[0] == "torch" and loaded is not None and not hasattr(loaded, attr):
            raise CheckpointError(f"{path}: a damaged torch file: its pickle names {name}, which torch does not have.")


def load_legacy(path: str) -> Any:
    """A legacy (non-zip) ``torch.save`` file, through ``torch.load(weights_only=True)`` with placeholders
    (torch's own unpickler: a dict subclass in it cannot take items, and is an error).

    The file's storages are measured first (:func:`check_legacy_sizes`), so a
    storage larger than the file is refused before torch allocates it.
    """
    import torch

    serialization, restricted = _torch_loader()
    names = check_legacy_sizes(path)
    with serialization.safe_globals(placeholders(_unknown_globals(restricted, names))):
        return torch.load(path, map_location="cpu", weights_only=True)


# Bytes per element of the storage classes a legacy file names.
_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
    "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 16, "ComplexFloatStorage": 8, "UntypedStorage": 1,
}  # fmt: skip


def check_legacy_sizes(path: str) -> set[str]:
    """Reads a legacy ``torch.save`` file's pickles without building anything and checks that every storage they
    declare fits in the file, and that the storages' bytes that follow the pickles are all there. Returns the
    globals the pickles name (``'module.name'``, as written: the placeholders :func:`load_legacy` registers).

    Raises:
      CheckpointError: a storage type that does not exist, a storage larger
        than the file, or a storage section that ends early.
    """
    size = os.path.getsize(path)
    storages: dict[Any, tuple[str, int]] = {}
    with open(path, "rb") as f:
        bounded = _Bounded(f, size)
        try:
            # A legacy file is several pickles in a row: magic number, protocol, sys info, the object, storage keys.
            header = [_DryUnpickler(bounded) for _ in range(3)]
            for unpickler in header:
                unpickler.load()
            main = _DryUnpickler(bounded)
            main.load()
            keys = _DryUnpickler(bounded).load()
        except CheckpointError:
            raise
        except Exception as e:  # a damaged pickle: whatever the unpickler trips on
            raise CheckpointError(f"{path}: a damaged legacy torch file: its pickles cannot be read ({e!r}).") from None
        for saved_id in main.saved_ids:
            if not (isinstance(saved_id, tuple) and len(saved_id) == 6 and saved_id[0] in ("storage", b"storage")):
                continue
            _, storage_type, key, _, numel, _ = saved_id
            kind = getattr(storage_type, "global_name", "?").rsplit(".", 1)[-1]
            if kind not in _ELEMENT_SIZES or not isinstance(numel, int) or numel < 0:
                raise CheckpointError(
                    f"{path}: a damaged legacy torch file: it declares a storage of type {kind!r} with {numel!r} "
                    "elements."
                )
            nbytes = numel * _ELEMENT_SIZES[kind]
            if nbytes > size:
                raise CheckpointError(
                    f"{path}: a damaged legacy torch file: storage {key!r} declares {nbytes} bytes, more than the "
                    f"whole file ({size} bytes); refused before allocating it."
                )
            storages[key] = (kind, nbytes)
        if not isinstance(keys, list) or any(k not in storages for k in keys):
            raise CheckpointError(
                f"{path}: a damaged legacy torch file: its list of storages does not match its pickle."
            )
        offset = bounded.tell()
        for key in keys:
            kind, nbytes = storages[key]
            f.seek(offset)
            count = f.read(8)
            end = offset + 8 + int.from_bytes(count, "little") * _ELEMENT_SIZES[kind]
            if len(count) < 8 or int.from_bytes(count, "little") * _ELEMENT_SIZES[kind] != nbytes or end > size:
                raise CheckpointError(
                    f"{path}: a damaged legacy torch file: storage {key!r} should hold {nbytes} bytes at byte "
                    f"{offset}, but the file {'ends first' if end > size or len(count) < 8 else 'says otherwise'}."
                )
            offset = end
    return set().union(*(unpickler.globals for unpickler in (*header, main)))


class _Bounded:
    """A file's reads, never asking for more than is left in it (a pickle that declares a huge string then
    fails for want of bytes instead of allocating them first)."""

    def __init__(self, f: Any, size: int):
        self._f, self._size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(self._size - self._f.tell(), 0)
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        return self._f.readline(limit)

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, *args: Any) -> int:
        return self._f.seek(*args)


class _Inert(Unloaded):
    """A placeholder that also takes list items (a pickle may append to any object it built)."""

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


class _DryUnpickler(pickle.Unpickler):
    """Python's unpickler with every global replaced by an inert placeholder and every persistent id recorded:
    it builds nothing from the file, so it can measure a pickle no one trusts."""

    def __init__(self, f: Any):
        super().__init__(f, encoding="utf-8", fix_imports=False)  # globals as written, as torch's unpickler sees them
        self.saved_ids: list[Any] = []
        self.globals: set[str] = set()

    def find_class(self, module: str, name: str) -> type:
        self.globals.add(f"{module}.{name}")
        return type(name, (_Inert,), {"global_name": f"{module}.{name}"})

    def persistent_load(self, saved_id: Any) -> Any:
        self.saved_ids.append(saved_id)
        if isinstance(saved_id, tuple) and len(saved_id) > 1 and saved_id[0] in ("module", b"module"):
            return saved_id[1]  # a pickled nn.Module's class, as torch's loader gives it back (a placeholder here)
        return saved_id


def is_module(obj: Any) -> bool:
    """Whether ``obj`` is a placeholder for a pickled ``nn.Module`` or a TorchScript object."""
    if not isinstance(obj, Unloaded) or not isinstance(obj.state, dict):
        return False
    return _MODULE_FIELDS <= obj.state.keys() or obj.global_name.startswith("__torch__.")


def module_state_dict(obj: Unloaded, prefix: str = "") -> dict[str, Any]:
    """The ``state_dict`` of a pickled module placeholder, with torch's keys and order.

    A pickled ``nn.Module`` keeps parameters, buffers and children in
    ``_parameters``/``_buffers``/``_modules`` (non-persistent buffers left out,
    as ``state_dict()`` does). A TorchScript object keeps them as plain
    attributes: tensors are its parameters and buffers, ``__torch__`` objects
    its children.
    """
    out: dict[str, Any] = {}
    state = obj.state
    if _MODULE_FIELDS <= state.keys():
        skip = state.get("_non_persistent_buffers_set") or set()
        for name, value in [*state["_parameters"].items(), *state["_buffers"].items()]:
            if value is not None and name not in skip:
                out[prefix + name] = value
        for name, child in state["_modules"].items():
            if is_module(child):
                out.update(module_state_dict(child, f"{prefix}{name}."))
        return out
    for name, value in state.items():
        if hasattr(value, "detach"):
            out[prefix + name] = value
        elif is_module(value):
            out.update(module_state_dict(value, f"{prefix}{name}."))
    return out


def _numpy_dtype(obj: Any) -> np.dtype | None:
    """A pickled ``numpy.dtype`` placeholder as a real dtype, for plain numeric and boolean dtypes only."""
    if not (isinstance(obj, Unloaded) and obj.global_name == "numpy.dtype" and obj.args):
        return None
    try:
        dtype = np.dtype(obj.args[0])
    except TypeError:
        return None
    if dtype.kind not in "biufc":
        return None
    order = obj.state[1] if isinstance(obj.state, tuple) and len(obj.state) > 1 else "|"
    return dtype.newbyteorder(order) if order in "<>" else dtype


def materialize(obj: Unloaded) -> Any:
    """A numeric numpy scalar or array rebuilt from its pickled bytes (no numpy code from the file runs);
    anything else is returned unchanged."""
    name = obj.global_name
    if name.endswith("multiarray.scalar") and len(obj.args) == 2 and isinstance(obj.args[1], bytes):
        dtype = _numpy_dtype(obj.args[0])
        if dtype is not None and len(obj.args[1]) == dtype.itemsize:
            return np.frombuffer(obj.args[1], dtype)[0]
    if name.endswith("multiarray._reconstruct") and isinstance(obj.state, tuple) and len(obj.state) == 5:
        _, shape, dtype, fortran, raw = obj.state
        dtype = _numpy_dtype(dtype)
        if dtype is not None and isinstance(raw, bytes) and len(raw) == dtype.itemsize * int(np.prod(shape)):
            return (
                np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").astype(dtype.newbyteorder("="))
            )
    return obj


def resolve(obj: Any, on_unloaded: Callable[[str, Unloaded], None], path: str = "") -> Any:
    """``obj`` with numeric numpy placeholders rebuilt, walking dicts, lists and tuples; calls
    ``on_unloaded(path, placeholder)`` for every placeholder left (modules excepted, which are kept whole)."""
    if isinstance(obj, Unloaded):
        built = materialize(obj)
        if built is obj and not is_module(obj):
            on_unloaded(path or "(top level)", obj)
        return built
    if isinstance(obj, Mapping):
        resolved = {k: resolve(v, on_unloaded, _join(path, k)) for k, v in obj.items()}
        return type(obj)(resolved) if type(obj) is not dict and isinstance(obj, dict) else resolved
    if isinstance(obj, (list, tuple)):
        return type(obj)(resolve(v, on_unloaded, _join(path, i)) for i, v in enumerate(obj))
    return obj


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
