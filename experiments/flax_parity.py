"""Torch weights in Flax's recurrent cells: how far each is from torch, by cell, API, direction and dtype.

For every Flax-convention cell that interop moves torch weights into (Flax's own
nn.LSTMCell, OptimizedLSTMCell, GRUCell, SimpleCell, their NNX twins, and
jaxrnn's Flax* cells), a one-layer bidirectional torch layer's state_dict goes
through interop.load_state_dict into nn.Bidirectional(nn.RNN(cell), ...) (or
nnx.Bidirectional), runs on random inputs with random seq_lengths from zero
states, and is compared with torch's packed run: the largest absolute difference
of the outputs on the valid steps and of the final states, per direction; then
interop.to_state_dict's export goes back into a fresh torch layer
(strict=True) and its output is compared with the original's.

    python experiments/flax_parity.py [--out experiments/results/flax_parity] [--smoke]

Writes parity.md (the table in docs/guides/flax_cells.md) and parity.json. nnx.GRUCell has no
parameter for torch's b_hn, so its torch layer has b_hn set to zero first (a
nonzero one is refused; see tests/test_flax_cells_interop.py).
"""

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import torch
from tqdm import tqdm

from interop.parity import FLAX_CELLS, flax_cell_diffs

# -- config ----------------------------------------------------------------------------------
INPUT_SIZE, HIDDEN_SIZE = 8, 16
BATCH, SEQ_LEN = 4, 12
SEEDS = (0, 1, 2)  # torch init and inputs; the table keeps the largest difference over them
DTYPES = ("float32", "float64")
APIS = ("linen", "nnx")
BOUNDS = {"float32": 1e-5, "float64": 1e-12}  # the bounds; the script exits 1 above them


def cases() -> list[tuple[str, str, str]]:
    """``(torch layer, cell, nonlinearity)`` for every cell (the RNN ones with tanh and relu)."""
    out = [(kind, cell, "tanh") for kind, cells in FLAX_CELLS.items() for cell in cells]
    return out + [("RNN", cell, "relu") for cell in FLAX_CELLS["RNN"]]


def measure(kind: str, cell: str, nonlinearity: str, api: str, dtype: str, seeds: tuple[int, ...]) -> dict:
    """Largest differences over ``seeds`` for one cell, API and dtype."""
    worst: dict[str, float] = {}
    with jax.enable_x64(dtype == "float64"):
        for seed in seeds:
            torch.manual_seed(seed)
            extra = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
            layer = getattr(torch.nn, kind)(INPUT_SIZE, HIDDEN_SIZE, batch_first=True, bidirectional=True, **extra)
            layer = layer.to(getattr(torch, dtype))
            if api == "nnx" and cell == "GRUCell":  # no slot for b_hn in nnx.GRUCell
                with torch.no_grad():
                    layer.bias_hh_l0[2 * HIDDEN_SIZE :] = 0
                    layer.bias_hh_l0_reverse[2 * HIDDEN_SIZE :] = 0
            diffs = flax_cell_diffs(layer, cell, api, batch=BATCH, seq_len=SEQ_LEN, seed=seed)
            for name, value in diffs.items():
                worst[name] = max(worst.get(name, 0.0), value)
    return worst


def cell_label(kind: str, cell: str, nonlinearity: str, api: str) -> str:
    if cell.startswith("jaxrnn."):
        name = cell if api == "linen" else cell.replace("jaxrnn.", "jaxrnn.nnx.")
    else:
        name = ("nn." if api == "linen" else "nnx.") + cell
    return name + (" (relu)" if nonlinearity == "relu" else "")


def table(rows: list[dict]) -> str:
    lines = [
        "| torch layer | Flax cell | dtype | direction | output | h_n | c_n | exported to torch: output |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for direction in ("forward", "backward"):
            d = row["diffs"]
            c_n = d.get(f"c_n ({direction})")
            lines.append(
                f"| {row['torch']} | {row['cell']} | {row['dtype']} | {direction} | "
                f"{d[f'output ({direction})']:.1e} | {d[f'h_n ({direction})']:.1e} | "
                f"{'-' if c_n is None else f'{c_n:.1e}'} | {d['exported output']:.1e} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("experiments/results/flax_parity"))
    parser.add_argument("--smoke", action="store_true", help="two cells, one seed (for CI)")
    args = parser.parse_args()
    seeds = SEEDS[:1] if args.smoke else SEEDS
    todo = [(c, api, dtype) for c in cases() for api in APIS for dtype in DTYPES]
    if args.smoke:  # the script's paths, not the parity (tests/test_flax_cells_interop.py holds that)
        todo = [
            (("LSTM", "OptimizedLSTMCell", "tanh"), "linen", "float32"),
            (("GRU", "GRUCell", "tanh"), "nnx", "float64"),
        ]
    rows, start = [], time.perf_counter()
    for (kind, cell, nonlinearity), api, dtype in tqdm(todo, desc="cells", disable=None, file=sys.stdout):
        diffs = measure(kind, cell, nonlinearity, api, dtype, seeds)
        rows.append(
            {
                "torch": f"nn.{kind}" + (" (relu)" if nonlinearity == "relu" else ""),
                "cell": cell_label(kind, cell, nonlinearity, api),
                "api": api,
                "dtype": dtype,
                "diffs": diffs,
            }
        )
    seconds = time.perf_counter() - start
    text = table(rows)
    print(text)
    failed = []
    for dtype in DTYPES:
        largest = max(max(r["diffs"].values()) for r in rows if r["dtype"] == dtype)
        within = largest <= BOUNDS[dtype]
        failed += [] if within else [dtype]
        print(f"largest difference over every {dtype} row: {largest:.1e} (bound {BOUNDS[dtype]:.0e}: {within})")
    print(f"{len(rows)} cell/API/dtype runs x {len(seeds)} seeds in {seconds:.1f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parity.md").write_text(text + "\n")
    meta = {
        "input_size": INPUT_SIZE,
        "hidden_size": HIDDEN_SIZE,
        "batch": BATCH,
        "seq_len": SEQ_LEN,
        "seeds": list(seeds),
        "seconds": seconds,
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    (args.out / "parity.json").write_text(json.dumps({"config": meta, "rows": rows}, indent=1, default=float) + "\n")
    if failed:
        sys.exit(f"differences above the bound for {', '.join(failed)}")


if __name__ == "__main__":
    main()
