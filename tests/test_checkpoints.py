"""Checkpoint files as users have them: every torch container, metadata beside the weights, code that must not
run, damaged files, key layouts (wrapper prefixes, cells, renames, tied weights), the check and convert commands.

Every file is made here, by torch itself."""

import argparse
import collections
import importlib.util
import pathlib
import re
import subprocess
import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model

import interop
import jaxrnn
from interop.check import main as check_main
from interop.convert import main as convert_main


class WordModel(torch.nn.Module):
    """pytorch/examples word_language_model's RNNModel (LSTM branch): encoder, rnn, decoder, optionally tied."""

    def __init__(self, vocab=11, size=6, tied=False):
        super().__init__()
        self.drop = torch.nn.Dropout(0.2)
        self.encoder = torch.nn.Embedding(vocab, size)
        self.rnn = torch.nn.LSTM(size, size, 2)
        self.decoder = torch.nn.Linear(size, vocab)
        if tied:
            self.decoder.weight = self.encoder.weight
        self.register_buffer("steps", torch.tensor(7))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)

    def forward(self, ids):
        out, _ = self.rnn(self.encoder(ids))
        return self.decoder(out)


class CellLoopModel(torch.nn.Module):
    """An ``nn.LSTMCell`` run in a Python loop, as tutorials write it: ``x (L, N, 3) -> outputs (L, N, 5)``."""

    def __init__(self):
        super().__init__()
        self.cell = torch.nn.LSTMCell(3, 5)

    def forward(self, x):
        h = c = torch.zeros(x.shape[1], 5)
        outs = []
        for x_t in x:
            h, c = self.cell(x_t, (h, c))
            outs.append(h)
        return torch.stack(outs)


def assert_same_tensors(arrays, reference, ordered=True):
    assert list(arrays) == list(reference) if ordered else sorted(arrays) == sorted(reference)
    for k, v in reference.items():
        np.testing.assert_array_equal(arrays[k], v.detach().numpy(), err_msg=k)


def saved_under_foreign_module(obj, path, module_name):
    """torch.save(obj) as if its class lived in ``module_name``, a module that does not exist when loading."""
    cls = type(obj)
    fake = types.ModuleType(module_name)
    setattr(fake, cls.__name__, cls)
    old, cls.__module__ = cls.__module__, module_name
    sys.modules[module_name] = fake
    try:
        torch.save(obj, path)
    finally:
        cls.__module__ = old
        del sys.modules[module_name]


# -- tensors out of any torch file, without running its code ------------------------------------


def test_whole_pickled_model_gives_its_state_dict(tmp_path):
    torch.manual_seed(0)
    model = WordModel(tied=True)
    saved_under_foreign_module(model, tmp_path / "model.pt", "someones_model")  # as main.py saves it
    checkpoint = interop.read_checkpoint(tmp_path / "model.pt")
    assert checkpoint.format == "torch" and checkpoint.entry == "" and checkpoint.left_out == []
    assert_same_tensors(checkpoint.state_dict, model.state_dict())  # tied keys both there, 'scratch' not
    assert "someones_model" not in sys.modules


class Vocabulary:
    def __init__(self):
        self.word2idx, self.idx2word = {"a": 0}, ["a"]


class AttrDict(dict):
    """Like Lightning's AttributeDict: a dict subclass, pickled with SETITEMS onto the instance."""


def test_weights_beside_metadata_are_read_and_the_rest_reported(tmp_path):
    sd = WordModel().state_dict()
    torch.save(
        {
            "model": sd,
            "args": argparse.Namespace(lr=20, model="LSTM"),
            "best_val": np.float64(4.5),
            "history": np.arange(4.0),
            "vocab": Vocabulary(),
            "counts": collections.defaultdict(int, {"a": 3}),
            "hparams": AttrDict(lr=20),
            "epoch": 3,
        },
        tmp_path / "train.pt",
    )
    checkpoint = interop.read_checkpoint(tmp_path / "train.pt")
    assert checkpoint.entry == "model"
    assert_same_tensors(checkpoint.state_dict, sd)
    here = __name__
    assert checkpoint.left_out == [
        "args: argparse.Namespace",
        f"vocab: {here}.Vocabulary",
        "counts: collections.defaultdict",
        f"hparams: {here}.AttrDict",
    ]


