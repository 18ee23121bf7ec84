#!/usr/bin/env bash
# Builds the GPU check's binaries on a machine WITHOUT a GPU or a CUDA toolkit: nvcc and the
# CUDA 13.0 libraries come from NVIDIA's PyPI wheels (deploy/gpu/cuda-from-pip.sh), the build
# goes to target/cuda, and the binaries (ssvp and the integration tests of ssvp-backbones and
# ssvp-model, which hold the parity tests of both towers and the head)
# are stripped and packed into .gpu/bins.tar.xz (about 30 MB) for deploy/gpu/check.sh.
#
#   bash deploy/gpu/build.sh            # about 30 minutes on 2 cores, most of it candle's kernels
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(bash deploy/gpu/cuda-from-pip.sh)"
export CARGO_TARGET_DIR="$PWD/target/cuda"
# One cargo invocation for the binary and the tests: two would resolve features differently and
# build candle's CUDA kernels (most of the time) twice.
artifacts=$(
  cargo test --release --features cuda -p ssvp-cli -p ssvp-backbones -p ssvp-model --no-run \
    --message-format=json | python3 -c '
import json, sys
# Each crate has one integration-test binary, `it`: named here by its crate.
wanted = {("ssvp-cli", "ssvp"): "ssvp", ("ssvp-backbones", "it"): "backbones_it",
          ("ssvp-model", "it"): "model_it"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    package = m["manifest_path"].split("/")[-2]  # crates/<package>/Cargo.toml
    name = wanted.get((package, m["target"]["name"]))
    if name:
        print(name, m["executable"])
'
)
rm -rf .gpu/bin && mkdir -p .gpu/bin
while read -r name exe; do cp "$exe" ".gpu/bin/$name"; done <<<"$artifacts"
strip .gpu/bin/*
# Where the tests look for their fixtures (CARGO_MANIFEST_DIR, compiled in).
echo "$PWD" >.gpu/bin/build-root
tar -C .gpu -cJf .gpu/bins.tar.xz bin
ls -la .gpu/bin .gpu/bins.tar.xz
