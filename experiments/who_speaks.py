"""Many-to-one on real text, one way and both ways: which character speaks a tiny-shakespeare speech.

Every speech in tiny-shakespeare starts with "NAME:" on its own line. The
speeches of the 8 most frequent speakers (the name line removed) are the
inputs, as words (lower-cased, punctuation split off; words seen fewer than
twice in training become <unk>), up to 60 of them, with their real lengths
(``seq_lengths``); the speaker is the label (``jaxrnn.Classifier``: the last
layer's final hidden state, both directions' concatenated when bidirectional,
then a linear layer). Speeches are split 70/10/20 (train, validation, test) at
random with a fixed seed.

A unidirectional and a bidirectional GRU of the same size are trained the same
way (Adam, the same steps and seed; the parameters with the best validation
accuracy, checked every 100 steps, are kept: 1,030 speeches overfit fast) and
scored once on the test speeches against the majority-class baseline.

    python experiments/who_speaks.py --data-dir ../shared/data
    python experiments/who_speaks.py --smoke --data-dir ../shared/data
"""

import argparse
import collections
import dataclasses
import json
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn
from jaxrnn.corpora import read_corpus_file

# -- config ----------------------------------------------------------------------------------
SPEAKERS, MAX_WORDS, MIN_COUNT = 8, 60, 2


@dataclasses.dataclass(frozen=True)
class Config:
    hidden_size: int = 64
    embedding_size: int = 64
    lr: float = 3e-3
    batch_size: int = 32
    steps: int = 1200
    seed: int = 0


def speeches(text: str) -> list[tuple[str, list[str]]]:
    """``(speaker, words)`` for every "NAME:\\n<speech>" block (blocks are separated by a blank line)."""
    out = []
    for block in text.split("\n\n"):
        name, _, speech = block.strip("\n").partition("\n")
        if re.fullmatch(r"[A-Z][A-Za-z ']*:", name) and speech:
            out.append((name[:-1], re.findall(r"[a-z']+|[.,;:!?]", speech.lower())))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding tinyshakespeare.txt")
    p.add_argument("--out", default="runs/who_speaks", help="folder for results.json")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--smoke", action="store_true", help="100 steps per model")
    args = p.parse_args(argv)
    config = Config(steps=100 if args.smoke else args.steps, seed=args.seed)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        text = read_corpus_file("tinyshakespeare", "tinyshakespeare.txt", args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    # -- data: the 8 most frequent speakers' speeches, as word ids -----------------------------------
    blocks = speeches(text)
    top = [name for name, _ in collections.Counter(n for n, _ in blocks).most_common(SPEAKERS)]
    chosen = [(top.index(n), words[:MAX_WORDS]) for n, words in blocks if n in top]
    order = np.random.default_rng(config.seed).permutation(len(chosen))
    a, b = int(0.7 * len(chosen)), int(0.8 * len(chosen))
    split = {"train": order[:a], "valid": order[a:b], "test": order[b:]}
    counts = collections.Counter(w for i in split["train"] for w in chosen[i][1])
    vocab = {w: k + 2 for k, w in enumerate(sorted(w for w, c in counts.items() if c >= MIN_COUNT))}  # 0 pad, 1 unk
    ids = np.zeros((len(chosen), MAX_WORDS), np.int32)
    for i, (_, words) in enumerate(chosen):
        ids[i, : len(words)] = [vocab.get(w, 1) for w in words]
    lengths = np.array([len(w) for _, w in chosen], np.int32)
    labels = np.array([c for c, _ in chosen], np.int32)
    majority_class = np.bincount(labels[split["train"]]).argmax()
    majority = float(np.mean(labels[split["test"]] == majority_class))
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.items())
    print(f"who speaks: {len(chosen)} speeches of {top}; {sizes}; {len(vocab) + 2} words")
    print(f"  majority class ({top[majority_class]}): test accuracy {majority:.3f}")
    results: dict = {"config": dataclasses.asdict(config), "speakers": top, "majority_accuracy": majority}

    for bidirectional in (False, True):
        model = jaxrnn.Classifier(
            len(vocab) + 2, config.hidden_size, cell="gru", embedding_size=config.embedding_size,
            bidirectional=bidirectional, num_classes=SPEAKERS,
        )  # fmt: skip
        params = model.init(jax.random.key(config.seed), ids[:2], jnp.asarray(lengths[:2]))["params"]
        optimizer = optax.adam(config.lr)

        def loss_fn(params, batch, rng, model=model):
            x, y, n = batch
            return jaxrnn.masked_cross_entropy(model.apply({"params": params}, x, n), y), {}

        batch_rng = np.random.default_rng(config.seed)

        def batches(batch_rng=batch_rng):
            while True:
                idx = batch_rng.choice(split["train"], config.batch_size, replace=False)
                yield ids[idx], labels[idx], lengths[idx]

        def accuracy(params, part, model=model) -> float:
            idx = split[part]
            logits = model.apply({"params": params}, ids[idx], lengths[idx])
            return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels[idx]))

        step, state, done = jaxrnn.make_train_step(loss_fn, optimizer), jaxrnn.init_train_state(params, optimizer), 0
        best = (-1.0, state.params, 0)
        stream = batches()
        while done < config.steps:
            n = min(100, config.steps - done)
            state, losses = jaxrnn.fit(step, state, stream, num_steps=n, progress=sys.stderr.isatty())
            done += n
            valid = accuracy(state.params, "valid")
            if valid > best[0]:
                best = (valid, state.params, done)
        test_accuracy = accuracy(best[1], "test")
        key = "bidirectional" if bidirectional else "unidirectional"
        results[key] = {"accuracy": test_accuracy, "valid_accuracy": best[0], "best_step": best[2]}
        print(f"  GRU {key:<15} test accuracy {test_accuracy:.3f} (valid {best[0]:.3f}, from step {best[2]})")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
