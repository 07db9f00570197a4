"""Every experiment script runs, as a user runs it, with a tiny budget (so none of them rots)."""

import json
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
    (["long_memory.py", "--smoke", "--out", "/tmp/jaxrnn-long-memory-smoke"], "||dL/dh_t|| lstm-fb1 trained"),
    (["tbptt.py", "--out", "/tmp/jaxrnn-tbptt-smoke"], "gradient before step 18 is exactly zero: True"),
    (["flax_parity.py", "--smoke", "--out", "/tmp/jaxrnn-flax-parity-smoke"], "every float64 row"),
    (["one_to_many.py", "--smoke", "--out", "/tmp/jaxrnn-one-to-many-smoke"], "exact match: held-out"),
    (
        ["seq2seq.py", "--smoke", "--out", "/tmp/jaxrnn-seq2seq-smoke"],
        "torch twin (same weights): largest logit difference",
    ),
    (  # --isa generic: both frameworks held to the baseline instruction set (runs on any CPU). The tied model with
        # dropout takes the most branches of both loops; the 2x512 Shakespeare model only costs time here.
        "train_benchmark.py --models ptb-small-tied --steps 2 --rounds 1 --warmup 1 --isa generic".split(),
        ("| ptb-small-tied | 20 x 20 |", "jaxrnn kernel build generic, torch CPU capability DEFAULT"),
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


SCRIPTS = sorted(p.name for p in (ROOT / "experiments").glob("*.py"))

# Runs scripts as __main__, one after another in one interpreter (jax and torch imported once, not once per
# script); prints {name: [exit code, stdout, stderr]} as JSON. An exception a script does not handle is caught
# here and its traceback kept in that script's stderr, so a test can still see it.
SCRIPT_RUNNER = """
import contextlib, io, json, runpy, sys, traceback
folder, runs, results = sys.argv[1], json.loads(sys.argv[2]), {}
sys.path.insert(0, folder)
for name, script, *args in runs:
    out, err, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [script, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(f"{folder}/{script}", run_name="__main__")
        except SystemExit as e:  # as the interpreter ends: sys.exit("message") prints it and exits 1
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


def run_scripts_in_one_process(runs: list[list[str]]) -> dict[str, list]:
    """``runs``: ``[name, script, *args]`` each; returns ``{name: [exit code, stdout, stderr]}``."""
    command = [sys.executable, "-c", SCRIPT_RUNNER, str(ROOT / "experiments"), json.dumps(runs)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


LM_SCRIPTS = ("ptb.py", "shakespeare.py", "cells.py", "timeseries.py", "tag_name_lines.py", "who_speaks.py")


@pytest.fixture(scope="module")
def missing_data_runs(tmp_path_factory) -> dict[str, list]:
    empty = str(tmp_path_factory.mktemp("no-corpora"))
    return run_scripts_in_one_process([[s, s, "--smoke", "--data-dir", empty] for s in LM_SCRIPTS])


@pytest.mark.parametrize("script", LM_SCRIPTS)
def test_language_model_scripts_report_missing_data(script, missing_data_runs):
    code, _, stderr = missing_data_runs[script]
    assert code == 1 and "does not exist" in stderr and "Traceback" not in stderr, stderr[-3000:]


@pytest.fixture(scope="module")
def help_runs() -> dict[str, list]:
    return run_scripts_in_one_process([[s, s, "--help"] for s in SCRIPTS])


@pytest.mark.parametrize("script", SCRIPTS)
def test_experiment_help(script, help_runs):
    code, stdout, stderr = help_runs[script]
    assert code == 0 and "usage" in stdout.lower(), stderr[-3000:]


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
    """A run of every variant of one cell and mode (as in experiments/benchmark.py's docs) writes every sample with
    --out; --from-json prints the same tables and target checks from that file."""
    script = str(ROOT / "experiments" / "benchmark.py")
    out = tmp_path / "bench.json"
    argv = [sys.executable, script, "--cells", "gru", "--sizes", "teach", "--modes", "grad", "--repeats", "1"]
    run = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "| gru | teach | grad | jaxrnn nnx (nnx.jit) |" in run.stdout
    again = subprocess.run([sys.executable, script, "--from-json", str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    targets = run.stdout[run.stdout.index("## Targets") :].split("\n\nwrote")[0]
    assert targets.strip() in again.stdout
    assert "| gru teach grad" in targets and "targets hold." in targets
