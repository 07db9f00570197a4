"""Convert any torch checkpoint jaxrnn reads into plain named arrays: ``python -m interop.convert IN OUT``.

``IN`` is anything :func:`interop.read_checkpoint` reads (a ``torch.save``
file holding a state dict, a training-checkpoint dict or a whole pickled
model, a Lightning ``.ckpt``, TorchScript, ``torch.export`` ``.pt2``,
safetensors); nothing in it is executed. ``OUT`` is written by its
extension: ``.safetensors`` (readable by torch, JAX and numpy without
pickles) or ``.msgpack`` (``flax.serialization.msgpack_restore`` gives the
``{key: array}`` dict back). The command lists every key with its shape and
dtype, and the objects of the file it left out. Exit status: 0 written,
2 the input cannot be read or the output cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

import numpy as np

from interop.checkpoint import read_checkpoint
from interop.formats import FORMATS, CheckpointError
from interop.keys import rename_keys

OUTPUTS = (".safetensors", ".msgpack")


def write_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes ``{key: array}`` as ``.safetensors`` or ``.msgpack``, by ``path``'s extension."""
    ext = os.path.splitext(path)[1].lower()
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}  # own memory: shared (tied) arrays are copied
    if ext == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, path)
    elif ext == ".msgpack":
        from flax import serialization

        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(arrays))
    else:
        raise CheckpointError(f"{path}: unknown output extension {ext!r}; expected one of {', '.join(OUTPUTS)}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="torch checkpoint (any container jaxrnn reads) or .safetensors")
    parser.add_argument("output", help="output file: .safetensors or .msgpack")
    parser.add_argument("--key", help="entry of a training-checkpoint dict that holds the model (dotted path)")
    parser.add_argument("--strip-prefix", default="", help="remove this prefix from every key, e.g. 'model.'")
    args = parser.parse_args(argv)
    try:
        checkpoint = read_checkpoint(args.input, key=args.key)
        prefix = args.strip_prefix
        arrays = rename_keys(
            checkpoint.state_dict, lambda k: k[len(prefix) :] if prefix and k.startswith(prefix) else k
        )
        write_arrays(args.output, arrays)
    except (FileNotFoundError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = f", entry {checkpoint.entry!r}" if checkpoint.entry else ""
    print(f"{args.input}: {FORMATS[checkpoint.format]}{where}; checksums: {checkpoint.checksums}")
    width = max(len(k) for k in arrays) if arrays else 0
    for key, value in arrays.items():
        print(f"  {key:<{width}}  {str(tuple(value.shape)):<14} {value.dtype}")
    for item in checkpoint.left_out:
        print(f"  left out (not loaded, never run): {item}")
    print(f"wrote {len(arrays)} arrays to {args.output} ({os.path.getsize(args.output):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
