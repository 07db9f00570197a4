"""Truncated backpropagation through time, small enough to see.

A 24-step sequence runs through an LSTM in chunks of 6. Each chunk starts from
the state the previous chunk ended with, so the forward pass is the same as
running all 24 steps at once; but the state is handed on as a value
(``jax.lax.stop_gradient``, torch's ``hidden.detach()``), so the loss of a
chunk has no gradient into earlier chunks. ``jax.grad`` shows it: the
gradient of the last chunk's loss with respect to each input step is nonzero
for every step under full backpropagation and exactly zero before the last
chunk's boundary under truncation.

This is what ``jaxrnn.lm`` does when it trains a language model: the carried
state enters each step's loss as an argument, not as something differentiated.

    python experiments/tbptt.py [--out runs/tbptt]
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
SEQ_LEN, CHUNK, INPUT, HIDDEN, SEED = 24, 6, 3, 8, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/tbptt", help="folder for tbptt.json and tbptt.png")
    args = p.parse_args(argv)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    lstm = jaxrnn.LSTM(INPUT, HIDDEN)
    x = jax.random.normal(jax.random.key(SEED), (SEQ_LEN, INPUT))  # one unbatched sequence (L, H_in)
    variables = lstm.init(jax.random.key(SEED + 1), x)
    last = slice(SEQ_LEN - CHUNK, SEQ_LEN)

    # -- full BPTT: one pass over all 24 steps -----------------------------------------------------
    def full(x):
        out, _ = lstm.apply(variables, x)
        return out, jnp.sum(out[last] ** 2)  # loss of the last chunk only

    # -- truncated: chunks of 6, the state carried forward as a value (detached) -------------------
    def truncated(x):
        state, outs = None, []
        for start in range(0, SEQ_LEN, CHUNK):
            out, state = lstm.apply(variables, x[start : start + CHUNK], state)
            state = jax.lax.stop_gradient(state)  # torch: hidden = repackage_hidden(hidden)
            outs.append(out)
        out = jnp.concatenate(outs)
        return out, jnp.sum(out[last] ** 2)

    full_out, full_loss = full(x)
    trunc_out, trunc_loss = truncated(x)
    forward_diff = float(jnp.abs(full_out - trunc_out).max())
    print(f"forward: outputs of full and chunked runs differ by at most {forward_diff:.1e} (the same computation)")
    print(f"loss of the last chunk: full {float(full_loss):.6f}, truncated {float(trunc_loss):.6f}")

    grad_full = jax.grad(lambda x: full(x)[1])(x)
    grad_trunc = jax.grad(lambda x: truncated(x)[1])(x)
    norm_full = np.linalg.norm(np.asarray(grad_full), axis=1)
    norm_trunc = np.linalg.norm(np.asarray(grad_trunc), axis=1)
    print("\n  step  chunk  |dL/dx_t| full BPTT  |dL/dx_t| truncated")
    for t in range(SEQ_LEN):
        print(f"  {t:4d}  {t // CHUNK:5d}  {norm_full[t]:18.3e}  {norm_trunc[t]:19.3e}")
    before = norm_trunc[: SEQ_LEN - CHUNK]
    cut_exact = bool(np.all(before == 0.0))
    inside_same = bool(np.allclose(norm_trunc[last], norm_full[last], rtol=1e-5, atol=0))
    print(
        f"\nTruncated: gradient before step {SEQ_LEN - CHUNK} is exactly zero: {cut_exact}; "
        f"full BPTT reaches every earlier step: {bool(np.all(norm_full[: SEQ_LEN - CHUNK] > 0))}; "
        f"inside the last chunk the two agree: {inside_same}"
    )

    (out_dir / "tbptt.json").write_text(
        json.dumps({"chunk": CHUNK, "grad_norm_full": norm_full.tolist(), "grad_norm_truncated": norm_trunc.tolist()})
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
    else:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        steps = np.arange(SEQ_LEN)
        ax.bar(steps - 0.2, norm_full, 0.4, label="full BPTT")
        ax.bar(steps + 0.2, norm_trunc, 0.4, label=f"truncated, chunks of {CHUNK}")
        for boundary in range(CHUNK, SEQ_LEN, CHUNK):
            ax.axvline(boundary - 0.5, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("input step t")
        ax.set_ylabel("|d loss(last chunk) / d x_t|")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "tbptt.png", dpi=120)
        print(f"wrote {out_dir / 'tbptt.png'}")
    return 0 if cut_exact and inside_same and forward_diff <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
