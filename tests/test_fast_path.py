"""The first rule: the CPU kernel gives the XLA loop's (and torch's) answers for every input.

Each test runs a layer through the kernel (``cpu_kernel="always"``) and through XLA's loop
(``cpu_kernel="never"``) with the same parameters, and compares the outputs, the final states and the
gradient (``jax.vjp`` with a fixed random cotangent) of every parameter, the input and the initial
state: NaN at the same places, +Inf and -Inf at the same places, the finite values within float32
rounding (2e-5 of the largest for values; 1e-4 for gradients, the parity tests' bound, since the
generic build has no FMA and its sums round differently). Huge inputs, where float32 rounding of
nearly cancelling pre-activations alone exceeds that, hold the kernel to the loop's own accuracy
instead: no further from the loop run in float64 than twice the float32 loop is.

Inputs: NaN, +-Inf, huge (|x| up to 1e4), tiny and subnormal values, NaN in the padding, at hidden
sizes around the kernel's blocks (16 units for LSTM/GRU, 64 for RNN), batch 1 to 64, and one sequence
of 10,000 steps. ``JAXRNN_CPU_ISA`` chooses the build under test (CI runs every build this machine can
execute, see ``test_every_isa_build``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_params

import jaxrnn
from jaxrnn.kernels import cpu

needs_kernel = pytest.mark.skipif(cpu.unavailable_reason() is not None, reason="jaxrnn's CPU kernel cannot run here")

# torch is imported by the one test that compares with it, so that the kernel-vs-loop tests also run where
# torch is not installed (the aarch64 build under emulation, tests/arm64/).
CELLS = {  # kernel kind: (jaxrnn layer, torch.nn layer's name, extra constructor arguments)
    "lstm": (jaxrnn.LSTM, "LSTM", {}),
    "gru": (jaxrnn.GRU, "GRU", {}),
    "rnn_tanh": (jaxrnn.RNN, "RNN", {"nonlinearity": "tanh"}),
    "rnn_relu": (jaxrnn.RNN, "RNN", {"nonlinearity": "relu"}),
}


def run(module, params, x, hx, lengths, cotangent_seed=7):
    """``(output, states, grads)`` of ``module``: grads by ``jax.vjp`` with a random cotangent (no loss that
    could itself overflow), for the params, ``x`` and ``hx``."""

    def f(params, x, hx):
        out, state = module.apply(params, x, hx, seq_lengths=lengths)
        return out, state

    (out, state), vjp = jax.vjp(jax.jit(f), params, x, hx)
    keys = jax.random.split(jax.random.key(cotangent_seed), 2)
    cot = (jax.random.normal(keys[0], out.shape), jax.tree.map(lambda s: jax.random.normal(keys[1], s.shape), state))
    grads = vjp(cot)
    return out, state, grads


def assert_same_non_finite(got, want, what: str) -> None:
    """NaN, +Inf and -Inf at the same positions."""
    for where, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        np.testing.assert_array_equal(test(got), test(want), err_msg=f"{what}: {where} positions differ")


def assert_same_values(got, want, what: str, rtol: float = 2e-5) -> None:
    """Same NaN and same +-Inf positions; the finite entries within ``rtol`` of the largest finite one."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    assert_same_non_finite(got, want, what)
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max(initial=0.0))
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=rtol * scale + 1e-30, err_msg=what)


def assert_as_accurate(got, loop, exact, what: str, rtol: float = 2e-5) -> None:
    """Same NaN and +-Inf positions as the XLA loop's; the finite entries no further from the float64 result
    ``exact`` than twice the loop's own distance from it, or within ``rtol`` of the largest (as
    :func:`assert_same_values`). For ill-conditioned inputs, where float32 rounding alone exceeds that bound."""
    got, loop, exact = (np.asarray(a, np.float64) for a in (got, loop, exact))
    assert got.shape == loop.shape == exact.shape, what
    assert_same_non_finite(got, loop, what)
    finite = np.isfinite(loop) & np.isfinite(exact)
    scale = float(np.abs(loop[finite]).max(initial=0.0))
    error, loop_error = (float(np.abs(a[finite] - exact[finite]).max(initial=0.0)) for a in (got, loop))
    assert error <= max(2 * loop_error, rtol * scale), f"{what}: {error} from float64, the XLA loop {loop_error}"


