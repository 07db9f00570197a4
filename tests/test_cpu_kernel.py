"""jaxrnn's hand-written CPU kernels (RNN, LSTM, GRU): same results as the XLA loop, clear errors, safe fallback.

Parity with torch (outputs, final states, gradients, lengths, both directions)
is in tests/test_parity.py::test_parity_cpu_kernel.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params

import jaxrnn
from jaxrnn import backend
from jaxrnn.kernels import cpu

needs_kernel = pytest.mark.skipif(cpu.unavailable_reason() is not None, reason="jaxrnn's CPU kernel cannot run here")


CELLS = {  # name: (module, kwargs)
    "lstm": (jaxrnn.LSTM, {}),
    "gru": (jaxrnn.GRU, {}),
    "rnn_tanh": (jaxrnn.RNN, {}),
    "rnn_relu": (jaxrnn.RNN, {"nonlinearity": "relu"}),
}


def _run(module, params, x, lengths):
    def loss(params, x):
        out, state = module.apply(params, x, seq_lengths=lengths)
        state = state if isinstance(state, tuple) else (state,)
        return (out**2).sum() + sum(s.sum() + (s * s).sum() for s in state), (out, *state)

    (_, results), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return results, grads


def _kernel_and_xla_loop(cell, x, lengths, hidden, **options):
    """Runs ``cell`` through the CPU kernel and through XLA's loop with the same parameters, asserts the
    outputs, final states and gradients (w.r.t. every parameter and the input) agree; returns the kernel's
    ``(output, *state)``."""
    module, kwargs = CELLS[cell]
    kernel = module(x.shape[-1], hidden, cpu_kernel="always", **options, **kwargs)
    xla = module(x.shape[-1], hidden, cpu_kernel="never", **options, **kwargs)
    params = random_params(kernel, x, seed=1)
    (k_results, k_grads), (x_results, x_grads) = _run(kernel, params, x, lengths), _run(xla, params, x, lengths)
    for a, b in zip(k_results, x_results):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(jax.tree.leaves(k_grads), jax.tree.leaves(x_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-7)
    return k_results


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "bidirectional, hidden, bias",
    [(False, 32, True), (True, 21, True), (True, 64, False), (False, 128, True)],  # 64, 128: wide backward blocks
)
def test_kernel_equals_xla_loop(cell, bidirectional, hidden, bias):
    x = jax.random.normal(jax.random.key(0), (9, 7, 10))
    lengths = jnp.array([9, 3, 0, 5, 1, 9, 8])  # a length 0 keeps h_0 and gives zero outputs
    results = _kernel_and_xla_loop(cell, x, lengths, hidden, num_layers=2, bidirectional=bidirectional, bias=bias)
    assert float(jnp.abs(results[0][:, 2]).max()) == 0.0


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_kernel_equals_xla_loop_batch_17_over_19_steps(cell):
    """Batch 17: row tiles 6, 6, 5; 19 steps: two full groups of 8 staged steps and a partial one;
    hidden 64: 64-unit backward blocks; 70 inputs: two panels of the input gradient (64 + 16 padded
    columns) and a 4-column tile of the weight gradient's x rows."""
    x = jax.random.normal(jax.random.key(2), (19, 17, 70))
    _kernel_and_xla_loop(cell, x, jnp.arange(17) + 3, 64)


@needs_kernel
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [2, 4, 8])
def test_kernel_equals_xla_loop_row_tile_remainders(cell, batch):
    """Batches 2, 4 and 8 with the 6-row tiles of the AVX2 and AVX-512 builds: forward tiles of 2, 4 and 4 + 4
    rows, backward tiles of 2, 4 and 6 + 2 (with 7 and 17 above, every remainder 1-6); 20 inputs and hidden 64
    leave 2- and 4-row tiles of the weight gradient's x and h rows."""
    x = jax.random.normal(jax.random.key(3), (5, batch, 20))
    _kernel_and_xla_loop(cell, x, jnp.arange(batch) % 5 + 1, 64)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("loss_on", ["output", "state", "input_only"])
def test_kernel_gradient_of_part_of_the_results(cell, loss_on):
    """Gradients where JAX passes the kernel's backward symbolic zeros: a loss of the outputs alone or of
    the final state alone, and the gradient of the input alone (the weights' gradient not wanted)."""
    module, kwargs = CELLS[cell]
    x = jax.random.normal(jax.random.key(3), (11, 5, 9))
    lengths = jnp.array([11, 4, 7, 1, 11])
    layers = [module(9, 24, num_layers=2, cpu_kernel=kernel, **kwargs) for kernel in ("always", "never")]
    params = random_params(layers[0], x, seed=4)

    def loss(layer, params, x):
        out, state = layer.apply(params, x, seq_lengths=lengths)
        if loss_on == "state":
            return sum((s**2).sum() for s in (state if isinstance(state, tuple) else (state,)))
        return (out**2).sum()

    argnums = 1 if loss_on == "input_only" else 0
    kernel, xla = (jax.jit(jax.grad(lambda p, x, m=m: loss(m, p, x), argnums=argnums))(params, x) for m in layers)
    for a, b in zip(jax.tree.leaves(kernel), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-7)


