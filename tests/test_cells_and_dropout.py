"""Lone cells against torch's cells; dropout between layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import interop
import jaxrnn


@pytest.mark.parametrize("kind", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("given_hx", [True, False])
def test_cells_match_torch(kind, batched, given_hx):
    torch.manual_seed(0)
    torch_cell = getattr(torch.nn, kind)(3, 5)
    cell, variables = interop.from_torch(torch_cell)
    rng = np.random.default_rng(0)
    lead = (4,) if batched else ()
    x = rng.standard_normal(lead + (3,)).astype(np.float32)
    hx = None
    if given_hx:
        hx = rng.standard_normal(lead + (5,)).astype(np.float32)
        if kind == "LSTMCell":
            hx = (hx, rng.standard_normal(lead + (5,)).astype(np.float32))
    t_hx = None if hx is None else (tuple(map(torch.tensor, hx)) if kind == "LSTMCell" else torch.tensor(hx))
    with torch.no_grad():
        expected = torch_cell(torch.tensor(x), t_hx)
    got = cell.apply(variables, x, hx)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(tuple(expected) if kind == "LSTMCell" else expected)):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), atol=1e-6)


def test_cell_defaults_and_positional_args_follow_torch():
    cell = jaxrnn.RNNCell(3, 5, False, "relu")  # torch: RNNCell(input_size, hidden_size, bias, nonlinearity)
    assert (cell.input_size, cell.hidden_size, cell.bias, cell.nonlinearity) == (3, 5, False, "relu")
    params = cell.init(jax.random.key(0), jnp.ones((2, 3)))["params"]
    assert sorted(params) == ["weight_hh", "weight_ih"]


def test_dropout_between_layers_only():
    x = jax.random.normal(jax.random.key(0), (6, 2, 3))
    one = jaxrnn.LSTM(3, 8, num_layers=1, dropout=0.5)
    variables = one.init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2)}
    # A single layer has no dropout (torch applies it between layers only).
    train_out, _ = one.apply(variables, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(train_out, one.apply(variables, x)[0])

    two = jaxrnn.GRU(3, 8, num_layers=2, dropout=0.5)
    variables = two.init(jax.random.key(1), x)
    plain = jaxrnn.GRU(3, 8, num_layers=2)
    eval_out, _ = two.apply(variables, x)
    np.testing.assert_array_equal(eval_out, plain.apply(variables, x)[0])  # deterministic: no dropout
    train_a, _ = two.apply(variables, x, deterministic=False, rngs=rngs)
    train_b, _ = two.apply(variables, x, deterministic=False, rngs=rngs)
    train_c, _ = two.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(train_a, train_b)  # same key, same mask
    assert not np.allclose(train_a, eval_out) and not np.allclose(train_a, train_c)
