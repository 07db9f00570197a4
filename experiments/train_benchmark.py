"""Training-run benchmark: jaxrnn's language-model step against PyTorch's word_language_model loop.

Times whole training steps, not layers: for each model, jaxrnn trains with
``jaxrnn.lm.train_language_model``'s own loop (:func:`jaxrnn.lm.train_epoch`:
compiled blocks of ``block_size`` steps, as ``experiments/ptb.py`` and
``experiments/shakespeare.py`` train), and torch trains the way
pytorch/examples ``word_language_model/main.py`` does (``nn.Embedding``,
dropout, ``nn.LSTM``/``nn.GRU``, ``nn.Linear``, ``log_softmax`` + ``NLLLoss``,
the hidden state detached between chunks, ``clip_grad_norm_``, SGD in place
or an optimizer, ``loss.item()`` every step). Same sizes, same token stream
(random ids, so no corpus is needed), same hyper-parameters. The two loops
run in interleaved rounds (the order alternating) after warm-up, each round
``--steps`` consecutive steps; the table gives tokens/s (median and range over
rounds) and the ratio jaxrnn / torch.

    python experiments/train_benchmark.py                        # all four models
    python experiments/train_benchmark.py --models ptb-small --rounds 5 --out results.json
    python experiments/train_benchmark.py --profile              # where each step's time goes, per part
    python experiments/train_benchmark.py --isa avx2             # both frameworks held to AVX2

``--profile`` times the parts of one step separately, each as its own call
(jitted in JAX, with the tensors' gradients in torch), interleaved over
rounds: feeding the chunk, the embedding forward+backward, the recurrent
stack forward+backward, the output projection + softmax cross-entropy
forward+backward, gradient clipping, the optimizer update, and the whole
step as the loops above run it (10 consecutive steps, divided by 10). "rest" is the whole step minus the parts:
per-step Python and dispatch, and whatever a part costs only inside the
whole step (or saves there by fusion).
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from benchmark import add_isa_option, isa_summary  # the sibling scripts (this directory is on sys.path)
from ptb import CONFIGS as PTB_CONFIGS
from shakespeare import CONFIG as SHAKESPEARE_CONFIG

import jaxrnn
from jaxrnn import lm
from jaxrnn.data import contiguous_streams
from jaxrnn.kernels import cpu
from jaxrnn.lm import LMConfig
from jaxrnn.losses import linear_cross_entropy
from jaxrnn.parallel import check_batch_sizes, global_batch
from jaxrnn.train import clip_by_global_norm, make_optimizer

# -- config ----------------------------------------------------------------------------------
# The configurations of experiments/ptb.py (small, its GRU twin, small-tied) and experiments/shakespeare.py,
# imported from those scripts so the benchmark trains exactly what they train: (vocabulary size, config).
MODELS = {
    "ptb-small": (10_000, PTB_CONFIGS["small"]),
    "ptb-small-gru": (10_000, dataclasses.replace(PTB_CONFIGS["small"], cell="gru")),
    "ptb-small-tied": (10_000, PTB_CONFIGS["small-tied"]),
    "shakespeare": (65, SHAKESPEARE_CONFIG),
}
STEPS = 20  # training steps per timed round
ROUNDS = 7
WARMUP = 10  # untimed steps of each loop before the first round (compilation, allocator, threads)
SETTLE_S = 0.2  # pause before each round: torch's and XLA's idle worker threads spin for a while after work
WHOLE_STEPS = 10  # --profile: the whole step is timed over this many consecutive steps (one compiled block)
PART_REPEATS = 6  # --profile: calls of each part per round (the first warms up)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    p.add_argument("--steps", type=int, default=STEPS, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--warmup", type=int, default=WARMUP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write every round's timing and the table as JSON here")
    p.add_argument("--profile", action="store_true", help="time each part of the step instead of whole rounds")
    add_isa_option(p)
    return p.parse_args(argv)


def token_stream(vocab_size: int, config: LMConfig, steps: int, seed: int) -> np.ndarray:
    """Random ids, long enough for ``steps`` chunks of ``bptt`` tokens in each of ``batch_size`` streams."""
    length = config.batch_size * (config.bptt * steps + 2)
    return np.random.default_rng(seed).integers(0, vocab_size, length).astype(np.int32)


class JaxrnnLoop:
    """``jaxrnn.lm.train_language_model``'s training loop itself: :func:`jaxrnn.lm.train_epoch` runs the
    chunks in compiled blocks of ``config.block_size`` steps (the next block's chunk fed while one runs,
    the losses read back after each block)."""

    def __init__(self, vocab_size: int, config: LMConfig, ids: np.ndarray, steps_per_epoch: int):
        self.config = config
        self.model = lm.make_model(config, vocab_size)
        self.mesh = check_batch_sizes(1, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
        optimizer = make_optimizer(
            config.optimizer, lm.learning_rate_schedule(config, steps_per_epoch), clip_norm=config.clip_norm
        )
        self.key = jax.random.key(config.seed)
        self.block_fn = lm.make_train_block(self.model, optimizer, self.key)
        self.run_state, _ = lm.init_or_resume(config, self.model, optimizer)  # fresh from config.seed
        self.streams = contiguous_streams(ids, config.batch_size)
        self.chunks = (self.streams.shape[1] - 1) // config.bptt

    @property
    def losses(self) -> np.ndarray:
        return self.run_state["step_losses"]

    def run(self, steps: int) -> None:
        start = int(self.run_state["chunk"])
        if start + steps > self.chunks:
            raise ValueError(f"the token stream holds {self.chunks} chunks; asked for {start + steps}")
        self.run_state = lm.train_epoch(
            self.block_fn, self.run_state, self.streams, self.config, start + steps, self.mesh
        )


class TorchLoop:
    """pytorch/examples word_language_model: its RNNModel and the body of its ``train()``."""

    def __init__(self, vocab_size: int, config: LMConfig, ids: np.ndarray):
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        torch.set_num_threads(os.cpu_count())
        torch.manual_seed(config.seed)
        self.torch, self.config = torch, config

        class RNNModel(nn.Module):  # word_language_model/model.py, LSTM and GRU branches
            def __init__(self):
                super().__init__()
                self.drop = nn.Dropout(config.dropout)
                self.encoder = nn.Embedding(vocab_size, config.embedding_size)
                rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
                self.rnn = rnn(config.embedding_size, config.hidden_size, config.num_layers, dropout=config.dropout)
                self.decoder = nn.Linear(config.hidden_size, vocab_size)
                if config.tie_weights:
                    self.decoder.weight = self.encoder.weight
                nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
                nn.init.zeros_(self.decoder.bias)
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

            def forward(self, input, hidden):
                emb = self.drop(self.encoder(input))
                output, hidden = self.rnn(emb, hidden)
                decoded = self.decoder(self.drop(output)).view(-1, vocab_size)
                return F.log_softmax(decoded, dim=1), hidden

            def init_hidden(self, bsz):
                weight = next(self.parameters())
                h = weight.new_zeros(config.num_layers, bsz, config.hidden_size)
                return (h, h.clone()) if config.cell == "lstm" else h

        self.model = RNNModel().train()
        self.criterion = nn.NLLLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr) if config.optimizer == "adam" else None
        data = torch.from_numpy(ids.astype(np.int64))  # batchify: (nbatch, bsz), one stream per column
        nbatch = data.size(0) // config.batch_size
        self.data = data.narrow(0, 0, nbatch * config.batch_size).view(config.batch_size, -1).t().contiguous()
        self.hidden = self.model.init_hidden(config.batch_size)
        self.position = 0
        self.losses: list[float] = []

    def _repackage(self, h):
        return h.detach() if isinstance(h, self.torch.Tensor) else tuple(self._repackage(v) for v in h)

    def run(self, steps: int) -> None:
        bptt = self.config.bptt
        chunks = (len(self.data) - 1) // bptt
        for _ in range(steps):
            i = (self.position % chunks) * bptt
            self.position += 1
            data, targets = self.data[i : i + bptt], self.data[i + 1 : i + 1 + bptt].reshape(-1)
            if self.optimizer is not None:
                self.optimizer.zero_grad()
            else:
                self.model.zero_grad()
            self.hidden = self._repackage(self.hidden)
            output, self.hidden = self.model(data, self.hidden)
            loss = self.criterion(output, targets)
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
            if self.optimizer is not None:
                self.optimizer.step()
            else:
                for p in self.model.parameters():
                    p.data.add_(p.grad, alpha=-self.config.lr)
            self.losses.append(loss.item())


def measure(name: str, args) -> dict:
    vocab_size, config = MODELS[name]
    steps_per_epoch = args.warmup + args.rounds * args.steps
    ids = token_stream(vocab_size, config, steps_per_epoch, args.seed)
    loops = {
        "jaxrnn": JaxrnnLoop(vocab_size, config, ids, steps_per_epoch),
        "torch": TorchLoop(vocab_size, config, ids),
    }
    for loop in loops.values():
        loop.run(args.warmup)
    seconds: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(args.rounds):
        order = list(loops) if r % 2 == 0 else list(reversed(loops))
        for framework in order:
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            loops[framework].run(args.steps)
            seconds[framework].append(time.perf_counter() - start)
    tokens = args.steps * config.batch_size * config.bptt
    rates = {k: [tokens / s for s in v] for k, v in seconds.items()}
    return {
        "model": name,
        "config": {"vocab_size": vocab_size, **{k: getattr(config, k) for k in ("cell", "num_layers", "hidden_size")}},
        "batch_size": config.batch_size,
        "bptt": config.bptt,
        "tokens_per_round": tokens,
        "seconds": seconds,
        "tokens_per_s": {k: statistics.median(v) for k, v in rates.items()},
        "range": {k: (min(v), max(v)) for k, v in rates.items()},
        "ratio": statistics.median(rates["jaxrnn"]) / statistics.median(rates["torch"]),
        "final_loss": {k: loop.losses[-1] for k, loop in loops.items()},
    }


def _median_ms(call, repeats: int) -> float:
    call()  # warm: compile, allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def jaxrnn_parts(loop: JaxrnnLoop, whole_steps: int) -> dict:
    """``{part: () -> None}``: each part of the jaxrnn step as its own jitted call, run to completion."""
    import optax

    config = loop.config
    params = jax.tree.map(jnp.copy, loop.run_state["train"].params)  # the loop donates its own
    carry = jax.tree.map(jnp.copy, loop.run_state["carry"])
    x_np, y_np = (a[0] for a in lm.chunk_block(loop.streams, config.bptt, 0, 1))
    x, y = global_batch(loop.mesh, x_np), global_batch(loop.mesh, y_np)
    layer = jaxrnn.recurrent_layer(  # the model's recurrent stack, alone (inter-layer dropout included)
        config.cell,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        batch_first=True,
        dropout=config.dropout,
    )
    dropout = {"deterministic": False, "rngs": {"dropout": loop.key}} if config.dropout else {}
    embedding = params["embed"]["embedding"]
    emb = embedding[x]
    out, _ = layer.apply({"params": params["rnn"]}, emb, carry, **dropout)
    head = (embedding.T, params["fc_bias"]) if config.tie_weights else (params["fc"]["kernel"], params["fc"]["bias"])

    @jax.jit
    def embed_grad(embedding, x, ct):
        return jax.vjp(lambda e: e[x], embedding)[1](ct)

    @jax.jit
    def rnn_grad(p, emb, carry, ct):
        (out, _), vjp = jax.vjp(lambda p, e: layer.apply({"params": p}, e, carry, **dropout), p, emb)
        return vjp((ct, jax.tree.map(jnp.zeros_like, carry)))

    @jax.jit
    def head_grad(head, out, y):  # the output layer and the loss, fused as SequenceModel(targets=) runs them
        return jax.value_and_grad(lambda head, out: linear_cross_entropy(out, *head, y), argnums=(0, 1))(head, out)

    clip = clip_by_global_norm(config.clip_norm)
    base = {"sgd": optax.sgd(config.lr), "adam": optax.adam(config.lr)}[config.optimizer]
    clip_fn = jax.jit(lambda g: clip.update(g, clip.init(g))[0])
    base_state = base.init(params)
    update_fn = jax.jit(lambda g, s, p: optax.apply_updates(p, base.update(g, s, p)[0]))
    ones = jax.tree.map(jnp.ones_like, params)

    return {
        "feed the chunk": lambda: jax.block_until_ready(global_batch(loop.mesh, x_np)),
        "embedding fwd+bwd": lambda: jax.block_until_ready(embed_grad(embedding, x, emb)),
        "recurrent stack fwd+bwd": lambda: jax.block_until_ready(rnn_grad(params["rnn"], emb, carry, out)),
        "projection + loss fwd+bwd": lambda: jax.block_until_ready(head_grad(head, out, y)),
        "clip gradients": lambda: jax.block_until_ready(clip_fn(ones)),
        "optimizer update": lambda: jax.block_until_ready(update_fn(ones, base_state, params)),
        "whole step": lambda: loop.run(whole_steps),
    }


def torch_parts(loop: TorchLoop) -> dict:
    """``{part: () -> None}``: each part of the torch step on its own, gradients included."""
    torch, config, model = loop.torch, loop.config, loop.model
    data, targets = loop.data[: config.bptt], loop.data[1 : 1 + config.bptt].reshape(-1)
    with torch.no_grad():
        emb = model.encoder(data)
        out, _ = model.rnn(emb, loop.hidden)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.ones_like(p)

    def embed():
        model.encoder(data).backward(emb)

    def rnn():
        e = emb.clone().requires_grad_()
        hidden = loop._repackage(loop.hidden)
        o, _ = model.rnn(e, hidden)
        o.backward(out)

    def head():
        o = out.clone().requires_grad_()
        logits = model.decoder(o).view(-1, model.decoder.out_features)
        loop.criterion(torch.nn.functional.log_softmax(logits, dim=1), targets).backward()

    def update():
        if loop.optimizer is not None:
            loop.optimizer.step()
        else:
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-1e-12)  # the in-place SGD's work, leaving the weights as they are

    return {
        "feed the chunk": lambda: (loop.data[: config.bptt], loop.data[1 : 1 + config.bptt].reshape(-1)),
        "embedding fwd+bwd": embed,
        "recurrent stack fwd+bwd": rnn,
        "projection + loss fwd+bwd": head,
        "clip gradients": lambda: torch.nn.utils.clip_grad_norm_(params, config.clip_norm),
        "optimizer update": update,
        "whole step": lambda: loop.run(WHOLE_STEPS),
    }


def profile(name: str, args) -> dict:
    vocab_size, config = MODELS[name]
    steps = args.warmup + args.rounds * PART_REPEATS * WHOLE_STEPS
    ids = token_stream(vocab_size, config, steps, args.seed)
    jl, tl = JaxrnnLoop(vocab_size, config, ids, steps), TorchLoop(vocab_size, config, ids)
    jl.run(args.warmup)
    tl.run(args.warmup)
    parts = {"jaxrnn": jaxrnn_parts(jl, WHOLE_STEPS), "torch": torch_parts(tl)}
    ms: dict[str, dict[str, list[float]]] = {k: {p: [] for p in v} for k, v in parts.items()}
    for r in range(args.rounds):
        for framework in ("jaxrnn", "torch") if r % 2 == 0 else ("torch", "jaxrnn"):
            time.sleep(SETTLE_S)
            for part, call in parts[framework].items():
                per_call = _median_ms(call, PART_REPEATS - 1)
                ms[framework][part].append(per_call / WHOLE_STEPS if part == "whole step" else per_call)
    table = {k: {p: statistics.median(v) for p, v in parts_ms.items()} for k, parts_ms in ms.items()}
    for row in table.values():
        row["rest (whole step - parts)"] = row["whole step"] - sum(v for p, v in row.items() if p != "whole step")
    return {"model": name, "ms": table}


def print_profile(rows: list[dict]) -> None:
    for r in rows:
        print(f"\n### {r['model']}: milliseconds per step, median\n")
        print("| part | jaxrnn ms | torch ms | jaxrnn / torch |")
        print("|---|---|---|---|")
        for part, j in r["ms"]["jaxrnn"].items():
            t = r["ms"]["torch"][part]
            ratio = f"{j / t:.2f}x" if t > 0.05 and j > 0 else "-"
            print(f"| {part} | {j:.2f} | {t:.2f} | {ratio} |")


def print_table(rows: list[dict]) -> None:
    print("| model | batch x bptt | jaxrnn tokens/s (range) | torch tokens/s (range) | jaxrnn / torch |")
    print("|---|---|---|---|---|")
    for r in rows:
        cells = [
            f"{r['tokens_per_s'][k]:,.0f} ({r['range'][k][0]:,.0f}-{r['range'][k][1]:,.0f})"
            for k in ("jaxrnn", "torch")
        ]
        print(f"| {r['model']} | {r['batch_size']} x {r['bptt']} | {cells[0]} | {cells[1]} | {r['ratio']:.2f}x |")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.isa:  # before torch is imported: its libraries read their switches once
        os.environ.update(cpu.isa_environment(args.isa))
    import torch

    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown --models {unknown}; choose from {list(MODELS)}")
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {isa_summary(have_torch=True)}"
    )
    print(f"machine: {machine}")
    print(f"{args.rounds} interleaved rounds of {args.steps} steps each, after {args.warmup} warm-up steps\n")
    rows = []
    if args.profile:
        rows = [profile(name, args) for name in names]
        print_profile(rows)
        write_json(args, {"machine": machine, "args": vars(args), "profile": rows})
        return 0
    for name in names:
        rows.append(measure(name, args))
        r = rows[-1]
        print(
            f"{name}: jaxrnn {r['tokens_per_s']['jaxrnn']:,.0f} tokens/s, torch {r['tokens_per_s']['torch']:,.0f}; "
            f"final losses {r['final_loss']['jaxrnn']:.3f} / {r['final_loss']['torch']:.3f}",
            flush=True,
        )
    print()
    print_table(rows)
    write_json(args, {"machine": machine, "args": vars(args), "rows": rows})
    return 0


def write_json(args, record: dict) -> None:
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
