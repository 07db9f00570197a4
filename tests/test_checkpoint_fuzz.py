"""Damaged and hostile checkpoints: the readers load the saved tensors exactly or raise CheckpointError, nothing else.

Every file kind interop reads (torch zip with and without training metadata, legacy torch, TorchScript, torch.export
.pt2, safetensors) is mutated by a seeded mutator, as copies, downloads and attackers damage files:

* ``damaged``: bit flips, truncation, inserted, zeroed and copied spans, a zip directory that lies about a record's
  sizes, offset or checksum, a record that declares a zip bomb's size. In a file with checksums (the zip formats)
  such a case must load the exact saved tensors or raise CheckpointError.
* ``hostile``: the pickle (or safetensors header) itself rewritten with valid checksums: opcodes deleted, doubled or
  changed (wrong argument counts), a storage type that does not exist, a truncated pickle, enormous sizes. It may
  load something, but only CheckpointError may come out.
* ``valid``: the same records in another order, or deflate-compressed (torch never compresses, ``zip`` does): these
  must load exactly.

No case may raise anything else, take more than a few seconds, or leave a file behind. And every single-bit flip of
a small torch zip file leaves the tensors as saved or raises CheckpointError.
"""

import collections
import io
import os
import pickletools
import random
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch
from helpers import THOROUGH

import interop
from interop.formats import CheckpointError
from interop.torch_zip import TorchZipReader

CASES_PER_FORMAT = 2000 if THOROUGH else 150
SECONDS_PER_CASE = 5.0


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 3)
        self.rnn = torch.nn.LSTM(3, 4, batch_first=True)
        self.fc = torch.nn.Linear(4, 7)

    def forward(self, ids):
        return self.fc(self.rnn(self.embed(ids))[0])


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, tuple[bytes, dict, bool]]:
    """``{format: (file bytes, the state dict read_checkpoint gives, whether the file has checksums)}``."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    model = Small().eval()
    sd = model.state_dict()
    torch.save(sd, folder / "torch.pt")
    torch.save({"model": sd, "epoch": 3, "args": {"lr": 0.1, "layers": [1, 2]}}, folder / "training.pt")
    torch.save(sd, folder / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.jit.script(model).save(folder / "torchscript.pt")
    torch.export.save(torch.export.export(model, (torch.zeros(1, 2, dtype=torch.long),)), folder / "export.pt2")
    save_file({k: v.numpy() for k, v in sd.items()}, str(folder / "weights.safetensors"))
    out = {}
    for path in sorted(folder.iterdir()):
        checkpoint = interop.read_checkpoint(path)
        out[path.name] = (path.read_bytes(), checkpoint.state_dict, checkpoint.checksums == "verified")
    return out


# -- byte-level damage ----------------------------------------------------------------------------------------------
def flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def insert_span(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]


def zero_span(rng: random.Random, data: bytes) -> bytes:
    at, n = rng.randrange(len(data)), rng.randint(1, 256)
    return data[:at] + bytes(min(n, len(data) - at)) + data[at + n :]


def copy_span(rng: random.Random, data: bytes) -> bytes:
    n = rng.randint(4, 128)
    src, dst = rng.randrange(len(data) - n), rng.randrange(len(data) - n)
    return data[:dst] + data[src : src + n] + data[dst + n :]


# -- zip-level changes -----------------------------------------------------------------------------------------------
def records(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def rezip(items: list[tuple[zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for info, raw in items:
            archive.writestr(info.filename, raw)
    return buffer.getvalue()


def reorder(rng: random.Random, data: bytes) -> bytes:
    items = records(data)
    first, rest = items[:1], items[1:]  # torch's reader takes the archive's folder from the first record
    rng.shuffle(rest)
    return rezip(first + rest)


def deflate(rng: random.Random, data: bytes) -> bytes:
    return rezip(records(data), zipfile.ZIP_DEFLATED)


def lying_directory(rng: random.Random, data: bytes) -> bytes:
    """One central-directory entry's CRC-32, sizes or local-header offset replaced by another number."""
    out = bytearray(data)
    start = struct.unpack_from("<I", data, data.rindex(b"PK\x05\x06") + 16)[0]
    entries, at = [], start
    while data[at : at + 4] == b"PK\x01\x02":
        entries.append(at)
        n, m, k = struct.unpack_from("<HHH", data, at + 28)
        at += 46 + n + m + k
    entry = rng.choice(entries)
    field = rng.choice([16, 20, 24, 42])  # CRC-32, compressed size, uncompressed size, local header offset
    old = struct.unpack_from("<I", data, entry + field)[0]
    new = rng.choice([0, 1, old + 1, max(old - 1, 0), old * 2 + 64, 2**32 - 1, rng.randrange(2**32)])
    struct.pack_into("<I", out, entry + field, (new if new != old else old ^ 1) % 2**32)
    return bytes(out)


