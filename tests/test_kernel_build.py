"""How the CPU kernel gets built and found: by the package build, at first use where it must, never silently absent.

The wheel test builds an sdist and a wheel from a copy of the project, installs the wheel into a folder and runs it
where no compiler exists and HOME is empty. Builds made here only to test how builds are made and found compile at
-O0 (a wrapper compiler, :func:`fake_compiler`); a thorough run (``HYPOTHESIS_PROFILE=thorough``) compiles at -O3.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import jax
import pytest
from helpers import THOROUGH

from jaxrnn.kernels import build, cpu

PROJECT = pathlib.Path(__file__).resolve().parents[1]
# A layer call that runs the kernel: its output's first value, printed.
KERNEL_CALL = (
    "import jax.numpy as jnp\n"
    "x, h = jnp.ones((3, 2, 4)), jnp.zeros((2, 16))\n"
    "out, _ = cpu.forward('rnn_tanh', x, jnp.ones((16, 4)) * 0.1, jnp.eye(16), None, None, (h,), "
    "jnp.ones((3, 2)), reverse=False)\n"
    "print(float(out[-1, 0, 0]))\n"
)


def without_packaged_libraries(folder: pathlib.Path) -> str:
    """Code that points the loader at ``folder`` instead of the package's libraries (as in an installation
    built with ``JAXRNN_BUILD_KERNEL=0``)."""
    return f"import pathlib\nfrom jaxrnn.kernels import cpu\ncpu.PACKAGE_DIR = pathlib.Path(r'{folder}')\n"


def run_python(code: str, env: dict, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python *args -c code`` with ``env`` added to this environment, run in ``cwd``."""
    command = [sys.executable, *args, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=cwd)


def fake_compiler(tmp_path, name: str, version: str, log=None, fail: str | None = None) -> str:
    """A compiler script: prints ``version`` for --version, logs each build to ``log``, and runs g++ (at -O0
    unless the run is thorough) or fails with ``fail`` as its message."""
    script = tmp_path / name
    body = [
        "#!/bin/sh",
        f'if [ "$1" = "--version" ]; then echo "{version}"; exit 0; fi',
        f'echo build >> "{log}"' if log else "",
        "" if THOROUGH else 'for a do shift; [ "$a" = -O3 ] && a=-O0; set -- "$@" "$a"; done',
        f'echo "{fail}" >&2; exit 1' if fail else f'exec {shutil.which("g++") or "g++"} "$@"',
    ]
    script.write_text("\n".join(body) + "\n")
    script.chmod(0o755)
    return str(script)


needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ here")


def test_disabled_by_environment_variable():
    run = run_python("from jaxrnn.kernels import cpu; print(cpu.unavailable_reason())", {"JAXRNN_CPU_KERNEL": "0"})
    assert run.returncode == 0 and run.stdout.strip() == "disabled by JAXRNN_CPU_KERNEL=0", run.stderr


def test_layers_still_run_without_the_kernel():
    code = (
        "import jax, jax.numpy as jnp, jaxrnn\n"
        "m = jaxrnn.LSTM(3, 16)\n"
        "x = jnp.ones((4, 2, 3))\n"
        "out, _ = m.apply(m.init(jax.random.key(0), x), x)\n"
        "print(out.shape)\n"
    )
    run = run_python(code, {"JAXRNN_CPU_KERNEL": "0"})
    assert run.returncode == 0 and run.stdout.strip() == "(4, 2, 16)", run.stderr


