"""hihello: the course's smallest sequence task.

Vocabulary h, i, e, l, o; input "hihell", target "ihello": at every step
predict the next character. One-hot input, an RNN, a linear layer.

    python experiments/hihello.py [--cell rnn|lstm|gru] [--steps N]
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config ----------------------------------------------------------------------------------
INPUT, TARGET = "hihell", "ihello"
CELL, HIDDEN, STEPS, LR, SEED = "rnn", 8, 100, 0.1, 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", default=CELL, choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)

    vocab = jaxrnn.Vocab(tuple("hielo"))  # the course's own order: h=0, i=1, e=2, l=3, o=4
    batch = {"inputs": jnp.asarray(vocab.encode(INPUT)[None]), "targets": jnp.asarray(vocab.encode(TARGET)[None])}
    print(f"x = {INPUT!r} -> ids {vocab.encode(INPUT).tolist()}, y = {TARGET!r} -> ids {vocab.encode(TARGET).tolist()}")

    model = jaxrnn.SequenceModel(vocab_size=len(vocab), hidden_size=args.hidden, cell=args.cell)
    params = model.init(jax.random.key(args.seed), batch["inputs"])["params"]
    optimizer = jaxrnn.make_optimizer("adam", args.lr)
    state = jaxrnn.init_train_state(params, optimizer)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)

    for i in range(1, args.steps + 1):
        state, loss, aux = step(state, batch, None)
        guess = vocab.decode(np.argmax(np.asarray(aux["logits"][0]), -1))
        if i == 1 or i % 10 == 0 or guess == TARGET:
            print(f"step {i:3d}  loss {float(loss):.4f}  predicted {guess!r}")
        if guess == TARGET:
            print(f"learned 'hihell' -> 'ihello' at step {i}")
            return 0
    print(f"not learned in {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
