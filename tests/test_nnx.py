"""jaxrnn.nnx and jaxrnn.functional: the same computation as the linen layers, bit for bit, in NNX's idioms.

The torch parity of all three APIs is test_parity.py's; here: bit-identity of
linen, NNX and functional from the same weights (forward and gradients),
torch's constructors and names, dropout by ``nnx.Rngs`` and ``train()``/
``eval()``, the NNX transforms, saving and restoring, and the bridge.
"""

import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import interop
import jaxrnn
import jaxrnn.nnx as jnnx
from jaxrnn import functional

CONFIGS = [
    ("RNN", {"num_layers": 2, "nonlinearity": "relu", "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"num_layers": 2, "proj_size": 3}),
    ("GRU", {"num_layers": 3, "bias": False, "batch_first": True}),
]


def _inputs(config: dict, key: int = 0):
    rng = np.random.default_rng(key)
    shape = (4, 6, 5) if config.get("batch_first") else (6, 4, 5)
    return jnp.asarray(rng.standard_normal(shape), jnp.float32), jnp.asarray([6, 2, 5, 1])


@pytest.mark.parametrize("cpu_kernel", ["auto", "never"])
@pytest.mark.parametrize("kind,config", CONFIGS, ids=lambda c: c if isinstance(c, str) else "-".join(map(str, c)))
def test_linen_nnx_and_functional_are_bit_identical(kind, config, cpu_kernel):
    model = getattr(jnnx, kind)(5, 7, **config, cpu_kernel=cpu_kernel, rngs=nnx.Rngs(0))
    params = model.params()
    linen = getattr(jaxrnn, kind)(5, 7, **config, cpu_kernel=cpu_kernel)
    fn = getattr(functional, kind.lower())
    extra = {k: v for k, v in config.items() if k in ("batch_first", "nonlinearity")}
    x, lengths = _inputs(config)
    graphdef, _ = nnx.split(model)

    def loss_nnx(params, x):
        m = nnx.merge(graphdef, nnx.State({k: nnx.Param(v) for k, v in params.items()}))
        out, h_n = m(x, seq_lengths=lengths)
        return (out**2).sum() + sum((h**3).sum() for h in jax.tree.leaves(h_n)), (out, h_n)

    def loss_linen(params, x):
        out, h_n = linen.apply({"params": params}, x, seq_lengths=lengths)
        return (out**2).sum() + sum((h**3).sum() for h in jax.tree.leaves(h_n)), (out, h_n)

    def loss_functional(params, x):
        out, h_n = fn(params, x, seq_lengths=lengths, cpu_kernel=cpu_kernel, **extra)
        return (out**2).sum() + sum((h**3).sum() for h in jax.tree.leaves(h_n)), (out, h_n)

    results = [
        jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(params, x)
        for f in (loss_nnx, loss_linen, loss_functional)
    ]
    reference = jax.tree.leaves(results[0])
    for other in results[1:]:
        for a, b in zip(reference, jax.tree.leaves(other), strict=True):
            np.testing.assert_array_equal(a, b)
    model.eval()
    eager = model(x, seq_lengths=lengths)  # eager NNX call: the same numbers as the jitted ones
    np.testing.assert_allclose(eager[0], results[0][0][1][0], rtol=0, atol=1e-6)


def test_constructors_follow_torch_order_and_names():
    rngs = nnx.Rngs(0)
    rnn = jnnx.RNN(4, 8, 2, "relu", False, True, 0.0, True, rngs=rngs)
    assert (rnn.num_layers, rnn.nonlinearity, rnn.bias, rnn.batch_first, rnn.bidirectional) == (
        2,
        "relu",
        False,
        True,
        True,
    )
    lstm = jnnx.LSTM(4, 8, 2, True, False, 0.25, False, 3, rngs=rngs)
    assert (lstm.dropout, lstm.proj_size) == (0.25, 3)
    for ours, theirs in [
        (rnn, torch.nn.RNN(4, 8, 2, "relu", False, True, 0.0, True)),
        (lstm, torch.nn.LSTM(4, 8, 2, True, False, 0.25, False, 3)),
        (jnnx.GRU(4, 8, rngs=rngs), torch.nn.GRU(4, 8)),
        (jnnx.LSTMCell(4, 8, rngs=rngs), torch.nn.LSTMCell(4, 8)),
        (jnnx.RNNCell(4, 8, False, "relu", rngs=rngs), torch.nn.RNNCell(4, 8, False, "relu")),
    ]:
        state = nnx.state(ours, nnx.Param)
        shapes = {path[-1]: tuple(v[...].shape) for path, v in nnx.to_flat_state(state)}
        assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        bound = 1 / np.sqrt(8)
        assert all(np.abs(np.asarray(v[...])).max() <= bound for _, v in nnx.to_flat_state(state))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: jnnx.LSTM(4, 8, rngs=None), "rngs must be an nnx.Rngs"),
        (lambda: jnnx.LSTM(None, 8, rngs=nnx.Rngs(0)), "input_size is required"),
        (lambda: jnnx.GRU(4, 0, rngs=nnx.Rngs(0)), "hidden_size must be a positive int"),
        (lambda: jnnx.RNN(4, 8, 1, "sigmoid", rngs=nnx.Rngs(0)), "unknown nonlinearity 'sigmoid'"),
        (lambda: jnnx.LSTM(4, 8, proj_size=8, rngs=nnx.Rngs(0)), "proj_size must be smaller than hidden_size"),
        (lambda: jnnx.LSTM(4, 8, 2, dropout=1.5, rngs=nnx.Rngs(0)), r"dropout must be a number in \[0, 1\]"),
        (lambda: jnnx.GRU(4, 8, cpu_kernel="fast", rngs=nnx.Rngs(0)), "cpu_kernel must be"),
        (lambda: jnnx.LSTMCell(4, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 5))), "input has 5 features"),
        (lambda: jnnx.LSTM(4, 8, rngs=nnx.Rngs(0))(jnp.ones((2, 3, 5))), r"weight_ih_l0 \(32, 4\)"),
        (lambda: jnnx.LSTM(4, 8, rngs=nnx.Rngs(0))(jnp.ones((3, 4)), jnp.zeros((1, 8))), "hx must be a tuple"),
        (lambda: jnnx.GRU(4, 8, rngs=nnx.Rngs(0))(jnp.ones((3, 2, 4)), jnp.zeros((2, 2, 8))), r"expected hx of shape"),
    ],
)
def test_bad_arguments_are_named(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_dropout_follows_train_eval_and_rngs():
    x, _ = _inputs({})
    model = jnnx.LSTM(5, 7, num_layers=3, dropout=0.5, rngs=nnx.Rngs(0, dropout=1))
    first, _ = model(x)  # modules start in training mode, as torch's and nnx.Dropout do
    second, _ = model(x)
    assert not np.array_equal(first, second)  # the stream advances
    model.eval()
    a, _ = model(x)
    b, _ = model(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, functional.lstm(model.params(), x)[0])
    model.train()
    c, _ = model(x, rngs=jax.random.key(3))  # a key for this call
    d, _ = functional.lstm(model.params(), x, dropout=0.5, dropout_key=jax.random.key(3))
    np.testing.assert_array_equal(c, d)
    e, _ = model(x, deterministic=True)
    np.testing.assert_array_equal(e, a)
    with pytest.raises(ValueError, match="needs a dropout_key"):
        functional.lstm(model.params(), x, dropout=0.5, deterministic=False)


def test_trains_with_nnx_optimizer_under_nnx_jit():
    model = jnnx.GRU(5, 16, num_layers=2, batch_first=True, dropout=0.1, rngs=nnx.Rngs(0))
    head = nnx.Linear(16, 1, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (8, 10, 5))
    y = jnp.cumsum(x[..., :1], axis=1)  # running sum: needs memory

    class Model(nnx.Module):
        def __init__(self):
            self.rnn, self.fc = model, head

        def __call__(self, x):
            return self.fc(self.rnn(x)[0])

    net = Model()
    optimizer = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(net, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(net)
        optimizer.update(net, grads)
        return loss

    losses = [float(step(net, optimizer, x, y)) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_split_merge_and_serialization_restore_the_same_model(tmp_path):
    model = jnnx.LSTM(5, 7, num_layers=2, proj_size=3, rngs=nnx.Rngs(0))
    x, lengths = _inputs({})
    expected, _ = model(x, seq_lengths=lengths)
    graphdef, state = nnx.split(model)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x, seq_lengths=lengths)[0], expected)
    path = tmp_path / "lstm.msgpack"
    path.write_bytes(flax.serialization.msgpack_serialize(nnx.to_pure_dict(state)))
    fresh = jnnx.LSTM(5, 7, num_layers=2, proj_size=3, rngs=nnx.Rngs(99))
    _, fresh_state = nnx.split(fresh)
    nnx.replace_by_pure_dict(fresh_state, flax.serialization.msgpack_restore(path.read_bytes()))
    nnx.update(fresh, fresh_state)
    np.testing.assert_array_equal(fresh(x, seq_lengths=lengths)[0], expected)


def test_nnx_vmap_and_scan():
    layer = jnnx.GRU(5, 7, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.key(1), (3, 6, 2, 5))  # 3 independent (L, N, H_in) batches
    vmapped = nnx.vmap(lambda m, x: m(x)[0], in_axes=(None, 0))(layer, xs)
    for i in range(3):
        np.testing.assert_allclose(vmapped[i], layer(xs[i])[0], atol=1e-6)

    cell = jnnx.GRUCell(5, 7, rngs=nnx.Rngs(0))
    step = nnx.scan(lambda c, h, x_t: (c(x_t, h),) * 2, in_axes=(None, nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    _, hs = step(cell, jnp.zeros((2, 7)), xs[0])  # the cell scanned by nnx.scan = the layer with its weights
    layer_from_cell, _ = functional.gru({f"{k}_l0": v for k, v in cell.params().items()}, xs[0])
    np.testing.assert_allclose(hs, layer_from_cell, atol=1e-6)


def test_functional_reads_structure_from_keys_and_names_bad_ones():
    key = jax.random.key(0)
    params = functional.init_params(key, "lstm", 5, 7, num_layers=2, bidirectional=True, proj_size=3)
    torch_keys = torch.nn.LSTM(5, 7, 2, bidirectional=True, proj_size=3).state_dict()
    assert {k: v.shape for k, v in params.items()} == {k: tuple(v.shape) for k, v in torch_keys.items()}
    x, _ = _inputs({})
    out, (h, c) = functional.lstm(params, x)
    assert out.shape == (6, 4, 6) and h.shape == (4, 4, 3) and c.shape == (4, 4, 7)
    with pytest.raises(ValueError, match="num_layers=3, but the params hold num_layers=2"):
        functional.lstm(params, x, num_layers=3)
    missing = {k: v for k, v in params.items() if k != "bias_hh_l1"}
    with pytest.raises(ValueError, match="missing keys: bias_hh_l1"):
        functional.lstm(missing, x)
    bad = {**params, "weight_hh_l1": jnp.zeros((28, 4))}
    with pytest.raises(ValueError, match=r"shape mismatch for weight_hh_l1: expected \(28, 3\), got \(28, 4\)"):
        functional.lstm(bad, x)
    with pytest.raises(ValueError, match="unexpected keys: fc.weight"):
        functional.lstm({**params, "fc.weight": jnp.zeros(3)}, x)
    with pytest.raises(ValueError, match="params has no 'weight_ih_l0'"):
        functional.gru({"weight_ih": jnp.zeros((21, 5))}, x)
    with pytest.raises(ValueError, match="need 4\\*hidden_size rows|both need"):
        functional.lstm(functional.init_params(key, "gru", 5, 7), x)
    cell = functional.init_cell_params(key, "gru", 5, 7)
    np.testing.assert_allclose(functional.gru_cell(cell, x[0]), torch_gru_cell(cell, x[0]), atol=1e-6)


def torch_gru_cell(params, x):
    cell = torch.nn.GRUCell(5, 7)
    cell.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in params.items()})
    with torch.no_grad():
        return cell(torch.tensor(np.asarray(x))).numpy()


class TorchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.rnn = torch.nn.LSTM(6, 8, 2, batch_first=True)
        self.fc = torch.nn.Linear(8, 11)

    def forward(self, ids):
        return self.fc(self.rnn(self.embed(ids))[0])


class NNXModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(11, 6, rngs=rngs)
        self.rnn = jnnx.LSTM(6, 8, 2, batch_first=True, rngs=rngs)
        self.fc = nnx.Linear(8, 11, rngs=rngs)

    def __call__(self, ids):
        return self.fc(self.rnn(self.embed(ids))[0])


def test_whole_nnx_model_loads_and_exports_a_torch_state_dict():
    torch.manual_seed(0)
    torch_model = TorchModel().eval()
    model = NNXModel(nnx.Rngs(0))
    assert interop.load_state_dict(model, torch_model.state_dict()) is model  # no example input: NNX is eager
    ids = np.random.default_rng(0).integers(0, 11, (3, 9))
    with torch.no_grad():
        expected = torch_model(torch.tensor(ids)).numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids)), expected, atol=1e-5)
    exported = interop.to_state_dict(model)
    assert set(exported) == set(torch_model.state_dict())
    for k, v in torch_model.state_dict().items():
        np.testing.assert_array_equal(exported[k], v.numpy())


