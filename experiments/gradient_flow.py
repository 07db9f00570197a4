"""Gradient flow through time: why vanilla RNNs forget, measured.

1. The course's scalar RNN, h_t = tanh(w_xh x_t + w_hh h_{t-1} + b) with w_hh = 3,
   w_xh = 2, b = 1: h_1..h_3 and dh_3/dh_1 by jax.grad next to the closed form
   w_hh^2 tanh'(a_2) tanh'(a_3), and how that factor changes with w_hh.
2. For RNN, LSTM (torch's initialisation and forget-gate bias 1) and GRU, untrained
   and trained on a recall task (see a symbol, wait k steps, name it), the norm of
   dL/dh_t against the distance T - t, averaged over a batch: one log-scale plot.
   And recall accuracy against k. (experiments/long_memory.py shows the same on the
   adding problem, the task the literature uses.)
3. Gradient clipping where it decides the outcome: a tanh RNN whose gradients explode
   under plain SGD, with and without optax.clip_by_global_norm.

    python experiments/gradient_flow.py [--out runs/gradient_flow] [--smoke]

Writes gradient_norms.png, recall_accuracy.png, clipping.png and results.json.
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import jaxrnn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# -- config ----------------------------------------------------------------------------------
W_HH, W_XH, B, X = 3.0, 2.0, 1.0, (0.5, -0.5, 0.25)  # the scalar toy; X is the input sequence x_1..x_3
CELLS = ("rnn", "lstm", "lstm-fb1", "gru")  # lstm-fb1: forget-gate bias 1 (jaxrnn.init.forget_gate_bias)
SYMBOLS, HIDDEN, BATCH = 4, 32, 64
DELAYS = (5, 10, 20, 40)  # k: steps between the symbol and the question
# Adam at 1e-3 for 4,000 steps lets every gated cell learn; at 5e-3 (an earlier setting) the LSTM never did.
TRAIN_DELAY, STEPS, LR, SEED = 20, 4000, 1e-3, 0
# The clipping demo: a tanh RNN whose recurrent weights start doubled, plain SGD at a rate that makes its
# gradients explode now and then, on the recall task with delay 10.
CLIP_SCALE, CLIP_LR, CLIP_DELAY, CLIP_STEPS = 2.0, 0.5, 10, 1000
DISTANCES = (1, 10, 50, 100)  # reported in results.json
GRAD_LENGTH = 101  # sequence length for the gradient-norm measurement (distance up to 100)


# -- 1. the scalar toy ----------------------------------------------------------------------------
def scalar_toy(w_hh: float) -> dict:
    def run(h1, xs):
        h, hs = h1, [h1]
        for x in xs:
            h = jnp.tanh(W_XH * x + w_hh * h + B)
            hs.append(h)
        return hs

    h1 = jnp.tanh(W_XH * X[0] + w_hh * 0.0 + B)
    hs = run(h1, X[1:])
    autodiff = float(jax.grad(lambda h: run(h, X[1:])[-1])(h1))
    closed = w_hh * (1 - float(hs[1]) ** 2) * w_hh * (1 - float(hs[2]) ** 2)  # w_hh tanh'(a_2) * w_hh tanh'(a_3)
    return {"w_hh": w_hh, "h": [float(h) for h in hs], "dh3_dh1_grad": autodiff, "dh3_dh1_closed_form": closed}


# -- 2. recall task and gradient norms ---------------------------------------------------------------
def recall_batch(key, batch: int, delay: int):
    """A symbol at t=0, `delay` blank steps, then a query token; the answer is the symbol."""
    symbols = jax.random.randint(key, (batch,), 0, SYMBOLS)
    blank, query = SYMBOLS, SYMBOLS + 1
    ids = jnp.full((batch, delay + 2), blank).at[:, 0].set(symbols).at[:, -1].set(query)
    return ids, symbols


def make_model(cell: str) -> jaxrnn.Classifier:
    kind = cell.split("-")[0]
    return jaxrnn.Classifier(vocab_size=SYMBOLS + 2, hidden_size=HIDDEN, cell=kind, num_classes=SYMBOLS)


def init_params(cell: str, key) -> dict:
    """torch's initialisation; for ``lstm-fb1``, then the forget-gate bias set to 1."""
    params = make_model(cell).init(key, recall_batch(key, 2, 3)[0])["params"]
    if cell == "lstm-fb1":
        params["rnn"] = jaxrnn.init.forget_gate_bias(params["rnn"], 1.0)
    return params