@needs_kernel
@pytest.mark.skipif(cpu.isa()[0] in backend.SLOWER_THAN_XLA, reason="'auto' leaves this build alone")
def test_auto_uses_the_kernel_where_it_applies():
    x = jnp.ones((4, 2, 3))

    def lowered(module):
        params = module.init(jax.random.key(0), x)
        return jax.jit(module.apply).lower(params, x).as_text()

    assert "jaxrnn_lstm_forward" in lowered(jaxrnn.LSTM(3, 16))
    assert "jaxrnn_lstm_forward" in lowered(jaxrnn.LSTM(3, 20))  # zero-padded to 32 units inside
    assert "jaxrnn_gru_forward" in lowered(jaxrnn.GRU(3, 16))
    assert "jaxrnn_rnn_tanh_forward" in lowered(jaxrnn.RNN(3, 16))
    assert "jaxrnn_rnn_relu_forward" in lowered(jaxrnn.RNN(3, 16, nonlinearity="relu"))
    assert "jaxrnn_" not in lowered(jaxrnn.LSTM(3, 16, proj_size=8))
    assert "jaxrnn_" not in lowered(jaxrnn.GRU(3, 16, cpu_kernel="never"))
    assert "jaxrnn_" not in lowered(jaxrnn.RNN(3, 16, record_states=True))
    # options of the XLA loop are honoured by taking it, never dropped
    assert "jaxrnn_" not in lowered(jaxrnn.LSTM(3, 16, unroll=2))
    assert "jaxrnn_" not in lowered(jaxrnn.GRU(3, 16, hoist_input_projection=True))
    assert "jaxrnn_" not in lowered(jaxrnn.RNN(3, 16, fused_backward=True))


def test_always_raises_where_the_kernel_does_not_apply():
    x = jnp.ones((4, 2, 3))
    for module, what in [
        (jaxrnn.LSTM(3, 20, proj_size=5, cpu_kernel="always"), "lstm layer: proj_size=5"),
        (jaxrnn.RNN(3, 16, record_states=True, cpu_kernel="always"), "rnn_tanh layer: record_states=True"),
        (jaxrnn.GRU(3, 16, unroll=4, cpu_kernel="always"), "gru layer: unroll=4: an option of the XLA loop"),
        (jaxrnn.LSTM(3, 16, param_dtype=jnp.bfloat16, cpu_kernel="always"), "the dtype is bfloat16"),
    ]:
        with pytest.raises(ValueError, match="cpu_kernel='always'") as error:
            module.init(jax.random.key(0), x)
        assert what in str(error.value)


def test_bad_cpu_kernel_value():
    with pytest.raises(ValueError, match="cpu_kernel must be 'auto', 'never' or 'always', got 'yes'"):
        jaxrnn.LSTM(3, 16, cpu_kernel="yes")


@needs_kernel
def test_direct_call_checks_its_arguments():
    x, h, valid = jnp.zeros((3, 2, 5)), jnp.zeros((2, 16)), jnp.ones((3, 2))
    w_ih = jnp.zeros((64, 5))
    wrong_hh = r"jaxrnn_lstm_forward: .*got weight_hh \(64, 8\), x \(3, 2, 5\) and weight_ih \(64, 5\)"
    with pytest.raises(ValueError, match=wrong_hh):
        cpu.forward("lstm", x, w_ih, jnp.zeros((64, 8)), None, None, (h, h), valid, reverse=False)
    with pytest.raises(ValueError, match=r"x \(3, 2, 5\) and weight_ih \(64, 4\)"):
        cpu.forward("lstm", x, jnp.zeros((64, 4)), jnp.zeros((64, 16)), None, None, (h, h), valid, reverse=False)
    with pytest.raises(ValueError, match=r"jaxrnn_gru_forward_train: expected weight_hh \(3H, H\)"):
        cpu.forward_train("gru", x, w_ih, jnp.zeros((64, 16)), None, None, (h,), valid, reverse=False)
    with pytest.raises(ValueError, match="jaxrnn_lstm_forward: expected a state of 2 arrays, got 1"):
        cpu.forward("lstm", x, w_ih, jnp.zeros((64, 16)), None, None, (h,), valid, reverse=False)
    with pytest.raises(ValueError, match=r"unknown kernel cell 'elman'; expected one of \['gru', 'lstm'"):
        cpu.forward("elman", x, w_ih, jnp.zeros((64, 16)), None, None, (h,), valid, reverse=False)
    _, states, z = cpu.forward_train("lstm", x, w_ih, jnp.zeros((64, 16)), None, None, (h, h), valid, reverse=False)
    d_out = jnp.zeros((3, 2, 16))
    with pytest.raises(ValueError, match=r"jaxrnn_lstm_backward: .*x \(3, 2, 5\) and weight_ih \(64, 6\)"):
        cpu.backward(
            "lstm",
            z,
            states,
            (h, h),
            d_out,
            (h, h),
            valid,
            x,
            jnp.zeros((64, 6)),
            jnp.zeros((64, 16)),
            bias=False,
            input_grad=True,
            reverse=False,
        )


def test_isa_environment_names_the_switches_of_both_frameworks():
    env = cpu.isa_environment("avx2")
    assert env == {
        "JAXRNN_CPU_ISA": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
    }
    assert {cpu.isa_environment(name)["JAXRNN_CPU_ISA"] for name in cpu.ISAS} == set(cpu.ISAS)
    with pytest.raises(ValueError, match="'sse9' is not one of avx512, avx2, generic"):
        cpu.isa_environment("sse9")
