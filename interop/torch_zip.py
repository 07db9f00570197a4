"""torch's zip archives read record by record: every record checked against its CRC-32, every size before use.

``torch.load`` reads the zip archive ``torch.save`` writes (and TorchScript's)
through a C++ reader that never checks the CRC-32 stored with each record, so
a flipped bit in a tensor's bytes loads as a different number without a word.
:class:`TorchZipReader` offers the part of that reader's interface that
``torch.serialization._load`` uses, over Python's ``zipfile`` structures,
and on every read:

* checks the record's declared sizes before allocating: a stored record must
  lie inside the file, a tensor's record must hold exactly the bytes its
  storage needs, any other record at most :data:`MAX_METADATA_BYTES`;
* reads a stored record's bytes straight into the storage's memory (one copy),
  then computes their CRC-32 (``CRC32``: ISA-L's where installed, else
  zlib's) and compares it with the one in the zip directory; a deflated record (torch never writes them, a
  re-zipped archive has them) is inflated no further than its declared size.

A mismatch in ``data.pkl`` or another metadata record raises
:class:`~interop.formats.CheckpointError` at once. A mismatch in a tensor's
record is kept in ``TorchZipReader.damaged`` and reported after the
pickle is read, so the error can name the tensors stored there.

Files written with ``torch.utils.serialization.config.save.compute_crc32 =
False`` carry 0 as every record's CRC-32: they cannot be verified, and
``TorchZipReader.checksums`` says so.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from typing import Any, BinaryIO

from interop.formats import CheckpointError

try:  # ISA-L's CRC-32 (jaxrnn[interop] installs python-isal): 4 to 5 times zlib's speed on x86-64
    from isal.isal_zlib import crc32 as CRC32

    CRC32_IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover (isal missing): zlib's, several GB/s
    CRC32 = zlib.crc32
    CRC32_IMPLEMENTATION = "zlib"

# Records other than tensor data (data.pkl, byteorder, versions, TorchScript's code and constants) are small; a
# directory that declares more for one of them is lying (or describes a zip bomb).
#: 1 GiB, the largest record other than a tensor's that is read (data.pkl and the like).
MAX_METADATA_BYTES = 1 << 30
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then (after 22 bytes) name and extra-field lengths
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CHUNK = 1 << 24
_MAX_DEFLATE_RATIO = 1032  # deflate's largest possible expansion


class TorchZipReader:
    """The record-reading interface of torch's ``PyTorchFileReader``, with every record verified.

    Record names are relative to the archive's top folder (``data.pkl``,
    ``data/0``), as torch's reader gives them. ``file``: the archive's bytes
    when they are not a file of their own. ``verify=False`` skips only the
    CRC-32 comparison (sizes are still checked); it exists to measure what the
    comparison costs (``experiments/checkpoint_read_cost.py``).

    Attributes:
      path: the file.
      prefix: the archive's top folder with its slash, e.g. ``'archive/'``.
      checksums: ``'verified'`` (every record read so far matched its CRC-32),
        or ``'absent'`` when the file was written without them (all zero).
      damaged: ``{record: message}`` for tensor records whose bytes failed
        their CRC-32 (read anyway, to be reported with their tensors' names).
      storages: ``{record: data pointer}`` of every tensor storage read.
    """

    def __init__(self, path: str, file: BinaryIO | None = None, *, verify: bool = True):
        self.path, self._verify = path, verify
        self._owns_file = file is None
        self._file = open(path, "rb") if file is None else file  # noqa: SIM115 (closed by close())
        try:
            self._size = self._file.seek(0, os.SEEK_END)
            try:
                self._zip = zipfile.ZipFile(self._file)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, struct.error) as e:
                raise CheckpointError(
                    f"{path}: a damaged torch zip archive: its directory cannot be read ({e})."
                ) from None
            infos = self._zip.infolist()
            if not infos:
                raise CheckpointError(f"{path}: a zip archive with no records.")
            self.prefix = infos[0].filename.split("/", 1)[0] + "/"
            self._records = {
                info.filename[len(self.prefix) :]: info for info in infos if info.filename.startswith(self.prefix)
            }
        except BaseException:
            if self._owns_file:
                self._file.close()
            raise
        sized = [info for info in infos if info.file_size > 0]
        self.checksums = "absent" if sized and all(info.CRC == 0 for info in sized) else "verified"
        self.damaged: dict[str, str] = {}
        self.storages: dict[str, int] = {}

    def close(self) -> None:
        self._zip.close()
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> TorchZipReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- torch's PyTorchFileReader interface, as torch.serialization._load uses it -----------------------------
    def has_record(self, name: str) -> bool:
        return name in self._records

    def get_all_records(self) -> list[str]:
        return list(self._records)

    def serialization_id(self) -> str:
        name = ".data/serialization_id"
        return self.get_record(name).decode("ascii", "replace") if name in self._records else ""

    def get_record(self, name: str) -> bytes:
        """A metadata record's bytes (``data.pkl``, ``byteorder``, ...), verified."""
        info = self._info(name)
        if info.file_size > MAX_METADATA_BYTES:
            raise CheckpointError(
                f"{self.path}: record {info.filename} declares {info.file_size} bytes, more than any record but a "
                f"tensor's needs ({MAX_METADATA_BYTES}): the zip directory is damaged or built to exhaust memory."
            )
        return self.read(name)

    def read(self, name: str) -> bytes:
        """Any record's bytes, verified (a tensor file of a ``.pt2`` archive, say); no size limit beyond the
        file's own (and deflate's largest ratio for a compressed record)."""
        info = self._info(name)
        self._check_declared(info)
        buffer = bytearray(info.file_size)
        bad = self._read_into(info, memoryview(buffer))
        if bad is not None:
            raise CheckpointError(f"{self.path}: a damaged torch zip archive: {bad}")
        return bytes(buffer)

    def get_storage_from_record(self, name: str, nbytes: int, storage_class: Any = None) -> Any:
        """A tensor record's bytes as a uint8 torch tensor of ``nbytes``, read straight into its memory.

        The record must hold exactly ``nbytes`` (what the pickle says the
        storage needs); that is checked before anything is allocated.
        """
        import torch

        info = self._info(name)
        if not isinstance(nbytes, int) or nbytes < 0 or info.file_size != nbytes:
            raise CheckpointError(
                f"{self.path}: record {info.filename} holds {info.file_size} bytes, but the pickle declares a "
                f"storage of {nbytes} bytes there: the file is damaged."
            )
        self._check_declared(info)
        tensor = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            bad = self._read_into(info, memoryview(tensor.numpy()))
            if bad is not None:
                self.damaged[name] = bad
        self.storages[name] = tensor.untyped_storage().data_ptr()
        return tensor

    # -- reading ------------------------------------------------------------------------------------------------
    def _info(self, name: str) -> zipfile.ZipInfo:
        if not isinstance(name, str) or name not in self._records:
            raise CheckpointError(
                f"{self.path}: the archive has no record {self.prefix}{name}, which its pickle refers to: the file "
                "is damaged."
            )
        return self._records[name]

    def _check_declared(self, info: zipfile.ZipInfo) -> None:
        """Refuses, before anything is allocated, sizes no honest record has: a stored record larger than the
        file, a deflated one that would inflate past deflate's largest ratio, another compression method."""
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size:
                raise self._lie(info, f"stored (uncompressed), yet {info.compress_size} bytes in the file")
            if info.file_size > self._size:
                raise self._lie(info, f"{info.file_size} bytes declared in a file of {self._size}")
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.compress_size > self._size:
                raise self._lie(info, f"{info.compress_size} deflated bytes declared in a file of {self._size}")
            if info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
                raise self._lie(
                    info, f"{info.compress_size} deflated bytes cannot inflate to the {info.file_size} it declares"
                )
        else:
            raise CheckpointError(
                f"{self.path}: record {info.filename} is compressed with zip method {info.compress_type}; torch "
                "writes records uncompressed, and interop reads them stored or deflated only."
            )

    def _read_into(self, info: zipfile.ZipInfo, buffer: memoryview) -> str | None:
        """Fills ``buffer`` (``info.file_size`` bytes) with the record; returns a message if its CRC-32 fails."""
        if info.compress_type == zipfile.ZIP_STORED:  # the sizes were checked by the caller, before allocating
            self._read_stored(info, buffer)
        else:
            self._read_deflated(info, buffer)
        if not self._verify:
            return None
        crc = CRC32(buffer)
        if crc == info.CRC or (self.checksums == "absent" and info.CRC == 0):
            return None
        return (
            f"record {info.filename} fails its CRC-32 check (stored {info.CRC:08x}, its bytes give {crc:08x}): its "
            "bytes changed after torch wrote them (a bad copy or download)."
        )

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        """Where the record's bytes begin: after its local header, whose name must be the directory's."""
        if info.header_offset + _LOCAL_HEADER.size > self._size:
            raise self._lie(info, "its local header lies beyond the end of the file")
        self._file.seek(info.header_offset)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(self._file.read(_LOCAL_HEADER.size))
        name = self._file.read(name_length)
        if signature != _LOCAL_SIGNATURE or name != info.orig_filename.encode("utf-8", "replace"):
            raise self._lie(info, "its local header is not where the directory says, or names another record")
        return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length

    def _read_stored(self, info: zipfile.ZipInfo, buffer: memoryview) -> None:
        start = self._data_start(info)
        if start + info.file_size > self._size:
            raise CheckpointError(
                f"{self.path}: record {info.filename} runs past the end of the file ({start + info.file_size} > "
                f"{self._size} bytes): the file is truncated or its directory damaged."
            )
        self._file.seek(start)
        done = 0
        while done < len(buffer):
            n = self._file.readinto(buffer[done : done + _CHUNK])
            if not n:
                raise CheckpointError(f"{self.path}: record {info.filename} ends early: the file is truncated.")
            done += n

    def _read_deflated(self, info: zipfile.ZipInfo, buffer: memoryview) -> None:
        """Inflates a deflated record into ``buffer``, never past its declared ``file_size``."""
        start = self._data_start(info)
        if start + info.compress_size > self._size:
            raise CheckpointError(
                f"{self.path}: record {info.filename} runs past the end of the file: the file is truncated or its "
                "directory damaged."
            )
        self._file.seek(start)
        inflate, done, left, pending = zlib.decompressobj(-15), 0, info.compress_size, b""
        try:
            while not inflate.eof:
                if not pending:
                    if not left:
                        break
                    pending = self._file.read(min(_CHUNK, left))
                    if not pending:
                        break
                    left -= len(pending)
                out = inflate.decompress(pending, len(buffer) - done + 1)  # one byte more shows a lie
                pending = inflate.unconsumed_tail
                if done + len(out) > len(buffer):
                    raise self._lie(info, f"it inflates to more than the {len(buffer)} bytes declared")
                buffer[done : done + len(out)] = out
                done += len(out)
        except zlib.error as e:
            raise CheckpointError(f"{self.path}: record {info.filename} cannot be inflated ({e}).") from None
        if done != len(buffer) or not inflate.eof:
            raise CheckpointError(
                f"{self.path}: record {info.filename} inflates to {done} bytes, not the {len(buffer)} its directory "
                "declares: the file is damaged."
            )

    def _lie(self, info: zipfile.ZipInfo, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: the zip directory's entry for {info.filename} is wrong: {what}.")
