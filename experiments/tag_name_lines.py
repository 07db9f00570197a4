"""Many-to-many on real text, one way and both ways: which characters belong to a speaker-name line.

Derived from tiny-shakespeare, where every speech starts with "NAME:" on its
own line: every character of a 100-character window is tagged 1 if it belongs
to a speaker-name line ("ROMEO:" and its newline), else 0
(``jaxrnn.Tagger``, one prediction per step). A one-way reader at the start of
a line cannot know yet whether the line ends in ":"; a two-way reader can: the
course's point that a task that is not generation should read both ways.

A unidirectional and a bidirectional GRU of the same hidden size are trained
the same way (Adam, the same steps and seed) on the first 90% of the text and
scored on the last 10% against the majority-class baseline, overall and on the
name-line characters (and their first characters) alone.

    python experiments/tag_name_lines.py --data-dir ../shared/data
    python experiments/tag_name_lines.py --smoke --data-dir ../shared/data
"""

import argparse
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
TAG_WINDOW = 100


@dataclasses.dataclass(frozen=True)
class Config:
    hidden_size: int = 128
    embedding_size: int = 32
    lr: float = 3e-3
    batch_size: int = 64
    steps: int = 800
    seed: int = 0


# -- data ------------------------------------------------------------------------------------
def name_line_tags(text: str) -> np.ndarray:
    """``(len(text),)`` int32: 1 for every character of a speaker-name line (and its newline), else 0."""
    tags = np.zeros(len(text), np.int32)
    for match in re.finditer(r"(?m)^[A-Z][A-Za-z ']*:\n", text):
        tags[match.start() : match.end()] = 1
    return tags


def train_and_score(model, inputs, targets, lengths, split, config: Config) -> dict:
    """Trains the tagger on ``split['train']``; held-out accuracy and recall of name-line characters."""
    params = model.init(jax.random.key(config.seed), inputs[:2], jnp.asarray(lengths[:2]))["params"]
    optimizer = optax.adam(config.lr)

    def loss_fn(params, batch, rng):
        x, y, n = batch
        logits = model.apply({"params": params}, x, n)
        return jaxrnn.masked_cross_entropy(logits, y, jaxrnn.lengths_to_mask(n, x.shape[1])), {}

    rng = np.random.default_rng(config.seed)

    def batches():
        while True:
            idx = rng.choice(split["train"], config.batch_size, replace=False)
            yield inputs[idx], targets[idx], lengths[idx]

    state, losses = jaxrnn.fit(
        jaxrnn.make_train_step(loss_fn, optimizer),
        jaxrnn.init_train_state(params, optimizer),
        batches(),
        num_steps=config.steps,
        progress=sys.stderr.isatty(),
    )
    predict = jax.jit(lambda x, n: jnp.argmax(model.apply({"params": state.params}, x, n), axis=-1))
    test = split["test"]
    predicted = np.concatenate([np.asarray(predict(inputs[i], lengths[i])) for i in np.array_split(test, 8)])
    truth = targets[test]
    result = {"final_train_loss": float(np.mean(losses[-50:]))}
    mask = np.arange(inputs.shape[1])[None, :] < lengths[test][:, None]
    result["accuracy"] = float((predicted == truth)[mask].mean())
    names = mask & (truth == 1)
    result["name_line_recall"] = float((predicted[names] == 1).mean())
    starts = names & np.concatenate([np.ones((len(test), 1), bool), truth[:, :-1] == 0], axis=1)
    result["name_line_first_char_recall"] = float((predicted[starts] == 1).mean())
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding tinyshakespeare.txt")
    p.add_argument("--out", default="runs/tag_name_lines", help="folder for results.json")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--seed", type=int, default=Config.seed)
    p.add_argument("--smoke", action="store_true", help="20 steps per model")
    args = p.parse_args(argv)
    config = Config(steps=20 if args.smoke else args.steps, seed=args.seed)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        text = read_corpus_file("tinyshakespeare", "tinyshakespeare.txt", args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    vocab = jaxrnn.Vocab.from_chars(text)
    results: dict = {"config": dataclasses.asdict(config)}

    # -- which line is a name: many-to-many ----------------------------------------------------------
    tags = name_line_tags(text)
    n_windows = len(text) // TAG_WINDOW
    windows = vocab.encode(text[: n_windows * TAG_WINDOW]).reshape(n_windows, TAG_WINDOW)
    window_tags = tags[: n_windows * TAG_WINDOW].reshape(n_windows, TAG_WINDOW)
    full = np.full(n_windows, TAG_WINDOW, np.int32)
    cut = int(0.9 * n_windows)
    split = {"train": np.arange(cut), "test": np.arange(cut, n_windows)}
    majority = float(np.mean(window_tags[split["test"]] == 0))
    print(f"which line is a name: {n_windows} windows of {TAG_WINDOW} characters, {tags.mean():.1%} in name lines")
    print(f"  majority class (not a name line): test accuracy {majority:.3f}")
    results["name_lines"] = {"majority_accuracy": majority}
    for bidirectional in (False, True):
        model = jaxrnn.Tagger(
            len(vocab), config.hidden_size, cell="gru", embedding_size=config.embedding_size,
            bidirectional=bidirectional, num_tags=2,
        )  # fmt: skip
        r = train_and_score(model, windows, window_tags, full, split, config)
        key = "bidirectional" if bidirectional else "unidirectional"
        results["name_lines"][key] = r
        print(
            f"  GRU {key:<15} test accuracy {r['accuracy']:.4f}; name-line characters found "
            f"{r['name_line_recall']:.3f}, first characters of name lines {r['name_line_first_char_recall']:.3f}"
        )
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
