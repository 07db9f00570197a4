#!/usr/bin/env bash
# Runs the aarch64 (NEON) build of the CPU kernel against XLA's loop, on an x86-64 machine, under qemu-user
# emulation: the kernel-vs-loop tests of non-finite and extreme inputs, padding, hidden sizes around the blocks,
# batch sizes and every tile remainder (tests/test_fast_path.py, tests/test_cpu_kernel.py), executed by an
# aarch64 Python with aarch64 jax/jaxlib wheels. For correctness only: emulated code is far too slow to time.
#
#   bash tests/arm64/run.sh DIR [PYTEST ARGS...]
#
# DIR holds an aarch64 Debian root (DIR/root, with python3.11) and that Python's packages (DIR/site: numpy, jax,
# jaxlib, flax, optax, tqdm, pytest, hypothesis), as this workplace's ../shared/tools/arm64-python.sh DIR numpy jax
# jaxlib flax optax tqdm pytest hypothesis makes them (Debian: qemu-user-static and debootstrap, then pip --target
# with the registry's aarch64 wheels). Elsewhere, an arm64 container (docker run --platform linux/arm64) with
# `pip install -e ".[test]"` and `python -m pytest tests/test_fast_path.py tests/test_cpu_kernel.py` does the
# same with a natively built library. Needs g++-aarch64-linux-gnu. The aarch64 build is cross-compiled here with
# aarch64-linux-gnu-g++ ($CXX_AARCH64), with the flags the package build uses on aarch64
# (jaxrnn/kernels/build.py), into a copy of the package under $ARM64_WORK (default: a temporary folder).
set -euo pipefail
arm=$(cd "${1:?usage: tests/arm64/run.sh DIR [PYTEST ARGS...]}" && pwd)
shift
cd "$(dirname "$0")/../.."
work=${ARM64_WORK:-$(mktemp -d)}
cxx=${CXX_AARCH64:-aarch64-linux-gnu-g++}
# the package and the tests, copied: the tests run in $work/pkg, where "" on sys.path finds this copy
mkdir -p "$work/pkg"
rm -rf "$work/pkg/jaxrnn" "$work/pkg/interop" "$work/pkg/tests"
cp -r jaxrnn interop tests pyproject.toml "$work/pkg/"
rm -f "$work"/pkg/jaxrnn/kernels/*.so
start=$(date +%s)
python - "$work/pkg/jaxrnn/kernels" "$cxx" <<'EOF'
import importlib.util, pathlib, sys
import jax.ffi
folder, cxx = pathlib.Path(sys.argv[1]), sys.argv[2]
spec = importlib.util.spec_from_file_location("build", folder / "build.py")  # the copy's, by path
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)
library = folder / build.library_name("generic", build.source_key("generic", "aarch64"))
build.compile_library(cxx, "generic", jax.ffi.include_dir(), library, "aarch64")
print(f"cross-compiled {library.name}")
EOF
echo "cross-compile: $(( $(date +%s) - start )) s"
# The selection: the kernel-vs-loop tests of edge inputs (NaN, Inf, huge, tiny, mixed; NaN in the initial state, the
# weights and the padding) and of every tile remainder, for all four cells: 38 tests, 28 s or more each under emulation
# here. Other kernel-vs-loop tests: pass -k (the last -k wins), e.g. -k "hidden_sizes or batch_sizes".
selection="non_finite_and_extreme or nan_in_initial_state or nan_in_padding or batch_17_over_19"
selection+=" or row_tile_remainders"
start=$(date +%s)
cd "$work/pkg"
# CXX names no compiler: the emulated process must find the cross-compiled library, never build one
arm_python=(env PYTHONPATH="$work/pkg:$arm/site" JAXRNN_TEST_JAX_CACHE=0 CXX=no-compiler-under-emulation
  qemu-aarch64-static -L "$arm/root" "$arm/root/usr/bin/python3.11")
"${arm_python[@]}" -c "import platform; from jaxrnn.kernels import cpu; r = cpu.unavailable_reason()
assert r is None, r; print('kernel', cpu.isa()[0], 'on', platform.machine(), 'from', cpu.library_path('generic'))"
"${arm_python[@]}" -m pytest -p no:cacheprovider -o addopts="-ra" -q tests/test_fast_path.py tests/test_cpu_kernel.py \
  -k "$selection" "$@"
echo "emulated tests: $(( $(date +%s) - start )) s"
