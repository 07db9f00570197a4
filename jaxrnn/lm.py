"""Language-model training with truncated backpropagation through time (TBPTT), in small pieces.

The corpus is cut into ``batch_size`` contiguous streams; each step trains on
the next ``bptt`` tokens of every stream, starting from the hidden state the
previous chunk ended with (its gradient stopped: it arrives as data), and the
state is reset to zero at the start of every epoch. Evaluation runs the same
way over a whole split.

The pieces, which :func:`train_language_model` puts together and other loops can reuse:

- :func:`make_model`, :func:`init_params`, :func:`learning_rate_schedule`: what an :class:`LMConfig` defines;
- :func:`make_train_block`: one compiled call that runs a *block* of consecutive TBPTT steps
  (``lax.scan`` over the chunks, the carried state and the train state updated in place by buffer
  donation), so Python, dispatch and the per-step host sync leave the hot loop;
- :func:`block_bounds` and :func:`chunk_block`: how an epoch is cut into blocks, and their arrays;
- :func:`evaluate_stream`: mean loss over a split, also one compiled scan;
- :func:`init_or_resume`, :func:`save_checkpoint`: the run's state, saved atomically with everything
  needed to resume bit for bit;
- :func:`train_epoch`: one epoch of blocks, with a callback after each block;
- :func:`summarize`: the metrics dict (:func:`jaxrnn.plots.plot_loss_curve` draws the curve).

Progress bars (tqdm) and plots (matplotlib) are imported only by :func:`train_language_model`,
so ``import jaxrnn.lm`` needs neither.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from jaxrnn.checkpoint import restore_training_state, save_training_state
from jaxrnn.data import contiguous_streams, num_bptt_batches
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
from jaxrnn.train import TrainState, init_train_state, make_optimizer, train_update

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
    block_size: int = 10  # TBPTT steps per compiled call (make_train_block); results do not depend on it


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


def tbptt_loss(model: SequenceModel) -> Callable[[Any, Array, Array, Any, Array | None], tuple[Array, Any]]:
    """``loss(params, x, y, carry, rng) -> (mean cross-entropy, final state)`` for one chunk.

    ``x``, ``y`` ids ``(B, L)``; ``carry`` the state the previous chunk ended with; ``rng`` the dropout
    key (None: deterministic). The output layer and the loss run fused
    (:func:`jaxrnn.losses.linear_cross_entropy`).
    """

    def loss(params: Any, x: Array, y: Array, carry: Any, rng: Array | None) -> tuple[Array, Any]:
        rngs = {} if rng is None else {"dropout": rng}
        return model.apply({"params": params}, x, carry, deterministic=rng is None, rngs=rngs, targets=y)

    return loss


def make_train_block(
    model: SequenceModel, optimizer: optax.GradientTransformation, key: Array, mesh=None, carry: Any = None
) -> Callable[[TrainState, Array, Array, Any], tuple[TrainState, Array, Any]]:
    """A compiled ``block(state, xs, ys, carry) -> (state, losses, carry)``: ``K`` TBPTT steps in one call.

    ``xs``, ``ys`` ids ``(K, B, L)`` (chunk ``k`` continues chunk ``k-1``), ``losses (K,)``. Step
    ``s`` (``state.step``) draws its dropout key as ``fold_in(key, s)``, so the result does not
    depend on how the steps are grouped into blocks (to float rounding: a different ``K`` is a
    different compiled program). ``state`` and ``carry`` are donated: their buffers are updated in
    place, and the arrays passed in must not be used afterwards.

    With a ``mesh`` (and an example ``carry`` for its structure) the outputs keep their
    shardings: train state replicated, carried state split over ``data``; ``xs``, ``ys`` are
    split along ``B``. The loss is the mean over the global batch.
    """
    chunk_loss = tbptt_loss(model)
    update = train_update(lambda p, batch, rng: chunk_loss(p, batch["x"], batch["y"], batch["carry"], rng), optimizer)

    def one_step(state: TrainState, x: Array, y: Array, carry: Any) -> tuple[TrainState, Array, Any]:
        state, loss, carry = update(state, {"x": x, "y": y, "carry": carry}, jax.random.fold_in(key, state.step))
        return state, loss, jax.lax.stop_gradient(carry)

    def block(state: TrainState, xs: Array, ys: Array, carry: Any) -> tuple[TrainState, Array, Any]:
        def body(c, xy):
            state, loss, carry = one_step(c[0], xy[0], xy[1], c[1])
            return (state, carry), loss

        (state, carry), losses = jax.lax.scan(body, (state, carry), (xs, ys))
        return state, losses, carry

    jit_options: dict[str, Any] = {"donate_argnums": (0, 3)}
    if mesh is not None:
        jit_options["out_shardings"] = (replicated(mesh), replicated(mesh), state_sharding(mesh, carry))
    return jax.jit(block, **jit_options)


def block_bounds(first: int, stop: int, block_size: int, cuts: tuple[int, ...] = ()) -> list[tuple[int, int]]:
    """Chunks ``[first, stop)`` of an epoch as blocks ``[(a, b), ...]``.

    Blocks end at every multiple of ``block_size`` (counted from the epoch's start) and at every
    index in ``cuts`` (checkpoints, the epoch's short last chunk). A run resumed at a block
    boundary therefore sees the same blocks as the uninterrupted run, and gives the same bits.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}.")
    ends = set(range(block_size, stop, block_size)) | {c for c in cuts if first < c < stop} | {stop}
    bounds, a = [], first
    for b in sorted(e for e in ends if e > first):
        bounds.append((a, b))
        a = b
    return bounds


def chunk_block(streams: np.ndarray, bptt: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks ``a .. b-1`` of :func:`jaxrnn.bptt_batches` ``(streams, bptt)`` stacked: ``xs, ys (b-a, B, L)``.

    The chunks must have one length ``L`` (only an epoch's last chunk can be shorter).
    """
    total = streams.shape[1] - 1
    length = min(bptt, total - a * bptt)
    if b > a + 1 and total - (b - 1) * bptt < length:
        raise ValueError(f"chunk_block: chunks {a}..{b - 1} differ in length; cut the block before the last chunk.")
    starts = np.arange(a, b) * bptt
    index = starts[:, None] + np.arange(length)[None, :]  # (K, L)
    return np.moveaxis(streams[:, index], 1, 0), np.moveaxis(streams[:, index + 1], 1, 0)


@partial(jax.jit, static_argnums=0)
def _chunk_losses(model: SequenceModel, params: Any, xs: Array, ys: Array, carry: Any) -> tuple[Array, Any]:
    """Mean loss of each chunk ``(K,)`` of ``xs``, ``ys`` ``(K, B, L)``, the state carried across."""

    def body(carry, xy):
        loss, carry = model.apply({"params": params}, xy[0], carry, targets=xy[1])
        return carry, loss

    carry, losses = jax.lax.scan(body, carry, (xs, ys))
    return losses, carry


def evaluate_stream(model: SequenceModel, params: Any, ids: np.ndarray, batch_size: int, bptt: int, mesh=None) -> float:
    """Mean cross-entropy per token (nats) over ``ids`` as ``batch_size`` streams, state carried across chunks.

    All full-length chunks run as one compiled scan, the short last chunk (if any) as another.
    With a ``mesh`` the streams are split over its ``data`` axis.
    """
    mesh = mesh or data_mesh(1)
    check_divisible(batch_size, mesh, "eval_batch_size")
    streams = contiguous_streams(ids, batch_size)
    local = process_slice(batch_size)
    chunks = num_bptt_batches(streams, bptt)
    full = (streams.shape[1] - 1) // bptt
    carry = _zero_carry(model, batch_size, state_sharding(mesh, model.zero_state(batch_size)))
    total, count = 0.0, 0
    for a, b in block_bounds(0, chunks, chunks, cuts=(full,)):
        xs, ys = chunk_block(streams, bptt, a, b)
        losses, carry = _chunk_losses(
            model, params, global_batch(mesh, xs[:, local], 1), global_batch(mesh, ys[:, local], 1), carry
        )
        tokens = ys.shape[1] * ys.shape[2]
        for value in np.asarray(losses).tolist():
            total += value * tokens
            count += tokens
    return total / count


def _zero_carry(model: SequenceModel, batch_size: int, sharding: Any) -> Any:
    return jax.device_put(model.zero_state(batch_size), sharding)


def init_or_resume(
    config: LMConfig,
    model: SequenceModel,
    optimizer: optax.GradientTransformation,
    out_dir: pathlib.Path | None = None,
    resume: bool = False,
) -> tuple[dict[str, Any], list[dict]]:
    """The run's state and its per-epoch history: fresh from ``config.seed``, or from ``out_dir``'s checkpoint
    when ``resume`` and there is one (``out_dir=None``: always fresh, e.g. for a benchmark).

    The state dict holds ``train`` (:class:`TrainState`), ``carry`` (the recurrent state at the
    resume point), ``epoch`` (the epoch in progress, from 1), ``chunk`` (chunks of it done),
    ``step_losses`` and ``elapsed`` (seconds of training so far).
    """
    run = {
        "train": init_train_state(init_params(config, model, jax.random.key(config.seed)), optimizer),
        "carry": model.zero_state(config.batch_size),
        "epoch": jnp.int32(1),
        "chunk": jnp.int32(0),
        "step_losses": np.zeros(0, np.float32),
        "elapsed": np.float64(0.0),
    }
    if out_dir is None:
        return run, []
    checkpoint_path = out_dir / "checkpoint.msgpack"
    if not (resume and checkpoint_path.is_file()):
        return run, []
    previous = json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").exists() else {}
    target = dict(run, step_losses=np.zeros(int(previous.get("num_step_losses", 0)), np.float32))
    run = restore_training_state(checkpoint_path, target)
    print(f"resumed from {checkpoint_path}: epoch {int(run['epoch'])}, chunk {int(run['chunk'])}")
    return run, previous.get("history", [])


def save_checkpoint(out_dir: pathlib.Path, run: dict[str, Any], history: list[dict]) -> None:
    """Writes ``run`` to ``out_dir/checkpoint.msgpack`` and ``history`` to ``history.json``, each atomically.

    With several processes the carried state is gathered first (a collective: every process
    calls this); process 0 writes.
    """
    carry = run["carry"]
    if jax.process_count() > 1:
        carry = multihost_utils.process_allgather(carry, tiled=True)
    if jax.process_index() != 0:
        return
    saved = dict(run, carry=carry, step_losses=np.asarray(run["step_losses"], np.float32))
    saved.pop("test_loss", None)
    save_training_state(out_dir / "checkpoint.msgpack", saved)
    tmp = out_dir / "history.json.tmp"
    tmp.write_text(json.dumps({"history": history, "num_step_losses": len(run["step_losses"])}))
    tmp.replace(out_dir / "history.json")


def train_epoch(
    block_fn: Callable[[TrainState, Array, Array, Any], tuple[TrainState, Array, Any]],
    run: dict[str, Any],
    streams: np.ndarray,
    config: LMConfig,
    steps_per_epoch: int,
    mesh,
    *,
    checkpoint_every: int = 0,
    after_block: Callable[[dict[str, Any], np.ndarray], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs chunks ``run['chunk'] .. steps_per_epoch-1`` of epoch ``run['epoch']``; returns the updated ``run``.

    ``streams (B, T)`` is the training corpus as :func:`jaxrnn.contiguous_streams` cuts it. The
    next block's arrays go to the device while the current block runs. After each block
    ``after_block(run, losses)`` is called (progress output); at every multiple of
    ``checkpoint_every`` chunks before the epoch's end, ``checkpoint(run)``. ``run['step_losses']``
    becomes a list during the epoch.
    """
    local = process_slice(config.batch_size)
    full = (streams.shape[1] - 1) // config.bptt
    cuts = (full,) + tuple(range(checkpoint_every, steps_per_epoch, checkpoint_every) if checkpoint_every else ())
    bounds = block_bounds(int(run["chunk"]), steps_per_epoch, config.block_size, cuts)

    def to_device(a: int, b: int) -> tuple[Array, Array]:
        xs, ys = chunk_block(streams, config.bptt, a, b)
        return global_batch(mesh, xs[:, local], 1), global_batch(mesh, ys[:, local], 1)

    run = dict(run, step_losses=list(run["step_losses"]))
    upcoming = to_device(*bounds[0]) if bounds else None
    for i, (_, b) in enumerate(bounds):
        train, losses, carry = block_fn(run["train"], *upcoming, run["carry"])
        run.update(train=train, carry=carry, chunk=b)
        upcoming = to_device(*bounds[i + 1]) if i + 1 < len(bounds) else None  # while the block runs
        losses = np.asarray(losses)
        run["step_losses"].extend(losses.tolist())
        if after_block is not None:
            after_block(run, losses)
        if checkpoint is not None and checkpoint_every and b % checkpoint_every == 0 and b < steps_per_epoch:
            checkpoint(run)
    return run


def summarize(
    config: LMConfig, run: dict[str, Any], history: list[dict], tokens_per_step: int, unit: str
) -> dict[str, Any]:
    """The metrics of a finished run: config, per-epoch history, final losses, perplexities, bits, speed."""
    elapsed = float(run["elapsed"])
    metrics: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "history": history,
        "valid_loss": history[-1]["valid_loss"] if history else None,
        "wall_time_s": elapsed,
        "train_tokens_per_s": len(run["step_losses"]) * tokens_per_step / elapsed if elapsed > 0 else None,
        "num_params": int(sum(x.size for x in jax.tree.leaves(run["train"].params))),
    }
    if run.get("test_loss") is not None:
        metrics["test_loss"] = run["test_loss"]
    for split in ("valid", "test"):
        if metrics.get(f"{split}_loss") is not None:
            metrics[f"{split}_perplexity"] = math.exp(metrics[f"{split}_loss"])
            metrics[f"{split}_bits_per_{unit}"] = metrics[f"{split}_loss"] / math.log(2)
    return metrics


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
    dropout keys are derived from the step number, the carried state and
    position within the epoch are saved, and blocks end at checkpoints).
    Checkpoints are written after every epoch and every ``checkpoint_every``
    chunks. Returns the metrics dict, plus ``params`` and ``model``.

    ``num_devices`` (None: all devices JAX sees, across hosts) trains
    data-parallel: the streams are split over a ``data`` mesh axis and must
    divide evenly. The result equals single-device training to float tolerance.
    """
    from tqdm.auto import tqdm

    from jaxrnn.plots import plot_loss_curve

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = make_model(config, vocab_size)
    mesh = check_batch_sizes(num_devices, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size)
    streams = contiguous_streams(train_ids, config.batch_size)
    steps_per_epoch = num_bptt_batches(streams, config.bptt)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    schedule = learning_rate_schedule(config, steps_per_epoch)
    optimizer = make_optimizer(config.optimizer, schedule, clip_norm=config.clip_norm)
    carry_sharding = state_sharding(mesh, model.zero_state(config.batch_size))
    key = jax.random.key(config.seed)
    block_fn = make_train_block(model, optimizer, key, mesh, model.zero_state(config.batch_size))

    run, history = init_or_resume(config, model, optimizer, out_dir, resume)
    run = dict(
        run,
        train=jax.device_put(run["train"], replicated(mesh)),
        carry=jax.device_put(run["carry"], carry_sharding),
        step_losses=list(np.asarray(run["step_losses"])),
    )
    tokens_per_step = config.batch_size * config.bptt
    elapsed_before, start = float(run["elapsed"]), time.perf_counter()

    def checkpoint(run: dict[str, Any]) -> None:
        save_checkpoint(out_dir, dict(run, elapsed=np.float64(elapsed_before + time.perf_counter() - start)), history)

    for epoch in range(int(run["epoch"]), config.epochs + 1):
        if int(run["chunk"]) == 0:
            run["carry"] = _zero_carry(model, config.batch_size, carry_sharding)
        bar = tqdm(total=steps_per_epoch, initial=int(run["chunk"]), disable=not progress, desc=f"epoch {epoch}")
        tick = (time.perf_counter(), int(run["chunk"]))

        def after_block(run: dict[str, Any], losses: np.ndarray, bar=bar, tick=tick) -> None:
            bar.update(len(losses))
            rate = (int(run["chunk"]) - tick[1]) * tokens_per_step / (time.perf_counter() - tick[0])
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:,.0f}")

        run = train_epoch(
            block_fn,
            run,
            streams,
            config,
            steps_per_epoch,
            mesh,
            checkpoint_every=checkpoint_every,
            after_block=after_block,
            checkpoint=checkpoint,
        )
        bar.close()
        params = run["train"].params
        valid_loss = evaluate_stream(model, params, valid_ids, config.eval_batch_size, config.bptt, mesh)
        elapsed = elapsed_before + time.perf_counter() - start
        lr = float(schedule(jnp.int32((epoch - 1) * steps_per_epoch)))
        train_loss = float(np.mean(run["step_losses"][-steps_per_epoch:]))
        history.append(
            {
                "epoch": epoch,
                "step": int(run["train"].step),
                "lr": lr,
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "elapsed_s": elapsed,
            }
        )
        print(
            f"epoch {epoch:3d}  lr {lr:.4g}  train {train_loss:.4f}  valid {valid_loss:.4f} "
            f"(ppl {math.exp(valid_loss):.2f}, {valid_loss / math.log(2):.3f} bits)  {elapsed:.0f} s",
            flush=True,
        )
        run.update(carry=_zero_carry(model, config.batch_size, carry_sharding), epoch=epoch + 1, chunk=0)
        checkpoint(run)

    run["elapsed"] = np.float64(elapsed_before + time.perf_counter() - start)
    if test_ids is not None:
        run["test_loss"] = evaluate_stream(
            model, run["train"].params, test_ids, config.eval_batch_size, config.bptt, mesh
        )
    metrics = summarize(config, run, history, tokens_per_step, unit)
    if jax.process_index() == 0:
        plot_loss_curve(history, run["step_losses"], out_dir / "loss.png", unit)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics | {"params": run["train"].params, "model": model}
