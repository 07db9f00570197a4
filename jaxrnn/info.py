"""``python -m jaxrnn.info``: which loop each recurrent layer gets on this machine, and why.

Prints the JAX backend, the CPU features the kernel looks at, the kernel's
build (instruction set), compiler and library (the package's, or one built at
first use, which this builds if needed), then
one line per cell and dtype for a layer with default options, from
:func:`jaxrnn.backend.choose`, the function the layers themselves ask.
"""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp

from jaxrnn import backend
from jaxrnn.kernels import cpu

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DTYPES = ("float32", "float64", "bfloat16")


def _library(build: str | None) -> str:
    if build is None:
        return "-"
    path = cpu.library_path(build)
    if path == cpu.packaged_library(build):
        return f"{path} (built with the package)"
    return f"{path} (built at first use{'' if path.exists() else '; not built yet'})"


def report() -> str:
    """The report ``python -m jaxrnn.info`` prints."""
    build, isa_problem = cpu.isa()
    reason = cpu.unavailable_reason()
    compiler = cpu.compiler()
    lines = [
        f"jax {jax.__version__}, backend {jax.default_backend()}, {platform.machine()}",
        f"CPU features the kernel looks at: {', '.join(cpu.cpu_features()) or 'none'}",
        f"kernel build: {build or '-'}"
        + (f" (JAXRNN_CPU_ISA={os.environ['JAXRNN_CPU_ISA']})" if os.environ.get("JAXRNN_CPU_ISA") else "")
        + (f"; {isa_problem}" if isa_problem else ""),
        f"compiler: {compiler} ({cpu._compiler_version(compiler) or 'not found'})",
        f"kernel library: {_library(build)}",
        f"kernel: {'available' if reason is None else 'unavailable: ' + reason}",
        "",
        "backend of a layer with default options (cpu_kernel='auto'):",
    ]
    for cell in CELLS:
        for dtype in DTYPES:
            choice = backend.choose(cell, dtype=jnp.dtype(dtype))
            lines.append(f"  {cell:9s} {dtype:9s} {choice.backend:11s} {choice.reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
