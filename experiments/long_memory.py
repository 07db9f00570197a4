"""Long memory, as the papers show it: the adding problem, where gates (or an identity start) carry the gradient.

Each sequence has T steps of two inputs: a value uniform in [0, 1] and a marker that
is 1 at exactly two steps, one in each half (Arjovsky, Shah & Bengio 2016; the task is
Hochreiter & Schmidhuber's 1997). The target is the sum of the two marked values.
Predicting 1 always gives MSE 1/6 = 0.167, the baseline; MSE 0.01 counts as solved.

Cells, all with hidden size 128 and a linear head on the last output, trained on the
same budget of fresh sequences with Adam (lr 1e-3) and gradient clipping by global norm 1:
  rnn        tanh RNN, torch's initialisation
  irnn       ReLU RNN with Le, Jaitly & Hinton's (2015) initialisation (jaxrnn.init.irnn:
             recurrent weights the identity, biases zero, input weights N(0, 0.001^2))
  lstm       torch's initialisation
  lstm-fb1   forget-gate bias 1 (jaxrnn.init.forget_gate_bias; Gers et al. 2000)
  gru        torch's initialisation

Then, for each cell at the longest T it solved (else the longest T), the norm of
dL/dh_t against the distance from the loss, trained and untrained
(jaxrnn.inspect.hidden_state_gradients).

    python experiments/long_memory.py [--lengths 100 200] [--steps 10000] [--out DIR] [--smoke]

Writes curves-T{T}.png (test MSE against sequences seen), gradient_norms.png and
results.json to --out (default experiments/results/long_memory).
"""

import argparse
import json
import pathlib
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from tqdm import tqdm

import jaxrnn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# -- config ----------------------------------------------------------------------------------
LENGTHS = (100, 200)
CELLS = ("rnn", "irnn", "lstm", "lstm-fb1", "gru")
HIDDEN, BATCH, STEPS = 128, 50, 10_000  # 10,000 steps of 50: a budget of 500,000 sequences per run
LR, CLIP = 1e-3, 1.0
EVAL_EVERY, TEST_SIZE = 250, 2000
SOLVED_MSE, BASELINE_MSE = 0.01, 1 / 6
DISTANCES = (1, 10, 50, 100, 199)  # reported in results.json (those < T)
SEED = 0