@pytest.mark.skipif(cpu.isa()[0] in ("generic", None), reason="'auto' does not use the kernel's build here")
def test_no_library_and_no_compiler_warns_once_and_runs_the_xla_loop(tmp_path):
    """Where no built library fits and no compiler exists: one warning that names the XLA loop, its measured
    cost and what to install, however many layers run; the layers run (on the XLA loop)."""
    code = without_packaged_libraries(tmp_path) + (
        "import warnings\n"
        "import jax, jax.numpy as jnp, jaxrnn\n"
        "from jaxrnn import backend\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    for module in (jaxrnn.LSTM(3, 16), jaxrnn.GRU(3, 8), jaxrnn.RNN(3, 4)):\n"
        "        x = jnp.ones((4, 2, 3))\n"
        "        out, _ = module.apply(module.init(jax.random.key(0), x), x)\n"
        "print(len([w for w in seen if 'jaxrnn' in str(w.message)]))\n"
        "print(backend.choose('lstm').reason)\n"
        "print(seen[0].message)\n"
    )
    run = run_python(code, {"CXX": "no-such-compiler", "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    count, reason, message = run.stdout.split("\n", 2)
    assert count == "1"
    assert reason.startswith("the kernel is unavailable: this installation has no ")
    assert "no C++ compiler to build one ('no-such-compiler' not found)" in reason
    assert "run XLA's loop instead (forward 1.6-2.7x and gradients 1.5-3.1x the kernel's time" in message
    assert "apt install g++" in message and "a jaxrnn wheel built for this platform" in message


def test_auto_loads_nothing_for_the_generic_build(tmp_path):
    """Where the build is ``generic`` (no AVX2, aarch64, macOS arm64), ``cpu_kernel="auto"`` runs the XLA loop
    without loading or compiling that build: no library and no compiler then cost nothing, not even a warning."""
    code = without_packaged_libraries(tmp_path) + (
        "import warnings; warnings.simplefilter('error')\n"
        "import jax, jax.numpy as jnp, jaxrnn\n"
        "from jaxrnn import backend\n"
        "m = jaxrnn.GRU(3, 8); x = jnp.ones((4, 2, 3))\n"
        "m.apply(m.init(jax.random.key(0), x), x)\n"
        "print(backend.choose('gru').reason)\n"
        "print(cpu._load.cache_info().currsize)\n"
    )
    run = run_python(code, {"CXX": "no-such-compiler", "JAXRNN_CPU_ISA": "generic"})
    assert run.returncode == 0, run.stderr
    reason, loaded = run.stdout.split()[:-1], run.stdout.split()[-1]
    assert " ".join(reason) == "the kernel's generic build is slower than the XLA loop (cpu_kernel='always' runs it)"
    assert loaded == "0"


def test_cache_key_covers_the_compiler_version(tmp_path):
    code = "from jaxrnn.kernels import cpu; print(cpu.cached_library('generic').name)"
    names = [run_python(code, {"CXX": fake_compiler(tmp_path, f"cc{v}", f"fake c++ {v}")}) for v in (1, 2)]
    names = [run.stdout.strip() for run in names]
    assert names[0] != names[1] and all(n.startswith("recurrence_cpu-generic-") for n in names)


def test_failed_build_warns_once_with_the_compilers_message(tmp_path):
    compiler = fake_compiler(tmp_path, "broken", "broken 1", fail="error: the compiler says no")
    code = without_packaged_libraries(tmp_path) + (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    a, b = cpu.unavailable_reason(), cpu.unavailable_reason()\n"
        "print(len(seen)); print(a == b); print(seen[0].message)\n"
    )
    run = run_python(code, {"CXX": compiler, "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    count, same, message = run.stdout.split("\n", 2)
    assert count == "1" and same == "True"
    assert "run XLA's loop instead" in message and "the compiler says no" in message


@needs_gxx
def test_concurrent_first_uses_build_once_and_a_damaged_file_is_rebuilt(tmp_path):
    """Without a packaged library, three processes start on an empty cache at once: one build, and all three run
    the kernel. Then the cached library is damaged: the next process rebuilds it instead of failing."""
    log = tmp_path / "builds.log"
    env = {
        "CXX": fake_compiler(tmp_path, "logging-g++", "logging g++ 1", log=log),
        "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache"),
        "JAXRNN_CPU_ISA": cpu.isa()[0],
    }
    code = without_packaged_libraries(tmp_path) + "assert cpu.unavailable_reason() is None\n" + KERNEL_CALL
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


@pytest.mark.skipif(os.environ.get("JAXRNN_BUILD_KERNEL") == "0", reason="installed with JAXRNN_BUILD_KERNEL=0")
def test_the_install_built_every_build_this_machine_has():
    """``pip install -e .`` (the README's set-up) compiled each build into the package; the loader takes them."""
    for name in build.builds():
        assert cpu.packaged_library(name).exists(), f"{cpu.packaged_library(name)} was not built by the install"
    assert cpu.library_path(cpu.isa()[0]) == cpu.packaged_library(cpu.isa()[0])


def test_one_version_source():
    """pyproject.toml holds the version; jaxrnn.__version__ reads it back from the installed package."""
    import tomllib

    import jaxrnn

    version = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]
    assert jaxrnn.__version__ == version
    assert f'"{version}"' not in (PROJECT / "jaxrnn" / "__init__.py").read_text(), "a second copy of the version"


def copy_package(destination: pathlib.Path) -> pathlib.Path:
    """This installation's ``jaxrnn`` package (with its built libraries), copied under ``destination``."""
    shutil.copytree(PROJECT / "jaxrnn", destination / "jaxrnn", ignore=shutil.ignore_patterns("__pycache__"))
    return destination


@needs_gxx
@pytest.mark.skipif(os.environ.get("JAXRNN_BUILD_KERNEL") == "0", reason="installed with JAXRNN_BUILD_KERNEL=0")
def test_an_edited_kernel_source_is_compiled_at_first_use(tmp_path):
    """An editable install whose recurrence_cpu.cc changed after the build: the packaged library's key no longer
    matches, so the new source is compiled once into the cache (and its answer is the same); an unchanged
    package compiles nothing."""
    log = tmp_path / "builds.log"
    env = {
        "CXX": fake_compiler(tmp_path, "logging-g++", "logging g++ 1", log=log),
        "JAXRNN_KERNEL_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(copy_package(tmp_path / "edited")) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    code = "from jaxrnn.kernels import cpu\nprint(cpu.library_path(cpu.isa()[0]))\n" + KERNEL_CALL
    # -S: without site's .pth files, so the editable install's finder does not shadow the copy
    site_packages = str(pathlib.Path(jax.__file__).parents[1])
    env["PYTHONPATH"] += os.pathsep + site_packages
    unchanged = run_python(code, env, "-S", cwd=tmp_path)  # not in the project: "" on sys.path would find it
    assert unchanged.returncode == 0, unchanged.stderr
    assert pathlib.Path(unchanged.stdout.splitlines()[0]).parent == tmp_path / "edited" / "jaxrnn" / "kernels"
    assert not log.exists()
    source = tmp_path / "edited" / "jaxrnn" / "kernels" / "recurrence_cpu.cc"
    source.write_text(source.read_text() + "\n// edited after the package was built\n")
    edited = run_python(code, env, "-S", cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    assert log.read_text().count("build") == 1
    library = pathlib.Path(edited.stdout.splitlines()[0])
    assert library.parent == tmp_path / "cache" and library.exists()
    assert edited.stdout.splitlines()[1] == unchanged.stdout.splitlines()[1]


# Targets the kernel's one source must compile for, beyond the builds this machine runs: name -> (compiler,
# architecture, build, ELF machine number of the object). The AVX-512 build is checked here even on CPUs
# without AVX-512 (which cannot run it); aarch64 (NEON, the generic layer's 32-register tiles) with a cross compiler.
COMPILE_TARGETS = {
    "avx512": (build.compiler(), "x86_64", "avx512", 62),  # EM_X86_64
    "aarch64": ("aarch64-linux-gnu-g++", "aarch64", "generic", 183),  # EM_AARCH64; apt install g++-aarch64-linux-gnu
}


@pytest.mark.parametrize("target", COMPILE_TARGETS)
def test_kernel_source_compiles_for(target, tmp_path):
    """The source compiles (unoptimised, to keep this quick) for AVX-512 and for aarch64, with the flags of
    the real build, to an object of that architecture that defines every handler XLA looks up."""
    compiler, arch, name, machine = COMPILE_TARGETS[target]
    if shutil.which(compiler) is None:
        pytest.skip(f"no {compiler} here")
    if arch == "x86_64" and not cpu._x86():
        pytest.skip("the AVX-512 build is x86-64 only")
    obj = tmp_path / f"recurrence_cpu-{target}.o"
    command = build.compile_command(compiler, name, jax.ffi.include_dir(), obj, arch)
    command = [a for a in command if a not in ("-O3", "-shared")] + ["-O0", "-c"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    data = obj.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == machine
    missing = [t for t in cpu.TARGETS if t.encode() not in data]
    assert not missing, f"{target} object lacks {missing}"


@needs_gxx
def test_wheel_from_sdist_runs_the_kernel_where_no_compiler_exists(tmp_path):
    """sdist -> wheel -> installed into a folder -> run with no compiler on PATH and an empty HOME: the wheel is
    platform-tagged, holds every build and no tests or experiments, and its first layer call runs the packaged
    kernel (nothing compiled: there is nothing to compile with)."""
    source = tmp_path / "source"
    files = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"]
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    for package in ("jaxrnn", "interop"):
        shutil.copytree(PROJECT / package, source / package, ignore=ignore)
    env = {**os.environ, "CXX": fake_compiler(tmp_path, "g++", "g++ wrapper")}
    env.pop("JAXRNN_BUILD_KERNEL", None)

    def check(*command):
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    check(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source))
    (sdist,) = (tmp_path / "dist").glob("jaxrnn-*.tar.gz")
    check(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "dist", str(sdist))
    (wheel,) = (tmp_path / "dist").glob("jaxrnn-*.whl")
    assert wheel.name.endswith(f"-py3-none-linux_{build.machine()}.whl") or sys.platform != "linux", wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    libraries = sorted(n for n in names if n.endswith(".so"))
    assert libraries == sorted(f"jaxrnn/kernels/{build.library_name(i, build.source_key(i))}" for i in build.builds())
    assert not [n for n in names if n.startswith(("tests/", "experiments/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    check(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel))

    (tmp_path / "home").mkdir()
    site_packages = str(pathlib.Path(jax.__file__).parents[1])
    bare = {  # no compiler anywhere on PATH, nothing in HOME; -S: only these folders, not the editable install
        "PATH": str(tmp_path / "no-tools"),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), site_packages]),
        "JAX_PLATFORMS": "cpu",
    }
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "from jaxrnn import info\n"
        "from jaxrnn.kernels import cpu\n"
        "print(info.report())\n"
        "print('library', cpu.library_path(cpu.isa()[0]))\n" + KERNEL_CALL
    )
    run = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=bare, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "kernel: available" in run.stdout
    library = pathlib.Path(run.stdout.split("library ")[1].splitlines()[0])
    assert library.parent == tmp_path / "site" / "jaxrnn" / "kernels"
    assert float(run.stdout.strip().splitlines()[-1]) > 0
    assert not any((tmp_path / "home").iterdir()), "the first call wrote to HOME (a kernel cache?)"
