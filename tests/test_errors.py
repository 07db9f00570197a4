"""Every bad argument gets an exception that names the argument and what was expected."""

import jax
import jax.numpy as jnp
import pytest

import jaxrnn

KEY = jax.random.key(0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: jaxrnn.RNN(4, 8, nonlinearity="sigmoid"), "unknown nonlinearity 'sigmoid'"),
        (lambda: jaxrnn.RNNCell(4, 8, nonlinearity="gelu"), "unknown nonlinearity 'gelu'"),
        (lambda: jaxrnn.LSTM(4, 8, proj_size=8), "proj_size must be smaller than hidden_size.*proj_size=8"),
        (lambda: jaxrnn.LSTM(4, 8, proj_size=-1), "proj_size must be a non-negative int"),
        (lambda: jaxrnn.GRU(4, 8, 2, dropout=1.5), r"dropout must be a number in \[0, 1\], got 1.5"),
        (lambda: jaxrnn.GRU(4, 8, 2, dropout=-0.1), r"dropout must be a number in \[0, 1\], got -0.1"),
        (lambda: jaxrnn.LSTM(4), "hidden_size must be a positive int, got None"),
        (lambda: jaxrnn.LSTM(4, 0), "hidden_size must be a positive int, got 0"),
        (lambda: jaxrnn.RNN(4, 8, num_layers=0), "num_layers must be a positive int"),
        (lambda: jaxrnn.GRUCell(hidden_size=-2), "hidden_size must be a positive int"),
        (lambda: jaxrnn.RNN(hidden_size=8, unroll=0), "unroll must be a positive int"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_input_size_given_and_wrong():
    with pytest.raises(ValueError, match=r"input has 5 features.*input_size=4"):
        jaxrnn.LSTM(4, 8).init(KEY, jnp.ones((3, 2, 5)))
    with pytest.raises(ValueError, match=r"input has 5 features.*input_size=4"):
        jaxrnn.GRUCell(4, 8).init(KEY, jnp.ones((2, 5)))


def test_input_does_not_fit_the_parameters():
    module = jaxrnn.GRU(hidden_size=8, num_layers=2)
    variables = module.init(KEY, jnp.ones((3, 2, 4)))
    with pytest.raises(ValueError, match=r"weight_ih_l0 has shape \(24, 4\), but this call needs \(24, 5\)"):
        module.apply(variables, jnp.ones((3, 2, 5)))


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4, 5)])
def test_input_rank(shape):
    with pytest.raises(ValueError, match=r"expected input of shape \(L, N, H_in\) or unbatched \(L, H_in\)"):
        jaxrnn.RNN(hidden_size=2).init(KEY, jnp.ones(shape))
    if len(shape) > 1:
        with pytest.raises(ValueError, match=r"expected input of shape \(N, H_in\) or \(H_in,\)"):
            jaxrnn.RNNCell(hidden_size=2).init(KEY, jnp.ones(shape))


def test_wrong_h0_shape():
    module = jaxrnn.RNN(4, 8, num_layers=2, bidirectional=True)
    x = jnp.ones((5, 3, 4))
    variables = module.init(KEY, x)
    with pytest.raises(ValueError, match=r"expected hx of shape \(4, 3, 8\), got \(2, 3, 8\)"):
        module.apply(variables, x, jnp.zeros((2, 3, 8)))
    with pytest.raises(ValueError, match=r"expected hx of shape \(4, 8\), got \(4, 3, 8\)"):
        module.apply(variables, x[:, 0], jnp.zeros((4, 3, 8)))  # unbatched input, batched h_0


def test_wrong_lstm_state():
    module = jaxrnn.LSTM(4, 8, proj_size=3)
    x = jnp.ones((5, 2, 4))
    variables = module.init(KEY, x)
    with pytest.raises(ValueError, match="hx must be a tuple"):
        module.apply(variables, x, jnp.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"expected hx\[1\] \(c_0\) of shape \(1, 2, 8\), got \(1, 2, 3\)"):
        module.apply(variables, x, (jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3))))


def test_wrong_cell_state():
    cell = jaxrnn.LSTMCell(4, 8)
    x = jnp.ones((2, 4))
    variables = cell.init(KEY, x)
    with pytest.raises(ValueError, match=r"expected hx c of shape \(2, 8\).*got \(2, 7\)"):
        cell.apply(variables, x, (jnp.zeros((2, 8)), jnp.zeros((2, 7))))
    with pytest.raises(ValueError, match="hx must be a tuple"):
        cell.apply(variables, x, jnp.zeros((2, 8)))


def test_dropout_needs_an_rng_only_when_active():
    module = jaxrnn.LSTM(4, 8, num_layers=2, dropout=0.5)
    x = jnp.ones((5, 2, 4))
    variables = module.init(KEY, x)
    module.apply(variables, x)  # deterministic by default: no rng needed
    with pytest.raises(Exception, match="dropout"):
        module.apply(variables, x, deterministic=False)
