"""jaxrnn's hand-written CPU kernels (RNN, LSTM, GRU): same results as the XLA loop, clear errors, safe fallback.

Parity with torch (outputs, final states, gradients, lengths, both directions)
is in tests/test_parity.py::test_parity_cpu_kernel.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import THOROUGH, random_params

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


def _fake_compiler(tmp_path, name: str, version: str, log=None, fail: str | None = None, quick=False) -> str:
    """A compiler script: prints ``version`` for --version, logs each build to ``log``, and runs g++ or fails.

    ``quick``: g++ at -O0 instead of the build's -O3 (5 s instead of 13 s here), for tests of how builds are
    made and shared, not of what they compute (-O3 in a thorough run, ``HYPOTHESIS_PROFILE=thorough``)."""
    script = tmp_path / name
    body = [
        "#!/bin/sh",
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi',
        f'echo build >> "{log}"' if log else "",
        'for a do shift; [ "$a" = -O3 ] && a=-O0; set -- "$@" "$a"; done' if quick else "",
        f'echo "{fail}" >&2; exit 1' if fail else 'exec g++ "$@"',
    ]
    script.write_text("\n".join(body) + "\n")
    script.chmod(0o755)
    return str(script)


def _in_subprocess(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


def test_cache_key_covers_the_compiler_version(tmp_path):
    code = "from jaxrnn.kernels import cpu; print(cpu.library_path('generic').name)"
    names = [
        _in_subprocess(code, {"CXX": _fake_compiler(tmp_path, f"cc{v}", f"fake c++ {v}")}).stdout.strip()
        for v in (1, 2)
    ]
    assert names[0] != names[1] and all(n.startswith("recurrence_cpu-generic-") for n in names)


def test_failed_build_warns_once_with_the_compilers_message(tmp_path):
    compiler = _fake_compiler(tmp_path, "broken", "broken 1", fail="error: the compiler says no")
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "from jaxrnn.kernels import cpu\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    a, b = cpu.unavailable_reason(), cpu.unavailable_reason()\n"
        "print(len(seen)); print(seen[0].message); print(a == b)\n"
    )
    run = _in_subprocess(code, {"CXX": compiler, "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache")})
    count, message, same = run.stdout.strip().splitlines()[0], run.stdout, run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stderr
    assert count == "1" and same == "True"
    assert "the XLA loop runs instead" in message and "the compiler says no" in message


@needs_kernel
def test_concurrent_first_uses_build_once_and_a_damaged_file_is_rebuilt(tmp_path):
    """Three processes start on an empty cache at once: one build, and all three run the kernel. Then the
    cached library is damaged: the next process rebuilds it instead of failing."""
    log = tmp_path / "builds.log"
    env = {
        "CXX": _fake_compiler(tmp_path, "logging-g++", "logging g++ 1", log=log, quick=not THOROUGH),
        "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache"),
        "JAXRNN_CPU_ISA": cpu.isa()[0],
    }
    code = (
        "import jax.numpy as jnp, numpy as np\n"
        "from jaxrnn.kernels import cpu\n"
        "assert cpu.unavailable_reason() is None, cpu.unavailable_reason()\n"
        "x, h = jnp.ones((3, 2, 4)), jnp.zeros((2, 16))\n"
        "out, _ = cpu.forward('rnn_tanh', x, jnp.ones((16, 4)) * 0.1, jnp.eye(16), None, None, (h,), "
        "jnp.ones((3, 2)), reverse=False)\n"
        "print(float(out[-1, 0, 0]))\n"
    )
    command = [sys.executable, "-c", code]
    procs = [subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate()[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outputs)) == 1 and float(outputs[0]) > 0
    assert log.read_text().count("build") == 1
    (library,) = (tmp_path / "cache").glob("*.so")
    library.write_bytes(b"not a shared library")
    run = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == outputs[0]
    assert log.read_text().count("build") == 2


# Targets the kernel's one source must compile for, beyond the builds this machine runs: name -> (compiler,
# extra flags, ELF machine number of the object). The AVX-512 build is checked here even on CPUs without
# AVX-512 (which cannot run it); aarch64 (NEON, the generic layer's 32-register tiles) with a cross compiler.
COMPILE_TARGETS = {
    "avx512": (cpu.compiler(), ["-march=skylake-avx512"], 62),  # EM_X86_64
    "aarch64": ("aarch64-linux-gnu-g++", [], 183),  # EM_AARCH64; Debian: apt install g++-aarch64-linux-gnu
}


@pytest.mark.parametrize("target", COMPILE_TARGETS)
def test_kernel_source_compiles_for(target, tmp_path):
    """The source compiles (unoptimised, to keep this quick) for AVX-512 and for aarch64, with the flags of
    the real build, to an object of that architecture that defines every handler XLA looks up."""
    import shutil

    compiler, flags, machine = COMPILE_TARGETS[target]
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler} here")
    if target == "avx512" and not cpu._x86():
        pytest.skip("the AVX-512 build is x86-64 only")
    build_flags = [f for f in cpu.FLAGS if f not in ("-O3", "-shared")]
    obj = tmp_path / f"recurrence_cpu-{target}.o"
    command = [compiler, "-O0", "-c", *build_flags, *flags, "-isystem", jax.ffi.include_dir(), "-o", str(obj)]
    run = subprocess.run([*command, str(cpu.SOURCE)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    data = obj.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == machine
    missing = [t for t in cpu.TARGETS if t.encode() not in data]
    assert not missing, f"{target} object lacks {missing}"


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
