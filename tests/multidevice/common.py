"""The tiny language-model run that the multi-device checks share (scripts here and tests/test_parallel.py)."""

import numpy as np

from jaxrnn.lm import LMConfig

VOCAB = 13
CONFIG = LMConfig(
    hidden_size=16,
    embedding_size=8,
    epochs=2,
    batch_size=8,
    bptt=5,
    eval_batch_size=8,
    optimizer="adam",
    lr=0.01,
    dropout=0.0,
)
TRAIN = np.random.default_rng(0).integers(0, VOCAB, 600).astype(np.int32)
VALID = np.random.default_rng(1).integers(0, VOCAB, 200).astype(np.int32)
