"""Library pieces for training: vocabularies, windows, streams, models, loss, train step, generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn


def test_vocab_is_sorted_and_round_trips():
    text = " if you want you"
    vocab = jaxrnn.Vocab.from_chars(text)
    assert vocab.tokens == tuple(sorted(set(text)))
    assert jaxrnn.Vocab.from_chars(text[::-1]) == vocab  # same text, any order: same ids
    assert vocab.decode(vocab.encode(text)) == text
    words = jaxrnn.Vocab.from_words("i like dog i love coffee".split(), extra=["<eos>"])
    assert words.tokens == ("<eos>", "coffee", "dog", "i", "like", "love")
    assert words.decode(words.encode("i love dog")) == "i love dog"
    with pytest.raises(KeyError, match="token 'z' is not in the vocabulary of 10"):
        vocab.encode("zoo")


def test_sliding_windows():
    x, y = jaxrnn.sliding_windows(np.arange(13), 10)
    assert x.shape == y.shape == (3, 10)
    np.testing.assert_array_equal(x[2], np.arange(2, 12))
    np.testing.assert_array_equal(y[2], np.arange(3, 13))
    with pytest.raises(ValueError, match="at least length\\+1 ids"):
        jaxrnn.sliding_windows(np.arange(10), 10)


def test_streams_continue_across_bptt_chunks():
    ids = np.arange(103)
    streams = jaxrnn.contiguous_streams(ids, 4)
    assert streams.shape == (4, 25)
    chunks = list(jaxrnn.bptt_batches(streams, 7))
    assert len(chunks) == jaxrnn.num_bptt_batches(streams, 7) == 4
    xs = np.concatenate([x for x, _ in chunks], axis=1)
    ys = np.concatenate([y for _, y in chunks], axis=1)
    np.testing.assert_array_equal(xs, streams[:, :-1])  # stream i, chunk after chunk, without gaps
    np.testing.assert_array_equal(ys, streams[:, 1:])
    np.testing.assert_array_equal(streams[1, :3], [25, 26, 27])


def test_masked_loss_equals_unpadded_loss():
    model = jaxrnn.SequenceModel(vocab_size=7, hidden_size=8, cell="gru", embedding_size=5)
    rng = np.random.default_rng(0)
    lengths = [5, 2, 4]
    seqs = [rng.integers(0, 7, n + 1) for n in lengths]
    inputs, seq_lengths = jaxrnn.pad_sequence([s[:-1] for s in seqs], batch_first=True, padding_value=3)
    targets, _ = jaxrnn.pad_sequence([s[1:] for s in seqs], batch_first=True, padding_value=6)
    params = model.init(jax.random.key(0), inputs)["params"]
    loss_fn = jaxrnn.cross_entropy_loss(model)
    padded_loss, _ = loss_fn(params, {"inputs": inputs, "targets": targets, "seq_lengths": seq_lengths}, None)
    total = 0.0
    for s in seqs:
        loss, _ = loss_fn(params, {"inputs": jnp.asarray(s[None, :-1]), "targets": jnp.asarray(s[None, 1:])}, None)
        total += float(loss) * (len(s) - 1)
    np.testing.assert_allclose(float(padded_loss), total / sum(lengths), rtol=1e-6)


def _train(seed, steps=60, cell="lstm"):
    vocab = jaxrnn.Vocab.from_chars(" if you want you")
    ids = vocab.encode(" if you want you")
    batch = {"inputs": jnp.asarray(ids[None, :-1]), "targets": jnp.asarray(ids[None, 1:])}
    model = jaxrnn.SequenceModel(len(vocab), 32, cell=cell, dropout=0.1)
    params = model.init(jax.random.key(seed), batch["inputs"])["params"]
    optimizer = jaxrnn.make_optimizer("adam", 0.05, clip_norm=5.0)
    step = jaxrnn.make_train_step(jaxrnn.cross_entropy_loss(model), optimizer)
    state, losses = jaxrnn.fit(
        step,
        jaxrnn.init_train_state(params, optimizer),
        iter(lambda: batch, None),
        num_steps=steps,
        rng=jax.random.key(seed + 1),
        progress=False,
    )
    return model, state, losses, vocab, ids


def test_training_decreases_loss_and_generation_reproduces_the_text():
    model, state, losses, vocab, ids = _train(0)
    assert losses[-1] < 0.1 * losses[0]
    generated = jaxrnn.generate(model, {"params": state.params}, ids[:1], len(ids) - 1, greedy=True)
    assert vocab.decode(ids[:1]) + vocab.decode(generated) == " if you want you"


def test_same_seed_is_bit_identical_and_other_seed_differs():
    _, a, losses_a, _, _ = _train(3, steps=5)
    _, b, losses_b, _, _ = _train(3, steps=5)
    _, c, _, _, _ = _train(4, steps=5)
    assert losses_a == losses_b
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params)))


def test_generate_from_a_given_state():
    """state= starts generation from a state (one-to-many): priming with a prefix and passing on its state is
    the same as generating from the whole prompt."""
    model = jaxrnn.SequenceModel(vocab_size=9, hidden_size=8, cell="lstm", num_layers=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    whole = jaxrnn.generate(model, variables, jnp.array([1, 2, 3]), 12, greedy=True)
    _, state = model.apply(variables, jnp.array([[1, 2]]))
    resumed = jaxrnn.generate(model, variables, jnp.array([3]), 12, greedy=True, state=state)
    np.testing.assert_array_equal(resumed, whole)
    zeros = jaxrnn.generate(model, variables, jnp.array([3]), 12, greedy=True, state=model.zero_state(1))
    np.testing.assert_array_equal(zeros, jaxrnn.generate(model, variables, jnp.array([3]), 12, greedy=True))


def test_generate_a_batch_row_by_row_equal():
    """A batch of prompts, each from its own state, generates what each row generates alone; sampled rows differ."""
    model = jaxrnn.SequenceModel(vocab_size=9, hidden_size=8, cell="lstm", num_layers=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    prompts = jnp.array([[1, 2], [3, 4], [5, 6]])
    _, states = model.apply(variables, jnp.array([[7], [8], [2]]))  # (h, c), each (2, 3, 8): one state per row
    batch = jaxrnn.generate(model, variables, prompts, 10, greedy=True, state=states)
    assert batch.shape == (3, 10)
    for i in range(3):
        row_state = jax.tree.map(lambda s, i=i: s[:, i : i + 1], states)
        np.testing.assert_array_equal(
            batch[i], jaxrnn.generate(model, variables, prompts[i], 10, greedy=True, state=row_state)
        )
    same = jnp.array([[1, 2]] * 4)
    sampled = jaxrnn.generate(model, variables, same, 30, jax.random.key(3), temperature=5.0)
    assert len({tuple(row) for row in np.asarray(sampled).tolist()}) > 1  # rows are sampled independently
    with pytest.raises(
        ValueError, match=r"state must be \(D\*num_layers, 3, H\) arrays for a prompt of shape \(3, 2\)"
    ):
        jaxrnn.generate(model, variables, prompts, 5, greedy=True, state=model.zero_state(1))


def test_sampling_respects_top_k_and_temperature():
    model = jaxrnn.SequenceModel(vocab_size=9, hidden_size=8, cell="rnn")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    prompt = jnp.array([1, 2])
    one = jaxrnn.generate(model, variables, prompt, 20, jax.random.key(1), top_k=1)
    greedy = jaxrnn.generate(model, variables, prompt, 20, greedy=True)
    np.testing.assert_array_equal(one, greedy)  # top-1 sampling is greedy
    sampled = jaxrnn.generate(model, variables, prompt, 200, jax.random.key(2), temperature=5.0)
    assert len(set(np.asarray(sampled).tolist())) > 3
    with pytest.raises(ValueError, match="sampling needs a key"):
        jaxrnn.generate(model, variables, prompt, 5)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 9\], got 10"):
        jaxrnn.generate(model, variables, prompt, 5, jax.random.key(0), top_k=10)
    with pytest.raises(ValueError, match=r"prompt must be non-empty ids, \(P,\) or a batch \(N, P\), got int32\(0,\)"):
        jaxrnn.generate(model, variables, jnp.array([], jnp.int32), 5, greedy=True)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        jaxrnn.generate(model, variables, prompt, 5, jax.random.key(0), temperature=0.0)


def test_generate_refuses_a_bidirectional_model():
    model = jaxrnn.SequenceModel(vocab_size=9, hidden_size=8, cell="gru", bidirectional=True)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    with pytest.raises(ValueError, match="SequenceModel is bidirectional; generation feeds each token back"):
        jaxrnn.generate(model, variables, jnp.array([1, 2]), 5, greedy=True)


def test_classifier_uses_each_sequences_last_valid_state():
    model = jaxrnn.Classifier(
        vocab_size=11, hidden_size=6, cell="lstm", embedding_size=4, num_classes=3, bidirectional=True, num_layers=2
    )
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6])]
    padded, lengths = jaxrnn.pad_sequence(seqs, batch_first=True)
    variables = model.init(jax.random.key(0), padded)
    logits = model.apply(variables, padded, seq_lengths=lengths)
    assert logits.shape == (2, 3)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(logits[i], model.apply(variables, jnp.asarray(s[None]))[0], atol=1e-6)


def test_tagger_shapes():
    model = jaxrnn.Tagger(vocab_size=11, hidden_size=6, cell="gru", num_tags=4)
    ids = jnp.zeros((3, 5), jnp.int32)
    variables = model.init(jax.random.key(0), ids)
    assert model.apply(variables, ids, seq_lengths=jnp.array([5, 1, 0])).shape == (3, 5, 4)
    assert "embed" not in variables["params"]  # embedding_size=None: one-hot inputs


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        jaxrnn.make_optimizer("adagrad")
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        jaxrnn.make_optimizer("sgd", clip_norm=0.0)
    with pytest.raises(ValueError, match=r"cell must be one of \['gru', 'lstm', 'rnn'\], got 'transformer'"):
        jaxrnn.recurrent_layer("transformer", hidden_size=3)
    model = jaxrnn.SequenceModel(vocab_size=5, hidden_size=3)
    with pytest.raises(TypeError, match="expected integer token ids"):
        model.init(jax.random.key(0), jnp.zeros((1, 3)))


def test_metrics():
    assert jaxrnn.perplexity(np.log(10000.0)) == pytest.approx(10000.0)
    assert jaxrnn.bits_per_char(np.log(2.0)) == pytest.approx(1.0)
    uniform = jnp.zeros((4, 5, 10))  # a uniform model over 10 tokens
    loss = jaxrnn.masked_cross_entropy(uniform, jnp.zeros((4, 5), jnp.int32))
    assert jaxrnn.perplexity(float(loss)) == pytest.approx(10.0, rel=1e-6)
