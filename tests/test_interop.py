"""The torch bridge: conversion both ways, whole-model state_dicts, checkpoint files, the check command."""

import re
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import interop
import jaxrnn
from interop.check import main as check_main

TORCH_MODULES = [
    lambda: torch.nn.RNN(3, 5, num_layers=2, nonlinearity="relu", bias=False, batch_first=True),
    lambda: torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, dropout=0.25),
    lambda: torch.nn.GRU(3, 4, bidirectional=True),
    lambda: torch.nn.RNNCell(3, 4, nonlinearity="relu"),
    lambda: torch.nn.LSTMCell(3, 4),
    lambda: torch.nn.GRUCell(3, 4, bias=False),
]


@pytest.mark.parametrize("make", TORCH_MODULES)
def test_round_trip_is_bit_identical(make):
    torch.manual_seed(0)
    original = make()
    module, variables = interop.from_torch(original)
    assert set(variables["params"]) == set(original.state_dict())  # torch's keys, unchanged
    back = interop.to_torch(module, variables)
    assert type(back) is type(original)
    for key, value in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "bidirectional", "proj_size"):
        assert getattr(back, attr, None) == getattr(original, attr, None), attr


@pytest.mark.parametrize("make", TORCH_MODULES)
def test_converted_module_matches_torch(make):
    torch.manual_seed(1)
    module = make().train()  # training mode: the comparison must still run without dropout
    diffs = interop.max_abs_diffs(module)
    assert diffs and max(diffs.values()) < 1e-5, diffs
    assert module.training  # and the module's mode is left as it was


def test_jax_initialised_module_exports_to_torch():
    module = jaxrnn.GRU(hidden_size=5, num_layers=2, batch_first=True)
    x = jax.random.normal(jax.random.key(0), (2, 7, 3))
    variables = module.init(jax.random.key(1), x)
    torch_module = interop.to_torch(module, variables)
    assert torch_module.input_size == 3 and torch_module.batch_first
    out, h_n = module.apply(variables, x)
    with torch.no_grad():
        t_out, t_h = torch_module(torch.tensor(np.asarray(x)))
    np.testing.assert_allclose(out, t_out.numpy(), atol=1e-6)
    np.testing.assert_allclose(h_n, t_h.numpy(), atol=1e-6)


def test_init_is_torch_uniform():
    module = jaxrnn.LSTM(hidden_size=16, proj_size=4)
    params = module.init(jax.random.key(0), jnp.ones((1, 1, 3)))["params"]
    for name, value in params.items():
        assert np.abs(value).max() <= 1 / 4, name  # U(-1/sqrt(16), 1/sqrt(16)), weight_hr too
    assert np.abs(params["weight_hh_l0"]).max() > 0.2  # spread over the range, not e.g. U(0, k)
    assert params["weight_hh_l0"].min() < -0.2


def test_from_torch_errors():
    with pytest.raises(TypeError, match="expected torch.nn.RNN, LSTM, GRU.*got Linear"):
        interop.from_torch(torch.nn.Linear(3, 4))
    with pytest.raises(ValueError, match="64-bit mode is off"):
        interop.from_torch(torch.nn.GRU(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="expected a jaxrnn RNN, LSTM, GRU or cell"):
        interop.to_torch(nn.Dense(3), {"params": {}})


def test_float64_round_trip():
    with jax.enable_x64(True):
        original = torch.nn.LSTM(3, 4, dtype=torch.float64)
        module, variables = interop.from_torch(original)
        assert variables["params"]["weight_ih_l0"].dtype == jnp.float64
        back = interop.to_torch(module, variables)
        assert all(torch.equal(back.state_dict()[k], v) for k, v in original.state_dict().items())
        assert max(interop.max_abs_diffs(original).values()) < 1e-12


# A whole model: the torch classic and its Flax twin, submodules named alike.
class TorchCharModel(torch.nn.Module):
    def __init__(self, vocab=11, embed=6, hidden=8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.rnn = torch.nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(hidden, vocab)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.fc(out)


class FlaxCharModel(nn.Module):
    vocab: int = 11
    embed: int = 6
    hidden: int = 8

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.embed, name="embed")(ids)
        out, _ = jaxrnn.LSTM(hidden_size=self.hidden, num_layers=2, batch_first=True, name="rnn")(x)
        return nn.Dense(self.vocab, name="fc")(out)


def test_whole_model_state_dict_round_trip():
    torch.manual_seed(0)
    torch_model = TorchCharModel()
    ids = np.random.default_rng(0).integers(0, 11, (3, 9))
    variables = interop.load_state_dict(FlaxCharModel(), torch_model.state_dict(), jnp.asarray(ids))
    logits = FlaxCharModel().apply(variables, jnp.asarray(ids))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    exported = interop.to_state_dict(variables)
    assert set(exported) == set(torch_model.state_dict())
    fresh = TorchCharModel()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in torch_model.state_dict().items())


