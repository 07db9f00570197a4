"""Small helpers the test files share."""

import math

import jax
import jax.numpy as jnp
import numpy as np


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
