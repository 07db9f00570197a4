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
    (["hihello.py", "--steps", "3"], "step   1"),
    (["longseq.py", "--steps", "3"], "rebuilt text:"),
    (["word_prediction.py", "--steps", "3"], "'i like' ->"),
    (["padded_batch.py"], "largest difference vs torch pack_padded_sequence"),
    (["scratch_vs_library.py"], "the same numbers"),
    (["benchmark.py", "--cells", "gru", "--sizes", "teach", "--repeats", "1"], "| gru | teach | grad | torch nn.GRU |"),
]


@pytest.mark.parametrize("argv, expected", RUNS, ids=[" ".join(a) for a, _ in RUNS])
def test_experiment_runs(argv, expected):
    script, *args = argv
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert expected in run.stdout, run.stdout[-2000:]
    assert "--help" not in run.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "experiments").glob("*.py")))
def test_experiment_help(script):
    run = subprocess.run([sys.executable, str(ROOT / "experiments" / script), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "usage" in run.stdout.lower(), run.stderr
