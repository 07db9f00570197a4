"""Long sequence: learn a paragraph from windows of 10 characters with a 2-layer RNN.

The course's example: slide a window of 10 over the text (x = s[i:i+10],
y = s[i+1:i+11]), train a stacked RNN followed by a linear layer on all
windows at once, then rebuild the whole text from the predictions: the first
window's prediction, then the last predicted character of every later window.

    python experiments/longseq.py [--cell rnn|lstm|gru] [--steps N]
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
TEXT = (
    "if you want to build a ship, don't drum up people together to "
    "collect wood and don't assign them tasks and work, but rather "
    "teach them to long for the endless immensity of the sea."
)
WINDOW, CELL, HIDDEN, LAYERS, STEPS, LR, SEED = 10, "rnn", 64, 2, 300, 0.01, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default=CELL, choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--window", type=int, default=WINDOW)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    start = time.perf_counter()

    vocab = jaxrnn.Vocab.from_chars(TEXT)
    x, y = jaxrnn.sliding_windows(vocab.encode(TEXT), args.window)
    batch = {"inputs": jnp.asarray(x), "targets": jnp.asarray(y)}
    print(f"{len(TEXT)} characters, vocabulary {len(vocab)}, {len(x)} windows of {args.window}")

    model = jaxrnn.SequenceModel(len(vocab), args.hidden, cell=args.cell, num_layers=args.layers)
    params = model.init(jax.random.key(args.seed), batch["inputs"])["params"]
    optimizer = jaxrnn.make_optimizer("adam", args.lr)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state, losses = jaxrnn.fit(
        step,
        jaxrnn.init_train_state(params, optimizer),
        iter(lambda: batch, None),
        num_steps=args.steps,
        log_every=50,
        log=lambda i, loss, aux: print(f"step {i:4d}  loss {loss:.4f}  accuracy {float(aux['accuracy']):.3f}"),
    )

    logits, _ = model.apply({"params": state.params}, batch["inputs"])
    predicted = np.argmax(np.asarray(logits), axis=-1)  # (num_windows, window)
    rebuilt = TEXT[0] + vocab.decode(predicted[0]) + "".join(vocab.decode(row[-1:]) for row in predicted[1:])
    wrong = sum(a != b for a, b in zip(rebuilt, TEXT))
    print("rebuilt text:")
    print(rebuilt)
    print(f"{wrong} of {len(TEXT)} characters differ from the original ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