def kernel_vs_loop(cell, x, hidden, *, lengths=None, hx=None, params=None, against_float64=False, **options):
    """Runs ``cell`` through the kernel and the XLA loop; asserts equal results; returns the kernel's.

    ``against_float64``: inputs whose float32 rounding is larger than the usual bound (huge ``x``): the
    kernel is held to being as accurate as the loop (:func:`assert_as_accurate`), against the loop run in
    float64 from the same float32 weights."""
    layer, _, extra = CELLS[cell]
    kernel = layer(x.shape[-1], hidden, cpu_kernel="always", **options, **extra)
    loop = layer(x.shape[-1], hidden, cpu_kernel="never", **options, **extra)
    params = random_params(kernel, x, seed=1) if params is None else params
    k, l = run(kernel, params, x, hx, lengths), run(loop, params, x, hx, lengths)
    checks = [  # (kernel's, loop's, what, bound relative to the largest)
        (pa, pb, f"{cell} {name}[{i}]", 2e-5)
        for name, a, b in zip(("output", "state"), k[:2], l[:2])
        for i, (pa, pb) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    ]
    names = ["params", "x", "hx"]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(k[2]), jax.tree.leaves(l[2])):
        where = names[path[0].idx] + jax.tree_util.keystr(path[1:])
        checks.append((a, b, f"{cell} gradient of {where}", 1e-4))  # the parity tests' gradient bound
    if not against_float64:
        for got, want, what, rtol in checks:
            assert_same_values(got, want, what, rtol)
        return k
    with jax.enable_x64(True):
        wide = layer(x.shape[-1], hidden, cpu_kernel="never", param_dtype=jnp.float64, **options, **extra)
        as64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
        exact = jax.tree.leaves(run(wide, as64(params), as64(x), as64(hx), lengths))  # outputs, states, grads
    for (got, want, what, rtol), e in zip(checks, exact, strict=True):
        assert_as_accurate(got, want, e, what, rtol)
    return k