def test_state_dict_errors_name_the_keys():
    sd = {k: v.numpy() for k, v in TorchCharModel().state_dict().items()}  # numpy values work too
    ids = jnp.zeros((1, 2), jnp.int32)
    broken = dict(sd)
    del broken["rnn.weight_hh_l1"]
    broken["rnn.weight_ih_l0"] = np.zeros((32, 7), np.float32)
    broken["head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(interop.StateDictError) as info:
        interop.load_state_dict(FlaxCharModel(), broken, ids)
    message = str(info.value)
    assert "missing keys (1): rnn.weight_hh_l1" in message
    assert "unexpected keys (1): head.weight" in message
    assert "shape mismatch for rnn.weight_ih_l0: expected (32, 6), got (32, 7)" in message
    assert info.value.missing == ["rnn.weight_hh_l1"] and info.value.unexpected == ["head.weight"]

    extra = dict(sd, **{"head.weight": np.zeros(3, np.float32)})
    with pytest.raises(interop.StateDictError, match="unexpected keys"):
        interop.load_state_dict(FlaxCharModel(), extra, ids)
    variables = interop.load_state_dict(FlaxCharModel(), extra, ids, strict=False)  # tolerated
    assert "head" not in variables["params"]
    with pytest.raises(TypeError, match="pass example inputs for FlaxCharModel"):
        interop.load_state_dict(FlaxCharModel(), sd)


def test_prefix_loads_a_submodule_into_a_lone_layer():
    torch_model = TorchCharModel()
    module = jaxrnn.LSTM(hidden_size=8, num_layers=2, batch_first=True)
    variables = interop.load_state_dict(module, torch_model.state_dict(), prefix="rnn.")
    assert variables["params"]["weight_ih_l0"].shape == (32, 6)
    with pytest.raises(interop.StateDictError, match=r"missing keys \(1\): lstm.weight_ih_l0"):
        interop.load_state_dict(module, torch_model.state_dict(), prefix="lstm.")


def test_load_checkpoint_formats(tmp_path):
    torch.manual_seed(0)
    model = TorchCharModel()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"model_state_dict": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "train.pth")
    torch.save({"ema": sd, "epoch": 3}, tmp_path / "ema.pt")
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "weights.safetensors")
    for name, kwargs in [("plain.pt", {}), ("train.pth", {}), ("ema.pt", {"key": "ema"}), ("weights.safetensors", {})]:
        arrays = interop.load_checkpoint(tmp_path / name, **kwargs)
        assert set(arrays) == set(sd), name
        for k, v in sd.items():
            np.testing.assert_array_equal(arrays[k], v.numpy())
    with pytest.raises(interop.CheckpointError, match=r"holds no state dict.*Its entries: 'ema' \(dict of"):
        interop.load_checkpoint(tmp_path / "ema.pt")


def test_checkpoint_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        interop.load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(interop.CheckpointError, match="weights.h5: the file is empty"):
        interop.load_checkpoint(tmp_path / "weights.h5")


def test_find_recurrent_layers():
    sd = TorchCharModel().state_dict()
    sd.update({f"enc.{k}": v for k, v in torch.nn.GRU(3, 4, 3, bidirectional=True, bias=False).state_dict().items()})
    sd.update({f"proj.{k}": v for k, v in torch.nn.LSTM(3, 6, proj_size=2).state_dict().items()})
    found = interop.find_recurrent_layers(sd)
    assert found["rnn."] == ("LSTM", dict(input_size=6, hidden_size=8, bias=True, num_layers=2, bidirectional=False))
    assert found["enc."] == ("GRU", dict(input_size=3, hidden_size=4, bias=False, num_layers=3, bidirectional=True))
    assert found["proj."][1]["proj_size"] == 2 and found["proj."][1]["hidden_size"] == 6


