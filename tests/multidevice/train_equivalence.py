"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_parallel.py does).

Trains the same tiny language model on 1 device and on 8, prints JSON with
the losses, the largest parameter difference and the shardings seen.
"""

import json
import sys
import tempfile

import jax
import numpy as np
from common import CONFIG, TRAIN, VALID, VOCAB
from jax.sharding import PartitionSpec

import jaxrnn.lm as lm
from jaxrnn.parallel import data_mesh, global_batch, replicated, state_sharding

config, data, valid = CONFIG, TRAIN, VALID

results = {}
for n in (1, 8):
    with tempfile.TemporaryDirectory() as out:
        metrics = lm.train_language_model(config, VOCAB, data, valid, valid, out, progress=False, num_devices=n)
    results[n] = metrics

# shardings: what the trainer places, inspected directly
mesh = data_mesh(8)
model = lm.make_model(config, VOCAB)
carry = jax.device_put(model.zero_state(8), state_sharding(mesh, model.zero_state(8)))
x = global_batch(mesh, np.zeros((8, 5), np.int32))
params = jax.device_put(results[8]["params"], replicated(mesh))
report = {
    "devices": jax.device_count(),
    "valid_losses": {n: [h["valid_loss"] for h in r["history"]] for n, r in results.items()},
    "test_loss": {n: r["test_loss"] for n, r in results.items()},
    "max_param_diff": max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(results[1]["params"]), jax.tree.leaves(results[8]["params"]))
    ),
    "params_replicated": all(p.sharding.is_fully_replicated for p in jax.tree.leaves(params)),
    "carry_spec": [str(c.sharding.spec) for c in jax.tree.leaves(carry)],
    "carry_shard_shape": [list(c.sharding.shard_shape(c.shape)) for c in jax.tree.leaves(carry)],
    "batch_spec": str(x.sharding.spec),
    "batch_expected": str(PartitionSpec("data", None)),
}
try:
    lm.train_language_model(
        lm.LMConfig(batch_size=6, eval_batch_size=8, epochs=1),
        VOCAB,
        data,
        valid,
        None,
        tempfile.mkdtemp(),
        progress=False,
        num_devices=8,
    )
    report["indivisible_error"] = None
except ValueError as e:
    report["indivisible_error"] = str(e)
json.dump(report, sys.stdout)
