"""Torch weights in Flax's own recurrent cells and back, through interop.load_state_dict / to_state_dict.

Flax's ``nn.LSTMCell``, ``nn.OptimizedLSTMCell``, ``nn.GRUCell``, ``nn.SimpleCell`` and their NNX twins hold
torch's weights in another layout (per-gate or fused ``Dense`` kernels, transposed, one bias where torch has two).
Here every cell, in both APIs and both float widths, runs bidirectionally under ``nn.Bidirectional`` with
``seq_lengths`` and must give torch's packed results on the valid steps and torch's final states; its exported
state_dict must load into the torch layer with ``strict=True`` and give torch's outputs again. What cannot be held
(``nnx.GRUCell`` and a nonzero ``b_hn``, ``bias=False``, ``proj_size``, another activation) is refused by name.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import interop
from interop.parity import FLAX_CELLS, flax_cell_diffs
from interop.state_dict import StateDictError

TOL = {"float32": 1e-5, "float64": 1e-12}
N, L, I, H = 3, 6, 4, 5
# Flax's own cells; of jaxrnn's Flax* cells (which tests/test_flax_wrappers.py holds to the jaxrnn layers) the LSTM,
# for the rename= path. experiments/flax_parity.py runs them all.
CASES = [(kind, cell, "tanh") for kind, cells in FLAX_CELLS.items() for cell in cells if not cell.startswith("jaxrnn")]
CASES += [("LSTM", "jaxrnn.FlaxLSTMCell", "tanh"), ("RNN", "SimpleCell", "relu")]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(("kind", "cell", "nonlinearity"), CASES, ids=[f"{c}-{n}" for _, c, n in CASES])
def test_flax_cells_give_torchs_results_and_export_back(kind, cell, nonlinearity, api, dtype):
    """Both directions' outputs on the valid steps and final states equal torch's packed run (the float64 bound
    also proves the Flax model computes in float64), and the exported state_dict loads into torch strictly."""
    with jax.enable_x64(dtype == "float64"):
        torch.manual_seed(0)
        extra = {"nonlinearity": nonlinearity} if kind == "RNN" else {}
        layer = getattr(torch.nn, kind)(I, H, batch_first=True, bidirectional=True, **extra).to(getattr(torch, dtype))
        if api == "nnx" and cell == "GRUCell":  # nnx.GRUCell has no b_hn: with it zero, the layer is one it can hold
            with torch.no_grad():
                layer.bias_hh_l0[2 * H :] = 0
                layer.bias_hh_l0_reverse[2 * H :] = 0
        diffs = flax_cell_diffs(layer, cell, api, batch=N, seq_len=L)
    expected = {f"{name} ({d})" for name in ("output", "h_n") for d in ("forward", "backward")}
    expected |= {f"c_n ({d})" for d in ("forward", "backward")} if kind == "LSTM" else set()
    assert set(diffs) == expected | {"exported output"}
    assert max(diffs.values()) <= TOL[dtype], diffs


class TorchModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, I)
        self.lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(H, 3)

    def forward(self, tokens):
        return self.fc(self.lstm(self.embed(tokens))[0])


class LinenModel(nn.Module):
    """The same model with Flax's own cells: the stack's layers are named lstm_l0 and lstm_l1."""

    def setup(self):
        self.embed = nn.Embed(11, I)
        self.lstm_l0 = nn.RNN(nn.OptimizedLSTMCell(H))
        self.lstm_l1 = nn.RNN(nn.OptimizedLSTMCell(H))
        self.fc = nn.Dense(3)

    def __call__(self, tokens):
        return self.fc(self.lstm_l1(self.lstm_l0(self.embed(tokens))))


class NNXModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(11, I, rngs=rngs)
        self.lstm_l0 = nnx.RNN(nnx.LSTMCell(I, H, rngs=rngs))
        self.lstm_l1 = nnx.RNN(nnx.LSTMCell(H, H, rngs=rngs))
        self.fc = nnx.Linear(H, 3, rngs=rngs)

    def __call__(self, tokens):
        return self.fc(self.lstm_l1(self.lstm_l0(self.embed(tokens))))


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_a_whole_model_with_a_stacked_lstm_ports_both_ways(api):
    torch.manual_seed(0)
    model = TorchModel().eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=(N, L))
    with torch.no_grad():
        want = model(torch.from_numpy(tokens)).numpy()
    if api == "linen":
        flax_model = LinenModel()
        variables = interop.load_state_dict(flax_model, model.state_dict(), jnp.asarray(tokens))
        got = flax_model.apply(variables, jnp.asarray(tokens))
        exported = interop.to_state_dict(variables)
    else:
        flax_model = NNXModel(nnx.Rngs(0))
        interop.load_state_dict(flax_model, model.state_dict())
        got = flax_model(jnp.asarray(tokens))
        exported = interop.to_state_dict(flax_model)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)
    again = TorchModel()
    again.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.from_numpy(tokens)).numpy(), want, rtol=0, atol=1e-5)


def test_a_lone_rnn_and_a_lone_cell_load_torchs_layer_and_cell_keys():
    """A lone nn.RNN takes an nn.GRU's keys (its cell is 'cell', which names nothing in torch); a lone cell
    takes an nn.GRUCell's (weight_ih without _l0) and computes torch's step."""
    torch.manual_seed(0)
    layer, cell = torch.nn.GRU(I, H, batch_first=True).eval(), torch.nn.GRUCell(I, H).eval()
    x = np.random.default_rng(0).normal(size=(N, L, I)).astype("float32")
    rnn = nn.RNN(nn.GRUCell(H))
    variables = interop.load_state_dict(rnn, layer.state_dict(), jnp.asarray(x))
    with torch.no_grad():
        want = layer(torch.from_numpy(x))[0].numpy()
        want_step = cell(torch.from_numpy(x[:, 0])).numpy()
    np.testing.assert_allclose(np.asarray(rnn.apply(variables, jnp.asarray(x))), want, rtol=0, atol=1e-5)
    assert sorted(interop.to_state_dict(variables)) == sorted(layer.state_dict())

    flax_cell_module = nn.GRUCell(H)
    carry = jnp.zeros((N, H))
    cell_variables = interop.load_state_dict(flax_cell_module, cell.state_dict(), carry, jnp.asarray(x[:, 0]))
    _, step = flax_cell_module.apply(cell_variables, carry, jnp.asarray(x[:, 0]))
    np.testing.assert_allclose(np.asarray(step), want_step, rtol=0, atol=1e-5)
    exported = interop.to_state_dict(cell_variables, rename=interop.cell_keys(""))
    torch.nn.GRUCell(I, H).load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def nnx_gru(rngs_seed: int = 0) -> nnx.Module:
    model = nnx.Module()
    model.gru = nnx.RNN(nnx.GRUCell(I, H, rngs=nnx.Rngs(rngs_seed)))
    return model


def test_nnx_gru_refuses_a_nonzero_b_hn_by_name_and_changes_nothing():
    torch.manual_seed(0)
    sd = {"gru." + k: v for k, v in torch.nn.GRU(I, H).state_dict().items()}
    model = nnx_gru()
    before = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    with pytest.raises(StateDictError) as error:
        interop.load_state_dict(model, sd)
    message = str(error.value)
    assert "cannot hold gru.bias_hh_l0" in message and "n-gate" in message and "b_hn" in message
    assert "jaxrnn.nnx.GRU" in message and "nnx.GRUCell at 'gru/cell'" in message
    assert error.value.lost and not error.value.missing
    after = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert all(np.array_equal(before[p], after[p]) for p in before)


def test_torch_layers_flax_cells_cannot_express_are_refused_with_the_jaxrnn_layer_to_use():
    x = jnp.zeros((N, L, I))

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.RNN(nn.LSTMCell(H), name="lstm")(x)

    def load(torch_layer, model=None):
        sd = {"lstm." + k: v for k, v in torch_layer.state_dict().items()}
        with pytest.raises(StateDictError) as error:
            interop.load_state_dict(model or nn.RNN(nn.LSTMCell(H, name="lstm")), sd, x)
        return str(error.value)

    class Named(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.RNN(nn.LSTMCell(H, name="lstm"))(x)

    message = load(torch.nn.LSTM(I, H, bias=False), Named())
    assert "missing keys (2): lstm.bias_ih_l0, lstm.bias_hh_l0" in message
    assert "bias=False" in message and "jaxrnn.LSTM(..., bias=False)" in message

    message = load(torch.nn.LSTM(I, H, proj_size=3), Named())
    assert "lstm.weight_hr_l0" in message and "proj_size" in message and "jaxrnn.LSTM(..., proj_size=...)" in message
    assert "shape mismatch for lstm.weight_hh_l0: expected (20, 5), got (20, 3)" in message

    message = load(torch.nn.LSTM(I, H, num_layers=2), Named())
    assert "unexpected keys (4): lstm.weight_ih_l1" in message and "_l{k}" in message

    # A cell created in a @compact method belongs to that module: Flax names it LSTMCell_0, not 'lstm'.
    message = load(torch.nn.LSTM(I, H), Model())
    assert "missing keys (4): LSTMCell_0.weight_ih_l0" in message and "name='lstm'" in message


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_cells_that_compute_something_else_than_torch_are_refused(api):
    if api == "linen":
        model = nn.RNN(nn.LSTMCell(H, gate_fn=nn.hard_sigmoid))
        with pytest.raises(ValueError, match=r"LSTMCell at 'cell' has gate_fn=hard_sigmoid.*sigmoid gates and tanh"):
            interop.load_state_dict(model, torch.nn.LSTM(I, H).state_dict(), jnp.zeros((N, L, I)))
        return
    model = nnx.RNN(nnx.SimpleCell(I, H, residual=True, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"SimpleCell at 'cell' has residual=True.*no residual connection"):
        interop.load_state_dict(model, torch.nn.RNN(I, H).state_dict())
    with pytest.raises(ValueError, match="residual=True"):
        interop.to_state_dict(model)


def test_two_cells_standing_for_the_same_torch_layer_are_an_error():
    class Model(nn.Module):
        def setup(self):
            self.lstm = nn.RNN(nn.LSTMCell(H))
            self.lstm_l0 = nn.RNN(nn.LSTMCell(H))

        def __call__(self, x):
            return self.lstm_l0(self.lstm(x))

    with pytest.raises(ValueError, match=r"'lstm/cell'.*'lstm_l0/cell'.*lstm.weight_ih_l0"):
        interop.load_state_dict(Model(), torch.nn.LSTM(I, H).state_dict(), jnp.zeros((N, L, I)))


def test_a_float64_checkpoint_into_float32_flax_cells_warns_with_the_torch_keys():
    with jax.enable_x64(True):
        sd = torch.nn.GRU(I, H).double().state_dict()
        with pytest.warns(interop.NarrowingWarning, match=r"4 weights .* float64 .* bias_hh_l0, bias_ih_l0"):
            interop.load_state_dict(nn.RNN(nn.GRUCell(H)), sd, jnp.zeros((N, L, I), jnp.float32))


def test_an_nnx_list_of_rnns_loads_a_torch_modulelist_of_one_layer_lstms():
    torch.manual_seed(0)
    torch_layers = torch.nn.ModuleList([torch.nn.LSTM(I, H, batch_first=True), torch.nn.LSTM(H, H, batch_first=True)])
    model = nnx.Module()
    cells = [nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)), nnx.LSTMCell(H, H, rngs=nnx.Rngs(1))]
    model.layers = nnx.List([nnx.RNN(cell) for cell in cells])
    sd = {"layers." + k: v for k, v in torch_layers.state_dict().items()}
    interop.load_state_dict(model, sd)
    x = np.random.default_rng(0).normal(size=(N, L, I)).astype("float32")
    with torch.no_grad():
        want = torch_layers[1](torch_layers[0](torch.from_numpy(x))[0])[0].numpy()
    got = model.layers[1](model.layers[0](jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5)
    assert list(interop.to_state_dict(model)) == list(sd)


def test_flax_cell_diffs_names_what_it_cannot_compare():
    with pytest.raises(ValueError, match=r"cell must be one of \('GRUCell', 'jaxrnn.FlaxGRUCell'\) for torch's GRU"):
        flax_cell_diffs(torch.nn.GRU(I, H, batch_first=True, bidirectional=True), "LSTMCell")
    with pytest.raises(ValueError, match="one-layer bidirectional torch layer with batch_first=True"):
        flax_cell_diffs(torch.nn.GRU(I, H, batch_first=True), "GRUCell")
