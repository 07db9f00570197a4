"""Hand-written CPU kernels for the RNN, LSTM and GRU recurrences, built with the package, called through XLA's FFI.

XLA's CPU loop runs one small matmul per time step well below the machine's
GEMM speed and spreads it badly over cores (see docs/guides/performance.md).
``recurrence_cpu.cc`` does the whole loop of one direction in one call: per step
one pass over the packed ``W_ih`` and ``W_hh`` with the gates fused into the
matmul's epilogue; the backward loop likewise (gate
gradients, then ``dz @ W_hh``, and every 8 steps the weight gradients of those
steps). The calling thread and helper tasks on XLA's
own intra-op thread pool share each step's blocks of hidden units. One C++
template serves all cells; :data:`KINDS` lists them (``"lstm"``, ``"gru"``,
``"rnn_tanh"``, ``"rnn_relu"``).

The source is written once against 16-lane GCC vectors. The package build
compiles it once per instruction set (:data:`ISAS`: ``"avx512"``, ``"avx2"``,
``"generic"``; see :mod:`jaxrnn.kernels.build`) into this package's folder,
and :func:`isa` picks the best build this CPU runs (``$JAXRNN_CPU_ISA`` forces
one). Where the package holds no library of that build for this source (an
editable install whose ``recurrence_cpu.cc`` was edited, a wheel built with
``JAXRNN_BUILD_KERNEL=0``), the build is compiled at first use with the
system's C++ compiler (``$CXX``, else ``g++``) into ``$JAXRNN_KERNEL_CACHE``
(default ``~/.cache/jaxrnn/kernels``; 15-25 s on a 2-core machine), under a
file lock so that concurrent processes compile it once; that cache key covers
the source, the flags, the compiler's version and jax's version. When the
kernel is impossible (no library and no compiler, no ``jax.ffi``,
``JAXRNN_CPU_KERNEL=0``, a failed compile) :func:`unavailable_reason` says why
and jaxrnn uses its XLA loop instead; no compiler or a failed compile also
warns once, naming the slower path and what to install.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import warnings
from collections.abc import Callable

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch
from jax.interpreters import batching, mlir

from jaxrnn.kernels import build
from jaxrnn.kernels.build import ISAS, compiler

Array = jax.Array

PACKAGE_DIR = pathlib.Path(__file__).parent
"""Where the package build puts the kernel's libraries (:func:`jaxrnn.kernels.build.compile_all`)."""


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one cell sits in the kernel (see recurrence_cpu.cc).

    Attributes:
      name: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``; the FFI targets are
        ``jaxrnn_{name}_forward``, ``_forward_train`` and ``_backward``.
      gates: rows of ``W_ih`` and ``W_hh`` per hidden unit (torch's layout): 4, 3, 1.
      states: arrays in the state: 2 for LSTM ``(h, c)``, else 1.
      block: hidden units per block of the forward loop; ``H`` is zero-padded to a multiple of it.
      z_slots: gate values per unit kept for the backward pass: ``z`` is ``(T, B, z_slots * Hp)``.
    """

    name: str
    gates: int
    states: int
    block: int
    z_slots: int

    def target(self, what: str) -> str:
        """The kernel's symbol for ``what`` (``"forward"``, ``"forward_train"``, ``"backward"``)."""
        return f"jaxrnn_{self.name}_{what}"

    def padded_size(self, hidden: int) -> int:
        """``hidden`` rounded up to a multiple of :attr:`block`."""
        return -(-hidden // self.block) * self.block


KINDS = {
    "lstm": Kind("lstm", gates=4, states=2, block=16, z_slots=4),
    "gru": Kind("gru", gates=3, states=1, block=16, z_slots=4),
    "rnn_tanh": Kind("rnn_tanh", gates=1, states=1, block=64, z_slots=0),
    "rnn_relu": Kind("rnn_relu", gates=1, states=1, block=64, z_slots=0),
}
TARGETS = tuple(kind.target(what) for kind in KINDS.values() for what in ("forward", "forward_train", "backward"))


def default_threads() -> int:
    """``$JAXRNN_CPU_THREADS``, else the cores this process may use, at most 8."""
    if "JAXRNN_CPU_THREADS" in os.environ:
        return max(1, int(os.environ["JAXRNN_CPU_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


@functools.cache
def _cpu_flags() -> str:
    """The ``flags`` line of ``/proc/cpuinfo`` ('' where there is none), read once per process (every traced
    layer asks :func:`isa`)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def cpu_features() -> list[str]:
    """The CPU features the kernel's choice of build looks at (:data:`jaxrnn.kernels.build.X86_FEATURES`), as
    this machine reports them."""
    flags = set(_cpu_flags().split())
    return [name for name in build.X86_FEATURES["avx512"] if name in flags]


def _x86() -> bool:
    return platform.machine() in build.X86_MACHINES


def isa() -> tuple[str | None, str | None]:
    """``(isa, None)``: the build the kernel uses here (``$JAXRNN_CPU_ISA``, else the best this CPU runs), or
    ``(None, reason)`` when ``$JAXRNN_CPU_ISA`` names one this CPU cannot run or no such build."""
    features = set(cpu_features())
    runs = {name: _x86() and set(build.X86_FEATURES[name]) <= features for name in ("avx512", "avx2")}
    runs["generic"] = True
    wanted = os.environ.get("JAXRNN_CPU_ISA", "")
    if not wanted:
        return next(name for name in ISAS if runs[name]), None
    if wanted not in ISAS:
        return None, f"JAXRNN_CPU_ISA={wanted!r} is not one of {', '.join(ISAS)}"
    if not runs[wanted]:
        return None, f"JAXRNN_CPU_ISA={wanted}, but this CPU ({platform.machine()}) cannot run that build"
    return wanted, None


# For benchmarks against torch on the same instruction set: the switches of torch's CPU libraries, by build.
_TORCH_ISA_SWITCHES = {
    "avx512": {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ATEN_CPU_CAPABILITY": "avx512",
    },
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "generic": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ATEN_CPU_CAPABILITY": "default"},
}


def isa_environment(name: str) -> dict[str, str]:
    """The environment variables that hold jaxrnn's kernel and torch's CPU libraries to instruction set ``name``.

    ``JAXRNN_CPU_ISA`` for the kernel's build, and for torch (which reads them once, so set them before
    ``import torch``): ``ONEDNN_MAX_CPU_ISA`` (oneDNN, torch's LSTM and matmuls), ``MKL_ENABLE_INSTRUCTIONS``
    (MKL's GEMM) and ``ATEN_CPU_CAPABILITY`` (ATen's vectorized elementwise kernels). ``name`` is one of
    :data:`ISAS`; nothing here checks that this CPU runs it (:func:`isa` does, for the kernel).
    """
    if name not in _TORCH_ISA_SWITCHES:
        raise ValueError(f"isa_environment: {name!r} is not one of {', '.join(ISAS)}")
    return {"JAXRNN_CPU_ISA": name, **_TORCH_ISA_SWITCHES[name]}


def _cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("JAXRNN_KERNEL_CACHE", pathlib.Path.home() / ".cache" / "jaxrnn" / "kernels"))


@functools.cache
def _compiler_version(compiler: str) -> str:
    try:
        run = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout.splitlines()[0] if run.stdout else ""


def packaged_library(name: str) -> pathlib.Path:
    """Where the package build put build ``name`` of this source (the file may not exist)."""
    return PACKAGE_DIR / build.library_name(name, build.source_key(name))


def cached_library(name: str) -> pathlib.Path:
    """Where a build at first use puts build ``name``: in ``$JAXRNN_KERNEL_CACHE``, under a name that also
    hashes the compiler's version and jax's."""
    comp = compiler()
    extra = "\n".join([comp, _compiler_version(comp), jax.__version__]).encode()
    key = hashlib.sha256(build.source_key(name).encode() + extra).hexdigest()[:16]
    return _cache_dir() / build.library_name(name, key)


def library_path(name: str) -> pathlib.Path:
    """The library build ``name`` is loaded from: the package's (:func:`packaged_library`) where it exists, else
    the one built at first use (:func:`cached_library`)."""
    packaged = packaged_library(name)
    return packaged if packaged.exists() else cached_library(name)


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    """An exclusive lock on ``path`` (created if missing) between processes; nothing where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic renames still keep half-written files out of sight
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_and_load(name: str, library: pathlib.Path) -> ctypes.CDLL:
    """Compiles ``library`` unless it is cached (once across processes: under a lock), loads it; a cached file
    that does not load (damaged, or from another system) is compiled again once."""
    comp, include = compiler(), jax.ffi.include_dir()
    library.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(library.with_suffix(".lock")):
        if not library.exists():
            build.compile_library(comp, name, include, library)
        try:
            return ctypes.CDLL(str(library))
        except OSError:
            library.unlink(missing_ok=True)
            build.compile_library(comp, name, include, library)
            return ctypes.CDLL(str(library))


# What the XLA loop costs where the kernel would run: the layer benchmark (kernel against XLA loop, same run;
# docs/guides/performance.md).
XLA_LOOP_COST = "forward 1.6-2.7x and gradients 1.5-3.1x the kernel's time in jaxrnn's layer benchmark"


def _off(reason: str) -> tuple[None, str]:
    """Warns once per build (``_load`` is cached) that the kernel is off and the XLA loop runs; returns ``reason``."""
    warnings.warn(
        f"jaxrnn: the CPU kernel is off, recurrent layers run XLA's loop instead ({XLA_LOOP_COST}): {reason}. "
        "JAXRNN_CPU_KERNEL=0 chooses the XLA loop without this warning.",
        RuntimeWarning,
        3,
    )
    return None, reason


@functools.cache
def _load(name: str) -> tuple[ctypes.CDLL | None, str | None]:
    """Loads and registers build ``name``: the package's library, else one compiled at first use (once per
    source, flags, compiler and jax version)."""
    if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "include_dir"):
        return None, f"jax {jax.__version__} has no jax.ffi"
    packaged = packaged_library(name)
    try:
        lib = ctypes.CDLL(str(packaged)) if packaged.exists() else None
    except OSError:  # damaged, or built for another system: build one at first use instead
        lib = None
    if lib is None:
        if shutil.which(compiler()) is None:
            return _off(
                f"this installation has no {name} library built from this source ({packaged.name}) and there is no "
                f"C++ compiler to build one ({compiler()!r} not found). Install a C++ compiler (Debian/Ubuntu: "
                "apt install g++; macOS: xcode-select --install; or set CXX), or a jaxrnn wheel built for this "
                "platform"
            )
        library = cached_library(name)
        try:
            lib = _build_and_load(name, library)
        except (OSError, RuntimeError) as error:
            return _off(f"could not build or load {library}: {error}")
    try:
        for target in TARGETS:  # each build under its own names, so one process can run several
            jax.ffi.register_ffi_target(
                registered_target(target, name), jax.ffi.pycapsule(getattr(lib, target)), platform="cpu"
            )
    except AttributeError as error:
        return _off(f"{lib._name} lacks a kernel: {error}")
    return lib, None


def registered_target(symbol: str, name: str) -> str:
    """The name XLA knows build ``name``'s ``symbol`` by, e.g. ``jaxrnn_lstm_forward_avx2``."""
    return f"{symbol}_{name}"


def unavailable_reason() -> str | None:
    """None when the kernel can run here, else why not. Reads ``$JAXRNN_CPU_KERNEL`` and ``$JAXRNN_CPU_ISA`` on
    every call; compiles and loads the build at most once per process."""
    if os.environ.get("JAXRNN_CPU_KERNEL", "1") == "0":
        return "disabled by JAXRNN_CPU_KERNEL=0"
    name, reason = isa()
    if name is None:
        return reason
    return _load(name)[1]


def _kind(name: str) -> Kind:
    if name not in KINDS:
        raise ValueError(f"unknown kernel cell {name!r}; expected one of {sorted(KINDS)}")
    return KINDS[name]


# -- layouts: torch's arrays -> the kernel's ------------------------------------------------------
# Any hidden size H is zero-padded to Hp, a multiple of the kind's block. A padded unit has zero
# weights in and out, zero bias and a zero initial state, so it stays exactly 0: LSTM c = 0.5 * 0 +
# 0.5 * tanh(0) = 0, h = 0.5 * tanh(0); GRU h = 0.5 * tanh(0) + 0.5 * 0; RNN tanh(0) = relu(0) = 0.
# The real units see exactly the unpadded computation.


def _pad_units(a: Array, hidden: int, padded: int) -> Array:
    """``(..., H)`` -> ``(..., Hp)``, zero-padded."""
    return a if padded == hidden else jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, padded - hidden)])


def _stack_state(state: tuple[Array, ...], hidden: int, padded: int) -> Array:
    """A state tuple of ``(B, H)`` arrays -> ``(S, B, Hp)``, the kernel's layout."""
    return jnp.stack([_pad_units(s, hidden, padded) for s in state])


def _pad_weight(weight: Array, gates: int, hidden: int, padded: int, pad_columns: bool) -> Array:
    """``(G H, K)`` -> ``(G Hp, K)``, and ``K`` to ``Hp`` too for ``W_hh`` (``pad_columns``)."""
    if padded == hidden:
        return weight
    k, extra = weight.shape[1], padded - hidden
    columns = extra if pad_columns else 0
    return jnp.pad(weight.reshape(gates, hidden, k), [(0, 0), (0, extra), (0, columns)]).reshape(-1, k + columns)


def pack_panels(weight: Array, gates: int, block: int) -> Array:
    """``W`` ``(G Hp, K)`` -> ``(Hp/block, G block/16, K, 16)``, the forward loop's layout.

    Block ``u`` has ``G block`` accumulator columns, its gates side by side (column ``block g + j`` is
    unit ``block u + j`` of gate ``g``), cut into 16-column slots; each slot's ``(K, 16)`` panel is
    contiguous, so a register tile streams one slot's rows in order:
    ``packed[u, s, k, l] = W[g Hp + block u + j, k]`` with ``block g + j = 16 s + l``.
    """
    rows, k = weight.shape
    hidden = rows // gates
    blocks = hidden // block
    by_block = weight.reshape(gates, blocks, block, k).transpose(1, 3, 0, 2).reshape(blocks, k, -1, 16)
    return by_block.transpose(0, 2, 1, 3)


def backward_block(padded: int) -> int:
    """Hidden units per block of the backward loop: 64 (6x64 register tiles) where ``Hp`` allows, else 16."""
    return 64 if padded % 64 == 0 else 16


def pack_backward(weight_hh: Array) -> Array:
    """``W_hh`` ``(G Hp, Hp)`` -> ``(Hp/W, W/16, G Hp, 16)``: ``packed[u, s, k, l] = W_hh[k, W u + 16 s + l]``.

    ``W`` is :func:`backward_block`; each 16-column slot's ``(G Hp, 16)`` panel is contiguous.
    """
    rows, hidden = weight_hh.shape
    block = backward_block(hidden)
    return weight_hh.reshape(rows, hidden // block, block // 16, 16).transpose(1, 2, 0, 3)


def _bias_slots(kind: Kind, bias_ih: Array | None, bias_hh: Array | None, hidden: int) -> Array:
    """The bias of each accumulator slot, ``(slots, H)``: LSTM ``b_ih + b_hh`` per gate (i, f, g, o);
    GRU ``[b_ir + b_hr, b_iz + b_hz, b_hn, b_in]`` (``b_hn`` goes inside ``r * (...)``); RNN ``b_ih + b_hh``."""
    if bias_ih is None:
        return jnp.zeros((64 // kind.block, hidden), jnp.float32)
    b_ih, b_hh = bias_ih.reshape(kind.gates, hidden), bias_hh.reshape(kind.gates, hidden)
    if kind.name == "gru":
        return jnp.stack([b_ih[0] + b_hh[0], b_ih[1] + b_hh[1], b_hh[2], b_ih[2]])
    return b_ih + b_hh


def _pack_bias(kind: Kind, bias_ih: Array | None, bias_hh: Array | None, hidden: int, padded: int) -> Array:
    """-> ``(Hp/block, 64)``: the bias of block ``u``'s 64 accumulator columns."""
    slots = _bias_slots(kind, bias_ih, bias_hh, hidden)
    slots = jnp.pad(slots, [(0, 0), (0, padded - hidden)])
    count = slots.shape[0]
    return slots.reshape(count, padded // kind.block, kind.block).transpose(1, 0, 2).reshape(-1, 64)


def _check(kind: Kind, what: str, weight_hh: Array, x: Array | None = None, weight_ih: Array | None = None) -> int:
    """Returns ``H``; raises when the kernel cannot run or the shapes do not fit."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"jaxrnn's CPU kernel is unavailable: {reason}")
    rows, hidden = weight_hh.shape if weight_hh.ndim == 2 else (0, 0)
    ok = rows == kind.gates * hidden and hidden > 0
    if x is not None:
        ok = ok and x.ndim == 3 and weight_ih is not None and weight_ih.shape == (rows, x.shape[-1])
    if not ok:
        g = "" if kind.gates == 1 else str(kind.gates)
        got = f"weight_hh {tuple(weight_hh.shape)}"
        if x is not None:
            got += f", x {tuple(x.shape)} and weight_ih {None if weight_ih is None else tuple(weight_ih.shape)}"
        raise ValueError(
            f"{kind.target(what)}: expected weight_hh ({g}H, H), x (T, B, I) and weight_ih ({g}H, I), got {got}"
        )
    return hidden


# -- one primitive around each kernel call: jax.export lowers the XLA loop instead, or names the switch --------


def _exportable_abstract_eval(*avals, kernel, fallback, name):
    del fallback, name
    return [jax.core.ShapedArray(o.shape, o.dtype) for o in jax.eval_shape(kernel, *avals)]


def _exportable_lowering(ctx, *args, kernel, fallback, name):
    if not ctx.module_context.lowering_parameters.for_export:
        return mlir.lower_fun(kernel, multiple_results=True)(ctx, *args)
    if fallback is None:
        raise ValueError(
            f"jax.export: jaxrnn's CPU kernel ({name}) is not portable and has no exportable form here (inside a "
            "gradient); construct the recurrent layer or model with cpu_kernel='never' to export this function."
        )
    return mlir.lower_fun(fallback, multiple_results=True)(ctx, *args)


def _exportable_batching(args, dims, **params):
    """vmap: one kernel call per mapped element (what the FFI call's ``vmap_method="sequential"`` did)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    args = [jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    outs = jax.lax.map(lambda xs: _exportable_p.bind(*xs, **params), args)
    return outs, [0] * len(outs)


_exportable_p = jax.extend.core.Primitive("jaxrnn_cpu_kernel")
_exportable_p.multiple_results = True
_exportable_p.def_impl(functools.partial(dispatch.apply_primitive, _exportable_p))
_exportable_p.def_abstract_eval(_exportable_abstract_eval)
mlir.register_lowering(_exportable_p, _exportable_lowering)
batching.primitive_batchers[_exportable_p] = _exportable_batching


def _exportable(name: str, kernel, fallback, arrays: list) -> list:
    """``kernel(*arrays)`` (a list of arrays; FFI calls inside) as one primitive. Where ``jax.export`` lowers it,
    ``fallback(*arrays)`` (the XLA loop, same results) is lowered instead, or, when there is none, a
    ``ValueError`` names ``cpu_kernel='never'``. (Nothing else can tell an export from a ``jit``: both trace
    the same way.)"""
    return _exportable_p.bind(*arrays, kernel=kernel, fallback=fallback, name=name)


def _threads(threads: int | None) -> np.int64:
    return np.int64(threads or default_threads())


def _forward(kind_name, train, x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid, reverse, threads, fallback):
    kind = _kind(kind_name)
    what = "forward_train" if train else "forward"
    hidden = _check(kind, what, weight_hh, x, weight_ih)
    if len(state0) != kind.states:
        raise ValueError(f"{kind.target(what)}: expected a state of {kind.states} arrays, got {len(state0)}")
    hp = kind.padded_size(hidden)
    steps, batch, _ = x.shape
    if train:  # the outputs are the states' h, zeroed on padding: no separate array
        results = (
            jax.ShapeDtypeStruct((steps, kind.states, batch, hp), jnp.float32),
            jax.ShapeDtypeStruct((steps, batch, kind.z_slots * hp), jnp.float32),
        )
    else:
        results = (
            jax.ShapeDtypeStruct((steps, batch, hp), jnp.float32),
            jax.ShapeDtypeStruct((kind.states, batch, hp), jnp.float32),
        )
    target = registered_target(kind.target(what), isa()[0])
    bias = bias_ih is not None
    arrays = [x, weight_ih, weight_hh, *([bias_ih, bias_hh] if bias else []), *state0, valid]

    def unflatten(flat):
        x, weight_ih, weight_hh, *rest = flat
        bias_ih, bias_hh = (rest.pop(0), rest.pop(0)) if bias else (None, None)
        return x, weight_ih, weight_hh, bias_ih, bias_hh, tuple(rest[:-1]), rest[-1]

    def kernel(*flat):
        x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid = unflatten(flat)
        out = jax.ffi.ffi_call(target, results, vmap_method="sequential")(
            x,
            pack_panels(_pad_weight(weight_ih, kind.gates, hidden, hp, pad_columns=False), kind.gates, kind.block),
            _pack_bias(kind, bias_ih, bias_hh, hidden, hp),
            pack_panels(_pad_weight(weight_hh, kind.gates, hidden, hp, pad_columns=True), kind.gates, kind.block),
            _stack_state(state0, hidden, hp),
            valid,
            reverse=bool(reverse),
            units=np.int64(hidden),
            threads=_threads(threads),
        )
        if train:  # states and z stay padded: they go back into backward() as they are
            states, z = out
            # where, not a product with valid: an Inf state carried through padding must give 0 there, not NaN
            return [jnp.where(valid[..., None] > 0.5, states[:, 0, :, :hidden], 0.0), states, z]
        return [out[0][..., :hidden], *(s[..., :hidden] for s in out[1])]

    def flat_fallback(*flat):
        outputs, final = fallback(*unflatten(flat))
        return [outputs, *final]

    out = _exportable(target, kernel, None if fallback is None else flat_fallback, arrays)
    return tuple(out) if train else (out[0], tuple(out[1:]))


def forward(
    kind: str,
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias_ih: Array | None,
    bias_hh: Array | None,
    state0: tuple[Array, ...],
    valid: Array,
    *,
    reverse: bool,
    threads: int | None = None,
    fallback: Callable | None = None,
) -> tuple[Array, tuple[Array, ...]]:
    """Runs one direction of one layer over a whole sequence (inference: nothing kept for a backward pass).

    Args:
      kind: the cell, a key of :data:`KINDS` (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ``"rnn_relu"``).
      x: ``(T, B, I)`` float32 inputs.
      weight_ih: ``(G H, I)``, weight_hh: ``(G H, H)`` float32, torch's layout (``G`` gates: 4, 3, 1).
      bias_ih, bias_hh: ``(G H,)`` or both None.
      state0: the initial state, ``(h0,)`` or for LSTM ``(h0, c0)``, each ``(B, H)``.
      valid: ``(T, B)`` float32, 1 on real steps and 0 on padding (state carried, output zero).
      reverse: run from the last step to the first.
      threads: threads to split the hidden units over (default :func:`default_threads`).
      fallback: ``fallback(x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid) -> (outputs, state_n)``,
        the same computation without the kernel (the XLA loop), which ``jax.export`` lowers in its place;
        without one, exporting raises a ``ValueError`` that names ``cpu_kernel='never'``.
    Returns ``(outputs, state_n)``: outputs ``(T, B, H)`` (zero on padding) and the final state, a tuple
    like ``state0``.
    """
    return _forward(kind, False, x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid, reverse, threads, fallback)


def forward_train(
    kind: str,
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    bias_ih: Array | None,
    bias_hh: Array | None,
    state0: tuple[Array, ...],
    valid: Array,
    *,
    reverse: bool,
    threads: int | None = None,
) -> tuple[Array, Array, Array]:
    """:func:`forward` that also keeps what :func:`backward` needs.

    Returns ``(outputs, states, z)``: outputs ``(T, B, H)``, the states' ``h`` zeroed on padding (not
    written by the kernel: XLA fuses the select into what reads it); ``states`` ``(T, S, B, Hp)``, the state after
    every step (carried through padding; ``S`` = 2 for LSTM's ``h, c``, else 1); ``z``
    ``(T, B, Z Hp)``, the gate values (LSTM: ``i, f, g, o``; GRU: ``r``, ``z``, ``W_hn h + b_hn``, ``n``;
    RNN: none, ``Z = 0``). ``Hp`` is ``H`` rounded up to the kind's block
    (:meth:`Kind.padded_size`); the extra units are zero.
    """
    return _forward(kind, True, x, weight_ih, weight_hh, bias_ih, bias_hh, state0, valid, reverse, threads, None)


def pack_input_backward(weight_ih: Array) -> Array:
    """``W_ih`` ``(G Hp, I)`` -> flat panels for the input gradient ``dx_t = dz_t @ W_ih``.

    ``I`` is zero-padded to ``Ip``, a multiple of 16, and cut into panels of 64 columns (the last
    may be narrower), one after the other: ``G Hp Ip`` floats. A panel of width ``16 n`` is its
    ``n`` 16-column slots, each ``(G Hp, 16)`` row-major, one after the other.
    """
    rows, inputs = weight_ih.shape
    padded = -(-inputs // 16) * 16
    weight = jnp.pad(weight_ih, [(0, 0), (0, padded - inputs)])
    slots = weight.reshape(rows, padded // 16, 16).transpose(1, 0, 2)  # (Ip/16, G Hp, 16)
    return slots.reshape(-1)


def _unpad_gates(a: Array, gates: int, hidden: int, padded: int) -> Array:
    """``(G Hp, ...)`` -> ``(G H, ...)``: drops the padding units of each gate."""
    if padded == hidden:
        return a
    return a.reshape(gates, padded, *a.shape[1:])[:, :hidden].reshape(gates * hidden, *a.shape[1:])


def backward(
    kind: str,
    z: Array,
    states: Array,
    state0: tuple[Array, ...],
    d_outputs: Array,
    d_state_n: tuple[Array, ...],
    valid: Array,
    x: Array,
    weight_ih: Array,
    weight_hh: Array,
    *,
    bias: bool,
    input_grad: bool,
    reverse: bool,
    threads: int | None = None,
) -> tuple[dict[str, Array | None], Array | None, tuple[Array, ...]]:
    """The backward pass of :func:`forward_train`: the recurrence's gradient and all parameter gradients.

    The gate gradients of each step go through ``W_hh`` to the step before; every 8 steps the kernel
    adds them into the weight and bias gradients (and computes those steps' input gradients), so no
    ``(T, B, G H)`` gradient is written.

    Args:
      kind: as for :func:`forward`.
      z, states: from :func:`forward_train` (padded).
      state0: the initial state, as for the forward.
      d_outputs: ``(T, B, H)``, the gradient of the outputs; d_state_n: of the final state, like ``state0``.
      valid: ``(T, B)``, as for the forward.
      x: ``(T, B, I)``, the forward's inputs; weight_ih ``(G H, I)``, weight_hh ``(G H, H)``.
      bias: whether the layer has biases (else their gradients are None).
      input_grad: whether to compute the gradient of ``x`` (else None).
      reverse, threads: as for the forward.
    Returns ``(grads, dx, d_state0)``: ``grads`` holds ``weight_ih``, ``weight_hh``, ``bias_ih`` and
    ``bias_hh`` in torch's layouts; ``dx`` is ``(T, B, I)`` (zero on padding) or None; ``d_state0`` is
    the gradient of the initial state, like ``state0``.
    """
    kind_ = _kind(kind)
    hidden = _check(kind_, "backward", weight_hh, x, weight_ih)
    hp = kind_.padded_size(hidden)
    steps, batch, inputs = x.shape
    rows = kind_.gates * hp
    padded_inputs = -(-inputs // 16) * 16 if input_grad else 0
    results = (
        jax.ShapeDtypeStruct((inputs, rows), jnp.float32),
        jax.ShapeDtypeStruct((hp, rows), jnp.float32),
        jax.ShapeDtypeStruct((2, rows), jnp.float32),
        jax.ShapeDtypeStruct((steps, batch, padded_inputs), jnp.float32),
        jax.ShapeDtypeStruct((kind_.states, batch, hp), jnp.float32),
    )
    w_ih = _pad_weight(weight_ih, kind_.gates, hidden, hp, pad_columns=False)
    w_hh = _pad_weight(weight_hh, kind_.gates, hidden, hp, pad_columns=True)
    target = registered_target(kind_.target("backward"), isa()[0])
    call = jax.ffi.ffi_call(target, results, vmap_method="sequential")
    arrays = [
        z,
        states,
        _stack_state(state0, hidden, hp),
        _pad_units(d_outputs, hidden, hp),
        _stack_state(d_state_n, hidden, hp),
        valid,
        pack_backward(w_hh),
        x,
        pack_input_backward(w_ih) if input_grad else jnp.zeros((0,), jnp.float32),
    ]

    def kernel(*arrays):
        return list(call(*arrays, reverse=bool(reverse), units=np.int64(hidden), threads=_threads(threads)))

    d_wih_t, d_whh_t, d_bias, dx, d_state0 = _exportable(target, kernel, None, arrays)
    grads = {
        "weight_ih": _unpad_gates(d_wih_t.T, kind_.gates, hidden, hp),
        "weight_hh": _unpad_gates(d_whh_t[:hidden].T, kind_.gates, hidden, hp),
        "bias_ih": _unpad_gates(d_bias[0], kind_.gates, hidden, hp) if bias else None,
        "bias_hh": _unpad_gates(d_bias[1], kind_.gates, hidden, hp) if bias else None,
    }
    dx = dx[..., :inputs] if input_grad else None
    return grads, dx, tuple(s[..., :hidden] for s in d_state0)
