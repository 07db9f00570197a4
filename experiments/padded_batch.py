"""Padded batches: 10 variable-length id sequences through one RNN, with heads on h_n and on every step.

The course's setting: vocabulary 100 with id 0 as padding, embedding 256,
hidden 512. jaxrnn takes the padded batch and ``seq_lengths`` (where torch
packs), and this script checks that padding changes nothing: every output and
final state equals running that sequence alone (and, with torch installed,
equals torch's ``pack_padded_sequence`` on the same weights).

The same batch also goes through as torch's ``PackedSequence``
(``jaxrnn.pack_padded_sequence``), with the same results, and the script
measures what each form costs under ``jit`` for batches with new mixes of
lengths: the padded form compiles once, a packed batch's layout is part of the
compiled program, so each new mix of lengths compiles again.

    python experiments/padded_batch.py [--cell rnn|lstm|gru] [--batches 8]
"""

import argparse
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
VOCAB, PAD, EMBED, HIDDEN, NUM_SEQS, MAX_LEN, NUM_CLASSES, SEED = 100, 0, 256, 512, 10, 12, 5, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm", "gru"])
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--batches", type=int, default=8, help="batches of new length mixes to time each form on")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    # -- data: 10 sequences of ids in [1, 100), lengths 1..12, padded with 0 ------------------------
    lengths = rng.integers(1, MAX_LEN + 1, NUM_SEQS)
    seqs = [rng.integers(1, VOCAB, n) for n in lengths]
    padded, seq_lengths = jaxrnn.pad_sequence(seqs, batch_first=True, padding_value=PAD)
    print(f"lengths {seq_lengths.tolist()} -> padded batch {tuple(padded.shape)} (pad id {PAD})")

    # -- layers: embedding -> RNN; a classification head on h_n, a token head on every step -----------
    embed = nn.Embed(VOCAB, EMBED)
    rnn = jaxrnn.recurrent_layer(args.cell, hidden_size=HIDDEN, batch_first=True)
    class_head, token_head = nn.Dense(NUM_CLASSES), nn.Dense(VOCAB)
    keys = jax.random.split(jax.random.key(args.seed), 4)
    embed_vars = embed.init(keys[0], padded)
    x = embed.apply(embed_vars, padded)  # (10, 12, 256)
    rnn_vars = rnn.init(keys[1], x)

    output, state = rnn.apply(rnn_vars, x, seq_lengths=seq_lengths)
    h_n = state[0] if args.cell == "lstm" else state
    print(f"output {tuple(output.shape)}  h_n {tuple(h_n.shape)}")
    class_logits = class_head.apply(class_head.init(keys[2], h_n[-1]), h_n[-1])
    token_logits = token_head.apply(token_head.init(keys[3], output), output)
    print(
        f"classification head on h_n[-1]: {tuple(class_logits.shape)}; token head on every step: "
        f"{tuple(token_logits.shape)}"
    )
    padding = ~jaxrnn.lengths_to_mask(seq_lengths, padded.shape[1])
    print(f"outputs past each length are zero: {bool(jnp.all(output[padding] == 0))}")

    # -- padding changes nothing: compare with each sequence run alone ------------------------------
    worst = 0.0
    for i, seq in enumerate(seqs):
        alone_out, alone_state = rnn.apply(rnn_vars, embed.apply(embed_vars, jnp.asarray(seq)))
        alone_h = alone_state[0] if args.cell == "lstm" else alone_state
        worst = max(
            worst, float(jnp.abs(output[i, : len(seq)] - alone_out).max()), float(jnp.abs(h_n[:, i] - alone_h).max())
        )
    print(f"largest difference, padded batch vs each sequence alone: {worst:.2e}")

    # -- the same batch packed, as torch code writes it; and what each form costs under jit ---------
    packed = jaxrnn.pack_padded_sequence(x, seq_lengths, batch_first=True, enforce_sorted=False)
    packed_out, packed_state = rnn.apply(rnn_vars, packed)
    unpacked, _ = jaxrnn.pad_packed_sequence(packed_out, batch_first=True, total_length=padded.shape[1])
    packed_h = packed_state[0] if args.cell == "lstm" else packed_state
    packed_diff = max(float(jnp.abs(unpacked - output).max()), float(jnp.abs(packed_h - h_n).max()))
    print(f"PackedSequence in and out: {packed_out}; largest difference vs seq_lengths: {packed_diff:.2e}")
    worst = max(worst, packed_diff)
    run_padded = jax.jit(lambda v, x, n: rnn.apply(v, x, seq_lengths=n)[0])
    run_packed = jax.jit(lambda v, p: rnn.apply(v, p)[0].data)
    mixes = [rng.integers(1, MAX_LEN + 1, NUM_SEQS) for _ in range(args.batches)]
    full = jnp.pad(x, ((0, 0), (0, MAX_LEN - x.shape[1]), (0, 0)))  # (10, 12, 256): room for any mix
    for name, step in [
        ("padded + seq_lengths", lambda n: run_padded(rnn_vars, full, jnp.asarray(n))),
        ("PackedSequence", lambda n: run_packed(rnn_vars, jaxrnn.pack_padded_sequence(full, n, True, False))),
    ]:
        step(mixes[0]).block_until_ready()  # the first compilation, for both
        start = time.perf_counter()
        for n in mixes[1:]:
            step(n).block_until_ready()
        new_ms = (time.perf_counter() - start) / max(len(mixes) - 1, 1) * 1e3
        start = time.perf_counter()
        for _ in mixes[1:]:
            step(mixes[1]).block_until_ready()
        same_ms = (time.perf_counter() - start) / max(len(mixes) - 1, 1) * 1e3
        print(f"{name:<22} jitted: {new_ms:8.2f} ms per batch of new lengths, {same_ms:6.2f} ms when repeated")

    try:
        import torch

        import interop
    except ImportError:
        print("(torch not installed: skipping the pack_padded_sequence comparison)")
        return 0 if worst < 1e-5 else 1
    torch_rnn = interop.to_torch(rnn, rnn_vars)
    with torch.no_grad():
        t_out, t_state = interop.torch_forward(
            torch_rnn, torch.tensor(np.asarray(x)), None, torch.tensor(np.asarray(seq_lengths))
        )
    t_h = (t_state[0] if args.cell == "lstm" else t_state).numpy()
    torch_diff = max(
        float(np.abs(np.asarray(output) - t_out.numpy()).max()), float(np.abs(np.asarray(h_n) - t_h).max())
    )
    print(f"largest difference vs torch pack_padded_sequence on the same weights: {torch_diff:.2e}")
    return 0 if max(worst, torch_diff) < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
