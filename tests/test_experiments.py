"""Every experiment script runs, as a user runs it, with a tiny budget (so none of them rots)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

RUNS = [
    (["charseq.py"], "reproduced the text exactly at step"),
    (["charseq.py", "--cell", "gru", "--steps", "3", "--text", " seoul is the capital of south korea"], "target"),
    (["charseq.py", "--compare-torch", "--steps", "5", "--cell", "lstm"], "largest loss difference over 5 steps"),
    (["charseq.py", "--api", "nnx"], "reproduced the text exactly at step"),
    (["hihello.py", "--steps", "3"], "step   1"),
    (["longseq.py", "--steps", "3"], "rebuilt text:"),
    (["word_prediction.py", "--steps", "3"], "'i like' ->"),
    (["padded_batch.py"], "largest difference vs torch pack_padded_sequence"),
    (["scratch_vs_library.py"], "the same numbers"),
    (["gradient_flow.py", "--smoke", "--out", "/tmp/jaxrnn-gradient-flow-smoke"], "dh_3/dh_1: jax.grad"),
    (["tbptt.py", "--out", "/tmp/jaxrnn-tbptt-smoke"], "gradient before step 18 is exactly zero: True"),
    (["one_to_many.py", "--smoke", "--out", "/tmp/jaxrnn-one-to-many-smoke"], "exact match: held-out"),
    (
        ["seq2seq.py", "--smoke", "--out", "/tmp/jaxrnn-seq2seq-smoke"],
        "torch twin (same weights): largest logit difference",
    ),
    (
        ["benchmark.py", "--cells", "gru", "--sizes", "teach", "--repeats", "1"],
        "| gru | teach | grad | jaxrnn nnx (nnx.jit) |",
    ),
    (  # --isa generic: both frameworks held to the baseline instruction set (runs on any CPU)
        "train_benchmark.py --models ptb-small,shakespeare --steps 2 --rounds 1 --warmup 1 --isa generic".split(),
        ("| shakespeare | 32 x 100 |", "jaxrnn kernel build generic, torch CPU capability DEFAULT"),
    ),
    (
        "benchmark.py --cells lstm --sizes teach --modes fwd --repeats 1 --dtype float64 --bidirectional".split(),
        "| lstm | teach | fwd | torch nn.LSTM |",
    ),
]


DATA = ROOT.parent / "shared" / "data"  # the real corpora, beside the checkout (as in CI)
LM_RUNS = [  # (argv, expected in stdout, files expected under --out)
    (["ptb.py", "--smoke"], "test perplexity", ["metrics.json", "loss.png", "checkpoint.msgpack"]),
    (["shakespeare.py", "--smoke"], "--- sample (temperature 0.8) ---", ["metrics.json", "params.msgpack"]),
    (["cells.py", "--smoke"], "best unit per feature", ["cells.html", "cells.png", "cells.json"]),
    (["timeseries.py", "--smoke"], "moving average", ["results.json", "msft-h1.png", "sunspots-h12.png"]),
    (["tag_name_lines.py", "--smoke"], "which line is a name", ["results.json"]),
    (["who_speaks.py", "--smoke"], "GRU bidirectional", ["results.json"]),
]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no corpora at {DATA}")
@pytest.mark.parametrize("argv, expected, files", LM_RUNS, ids=[" ".join(a) for a, _, _ in LM_RUNS])
def test_language_model_smoke_runs(argv, expected, files, tmp_path):
    script, *args = argv
    command = [sys.executable, str(ROOT / "experiments" / script), *args]
    command += ["--data-dir", str(DATA), "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert expected in run.stdout, run.stdout[-2000:]
    for name in files:
        assert (tmp_path / name).exists(), name


def test_language_model_scripts_report_missing_data(tmp_path):
    for script in ("ptb.py", "shakespeare.py", "cells.py", "timeseries.py", "tag_name_lines.py", "who_speaks.py"):
        command = [sys.executable, str(ROOT / "experiments" / script), "--smoke", "--data-dir", str(tmp_path)]
        run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert run.returncode == 1 and "does not exist" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("argv, expected", RUNS, ids=[" ".join(a) for a, _ in RUNS])
def test_experiment_runs(argv, expected):
    script, *args = argv
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for text in expected if isinstance(expected, tuple) else (expected,):
        assert text in run.stdout, run.stdout[-2000:]
    assert "--help" not in run.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "experiments").glob("*.py")))
def test_experiment_help(script):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage" in run.stdout.lower(), run.stderr


def test_scalar_toy_gradient_equals_closed_form():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gradient_flow", ROOT / "experiments" / "gradient_flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for w_hh in (0.5, 1.0, 3.0):
        toy = module.scalar_toy(w_hh)
        assert toy["dh3_dh1_grad"] == pytest.approx(toy["dh3_dh1_closed_form"], rel=1e-5, abs=1e-9)
        assert len(toy["h"]) == 3


def test_benchmark_json_round_trip(tmp_path):
    """--out writes every sample; --from-json prints the same tables and target checks from that file."""
    script = str(ROOT / "experiments" / "benchmark.py")
    out = tmp_path / "bench.json"
    argv = [sys.executable, script, "--cells", "rnn", "--sizes", "teach", "--modes", "grad", "--repeats", "2"]
    run = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    again = subprocess.run([sys.executable, script, "--from-json", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    targets = run.stdout[run.stdout.index("## Targets") :].split("\n\nwrote")[0]
    assert targets.strip() in again.stdout
    assert "| rnn teach grad" in targets and "targets hold." in targets
