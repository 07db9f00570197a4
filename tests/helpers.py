"""Small helpers the test files share."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

# The one switch for a thorough run: HYPOTHESIS_PROFILE=thorough (tests/conftest.py) also makes the tests that
# shrink a cost for CI's sake (a compiler at -O0 where only how builds are made is tested) take the full one.
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def random_params(layer, x, seed: int = 0) -> dict:
    """``layer.init(key, x)``'s variables, drawn as torch draws them (``U(-1/sqrt(H), 1/sqrt(H))``) with numpy.

    The shapes come from ``jax.eval_shape`` (tracing only): an eager ``init`` compiles one small XLA program per
    parameter shape and runs the layer once, about 0.7 s a layer here, which tests that only need *some*
    weights to give the kernel and XLA's loop alike need not pay.
    """
    shapes = jax.eval_shape(layer.init, jax.random.key(seed), x)
    bound = 1.0 / math.sqrt(layer.hidden_size)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-bound, bound, s.shape).astype(s.dtype)), shapes)
