#!/usr/bin/env bash
# ssvp and PyTorch back to back on this machine, per evaluated image at the paper's sizes
# (random weights, f32, 2 threads on both sides). Run by hand, never by CI:
#
#   cargo build --release && bash reference/bench_compare.sh [IMAGES=2] [PYTHON=~/venvs/ssvp-ref/bin/python]
#
# 1. Head (SSVP): both towers whole (the head reads CLIP's image embedding and DINOv3's final
#    CLS, both after block 24), the head, upsampling and smoothing. ssvp: `ssvp bench` (the
#    Detector on a decoded 1600x1200 PNG); PyTorch: reference/bench_ssvp.py eval (random tensors
#    already at 518 and 592 px, so decode and resize are left out of its side, and out of the
#    `model` ratio below).
# 2. References (AnomalyDINO): DINOv3 through block 12 only (its deepest tap); PyTorch runs the
#    same 12 blocks (reference/bench_dinov3_vitl.py with BLOCKS=12).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${1:-2}
PY=${2:-$HOME/venvs/ssvp-ref/bin/python}
SSVP=${SSVP:-target/release/ssvp}
export RAYON_NUM_THREADS=2
tmp=${KEEP:-$(mktemp -d)}
echo "raw results in $tmp"
"$SSVP" bench --setting paper --batch-size 1 --images "$IMAGES" --json >"$tmp/head.json"
"$PY" reference/bench_ssvp.py eval "$IMAGES" 2>/dev/null | tee "$tmp/torch-head.txt"
"$SSVP" bench --setting paper --references 2 --batch-size 1 --images "$IMAGES" --json >"$tmp/refs.json"
"$PY" reference/bench_dinov3_vitl.py 592 "$IMAGES" sdpa 12 | tail -n 1 | tee "$tmp/torch-dino12.txt"
python3 - "$tmp" <<'PY'
import json, re, sys
d = sys.argv[1]
head, refs = (json.load(open(f"{d}/{n}.json")) for n in ("head", "refs"))
stage = lambda r, s: next(x for x in r["stages"] if x["stage"] == s)
torch_head = open(f"{d}/torch-head.txt").read()
t_total, t_clip, t_dino, t_rest = map(float, re.search(
    r"median ([\d.]+) s over \d+ \(CLIP ([\d.]+), DINO ([\d.]+), head \+ post ([\d.]+)\)", torch_head).groups())
t_dino12 = float(re.search(r"median ([\d.]+) s/image", open(f"{d}/torch-dino12.txt").read()).group(1))
ms = lambda r, s: stage(r, s)["ms"] / 1e3
model = sum(ms(head, s) for s in ("clip", "dino", "head", "postprocess"))
peak = head["fma_peak"]["gflops"] if head.get("fma_peak") else float("nan")
print(f"FMA peak {peak:.0f} GFLOP/s on {head['threads']} threads")
print(f"head mode   ssvp: wall {head['ms_per_image'] / 1e3:.2f} s/image (model {model:.2f}: CLIP {ms(head, 'clip'):.2f} "
      f"at {stage(head, 'clip')['gflops']:.0f} GFLOP/s, DINO {ms(head, 'dino'):.2f} at {stage(head, 'dino')['gflops']:.0f}, "
      f"head + post {ms(head, 'head') + ms(head, 'postprocess'):.2f})")
print(f"            torch: {t_total:.2f} s/image (CLIP {t_clip:.2f}, DINO {t_dino:.2f}, head + post {t_rest:.2f})")
print(f"            torch / ssvp: model {t_total / model:.2f}x, CLIP {t_clip / ms(head, 'clip'):.2f}x, "
      f"DINO {t_dino / ms(head, 'dino'):.2f}x")
print(f"references  ssvp DINO (12 blocks) {ms(refs, 'dino'):.2f} s at {stage(refs, 'dino')['gflops']:.0f} GFLOP/s; "
      f"torch 12 blocks {t_dino12:.2f} s: {t_dino12 / ms(refs, 'dino'):.2f}x; "
      f"whole-tower torch DINO / ssvp's early stop: {t_dino / ms(refs, 'dino'):.2f}x")
print(f"peak memory ssvp {head['peak_rss_mib']:.0f} MiB (head mode)")
PY
