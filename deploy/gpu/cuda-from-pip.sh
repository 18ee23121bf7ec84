#!/usr/bin/env bash
# Lay out a CUDA 13.0 "toolkit" from NVIDIA's PyPI wheels (no GPU, no system CUDA needed),
# good enough to `cargo build --features cuda` candle 0.11 (candle-kernels via cudaforge/nvcc,
# cudarc 0.19 with cuda-version-from-build-system + dynamic-linking).
# Idempotent. Usage:  eval "$(./setup-cuda-pip.sh)"    (progress goes to stderr, exports to stdout)
#
# Versions = exactly what `cuda-toolkit==13.0.2` pins, i.e. what torch 2.11.0 (cu130) installs,
# so sonames (libcublas.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13) match the torch venv.
set -euo pipefail

PREFIX="${CUDA_PIP_PREFIX:-$HOME/cuda-pip}"
WHEELS="$PREFIX/wheels"          # downloaded .whl files
SITE="$PREFIX/site"              # pip --target install; wheels merge into $SITE/nvidia/cu13
ROOT="$PREFIX/cuda-13.0"         # the CUDA_ROOT/CUDA_HOME we export
CU13="$SITE/nvidia/cu13"

PKGS=(
  nvidia-cuda-nvcc==13.0.88      # nvcc, ptxas, fatbinary, nvlink, cudafe++, nvcc.profile
  nvidia-nvvm==13.0.88           # nvvm/bin/cicc + libdevice (nvcc needs it)
  nvidia-cuda-crt==13.0.88       # include/crt/* (host_config.h, ...)
  nvidia-cuda-cccl==13.0.85      # include/cccl (cuda/std, cub, thrust)
  nvidia-cuda-runtime==13.0.96   # cuda_runtime.h, cuda.h, libcudart.so.13
  nvidia-cublas==13.1.0.3        # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.0.35       # libcurand.so.10
  nvidia-cuda-nvrtc==13.0.88     # libnvrtc.so.13
)

log() { echo "[setup-cuda-pip] $*" >&2; }

mkdir -p "$WHEELS"
# 1) download (pip skips files already present in -d)
need_dl=0
for p in "${PKGS[@]}"; do
  n="${p%%==*}"; v="${p##*==}"; f="${n//-/_}-${v}-"
  ls "$WHEELS/$f"*.whl >/dev/null 2>&1 || need_dl=1
done
if [ "$need_dl" = 1 ]; then
  log "downloading wheels"
  ${PIP:-python3 -m pip} download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "${PKGS[@]}" >&2
fi

# 2) install (unpack) into $SITE
if [ ! -x "$CU13/bin/nvcc" ] || [ ! -e "$CU13/lib/libcublasLt.so.13" ] || [ ! -x "$CU13/nvvm/bin/cicc" ]; then
  log "installing wheels into $SITE"
  rm -rf "$SITE"
  ${PIP:-python3 -m pip} install --quiet --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl >&2
fi

# 3) toolkit-shaped root: bin/include/nvvm -> wheel dirs, lib64 = unversioned dev symlinks + stubs
mkdir -p "$ROOT/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU13/$d" "$ROOT/$d"; done
for f in "$CU13"/lib/*.so.*; do ln -sfn "$f" "$ROOT/lib64/$(basename "$f")"; done
for l in cudart cublas cublasLt curand nvrtc nvblas; do
  real=$(ls "$CU13"/lib/lib$l.so.[0-9]* | head -1)
  ln -sfn "$real" "$ROOT/lib64/lib$l.so"
done

# 4) libcuda.so link stub (no wheel ships one). soname libcuda.so.1 => at run time the real driver
#    library (libcuda.so.1 from the NVIDIA driver) is loaded. Symbols: every cu* function declared
#    by this toolkit's cuda.h (current + legacy/_v2 names) plus every driver symbol cudarc can reference.
#    Every stub function returns 34 = CUDA_ERROR_STUB_LIBRARY, like NVIDIA's own toolkit stub.
#    stubs/libcuda.so.1 -> libcuda.so exists ONLY so the binary can be started on a driver-less
#    build box (LD_LIBRARY_PATH=$ROOT/lib64:$ROOT/lib64/stubs); never put stubs/ on a GPU host's path.
STUB="$ROOT/lib64/stubs/libcuda.so"
tmp=$(mktemp -d)
for def in "" "-D__CUDA_API_VERSION_INTERNAL"; do
  echo '#include <cuda.h>' | gcc -E -P $def -I"$CU13/include" - | grep -oP '\bcu[A-Z]\w*(?=\s*\()' || true
done > "$tmp/syms"
for r in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.*/src/driver/sys/mod.rs; do
  [ -e "$r" ] && grep -oP '^\s+fn \Kcu\w+(?=\()' "$r" >> "$tmp/syms" || true
done
sort -u "$tmp/syms" | awk '{print "int " $1 "(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }"}' > "$tmp/libcuda_stub.c"
if ! cmp -s "$tmp/libcuda_stub.c" "$ROOT/lib64/stubs/libcuda_stub.c" || [ ! -e "$STUB" ]; then
  log "generating $STUB"
  gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB" "$tmp/libcuda_stub.c"
  cp "$tmp/libcuda_stub.c" "$ROOT/lib64/stubs/libcuda_stub.c"
  log "stub exports $(nm -D --defined-only "$STUB" | grep -c ' T cu') symbols"
fi
ln -sfn libcuda.so "$ROOT/lib64/stubs/libcuda.so.1"
rm -rf "$tmp"

# 5) env for the build
cat <<EOF
export CUDA_ROOT="$ROOT"
export PATH="$ROOT/bin:\$PATH"
export CUDA_COMPUTE_CAP=90
EOF
