"""Data-parallel training: 8 simulated CPU devices equal 1, shardings are as claimed, two processes over loopback.

Each case runs in a subprocess with its own XLA_FLAGS, so the rest of the suite keeps one device.
"""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxrnn.lm as lm

HERE = pathlib.Path(__file__).resolve().parent / "multidevice"
sys.path.insert(0, str(HERE))
from common import CONFIG, TRAIN, VALID, VOCAB  # noqa: E402


def _run(script, *args, devices, log=None):
    """Starts ``script``; its output goes to pipes, or to files ``log.out``/``log.err`` when given.

    Processes that wait on each other (multi-process training) must not write into
    pipes nobody is reading, so those log to files.
    """
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.PIPE if log is None else open(f"{log}.out", "w")
    err = subprocess.PIPE if log is None else open(f"{log}.err", "w")
    command = [sys.executable, str(HERE / script), *map(str, args)]
    return subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight_devices():
    proc = _run("train_equivalence.py", devices=8)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return _last_json(out)


def test_eight_devices_train_like_one(eight_devices):
    r = eight_devices
    assert r["devices"] == 8
    np.testing.assert_allclose(r["valid_losses"]["8"], r["valid_losses"]["1"], rtol=1e-5)
    assert r["test_loss"]["8"] == pytest.approx(r["test_loss"]["1"], rel=1e-5)
    assert r["max_param_diff"] < 1e-5


def test_shardings_are_as_claimed(eight_devices):
    r = eight_devices
    assert r["params_replicated"]
    assert r["carry_spec"] == ["P(None, 'data', None)"] * 2  # LSTM (h, c), split along the streams
    assert r["carry_shard_shape"] == [[2, 1, 16]] * 2  # 8 streams over 8 devices: one each
    assert r["batch_spec"] == r["batch_expected"]


def test_indivisible_batch_is_a_clear_error(eight_devices):
    assert (
        eight_devices["indivisible_error"] == "batch_size=6 does not divide evenly over 8 devices; use a multiple of 8."
    )


def test_two_processes_over_loopback_match_one_device(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [tmp_path / f"process{pid}" for pid in (0, 1)]
    workers = [_run("two_process.py", port, pid, tmp_path / f"p{pid}", devices=2, log=logs[pid]) for pid in (0, 1)]
    for w, log in zip(workers, logs):
        w.wait(timeout=300)
        assert w.returncode == 0, pathlib.Path(f"{log}.err").read_text()[-3000:]
    result = _last_json(pathlib.Path(f"{logs[0]}.out").read_text())
    assert result["devices"] == 4 and result["processes"] == 2

    config = dataclasses.replace(CONFIG, epochs=1)  # the same run as two_process.py, on one device
    single = lm.train_language_model(config, VOCAB, TRAIN, VALID, None, tmp_path / "single", progress=False)
    assert result["valid_loss"] == pytest.approx(single["valid_loss"], rel=1e-5)
    for got, want in zip(result["params"], jax.tree.leaves(single["params"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
