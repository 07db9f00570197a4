"""Seq2Seq: decoding under jit equals decoding step by step, beam search is no worse than greedy, source
padding is never attended, and a torch twin with the same weights gives the same logits and strings."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.seq2seq import Seq2Seq, beam_search, greedy_decode

BOS, EOS = 1, 2


def setup(attention, cell="lstm", seed=0):
    model = Seq2Seq(9, 7, hidden_size=16, embedding_size=8, cell=cell, attention=attention)
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 2, 4], np.int32)
    src = rng.integers(3, 9, (3, 5)).astype(np.int32) * (np.arange(5)[None, :] < lengths[:, None])
    tgt_in = rng.integers(0, 7, (3, 6)).astype(np.int32)
    variables = model.init(jax.random.key(seed), src, lengths, tgt_in)
    # Scale up the output layer so the greedy choices are not near ties.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: v * 4 if "out" in jax.tree_util.keystr(path) else v, variables
    )
    return model, variables, src, lengths, tgt_in


def sequence_log_prob(model, variables, src, lengths, tokens):
    """Sum of log p(token_t | tokens_<t, src) up to and including the first eos, per row."""
    tgt_in = np.concatenate([np.full((len(tokens), 1), BOS), tokens[:, :-1]], axis=1)
    logp = jax.nn.log_softmax(model.apply(variables, src, lengths, tgt_in), axis=-1)
    picked = np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
    first_eos = np.where((tokens == EOS).any(1), (tokens == EOS).argmax(1), tokens.shape[1] - 1)
    return np.array([picked[i, : first_eos[i] + 1].sum() for i in range(len(tokens))])


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_decode_equals_step_by_step(attention, cell):
    model, variables, src, lengths, _ = setup(attention, cell)
    tokens = np.asarray(greedy_decode(model, variables, src, lengths, BOS, 6))
    enc_out, state = model.apply(variables, src, lengths, method=Seq2Seq.encode)
    token, expected = np.full((3, 1), BOS, np.int32), []
    for _ in range(6):
        logits, state = model.apply(variables, token, state, enc_out, lengths, method=Seq2Seq.decode)
        token = np.asarray(jnp.argmax(logits[:, -1], -1))[:, None].astype(np.int32)
        expected.append(token[:, 0])
    np.testing.assert_array_equal(tokens, np.stack(expected, 1))
    # Teacher forcing on its own output gives the same choices (the decoder runs as one scan there).
    tgt_in = np.concatenate([np.full((3, 1), BOS), tokens[:, :-1]], axis=1)
    np.testing.assert_array_equal(np.argmax(model.apply(variables, src, lengths, tgt_in), -1), tokens)


@pytest.mark.parametrize("attention", [False, True])
def test_beam_search(attention):
    model, variables, src, lengths, _ = setup(attention)
    greedy = np.asarray(greedy_decode(model, variables, src, lengths, BOS, 6))
    one = np.asarray(beam_search(model, variables, src, lengths, BOS, EOS, 1, 6))
    for g, b in zip(greedy, one):  # beam 1 is greedy, up to the eos padding
        end = int(np.argmax(g == EOS)) + 1 if (g == EOS).any() else len(g)
        np.testing.assert_array_equal(b[:end], g[:end])
    beam = np.asarray(beam_search(model, variables, src, lengths, BOS, EOS, 4, 6))
    assert np.all(
        sequence_log_prob(model, variables, src, lengths, beam)
        >= sequence_log_prob(model, variables, src, lengths, one) - 1e-5
    )


def test_target_lengths_mask_the_padded_targets():
    model, variables, src, lengths, tgt_in = setup(attention=True)
    tgt_lengths = np.array([6, 3, 1], np.int32)
    padded = model.apply(variables, src, lengths, tgt_in, tgt_lengths)
    for i, n in enumerate(tgt_lengths):  # each target alone, unpadded, gives the same valid positions
        alone = model.apply(variables, src[i : i + 1], lengths[i : i + 1], tgt_in[i : i + 1, :n])
        np.testing.assert_allclose(padded[i, :n], alone[0], atol=1e-6)


def test_source_padding_is_never_attended():
    model, variables, src, lengths, tgt_in = setup(attention=True)
    other = src.copy()
    other[np.arange(5)[None, :] >= lengths[:, None]] = 7  # change only the padded positions
    np.testing.assert_array_equal(
        model.apply(variables, src, lengths, tgt_in), model.apply(variables, other, lengths, tgt_in)
    )


def test_attention_weights_are_sown_for_inspection():
    """The weights the model used: (N, T, S), each row a distribution over the valid source steps; logits unchanged."""
    model, variables, src, lengths, tgt_in = setup(attention=True)
    logits, state = model.apply(variables, src, lengths, tgt_in, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (3, 6, 5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    padding = np.broadcast_to(np.arange(5)[None, None, :] >= lengths[:, None, None], weights.shape)
    assert (np.asarray(weights)[padding] == 0).all()
    np.testing.assert_array_equal(logits, model.apply(variables, src, lengths, tgt_in))
    plain, plain_variables, *_ = setup(attention=False)
    _, state = plain.apply(plain_variables, src, lengths, tgt_in, mutable=["intermediates"])
    assert "intermediates" not in state  # nothing to look at without attention


@pytest.mark.parametrize("attention", [False, True])
def test_torch_twin_gives_the_same_logits_and_strings(attention):
    pytest.importorskip("torch")
    path = pathlib.Path(__file__).parents[1] / "experiments" / "seq2seq.py"
    spec = importlib.util.spec_from_file_location("seq2seq_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model = Seq2Seq(9, len(script.TARGET_VOCAB), hidden_size=16, embedding_size=8, attention=attention)
    _, variables, src, lengths, tgt_in = setup(attention)
    variables = model.init(jax.random.key(1), src, lengths, tgt_in)
    t_logits, t_strings = script.torch_twin(model, variables, src, lengths, tgt_in, 6)
    np.testing.assert_allclose(np.asarray(model.apply(variables, src, lengths, tgt_in)), t_logits, atol=1e-5)
    greedy = np.asarray(greedy_decode(model, variables, src, lengths, BOS, 6))
    assert [script.text_of(row) for row in greedy] == t_strings
