#!/usr/bin/env bash
# The GPU check, in one run on a machine with an NVIDIA GPU (driver for CUDA 13, Python with
# PyTorch and NVIDIA's CUDA 13 wheels), from the repository root, after deploy/gpu/build.sh
# packed .gpu/bins.tar.xz on a build machine. Writes everything into $OUT (default
# /tmp/ssvp-gpu): the parity tests of both towers and the head against the PyTorch references,
# a tiny train -> eval -> detect pipeline on the GPU against the same on the CPU, `ssvp bench` at
# the paper's sizes, and the PyTorch counterpart (reference/bench_ssvp.py eval) on the same GPU.
#
#   OUT=/tmp/ssvp-gpu bash deploy/gpu/check.sh
set -uo pipefail
OUT=${OUT:-/tmp/ssvp-gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/check.log") 2>&1
step() { echo "== $(date +%T) $*"; }
run() { # run NAME CMD...: its output in $OUT/NAME.log, its status in the summary
  local name=$1; shift
  timeout 240 "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/$name.log"
}

tar -C .gpu -xJf .gpu/bins.tar.xz
BIN=$PWD/.gpu/bin
# cuBLAS, cuRAND and NVRTC of CUDA 13 from the local Python's NVIDIA wheels; libcuda from the
# driver.
NVLIBS=$(python3 -c '
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
export LD_LIBRARY_PATH="$NVLIBS:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
# The tests read their fixtures under the build machine's checkout path (compiled in).
root=$(cat "$BIN/build-root")
if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"; fi

step "parity against the PyTorch references, on the GPU (same tolerances as on the CPU)"
for t in backbones_it:clip_parity backbones_it:dinov3_parity model_it:head_parity; do
  bin=${t%%:*} filter=${t#*:}
  [ -x "$BIN/$bin" ] || { echo "$bin: not built, skipped"; continue; }
  SSVP_TEST_DEVICE=cuda run "$filter" "$BIN/$bin" "$filter::" --test-threads 1 --nocapture
done

step "the tiny pipeline on the GPU and on the CPU"
W=$OUT/work
run synth "$BIN/ssvp" synth --out "$W/synth" --per-category 8 --size 128
run train-cuda "$BIN/ssvp" train --device cuda --backbones tiny --root "$W/synth" \
  --categories woven,grain,disc,board --epochs 2 --mask-size 128 --no-cache --out "$W/run"
for d in cpu cuda; do
  run "eval-$d" "$BIN/ssvp" eval --device "$d" --checkpoint "$W/run" --root "$W/synth" \
    --categories speckle,screw --no-cache --out "$W/eval-$d.json"
  run "detect-head-$d" "$BIN/ssvp" detect --device "$d" --checkpoint "$W/run" --class-name disc \
    --no-overlays --out "$W/head-$d" "$W/synth/disc/test"
  run "detect-refs-$d" "$BIN/ssvp" detect --device "$d" --backbones tiny \
    --normal "$W/synth/disc/train/good" --shots 4 --no-overlays --out "$W/refs-$d" "$W/synth/disc/test"
  run "detect-mutual-$d" "$BIN/ssvp" detect --device "$d" --backbones tiny --mutual \
    --no-overlays --out "$W/mutual-$d" "$W/synth/disc/test"
done
python3 - "$W" <<'PY' | tee "$OUT/cpu-vs-cuda.txt"
import json, sys
w = sys.argv[1]
def scores(path):
    rows = [json.loads(line) for line in open(path)]
    return {r["path"]: r["detection"]["score"] for r in rows if r.get("status") == "ok"}
for mode in ("head", "refs", "mutual"):
    try:
        a, b = scores(f"{w}/{mode}-cpu/detections.jsonl"), scores(f"{w}/{mode}-cuda/detections.jsonl")
    except OSError as e:
        print(f"{mode}: missing output ({e})"); continue
    scale = max(abs(v) for v in a.values()) or 1.0
    worst = max(abs(a[k] - b[k]) for k in a) / scale
    print(f"detect {mode}: {len(a)} images, max |score cpu - score cuda| / max|score| = {worst:.2e}")
def leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        yield path, float(x)
try:
    ea = dict(leaves(json.load(open(f"{w}/eval-cpu.json"))["categories"]))
    eb = dict(leaves(json.load(open(f"{w}/eval-cuda.json"))["categories"]))
    diffs = sorted(((abs(ea[k] - eb[k]), k) for k in ea if k in eb), reverse=True)
    print(f"eval: {len(diffs)} metrics and counts; largest |cpu - cuda|: {diffs[:3]}")
    for k in sorted(ea):
        if k.endswith(("image_auroc", "pixel_auroc", "pixel_aupro")):
            print(f"  {k}: cpu {ea[k]:.4f} cuda {eb.get(k, float('nan')):.4f}")
except (OSError, KeyError) as e:
    print(f"eval: missing output ({e})")
PY

step "ssvp bench at the paper's sizes on the GPU"
run bench-head-b8 "$BIN/ssvp" bench --device cuda --batch-size 8 --images 16 --json
run bench-head-b1 "$BIN/ssvp" bench --device cuda --batch-size 1 --images 8 --json
run bench-refs-b8 "$BIN/ssvp" bench --device cuda --references 4 --batch-size 8 --images 16 --json
cp "$OUT"/bench-*.log "$OUT/bench.json.txt" 2>/dev/null

step "PyTorch on the same GPU (reference/bench_ssvp.py eval)"
SSVP_BENCH_DEVICE=cuda run torch-eval-b8 python3 reference/bench_ssvp.py eval 4 8
SSVP_BENCH_DEVICE=cuda run torch-eval-b1 python3 reference/bench_ssvp.py eval 4 1
step done
cat "$OUT/summary.txt"
