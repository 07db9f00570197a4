"""jaxrnn.init: the IRNN and forget-gate-bias initialisations, opt-in, the same on linen, NNX and functional params."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxrnn
import jaxrnn.nnx
from jaxrnn.init import forget_gate_bias, irnn


def test_irnn_sets_identity_zero_biases_and_small_inputs_on_every_layer_and_direction():
    layer = jaxrnn.RNN(3, 5, num_layers=2, bidirectional=True, nonlinearity="relu")
    params = layer.init(jax.random.key(0), jnp.zeros((4, 2, 3)))["params"]
    changed = irnn(params, jax.random.key(1))
    assert set(changed) == set(params) and params["weight_hh_l0"] is not changed["weight_hh_l0"]
    for name, value in changed.items():
        if name.startswith("weight_hh"):
            np.testing.assert_array_equal(value, np.eye(5))
        elif name.startswith("bias"):
            assert not np.any(value)
        else:
            assert value.shape == params[name].shape and 0 < float(jnp.std(value)) < 3e-3
    x = jax.random.normal(jax.random.key(2), (4, 2, 3))
    out, _ = layer.apply({"params": changed}, x)  # the layer runs with them
    assert np.all(np.isfinite(out))


def test_irnn_refuses_gated_cells_and_foreign_dicts():
    lstm = jaxrnn.LSTM(3, 5).init(jax.random.key(0), jnp.zeros((2, 1, 3)))["params"]
    with pytest.raises(ValueError, match=r"irnn: weight_hh_l0 is \(20, 5\), not square"):
        irnn(lstm, jax.random.key(0))
    with pytest.raises(ValueError, match=r"pass the layer's own dict, e.g. variables\['params'\]\['rnn'\]"):
        irnn({"rnn": lstm}, jax.random.key(0))
    with pytest.raises(TypeError, match="expected a params dict or a jaxrnn.nnx layer, got list"):
        irnn([1], jax.random.key(0))


def test_forget_gate_bias_is_the_same_in_linen_nnx_and_functional():
    linen = jaxrnn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2)
    params = linen.init(jax.random.key(0), jnp.zeros((4, 2, 3)))["params"]
    changed = forget_gate_bias(params)
    for name, value in changed.items():
        if name.startswith("bias"):
            old = params[name]
            np.testing.assert_array_equal(value[5:10], 1.0 if name.startswith("bias_ih") else 0.0)
            np.testing.assert_array_equal(np.delete(value, np.s_[5:10]), np.delete(old, np.s_[5:10]))
        else:
            assert value is params[name]

    module = jaxrnn.nnx.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, rngs=nnx.Rngs(0))
    for name, value in params.items():
        getattr(module, name)[...] = value
    assert forget_gate_bias(module) is module
    for name, value in changed.items():
        np.testing.assert_array_equal(getattr(module, name)[...], value)

    x = jax.random.normal(jax.random.key(1), (4, 2, 3))
    out_linen, _ = linen.apply({"params": changed}, x)
    out_functional, _ = jaxrnn.functional.lstm(changed, x)
    module.eval()
    out_nnx, _ = module(x)
    np.testing.assert_array_equal(out_linen, out_functional)
    np.testing.assert_array_equal(out_linen, out_nnx)


def test_forget_gate_bias_refuses_what_has_no_forget_gate():
    gru = jaxrnn.GRU(3, 4).init(jax.random.key(0), jnp.zeros((2, 1, 3)))["params"]
    with pytest.raises(ValueError, match=r"bias_ih_l0 has 12 rows for hidden size 4, not an LSTM's 4 \* 4"):
        forget_gate_bias(gru)
    no_bias = jaxrnn.LSTM(3, 4, bias=False).init(jax.random.key(0), jnp.zeros((2, 1, 3)))["params"]
    with pytest.raises(ValueError, match=r"no biases \(bias=False\)"):
        forget_gate_bias(no_bias)
