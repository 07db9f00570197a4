"""One-to-many (the captioning shape): one vector in, a generated sequence out.

The vector describes a number from 0 to 999 by its digits (three one-hot
digits, 30 features); a linear layer turns it into the initial state (h_0,
c_0) of a character LSTM, which writes the number in English words, one
character at a time, until it writes its end mark: 342 -> "three hundred
forty-two". As in image captioning, the decoder sees the condition only
through its initial state. Training uses teacher forcing on padded batches
(``seq_lengths``, masked loss); generation feeds each character back in
(``jaxrnn.generate`` from the computed state, greedy, under ``jit``).

The numbers are split 80/20 with a fixed seed. A held-out number's words were
never seen whole in training, only their parts in other numbers; exact match
on the held-out numbers measures whether the model composed them.

    python experiments/one_to_many.py              # about a minute on 2 CPU cores
    python experiments/one_to_many.py --smoke      # a few steps
"""

import argparse
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn

# -- config ----------------------------------------------------------------------------------
HIDDEN, LAYERS, BATCH, STEPS, LR, HELD_OUT, SEED = 128, 1, 64, 2500, 3e-3, 0.2, 0
ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen".split()
ONES += "seventeen eighteen nineteen".split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def words(n: int) -> str:
    """English words for 0 <= n < 1000: 342 -> 'three hundred forty-two'."""
    hundreds, rest = divmod(n, 100)
    parts = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest or not hundreds:
        parts.append(ONES[rest] if rest < 20 else TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else ""))
    return " ".join(parts)


def features(n: int) -> np.ndarray:
    """The condition: the digits of n, one-hot each, ``(30,)``."""
    x = np.zeros(30, np.float32)
    for position, digit in enumerate(f"{n:03d}"):
        x[10 * position + int(digit)] = 1.0
    return x


def make_decoder(vocab_size: int) -> jaxrnn.SequenceModel:
    return jaxrnn.SequenceModel(vocab_size, HIDDEN, num_layers=LAYERS, embedding_size=32)


class Captioner(nn.Module):
    """``condition (N, 30) -> initial state`` of a character :class:`jaxrnn.SequenceModel` decoder."""

    vocab_size: int

    def setup(self):
        self.decoder = make_decoder(self.vocab_size)
        self.to_state = nn.Dense(2 * LAYERS * HIDDEN)

    def initial_state(self, condition: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, c = jnp.split(jnp.tanh(self.to_state(condition)), 2, axis=-1)  # each (N, LAYERS*HIDDEN)
        shape = (condition.shape[0], LAYERS, HIDDEN)
        return tuple(jnp.swapaxes(s.reshape(shape), 0, 1) for s in (h, c))  # (LAYERS, N, HIDDEN)

    def __call__(self, condition: jax.Array, ids: jax.Array, seq_lengths: jax.Array) -> jax.Array:
        logits, _ = self.decoder(ids, self.initial_state(condition), seq_lengths=seq_lengths)
        return logits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default="runs/one_to_many", help="folder for results.json")
    p.add_argument("--smoke", action="store_true", help="30 steps")
    args = p.parse_args(argv)
    steps = 30 if args.smoke else args.steps
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    # -- data: every number's words, characters as ids; 0 = padding, 1 = start, 2 = end -------------
    texts = [words(n) for n in range(1000)]
    chars = sorted(set("".join(texts)))
    vocab = ["<pad>", "<s>", "</s>", *chars]
    index = {c: i for i, c in enumerate(vocab)}
    max_len = max(map(len, texts)) + 1
    inputs = np.zeros((1000, max_len), np.int32)  # <s> + text
    targets = np.zeros((1000, max_len), np.int32)  # text + </s>
    for n, text in enumerate(texts):
        ids = [index[c] for c in text]
        inputs[n, : len(ids) + 1] = [1, *ids]
        targets[n, : len(ids) + 1] = [*ids, 2]
    lengths = np.array([len(t) + 1 for t in texts], np.int32)
    conditions = np.stack([features(n) for n in range(1000)])
    order = np.random.default_rng(args.seed).permutation(1000)
    held_out, train = np.sort(order[: int(HELD_OUT * 1000)]), order[int(HELD_OUT * 1000) :]
    print(f"{len(train)} numbers to train on, {len(held_out)} held out; {len(vocab)} symbols, up to {max_len} steps")

    # -- train with teacher forcing ------------------------------------------------------------------
    model = Captioner(len(vocab))
    params = model.init(jax.random.key(args.seed), conditions[:2], inputs[:2], lengths[:2])["params"]
    optimizer = optax.adam(LR)

    def loss_fn(params, batch, rng):
        c, x, y, n = batch
        logits = model.apply({"params": params}, c, x, n)
        mask = jaxrnn.lengths_to_mask(n, x.shape[1])
        return jaxrnn.masked_cross_entropy(logits, y, mask), {}

    step = jaxrnn.make_train_step(loss_fn, optimizer)
    rng = np.random.default_rng(args.seed)

    def batches():
        while True:
            idx = rng.choice(train, BATCH, replace=False)
            yield conditions[idx], inputs[idx], targets[idx], lengths[idx]

    state, losses = jaxrnn.fit(
        step,
        jaxrnn.init_train_state(params, optimizer),
        batches(),
        num_steps=steps,
        log_every=max(steps // 10, 1),
        log=lambda i, loss, _: print(f"step {i:5d}  loss {loss:.4f}"),
        progress=sys.stderr.isatty(),
    )

    # -- generate from each held-out condition ---------------------------------------------------------
    variables = {"params": state.params}
    decoder, decoder_vars = make_decoder(len(vocab)), {"params": state.params["decoder"]}  # the trained decoder
    initial = jax.jit(lambda c: model.apply(variables, c, method=Captioner.initial_state))

    def captions(numbers: np.ndarray) -> dict[int, str]:
        """Every number's words, generated as one batch from one initial state per number (BOS 1, EOS 2)."""
        start = initial(conditions[numbers])
        bos = jnp.ones((len(numbers), 1), jnp.int32)
        ids = np.asarray(jaxrnn.generate(decoder, decoder_vars, bos, max_len, greedy=True, state=start))
        ends = [int(np.argmax(row == 2)) if (row == 2).any() else len(row) for row in ids]
        return {int(n): "".join(vocab[i] for i in row[:end]) for n, row, end in zip(numbers, ids, ends)}

    generated = captions(np.asarray(held_out))
    correct = [n for n, text in generated.items() if text == texts[n]]
    accuracy = len(correct) / len(held_out)
    train_accuracy = np.mean([text == texts[n] for n, text in captions(np.asarray(train[:200])).items()])
    print(
        f"\nexact match: held-out {accuracy:.1%} ({len(correct)}/{len(held_out)}), training sample {train_accuracy:.1%}"
    )
    for n in list(held_out[:: max(len(held_out) // 12, 1)]):
        mark = "ok" if generated[int(n)] == texts[n] else f"should be {texts[n]!r}"
        print(f"  {int(n):3d} -> {generated[int(n)]!r}  {mark}")
    results = {
        "steps": steps,
        "final_loss": losses[-1],
        "held_out_exact_match": accuracy,
        "train_sample_exact_match": float(train_accuracy),
        "generated": {str(n): t for n, t in generated.items()},
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
