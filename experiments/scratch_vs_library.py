"""An RNN written out by hand in plain JAX, next to jaxrnn.RNN with the same weights.

The course writes the Elman cell itself, ``h_t = tanh(x_t W_ih^T + b_ih +
h_{t-1} W_hh^T + b_hh)``, as a loop over time, and a bidirectional version
that runs a second cell over the reversed sequence and concatenates. This
script does exactly that with jax.numpy and a Python loop, then shows that
``jaxrnn.RNN`` (and ``bidirectional=True``) gives the same numbers.

    python experiments/scratch_vs_library.py
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
SEQ_LEN, BATCH, INPUT, HIDDEN, SEED = 6, 3, 4, 5, 0


def rnn_from_scratch(x, weight_ih, weight_hh, bias_ih, bias_hh, h):
    """x (L, N, H_in), h (N, H) -> outputs (L, N, H), last h (N, H). One step per loop iteration."""
    outputs = []
    for x_t in x:
        h = jnp.tanh(x_t @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh)
        outputs.append(h)
    return jnp.stack(outputs), h


def bidirectional_from_scratch(x, forward_weights, backward_weights, h0):
    """Forward cell over x, backward cell over reversed x; outputs concatenated (L, N, 2H)."""
    out_f, h_f = rnn_from_scratch(x, *forward_weights, h0[0])
    out_b, h_b = rnn_from_scratch(x[::-1], *backward_weights, h0[1])
    return jnp.concatenate([out_f, out_b[::-1]], axis=-1), jnp.stack([h_f, h_b])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=SEQ_LEN)
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    key_x, key_h, key_p = jax.random.split(jax.random.key(args.seed), 3)
    x = jax.random.normal(key_x, (args.seq_len, args.batch, INPUT))
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    rnn = jaxrnn.RNN(INPUT, HIDDEN)
    params = rnn.init(key_p, x)["params"]
    h0 = jax.random.normal(key_h, (1, args.batch, HIDDEN))
    scratch_out, scratch_h = rnn_from_scratch(x, *(params[n + "_l0"] for n in names), h0[0])
    lib_out, lib_h = rnn.apply({"params": params}, x, h0)
    uni = max(float(jnp.abs(scratch_out - lib_out).max()), float(jnp.abs(scratch_h - lib_h[0]).max()))
    print(f"unidirectional: outputs {tuple(lib_out.shape)}, max |scratch - jaxrnn| = {uni:.2e}")

    birnn = jaxrnn.RNN(INPUT, HIDDEN, bidirectional=True)
    params = birnn.init(key_p, x)["params"]
    h0 = jax.random.normal(key_h, (2, args.batch, HIDDEN))
    forward = [params[n + "_l0"] for n in names]
    backward = [params[n + "_l0_reverse"] for n in names]
    scratch_out, scratch_h = bidirectional_from_scratch(x, forward, backward, h0)
    lib_out, lib_h = birnn.apply({"params": params}, x, h0)
    bi = max(float(jnp.abs(scratch_out - lib_out).max()), float(jnp.abs(scratch_h - lib_h).max()))
    print(f"bidirectional:  outputs {tuple(lib_out.shape)}, max |scratch - jaxrnn| = {bi:.2e}")
    print("the same numbers" if max(uni, bi) < 1e-5 else "MISMATCH")
    return 0 if np.isfinite(uni) and max(uni, bi) < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
