"""A hand-written CPU kernel for the LSTM recurrence, compiled on first use and called through XLA's FFI.

XLA's CPU loop runs one small matmul per time step well below the machine's
GEMM speed and spreads it badly over cores (see the README's performance
section). ``lstm_cpu.cc`` does the whole loop of one direction in one call: per
step one pass over the packed ``W_hh`` with the gates fused into the matmul's
epilogue (AVX-512); the backward loop likewise (gate gradients, then
``dz @ W_hh``). The calling thread and helper tasks on XLA's own intra-op
thread pool share each step's 16-unit blocks.

The source ships with jaxrnn and is compiled with the system's C++ compiler
(``$CXX``, else ``g++``) into ``$JAXRNN_KERNEL_CACHE`` (default
``~/.cache/jaxrnn/kernels``) the first time it is needed, about 3 s. When that
is impossible (no compiler, no AVX-512, no ``jax.ffi``, ``JAXRNN_CPU_KERNEL=0``)
:func:`unavailable_reason` says why and jaxrnn uses its XLA loop instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

SOURCE = pathlib.Path(__file__).with_name("lstm_cpu.cc")
TARGETS = ("jaxrnn_lstm_forward", "jaxrnn_lstm_forward_train", "jaxrnn_lstm_backward")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread"]
UNIT_BLOCK = 16  # hidden units per block: the hidden size must be a multiple of this


def default_threads() -> int:
    """``$JAXRNN_CPU_THREADS``, else the cores this process may use, at most 8."""
    if "JAXRNN_CPU_THREADS" in os.environ:
        return max(1, int(os.environ["JAXRNN_CPU_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def _cpu_fingerprint() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXRNN_KERNEL_CACHE", pathlib.Path.home() / ".cache" / "jaxrnn" / "kernels"))


def _compile(compiler: str, library: pathlib.Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = pathlib.Path(tmp) / library.name
        command = [compiler, *FLAGS, "-isystem", jax.ffi.include_dir(), "-o", str(partial), str(SOURCE)]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
        os.replace(partial, library)  # atomic: a concurrent process sees the old file or the whole new one


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """Compiles (once per source, compiler flags, jax version and CPU), loads and registers the kernel."""
    if os.environ.get("JAXRNN_CPU_KERNEL", "1") == "0":
        return None, "disabled by JAXRNN_CPU_KERNEL=0"
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "include_dir"):
        return None, f"jax {jax.__version__} has no jax.ffi"
    if platform.machine() not in ("x86_64", "AMD64"):
        return None, f"the kernel needs x86-64 with AVX-512, this is {platform.machine()}"
    if "avx512f" not in _cpu_fingerprint():
        return None, "this CPU has no AVX-512"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return None, f"no C++ compiler ({compiler!r} not found; set CXX)"
    key = hashlib.sha256(
        SOURCE.read_bytes() + " ".join([compiler, *FLAGS, jax.__version__, _cpu_fingerprint()]).encode()
    ).hexdigest()[:16]
    library = _cache_dir() / f"lstm_cpu-{key}.so"
    try:
        if not library.exists():
            _compile(compiler, library)
        lib = ctypes.CDLL(str(library))
        for target in TARGETS:
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")
    except (OSError, RuntimeError, AttributeError) as error:
        return None, f"could not build or load {library}: {error}"
    return lib, None


def unavailable_reason() -> str | None:
    """None when the kernel can run here, else why not."""
    return _load()[1]


def lstm_supported(hidden_size: int, proj_size: int, dtype: jnp.dtype) -> bool:
    """Whether a layer of these sizes can use the kernel on this machine."""
    return (
        jax.default_backend() == "cpu"
        and hidden_size % UNIT_BLOCK == 0
        and not proj_size
        and jnp.dtype(dtype) == jnp.float32
        and unavailable_reason() is None
    )


def pack_weight_hh(weight_hh: Array) -> Array:
    """``W_hh`` ``(4H, H)`` -> ``(H/16, H, 64)``, the kernel's layout.

    ``packed[u, k, 16 g + j] = W_hh[g H + 16 u + j, k]``: unit block ``u``'s four gates side by side.
    """
    four_h, k = weight_hh.shape
    hidden = four_h // 4
    blocks = weight_hh.reshape(4, hidden // UNIT_BLOCK, UNIT_BLOCK, k)
    return blocks.transpose(1, 3, 0, 2).reshape(hidden // UNIT_BLOCK, k, 4 * UNIT_BLOCK)


def _call(
    target: str,
    results: tuple,
    gx: Array,
    weight_hh: Array,
    h0: Array,
    c0: Array,
    valid: Array,
    reverse: bool,
    threads: int | None,
) -> tuple[Array, ...]:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's CPU kernel is unavailable: {reason}")
    steps, batch, four_h = gx.shape
    hidden = four_h // 4
    if hidden % UNIT_BLOCK or weight_hh.shape != (four_h, hidden):
        raise ValueError(
            f"{target}: expected weight_hh of shape ({four_h}, {hidden}) with hidden a multiple of "
            f"{UNIT_BLOCK}, got {tuple(weight_hh.shape)}"
        )
    call = jax.ffi.ffi_call(target, results, vmap_method="sequential")
    threads = np.int64(threads or default_threads())
    return call(gx, pack_weight_hh(weight_hh), h0, c0, valid, reverse=bool(reverse), threads=threads)


def lstm_forward(
    gx: Array, weight_hh: Array, h0: Array, c0: Array, valid: Array, *, reverse: bool, threads: int | None = None
) -> tuple[Array, Array, Array]:
    """Runs one LSTM direction over a whole sequence (inference: nothing kept for a backward pass).

    Args:
      gx: ``(T, B, 4H)`` float32, ``x @ W_ih^T + b_ih + b_hh`` for every step.
      weight_hh: ``(4H, H)`` float32, torch's layout.
      h0, c0: ``(B, H)`` initial state.
      valid: ``(T, B)`` float32, 1 on real steps and 0 on padding (state carried, output zero).
      reverse: run from the last step to the first.
      threads: threads to split the hidden units over (default :func:`default_threads`).
    Returns ``(outputs, h_n, c_n)``: outputs ``(T, B, H)`` (zero on padding) and the final state ``(B, H)``.
    """
    steps, batch, four_h = gx.shape
    state = jax.ShapeDtypeStruct((batch, four_h // 4), jnp.float32)
    outputs = jax.ShapeDtypeStruct((steps, batch, four_h // 4), jnp.float32)
    return _call(TARGETS[0], (outputs, state, state), gx, weight_hh, h0, c0, valid, reverse, threads)


def lstm_forward_train(
    gx: Array, weight_hh: Array, h0: Array, c0: Array, valid: Array, *, reverse: bool, threads: int | None = None
) -> tuple[Array, Array, Array, Array]:
    """:func:`lstm_forward` that also keeps what the backward pass needs.

    Returns ``(outputs, hs, cs, z)``: outputs ``(T, B, H)``; ``hs``, ``cs`` ``(T, B, H)``, the state
    after every step (carried through padding); ``z`` ``(T, B, 4H)``, the gate pre-activations
    ``gx + h_{t-1} @ W_hh^T``.
    """
    steps, batch, four_h = gx.shape
    states = jax.ShapeDtypeStruct((steps, batch, four_h // 4), jnp.float32)
    z = jax.ShapeDtypeStruct(gx.shape, jnp.float32)
    return _call(TARGETS[1], (states, states, states, z), gx, weight_hh, h0, c0, valid, reverse, threads)


def pack_weight_hh_backward(weight_hh: Array) -> Array:
    """``W_hh`` ``(4H, H)`` -> ``(H/16, 4H, 16)``: ``packed[u, k, j] = W_hh[k, 16 u + j]``, panels of ``dh`` columns."""
    four_h, hidden = weight_hh.shape
    return weight_hh.reshape(four_h, hidden // UNIT_BLOCK, UNIT_BLOCK).transpose(1, 0, 2)


def lstm_backward(
    z: Array,
    cs: Array,
    c0: Array,
    d_outputs: Array,
    dh_n: Array,
    dc_n: Array,
    valid: Array,
    weight_hh: Array,
    *,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array]:
    """The backward pass of :func:`lstm_forward_train` through the recurrence.

    Args:
      z, cs: from :func:`lstm_forward_train`: ``(T, B, 4H)`` pre-activations, ``(T, B, H)`` cell states.
      c0: ``(B, H)`` initial cell state.
      d_outputs: ``(T, B, H)`` gradient of the outputs; dh_n, dc_n ``(B, H)`` of the final state.
      valid, weight_hh, reverse, threads: as for the forward.
    Returns ``(dz, dh0, dc0)``: the pre-activation gradients ``(T, B, 4H)`` (zero on padding), from
    which the weight, bias and input gradients follow as large matmuls, and those of the initial state.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's CPU kernel is unavailable: {reason}")
    steps, batch, four_h = z.shape
    state = jax.ShapeDtypeStruct((batch, four_h // 4), jnp.float32)
    call = jax.ffi.ffi_call(
        TARGETS[2], (jax.ShapeDtypeStruct(z.shape, jnp.float32), state, state), vmap_method="sequential"
    )
    packed = pack_weight_hh_backward(weight_hh)
    threads = np.int64(threads or default_threads())
    return call(z, cs, c0, d_outputs, dh_n, dc_n, valid, packed, reverse=bool(reverse), threads=threads)