def special_inputs(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    T, B, _ = shape
    if kind == "nan":
        x[T // 3, B - 1, 0] = np.nan  # one NaN: that sequence is NaN from there on, the others untouched
    elif kind == "inf":
        x[T // 3, 0, 1] = np.inf
        x[T // 2, B - 1, :] = -np.inf
    elif kind == "huge":
        x *= 1e4  # every gate saturates
    elif kind == "tiny":
        x *= 1e-30
        x[:, 0, :] = 1e-40  # subnormal
    elif kind == "mixed":
        x[T // 3, 0, 0] = np.nan
        x[T // 2, B - 1, 1] = np.inf
        x[1, B // 2, :] = 3e4
    return x


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["nan", "inf", "huge", "tiny", "mixed"])
def test_non_finite_and_extreme_inputs(cell, kind):
    x = jnp.asarray(special_inputs(kind, (9, 5, 6)))
    layers = 2 if kind in ("nan", "mixed") else 1  # a second layer reads the first one's NaN and Inf
    # huge: gates saturate, and a pre-activation summed from terms of 1e3-1e4 that nearly cancel carries float32
    # rounding of 1e-4 and more, whichever order the sums take: held to the loop's own accuracy instead
    out, state, _ = kernel_vs_loop(cell, x, 17, num_layers=layers, bidirectional=True, against_float64=kind == "huge")
    if kind == "nan":  # the NaN reaches its own sequence only, as in torch
        assert np.isnan(np.asarray(out)[:, -1]).any() and np.isfinite(np.asarray(out)[:, :-1]).all()


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_initial_state_and_weights(cell):
    layer, _, extra = CELLS[cell]
    x = jnp.asarray(special_inputs("plain", (7, 4, 5)))
    params = random_params(layer(5, 20, **extra), x, seed=3)
    weight = params["params"]["weight_hh_l0"]
    params = {"params": {**params["params"], "weight_hh_l0": weight.at[2, 3].set(jnp.inf)}}
    h = np.random.default_rng(1).standard_normal((1, 4, 20)).astype(np.float32)
    h[0, 2, 5] = np.nan
    hx = (jnp.asarray(h), jnp.asarray(h * 0.5)) if cell == "lstm" else jnp.asarray(h)
    kernel_vs_loop(cell, x, 20, hx=hx, params=params)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_nan_in_padding_never_reaches_a_result(cell):
    """torch never sees the padding; neither may NaN or Inf there reach any output or gradient."""
    x = special_inputs("plain", (8, 4, 6))
    lengths = np.array([8, 3, 0, 5])
    for n, length in enumerate(lengths):
        x[length:, n] = np.nan if n % 2 else np.inf
    out, state, grads = kernel_vs_loop(cell, jnp.asarray(x), 19, lengths=jnp.asarray(lengths), bidirectional=True)
    for leaf in jax.tree.leaves((out, state, grads)):
        assert np.isfinite(np.asarray(leaf)).all()


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("hidden", [1, 15, 16, 17, 63, 64, 65, 512])
def test_hidden_sizes_around_the_blocks(cell, hidden):
    batch = 3 if hidden == 512 else 2
    x = jnp.asarray(special_inputs("mixed", (6, batch, 7), seed=hidden))
    kernel_vs_loop(cell, x, hidden, lengths=jnp.asarray([6, 4, 1][:batch]))


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [1, 64])
def test_batch_sizes(cell, batch):
    x = jnp.asarray(special_inputs("inf", (10, batch, 12), seed=batch))
    kernel_vs_loop(cell, x, 33)


@needs_kernel
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_ten_thousand_steps_do_not_drift(cell):
    x = jnp.asarray(special_inputs("plain", (10_000, 2, 4)))
    layer, _, extra = CELLS[cell]
    kernel, loop = (layer(4, 16, cpu_kernel=mode, **extra) for mode in ("always", "never"))
    params = random_params(kernel, x)
    k_out, _ = jax.jit(kernel.apply)(params, x)
    l_out, _ = jax.jit(loop.apply)(params, x)
    differences = np.abs(np.asarray(k_out) - np.asarray(l_out))
    # float32 rounding, not a drift: the last 1,000 steps differ no more than the first 1,000
    assert differences.max() < 1e-5
    assert differences[-1000:].max() <= max(4 * differences[:1000].max(), 1e-6)


@needs_kernel
@pytest.mark.parametrize("cell", CELLS)
def test_nan_input_against_torch(cell):
    """torch, the kernel and the XLA loop agree on where a NaN goes: forward and every gradient."""
    torch = pytest.importorskip("torch")
    from interop import torch_forward

    layer, torch_name, extra = CELLS[cell]
    torch.manual_seed(0)
    t_module = getattr(torch.nn, torch_name)(6, 18, num_layers=2, bidirectional=True, **extra)
    x = special_inputs("mixed", (9, 5, 6))
    tx = torch.tensor(x, requires_grad=True)
    t_out, t_state = torch_forward(t_module, tx)
    t_states = t_state if isinstance(t_state, tuple) else (t_state,)
    cot = np.random.default_rng(2).standard_normal(t_out.shape).astype(np.float32)
    (t_out * torch.tensor(cot)).sum().backward()
    t_grads = {"x": tx.grad.numpy(), **{k: p.grad.numpy() for k, p in t_module.named_parameters()}}

    params = {"params": {k: jnp.asarray(v.detach().numpy()) for k, v in t_module.state_dict().items()}}
    module = layer(6, 18, num_layers=2, bidirectional=True, cpu_kernel="always", **extra)

    def f(params, x):
        return module.apply(params, x)

    (out, state), vjp = jax.vjp(f, params, jnp.asarray(x))
    state_cot = jax.tree.map(jnp.zeros_like, state)
    g_params, g_x = vjp((jnp.asarray(cot), state_cot))
    assert_same_values(out, t_out.detach().numpy(), "output", rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state), t_states):
        assert_same_values(a, b.detach().numpy(), "h_n", rtol=1e-5)
    if cell == "rnn_relu":
        # relu's derivative at NaN: torch passes the gradient (`x <= 0 ? 0 : g`), jax.nn.relu and so the XLA
        # loop and the kernel give 0 (`x > 0 ? g : 0`); the forward agrees, the gradients cannot.
        return
    assert_same_values(g_x, t_grads["x"], "gradient of x", rtol=1e-4)
    for name, want in t_grads.items():
        if name != "x":
            assert_same_values(g_params["params"][name], want, f"gradient of {name}", rtol=1e-4)


def _pytest_in_subprocess(isa: str, *selectors: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAXRNN_CPU_ISA": isa}
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *selectors]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=os.path.dirname(__file__))


def _runnable_isas() -> list[str]:
    saved = os.environ.pop("JAXRNN_CPU_ISA", None)
    try:
        best = cpu.isa()[0]
    finally:
        if saved is not None:
            os.environ["JAXRNN_CPU_ISA"] = saved
    return list(cpu.ISAS[cpu.ISAS.index(best) :]) if best else []


@needs_kernel
@pytest.mark.skipif("JAXRNN_CPU_ISA" in os.environ, reason="already running one build")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_isa_build(isa):
    """The builds this machine can run, other than the default one, pass the kernel-vs-loop tests of non-finite
    and extreme inputs and of every tile remainder too (the default build runs this whole file)."""
    runnable = _runnable_isas()
    if isa not in runnable:
        pytest.skip(f"this CPU cannot run the {isa} build")
    if isa == runnable[0]:
        pytest.skip(f"{isa} is the default build here: the rest of this file tests it")
    # the non-finite and extreme inputs, and the kernel-vs-loop case that covers every tile remainder
    selection = "non_finite_and_extreme or nan_in_padding or batch_17_over_19"
    run = _pytest_in_subprocess(isa, "test_fast_path.py", "test_cpu_kernel.py", "-k", selection)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
