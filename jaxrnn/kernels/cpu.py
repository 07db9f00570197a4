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
UNIT_BLOCK = 16  # hidden units per block; other hidden sizes are zero-padded to a multiple of it


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


def lstm_supported(proj_size: int, dtype: jnp.dtype) -> bool:
    """Whether an LSTM layer (any hidden size) can use the kernel on this machine."""
    return (
        jax.default_backend() == "cpu"
        and not proj_size
        and jnp.dtype(dtype) == jnp.float32
        and unavailable_reason() is None
    )


def pack_gate_rows(weight: Array) -> Array:
    """``W_ih`` ``(4H, I)`` or ``W_hh`` ``(4H, H)`` (``H`` a multiple of 16) -> ``(H/16, K, 64)``, the forward layout.

    ``packed[u, k, 16 g + j] = W[g H + 16 u + j, k]``: unit block ``u``'s four gates side by side.
    """
    four_h, k = weight.shape
    hidden = four_h // 4
    blocks = weight.reshape(4, hidden // UNIT_BLOCK, UNIT_BLOCK, k)
    return blocks.transpose(1, 3, 0, 2).reshape(hidden // UNIT_BLOCK, k, 4 * UNIT_BLOCK)


def pack_weight_hh_backward(weight_hh: Array) -> Array:
    """``W_hh`` ``(4H, H)`` -> ``(H/16, 4H, 16)``: ``packed[u, k, j] = W_hh[k, 16 u + j]``, panels of ``dh``."""
    four_h, hidden = weight_hh.shape
    return weight_hh.reshape(four_h, hidden // UNIT_BLOCK, UNIT_BLOCK).transpose(1, 0, 2)


# -- any hidden size: zero-padded to a multiple of 16 --------------------------------------------
# A padded unit has zero weights in and out and zero gate inputs, so its gates are sigmoid(0) and
# tanh(0): its c stays 0 * 0.5 + 0.5 * 0 = 0 and its h = 0.5 * tanh(0) = 0 forever. The real units
# see exactly the unpadded computation.


def padded_size(hidden: int) -> int:
    return -(-hidden // UNIT_BLOCK) * UNIT_BLOCK


def _pad_units(a: Array, hidden: int, gates: int = 1) -> Array:
    """``(..., gates * H)`` -> ``(..., gates * Hp)``, each gate's units zero-padded."""
    extra = padded_size(hidden) - hidden
    if not extra:
        return a
    split = a.reshape(a.shape[:-1] + (gates, hidden))
    return jnp.pad(split, [(0, 0)] * (split.ndim - 1) + [(0, extra)]).reshape(a.shape[:-1] + (-1,))


def _unpad_units(a: Array, hidden: int, gates: int = 1) -> Array:
    padded = padded_size(hidden)
    if padded == hidden:
        return a
    return a.reshape(a.shape[:-1] + (gates, padded))[..., :hidden].reshape(a.shape[:-1] + (gates * hidden,))


def _pad_weight(weight: Array, hidden: int, pad_columns: bool) -> Array:
    """``(4H, K)`` -> ``(4Hp, K)``, and ``K`` to ``Hp`` too for ``W_hh`` (``pad_columns``)."""
    extra = padded_size(hidden) - hidden
    if not extra:
        return weight
    k = weight.shape[1]
    padded = jnp.pad(weight.reshape(4, hidden, k), [(0, 0), (0, extra), (0, extra if pad_columns else 0)])
    return padded.reshape(4 * (hidden + extra), k + (extra if pad_columns else 0))


def _check(target: str, weight_hh: Array, x: Array | None = None, weight_ih: Array | None = None) -> int:
    """Returns ``H``; raises when the kernel cannot run or the shapes do not fit."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's CPU kernel is unavailable: {reason}")
    four_h, hidden = weight_hh.shape if weight_hh.ndim == 2 else (0, 0)
    ok = four_h == 4 * hidden and hidden > 0
    if x is not None:
        ok = ok and x.ndim == 3 and weight_ih is not None and weight_ih.shape == (four_h, x.shape[-1])
    if not ok:
        got = f"weight_hh {tuple(weight_hh.shape)}"
        if x is not None:
            got += f", x {tuple(x.shape)} and weight_ih {None if weight_ih is None else tuple(weight_ih.shape)}"
        raise ValueError(f"{target}: expected weight_hh (4H, H), x (T, B, I) and weight_ih (4H, I), got {got}")
    return hidden


def _forward(target, keep, x, weight_ih, bias, weight_hh, h0, c0, valid, reverse, threads) -> tuple[Array, ...]:
    hidden = _check(target, weight_hh, x, weight_ih)
    hp = padded_size(hidden)
    steps, batch, _ = x.shape
    state = jax.ShapeDtypeStruct((batch, hp), jnp.float32)
    states = jax.ShapeDtypeStruct((steps, batch, hp), jnp.float32)
    if keep:
        results = (states, states, states, jax.ShapeDtypeStruct((steps, batch, 4 * hp), jnp.float32))
    else:
        results = (states, state, state)
    call = jax.ffi.ffi_call(target, results, vmap_method="sequential")
    bias = jnp.zeros((4 * hidden,), jnp.float32) if bias is None else bias
    out = call(
        x,
        pack_gate_rows(_pad_weight(weight_ih, hidden, pad_columns=False)),
        _pad_units(bias, hidden, 4),
        pack_gate_rows(_pad_weight(weight_hh, hidden, pad_columns=True)),
        _pad_units(h0, hidden),
        _pad_units(c0, hidden),
        valid,
        reverse=bool(reverse),
        threads=np.int64(threads or default_threads()),
    )
    if keep:  # hs, cs, z stay padded: they go back into lstm_backward as they are
        return (_unpad_units(out[0], hidden),) + tuple(out[1:])
    return tuple(_unpad_units(a, hidden) for a in out)


def lstm_forward(
    x: Array,
    weight_ih: Array,
    bias: Array | None,
    weight_hh: Array,
    h0: Array,
    c0: Array,
    valid: Array,
    *,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array]:
    """Runs one LSTM direction over a whole sequence (inference: nothing kept for a backward pass).

    Args:
      x: ``(T, B, I)`` float32 inputs.
      weight_ih: ``(4H, I)``, weight_hh: ``(4H, H)`` float32, torch's layout.
      bias: ``(4H,)``, ``b_ih + b_hh``, or None.
      h0, c0: ``(B, H)`` initial state.
      valid: ``(T, B)`` float32, 1 on real steps and 0 on padding (state carried, output zero).
      reverse: run from the last step to the first.
      threads: threads to split the hidden units over (default :func:`default_threads`).
    Returns ``(outputs, h_n, c_n)``: outputs ``(T, B, H)`` (zero on padding) and the final state ``(B, H)``.
    """
    return _forward(TARGETS[0], False, x, weight_ih, bias, weight_hh, h0, c0, valid, reverse, threads)


def lstm_forward_train(
    x: Array,
    weight_ih: Array,
    bias: Array | None,
    weight_hh: Array,
    h0: Array,
    c0: Array,
    valid: Array,
    *,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array, Array]:
    """:func:`lstm_forward` that also keeps what the backward pass needs.

    Returns ``(outputs, hs, cs, z)``: outputs ``(T, B, H)``; ``hs``, ``cs`` ``(T, B, Hp)``, the state
    after every step (carried through padding); ``z`` ``(T, B, 4 Hp)``, the gate pre-activations
    ``x_t @ W_ih^T + b + h_{t-1} @ W_hh^T``. ``Hp`` is ``H`` rounded up to a multiple of 16
    (:func:`padded_size`); the extra units are zero.
    """
    return _forward(TARGETS[1], True, x, weight_ih, bias, weight_hh, h0, c0, valid, reverse, threads)


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
      z, cs: from :func:`lstm_forward_train` (padded to ``Hp`` units).
      c0: ``(B, H)`` initial cell state.
      d_outputs: ``(T, B, H)`` gradient of the outputs; dh_n, dc_n ``(B, H)`` of the final state.
      valid, weight_hh, reverse, threads: as for the forward.
    Returns ``(dz, dh0, dc0)``: the pre-activation gradients ``(T, B, 4H)`` (zero on padding), from
    which the weight, bias and input gradients follow as large matmuls, and those of the initial state.
    """
    hidden = _check(TARGETS[2], weight_hh)
    hp = padded_size(hidden)
    state = jax.ShapeDtypeStruct((z.shape[1], hp), jnp.float32)
    call = jax.ffi.ffi_call(
        TARGETS[2], (jax.ShapeDtypeStruct(z.shape, jnp.float32), state, state), vmap_method="sequential"
    )
    dz, dh0, dc0 = call(
        z,
        cs,
        _pad_units(c0, hidden),
        _pad_units(d_outputs, hidden),
        _pad_units(dh_n, hidden),
        _pad_units(dc_n, hidden),
        valid,
        pack_weight_hh_backward(_pad_weight(weight_hh, hidden, pad_columns=True)),
        reverse=bool(reverse),
        threads=np.int64(threads or default_threads()),
    )
    return _unpad_units(dz, hidden, 4), _unpad_units(dh0, hidden), _unpad_units(dc0, hidden)
