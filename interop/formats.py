"""What kind of file a checkpoint is, from its bytes (the extension is only a hint), and what is wrong with it.

:func:`sniff` reads the first bytes and the zip directory, never the pickles,
and needs neither torch nor safetensors. It returns one of the
:data:`FORMATS` or raises :class:`interop.CheckpointError` naming the file and the
real cause: empty, truncated, a git-lfs pointer, an HTML page saved under a
checkpoint's name, or no known signature.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile

# torch.save's legacy (non-zip) format starts with a protocol-2 pickle of this magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
_ZIP_MAGIC = b"PK\x03\x04"
_LFS_POINTER = b"version https://git-lfs"

#: The formats :func:`sniff` tells apart, each with the words an error message uses for it.
FORMATS = {
    "torch": "torch.save archive (zip, the default since torch 1.6)",
    "torch-legacy": "torch.save file in the legacy (pre-1.6, non-zip) format",
    "torchscript": "TorchScript archive (torch.jit.save)",
    "torch-export": "torch.export archive (.pt2, torch.export.save)",
    "safetensors": "safetensors file",
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be read as named arrays; the message names the file and the cause."""


def sniff(path: str | os.PathLike) -> str:
    """The format of the checkpoint at ``path``: a key of :data:`FORMATS`.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: the file is empty, truncated or damaged, a git-lfs
        pointer, or not a torch/safetensors file at all.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it was not written completely, or not at all.")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(_LFS_POINTER):
        raise CheckpointError(
            f"{path}: this is a git-lfs pointer ({size} bytes of text), not the checkpoint itself; fetch the real "
            "file with `git lfs pull` (or download it from the model's page)."
        )
    if head.startswith(_ZIP_MAGIC):
        return _sniff_zip(path, size)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":
        return _check_safetensors(path, size)
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml")):
        raise CheckpointError(
            f"{path}: this is an HTML/XML page ({size} bytes), not a checkpoint; a download probably saved an "
            "error or login page. Download the file again."
        )
    if head.startswith(b"\x80") and len(head) > 1 and head[1] <= 5:
        raise CheckpointError(
            f"{path}: this is a plain Python pickle, not a torch.save file: it holds no torch tensors that can be "
            "read without running its code. Save it with torch.save (or as safetensors) instead."
        )
    raise CheckpointError(
        f"{path}: not a torch or safetensors checkpoint ({size} bytes, starting with {head[:8].hex(' ')}): "
        "no known signature (torch.save zip, legacy torch.save, TorchScript, torch.export .pt2, safetensors). "
        "The file may be damaged or of another kind."
    )


def _sniff_zip(path: str, size: int) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # zipfile trips over a damaged directory in many ways (BadZipFile, OSError, ValueError, ...)
        raise CheckpointError(
            f"{path}: a zip archive (as torch.save writes) that is truncated or damaged: its {size} bytes end "
            "without the zip directory. The file was probably not copied or downloaded completely."
        ) from None
    leaves = {name.split("/", 1)[-1] for name in names}
    if "constants.pkl" in leaves or any(name.split("/")[-2:-1] == ["code"] for name in names):
        return "torchscript"
    if any("serialized_exported_program" in name or name.endswith("archive_format") for name in names):
        return "torch-export"
    if "data.pkl" in leaves:
        return "torch"
    raise CheckpointError(
        f"{path}: a zip archive, but not one torch wrote (no data.pkl, constants.pkl or exported program among "
        f"its {len(names)} entries, e.g. {names[:3]})."
    )


def _check_safetensors(path: str, size: int) -> str:
    """Checks the header and that the file holds every byte the header promises."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        if 8 + header_size > size:
            raise CheckpointError(
                f"{path}: a truncated safetensors file: its header says {header_size} bytes of metadata, but the "
                f"file has only {size} bytes in all."
            )
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: a safetensors file whose header is damaged ({e}).") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: a safetensors file whose header is not a JSON object.")
    try:
        ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointError(f"{path}: a safetensors file whose header is damaged (no data_offsets).") from None
    needed = 8 + header_size + max(ends, default=0)
    if needed > size:
        raise CheckpointError(
            f"{path}: a truncated safetensors file: its header describes {len(ends)} tensor(s) ending at byte "
            f"{needed}, but the file has only {size} bytes."
        )
    return "safetensors"