def test_check_command(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(TorchCharModel().state_dict(), tmp_path / "model.pt")
    assert check_main([str(tmp_path / "model.pt")]) == 0
    out = capsys.readouterr().out
    assert "rnn.: torch.nn.LSTM(" in out and "output (seq_lengths)" in out and "OK: largest difference" in out
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "linear.pt")
    assert check_main([str(tmp_path / "linear.pt")]) == 2
    assert "no RNN/LSTM/GRU weights found" in capsys.readouterr().err
    assert check_main([str(tmp_path / "missing.pt")]) == 2


def test_check_command_runs_as_a_module(tmp_path):
    torch.save(torch.nn.GRU(3, 4, bidirectional=True).state_dict(), tmp_path / "gru.pt")
    command = [sys.executable, "-m", "interop.check", str(tmp_path / "gru.pt")]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "(top level): torch.nn.GRU(" in run.stdout


def test_jaxrnn_never_imports_torch():
    code = "import sys, jaxrnn; assert 'torch' not in sys.modules, 'jaxrnn imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


class TimeSequenceModel(torch.nn.Module):
    """The parameters of pytorch/examples time_sequence_prediction's ``Sequence`` (two LSTMCells and a Linear),
    which that example trains in float64."""

    def __init__(self):
        super().__init__()
        self.lstm1 = torch.nn.LSTMCell(1, 51)
        self.lstm2 = torch.nn.LSTMCell(51, 51)
        self.linear = torch.nn.Linear(51, 1)


def test_check_and_convert_handle_float64_files(tmp_path):
    """interop.check turns JAX's 64-bit mode on for a float64 checkpoint and checks it in float64 (in a subprocess:
    the mode is process-wide); interop.convert keeps float64."""
    torch.manual_seed(0)
    torch.save(TimeSequenceModel().double().state_dict(), tmp_path / "seq_model.pt")
    command = [sys.executable, "-m", "interop.check", str(tmp_path / "seq_model.pt"), "--atol", "1e-12"]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "JAX's 64-bit mode is on for this check" in run.stdout
    assert "lstm1.: torch.nn.LSTMCell(input_size=1, hidden_size=51" in run.stdout and "lstm2.:" in run.stdout
    command = [sys.executable, "-m", "interop.convert", str(tmp_path / "seq_model.pt"), str(tmp_path / "out.msgpack")]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert re.search(r"lstm1\.weight_hh +\(204, 51\) +float64", run.stdout), run.stdout


def test_check_command_exits_2_with_a_message_where_a_layer_cannot_run(tmp_path, capsys):
    """A bfloat16 checkpoint reads but cannot be run through torch.as_tensor: a message and exit 2 (1 means the
    numbers differ), no traceback."""
    torch.save(torch.nn.LSTM(3, 4).to(torch.bfloat16).state_dict(), tmp_path / "bf16.pt")
    assert check_main([str(tmp_path / "bf16.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot check {tmp_path / 'bf16.pt'}: TypeError: ") and "Traceback" not in err


def test_loading_wider_weights_warns_once_naming_the_keys_and_param_dtype():
    """A float64 state_dict into float32 parameters is rounded: one NarrowingWarning (linen and NNX) that names
    the keys and the param_dtype= that keeps them. Same-dtype loads do not warn."""
    from flax import nnx

    state = torch.nn.LSTM(3, 4).double().state_dict()
    pattern = r"4 weights of the state_dict are float64 but LSTM's parameters are float32, so they were rounded: "
    pattern += r"bias_hh_l0, bias_ih_l0, weight_hh_l0, weight_ih_l0\. To keep them, build LSTM with param_dtype=jnp"
    pattern += r"\.float64"
    for module in (jaxrnn.LSTM(3, 4), jaxrnn.nnx.LSTM(3, 4, rngs=nnx.Rngs(0))):
        with pytest.warns(interop.NarrowingWarning, match=pattern) as seen:
            interop.load_state_dict(module, state)
        assert len([w for w in seen if w.category is interop.NarrowingWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", interop.NarrowingWarning)
        interop.load_state_dict(jaxrnn.LSTM(3, 4), torch.nn.LSTM(3, 4).state_dict())