def test_a_bad_state_dict_names_each_key_and_changes_nothing():
    model = NNXModel(nnx.Rngs(0))
    before = interop.to_state_dict(model)
    state = {k: v.clone() for k, v in TorchModel().state_dict().items()}
    del state["rnn.bias_hh_l1"]
    state["fc.weight"] = torch.zeros(11, 9)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(interop.StateDictError) as error:
        interop.load_state_dict(model, state)
    assert error.value.missing == ["rnn.bias_hh_l1"]
    assert error.value.unexpected == ["extra.weight"]
    assert error.value.mismatched == [("fc.weight", (11, 8), (11, 9))]
    for k, v in interop.to_state_dict(model).items():
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(TypeError, match="needs no example inputs"):
        interop.load_state_dict(model, state, jnp.zeros((1, 2), jnp.int32))


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.nn.GRU(3, 4, 2, batch_first=True, bidirectional=True),
        lambda: torch.nn.RNN(3, 4, nonlinearity="relu"),
        lambda: torch.nn.LSTM(3, 6, 2, proj_size=2),
        lambda: torch.nn.LSTMCell(3, 4),
    ],
)
def test_from_torch_in_every_api(make):
    torch.manual_seed(0)
    original = make().eval()
    cell = type(original).__name__.endswith("Cell")
    x = torch.randn(5, 3) if cell else torch.randn(2, 5, 3)
    with torch.no_grad():
        expected = original(x)
    expected = expected if cell else expected[0]
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    xj = jnp.asarray(x.numpy())

    module, variables = interop.from_torch(original)
    nnx_module = interop.from_torch(original, api="nnx")
    params, kwargs = interop.from_torch(original, api="functional")
    name = type(original).__name__.removesuffix("Cell").lower() + ("_cell" if cell else "")
    results = [module.apply(variables, xj), nnx_module(xj), getattr(functional, name)(params, xj, **kwargs)]
    for result in results:
        first = result[0] if isinstance(result, tuple) else result
        np.testing.assert_allclose(first, expected, atol=1e-6)
    back = interop.to_torch(nnx_module)
    for k, v in original.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    with pytest.raises(TypeError, match="holds its parameters"):
        interop.to_torch(nnx_module, variables)
    with pytest.raises(ValueError, match="api must be one of"):
        interop.from_torch(original, api="haiku")


def test_nnx_is_reachable_after_import_jaxrnn():
    """``jaxrnn.nnx`` after a plain ``import jaxrnn`` (imported on first use: Flax NNX is not loaded before)."""
    code = (
        "import sys, jaxrnn\n"
        "assert 'jaxrnn.nnx' not in sys.modules\n"
        "from flax import nnx\n"
        "print(type(jaxrnn.nnx.GRU(3, 4, rngs=nnx.Rngs(0))).__qualname__)\n"
        "try:\n    jaxrnn.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["GRU", "module 'jaxrnn' has no attribute 'no_such_name'"]
