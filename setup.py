"""jaxrnn's package build: compiles the CPU kernel (``jaxrnn/kernels/recurrence_cpu.cc``) into the package.

Everything else is in ``pyproject.toml``. ``pip install .``, ``pip install -e .`` and ``pip wheel .`` compile
every build this platform runs (:func:`jaxrnn.kernels.build.builds`: x86-64 ``avx512``, ``avx2`` and
``generic``; elsewhere ``generic``), all at once, with ``$CXX`` (default ``g++``) against XLA's FFI headers
from the build environment's jax. The wheel is tagged ``py3-none-<platform>``: the libraries are loaded
with ctypes, not as Python extension modules, so any Python 3 on that platform can use them.
``JAXRNN_BUILD_KERNEL=0`` builds without them (a pure-Python wheel; the kernel is then compiled at first use
where a compiler exists, else the XLA loop runs). Without a compiler the build fails with a message saying so,
except where the only build is ``generic`` (aarch64, macOS arm64), which a default layer does not run.
"""

import importlib.util
import os
import pathlib
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1 (pyproject asks for >= 77; kept for --no-build-isolation)
    from wheel.bdist_wheel import bdist_wheel

HERE = pathlib.Path(__file__).resolve().parent
# jaxrnn/kernels/build.py by path: jaxrnn itself (and its dependencies) are not installed in the build environment.
_spec = importlib.util.spec_from_file_location("jaxrnn_kernel_build", HERE / "jaxrnn" / "kernels" / "build.py")
kernel_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_build)
PACKAGE = "jaxrnn.kernels"


def kernel_extensions() -> list:
    """One Extension per build; its name is the library's path in the package (without ``.so``). None with
    ``JAXRNN_BUILD_KERNEL=0``, or where this platform's only build is ``generic`` (which ``cpu_kernel="auto"``
    leaves alone: jaxrnn.backend) and there is no compiler: nothing a default layer runs is lost."""
    if os.environ.get("JAXRNN_BUILD_KERNEL", "1") == "0":
        return []
    if kernel_build.builds() == ("generic",) and shutil.which(kernel_build.compiler()) is None:
        print(f"jaxrnn: no C++ compiler ({kernel_build.compiler()!r}): building without the kernel's generic build")
        return []
    names = [
        kernel_build.library_name(isa, kernel_build.source_key(isa))[: -len(".so")] for isa in kernel_build.builds()
    ]
    source = str(kernel_build.SOURCE.relative_to(HERE))
    return [Extension(f"{PACKAGE}.{name}", [source]) for name in names]


class BuildKernel(build_ext):
    """Compiles the kernel's builds in parallel with :func:`jaxrnn.kernels.build.compile_library`, not as
    Python extension modules: plain shared libraries, named ``recurrence_cpu-{isa}-{key}.so``."""

    def get_ext_filename(self, fullname: str) -> str:
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extensions(self) -> None:
        import jax.ffi  # in the build environment (pyproject's build-system requires)

        out_dir = pathlib.Path(self.get_ext_fullpath(self.extensions[0].name)).parent
        kernel_build.compile_all(out_dir, jax.ffi.include_dir())

    def copy_extensions_to_source(self) -> None:
        """Editable install: the libraries go next to the source; those of earlier source are removed there."""
        super().copy_extensions_to_source()
        package_dir = pathlib.Path(self.get_finalized_command("build_py").get_package_dir(PACKAGE))
        current = {pathlib.Path(self.get_ext_filename(ext.name)).name for ext in self.extensions}
        for old in package_dir.glob("recurrence_cpu-*.so"):
            if old.name not in current:
                old.unlink()


class PlatformWheel(bdist_wheel):
    """Tags the wheel ``py3-none-<platform>``: it holds native libraries, but no Python extension modules."""

    def get_tag(self) -> tuple:
        python, abi, plat = super().get_tag()
        return ("py3", "none", plat) if self.distribution.has_ext_modules() else (python, abi, plat)


setup(ext_modules=kernel_extensions(), cmdclass={"build_ext": BuildKernel, "bdist_wheel": PlatformWheel})
