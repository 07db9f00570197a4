"""Check a torch checkpoint against jaxrnn: ``python -m interop.check CHECKPOINT``.

Finds every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` in the checkpoint (or the one
under ``--prefix``), loads it into torch and into jaxrnn, runs both on the
same random input with and without ``seq_lengths``, prints the largest
absolute difference of outputs and states. Exit status: 0 every difference
within ``--atol``; 1 some difference exceeds it; 2 the checkpoint cannot be
read, holds no recurrent layer, or a layer cannot be run (a message, never a
traceback). float64 weights are checked in float64: the command turns on JAX's
64-bit mode for them.
"""

from __future__ import annotations

import argparse
import sys

from interop.checkpoint import read_checkpoint
from interop.formats import FORMATS, CheckpointError
from interop.parity import find_recurrent_layers, max_abs_diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interop.check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", help="torch checkpoint (any container interop.read_checkpoint reads) or .safetensors"
    )
    parser.add_argument("--prefix", help="check only the layer whose keys start with this, e.g. 'rnn.'")
    parser.add_argument("--key", help="entry of a training checkpoint dict that holds the state_dict")
    parser.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="for nn.RNN layers")
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=1e-4, help="largest absolute difference allowed")
    args = parser.parse_args(argv)

    try:
        checkpoint = read_checkpoint(args.checkpoint, key=args.key)
    except (FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state_dict = checkpoint.state_dict
    where = f", entry {checkpoint.entry!r}" if checkpoint.entry else ""
    print(f"{args.checkpoint}: {FORMATS[checkpoint.format]}{where}")
    print(f"checksums: {_checksums(checkpoint.checksums)}")
    layers = find_recurrent_layers(state_dict)
    if args.prefix is not None:
        layers = {p: spec for p, spec in layers.items() if p == args.prefix}
    if not layers:
        where = f" under prefix {args.prefix!r}" if args.prefix is not None else ""
        print(f"{args.checkpoint}: no RNN/LSTM/GRU weights found{where}.", file=sys.stderr)
        return 2

    if any(str(v.dtype) in ("float64", "torch.float64") for v in state_dict.values()):
        import jax

        if not jax.config.jax_enable_x64:
            jax.config.update("jax_enable_x64", True)
            print("float64 weights: JAX's 64-bit mode is on for this check")
    try:
        return _check_layers(args, state_dict, layers)
    except Exception as e:  # noqa: BLE001 (exit 2 with a message, never a traceback: 1 means "numbers differ")
        print(f"error: cannot check {args.checkpoint}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _checksums(checksums: str) -> str:
    if checksums == "verified":
        return "every record read matched its CRC-32"
    return checksums + ", so damage inside tensors cannot be detected"


def _check_layers(args: argparse.Namespace, state_dict: dict, layers: dict) -> int:
    """Runs each layer in torch and jaxrnn and prints the differences; the exit status (0, 1, or 2 for weights
    that do not make a torch layer)."""
    import torch

    worst = 0.0
    for prefix, (kind, config) in layers.items():
        if kind in ("RNN", "RNNCell"):
            config["nonlinearity"] = args.nonlinearity
        sub = {k[len(prefix) :]: torch.as_tensor(v) for k, v in state_dict.items() if k.startswith(prefix)}
        module = getattr(torch.nn, kind)(
            **config, dtype=sub["weight_ih" + ("" if kind.endswith("Cell") else "_l0")].dtype
        )
        try:
            module.load_state_dict({k: v for k, v in sub.items() if k in module.state_dict()})
        except RuntimeError as e:  # e.g. bias_ih without bias_hh: not a layer torch can build
            print(f"error: {prefix or '(top level)'}: the weights do not make a torch.nn.{kind}: {e}", file=sys.stderr)
            return 2
        module.eval()
        diffs = max_abs_diffs(module, batch=args.batch, seq_len=args.seq_len, seed=args.seed)
        settings = ", ".join(f"{k}={v}" for k, v in config.items())
        print(f"{prefix or '(top level)'}: torch.nn.{kind}({settings})")
        for name, diff in diffs.items():
            flag = "" if diff <= args.atol else "   <-- exceeds --atol"
            print(f"  max |jaxrnn - torch| {name:<24} {diff:.3e}{flag}")
            worst = max(worst, diff)
    ok = worst <= args.atol
    print(f"{'OK' if ok else 'FAIL'}: largest difference {worst:.3e} (atol {args.atol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