def adding_problem(key: jax.Array, batch: int, length: int) -> tuple[jax.Array, jax.Array]:
    """``x`` ``(batch, length, 2)`` (value, marker) and the target ``(batch,)``: the sum of the two marked values,
    one marker in each half of the sequence."""
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (batch, length))
    first = jax.random.randint(k_first, (batch,), 0, length // 2)
    second = jax.random.randint(k_second, (batch,), length // 2, length)
    rows = jnp.arange(batch)
    markers = jnp.zeros((batch, length)).at[rows, first].set(1.0).at[rows, second].set(1.0)
    return jnp.stack([values, markers], axis=-1), values[rows, first] + values[rows, second]


def layer_of(cell: str) -> tuple[str, str]:
    """A name of CELLS -> (jaxrnn layer kind, nonlinearity): ``irnn`` is a ReLU ``rnn``, ``lstm-fb1`` an ``lstm``."""
    return ("rnn", "relu") if cell == "irnn" else (cell.split("-")[0], "tanh")


class Adder(nn.Module):
    """A recurrent layer and a linear head on its last output: ``(N, T, 2) -> (N,)``."""

    cell: str
    hidden_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kind, nonlinearity = layer_of(self.cell)
        extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
        layer = jaxrnn.recurrent_layer(
            kind, input_size=2, hidden_size=self.hidden_size, batch_first=True, name="rnn", **extra
        )
        out, _ = layer(x)
        return nn.Dense(1, name="fc")(out[:, -1])[:, 0]


def init_params(cell: str, hidden: int, length: int, key: jax.Array) -> dict:
    """torch's initialisation, then the cell's own: IRNN's, or the forget-gate bias."""
    params = Adder(cell, hidden).init(key, jnp.zeros((1, length, 2)))["params"]
    if cell == "irnn":
        params["rnn"] = jaxrnn.init.irnn(params["rnn"], jax.random.fold_in(key, 1))
    if cell == "lstm-fb1":
        params["rnn"] = jaxrnn.init.forget_gate_bias(params["rnn"], 1.0)
    return params


def train(cell: str, length: int, steps: int, hidden: int, key: jax.Array, lr: float = LR) -> dict:
    """Trains one cell at one length; returns the test-MSE curve, the trained and initial params, the time."""
    model = Adder(cell, hidden)
    init_key, data_key = jax.random.split(key)
    params = init_params(cell, hidden, length, init_key)
    optimizer = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(lr))
    test_x, test_y = adding_problem(jax.random.key(10_000 + length), TEST_SIZE, length)  # the same for every cell

    def mse(p: dict, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

    @jax.jit
    def block(p: dict, opt_state: optax.OptState, first: jax.Array) -> tuple:
        def step(carry: tuple, i: jax.Array) -> tuple:
            p, opt_state = carry
            x, y = adding_problem(jax.random.fold_in(data_key, i), BATCH, length)
            loss, grads = jax.value_and_grad(mse)(p, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        (p, opt_state), losses = jax.lax.scan(step, (p, opt_state), first + jnp.arange(EVAL_EVERY))
        return p, opt_state, losses.mean(), mse(p, test_x, test_y)

    trained, opt_state = params, optimizer.init(params)
    curve = [(0, float(mse(params, test_x, test_y)))]
    start = time.perf_counter()
    blocks = tqdm(range(steps // EVAL_EVERY), desc=f"{cell} T={length}", disable=None, file=sys.stdout, leave=False)
    for b in blocks:
        trained, opt_state, _, test_mse = block(trained, opt_state, jnp.asarray(b * EVAL_EVERY))
        curve.append(((b + 1) * EVAL_EVERY * BATCH, float(test_mse)))
        blocks.set_postfix(test_mse=f"{float(test_mse):.4f}")
    seconds = time.perf_counter() - start
    reached = next((seen for seen, value in curve if value < SOLVED_MSE), None)
    return {"curve": curve, "seconds": seconds, "sequences_to_solve": reached, "params": trained, "init": params}


def gradient_norms(cell: str, params: dict, length: int, key: jax.Array) -> np.ndarray:
    """Mean ``||dL/dh_t||`` over 256 sequences, indexed by the distance ``T - 1 - t`` from the loss."""
    x, y = adding_problem(key, 256, length)
    head = params["fc"]

    def loss(h_last: jax.Array) -> jax.Array:
        return jnp.mean((h_last @ head["kernel"][:, 0] + head["bias"][0] - y) ** 2)

    kind, nonlinearity = layer_of(cell)
    grads = jaxrnn.inspect.hidden_state_gradients(kind, params["rnn"], x, loss, nonlinearity)  # (T, N, H)
    return jaxrnn.inspect.gradient_norms_by_distance(grads)


def reported(entry: dict) -> dict:
    """A gradient-norm curve as results.json keeps it: its T, whether solved, and the norm at DISTANCES."""
    v = entry["by_distance"]
    return {"T": entry["T"], "solved": entry["solved"], **{str(d): float(v[d]) for d in DISTANCES if d < len(v)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps of {BATCH} sequences per run")
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--lr", type=float, default=LR, help="Adam's learning rate, the same for every cell")
    parser.add_argument("--out", default="experiments/results/long_memory")
    parser.add_argument("--smoke", action="store_true", help="T=20, 250 steps, hidden 16, IRNN and LSTM-fb1 only")
    args = parser.parse_args(argv)
    lengths, steps, hidden = ([20], EVAL_EVERY, 16) if args.smoke else (args.lengths, args.steps, HIDDEN)
    if args.smoke:
        args.cells = [c for c in args.cells if c in ("irnn", "lstm-fb1")]  # both initialisations, the fewest compiles
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    print(
        f"adding problem: hidden {hidden}, batch {BATCH}, {steps} steps ({steps * BATCH:,} sequences) per run, "
        f"Adam lr {args.lr}, clip {CLIP}; baseline MSE {BASELINE_MSE:.3f}, solved below {SOLVED_MSE}"
    )
    runs: dict[tuple[str, int], dict] = {}
    for length in lengths:
        for i, cell in enumerate(args.cells):
            run = train(cell, length, steps, hidden, jax.random.fold_in(key, i), args.lr)
            runs[(cell, length)] = run
            reached = run["sequences_to_solve"]
            print(
                f"T={length:<4} {cell:9s} final test MSE {run['curve'][-1][1]:.4f}   "
                f"{'solved after ' + format(reached, ',') + ' sequences' if reached else 'not solved within budget'}"
                f"   ({run['seconds']:.0f} s)",
                flush=True,
            )

    for length in lengths:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for cell in args.cells:
            seen, values = zip(*runs[(cell, length)]["curve"][1:])
            ax.semilogy(seen, values, label=cell)
        ax.axhline(BASELINE_MSE, color="gray", linestyle="--", label="predict 1 (MSE 0.167)")
        ax.axhline(SOLVED_MSE, color="gray", linestyle=":", label="solved (MSE 0.01)")
        ax.set_xlabel("training sequences seen")
        ax.set_ylabel("test MSE")
        ax.set_title(f"Adding problem, T = {length}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        fig.savefig(out / f"curves-T{length}.png", dpi=120)
        plt.close(fig)

    norms = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, cell in enumerate(args.cells):
        solved = [length for length in lengths if runs[(cell, length)]["sequences_to_solve"]]
        length = max(solved) if solved else max(lengths)
        run = runs[(cell, length)]
        for tag, params in (("trained", run["params"]), ("untrained", run["init"])):
            v = gradient_norms(cell, params, length, jax.random.fold_in(key, 500 + i))
            norms[f"{cell} {tag}"] = {"T": length, "solved": bool(solved), "by_distance": v}
            style = "-" if tag == "trained" else ":"
            line = ax.semilogy(np.arange(len(v)), v, style, label=f"{cell} {tag} (T={length})")
            if tag == "trained":
                color = line[0].get_color()
            else:
                line[0].set_color(color)
    ax.set_xlabel("distance from the loss, T - 1 - t (steps)")
    ax.set_ylabel("mean ||dL/dh_t||")
    ax.set_title("Gradient reaching back through time (adding problem)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "gradient_norms.png", dpi=120)
    plt.close(fig)
    for name, entry in norms.items():
        v = entry["by_distance"]
        shown = ", ".join(f"d={d}: {v[d]:.1e}" for d in DISTANCES if d < len(v))
        print(f"||dL/dh_t|| {name:18s} T={entry['T']}: {shown}")

    results = {
        "config": {
            "hidden": hidden,
            "batch": BATCH,
            "steps": steps,
            "lr": args.lr,
            "clip": CLIP,
            "test_size": TEST_SIZE,
            "seed": args.seed,
            "solved_mse": SOLVED_MSE,
        },
        "runs": {
            f"{cell} T={length}": {
                "final_test_mse": run["curve"][-1][1],
                "sequences_to_solve": run["sequences_to_solve"],
                "seconds": run["seconds"],
                "curve": run["curve"],
            }
            for (cell, length), run in runs.items()
        },
        "gradient_norms": {name: reported(entry) for name, entry in norms.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/curves-T*.png, gradient_norms.png, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
