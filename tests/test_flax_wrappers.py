"""jaxrnn's cells inside Flax's own recurrent wrappers: ``flax.linen.RNN``, ``nn.Bidirectional``, the ``nn.scan``
idiom and ``flax.nnx.RNN`` drive the Flax* cells (torch's parameters and step, Flax's call convention) to the
results of the jaxrnn layer with the same weights, and so of torch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxrnn
import jaxrnn.nnx as jnnx

LINEN = {  # Flax-convention cell, the jaxrnn layer, extra arguments
    "lstm": (jaxrnn.FlaxLSTMCell, jaxrnn.LSTM, {}),
    "gru": (jaxrnn.FlaxGRUCell, jaxrnn.GRU, {}),
    "rnn_relu": (jaxrnn.FlaxRNNCell, jaxrnn.RNN, {"nonlinearity": "relu"}),
}
NNX = {
    "lstm": (jnnx.FlaxLSTMCell, jnnx.LSTM, {}),
    "gru": (jnnx.FlaxGRUCell, jnnx.GRU, {}),
    "rnn_relu": (jnnx.FlaxRNNCell, jnnx.RNN, {"nonlinearity": "relu"}),
}
ATOL = 2e-6  # float32: a step of the cell against the layer's loop (projection in one matmul, or the CPU kernel)


def layer_params(cell_params: dict, suffix: str = "_l0") -> dict:
    return {name + suffix: value for name, value in cell_params.items()}


def states(carry):
    return carry if isinstance(carry, tuple) else (carry,)


@pytest.mark.parametrize("cell", LINEN)
def test_linen_rnn_drives_the_cell_to_the_layers_results(cell):
    """nn.RNN over the Flax cell: outputs and final carry equal the jaxrnn layer's, also with seq_lengths (on the
    valid steps: what Flax leaves in padded steps is its own; the carry is the last valid step's, as torch's)."""
    flax_cell, layer_cls, extra = LINEN[cell]
    x = jax.random.normal(jax.random.key(0), (4, 6, 3))
    rnn = nn.RNN(flax_cell(3, 5, **extra), return_carry=True)
    variables = rnn.init(jax.random.key(1), x)
    layer = layer_cls(3, 5, batch_first=True, **extra)
    params = {"params": layer_params(variables["params"]["cell"])}
    lengths = jnp.array([6, 2, 4, 1])
    for seq_lengths in (None, lengths):
        carry, out = rnn.apply(variables, x, seq_lengths=seq_lengths)
        ref, final = layer.apply(params, x, seq_lengths=seq_lengths)
        valid = np.arange(6)[None, :] < (6 if seq_lengths is None else np.asarray(lengths)[:, None])
        np.testing.assert_allclose(np.where(valid[..., None], out, 0), ref, atol=ATOL)
        for got, want in zip(states(carry), states(final)):
            np.testing.assert_allclose(got, want[0], atol=ATOL)


def test_linen_bidirectional_equals_a_bidirectional_layer():
    """nn.Bidirectional of two nn.RNN(FlaxGRUCell): the jaxrnn GRU(bidirectional=True) with forward = _l0,
    backward = _l0_reverse; outputs concatenated [forward, backward], as torch's."""
    x = jax.random.normal(jax.random.key(2), (3, 7, 4))
    bi = nn.Bidirectional(nn.RNN(jaxrnn.FlaxGRUCell(4, 6)), nn.RNN(jaxrnn.FlaxGRUCell(4, 6)))
    variables = bi.init(jax.random.key(3), x)
    forward, backward = (variables["params"][name]["cell"] for name in ("forward_rnn", "backward_rnn"))
    params = {"params": {**layer_params(forward), **layer_params(backward, "_l0_reverse")}}
    ref, _ = jaxrnn.GRU(4, 6, batch_first=True, bidirectional=True).apply(params, x)
    np.testing.assert_allclose(bi.apply(variables, x), ref, atol=ATOL)


def test_linen_scan_idiom_and_projection_carry():
    """The nn.scan idiom over FlaxLSTMCell (time-major, parameters broadcast) equals jaxrnn.LSTM, proj_size included:
    initialize_carry gives h (N, P) and c (N, H), torch's order."""
    x = jax.random.normal(jax.random.key(4), (5, 2, 3))  # (L, N, H_in)
    scan = nn.scan(
        jaxrnn.FlaxLSTMCell, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0
    )(3, 6, proj_size=2)
    carry = jaxrnn.FlaxLSTMCell(3, 6, proj_size=2).initialize_carry(None, x.shape[1:])
    assert [c.shape for c in carry] == [(2, 2), (2, 6)]
    variables = scan.init(jax.random.key(5), carry, x)
    (h, c), out = scan.apply(variables, carry, x)
    ref, (h_n, c_n) = jaxrnn.LSTM(3, 6, proj_size=2).apply({"params": layer_params(variables["params"])}, x)
    np.testing.assert_allclose(out, ref, atol=ATOL)
    np.testing.assert_allclose(h, h_n[0], atol=ATOL)
    np.testing.assert_allclose(c, c_n[0], atol=ATOL)


@pytest.mark.parametrize("cell", NNX)
def test_nnx_rnn_drives_the_cell_to_the_layers_results(cell):
    flax_cell, layer_cls, extra = NNX[cell]
    x = jax.random.normal(jax.random.key(6), (4, 6, 3))
    module = flax_cell(3, 5, **extra, rngs=nnx.Rngs(0))
    carry, out = nnx.RNN(module, return_carry=True, rngs=nnx.Rngs(1))(x)
    layer = layer_cls(3, 5, batch_first=True, **extra, rngs=nnx.Rngs(2))
    for name in module.param_names:
        getattr(layer, name + "_l0")[...] = getattr(module, name)[...]
    ref, final = layer(x)
    np.testing.assert_allclose(out, ref, atol=ATOL)
    for got, want in zip(states(carry), states(final)):
        np.testing.assert_allclose(got, want[0], atol=ATOL)


def test_linen_rnn_of_a_flax_cell_equals_torch():
    """End to end: torch.nn.LSTM's weights in nn.RNN(FlaxLSTMCell) give torch's outputs."""
    torch.manual_seed(0)
    t_lstm = torch.nn.LSTM(3, 5, batch_first=True)
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    want, _ = t_lstm(torch.from_numpy(x))
    cell_params = {k.removesuffix("_l0"): jnp.asarray(v.detach().numpy()) for k, v in t_lstm.state_dict().items()}
    out = nn.RNN(jaxrnn.FlaxLSTMCell(3, 5)).apply({"params": {"cell": cell_params}}, jnp.asarray(x))
    np.testing.assert_allclose(out, want.detach().numpy(), atol=1e-5)
