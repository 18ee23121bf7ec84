#!/usr/bin/env bash
# Runs the README quick start with one ssvp binary into $2 and prints a digest per output file.
# Timings (wall-clock milliseconds) are dropped from JSON/JSONL and detection CSVs before hashing,
# and safetensors headers are hashed with sorted keys (their metadata map has no fixed order):
# neither is an output. Compare two binaries with the same $2 (paths are recorded in the outputs):
#   reference/quickstart_digests.sh OLD /tmp/qs > old.txt; reference/quickstart_digests.sh NEW /tmp/qs > new.txt
set -euo pipefail
SSVP=$1; OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"
cd "$(dirname "$0")/.."
$SSVP synth --out $OUT/synth --per-category 8 --size 128 >/dev/null 2>&1
$SSVP train --backbones tiny --root $OUT/synth --categories woven,grain,disc,board --epochs 2 --mask-size 128 --out $OUT/run >/dev/null 2>&1
$SSVP eval --checkpoint $OUT/run --root $OUT/synth --categories speckle,screw --out $OUT/results.json --save-maps $OUT/maps >/dev/null 2>&1
$SSVP metrics --scores $OUT/maps/scores.csv --maps $OUT/maps --masks $OUT/synth > $OUT/metrics.txt 2>/dev/null
$SSVP calibrate --checkpoint $OUT/run --class-name woven --normal $OUT/synth/woven/train/good $OUT/synth/woven/test/good --target-fpr 0.1 --holdout 0 --out $OUT/calib.json >/dev/null 2>&1
$SSVP detect --checkpoint $OUT/run --class-name woven --calibration $OUT/calib.json --out $OUT/inspect $OUT/synth/woven/test >/dev/null 2>&1 || true
$SSVP detect --backbones tiny --normal $OUT/synth/disc/train/good --shots 4 --out $OUT/few-shot $OUT/synth/disc/test >/dev/null 2>&1 || true
$SSVP detect --backbones tiny --mutual --out $OUT/mutual $OUT/synth/disc/test >/dev/null 2>&1 || true
$SSVP eval --mode references --backbones tiny --root $OUT/synth --shots 1,2,4 --draws 3 --out $OUT/refs.json > $OUT/refs.txt 2>/dev/null
$SSVP bank build --backbones tiny --normal $OUT/synth/disc/train/good --out $OUT/disc.bank >/dev/null 2>&1
$SSVP calibrate --backbones tiny --bank $OUT/disc.bank --normal $OUT/synth/disc/test/good --target-fpr 0.2 --holdout 0 --out $OUT/bank-calib.json >/dev/null 2>&1
$SSVP embed --backbone clip --weights examples/tiny-clip --image examples/images/washer_missing.png --size 32 --layers 1,2,3 --out $OUT/feats.safetensors >/dev/null 2>&1
cd $OUT
find . -type f ! -path './synth/*' | sort | while read -r f; do
  case "$f" in
    *.json|*.jsonl) python3 -c '
import json,sys,hashlib
def strip(v):
    if isinstance(v,dict): return {k:strip(x) for k,x in v.items() if k not in ("timings","elapsed_s","seconds","created","started","finished","duration_s","wall_s","date")}
    if isinstance(v,list): return [strip(x) for x in v]
    return v
t=open(sys.argv[1]).read()
try:
    objs=[json.loads(t)]
except Exception:
    objs=[json.loads(l) for l in t.splitlines() if l.strip()]
print(hashlib.sha256(json.dumps([strip(o) for o in objs],sort_keys=True).encode()).hexdigest()[:16], sys.argv[1], "(json, timings dropped)")' "$f";;
    *.html|*.log|*.txt) echo "-- $f (text, not compared)";;
    */detections.csv) python3 -c '
import csv,sys,hashlib
rows=list(csv.reader(open(sys.argv[1])))
drop=rows[0].index("total_ms") if "total_ms" in rows[0] else None
kept=[[c for i,c in enumerate(r) if i!=drop] for r in rows]
print(hashlib.sha256(repr(kept).encode()).hexdigest()[:16], sys.argv[1], "(csv, total_ms dropped)")' "$f";;
    *.safetensors|*.bank) python3 -c '
import json,sys,hashlib,struct
b=open(sys.argv[1],"rb").read(); n=struct.unpack("<Q",b[:8])[0]
h=json.loads(b[8:8+n])
print(hashlib.sha256(json.dumps(h,sort_keys=True).encode()+b[8+n:]).hexdigest()[:16], sys.argv[1], "(safetensors, header keys sorted)")' "$f";;
    *) echo "$(sha256sum "$f" | cut -c1-16) $f";;
  esac
done
