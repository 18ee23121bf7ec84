"""faiss timing reference for crates/ssvp-memory/examples/knn_bench.rs; writes nothing.

    ~/venvs/ssvp-mem/bin/python reference/bench_knn.py [RUNS=5]
    (venv: numpy==2.4.6 faiss-cpu==1.15.1; reference/bench_knn.sh runs both sides and the ratio)

Exact k = 1 search of one query image against a few-shot bank at AnomalyDINO's shapes: N = 1369
query vectors (37 x 37 patches) against M = 21904 keys (16 reference images of 37 x 37), D = 1024,
float32 unit vectors; faiss.IndexFlatIP (inner product, what ssvp_memory::knn::nearest computes)
and IndexFlatL2. faiss.omp_set_num_threads(2); one warm-up, then the median of RUNS.
Prints per index: ms per query image and GFLOP/s counting 2 N M D flops.
"""

import statistics
import sys
import time

import faiss
import numpy as np

N, M, D = 1369, 16 * 37 * 37, 1024
FLOPS = 2.0 * N * M * D

faiss.omp_set_num_threads(2)
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
rng = np.random.default_rng(0)


def unit(n):
    x = rng.standard_normal((n, D), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


keys, query = unit(M), unit(N)
print(f"faiss {faiss.__version__}, numpy {np.__version__}, N={N} M={M} D={D}, 2 threads, "
      f"median of {runs}")
for name, index in [("faiss IndexFlatIP k=1", faiss.IndexFlatIP(D)),
                    ("faiss IndexFlatL2 k=1", faiss.IndexFlatL2(D))]:
    index.add(keys)
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        index.search(query, 1)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times[1:])
    print(f"{name}: {s * 1e3:.1f} ms per query image, {FLOPS / s / 1e9:.1f} GFLOP/s")
