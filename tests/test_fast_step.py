"""The training step's fast pieces give the answers of the plain ones: the fused output layer + loss,
the global-norm clipping, the multi-step compiled block, the scanned evaluation, and the block cutting."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
import jaxrnn.lm as lm
from jaxrnn.losses import linear_cross_entropy
from jaxrnn.train import clip_by_global_norm, global_norm

RNG = np.random.default_rng(0)


def _reference_loss(h, w, b, t):
    return optax.softmax_cross_entropy_with_integer_labels(h @ w + b, t).mean()


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-14)])
@pytest.mark.parametrize("lead", [(7,), (3, 5)])
def test_linear_cross_entropy_matches_logits_then_optax(dtype, tol, lead):
    with jax.enable_x64(dtype == jnp.float64):
        h = jnp.asarray(RNG.normal(size=(*lead, 8)), dtype)
        w = jnp.asarray(RNG.normal(size=(8, 11)), dtype)
        b = jnp.asarray(RNG.normal(size=11), dtype)
        t = jnp.asarray(RNG.integers(0, 11, lead))
        got = jax.value_and_grad(lambda *p: 2.5 * linear_cross_entropy(*p, t), argnums=(0, 1, 2))(h, w, b)
        want = jax.value_and_grad(lambda *p: 2.5 * _reference_loss(*p, t), argnums=(0, 1, 2))(h, w, b)
        assert got[0].dtype == dtype
        np.testing.assert_allclose(got[0], want[0], rtol=tol)
        for g, e in zip(got[1], want[1]):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol)


def test_linear_cross_entropy_propagates_nan_and_inf_as_the_plain_loss_does():
    h = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    w = jnp.asarray(RNG.normal(size=(3, 5)), jnp.float32)
    b = jnp.zeros(5)
    t = jnp.asarray([0, 1, 2, 3])
    for bad in (jnp.nan, jnp.inf):
        hb = h.at[1, 2].set(bad)
        got = jax.value_and_grad(linear_cross_entropy, argnums=(0, 1))(hb, w, b, t)
        want = jax.value_and_grad(_reference_loss, argnums=(0, 1))(hb, w, b, t)
        np.testing.assert_array_equal(np.isnan(got[0]), np.isnan(want[0]))
        for g, e in zip(got[1], want[1]):
            np.testing.assert_array_equal(np.isfinite(g), np.isfinite(e))


def test_linear_cross_entropy_bad_shapes_are_named():
    h, w, b = jnp.ones((4, 3)), jnp.ones((3, 5)), jnp.ones(5)
    with pytest.raises(ValueError, match=r"kernel \(H, V\).*\(4, 3\), \(2, 5\)"):
        linear_cross_entropy(h, jnp.ones((2, 5)), b, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"targets must be integers of shape \(4,\).*float32\[4\]"):
        linear_cross_entropy(h, w, b, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"targets must be integers of shape \(4,\).*int32\[4, 1\]"):
        linear_cross_entropy(h, w, b, jnp.zeros((4, 1), jnp.int32))


@pytest.mark.parametrize("tie_weights", [False, True])
def test_sequence_model_targets_give_the_loss_of_its_logits(tie_weights):
    model = jaxrnn.SequenceModel(vocab_size=13, hidden_size=6, embedding_size=6, tie_weights=tie_weights)
    ids = jnp.asarray(RNG.integers(0, 13, (3, 5)))
    targets = jnp.asarray(RNG.integers(0, 13, (3, 5)))
    params = model.init(jax.random.key(1), ids)["params"]

    def via_logits(p):
        logits, state = model.apply({"params": p}, ids)
        return jaxrnn.masked_cross_entropy(logits, targets), state

    def fused(p):
        return model.apply({"params": p}, ids, targets=targets)

    (want, want_state), want_grads = jax.value_and_grad(via_logits, has_aux=True)(params)
    (got, got_state), got_grads = jax.value_and_grad(fused, has_aux=True)(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for g, e in zip(jax.tree.leaves((got_state, got_grads)), jax.tree.leaves((want_state, want_grads))):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="targets= .* cannot be combined with seq_lengths"):
        model.apply({"params": params}, ids, targets=targets, seq_lengths=jnp.array([5, 4, 3]))


def test_global_norm_clipping_matches_optax():
    grads = {"a": jnp.asarray(RNG.normal(size=(300, 70)), jnp.float32), "b": jnp.asarray(RNG.normal(size=9))}
    np.testing.assert_allclose(global_norm(grads), optax.global_norm(grads), rtol=1e-6)
    for max_norm in (1.0, 1e9):
        got = clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]
        want = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())[0]
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, e, rtol=1e-6)
    unclipped = clip_by_global_norm(1e9).update(grads, optax.EmptyState())[0]
    for g, e in zip(jax.tree.leaves(unclipped), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(g, e)  # below the threshold the gradients pass through untouched


def test_block_bounds_cut_at_block_size_checkpoints_and_the_short_chunk():
    assert lm.block_bounds(0, 7, 3) == [(0, 3), (3, 6), (6, 7)]
    cuts = (19, 3, 6, 9, 12, 15, 18)  # the short last chunk (19) and checkpoints every 3
    straight = lm.block_bounds(0, 20, 10, cuts)
    assert straight == [(0, 3), (3, 6), (6, 9), (9, 10), (10, 12), (12, 15), (15, 18), (18, 19), (19, 20)]
    assert lm.block_bounds(9, 20, 10, cuts) == straight[3:]  # resumed at a checkpoint: the same blocks
    assert lm.block_bounds(5, 5, 4) == []
    with pytest.raises(ValueError, match="block_size must be at least 1, got 0"):
        lm.block_bounds(0, 5, 0)


def test_chunk_block_stacks_bptt_batches():
    streams = jaxrnn.contiguous_streams(np.arange(103), 4)  # (4, 25): 24 targets, bptt 5 -> 4 full chunks + 4
    chunks = list(jaxrnn.bptt_batches(streams, 5))
    xs, ys = lm.chunk_block(streams, 5, 1, 4)
    assert xs.shape == ys.shape == (3, 4, 5)
    for k in range(3):
        np.testing.assert_array_equal(xs[k], chunks[1 + k][0])
        np.testing.assert_array_equal(ys[k], chunks[1 + k][1])
    xs, ys = lm.chunk_block(streams, 5, 4, 5)
    assert xs.shape == (1, 4, 4)
    np.testing.assert_array_equal(ys[0], chunks[4][1])
    with pytest.raises(ValueError, match="chunks 3..4 differ in length"):
        lm.chunk_block(streams, 5, 3, 5)


CONFIG = lm.LMConfig(hidden_size=8, embedding_size=6, batch_size=3, bptt=4, dropout=0.2, optimizer="sgd", lr=0.5)


def _one_step_at_a_time(config, ids, steps):
    """The pre-block loop: one jitted step per chunk, logits then optax's loss, optax's clipping."""
    model = lm.make_model(config, 13)
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.sgd(config.lr))
    key = jax.random.key(config.seed)
    state = jaxrnn.init_train_state(lm.init_params(config, model, key), optimizer)
    update = jaxrnn.train_update(jaxrnn.cross_entropy_loss(model), optimizer)
    step = jax.jit(lambda s, x, y, c, r: update(s, {"inputs": x, "targets": y, "state": c}, r))
    carry, losses = model.zero_state(config.batch_size), []
    for k, (x, y) in enumerate(jaxrnn.bptt_batches(jaxrnn.contiguous_streams(ids, config.batch_size), config.bptt)):
        if k == steps:
            break
        state, loss, aux = step(state, x, y, carry, jax.random.fold_in(key, int(state.step)))
        carry = aux["state"]
        losses.append(float(loss))
    return state, losses


@pytest.mark.parametrize("block_size", [1, 4])
def test_a_block_of_steps_equals_one_step_at_a_time(block_size):
    ids = RNG.integers(0, 13, 3 * 33).astype(np.int32)  # 32 targets per stream: 8 chunks of 4
    config = dataclasses.replace(CONFIG, block_size=block_size)
    want_state, want_losses = _one_step_at_a_time(config, ids, 8)
    model = lm.make_model(config, 13)
    optimizer = jaxrnn.make_optimizer("sgd", config.lr, clip_norm=config.clip_norm)
    key = jax.random.key(config.seed)
    block = lm.make_train_block(model, optimizer, key)
    state = jaxrnn.init_train_state(lm.init_params(config, model, key), optimizer)
    streams = jaxrnn.contiguous_streams(ids, config.batch_size)
    carry, losses = model.zero_state(config.batch_size), []
    for a, b in lm.block_bounds(0, 8, block_size):
        state, block_losses, carry = block(state, *lm.chunk_block(streams, config.bptt, a, b), carry)
        losses.extend(np.asarray(block_losses).tolist())
    assert int(state.step) == 8
    np.testing.assert_allclose(losses, want_losses, rtol=2e-6)
    for g, e in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_the_block_donates_its_state_and_carry():
    config = CONFIG
    model = lm.make_model(config, 13)
    optimizer = jaxrnn.make_optimizer("sgd", config.lr)
    key = jax.random.key(0)
    block = lm.make_train_block(model, optimizer, key)
    state = jaxrnn.init_train_state(lm.init_params(config, model, key), optimizer)
    carry = model.zero_state(config.batch_size)
    xs = jnp.zeros((2, config.batch_size, config.bptt), jnp.int32)
    block(state, xs, xs, carry)
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves((state.params, carry)))


def test_scanned_evaluation_equals_chunk_by_chunk():
    model = jaxrnn.SequenceModel(vocab_size=13, hidden_size=8, embedding_size=6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    ids = RNG.integers(0, 13, 2 * 30).astype(np.int32)  # 29 targets per stream, bptt 6: 4 chunks of 6 and 1 of 5
    total, count, carry = 0.0, 0, model.zero_state(2)
    for x, y in jaxrnn.bptt_batches(jaxrnn.contiguous_streams(ids, 2), 6):
        logits, carry = model.apply({"params": params}, x, carry)
        total += float(jaxrnn.masked_cross_entropy(logits, y)) * y.size
        count += y.size
    assert lm.evaluate_stream(model, params, ids, 2, 6) == pytest.approx(total / count, rel=1e-6)


def test_import_jaxrnn_needs_neither_tqdm_nor_matplotlib():
    code = (
        "import sys, jaxrnn, jaxrnn.lm, jaxrnn.losses\n"
        "loaded = [m for m in ('tqdm', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
