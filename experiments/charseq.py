"""Character sequence: learn to predict each next character of one sentence.

The course's first RNN exercise: the sentence " if you want you" as one-hot
characters, an RNN, a linear layer over the characters, trained until the
argmax prediction at every step reproduces the sentence shifted by one.

    python experiments/charseq.py
    python experiments/charseq.py --text " seoul is the capital of south korea" --cell lstm
    python experiments/charseq.py --compare-torch     # the same model in torch, same init, SGD, side by side
    python experiments/charseq.py --api nnx           # the same exercise in Flax NNX (jaxrnn.nnx, nnx.Optimizer)
"""

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxrnn

# -- config (every value can be overridden on the command line) -----------------------------
TEXT = " if you want you"
CELL = "rnn"  # rnn | lstm | gru
HIDDEN = 32
LAYERS = 1
STEPS = 300  # at most; training stops at the first exact reproduction
LR = 0.1
OPTIMIZER = "adam"
SEED = 0
LOG_EVERY = 10
API = "linen"  # linen (jaxrnn.SequenceModel, optax) | nnx (jaxrnn.nnx layers, nnx.Optimizer)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", default=TEXT, help="the sentence to learn")
    p.add_argument("--cell", default=CELL, choices=["rnn", "lstm", "gru"])
    p.add_argument("--hidden", type=int, default=HIDDEN)
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--steps", type=int, default=STEPS, help="maximum training steps")
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--optimizer", default=OPTIMIZER, choices=["adam", "sgd"])
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--log-every", type=int, default=LOG_EVERY)
    p.add_argument("--api", default=API, choices=["linen", "nnx"], help="Flax API of the model")
    p.add_argument("--keep-going", action="store_true", help="train all --steps even after an exact reproduction")
    p.add_argument(
        "--compare-torch",
        action="store_true",
        help="also train the torch twin from the same initial weights (SGD) and print both loss curves",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()

    # -- data: x is the sentence without its last character, y without its first ---------------
    vocab = jaxrnn.Vocab.from_chars(args.text)
    ids = vocab.encode(args.text)
    if len(ids) < 2:
        sys.exit("--text needs at least two characters")
    batch = {"inputs": jnp.asarray(ids[None, :-1]), "targets": jnp.asarray(ids[None, 1:])}
    target = vocab.decode(ids[1:])
    print(f"text {args.text!r}: {len(ids)} characters, vocabulary of {len(vocab)} {''.join(vocab.tokens)!r}")
    if args.api == "nnx":
        if args.compare_torch:
            sys.exit("--compare-torch trains the linen model; run it without --api nnx")
        return train_nnx(args, vocab, ids, batch, target, start)

    # -- model: one-hot -> RNN/LSTM/GRU -> linear ---------------------------------------------------
    model = jaxrnn.SequenceModel(vocab_size=len(vocab), hidden_size=args.hidden, cell=args.cell, num_layers=args.layers)
    params = model.init(jax.random.key(args.seed), batch["inputs"])["params"]
    if args.compare_torch:
        return compare_with_torch(args, model, params, batch, vocab)

    optimizer = jaxrnn.make_optimizer(args.optimizer, args.lr)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state = jaxrnn.init_train_state(params, optimizer)

    def prediction(aux) -> str:
        return vocab.decode(np.argmax(np.asarray(aux["logits"][0]), axis=-1))

    def log(i, loss, aux):
        print(f"step {i:4d}  loss {loss:.4f}  prediction {prediction(aux)!r}")

    reproduced = []

    def stop(i, loss, aux):
        if prediction(aux) == target and not reproduced:
            reproduced.append(i)
            log(i, loss, aux)
            return not args.keep_going
        return False

    # The prediction checked at step i comes from the parameters before update i.
    state, losses = jaxrnn.fit(
        step, state, iter(lambda: batch, None), num_steps=args.steps, log_every=args.log_every, log=log, stop=stop
    )
    logits, _ = model.apply({"params": state.params}, batch["inputs"])
    final = vocab.decode(np.argmax(np.asarray(logits[0]), axis=-1))
    generated = vocab.decode(jaxrnn.generate(model, {"params": state.params}, ids[:1], len(ids) - 1, greedy=True))
    report(args, final, target, generated, reproduced[0] if reproduced else None, len(losses), start)
    return 0


def report(args, final: str, target: str, generated: str, reproduced: int | None, steps: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    print(f"final prediction  {final!r}")
    print(f"target            {target!r}")
    print(f"greedy generation from {args.text[0]!r}: {args.text[0] + generated!r}")
    if reproduced:
        print(f"reproduced the text exactly at step {reproduced} ({elapsed:.1f} s including compilation)")
    else:
        print(f"not reproduced after {steps} steps ({elapsed:.1f} s); try more --steps")


def train_nnx(args, vocab, ids, batch, target, start) -> int:
    """The same exercise in Flax NNX: jaxrnn.nnx's layer, nnx.Linear, nnx.Optimizer, an nnx.jit step."""
    from flax import nnx

    import jaxrnn.nnx

    class CharModel(nnx.Module):
        """one-hot ids (N, L) -> RNN/LSTM/GRU -> linear: logits (N, L, vocab), final state."""

        def __init__(self, rngs: nnx.Rngs):
            layer = {"rnn": jaxrnn.nnx.RNN, "lstm": jaxrnn.nnx.LSTM, "gru": jaxrnn.nnx.GRU}[args.cell]
            self.rnn = layer(len(vocab), args.hidden, num_layers=args.layers, batch_first=True, rngs=rngs)
            self.fc = nnx.Linear(args.hidden, len(vocab), rngs=rngs)

        def __call__(self, ids, hx=None):
            out, h_n = self.rnn(jax.nn.one_hot(ids, len(vocab)), hx)
            return self.fc(out), h_n

    model = CharModel(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, jaxrnn.make_optimizer(args.optimizer, args.lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, inputs, targets):
        def loss_fn(model):
            logits, _ = model(inputs)
            return jaxrnn.masked_cross_entropy(logits, targets), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, logits

    def prediction(logits) -> str:
        return vocab.decode(np.argmax(np.asarray(logits[0]), axis=-1))

    reproduced = None
    for i in range(1, args.steps + 1):
        # The prediction checked at step i comes from the parameters before update i, as in the linen run.
        loss, logits = train_step(model, optimizer, batch["inputs"], batch["targets"])
        if i == 1 or i % args.log_every == 0 or (prediction(logits) == target and reproduced is None):
            print(f"step {i:4d}  loss {float(loss):.4f}  prediction {prediction(logits)!r}")
        if prediction(logits) == target and reproduced is None:
            reproduced = i
            if not args.keep_going:
                break

    @nnx.jit
    def greedy(model, first):
        """Greedy generation in one compiled call: each prediction is fed back with the carried state."""
        logits, state = model(first)
        token = jnp.argmax(logits[:, -1:], axis=-1)

        def step(carry, _):
            token, state = carry
            logits, state = model(token, state)
            return (jnp.argmax(logits[:, -1:], axis=-1), state), token[0, 0]

        _, tokens = jax.lax.scan(step, (token, state), length=len(ids) - 1)
        return tokens

    final = prediction(nnx.jit(lambda model, inputs: model(inputs)[0])(model, batch["inputs"]))
    generated = vocab.decode(np.asarray(greedy(model, jnp.asarray(ids[None, :1]))).tolist())
    report(args, final, target, generated, reproduced, i, start)
    return 0


def compare_with_torch(args, model, params, batch, vocab) -> int:
    """Trains jaxrnn and its torch twin from identical weights with plain SGD; prints both loss curves."""
    try:
        import torch
    except ImportError:
        sys.exit("--compare-torch needs torch: pip install 'jaxrnn[interop]'")
    import interop

    class TorchTwin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn_class = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[args.cell]
            self.rnn = rnn_class(len(vocab), args.hidden, num_layers=args.layers, batch_first=True)
            self.fc = torch.nn.Linear(args.hidden, len(vocab))

        def forward(self, ids):
            out, _ = self.rnn(torch.nn.functional.one_hot(ids, len(vocab)).float())
            return self.fc(out)

    torch.manual_seed(args.seed)
    twin = TorchTwin()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in interop.to_state_dict({"params": params}).items()})
    torch_opt = torch.optim.SGD(twin.parameters(), lr=args.lr)
    x, y = torch.from_numpy(np.asarray(batch["inputs"])).long(), torch.from_numpy(np.asarray(batch["targets"])).long()

    optimizer = jaxrnn.make_optimizer("sgd", args.lr)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state = jaxrnn.init_train_state(params, optimizer)

    print(f"SGD lr={args.lr}, {args.steps} steps, both from the same initial weights")
    print(f"{'step':>5} {'jaxrnn loss':>14} {'torch loss':>14} {'|diff|':>10}")
    worst = 0.0
    for i in range(1, args.steps + 1):
        state, loss, _ = step(state, batch, None)
        torch_opt.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(twin(x).reshape(-1, len(vocab)), y.reshape(-1))
        torch_loss.backward()
        torch_opt.step()
        diff = abs(float(loss) - torch_loss.item())
        worst = max(worst, diff)
        if i == 1 or i % args.log_every == 0 or i == args.steps:
            print(f"{i:5d} {float(loss):14.7f} {torch_loss.item():14.7f} {diff:10.2e}")
    print(f"largest loss difference over {args.steps} steps: {worst:.2e}")
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
