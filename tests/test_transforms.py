"""Every JAX transform on the default layer (cpu_kernel="auto"): it works, with the XLA loop's answers,
or it fails in the one documented way.

Under ``jit``, ``grad``, ``vmap`` and sharding the CPU kernel runs (where it applies); under forward-mode
differentiation (``jvp``, ``jacfwd``, ``hessian``) ``jaxrnn.backend.choose`` picks the XLA loop, so those
work too; ``jax.export`` lowers the XLA loop in the kernel's place (the forward) or names
``cpu_kernel="never"`` (a gradient). One case cannot reach any of that, because the function was traced
before the transform saw it: ``jax.jvp`` of an already-jitted function fails with JAX's message, and
``cpu_kernel="never"`` (tested here) serves it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import backend
from jaxrnn.kernels import cpu

LAYERS = {
    "lstm": lambda **kw: jaxrnn.LSTM(3, 16, **kw),
    "gru": lambda **kw: jaxrnn.GRU(3, 16, **kw),
    "rnn": lambda **kw: jaxrnn.RNN(3, 16, 1, "relu", **kw),
}
kernel_runs = cpu.unavailable_reason() is None and cpu.isa()[0] not in backend.SLOWER_THAN_XLA


def setup(cell: str):
    x = jax.random.normal(jax.random.key(0), (5, 2, 3))
    default, loop = LAYERS[cell](), LAYERS[cell](cpu_kernel="never")
    params = default.init(jax.random.key(1), x)
    return default, loop, params, x


def loss(module, params, x):
    out, state = module.apply(params, x)
    return (out**2).sum() + sum((s**2).sum() for s in jax.tree.leaves(state))


def close(a, b, tol=1e-5):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


@pytest.mark.parametrize("cell", LAYERS)
def test_jit_grad_vmap(cell):
    default, loop, params, x = setup(cell)
    close(
        jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(default, params, x),
        jax.grad(loss, (1, 2))(loop, params, x),
    )
    xs = jnp.stack([x, 2 * x, -x])  # a vmapped batch of whole inputs
    batched = jax.vmap(lambda x: default.apply(params, x)[0])(xs)
    close(batched, jnp.stack([loop.apply(params, x_)[0] for x_ in xs]))
    vmapped_grad = jax.vmap(jax.grad(lambda x: loss(default, params, x)))(xs)
    close(vmapped_grad, jnp.stack([jax.grad(lambda x: loss(loop, params, x))(x_) for x_ in xs]))


@pytest.mark.parametrize("cell", LAYERS)
def test_forward_mode_takes_the_xla_loop(cell):
    default, loop, params, x = setup(cell)
    t = jax.random.normal(jax.random.key(2), x.shape)
    close(jax.jvp(lambda x: loss(default, params, x), (x,), (t,)), jax.jvp(lambda x: loss(loop, params, x), (x,), (t,)))
    close(
        jax.jit(lambda x, t: jax.jvp(lambda x: loss(default, params, x), (x,), (t,)))(x, t),
        jax.jvp(lambda x: loss(loop, params, x), (x,), (t,)),
    )
    close(jax.jacfwd(lambda x: default.apply(params, x)[0])(x), jax.jacrev(lambda x: loop.apply(params, x)[0])(x))
    small = x[:2, :1]
    close(
        jax.hessian(lambda x: loss(default, params, x))(small),
        jax.hessian(lambda x: loss(loop, params, x))(small),
        1e-4,
    )
    # forward over reverse the other way round: reverse-mode of a jvp
    close(
        jax.grad(lambda x: jax.jvp(lambda x: loss(default, params, x), (x,), (t,))[1])(x),
        jax.grad(lambda x: jax.jvp(lambda x: loss(loop, params, x), (x,), (t,))[1])(x),
        1e-4,
    )


def test_forward_mode_is_seen_through_vmap_and_jit():
    seen = []

    def probe(x):
        seen.append(backend.forward_mode(x))
        return x.sum()

    x = jnp.ones((2, 3))
    jax.grad(probe)(x)
    jax.jvp(probe, (x,), (x,))
    jax.jit(lambda x: jax.jvp(probe, (x,), (x,)))(x)
    jax.jacfwd(jax.vmap(probe))(x)
    jax.hessian(probe)(x)
    assert seen == [False, True, True, True, True]


@pytest.mark.skipif(not kernel_runs, reason="the CPU kernel does not run by default here")
def test_jvp_of_a_jitted_kernel_layer_fails_and_never_serves_it():
    default, loop, params, x = setup("lstm")
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(jax.jit(lambda x: loss(default, params, x)), (x,), (x,))
    jax.jvp(jax.jit(lambda x: loss(loop, params, x)), (x,), (x,))


@pytest.mark.skipif(not kernel_runs, reason="the CPU kernel does not run by default here")
@pytest.mark.parametrize("cell", LAYERS)
def test_export_lowers_the_xla_loop_and_a_gradient_names_the_switch(cell):
    default, loop, params, x = setup(cell)
    lengths = jnp.array([5, 2])
    apply = jax.jit(lambda params, x, lengths: default.apply(params, x, seq_lengths=lengths))
    exported = jax.export.export(apply)(params, x, lengths)
    assert "custom_call @jaxrnn" not in exported.mlir_module()  # portable: the XLA loop, not the kernel
    assert "jaxrnn_" in apply.lower(params, x, lengths).as_text()  # while jit runs the kernel
    close(exported.call(params, x, lengths), loop.apply(params, x, seq_lengths=lengths))
    gradient = jax.jit(jax.grad(lambda params, x: loss(default, params, x)))
    with pytest.raises(ValueError, match="jax.export: jaxrnn's CPU kernel .* cpu_kernel='never'"):
        jax.export.export(gradient)(params, x)
    never = LAYERS[cell](cpu_kernel="never")
    exported = jax.export.export(jax.jit(jax.grad(lambda params, x: loss(never, params, x))))(params, x)
    close(exported.call(params, x), jax.grad(lambda params, x: loss(loop, params, x))(params, x))


@pytest.mark.parametrize("model", ["SequenceModel", "Classifier", "Tagger"])
def test_models_pass_cpu_kernel_to_their_layer(model):
    cls = getattr(jaxrnn, model)
    ids = jnp.zeros((2, 5), jnp.int32)
    module = cls(vocab_size=7, hidden_size=16, cpu_kernel="never")
    params = module.init(jax.random.key(0), ids)
    # under forward mode "never" and "auto" both work; "always" must refuse and say why
    jax.jvp(lambda p: module.apply(p, ids), (params,), (params,))
    always = cls(vocab_size=7, hidden_size=16, cpu_kernel="always")
    with pytest.raises(ValueError, match="cpu_kernel='always'.*forward-mode|cpu_kernel='always'.*unavailable"):
        jax.jvp(lambda p: always.apply(p, ids), (params,), (params,))
    with pytest.raises(ValueError, match="cpu_kernel must be 'auto', 'never' or 'always', got 'on'"):
        cls(vocab_size=7, hidden_size=16, cpu_kernel="on").init(jax.random.key(0), ids)
