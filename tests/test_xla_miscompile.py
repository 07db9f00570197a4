"""An XLA CPU miscompile on AVX-512 hosts (jaxlib 0.10.2), shown without jaxrnn, and jaxrnn kept clear of it.

The reproducer: the gradient of a float64 GRU scanned in reverse with ``unroll=2`` over 3 steps, batch 4,
hidden 5, the weights passed as arguments. Under ``jax.jit`` on an AVX-512 host (AMD Zen 4 here) it came out
95% wrong; eagerly, or under jit with ``XLA_FLAGS=--xla_cpu_max_isa=AVX2``, it is exact.

What XLA does (from ``XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text``, default and ``--xla_cpu_max_isa=AVX2``
side by side): the optimized HLO is the same in both, and so is the LLVM IR before LLVM's passes; only the machine
code differs. Running each compiled fusion of the two dumps on the same random buffers (their object files loaded
with ctypes) finds two that differ: both are "concatenate fusions" (XLA's CPU fusion emitters) that join the
three gates' ``(4, 5)`` gradients side by side into ``(4, 15)`` -- the backward of ``jnp.split`` -- fused with
the GRU's elementwise derivative. For AVX-512, LLVM's loop vectorizer reads each ``(4, 5)`` operand as one
``<20 x double>``; the x86 code XLA then emits stores row 2 of the middle gate from lanes 8-11 instead of 10-13
(``vmovupd %ymm3, 0x118(%rdi)``), so 4 of the 60 outputs are other elements' values. The same optimized IR
compiled by LLVM 14's ``llc`` for skylake-avx512 or for AVX2 gives the right numbers: the fault is in the x86
code generation of XLA's LLVM for AVX-512 targets. XLA flags that avoid it: ``--xla_cpu_max_isa=AVX2``,
``--xla_cpu_use_fusion_emitters=false``, ``--xla_cpu_prefer_vector_width=128``,
``--xla_backend_optimization_level=0``.

Of GRU and LSTM steps at batch 1-8, hidden 1-9, unroll 2-4, only batch 4 with hidden 5 (GRU, float64, reverse)
was wrong; float32 never was. jaxrnn never builds that program: a projection's derivative takes each gate's
rows on their own (:mod:`jaxrnn.equations`), so the gates' gradients are never joined along the feature axis.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.equations import Cell
from jaxrnn.kernels import cpu
from jaxrnn.recurrence import LoopOptions, recurrence

H, N, I, L, UNROLL = 5, 4, 3, 3, 2
AVX512 = "avx512f" in cpu.cpu_features()


def reproducer_error() -> float:
    """The reproducer, written without jaxrnn: jitted gradient against the eager one, largest relative error."""
    rng = np.random.default_rng(0)
    params = (rng.standard_normal((3 * H, I)) * 0.4, rng.standard_normal((3 * H, H)) * 0.4)
    x, w = rng.standard_normal((L, N, I)), rng.standard_normal((L, N, H))

    def loss(x, params, unroll):
        W, U = params
        Wt, Ut = W.T, U.T

        def step(h, xt):
            xr, xz, xn = jnp.split(xt @ Wt, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ Ut, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h = (1.0 - z) * jnp.tanh(xn + r * hn) + z * h
            return h, h

        _, ys = jax.lax.scan(step, jnp.zeros((N, H)), x, reverse=True, unroll=unroll)
        return (ys * w).sum()

    with jax.enable_x64(True):
        grad = jax.grad(loss, argnums=(0, 1))
        with jax.disable_jit():
            eager = jax.tree.leaves(grad(x, params, 1))
        jitted = jax.tree.leaves(jax.jit(grad, static_argnums=2)(x, params, UNROLL))
    return max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(jitted, eager))


def test_xla_reproducer():
    """Exact where XLA compiles it right; on AVX-512 hosts with the miscompile, an expected failure that says so."""
    error = reproducer_error()
    if error > 1e-12 and AVX512:
        pytest.xfail(f"XLA's AVX-512 miscompile is present in jaxlib {jax.lib.__version__}: relative error {error:.2g}")
    assert error < 1e-12


@pytest.mark.skipif(not AVX512, reason="without AVX-512 the test above already runs XLA's AVX2 code")
def test_xla_reproducer_is_exact_when_xla_is_held_to_avx2():
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
    run = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-12


@pytest.mark.parametrize("fused_backward", [False, True])
def test_jaxrnn_computes_the_same_gradient_exactly(fused_backward):
    """The reproducer's GRU through jaxrnn's loop (reverse, unroll 2, no bias), jitted, against eager JAX."""
    rng = np.random.default_rng(0)
    weights = {
        "weight_ih": rng.standard_normal((3 * H, I)) * 0.4,
        "weight_hh": rng.standard_normal((3 * H, H)) * 0.4,
        "bias_ih": None,
        "bias_hh": None,
        "weight_hr": None,
    }
    x, w = rng.standard_normal((L, N, I)), rng.standard_normal((L, N, H))
    options = LoopOptions(unroll=UNROLL, fused_backward=fused_backward, cpu_kernel="never")

    def loss(weights, x):
        state = (jnp.zeros((N, H), x.dtype),)
        _, outputs, _ = recurrence(Cell("gru", H), weights, x, state, None, reverse=True, options=options)
        return (outputs * w).sum()

    with jax.enable_x64(True):
        grad = jax.grad(loss, argnums=(0, 1))
        with jax.disable_jit():
            eager = jax.tree.leaves(grad(weights, x))
        jitted = jax.tree.leaves(jax.jit(grad)(weights, x))
    for a, b in zip(jitted, eager):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


if __name__ == "__main__":  # python tests/test_xla_miscompile.py prints the reproducer's error on this host
    print(f"{reproducer_error():.3e}")