def train_recall(cell: str, delay: int, steps: int, key) -> tuple[dict, float]:
    model = make_model(cell)
    init_key, data_key = jax.random.split(key)
    params = init_params(cell, init_key)
    optimizer = jaxrnn.make_optimizer("adam", LR, clip_norm=1.0)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state = jaxrnn.init_train_state(params, optimizer)
    for i in range(steps):
        ids, symbols = recall_batch(jax.random.fold_in(data_key, i), BATCH, delay)
        state, _, _ = step(state, {"inputs": ids, "targets": symbols}, None)
    ids, symbols = recall_batch(jax.random.fold_in(data_key, 10**6), 512, delay)
    logits = model.apply({"params": state.params}, ids)
    return state.params, float(jnp.mean(jnp.argmax(logits, -1) == symbols))


def hidden_gradient_norms(cell: str, params: dict, length: int, key) -> np.ndarray:
    """||dL/dh_t||, averaged over a batch, by distance d = T - 1 - t from the loss at the last step
    (jaxrnn.inspect.hidden_state_gradients on the recall task's embedded inputs and head)."""
    ids, symbols = recall_batch(key, 256, length - 2)
    x = params["embed"]["embedding"][ids] if "embed" in params else jax.nn.one_hot(ids, SYMBOLS + 2)

    def loss(h_last):
        logits = h_last @ params["fc"]["kernel"] + params["fc"]["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, symbols).mean()

    grads = jaxrnn.inspect.hidden_state_gradients(cell, params["rnn"], x, loss)  # (L, N, H)
    return jaxrnn.inspect.gradient_norms_by_distance(grads)


# -- 3. clipping -------------------------------------------------------------------------------------
def clipping_curves(steps: int, key) -> dict:
    """The recall task (delay CLIP_DELAY) for a tanh RNN with its recurrent weights scaled by CLIP_SCALE, plain SGD
    at CLIP_LR, with and without clipping by global norm 1: each run's losses and final recall accuracy."""
    model = make_model("rnn")
    params = init_params("rnn", key)
    params["rnn"]["weight_hh_l0"] = params["rnn"]["weight_hh_l0"] * CLIP_SCALE
    runs = {}
    for name, clip in (("no clipping", None), ("clip_by_global_norm(1.0)", 1.0)):
        optimizer = jaxrnn.make_optimizer("sgd", CLIP_LR, clip_norm=clip)
        step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
        state, losses = jaxrnn.init_train_state(params, optimizer), []
        for i in range(steps):
            batch_ids, symbols = recall_batch(jax.random.fold_in(key, i), BATCH, CLIP_DELAY)
            state, loss, _ = step(state, {"inputs": batch_ids, "targets": symbols}, None)
            losses.append(float(loss))
        ids, symbols = recall_batch(jax.random.fold_in(key, 10**6), 512, CLIP_DELAY)
        logits = model.apply({"params": state.params}, ids)
        runs[name] = {"losses": losses, "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == symbols))}
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gradient_flow")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per recall model")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--smoke", action="store_true", help="tiny budget, to check that everything runs")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = 5 if args.smoke else args.steps
    delays = (TRAIN_DELAY,) if args.smoke else DELAYS  # smoke: the delay the models were trained at, no other
    grad_length = 21 if args.smoke else GRAD_LENGTH
    key = jax.random.key(args.seed)
    results: dict = {}

    print(f"1. scalar RNN h_t = tanh(2 x_t + w_hh h_(t-1) + 1), x = {X}")
    results["scalar_toy"] = [scalar_toy(w) for w in (0.5, 1.0, 2.0, W_HH, 5.0)]
    for r in results["scalar_toy"]:
        hs = ", ".join(f"{h:+.4f}" for h in r["h"])
        print(
            f"   w_hh={r['w_hh']:<4} h_1..h_3 = {hs}   dh_3/dh_1: jax.grad {r['dh3_dh1_grad']:+.6f}, "
            f"closed form {r['dh3_dh1_closed_form']:+.6f}"
        )

    print(f"2. ||dL/dh_t|| against distance T - t (recall task; trained with delay {TRAIN_DELAY}, {steps} steps)")
    norms, accuracy = {}, {}
    for i, cell in enumerate(CELLS):
        untrained = init_params(cell, jax.random.fold_in(key, i))
        trained, _ = train_recall(cell, TRAIN_DELAY, steps, jax.random.fold_in(key, 100 + i))
        for tag, params in (("untrained", untrained), ("trained", trained)):
            by_distance = hidden_gradient_norms(
                cell.split("-")[0], params, grad_length, jax.random.fold_in(key, 200 + i)
            )
            norms[f"{cell} {tag}"] = by_distance
            shown = ", ".join(f"d={d}: {by_distance[d]:.2e}" for d in DISTANCES if d < len(by_distance))
            print(f"   {cell:4s} {tag:9s} {shown}")
        accuracy[cell] = {k: train_recall(cell, k, steps, jax.random.fold_in(key, 300 + k))[1] for k in delays}
        print(
            f"   {cell:4s} recall accuracy by delay k: "
            + ", ".join(f"k={k}: {a:.2f}" for k, a in accuracy[cell].items())
        )
    results["gradient_norms"] = {
        name: {str(d): float(v[d]) for d in DISTANCES if d < len(v)} for name, v in norms.items()
    }
    results["recall_accuracy"] = {cell: {str(k): a for k, a in acc.items()} for cell, acc in accuracy.items()}

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in norms.items():
        ax.semilogy(np.arange(len(v)), v, "-" if "trained" == name.split()[1] else "--", label=name)
    ax.set_xlabel("distance T - t (steps before the loss)")
    ax.set_ylabel("mean ||dL/dh_t||")
    ax.set_title("Gradient flow through time (recall task)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "gradient_norms.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for cell, acc in accuracy.items():
        ax.plot(list(acc), list(acc.values()), "o-", label=cell)
    ax.axhline(1 / SYMBOLS, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("delay k")
    ax.set_ylabel("recall accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "recall_accuracy.png", dpi=120)
    plt.close(fig)

    print(
        f"3. gradient clipping: a tanh RNN with recurrent weights x{CLIP_SCALE}, plain SGD lr {CLIP_LR}, recall with "
        f"delay {CLIP_DELAY}"
    )
    clip_steps = steps if args.smoke else CLIP_STEPS
    runs = clipping_curves(clip_steps, jax.random.fold_in(key, 400))
    results["clipping"] = {
        name: {"first": r["losses"][0], "max": max(r["losses"]), "last": r["losses"][-1], "accuracy": r["accuracy"]}
        for name, r in runs.items()
    }
    for name, r in results["clipping"].items():
        print(
            f"   {name:26s} loss first {r['first']:.3f}, max {r['max']:.3f}, last {r['last']:.3f}; "
            f"recall accuracy {r['accuracy']:.2f}"
        )
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in runs.items():
        ax.plot(r["losses"], label=f"{name} (accuracy {r['accuracy']:.2f})")
    ax.axhline(np.log(SYMBOLS), color="gray", linestyle=":", label="chance (ln 4)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "clipping.png", dpi=120)
    plt.close(fig)

    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {out}/gradient_norms.png, recall_accuracy.png, clipping.png, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
