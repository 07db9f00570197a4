"""How the CPU kernel is compiled: the one definition the package build (``setup.py``) and a build at run time share.

jaxrnn's package build compiles ``recurrence_cpu.cc`` once per instruction set the target machine can run
(:func:`builds`: on x86-64 ``avx512``, ``avx2`` and ``generic``, elsewhere ``generic``) into
``jaxrnn/kernels/recurrence_cpu-{isa}-{key}.so``, next to this file. ``key`` (:func:`source_key`) hashes the
source and the flags, so a library built from other source is never loaded: in an editable install whose
``recurrence_cpu.cc`` was edited, :mod:`jaxrnn.kernels.cpu` compiles the new source at first use instead.

This module imports nothing but the standard library: ``setup.py`` loads it by path, before jaxrnn is installed.
The x86-64 builds target the psABI's levels, not the build machine's CPU, so a wheel built on one machine runs
on every CPU of that level: ``avx512`` is x86-64-v4 (AVX-512 F, BW, CD, DQ, VL), ``avx2`` is x86-64-v3
(AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE), ``generic`` the x86-64 baseline (SSE2). On other architectures
``generic`` is the compiler's default target (aarch64: armv8-a, whose baseline includes NEON).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

SOURCE = pathlib.Path(__file__).with_name("recurrence_cpu.cc")
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=fast", "-Wno-psabi"]
ISAS = ("avx512", "avx2", "generic")
"""The kernel's builds, fastest first."""

X86_MACHINES = ("x86_64", "AMD64")
_X86_MARCH = {"avx512": "x86-64-v4", "avx2": "x86-64-v3", "generic": "x86-64"}

# /proc/cpuinfo flags a CPU must report to run each x86-64 build (the psABI level's features; LZCNT is "abm").
X86_FEATURES = {
    "avx2": ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"),
}
X86_FEATURES["avx512"] = (*X86_FEATURES["avx2"], "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")


def machine() -> str:
    """This machine's architecture as ``platform.machine()`` names it (``x86_64``, ``aarch64``, ``arm64``)."""
    return platform.machine()


def builds(arch: str | None = None) -> tuple[str, ...]:
    """The builds of :data:`ISAS` that exist for architecture ``arch`` (default: this machine's)."""
    return ISAS if (arch or machine()) in X86_MACHINES else ("generic",)


def isa_flags(name: str, arch: str | None = None) -> list[str]:
    """The compiler flags that select build ``name`` for architecture ``arch`` (default: this machine's)."""
    if name not in builds(arch):
        raise ValueError(f"no {name!r} build for {arch or machine()}; the builds there are {', '.join(builds(arch))}")
    return [f"-march={_X86_MARCH[name]}"] if (arch or machine()) in X86_MACHINES else []


def source_key(name: str, arch: str | None = None, source: pathlib.Path = SOURCE) -> str:
    """16 hex digits of a hash of ``source`` and build ``name``'s flags: a built library's file name carries it."""
    flags = " ".join([*FLAGS, *isa_flags(name, arch)])
    return hashlib.sha256(source.read_bytes() + b"\n" + flags.encode()).hexdigest()[:16]


def library_name(name: str, key: str) -> str:
    """The file name of build ``name`` with key ``key``: ``recurrence_cpu-{name}-{key}.so``."""
    return f"recurrence_cpu-{name}-{key}.so"


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX", "g++")


def compile_command(
    cxx: str, name: str, include_dir: str, output: pathlib.Path, arch: str | None = None, source: pathlib.Path = SOURCE
) -> list[str]:
    """The command that compiles build ``name`` of ``source`` into ``output``; ``include_dir`` holds XLA's FFI
    headers (``jax.ffi.include_dir()``)."""
    return [cxx, *FLAGS, *isa_flags(name, arch), "-isystem", include_dir, "-o", str(output), str(source)]


def compile_library(cxx: str, name: str, include_dir: str, library: pathlib.Path, arch: str | None = None) -> None:
    """Compiles build ``name`` into ``library``, atomically: a process that loads it sees the whole file or none.
    Raises ``RuntimeError`` with the compiler's message when the compile fails."""
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = pathlib.Path(tmp) / library.name
        command = compile_command(cxx, name, include_dir, partial, arch)
        try:
            run = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            raise RuntimeError(f"{' '.join(command)} failed: {error}") from None
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
        os.replace(partial, library)


def compile_all(out_dir: pathlib.Path, include_dir: str, cxx: str | None = None, arch: str | None = None) -> list:
    """Compiles every build for ``arch`` into ``out_dir`` at once (one compiler process each) and removes
    libraries there from other source; returns the paths written. What the package build runs."""
    cxx = cxx or compiler()
    if shutil.which(cxx) is None:
        raise RuntimeError(
            f"jaxrnn's package build compiles its CPU kernel with a C++ compiler, and {cxx!r} was not found. "
            "Install one (Debian/Ubuntu: apt install g++; macOS: xcode-select --install) or name it with CXX=...; "
            "or set JAXRNN_BUILD_KERNEL=0 to build without the kernel (recurrent layers then run XLA's loop, "
            "or compile the kernel at first use where a compiler exists by then)."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    libraries = {name: out_dir / library_name(name, source_key(name, arch)) for name in builds(arch)}
    with concurrent.futures.ThreadPoolExecutor(len(libraries)) as pool:
        jobs = [pool.submit(compile_library, cxx, name, include_dir, lib, arch) for name, lib in libraries.items()]
        for job in jobs:
            job.result()
    for old in out_dir.glob("recurrence_cpu-*.so"):
        if old not in libraries.values():
            old.unlink()
    return list(libraries.values())
