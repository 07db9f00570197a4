#!/usr/bin/env bash
# Compiles and runs the SIMD-layer comparison; prints markdown tables. Installs nothing: needs g++ 12,
# libhwy-dev, libxsimd-dev and (for the aarch64 column) aarch64-linux-gnu-g++.
# Usage: ./run.sh [reps]   (default 9 interleaved repetitions)
set -euo pipefail
cd "$(dirname "$0")"
REPS=${1:-9}
FLAGS="-O3 -std=c++17 -march=native -mno-avx512f -ffp-contract=fast"
mkdir -p build
# Debian's aarch64-linux-gnu-g++ searches /usr/include last (after its own sysroot), so the
# architecture-independent hwy/ and xsimd/ headers are found without extra flags.

echo "## Build: g++ $FLAGS tile_bench.cc -lhwy"
g++ $FLAGS tile_bench.cc -o build/tile_bench -lhwy
echo
echo "## Run (single thread, variants interleaved, $REPS reps; median (min-max))"
./build/tile_bench "$REPS"
echo

secs() {  # median of 3 wall-clock timings of a command
  local t=()
  for i in 1 2 3; do
    local s e
    s=$(date +%s.%N); "$@" >/dev/null 2>&1 || true; e=$(date +%s.%N)
    t+=("$(echo "$e - $s" | bc -l)")
  done
  printf '%s\n' "${t[@]}" | sort -g | sed -n 2p | xargs printf '%.2f'
}
name=( "" "gcc-vector" "intrinsics (both broadcasts)" "highway" "xsimd" )
echo "## Compile time (g++ $FLAGS -c, one variant's code per TU, median of 3) and aarch64 (aarch64-linux-gnu-g++ -O2 -std=c++17 -c)"
echo
echo "| variant | x86 compile s | aarch64 compiles | aarch64 compile s |"
echo "|---|---|---|---|"
for v in 1 2 3 4; do
  cs=$(secs g++ $FLAGS -DONLY_VARIANT=$v -c tile_bench.cc -o build/v$v.o)
  if aarch64-linux-gnu-g++ -O2 -std=c++17 -DONLY_VARIANT=$v -c tile_bench.cc \
       -o build/v$v.aarch64.o 2>build/v$v.aarch64.err; then
    ok=yes; as=$(secs aarch64-linux-gnu-g++ -O2 -std=c++17 -DONLY_VARIANT=$v -c tile_bench.cc -o build/v$v.aarch64.o)
  else
    ok="no ($(grep -m1 -o 'error: .*' build/v$v.aarch64.err | cut -c1-70))"; as="-"
  fi
  echo "| ${name[$v]} | $cs | $ok | $as |"
done
ws=$(secs g++ $FLAGS tile_bench.cc -o build/tile_bench -lhwy)
echo "| whole file (all variants + harness, linked) | $ws | | |"
