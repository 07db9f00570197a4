"""One of two processes training data-parallel over loopback (tests/test_parallel.py starts both).

Usage: python two_process.py PORT PROCESS_ID OUT. Each process has 2 CPU devices
(XLA_FLAGS set by the test), so the mesh has 4 devices over 2 hosts; each
process feeds its own half of the streams.
"""

import dataclasses
import json
import sys

import numpy as np

from jaxrnn.parallel import initialize_distributed

port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import jax  # noqa: E402
from common import CONFIG, TRAIN, VALID, VOCAB  # noqa: E402

import jaxrnn.lm as lm  # noqa: E402

config, data, valid = dataclasses.replace(CONFIG, epochs=1), TRAIN, VALID
metrics = lm.train_language_model(config, VOCAB, data, valid, None, out, progress=False, num_devices=None)
if process_id == 0:
    params = [np.asarray(p).tolist() for p in jax.tree.leaves(metrics["params"])]
    print(
        json.dumps(
            {
                "devices": jax.device_count(),
                "processes": jax.process_count(),
                "valid_loss": metrics["valid_loss"],
                "params": params,
            }
        )
    )
