"""Variable lengths: what pack_padded_sequence gives in torch, with padding and static shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn
from interop import from_torch


def _setup(kind="LSTM", bidirectional=True, num_layers=2, batch_first=True, seed=0):
    torch.manual_seed(seed)
    kw = {"proj_size": 3} if kind == "LSTM" else {}
    t = getattr(torch.nn, kind)(4, 5, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, **kw)
    module, variables = from_torch(t)
    return module, variables


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_padded_batch_equals_each_sequence_alone(kind):
    module, variables = _setup(kind)
    rng = np.random.default_rng(0)
    lengths = [5, 1, 3, 0]
    seqs = [rng.standard_normal((n, 4)).astype(np.float32) for n in lengths]
    padded, seq_lengths = jaxrnn.pad_sequence(seqs, batch_first=True, padding_value=7.0)  # junk padding
    out, state = module.apply(variables, padded, seq_lengths=seq_lengths)
    h_n = state[0] if kind == "LSTM" else state
    for i, seq in enumerate(seqs):
        if len(seq) == 0:
            continue
        alone_out, alone_state = module.apply(variables, seq)  # unbatched, no padding at all
        alone_h = alone_state[0] if kind == "LSTM" else alone_state
        np.testing.assert_allclose(out[i, : len(seq)], alone_out, atol=1e-6)
        np.testing.assert_allclose(h_n[:, i], alone_h, atol=1e-6)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_padding_outputs_exactly_zero_and_zero_length_keeps_h0(kind):
    module, variables = _setup(kind)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 6, 4)), jnp.float32)
    lengths = jnp.array([6, 2, 0])
    stack = 4
    h0 = jnp.asarray(rng.standard_normal((stack, 3, 3 if kind == "LSTM" else 5)), jnp.float32)
    c0 = jnp.asarray(rng.standard_normal((stack, 3, 5)), jnp.float32)
    state0 = (h0, c0) if kind == "LSTM" else h0
    out, state = module.apply(variables, x, state0, seq_lengths=lengths)
    out = np.asarray(out)
    assert np.all(out[1, 2:] == 0.0) and np.all(out[2] == 0.0)
    assert np.all(out[0] != 0.0)
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(state0)):
        np.testing.assert_array_equal(got[:, 2], want[:, 2])  # length 0: h_n == h_0, exactly


def test_reverse_direction_starts_at_last_valid_step():
    module, variables = _setup("GRU", bidirectional=True, num_layers=1)
    rng = np.random.default_rng(2)
    seq = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    padded = jnp.concatenate([seq, jnp.full((4, 4), 100.0)])[None]  # large junk after the real steps
    out, h_n = module.apply(variables, padded, seq_lengths=jnp.array([3]))
    alone_out, alone_h = module.apply(variables, seq)
    np.testing.assert_allclose(out[0, :3], alone_out, atol=1e-6)
    np.testing.assert_allclose(h_n[:, 0], alone_h, atol=1e-6)  # h_n[1] is the reverse pass's end, at t=0


def test_jit_compiles_once_for_any_lengths():
    module, variables = _setup("LSTM")
    traces = []

    @jax.jit
    def run(x, lengths):
        traces.append(1)
        return module.apply(variables, x, seq_lengths=lengths)

    x = jnp.ones((3, 6, 4))
    for lengths in ([6, 2, 0], [1, 1, 1], [6, 6, 6]):
        out, _ = run(x, jnp.asarray(lengths, jnp.int32))
        assert out.shape == (3, 6, 6)
    assert len(traces) == 1


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        ([6, -1, 2], ValueError, r"seq_lengths must lie in \[0, 6\].*\[-1\]"),
        ([7, 1, 2], ValueError, r"seq_lengths must lie in \[0, 6\].*\[7\]"),
        (np.array([2.0, 1.0, 3.0]), TypeError, "seq_lengths must be an integer array, got dtype float64"),
        ([1, 2], ValueError, r"seq_lengths must have shape \(3,\).*got \(2,\)"),
    ],
)
def test_bad_lengths_are_clear_errors(lengths, error, match):
    module, variables = _setup("LSTM")
    with pytest.raises(error, match=match):
        module.apply(variables, jnp.ones((3, 6, 4)), seq_lengths=np.asarray(lengths))


def test_lengths_with_unbatched_input_is_an_error():
    module, variables = _setup("RNN")
    with pytest.raises(ValueError, match="seq_lengths needs batched input"):
        module.apply(variables, jnp.ones((6, 4)), seq_lengths=jnp.array([3]))


def test_pad_sequence_and_mask():
    seqs = [np.ones((3, 2)), 2 * np.ones((1, 2)), np.zeros((0, 2))]
    padded, lengths = jaxrnn.pad_sequence(seqs)
    assert padded.shape == (3, 3, 2)  # (L, N, F), time-major like torch's default
    np.testing.assert_array_equal(lengths, [3, 1, 0])
    np.testing.assert_array_equal(padded[:, 1, 0], [2, 0, 0])
    batch_major, _ = jaxrnn.pad_sequence(seqs, batch_first=True, padding_value=-1)
    assert batch_major.shape == (3, 3, 2)
    np.testing.assert_array_equal(batch_major[1, :, 0], [2, -1, -1])
    expected_padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], padding_value=-1).numpy()
    np.testing.assert_array_equal(jaxrnn.pad_sequence(seqs, padding_value=-1)[0], expected_padded)
    mask = jaxrnn.lengths_to_mask(lengths, 3)
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert jaxrnn.lengths_to_mask(lengths, 3, batch_first=False).shape == (3, 3)
    with pytest.raises(ValueError, match="sequence 1 has shape"):
        jaxrnn.pad_sequence([np.ones((3, 2)), np.ones((3, 5))])
    with pytest.raises(ValueError, match="empty list"):
        jaxrnn.pad_sequence([])
