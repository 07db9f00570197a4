"""jaxrnn's hand-written CPU LSTM kernel: same results as the XLA loop, clear errors, safe fallback.

Parity with torch (outputs, final states, gradients, lengths, both directions)
is in tests/test_parity.py::test_parity_lstm_cpu_kernel.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.kernels import cpu

needs_kernel = pytest.mark.skipif(cpu.unavailable_reason() is not None, reason="jaxrnn's CPU kernel cannot run here")


def _run(module, params, x, lengths):
    def loss(params, x):
        out, (h, c) = module.apply(params, x, seq_lengths=lengths)
        return (out**2).sum() + h.sum() + (c * c).sum(), (out, h, c)

    (_, results), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return results, grads


@needs_kernel
@pytest.mark.parametrize("bidirectional, hidden", [(False, 32), (True, 32), (True, 21)])
def test_kernel_equals_xla_loop(bidirectional, hidden):
    x = jax.random.normal(jax.random.key(0), (9, 7, 10))
    lengths = jnp.array([9, 3, 0, 5, 1, 9, 8])  # a length 0 keeps h_0 and gives zero outputs
    kernel = jaxrnn.LSTM(10, hidden, num_layers=2, bidirectional=bidirectional, cpu_kernel="always")
    xla = jaxrnn.LSTM(10, hidden, num_layers=2, bidirectional=bidirectional, cpu_kernel="never")
    params = kernel.init(jax.random.key(1), x)
    (k_results, k_grads), (x_results, x_grads) = _run(kernel, params, x, lengths), _run(xla, params, x, lengths)
    for a, b in zip(k_results, x_results):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for a, b in zip(jax.tree.leaves(k_grads), jax.tree.leaves(x_grads)):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()) + 1e-7)
    assert float(jnp.abs(k_results[0][:, 2]).max()) == 0.0


@needs_kernel
def test_auto_uses_the_kernel_where_it_applies():
    x = jnp.ones((4, 2, 3))

    def lowered(module):
        params = module.init(jax.random.key(0), x)
        return jax.jit(module.apply).lower(params, x).as_text()

    assert cpu.TARGETS[0] in lowered(jaxrnn.LSTM(3, 16))
    assert cpu.TARGETS[0] in lowered(jaxrnn.LSTM(3, 20))  # zero-padded to 32 units inside
    assert cpu.TARGETS[0] not in lowered(jaxrnn.LSTM(3, 16, proj_size=8))
    assert cpu.TARGETS[0] not in lowered(jaxrnn.GRU(3, 16))
    assert cpu.TARGETS[0] not in lowered(jaxrnn.LSTM(3, 16, cpu_kernel="never"))


def test_always_raises_where_the_kernel_does_not_apply():
    x = jnp.ones((4, 2, 3))
    for module, what in [
        (jaxrnn.LSTM(3, 20, proj_size=5, cpu_kernel="always"), "hidden_size=20"),
        (jaxrnn.GRU(3, 16, cpu_kernel="always"), "GRUCell"),
    ]:
        with pytest.raises(ValueError, match="cpu_kernel='always'") as error:
            module.init(jax.random.key(0), x)
        assert what in str(error.value)


def test_bad_cpu_kernel_value():
    with pytest.raises(ValueError, match="cpu_kernel must be 'auto', 'never' or 'always', got 'yes'"):
        jaxrnn.LSTM(3, 16, cpu_kernel="yes")


@needs_kernel
def test_direct_call_checks_weight_shape():
    x, h, w_ih = jnp.zeros((3, 2, 5)), jnp.zeros((2, 16)), jnp.zeros((64, 5))
    with pytest.raises(ValueError, match=r"got weight_hh \(64, 8\), x \(3, 2, 5\) and weight_ih \(64, 5\)"):
        cpu.lstm_forward(x, w_ih, None, jnp.zeros((64, 8)), h, h, jnp.ones((3, 2)), reverse=False)
    with pytest.raises(ValueError, match=r"x \(3, 2, 5\) and weight_ih \(64, 4\)"):
        cpu.lstm_forward(x, jnp.zeros((64, 4)), None, jnp.zeros((64, 16)), h, h, jnp.ones((3, 2)), reverse=False)


def _reason_in_subprocess(env: dict) -> str:
    code = "from jaxrnn.kernels import cpu; print(cpu.unavailable_reason())"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_disabled_by_environment_variable():
    assert _reason_in_subprocess({"JAXRNN_CPU_KERNEL": "0"}) == "disabled by JAXRNN_CPU_KERNEL=0"


def test_missing_compiler_falls_back_with_a_reason(tmp_path):
    reason = _reason_in_subprocess({"CXX": "no-such-compiler", "JAXRNN_KERNEL_CACHE": str(tmp_path)})
    if "AVX-512" in reason or "jax.ffi" in reason:
        pytest.skip(reason)
    assert reason == "no C++ compiler ('no-such-compiler' not found; set CXX)"


def test_layers_still_run_without_the_kernel():
    code = (
        "import jax, jax.numpy as jnp, jaxrnn\n"
        "m = jaxrnn.LSTM(3, 16)\n"
        "x = jnp.ones((4, 2, 3))\n"
        "out, _ = m.apply(m.init(jax.random.key(0), x), x)\n"
        "print(out.shape)\n"
    )
    env = {**os.environ, "JAXRNN_CPU_KERNEL": "0"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == "(4, 2, 16)", run.stderr
