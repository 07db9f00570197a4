"""PyTorch's constructor and forward signatures: every positional prefix builds the layer torch builds,
each argument is checked by name, and the initial state is ``hx`` (positional or keyword)."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxrnn

# torch's positional order, with values that differ from every default
ARGS = {
    "RNN": [("input_size", 4), ("hidden_size", 6), ("num_layers", 2), ("nonlinearity", "relu"), ("bias", False),
            ("batch_first", True), ("dropout", 0.25), ("bidirectional", True)],
    "LSTM": [("input_size", 4), ("hidden_size", 6), ("num_layers", 2), ("bias", False), ("batch_first", True),
             ("dropout", 0.25), ("bidirectional", True), ("proj_size", 3)],
    "GRU": [("input_size", 4), ("hidden_size", 6), ("num_layers", 2), ("bias", False), ("batch_first", True),
            ("dropout", 0.25), ("bidirectional", True)],
}  # fmt: skip
CASES = [(kind, k) for kind, args in ARGS.items() for k in range(2, len(args) + 1)]


def _compare(kind: str, t_module, j_module) -> None:
    for name, _ in ARGS[kind]:
        assert getattr(j_module, name) == getattr(t_module, name), name
    t_module.eval()  # no dropout: jaxrnn's default (deterministic=True)
    x = np.random.default_rng(0).standard_normal((3, 5, 4) if t_module.batch_first else (5, 3, 4)).astype(np.float32)
    params = {"params": {k: jnp.asarray(v.detach().numpy()) for k, v in t_module.state_dict().items()}}
    with torch.no_grad():
        t_out, _ = t_module(torch.tensor(x))
    j_out, _ = j_module.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(j_out, t_out.numpy(), atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*dropout")
@pytest.mark.parametrize("kind, k", CASES, ids=[f"{kind}-{k}" for kind, k in CASES])
def test_every_positional_prefix_builds_torchs_layer(kind, k):
    values = [v for _, v in ARGS[kind][:k]]
    _compare(kind, getattr(torch.nn, kind)(*values), getattr(jaxrnn, kind)(*values))


@pytest.mark.filterwarnings("ignore:.*dropout")
@pytest.mark.parametrize("kind", ARGS)
def test_keywords_build_torchs_layer(kind):
    kwargs = dict(ARGS[kind])
    _compare(kind, getattr(torch.nn, kind)(**kwargs), getattr(jaxrnn, kind)(**kwargs))


def test_relu_rnn_positionally_is_a_relu_rnn():
    assert jaxrnn.RNN(4, 8, 2, "relu").nonlinearity == "relu"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: jaxrnn.LSTM(4, 8, 2, "relu"), "LSTM: bias must be a bool, got 'relu'"),
        (lambda: jaxrnn.GRU(4, 8, batch_first=1), "GRU: batch_first must be a bool, got 1"),
        (lambda: jaxrnn.RNN(4, 8, bidirectional="yes"), "RNN: bidirectional must be a bool, got 'yes'"),
        (lambda: jaxrnn.RNN(4, 8, 1.5), "RNN: num_layers must be a positive int, got 1.5"),
        (lambda: jaxrnn.GRU(4, True), "GRU: hidden_size must be a positive int, got True"),
        (lambda: jaxrnn.GRU(0, 8), "GRU: input_size must be a positive int, got 0"),
        (lambda: jaxrnn.LSTM(4, 8, 2, dropout=True), r"LSTM: dropout must be a number in \[0, 1\], got True"),
        (lambda: jaxrnn.LSTM(4, 8, 2, dropout="0.5"), r"LSTM: dropout must be a number in \[0, 1\], got '0.5'"),
        (lambda: jaxrnn.LSTM(4, 8, proj_size="3"), "LSTM: proj_size must be a non-negative int, got '3'"),
        (lambda: jaxrnn.RNN(4, 8, 1, "sigmoid"), "RNN: unknown nonlinearity 'sigmoid'"),
        (lambda: jaxrnn.GRU(4, 8, fused_backward="yes"), "GRU: fused_backward must be a bool, got 'yes'"),
    ],
)
def test_each_argument_is_checked_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dropout_with_one_layer_warns_as_torch_does():
    with pytest.warns(UserWarning, match="dropout acts between recurrent layers"):
        jaxrnn.GRU(4, 8, dropout=0.5)


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_hx_positional_and_keyword(kind):
    t_module = getattr(torch.nn, kind)(4, 6, 2)
    j_module = getattr(jaxrnn, kind)(4, 6, 2)
    params = {"params": {k: jnp.asarray(v.detach().numpy()) for k, v in t_module.state_dict().items()}}
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    h = rng.standard_normal((2, 3, 6)).astype(np.float32)
    t_hx = (torch.tensor(h), torch.tensor(-h)) if kind == "LSTM" else torch.tensor(h)
    j_hx = (jnp.asarray(h), jnp.asarray(-h)) if kind == "LSTM" else jnp.asarray(h)
    with torch.no_grad():
        want = t_module(torch.tensor(x), t_hx)[0].numpy()
        assert np.allclose(t_module(torch.tensor(x), hx=t_hx)[0].numpy(), want)
    for got in (j_module.apply(params, jnp.asarray(x), j_hx)[0], j_module.apply(params, jnp.asarray(x), hx=j_hx)[0]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.warns(DeprecationWarning, match="h_0= is deprecated; pass the initial state as hx"):
        old = j_module.apply(params, jnp.asarray(x), h_0=j_hx)[0]
    np.testing.assert_allclose(old, want, atol=1e-5)
    with pytest.raises(ValueError, match="pass the initial state once, as hx"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        j_module.apply(params, jnp.asarray(x), j_hx, h_0=j_hx)