class RunsCode:
    """Unpickling this calls ``self.call(*self.args)``: what a malicious checkpoint does."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


RAN = []


def mark_ran(*_):
    RAN.append(True)


def test_code_in_the_file_never_runs(tmp_path):
    sd = {"w": torch.ones(3)}
    marker = tmp_path / "ran"
    torch.save({"model": sd, "x": RunsCode(exec, f"open({str(marker)!r}, 'w')")}, tmp_path / "exec.pt")
    torch.save({"model": sd, "x": RunsCode(mark_ran)}, tmp_path / "call.pt")
    import os

    torch.save({"model": sd, "x": RunsCode(os.system, f"touch {marker}")}, tmp_path / "system.pt")
    checkpoint = interop.read_checkpoint(tmp_path / "exec.pt")
    assert list(checkpoint.state_dict) == ["w"] and checkpoint.left_out == ["x: builtins.exec"]
    assert interop.read_checkpoint(tmp_path / "call.pt").left_out == [f"x: {__name__}.mark_ran"]
    with pytest.raises(interop.CheckpointError, match=r"system.pt: refused: .*posix.system"):
        interop.read_checkpoint(tmp_path / "system.pt")
    assert not marker.exists() and RAN == []
    torch.load(tmp_path / "call.pt", weights_only=False)  # the payload is real: full unpickling runs it
    assert RAN == [True]
    RAN.clear()


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_torchscript_archive(tmp_path, kind):
    torch.manual_seed(0)
    model = WordModel().eval()
    ids = torch.zeros(4, 2, dtype=torch.long)
    scripted = torch.jit.script(model) if kind == "script" else torch.jit.trace(model, ids)
    scripted.save(tmp_path / "model.pt")
    checkpoint = interop.read_checkpoint(tmp_path / "model.pt")
    assert checkpoint.format == "torchscript"
    assert_same_tensors(checkpoint.state_dict, torch.jit.load(tmp_path / "model.pt").state_dict())


def test_torch_export_archive(tmp_path):
    torch.manual_seed(0)
    model = WordModel().eval()
    program = torch.export.export(model, (torch.zeros(4, 2, dtype=torch.long),))
    torch.export.save(program, tmp_path / "model.pt2")
    checkpoint = interop.read_checkpoint(tmp_path / "model.pt2")
    assert checkpoint.format == "torch-export"
    assert_same_tensors(checkpoint.state_dict, program.state_dict)


def lightning_checkpoint(state_dict, path):
    """What ``Trainer.save_checkpoint`` writes for a LightningModule holding the model as ``self.model``."""
    torch.save(
        {
            "epoch": 2,
            "global_step": 300,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {"model." + k: v for k, v in state_dict.items()},
            "loops": {"fit_loop": {"state_dict": {}}},
            "callbacks": {},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": AttrDict(hidden_size=6),
        },
        path,
    )


def test_lightning_checkpoint_loads_into_the_jaxrnn_model(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, 2)
    lightning_checkpoint(lstm.state_dict(), tmp_path / "last.ckpt")
    checkpoint = interop.read_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint.entry == "state_dict" and list(checkpoint.state_dict)[0] == "model.weight_ih_l0"
    variables = interop.load_state_dict(jaxrnn.LSTM(3, 5, 2), checkpoint.state_dict)  # 'model.' taken off
    np.testing.assert_array_equal(variables["params"]["weight_hh_l1"], lstm.weight_hh_l1.detach().numpy())


@pytest.mark.parametrize("entry", ["state_dict", "model_state_dict", "model", "net"])
def test_training_checkpoint_entries(tmp_path, entry):
    sd = WordModel().state_dict()
    torch.save({"epoch": 1, entry: sd, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    checkpoint = interop.read_checkpoint(tmp_path / "ckpt.pth")
    assert checkpoint.entry == entry
    assert_same_tensors(checkpoint.state_dict, sd)


def test_key_selects_a_nested_entry_and_names_what_is_there(tmp_path):
    sd = WordModel().state_dict()
    torch.save({"ema": {"weights": sd}, "epoch": 3}, tmp_path / "ema.pt")
    assert_same_tensors(interop.load_checkpoint(tmp_path / "ema.pt", key="ema.weights"), sd)
    with pytest.raises(interop.CheckpointError, match=r"holds no state dict.*'ema' \(dict of 1\), 'epoch' \(int\)"):
        interop.load_checkpoint(tmp_path / "ema.pt")
    with pytest.raises(
        interop.CheckpointError, match=r"no entry 'ema.w' \('w' is not in ema, which holds \['weights'\]"
    ):
        interop.load_checkpoint(tmp_path / "ema.pt", key="ema.w")
    with pytest.raises(interop.CheckpointError, match=r"entry 'epoch' is a int, not a state dict"):
        interop.load_checkpoint(tmp_path / "ema.pt", key="epoch")


def test_safetensors_both_writers(tmp_path):
    torch.manual_seed(0)
    model = WordModel(tied=True)
    save_file({k: v.contiguous() for k, v in WordModel().state_dict().items()}, tmp_path / "file.safetensors")
    save_model(model, tmp_path / "model.safetensors")  # keeps one name of the shared weight
    kept = interop.read_checkpoint(tmp_path / "model.safetensors")
    assert kept.format == "safetensors"
    assert len({"encoder.weight", "decoder.weight"} & set(kept.state_dict)) == 1
    assert len(interop.load_checkpoint(tmp_path / "file.safetensors")) == len(WordModel().state_dict())


def test_extension_is_only_a_hint(tmp_path):
    sd = {"w": torch.arange(3.0)}
    torch.save(sd, tmp_path / "weights.safetensors")  # a torch file under a safetensors name
    save_file(sd, tmp_path / "weights.pt")
    torch.save(sd, tmp_path / "weights")
    torch.save(sd, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    expected = {
        "weights.safetensors": "torch",
        "weights.pt": "safetensors",
        "weights": "torch",
        "legacy.bin": "torch-legacy",
    }
    for name, fmt in expected.items():
        checkpoint = interop.read_checkpoint(tmp_path / name)
        assert checkpoint.format == fmt, name
        np.testing.assert_array_equal(checkpoint.state_dict["w"], [0.0, 1.0, 2.0])


# -- damaged files: always a CheckpointError naming the file and the cause ------------------------


def damaged_files(tmp_path):
    """``{name: expected message}`` for every kind of unreadable file, written to ``tmp_path``."""
    good = tmp_path / "good.pt"
    torch.save(WordModel().state_dict(), good)
    data = good.read_bytes()
    save_file({"w": torch.ones(100)}, tmp_path / "good.safetensors")
    st = (tmp_path / "good.safetensors").read_bytes()
    files = {
        "empty.pt": (b"", r"is empty \(0 bytes\)"),
        "random.pt": (np.random.default_rng(0).bytes(1000), r"not a torch or safetensors checkpoint \(1000 bytes"),
        "lfs.pt": (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 1234\n",
            r"git-lfs pointer .*git lfs pull",
        ),
        "truncated.pt": (data[: len(data) // 2], r"zip archive .* truncated or damaged"),
        "truncated.safetensors": (
            st[:-7],
            r"truncated safetensors file: .* tensor\(s\) ending at byte \d+, but the file has",
        ),
        "header.safetensors": (st[:30], r"truncated safetensors file: its header says \d+ bytes"),
        "page.pt": (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", r"HTML/XML page"),
        "plain.pkl": (b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.", r"plain Python pickle"),
    }
    # A zip whose directory is intact but whose data.pkl record is overwritten.
    with zipfile.ZipFile(good) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    corrupt = bytearray(data)
    corrupt[start : start + info.file_size] = b"\x00" * info.file_size
    files["corrupt.pt"] = (bytes(corrupt), r"damaged torch zip archive: record .*data.pkl fails its CRC-32 check")
    for name, (content, _) in files.items():
        (tmp_path / name).write_bytes(content)
    return {name: message for name, (_, message) in files.items()}


def test_damaged_files_are_diagnosed(tmp_path):
    for name, message in damaged_files(tmp_path).items():
        with pytest.raises(interop.CheckpointError, match=message) as caught:
            interop.read_checkpoint(tmp_path / name)
        assert str(caught.value).startswith(str(tmp_path / name)), name
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        interop.read_checkpoint(tmp_path / "missing.pt")


def test_check_command_exit_codes_without_tracebacks(tmp_path, capsys):
    for name in damaged_files(tmp_path):
        assert check_main([str(tmp_path / name)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, name
    torch.manual_seed(0)
    torch.save(WordModel(), tmp_path / "whole.pt")
    assert check_main([str(tmp_path / "whole.pt")]) == 0
    assert "rnn.: torch.nn.LSTM(" in capsys.readouterr().out
    assert check_main([str(tmp_path / "whole.pt"), "--atol", "-1"]) == 1  # every difference exceeds a negative atol
    run = subprocess.run([sys.executable, "-m", "interop.check", str(tmp_path / "truncated.pt")], capture_output=True)
    assert run.returncode == 2 and b"Traceback" not in run.stderr and b"truncated" in run.stderr


# -- keys that fit without a hand-written rename -------------------------------------------------


@pytest.mark.parametrize("wrapper", ["module.", "model.", "_orig_mod.", "module.model."])
def test_wrapper_prefixes_are_taken_off(wrapper):
    lstm = torch.nn.LSTM(3, 5, 2)
    sd = {wrapper + k: v for k, v in lstm.state_dict().items()}
    variables = interop.load_state_dict(jaxrnn.LSTM(3, 5, 2), sd)
    np.testing.assert_array_equal(variables["params"]["bias_hh_l1"], lstm.bias_hh_l1.detach().numpy())


def test_other_prefixes_get_a_hint():
    sd = {"net." + k: v for k, v in torch.nn.GRU(3, 4).state_dict().items()}
    with pytest.raises(interop.StateDictError, match=r"hint: every expected key is in the state_dict under 'net.'"):
        interop.load_state_dict(jaxrnn.GRU(3, 4), sd)
    interop.load_state_dict(jaxrnn.GRU(3, 4), sd, prefix="net.")


def test_rename_mapping_and_function():
    torch.manual_seed(0)
    model = WordModel()
    sd = model.state_dict()
    jmodel = jaxrnn.SequenceModel(vocab_size=11, hidden_size=6, embedding_size=6, num_layers=2)
    ids = jnp.zeros((2, 4), jnp.int32)
    rename = {"encoder.": "embed.", "decoder.": "fc.", "steps": None, "drop.": None}
    variables = interop.load_state_dict(jmodel, sd, ids, rename=rename)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], model.decoder.weight.detach().numpy().T)
    by_function = interop.load_state_dict(
        jmodel,
        sd,
        ids,
        rename=lambda k: None if k == "steps" else k.replace("encoder", "embed").replace("decoder", "fc"),
    )
    np.testing.assert_array_equal(
        by_function["params"]["embed"]["embedding"], variables["params"]["embed"]["embedding"]
    )
    with pytest.raises(ValueError, match=r"rename: two keys become 'fc.weight'"):
        interop.load_state_dict(jmodel, sd, ids, rename={"encoder.weight": "fc.weight", "decoder.": "fc."})
    with pytest.raises(interop.StateDictError, match=r"unexpected keys \(1\): steps"):
        interop.load_state_dict(jmodel, sd, ids, rename={"encoder.": "embed.", "decoder.": "fc."})


def test_cell_loop_model_loads_into_a_one_layer_layer_and_back():
    torch.manual_seed(0)
    loop = CellLoopModel()
    x = torch.randn(7, 2, 3)
    layer = jaxrnn.LSTM(3, 5)
    variables = interop.load_state_dict(layer, loop.state_dict(), prefix="cell.")  # cell.weight_ih -> weight_ih_l0
    out, _ = layer.apply(variables, jnp.asarray(x.numpy()))
    np.testing.assert_allclose(out, loop(x).detach().numpy(), atol=1e-6)
    back = interop.to_state_dict(variables, rename=interop.cell_keys("", "cell."))
    fresh = CellLoopModel()
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    torch.testing.assert_close(fresh(x), loop(x), rtol=0, atol=0)
    # Not for a two-layer or bidirectional layer: those keys need their _l0.
    with pytest.raises(interop.StateDictError, match=r"missing keys \(8\)"):
        interop.load_state_dict(jaxrnn.LSTM(3, 5, bidirectional=True), loop.state_dict(), prefix="cell.")


TIED_RENAME = {"encoder.": "embed.", "decoder.bias": "fc_bias", "steps": None}
TIED = {"decoder.weight": "encoder.weight"}


def test_tied_model_loads_strictly_and_exports_to_torch_strict():
    torch.manual_seed(0)
    model = WordModel(tied=True).eval()
    jmodel = jaxrnn.SequenceModel(vocab_size=11, hidden_size=6, embedding_size=6, num_layers=2, tie_weights=True)
    ids = torch.randint(0, 11, (4, 2))
    with pytest.raises(interop.StateDictError, match=r"unexpected keys \(1\): decoder.weight"):
        interop.load_state_dict(jmodel, model.state_dict(), ids.T.numpy(), rename=TIED_RENAME)
    variables = interop.load_state_dict(jmodel, model.state_dict(), ids.T.numpy(), rename=TIED_RENAME, tied=TIED)
    logits, _ = jmodel.apply(variables, jnp.asarray(ids.T.numpy()))
    np.testing.assert_allclose(np.asarray(logits).transpose(1, 0, 2), model(ids).detach().numpy(), atol=1e-5)
    export_rename = {"embed.": "encoder.", "fc_bias": "decoder.bias"}
    back = interop.to_state_dict(variables, rename=export_rename, tied=TIED)
    fresh = WordModel(tied=True)
    missing = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=False)
    assert missing.missing_keys == ["steps"] and missing.unexpected_keys == []
    torch.testing.assert_close(fresh.eval()(ids), model(ids), rtol=0, atol=0)


def test_tied_alias_alone_or_differing(tmp_path):
    torch.manual_seed(0)
    model = WordModel(tied=True)
    save_model(model, tmp_path / "tied.safetensors")
    jmodel = jaxrnn.SequenceModel(vocab_size=11, hidden_size=6, embedding_size=6, num_layers=2, tie_weights=True)
    ids = np.zeros((2, 4), np.int32)
    sd = interop.load_checkpoint(tmp_path / "tied.safetensors")
    variables = interop.load_state_dict(jmodel, sd, ids, rename=TIED_RENAME, tied=TIED)
    np.testing.assert_array_equal(variables["params"]["embed"]["embedding"], model.encoder.weight.detach().numpy())
    untied = WordModel().state_dict()
    with pytest.raises(ValueError, match=r"tied: 'decoder.weight' and 'encoder.weight' differ \(values\)"):
        interop.load_state_dict(jmodel, untied, ids, rename=TIED_RENAME, tied=TIED)


# -- the converter ------------------------------------------------------------------------------


def test_convert_command(tmp_path, capsys):
    from flax import serialization
    from safetensors.numpy import load_file

    torch.manual_seed(0)
    model = WordModel()
    torch.save({"model": model, "args": argparse.Namespace(lr=1)}, tmp_path / "whole.pt")
    assert convert_main([str(tmp_path / "whole.pt"), str(tmp_path / "out.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "entry 'model'" in out and "rnn.weight_ih_l0" in out and "(24, 6)" in out
    assert "left out (not loaded, never run): args: argparse.Namespace" in out
    assert_same_tensors(load_file(tmp_path / "out.safetensors"), model.state_dict(), ordered=False)
    lightning_checkpoint(model.state_dict(), tmp_path / "last.ckpt")
    assert convert_main([str(tmp_path / "last.ckpt"), str(tmp_path / "out.msgpack"), "--strip-prefix", "model."]) == 0
    restored = serialization.msgpack_restore((tmp_path / "out.msgpack").read_bytes())
    assert_same_tensors(restored, model.state_dict(), ordered=False)  # msgpack keeps no order
    assert convert_main([str(tmp_path / "whole.pt"), str(tmp_path / "out.h5")]) == 2
    assert "unknown output extension '.h5'" in capsys.readouterr().err
    (tmp_path / "empty.pt").write_bytes(b"")
    run = subprocess.run(
        [sys.executable, "-m", "interop.convert", str(tmp_path / "empty.pt"), str(tmp_path / "x.safetensors")],
        capture_output=True,
    )
    assert run.returncode == 2 and b"Traceback" not in run.stderr and b"is empty" in run.stderr


# -- a worked example: pytorch/examples word_language_model, as upstream saves it -----------------

UPSTREAM = pathlib.Path(__file__).parent / "upstream_word_language_model"


def load_script(name):
    spec = importlib.util.spec_from_file_location(
        name, pathlib.Path(__file__).parents[1] / "experiments" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upstream_perplexity(net, ids, batch=10, bptt=35):
    """upstream main.py's batchify + evaluate(), on the model object itself."""
    data = torch.from_numpy(ids.astype(np.int64))
    data = data[: data.size(0) // batch * batch].view(batch, -1).t().contiguous()
    net.eval()
    hidden, total = net.init_hidden(batch), 0.0
    with torch.no_grad():
        for i in range(0, data.size(0) - 1, bptt):
            n = min(bptt, len(data) - 1 - i)
            output, hidden = net(data[i : i + n], hidden)
            total += n * torch.nn.functional.nll_loss(output, data[i + 1 : i + 1 + n].reshape(-1)).item()
    return float(np.exp(total / (len(data) - 1)))


@pytest.mark.parametrize("rnn_type, tied", [("LSTM", True), ("GRU", False)])
def test_word_language_model_round_trip(tmp_path, monkeypatch, capsys, rnn_type, tied):
    monkeypatch.syspath_prepend(str(UPSTREAM))
    from model import RNNModel  # upstream's class, unchanged

    wlm = load_script("word_language_model")
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    for split, lines in [("train", 200), ("valid", 40), ("test", 40)]:
        text = "\n".join(" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(lines))
        (tmp_path / f"{split}.txt").write_text(text + "\n")
    vocab, splits = wlm.upstream_corpus(str(tmp_path))
    torch.manual_seed(0)
    net = RNNModel(rnn_type, len(vocab), 8, 8, 2, 0.2, tied)
    # upstream's train(): bptt 35, batch 20, hidden detached between chunks, clip 0.25, SGD lr 20 in place.
    data = torch.from_numpy(splits["train"].astype(np.int64))
    data = data[: data.size(0) // 20 * 20].view(20, -1).t().contiguous()
    hidden = net.init_hidden(20)
    net.train()
    for i in range(0, data.size(0) - 1, 35):
        n = min(35, len(data) - 1 - i)
        hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
        net.zero_grad()
        output, hidden = net(data[i : i + n], hidden)
        torch.nn.functional.nll_loss(output, data[i + 1 : i + 1 + n].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.25)
        for p in net.parameters():
            p.data.add_(p.grad, alpha=-20)
    torch.save(net, tmp_path / "model.pt")  # upstream main.py: the whole pickled RNNModel
    reference = {split: upstream_perplexity(net, splits[split]) for split in ("valid", "test")}

    args = [str(tmp_path / "model.pt"), "--data", str(tmp_path), "--export", str(tmp_path / "back.pt")]
    assert wlm.main([*args, "--upstream", str(UPSTREAM)]) == 0
    out = capsys.readouterr().out
    assert f"tied={tied}" in out
    for split in ("valid", "test"):
        jax_ppl = float(re.search(rf"jaxrnn {split} perplexity ([\d.]+)", out)[1])
        torch_ppl = float(re.search(rf"torch  {split} perplexity ([\d.]+)", out)[1])
        np.testing.assert_allclose([jax_ppl, torch_ppl], reference[split], rtol=2e-6)
    fresh = RNNModel(rnn_type, len(vocab), 8, 8, 2, 0.2, tied)
    fresh.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    ids = torch.from_numpy(splits["valid"][:60].astype(np.int64)).view(6, 10)
    torch.testing.assert_close(fresh.eval()(ids, fresh.init_hidden(10))[0], net.eval()(ids, net.init_hidden(10))[0])