def zip_bomb(rng: random.Random, data: bytes, record: str | None = None) -> bytes:
    """A deflated copy whose directory declares one record (``record``, else a random one) to inflate to
    gigabytes."""
    out = bytearray(deflate(rng, data))
    entries, at = [], struct.unpack_from("<I", out, out.rindex(b"PK\x05\x06") + 16)[0]
    while out[at : at + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", out, at + 28)
        entries.append((at, bytes(out[at + 46 : at + 46 + n]).decode()))
        at += 46 + n + m + k
    entry = next(e for e, name in entries if name.endswith(record)) if record else rng.choice(entries)[0]
    struct.pack_into("<I", out, entry + 24, 0xF0000000 + rng.randrange(2**20))
    return bytes(out)


# -- hostile content with valid checksums ------------------------------------------------------------------------------
def mutate_pickle(rng: random.Random, pkl: bytes) -> bytes:
    """One opcode-level change: deleted, doubled, moved, its argument bit-flipped; or a storage type renamed to one
    that does not exist; or the pickle cut short."""
    try:
        ops = list(pickletools.genops(pkl))
    except Exception:
        return flip_bits(rng, pkl)
    bounds = [pos for _, _, pos in ops] + [len(pkl)]
    i = rng.randrange(len(ops))
    a, b = bounds[i], bounds[i + 1]
    choice = rng.randrange(6)
    if choice == 0:
        return pkl[:a] + pkl[b:]
    if choice == 1:
        return pkl[:b] + pkl[a:b] + pkl[b:]
    if choice == 2 and b - a > 1:
        span = bytearray(pkl[a:b])
        span[rng.randrange(1, len(span))] ^= 1 << rng.randrange(8)
        return pkl[:a] + bytes(span) + pkl[b:]
    if choice == 3 and b"Storage" in pkl:
        return pkl.replace(b"FloatStorage", b"FloatSporage", 1).replace(b"LongStorage", b"NoSuchStorage", 1)
    if choice == 4:
        j = rng.randrange(len(ops))
        c, d = bounds[j], bounds[j + 1]
        if a < c:
            return pkl[:a] + pkl[c:d] + pkl[b:c] + pkl[a:b] + pkl[d:] if b <= c else pkl
    return pkl[: rng.randrange(len(pkl))]


def hostile_pickle(rng: random.Random, data: bytes) -> bytes:
    items = records(data)
    pickles = [i for i, (info, _) in enumerate(items) if info.filename.endswith(".pkl") or ".json" in info.filename]
    k = rng.choice(pickles)
    info, raw = items[k]
    if info.filename.endswith(".json"):
        raw = hostile_json(rng, raw)
    else:
        raw = mutate_pickle(rng, raw)
    items[k] = (info, raw)
    return rezip(items)


def hostile_json(rng: random.Random, raw: bytes) -> bytes:
    text = raw.decode()
    numbers = [i for i, c in enumerate(text) if c.isdigit()]
    if not numbers or rng.random() < 0.2:
        return raw[: rng.randrange(len(raw))]
    at = rng.choice(numbers)
    return (text[:at] + rng.choice(["9999999999999", "-1", "0", "7", "3.5"]) + text[at + 1 :]).encode()


def hostile_safetensors(rng: random.Random, data: bytes) -> bytes:
    (size,) = struct.unpack_from("<Q", data)
    choice = rng.randrange(3)
    if choice == 0:  # a header size of terabytes
        return struct.pack("<Q", rng.choice([2**40, 2**63, size + 1])) + data[8:]
    header = hostile_json(rng, data[8 : 8 + size])
    if choice == 1:
        return struct.pack("<Q", len(header)) + header + data[8 + size :]
    return struct.pack("<Q", size) + header[:size].ljust(size) + data[8 + size :]


def hostile_legacy(rng: random.Random, data: bytes) -> bytes:
    """A legacy file is five pickles (magic, protocol, system info, the object, the storage keys) and then the
    storages' bytes: one pickle changed, mostly the object's."""
    stream, bounds = io.BytesIO(data), [0]
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        bounds.append(stream.tell())
    k = 3 if rng.random() < 0.7 else rng.randrange(5)
    a, b = bounds[k], bounds[k + 1]
    return data[:a] + mutate_pickle(rng, data[a:b]) + data[b:]


DAMAGE = [flip_bits, truncate, insert_span, zero_span, copy_span]
ZIP_DAMAGE = [lying_directory, zip_bomb]
VALID = [reorder, deflate]


def cases(fmt: str, data: bytes, count: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``count`` ``(mutation, kind, bytes)`` for one file; kind is ``damaged``, ``hostile`` or ``valid``."""
    rng = random.Random(seed)
    is_zip = data[:4] == b"PK\x03\x04"
    menu = [(f, "damaged") for f in DAMAGE]
    if is_zip:
        menu += [(f, "damaged") for f in ZIP_DAMAGE] + [(f, "valid") for f in VALID] + [(hostile_pickle, "hostile")] * 3
    elif fmt.endswith(".safetensors"):
        menu += [(hostile_safetensors, "hostile")] * 3
    else:
        menu += [(hostile_legacy, "hostile")] * 3
    out = []
    for _ in range(count):
        mutate, kind = rng.choice(menu)
        out.append((mutate.__name__, kind, mutate(rng, data)))
    return out


def same_tensors(got: dict, want: dict) -> bool:
    return list(got) == list(want) and all(
        got[k].dtype == want[k].dtype and got[k].shape == want[k].shape and np.array_equal(got[k], want[k])
        for k in want
    )


def listing(*folders) -> set:
    return {(str(folder), name) for folder in folders for name in os.listdir(folder)}


@pytest.mark.parametrize(
    "fmt",
    ["torch.pt", "training.pt", "legacy.pt", "torchscript.pt", "export.pt2", "weights.safetensors"],
)
def test_damaged_and_hostile_files_load_exactly_or_raise_checkpoint_error(fmt, originals, tmp_path):
    data, want, has_checksums = originals[fmt]
    path = tmp_path / ("case" + os.path.splitext(fmt)[1])
    before = listing(tmp_path, os.getcwd())
    outcomes: collections.Counter = collections.Counter()
    for i, (mutation, kind, mutated) in enumerate(cases(fmt, data, CASES_PER_FORMAT, seed=zlib.crc32(fmt.encode()))):
        path.write_bytes(mutated)
        start = time.perf_counter()
        try:
            got = interop.load_checkpoint(path)
        except CheckpointError as error:
            message = str(error)
            assert message.startswith(str(path)) and len(message) > len(str(path)) + 20, (mutation, message)
            outcome = "CheckpointError"
        except Exception as error:  # anything else is the bug this test exists to find
            pytest.fail(f"case {i} ({mutation}, {kind}) of {fmt}: {type(error).__name__}: {error}")
        else:
            outcome = "loaded as saved" if same_tensors(got, want) else "loaded other values"
            if kind == "valid" or (kind == "damaged" and has_checksums):
                assert outcome == "loaded as saved", f"case {i} ({mutation}, {kind}) of {fmt} loaded other values"
        elapsed = time.perf_counter() - start
        assert elapsed < SECONDS_PER_CASE, f"case {i} ({mutation}) of {fmt} took {elapsed:.1f} s"
        outcomes[(kind, outcome)] += 1
    path.unlink()
    assert listing(tmp_path, os.getcwd()) == before, "a case left a file behind"
    assert outcomes[("valid", "loaded as saved")] > 0 or fmt in ("legacy.pt", "weights.safetensors")
    print(f"\n{fmt}: " + ", ".join(f"{k}/{o}: {n}" for (k, o), n in sorted(outcomes.items())))


@pytest.mark.parametrize("bit", range(8))
def test_every_single_bit_flip_of_a_torch_file_loads_as_saved_or_raises(bit, tmp_path):
    torch.manual_seed(0)
    torch.save(torch.nn.RNN(2, 3).state_dict(), tmp_path / "tiny.pt")
    data = (tmp_path / "tiny.pt").read_bytes()
    want = interop.load_checkpoint(tmp_path / "tiny.pt")
    path = tmp_path / "flipped.pt"
    outcomes = collections.Counter()
    for position in range(len(data)):
        flipped = bytearray(data)
        flipped[position] ^= 1 << bit
        path.write_bytes(flipped)
        try:
            got = interop.load_checkpoint(path)
        except CheckpointError:
            outcomes["CheckpointError"] += 1
            continue
        assert same_tensors(got, want), f"flipping bit {bit} of byte {position} loaded other values"
        outcomes["loaded as saved"] += 1
    assert outcomes["CheckpointError"] > len(data) // 4
    print(f"\nbit {bit} of each of {len(data)} bytes: {dict(outcomes)}")


def test_hostile_sizes_are_refused_before_anything_is_allocated(tmp_path):
    """A legacy storage larger than the file, a zip record that declares gigabytes (stored or as a deflate bomb), a
    tensor record of another size than its storage, a safetensors header of terabytes: each named, none read."""
    numel = 123457  # pickled as BININT ("J" and four bytes)
    torch.save({"w": torch.zeros(numel)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (tmp_path / "legacy.pt").read_bytes()
    at = data.index(b"J" + struct.pack("<i", numel))  # the storage's element count in its persistent id
    (tmp_path / "huge-storage.pt").write_bytes(data[:at] + b"J" + struct.pack("<i", 2**31 - 1) + data[at + 5 :])
    with pytest.raises(CheckpointError, match=r"declares 8589934588 bytes, more than the whole file .* refused before"):
        interop.load_checkpoint(tmp_path / "huge-storage.pt")

    torch.save({"w": torch.zeros(3)}, tmp_path / "small.pt")
    data = (tmp_path / "small.pt").read_bytes()
    directory = struct.unpack_from("<I", data, data.rindex(b"PK\x05\x06") + 16)[0]  # first entry: data.pkl
    stored = bytearray(data)
    struct.pack_into("<II", stored, directory + 20, 2**32 - 2, 2**32 - 2)
    (tmp_path / "stored.pt").write_bytes(stored)
    with pytest.raises(CheckpointError, match=r"small/data.pkl declares 4294967294 bytes, more than any record"):
        interop.load_checkpoint(tmp_path / "stored.pt")
    (tmp_path / "bomb.pt").write_bytes(zip_bomb(random.Random(0), data, record="data/0"))
    with pytest.raises(CheckpointError, match=r"data/0 holds 40\d+ bytes, but the pickle declares a storage of 12 "):
        interop.load_checkpoint(tmp_path / "bomb.pt")
    with TorchZipReader(str(tmp_path / "bomb.pt")) as archive:  # a record of no known size (a .pt2 weight file)
        with pytest.raises(CheckpointError, match=r"deflated bytes cannot inflate to the 40\d+ it declares"):
            archive.read("data/0")

    items = records(data)
    tensor = next(i for i, (info, _) in enumerate(items) if info.filename.endswith("data/0"))
    items[tensor] = (items[tensor][0], items[tensor][1] * 1000)
    (tmp_path / "longer.pt").write_bytes(rezip(items))
    with pytest.raises(
        CheckpointError, match=r"record .*data/0 holds 12000 bytes, but the pickle declares a storage of 12"
    ):
        interop.load_checkpoint(tmp_path / "longer.pt")

    from safetensors.numpy import save_file

    save_file({"w": np.zeros(3, np.float32)}, str(tmp_path / "w.safetensors"))
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "tb.safetensors").write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(CheckpointError, match=r"header says 1099511627776 bytes of metadata, but the file has only"):
        interop.load_checkpoint(tmp_path / "tb.safetensors")


def test_a_changed_tensor_byte_names_the_record_and_its_tensors(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save({"model": torch.nn.LSTM(2, 3).state_dict(), "epoch": 1}, tmp_path / "good.pt")
    data = bytearray((tmp_path / "good.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "good.pt") as archive:
        info = archive.getinfo("good/data/1")
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)  # the local header's
    start = info.header_offset + 30 + name_length + extra_length
    data[start + 5] ^= 0x10
    (tmp_path / "bad.pt").write_bytes(data)
    with pytest.raises(CheckpointError) as error:
        interop.load_checkpoint(tmp_path / "bad.pt")
    assert "record good/data/1 fails its CRC-32 check" in str(error.value)
    assert "It holds model.weight_hh_l0." in str(error.value)
    checkpoint = interop.read_checkpoint(tmp_path / "good.pt")
    assert checkpoint.checksums == "verified"

    from interop import check, convert

    for command in (check.main, lambda argv: convert.main([*argv, str(tmp_path / "out.safetensors")])):
        assert command([str(tmp_path / "bad.pt")]) == 2
        err = capsys.readouterr().err
        assert "record good/data/1 fails its CRC-32 check" in err and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_files_without_checksums_load_and_say_so(tmp_path):
    import torch.utils.serialization as serialization
    from safetensors.numpy import save_file

    sd = torch.nn.GRU(2, 3).state_dict()
    serialization.config.save.compute_crc32 = False
    try:
        torch.save(sd, tmp_path / "nocrc.pt")
    finally:
        serialization.config.save.compute_crc32 = True
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.numpy() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for name, why in [
        ("nocrc.pt", "written without CRC-32s"),
        ("legacy.pt", "legacy (pre-1.6) torch format stores no checksum"),
        ("w.safetensors", "safetensors files store no checksum"),
    ]:
        checkpoint = interop.read_checkpoint(tmp_path / name)
        assert why in checkpoint.checksums
        got = checkpoint.state_dict
        assert sorted(got) == sorted(sd) and all(np.array_equal(got[k], v.numpy()) for k, v in sd.items())


def test_a_legacy_whole_model_gets_torchs_reason_not_a_damage_report(tmp_path):
    """A legacy file pickling a whole nn.Module names its class as a 'module' persistent id: the size check reads
    past it, and the file gets the reason torch's restricted unpickler gives, not a claim that it is damaged."""
    torch.save({"model": torch.nn.LSTM(2, 3)}, tmp_path / "model.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"cannot be read without running code from it \(Only persistent_load"):
        interop.read_checkpoint(tmp_path / "model.pt")
