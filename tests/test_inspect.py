"""step_states: every layer's state at every step, consistent with what the layer returns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_states_agree_with_outputs_and_final_state(kind, batch_first):
    kw = {"proj_size": 3} if kind == "LSTM" else {}
    module = getattr(jaxrnn, kind)(4, 5, num_layers=2, bidirectional=True, batch_first=batch_first, **kw)
    x = jax.random.normal(jax.random.key(0), (3, 6, 4) if batch_first else (6, 3, 4))
    lengths = jnp.array([6, 2, 4])
    variables = module.init(jax.random.key(1), x)
    states = jaxrnn.step_states(module, variables, x, seq_lengths=lengths)
    output, final = module.clone(cpu_kernel="never").apply(variables, x, seq_lengths=lengths)
    P = 3 if kind == "LSTM" else 5
    assert states["h"].shape == (2, 2, 6, 3, P)
    if kind == "LSTM":
        assert states["c"].shape == (2, 2, 6, 3, 5)
    np.testing.assert_array_equal(states["output"], output)  # the same XLA loop
    time_major = jnp.swapaxes(output, 0, 1) if batch_first else output  # (L, N, 2P)
    mask = jaxrnn.lengths_to_mask(lengths, 6, batch_first=False)[..., None]
    top = states["h"][-1]  # last layer: (D, L, N, P)
    np.testing.assert_allclose(jnp.where(mask, jnp.concatenate([top[0], top[1]], -1), 0), time_major, atol=1e-6)
    h_n = final[0] if kind == "LSTM" else final
    for n, length in enumerate([6, 2, 4]):
        np.testing.assert_allclose(states["h"][:, 0, length - 1, n], h_n[0::2, n], atol=1e-6)  # forward: last valid
        np.testing.assert_allclose(states["h"][:, 1, 0, n], h_n[1::2, n], atol=1e-6)  # reverse: ends at t = 0
    # The other loops end in the recorded states: the fused-backward path (its own forward loop, which cannot
    # record) and the CPU kernel where it runs give the outputs and final states step_states reports.
    for other in (module.clone(fused_backward=True, cpu_kernel="never"), module):
        other_output, other_final = other.apply(variables, x, seq_lengths=lengths)
        np.testing.assert_allclose(other_output, states["output"], atol=1e-6)
        other_h_n = other_final[0] if kind == "LSTM" else other_final
        for n, length in enumerate([6, 2, 4]):
            np.testing.assert_allclose(states["h"][:, 0, length - 1, n], other_h_n[0::2, n], atol=1e-6)
            np.testing.assert_allclose(states["h"][:, 1, 0, n], other_h_n[1::2, n], atol=1e-6)


def test_gradient_norms_by_distance_are_float64_and_reversed():
    """Index d is step L - 1 - d; entries of 1e-22 (whose float32 squares underflow) keep a norm, not 0."""
    grads = np.zeros((3, 2, 4), np.float32)
    grads[0] = 1e-22  # the first step: distance 2 from the loss
    grads[2, 0] = 3.0  # the last step, one sequence of two: norms 6 and 0
    norms = jaxrnn.inspect.gradient_norms_by_distance(jnp.asarray(grads))
    assert norms.dtype == np.float64 and norms.shape == (3,)
    np.testing.assert_allclose(norms, [3.0, 0.0, 2e-22], rtol=1e-6)
    assert float(jnp.linalg.norm(jnp.asarray(grads[0, 0]))) == 0.0  # what a float32 norm would have said
