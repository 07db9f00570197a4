"""Word prediction, many-to-one: predict the last word of a short sentence from the words before it.

"i like dog", "i love coffee", "i hate milk": the model reads "i like" and
must say "dog". Words are embedded, an RNN reads them, and its final hidden
state goes through a linear layer over the word vocabulary.

    python experiments/word_prediction.py [--cell rnn|lstm|gru] [--steps N]
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
SENTENCES = ["i like dog", "i love coffee", "i hate milk"]
CELL, EMBED, HIDDEN, STEPS, LR, SEED = "rnn", 8, 16, 200, 0.05, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default=CELL, choices=["rnn", "lstm", "gru"])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)

    vocab = jaxrnn.Vocab.from_words(w for s in SENTENCES for w in s.split())
    ids = np.stack([vocab.encode(s) for s in SENTENCES])  # (3, 3)
    batch = {"inputs": jnp.asarray(ids[:, :-1]), "targets": jnp.asarray(ids[:, -1])}
    print(f"vocabulary {list(vocab.tokens)}")

    model = jaxrnn.Classifier(len(vocab), HIDDEN, cell=args.cell, embedding_size=EMBED, num_classes=len(vocab))
    params = model.init(jax.random.key(args.seed), batch["inputs"])["params"]
    optimizer = jaxrnn.make_optimizer("adam", args.lr)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state, _ = jaxrnn.fit(
        step,
        jaxrnn.init_train_state(params, optimizer),
        iter(lambda: batch, None),
        num_steps=args.steps,
        log_every=50,
        log=lambda i, loss, aux: print(f"step {i:4d}  loss {loss:.4f}  accuracy {float(aux['accuracy']):.2f}"),
    )
    logits = model.apply({"params": state.params}, batch["inputs"])
    for sentence, guess in zip(SENTENCES, np.argmax(np.asarray(logits), -1)):
        context = " ".join(sentence.split()[:-1])
        print(f"{context!r} -> {vocab.tokens[guess]!r}   (answer {sentence.split()[-1]!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
