"""PackedSequence as torch has it: the same fields and values, layers that take and return it (linen, NNX,
functional), gradients through it, and clear errors where packing cannot work (traced lengths)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch.nn.utils import rnn as tr

import interop
import jaxrnn

LENGTHS = [
    [5, 5, 3, 2, 1],  # sorted, with a tie
    [2, 6, 6, 1, 4, 6],  # unsorted, ties in the longest
    [3],
]


def padded(lengths, features=3, seed=0, batch_first=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((max(lengths), len(lengths), features)).astype(np.float32)
    return np.swapaxes(x, 0, 1).copy() if batch_first else x


def assert_same_packed(ours, theirs):
    np.testing.assert_array_equal(ours.batch_sizes, theirs.batch_sizes.numpy())
    for mine, torchs in [
        (ours.sorted_indices, theirs.sorted_indices),
        (ours.unsorted_indices, theirs.unsorted_indices),
    ]:
        assert (mine is None) == (torchs is None)
        if mine is not None:
            np.testing.assert_array_equal(mine, torchs.numpy())
    np.testing.assert_allclose(np.asarray(ours.data), theirs.data.detach().numpy(), atol=2e-6)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_and_pad_match_torch(lengths, batch_first):
    x = padded(lengths, batch_first=batch_first)
    enforce_sorted = lengths == sorted(lengths, reverse=True)
    ours = jaxrnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    theirs = tr.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths), batch_first, enforce_sorted)
    assert_same_packed(ours, theirs)
    for total_length in [None, max(lengths) + 2]:
        mine, my_lengths = jaxrnn.pad_packed_sequence(ours, batch_first, -1.0, total_length)
        their, their_lengths = tr.pad_packed_sequence(theirs, batch_first, -1.0, total_length)
        np.testing.assert_array_equal(np.asarray(mine), their.numpy())
        np.testing.assert_array_equal(my_lengths, their_lengths.numpy())
    # Unsorted packing of a sorted batch too.
    ours = jaxrnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    assert_same_packed(ours, tr.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths), batch_first, False))


def test_pack_sequence_matches_torch():
    rng = np.random.default_rng(1)
    sequences = [rng.standard_normal((n, 2)).astype(np.float32) for n in (3, 7, 7, 1)]
    for enforce_sorted in [False]:
        ours = jaxrnn.pack_sequence(sequences, enforce_sorted=enforce_sorted)
        theirs = tr.pack_sequence([torch.from_numpy(s) for s in sequences], enforce_sorted=enforce_sorted)
        assert_same_packed(ours, theirs)
    ordered = sorted(sequences, key=len, reverse=True)
    assert_same_packed(jaxrnn.pack_sequence(ordered), tr.pack_sequence([torch.from_numpy(s) for s in ordered]))
    data, batch_sizes, sorted_indices, unsorted_indices = jaxrnn.pack_sequence(ordered)  # a 4-tuple, as torch's
    assert batch_sizes.tolist() == [4, 3, 3, 2, 2, 2, 2] and sorted_indices is None


TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
LINEN = {"rnn": jaxrnn.RNN, "lstm": jaxrnn.LSTM, "gru": jaxrnn.GRU}
FUNCTIONAL = {"rnn": jaxrnn.functional.rnn, "lstm": jaxrnn.functional.lstm, "gru": jaxrnn.functional.gru}


def run_torch(module, x, lengths, enforce_sorted):
    xt = torch.from_numpy(x).requires_grad_(True)
    packed = tr.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=enforce_sorted)
    out, state = module(packed)
    states = state if isinstance(state, tuple) else (state,)
    loss = (out.data**2).sum() + sum((s * (i + 1)).sum() for i, s in enumerate(states))
    loss.backward()
    return out, states, xt.grad.numpy()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", LENGTHS[:2])
@pytest.mark.parametrize("api", ["linen", "nnx", "functional"])
def test_layers_take_and_return_packed_sequences_like_torch(cell, bidirectional, lengths, api):
    torch.manual_seed(0)
    module = TORCH[cell](3, 4, num_layers=2, bidirectional=bidirectional)
    x = padded(lengths)
    enforce_sorted = lengths == sorted(lengths, reverse=True)
    t_out, t_states, t_grad = run_torch(module, x, lengths, enforce_sorted)

    if api == "linen":
        layer, variables = interop.from_torch(module)

        def forward(packed):
            return layer.apply(variables, packed)
    elif api == "nnx":
        layer = interop.from_torch(module, api="nnx")

        def forward(packed):
            return layer(packed)
    else:
        params, kwargs = interop.from_torch(module, api="functional")

        def forward(packed):
            return FUNCTIONAL[cell](params, packed, **kwargs)

    def loss(xj):
        packed = jaxrnn.pack_padded_sequence(xj, lengths, enforce_sorted=enforce_sorted)
        out, state = forward(packed)
        states = state if isinstance(state, tuple) else (state,)
        return (out.data**2).sum() + sum((s * (i + 1)).sum() for i, s in enumerate(states)), (out, states)

    (_, (out, states)), grad = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(x))
    assert isinstance(out, jaxrnn.PackedSequence)
    assert_same_packed(out, t_out)
    for mine, theirs in zip(states, t_states):
        np.testing.assert_allclose(np.asarray(mine), theirs.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(np.asarray(grad), t_grad, atol=2e-5)


def test_packed_equals_padded_with_seq_lengths_and_jits_per_layout():
    lstm = jaxrnn.LSTM(3, 4, bidirectional=True)
    lengths = [2, 6, 6, 1]
    x = jnp.asarray(padded(lengths))
    variables = lstm.init(jax.random.key(0), x)
    out, (h_n, c_n) = lstm.apply(variables, x, seq_lengths=jnp.asarray(lengths))
    run = jax.jit(lambda p: lstm.apply(variables, p))
    packed = jaxrnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    p_out, (p_h, p_c) = run(packed)
    unpacked, back_lengths = jaxrnn.pad_packed_sequence(p_out)
    np.testing.assert_array_equal(unpacked, out)  # zeros past each length, as seq_lengths gives
    np.testing.assert_array_equal(p_h, h_n)
    np.testing.assert_array_equal(back_lengths, lengths)
    assert run._cache_size() == 1
    run(jaxrnn.pack_padded_sequence(x * 2, lengths, enforce_sorted=False))  # same layout: no new compilation
    assert run._cache_size() == 1


def test_nnx_layer_in_nnx_jit():
    layer = jaxrnn.nnx.GRU(3, 4, rngs=nnx.Rngs(0))
    packed = jaxrnn.pack_sequence([jnp.ones((4, 3)), jnp.ones((2, 3))])
    out, h_n = nnx.jit(lambda m, p: m(p))(layer, packed)
    assert out.data.shape == (6, 4) and h_n.shape == (1, 2, 4)


def test_packing_errors():
    x = padded([3, 2])
    with pytest.raises(TypeError, match=r"lengths must be concrete .* pass the padded batch with seq_lengths="):
        jax.jit(lambda x, n: jaxrnn.pack_padded_sequence(x, n).data)(x, jnp.asarray([3, 2]))
    with pytest.raises(ValueError, match=r"not sorted in decreasing order; .* enforce_sorted=False"):
        jaxrnn.pack_padded_sequence(x, [2, 3])
    with pytest.raises(ValueError, match=r"every length must be > 0"):
        jaxrnn.pack_padded_sequence(x, [3, 0])
    with pytest.raises(ValueError, match=r"exceed the padded length 3"):
        jaxrnn.pack_padded_sequence(x, [4, 2])
    with pytest.raises(ValueError, match=r"got 3 lengths for a batch of 2"):
        jaxrnn.pack_padded_sequence(x, [3, 2, 1])
    packed = jaxrnn.pack_padded_sequence(x, [3, 2])
    with pytest.raises(ValueError, match=r"total_length=2 is less than the longest sequence \(3\)"):
        jaxrnn.pad_packed_sequence(packed, total_length=2)
    with pytest.raises(TypeError, match=r"expected a PackedSequence, got ndarray"):
        jaxrnn.pad_packed_sequence(x)
    lstm = jaxrnn.LSTM(3, 4)
    variables = lstm.init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"LSTM: a PackedSequence carries its own lengths"):
        lstm.apply(variables, packed, seq_lengths=jnp.asarray([3, 2]))
