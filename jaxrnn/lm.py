"""Language-model training with truncated backpropagation through time (TBPTT).

The corpus is cut into ``batch_size`` contiguous streams; each step trains on
the next ``bptt`` tokens of every stream, starting from the hidden state the
previous chunk ended with (its gradient stopped: it arrives as data), and the
state is reset to zero at the start of every epoch. Evaluation runs the same
way over a whole split. :func:`train_language_model` adds the epoch loop,
the learning-rate schedule, checkpoints (atomic, every epoch and every
``checkpoint_every`` steps, with everything needed to resume bit-for-bit),
a progress bar with tokens/s, a loss-curve PNG and a JSON of metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxrnn.checkpoint import restore_training_state, save_training_state
from jaxrnn.data import bptt_batches, contiguous_streams, num_bptt_batches
from jaxrnn.models import SequenceModel
from jaxrnn.parallel import (
    check_batch_sizes,
    check_divisible,
    data_mesh,
    global_batch,
    process_slice,
    replicated,
    state_sharding,
)
from jaxrnn.train import TrainState, cross_entropy_loss, init_train_state, make_optimizer, train_update

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Everything that defines a language-model run (saved with its metrics)."""

    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 200
    embedding_size: int = 200
    dropout: float = 0.0
    tie_weights: bool = False
    optimizer: str = "sgd"
    lr: float = 1.0
    lr_decay: float = 0.5  # multiply the learning rate by this every epoch after `decay_after`
    decay_after: int = 4
    clip_norm: float | None = 5.0
    init_scale: float | None = 0.1  # U(-s, s) for every parameter (Zaremba et al.); None: library default
    epochs: int = 13
    batch_size: int = 20
    bptt: int = 20
    eval_batch_size: int = 10
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for smoke runs


def make_model(config: LMConfig, vocab_size: int) -> SequenceModel:
    return SequenceModel(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        cell=config.cell,
        num_layers=config.num_layers,
        embedding_size=config.embedding_size,
        dropout=config.dropout,
        tie_weights=config.tie_weights,
    )


def init_params(config: LMConfig, model: SequenceModel, key: Array) -> Any:
    init_key, uniform_key = jax.random.split(key)
    params = model.init(init_key, jnp.zeros((1, 1), jnp.int32))["params"]
    if config.init_scale is None:
        return params
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(uniform_key, len(leaves))
    s = config.init_scale
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, x.shape, x.dtype, -s, s) for k, x in zip(keys, leaves)])


def learning_rate_schedule(config: LMConfig, steps_per_epoch: int) -> optax.Schedule:
    """``lr`` for the first ``decay_after`` epochs, then times ``lr_decay`` per epoch."""

    def schedule(count: Array) -> Array:
        epoch = count // steps_per_epoch + 1
        return config.lr * config.lr_decay ** jnp.maximum(0, epoch - config.decay_after)

    return schedule


def make_tbptt_step(model: SequenceModel, optimizer: optax.GradientTransformation, mesh=None, carry=None):
    """jitted ``step(train_state, x, y, carry, rng) -> (train_state, loss, carry)`` for one chunk.

    With a ``mesh`` (and an example ``carry`` for its structure) the outputs keep
    their shardings: train state replicated, carried state split over ``data``.
    The loss is the mean over the global batch, so the compiler averages the
    gradients across devices.
    """
    update = train_update(cross_entropy_loss(model), optimizer)
    jit_options = {}
    if mesh is not None:
        jit_options["out_shardings"] = (replicated(mesh), replicated(mesh), state_sharding(mesh, carry))

    @partial(jax.jit, **jit_options)
    def step(state: TrainState, x: Array, y: Array, carry: Any, rng: Array):
        new_state, value, aux = update(state, {"inputs": x, "targets": y, "state": carry}, rng)
        return new_state, value, jax.lax.stop_gradient(aux["state"])  # logits stay inside the jit

    return step


