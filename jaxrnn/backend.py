"""Which loop runs a recurrent layer, and why: jaxrnn's CPU kernel or XLA's loop.

:func:`choose` is the only place that decides; :func:`jaxrnn.recurrence.recurrence` (and so every
layer and model) asks it once per traced call, and ``python -m jaxrnn.info``
prints its answers for this machine. Both backends give the same results (the
tests compare them on NaN, Inf, saturated and ordinary inputs); the kernel is
faster where it runs, the XLA loop runs everywhere and under every transform.

The rules, in order, for ``cpu_kernel="auto"`` (the default):

1. ``cpu_kernel="never"``: the XLA loop.
2. The kernel does not apply (the XLA loop runs): the JAX backend is not CPU;
   the dtype is not float32; ``proj_size > 0``; ``record_states``; a zero-length
   sequence; an option that only the XLA loop has (``unroll != 1``,
   ``hoist_input_projection``, ``fused_backward``); forward-mode
   differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``), since the
   kernel's derivative is reverse-mode only.
3. The kernel's build for this CPU is ``generic`` (no AVX2: SSE2 or another
   architecture): the XLA loop, which measured as fast or faster than that
   build (batch 32, hidden 256, 100 steps, on a 2-core AVX2 machine forced to
   the SSE2 build, kernel against XLA loop, forward / gradient in ms: LSTM
   38.7 / 125 against 37.9 / 122, GRU 36.2 / 119 against 22.0 / 72.5, RNN
   12.9 / 34.0 against 8.5 / 31.3). The aarch64 (NEON) build has never been
   timed. ``cpu_kernel="always"`` runs it. Decided before the kernel is
   loaded: nothing is loaded or compiled for a build "auto" leaves alone.
4. The kernel cannot be loaded or built here
   (``jaxrnn.kernels.cpu.unavailable_reason``, which warns once): the XLA loop.
5. Otherwise the kernel (``avx512`` or ``avx2`` build).

``cpu_kernel="always"`` raises a ``ValueError`` that gives the reason wherever
``"auto"`` would take the XLA loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.kernels import cpu

CPU_KERNEL_MODES = ("auto", "never", "always")
KERNEL = "cpu_kernel"
XLA_LOOP = "xla_loop"
SLOWER_THAN_XLA = ("generic",)  # kernel builds that "auto" leaves alone (see rule 3)


def check_cpu_kernel(owner: str, value: str) -> None:
    """Raises unless ``value`` is one of ``CPU_KERNEL_MODES``; ``owner`` names the module in the message."""
    if value not in CPU_KERNEL_MODES:
        raise ValueError(f"{owner}: cpu_kernel must be 'auto', 'never' or 'always', got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Choice:
    """The backend that runs one recurrence: ``backend`` is ``"cpu_kernel"`` or ``"xla_loop"``; ``reason`` says why."""

    backend: str
    reason: str

    @property
    def kernel(self) -> bool:
        return self.backend == KERNEL


def _tracers(value: Any) -> list[Any]:
    """The chain of tracers a value is wrapped in, outermost first (an ``Array`` gives ``[]``)."""
    chain = []
    while isinstance(value, jax.core.Tracer) and len(chain) < 64:
        chain.append(value)
        value = next((getattr(value, a) for a in ("primal", "val") if hasattr(value, a)), None)
    return chain


def forward_mode(*values: Any) -> bool:
    """Whether any of ``values`` (arrays or pytrees of them) is being differentiated in forward mode.

    ``jax.jvp`` and ``jax.jacfwd`` (so ``jax.hessian`` too) wrap the values they trace in ``JVPTracer``s;
    ``jax.grad`` and ``jax.vjp`` use linearize tracers, which the kernel serves. A function that was
    jitted before ``jvp`` was applied to it (``jax.jvp(jax.jit(f), ...)``) is not seen here: its
    computation was traced without tangents; ``cpu_kernel='never'`` serves that case.
    """
    for leaf in jax.tree.leaves(values):
        if any(type(t).__name__ == "JVPTracer" for t in _tracers(leaf)):
            return True
    return False


def choose(
    cell: str,
    *,
    cpu_kernel: str = "auto",
    dtype: Any = jnp.float32,
    proj_size: int = 0,
    record_states: bool = False,
    unroll: int = 1,
    hoist_input_projection: bool = False,
    fused_backward: bool = False,
    steps: int = 1,
    forward_mode: bool = False,
    platform: str | None = None,
) -> Choice:
    """Chooses the backend of one recurrence (one layer, one direction) and says why.

    Args:
      cell: the kernel's name of the cell: ``"lstm"``, ``"gru"``, ``"rnn_tanh"`` or ``"rnn_relu"``.
      cpu_kernel: the layer's option, ``"auto"``, ``"never"`` or ``"always"``.
      dtype: the layer's computation dtype.
      proj_size, record_states, unroll, hoist_input_projection, fused_backward: the layer's options.
      steps: the sequence length ``L``.
      forward_mode: whether the call is being differentiated in forward mode (:func:`forward_mode`).
      platform: the JAX backend (default ``jax.default_backend()``).
    Returns a :class:`Choice`. Raises ``ValueError`` for ``cpu_kernel="always"`` where the kernel cannot run,
    with the reason.
    """
    check_cpu_kernel("choose", cpu_kernel)
    if cpu_kernel == "never":
        return Choice(XLA_LOOP, "cpu_kernel='never'")
    platform = platform or jax.default_backend()
    against = None
    if platform != "cpu":
        against = f"the JAX backend is {platform}, the kernel runs on cpu"
    elif jnp.dtype(dtype) != jnp.float32:
        against = f"the dtype is {jnp.dtype(dtype).name}, the kernel runs float32"
    elif proj_size:
        against = f"proj_size={proj_size}: the kernel has no projection"
    elif record_states:
        against = "record_states=True records on the XLA loop"
    elif steps == 0:
        against = "the sequence has no steps"
    elif unroll != 1 or hoist_input_projection or fused_backward:
        options = {"unroll": unroll, "hoist_input_projection": hoist_input_projection, "fused_backward": fused_backward}
        named = ", ".join(f"{k}={v!r}" for k, v in options.items() if v not in (1, False))
        against = f"{named}: an option of the XLA loop"
    elif forward_mode:
        against = "forward-mode differentiation (jax.jvp, jacfwd, hessian): the kernel's derivative is reverse-mode"
    elif cpu_kernel == "auto" and cpu.isa()[0] in SLOWER_THAN_XLA:  # decided before the build is loaded
        why = f"the kernel's {cpu.isa()[0]} build is slower than the XLA loop (cpu_kernel='always' runs it)"
        return Choice(XLA_LOOP, why)
    else:
        unavailable = cpu.unavailable_reason()
        if unavailable is not None:
            against = f"the kernel is unavailable: {unavailable}"
    if against is None:
        return Choice(KERNEL, f"float32 on cpu, the kernel's {cpu.isa()[0]} build")
    if cpu_kernel == "always":
        raise ValueError(
            f"cpu_kernel='always' but the CPU kernel cannot run this {cell} layer: {against}. "
            "Use cpu_kernel='auto' (the XLA loop where the kernel cannot run) or 'never'."
        )
    return Choice(XLA_LOOP, against)
