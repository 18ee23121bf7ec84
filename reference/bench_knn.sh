#!/usr/bin/env bash
# kNN speed of ssvp-memory against faiss: builds crates/ssvp-memory/examples/knn_bench.rs in
# release, then runs reference/bench_knn.py (faiss) and the Rust example one after the other
# (never concurrently: both use the machine's cores), and prints Rust / faiss time ratios.
#
#   reference/bench_knn.sh [RUNS=5]     (PYTHON=... to use another venv than ~/venvs/ssvp-mem)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
PYTHON="${PYTHON:-$HOME/venvs/ssvp-mem/bin/python}"

cargo build --release -p ssvp-memory --example knn_bench
py_out="$("$PYTHON" reference/bench_knn.py "$RUNS")"
echo "$py_out"
rs_out="$(target/release/examples/knn_bench "$RUNS")"
echo "$rs_out"

ms() { # the ms of the first line matching $2 in $1
  grep -F -- "$2" <<<"$1" | head -n1 | sed -E 's/.*: ([0-9.]+) ms per query image.*/\1/'
}
ip="$(ms "$py_out" "faiss IndexFlatIP")"
l2="$(ms "$py_out" "faiss IndexFlatL2")"
while read -r line; do
  label="${line%%:*}"
  t="$(ms "$line" "$label")"
  awk -v l="$label" -v t="$t" -v ip="$ip" -v l2="$l2" \
    'BEGIN { printf "ratio %s / faiss: %.2f x IndexFlatIP, %.2f x IndexFlatL2\n",
             l, t / ip, t / l2 }'
done < <(grep -F "ms per query image" <<<"$rs_out")