def evaluate_stream(model: SequenceModel, params: Any, ids: np.ndarray, batch_size: int, bptt: int, mesh=None) -> float:
    """Mean cross-entropy per token (nats) over ``ids`` as ``batch_size`` streams, state carried across chunks.

    With a ``mesh`` the streams are split over its ``data`` axis.
    """
    loss_fn = cross_entropy_loss(model)
    mesh = mesh or data_mesh(1)
    check_divisible(batch_size, mesh, "eval_batch_size")

    @jax.jit
    def chunk_loss(params, x, y, carry):
        value, aux = loss_fn(params, {"inputs": x, "targets": y, "state": carry}, None)
        return value, aux["state"]

    streams = contiguous_streams(ids, batch_size)
    local = process_slice(batch_size)
    carry = jax.device_put(model.zero_state(batch_size), state_sharding(mesh, model.zero_state(batch_size)))
    total, count = 0.0, 0
    for x, y in bptt_batches(streams, bptt):
        value, carry = chunk_loss(params, global_batch(mesh, x[local]), global_batch(mesh, y[local]), carry)
        total += float(value) * y.size
        count += y.size
    return total / count


def _plot(history: list[dict], step_losses: list[float], path: pathlib.Path, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if step_losses:
        window = max(1, len(step_losses) // 200)
        smooth = np.convolve(step_losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, label="train (per step, smoothed)", alpha=0.8)
    if history:
        ax.plot([h["step"] for h in history], [h["valid_loss"] for h in history], "o-", label="validation (per epoch)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"cross-entropy (nats per {unit})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def train_language_model(
    config: LMConfig,
    vocab_size: int,
    train_ids: np.ndarray,
    valid_ids: np.ndarray,
    test_ids: np.ndarray | None,
    out_dir: str | pathlib.Path,
    *,
    resume: bool = False,
    checkpoint_every: int = 0,
    unit: str = "word",
    progress: bool = True,
    num_devices: int | None = 1,
) -> dict[str, Any]:
    """Trains a :class:`SequenceModel` with TBPTT; writes ``checkpoint.msgpack``, ``loss.png``, ``metrics.json``.

    With ``resume=True`` an existing checkpoint in ``out_dir`` is continued,
    giving the same parameters as an uninterrupted run (data order is fixed,
    dropout keys are derived from the step number, and the carried state and
    position within the epoch are saved). Returns the metrics dict.

    ``num_devices`` (None: all devices JAX sees, across hosts) trains
    data-parallel: the streams are split over a ``data`` mesh axis and must
    divide evenly. The result equals single-device training to float tolerance.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out_dir / "checkpoint.msgpack"
    model = make_model(config, vocab_size)
    mesh = check_batch_sizes(num_devices, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    local = process_slice(config.batch_size)
    streams = contiguous_streams(train_ids, config.batch_size)
    steps_per_epoch = num_bptt_batches(streams, config.bptt)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    optimizer = make_optimizer(
        config.optimizer, learning_rate_schedule(config, steps_per_epoch), clip_norm=config.clip_norm
    )
    step_fn = make_tbptt_step(model, optimizer, mesh, model.zero_state(config.batch_size))
    base_key = jax.random.key(config.seed)
    train_state = init_train_state(init_params(config, model, base_key), optimizer)
    saved = {
        "train": train_state,
        "carry": model.zero_state(config.batch_size),
        "epoch": jnp.int32(1),  # the epoch in progress
        "chunk": jnp.int32(0),  # chunks of it already done
        "step_losses": np.zeros(0, np.float32),
        "elapsed": np.float64(0.0),
    }
    history: list[dict] = []
    if resume and checkpoint_path.is_file():
        previous = json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").exists() else {}
        target = dict(saved, step_losses=np.zeros(int(previous.get("num_step_losses", 0)), np.float32))
        saved = restore_training_state(checkpoint_path, target)
        history = previous.get("history", [])
        print(f"resumed from {checkpoint_path}: epoch {int(saved['epoch'])}, chunk {int(saved['chunk'])}")
    train_state = jax.device_put(saved["train"], replicated(mesh))
    carry_sharding = state_sharding(mesh, saved["carry"])
    carry = jax.device_put(saved["carry"], carry_sharding)
    step_losses = list(np.asarray(saved["step_losses"]))
    elapsed_before = float(saved["elapsed"])

    writer = jax.process_index() == 0  # with several hosts, process 0 writes the files

    def save(epoch: int, chunk: int, elapsed: float) -> None:
        # The carried state is split across hosts: gather it (a collective, so every process calls this).
        full_carry = multihost_utils.process_allgather(carry, tiled=True) if jax.process_count() > 1 else carry
        if not writer:
            return
        state = {
            "train": train_state,
            "carry": full_carry,
            "epoch": jnp.int32(epoch),
            "chunk": jnp.int32(chunk),
            "step_losses": np.asarray(step_losses, np.float32),
            "elapsed": np.float64(elapsed),
        }
        save_training_state(checkpoint_path, state)
        record = {"history": history, "num_step_losses": len(step_losses)}
        tmp = out_dir / "history.json.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(out_dir / "history.json")

    start = time.perf_counter()
    tokens_per_step = config.batch_size * config.bptt
    for epoch in range(int(saved["epoch"]), config.epochs + 1):
        first_chunk = int(saved["chunk"]) if epoch == int(saved["epoch"]) else 0
        if first_chunk == 0:
            carry = jax.device_put(model.zero_state(config.batch_size), carry_sharding)
        bar = tqdm(total=steps_per_epoch, initial=first_chunk, disable=not progress, desc=f"epoch {epoch}")
        tick, tick_steps = time.perf_counter(), 0
        for chunk, (x, y) in enumerate(bptt_batches(streams, config.bptt)):
            if chunk >= steps_per_epoch:
                break
            if chunk < first_chunk:
                continue
            rng = jax.random.fold_in(base_key, int(train_state.step))
            x, y = global_batch(mesh, x[local]), global_batch(mesh, y[local])
            train_state, loss, carry = step_fn(train_state, x, y, carry, rng)
            step_losses.append(float(loss))
            bar.update(1)
            tick_steps += 1
            if tick_steps % 10 == 0:
                rate = tick_steps * tokens_per_step / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{step_losses[-1]:.3f}", tok_s=f"{rate:,.0f}")
            if checkpoint_every and (chunk + 1) % checkpoint_every == 0 and chunk + 1 < steps_per_epoch:
                save(epoch, chunk + 1, elapsed_before + time.perf_counter() - start)
        bar.close()
        valid_loss = evaluate_stream(model, train_state.params, valid_ids, config.eval_batch_size, config.bptt, mesh)
        epoch_losses = step_losses[-steps_per_epoch:]
        elapsed = elapsed_before + time.perf_counter() - start
        lr = float(learning_rate_schedule(config, steps_per_epoch)(jnp.int32((epoch - 1) * steps_per_epoch)))
        history.append(
            {
                "epoch": epoch,
                "step": int(train_state.step),
                "lr": lr,
                "train_loss": float(np.mean(epoch_losses)),
                "valid_loss": valid_loss,
                "elapsed_s": elapsed,
            }
        )
        print(
            f"epoch {epoch:3d}  lr {lr:.4g}  train {history[-1]['train_loss']:.4f}  valid {valid_loss:.4f} "
            f"(ppl {math.exp(valid_loss):.2f}, {valid_loss / math.log(2):.3f} bits)  {elapsed:.0f} s"
        )
        carry = jax.device_put(model.zero_state(config.batch_size), carry_sharding)
        save(epoch + 1, 0, elapsed)

    elapsed = elapsed_before + time.perf_counter() - start
    metrics: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "history": history,
        "valid_loss": history[-1]["valid_loss"] if history else None,
        "wall_time_s": elapsed,
        "train_tokens_per_s": len(step_losses) * tokens_per_step / elapsed if elapsed > 0 else None,
        "num_params": int(sum(x.size for x in jax.tree.leaves(train_state.params))),
    }
    if test_ids is not None:
        metrics["test_loss"] = evaluate_stream(
            model, train_state.params, test_ids, config.eval_batch_size, config.bptt, mesh
        )
    for split in ("valid", "test"):
        if metrics.get(f"{split}_loss") is not None:
            metrics[f"{split}_perplexity"] = math.exp(metrics[f"{split}_loss"])
            metrics[f"{split}_bits_per_{unit}"] = metrics[f"{split}_loss"] / math.log(2)
    if writer:
        _plot(history, step_losses, out_dir / "loss.png", unit)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics | {"params": train_state.params, "model": model}
