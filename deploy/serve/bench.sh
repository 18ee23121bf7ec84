#!/usr/bin/env bash
# `ssvp serve` under load against `ssvp detect` on the same images, one machine, one script:
# the tiny seeded backbones, good references of a synthetic part, 64 concurrent clients (hey,
# Debian's `hey` package). Prints detect's images/s, hey's summary (p50/p99, requests/s), and
# the server's resident memory before and after.
#
#   cargo build --release -p ssvp-cli && deploy/serve/bench.sh [requests] [size]
set -euo pipefail
cd "$(dirname "$0")/../.."
ssvp=target/release/ssvp
requests=${1:-2048}  # hey sends requests / 64 per client: keep it a multiple of 64
size=${2:-256}
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

"$ssvp" synth --out "$work/data" --kinds disc --per-category 32 --size "$size" --seed 5 >/dev/null
refs="$work/data/disc/train/good"
test="$work/data/disc/test"
image=$(find "$test" -name '*.png' | sort | grep -v good | head -1)
common=(--backbones tiny --normal "$refs")

echo "== ssvp detect (batch of 4, the same images)"
"$ssvp" detect "${common[@]}" --no-maps --no-overlays --out "$work/detect" "$test" 2>&1 | tail -1

echo "== ssvp serve + hey -c 64 -n $requests (one ${size}px PNG)"
port=18123
"$ssvp" serve "${common[@]}" --port $port --drain-delay 0.5 --log-format json 2>"$work/serve.log" &
server=$!
until curl -fs "localhost:$port/readyz" >/dev/null 2>&1; do sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$server/status"; }
echo "RSS with the model loaded: $(rss)"
echo "-- one client (latency without queueing)"
hey -n 64 -c 1 -m POST -T image/png -D "$image" "http://127.0.0.1:$port/v1/detect" \
  | grep -E "Requests/sec|50% in|99% in|\[[0-9]{3}\]"
echo "-- 64 clients"
hey -n "$requests" -c 64 -m POST -T image/png -D "$image" "http://127.0.0.1:$port/v1/detect" \
  | grep -E "Requests/sec|Average|Slowest|Fastest|50% in|99% in|\[[0-9]{3}\]|Error"
echo "RSS after the run: $(rss)"
curl -fs "localhost:$port/metrics" | grep -E '^ssvp_(batch_size_(sum|count)|http_requests_total\{route="/v1/detect")'
kill -TERM $server
wait $server && echo "serve exited 0 on SIGTERM"
