"""What verifying every record's CRC-32 costs when reading a large torch checkpoint, page cache warm and cold.

Saves a state dict of several hundred MB with torch.save, then reads it, in
alternating rounds: torch.load(weights_only=True) and .numpy() (what torch users
do, no verification), interop's reader without the CRC-32 comparison, with it
computed by zlib and by ISA-L (python-isal, which jaxrnn[interop] installs and
the reader uses when present), and interop.load_checkpoint as a user calls it.
Each read runs in a fresh process (imports done, nothing else read), as a
user's first load does, so no read inherits memory another one freed. "Cold"
evicts the file from the page cache first (posix_fadvise DONTNEED), so the bytes
come from the disk.

    python experiments/checkpoint_read_cost.py [--megabytes 400] [--rounds 9]
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import torch
from isal.isal_zlib import crc32 as isal_crc32

import interop
from interop import inert_pickle, torch_zip

# -- config ----------------------------------------------------------------------------------
HIDDEN = 1024  # an nn.LSTM(HIDDEN, HIDDEN, num_layers) is 4 * HIDDEN * 2 * HIDDEN floats per layer (~33.6 MB)


def evict(path: pathlib.Path) -> None:
    """Drops the file's pages from the page cache, so the next read comes from the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_torch(path: pathlib.Path) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return sum(v.numpy().nbytes for v in state.values())


def read_interop(path: pathlib.Path, verify: bool, crc32=torch_zip.CRC32) -> int:
    default, torch_zip.CRC32 = torch_zip.CRC32, crc32  # the reader's CRC-32 function, for this read only
    try:
        state, _ = inert_pickle.load_zip_pickle(str(path), verify=verify)
    finally:
        torch_zip.CRC32 = default
    return sum(v.numpy().nbytes for v in state.values())


def read_checkpoint(path: pathlib.Path) -> int:
    return sum(v.nbytes for v in interop.load_checkpoint(path).values())


WAYS = {
    "torch.load + .numpy()": read_torch,
    "interop reader, no CRC-32": lambda p: read_interop(p, verify=False),
    "interop reader, CRC-32 by zlib": lambda p: read_interop(p, verify=True, crc32=zlib.crc32),
    "interop reader, CRC-32 by ISA-L": lambda p: read_interop(p, verify=True, crc32=isal_crc32),
    "interop.load_checkpoint (default)": read_checkpoint,
}


def timed_read_in_new_process(path: pathlib.Path, way: str, cold: bool) -> float:
    """Seconds one read takes in a fresh interpreter (this script run with --read)."""
    command = [sys.executable, __file__, "--read", str(path), way] + (["--cold"] if cold else [])
    run = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(run.stdout.strip().splitlines()[-1])


def read_once(path: pathlib.Path, way: str, cold: bool) -> None:
    if cold:
        evict(path)
    start = time.perf_counter()
    nbytes = WAYS[way](path)
    seconds = time.perf_counter() - start
    assert nbytes > 0.9 * path.stat().st_size
    print(seconds)


def main() -> None:
    if sys.argv[1:2] == ["--read"]:  # one timed read, in the process timed_read_in_new_process started
        read_once(pathlib.Path(sys.argv[2]), sys.argv[3], cold="--cold" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=400, help="size of the checkpoint")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--dir", type=pathlib.Path, default=None, help="where to write it (default: a temp dir)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("experiments/results/checkpoint_read_cost"))
    args = parser.parse_args()

    layers = max(1, round(args.megabytes * 1e6 / (4 * 4 * HIDDEN * 2 * HIDDEN)))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = pathlib.Path(folder) / "big.pt"
        torch.save(torch.nn.LSTM(HIDDEN, HIDDEN, num_layers=layers).state_dict(), path)
        size = path.stat().st_size
        print(f"{path.name}: nn.LSTM({HIDDEN}, {HIDDEN}, num_layers={layers}), {size / 1e6:.0f} MB")
        raw = path.read_bytes()
        crc_gbs = {}
        for name, crc32 in (("zlib", zlib.crc32), ("isal", isal_crc32)):
            start = time.perf_counter()
            crc32(raw)
            crc_gbs[name] = size / (time.perf_counter() - start) / 1e9
        del raw
        times: dict[str, dict[str, list[float]]] = {cache: {w: [] for w in WAYS} for cache in ("warm", "cold")}
        read_checkpoint(path)  # the page cache holds the file
        for r in range(args.rounds):
            for cache in ("warm", "cold"):
                for name in WAYS:
                    times[cache][name].append(timed_read_in_new_process(path, name, cold=cache == "cold"))
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    rows = []
    # The machine is shared: noise only ever adds time, so the fastest of the rounds is the cost of the read itself
    # and the ratios use it; the median shows what a typical run saw.
    lines = [
        "| page cache | read | fastest s | median s | MB/s (fastest) | fastest vs no CRC-32 |",
        "|---|---|---|---|---|---|",
    ]
    for cache, by_way in times.items():
        base = min(by_way["interop reader, no CRC-32"])
        for name, samples in by_way.items():
            fastest, median = min(samples), statistics.median(samples)
            rows.append({"cache": cache, "read": name, "fastest_s": fastest, "median_s": median, "samples_s": samples})
            lines.append(
                f"| {cache} | {name} | {fastest:.3f} | {median:.3f} | {size / fastest / 1e6:.0f} | "
                f"{fastest / base:.2f}x |"
            )
    table = "\n".join(lines)
    print(table)
    print(
        f"CRC-32 alone, on the file's bytes in memory: zlib {zlib.ZLIB_RUNTIME_VERSION} {crc_gbs['zlib']:.1f} GB/s, "
        f"ISA-L {crc_gbs['isal']:.1f} GB/s; the reader uses {torch_zip.CRC32_IMPLEMENTATION}"
    )
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    meta = {
        "megabytes": size / 1e6,
        "rounds": args.rounds,
        "crc32_gb_per_s": crc_gbs,
        "reader_crc32": torch_zip.CRC32_IMPLEMENTATION,
        "cpu": cpu,
        "avx512f": "avx512f" in open("/proc/cpuinfo").read(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.md").write_text(table + "\n")
    (args.out / "cost.json").write_text(json.dumps({"config": meta, "rows": rows}, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
