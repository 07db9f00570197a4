"""Training checkpoints: any pytree of arrays (params, optimizer state, keys, counters) to one file, atomically."""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import Any

import jax
from flax import serialization


def _keys_to_data(tree: Any) -> Any:
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x)
            if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            else x
        ),
        tree,
    )


def save_training_state(path: str | os.PathLike, tree: Any) -> None:
    """Writes ``tree`` (msgpack) to ``path`` via a temporary file and ``os.replace``.

    A kill during the write leaves the previous checkpoint intact: the file at
    ``path`` is always either the old one or the new one, never half of either.
    PRNG keys are stored as their key data.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = serialization.msgpack_serialize(serialization.to_state_dict(_keys_to_data(jax.device_get(tree))))
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def restore_training_state(path: str | os.PathLike, target: Any) -> Any:
    """Reads a checkpoint written by :func:`save_training_state` into the structure of ``target``.

    PRNG keys in ``target`` are rebuilt from the stored key data.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    restored = serialization.from_state_dict(_keys_to_data(target), serialization.msgpack_restore(path.read_bytes()))
    return jax.tree.map(
        lambda t, r: (
            jax.random.wrap_key_data(r)
            if isinstance(t, jax.Array) and jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key)
            else r
        ),
        target,
        restored,
    )
