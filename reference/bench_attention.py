"""PyTorch timing reference for crates/ssvp-backbones/examples/attention_bench.rs; writes nothing.

    /root/venvs/ssvp-ref/bin/python reference/bench_attention.py [RUNS=5] [BATCH=2]

torch.nn.functional.scaled_dot_product_attention on [B, 8, 1369, 96] f32 q, k, v (one ATF
direction of the SSVP head at 37 x 37 tokens): forward alone (no grad) and forward + backward of
sum(w * out). Median of RUNS after one warm-up, torch.set_num_threads(2).
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
b = int(sys.argv[2]) if len(sys.argv) > 2 else 2
shape = (b, 8, 1369, 96)
q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
w = torch.randn(shape)
fwd, both = [], []
for _ in range(runs + 1):
    t0 = time.perf_counter()
    with torch.no_grad():
        F.scaled_dot_product_attention(q, k, v)
    fwd.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    (F.scaled_dot_product_attention(q, k, v) * w).sum().backward()
    both.append(time.perf_counter() - t0)
    q.grad = k.grad = v.grad = None
print(
    f"torch sdpa [{b}, 8, 1369, 96]: forward {statistics.median(fwd[1:]):.3f} s, "
    f"forward + backward {statistics.median(both[1:]):.3f} s (median of {runs})"
)
