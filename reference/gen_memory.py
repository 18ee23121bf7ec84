"""Golden fixture for crates/ssvp-memory (training-free scoring: kNN, bank, coreset, MuSc).

Run by hand (never by CI); needs only numpy and safetensors (no torch):
    python3 -m venv ~/venvs/ssvp-mem
    ~/venvs/ssvp-mem/bin/pip install numpy==2.4.6 safetensors==0.8.0
    ~/venvs/ssvp-mem/bin/python reference/gen_memory.py
Pinned: numpy 2.4.6, safetensors 0.8.0 (as in reference/requirements.txt).
Writes crates/ssvp-memory/tests/fixtures/memory.safetensors (read by
crates/ssvp-memory/tests/it/reference.rs), one file holding every case's inputs and expected outputs:

  knn.query [50,64], knn.keys [700,64]        unit rows (f32); query row 0 = key rows 100 and 650
  knn.similarity [50] f32, knn.index [50] i64  max inner product per query row, first argmax
  mutual_max.a [40,16], mutual_max.b [30,16]   unit rows; .rows [40] / .cols [30] max of a @ b.T
  top.values [250], top.q [2] f64, top.expected [2]     mean of the floor(q n) largest (max if 0)
  quantile.q [6] f64, quantile.expected [6]    np.quantile(top.values, q) (linear)
  bank.ref{r}.tap{t}, bank.test.tap{t}         3 references + 1 test image, taps [36,32] / [36,24]
  bank.ref0.tap0.unit [36,32]                  bank.ref0.tap0 with unit rows (x / max(|x|, 1e-12))
  bank.distances [36]                          mean over taps of 1 - max cos to the stacked refs
  bank.normal_scale [1]                        np.quantile(leave-one-reference-out distances, 0.99)
  bank.top.q [2] f64, bank.top.expected [2]    top-fraction means of bank.distances (q 0.01, 0.1)
  coreset.{a,b}.x, .index i64, .fraction f64, .seed/.projection_dim/.starts i64
  mutual.layer{k}.image{b} [30,16]             MuSc tokens, B=7, 2 layers, grid 5 x 6
  mutual.patch_scores [7,30], mutual.image_scores [7]   degrees [1,3,5], fraction 0.3
  mutual.f05.patch_scores [7,30]               the same at fraction 0.5 (mean of the 3 smallest)
  foreground.{a,b}.tokens [120,16], .mask [120] i64   PCA foreground of a 10x12 grid (b: sign
                                               flipped), threshold foreground.threshold [1]
  rscin.windows [3] i64                        [1, 2, 3]
  rscin.{a,b,c}.scores [7] f64, .globals [7,8] f32, .expected [7] f64
                                               a: mutual.image_scores, globals 2 and 6 equal (tie);
                                               b: a zero global row (kept sum 0); c: equal scores

Float arrays are float32 unless marked f64; indices are int64. Every expected value is computed
in float64 from the stored float32 inputs and rounded once, from the definitions in the crate's
docs (an independent numpy implementation, not a translation of the Rust code). The coreset's
random projection and starts come from SplitMix64, implemented here from its definition.
The script checks that no case sits on a near-tie (other than the planted ties), so that
float32 rounding in the Rust matmuls cannot change an index.
"""

import math
import os

import numpy as np
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "ssvp-memory", "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)

T = {}  # name -> numpy array, written at the end


def put(name, a, dtype=np.float32):
    T[name] = np.ascontiguousarray(np.asarray(a, dtype=dtype))


def unit_rows(x):
    """float32 rows divided by max(|row|, 1e-12), the norm taken in float64."""
    x = np.asarray(x, dtype=np.float32)
    n = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (x.astype(np.float64) / np.maximum(n, 1e-12)).astype(np.float32)


def rel_gap(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


# ---------------------------------------------------------------------------------------------
# kNN
# ---------------------------------------------------------------------------------------------
def knn_case():
    rng = np.random.default_rng(1001)
    keys = rng.standard_normal((700, 64)).astype(np.float32)
    query = rng.standard_normal((50, 64)).astype(np.float32)
    keys = unit_rows(keys)
    query = unit_rows(query)
    keys[650] = keys[100]  # a tie: the earliest key must win
    query[0] = keys[100]
    s = query.astype(np.float64) @ keys.astype(np.float64).T
    index = np.argmax(s, axis=1)  # first among equal maxima
    sim = s[np.arange(len(s)), index]
    assert index[0] == 100 and s[0, 650] == s[0, 100]
    for r in range(len(s)):
        row = np.sort(s[r])[::-1]
        second = row[2] if r == 0 else row[1]
        assert row[0] - second > 1e-4, f"knn row {r} is a near-tie"
    put("knn.query", query)
    put("knn.keys", keys)
    put("knn.similarity", sim)
    put("knn.index", index, np.int64)

    a = unit_rows(rng.standard_normal((40, 16)))
    b = unit_rows(rng.standard_normal((30, 16)))
    ab = a.astype(np.float64) @ b.astype(np.float64).T
    put("mutual_max.a", a)
    put("mutual_max.b", b)
    put("mutual_max.rows", ab.max(axis=1))
    put("mutual_max.cols", ab.max(axis=0))


# ---------------------------------------------------------------------------------------------
# Image scores
# ---------------------------------------------------------------------------------------------
def top_fraction_mean(values, q):
    v = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    k = math.floor(q * len(v))
    if k == 0:
        return v[0]
    return v[:k].sum() / k


def quantile(values, q):
    return np.quantile(np.asarray(values, dtype=np.float64), q)  # method="linear"


def score_cases():
    rng = np.random.default_rng(1002)
    values = (rng.standard_normal(250) * 0.2 + 0.5).astype(np.float32)
    qs = [0.01, 0.1]  # floor(2.5) = 2 and 25 values
    put("top.values", values)
    put("top.q", qs, np.float64)
    put("top.expected", [top_fraction_mean(values, q) for q in qs])
    qq = [0.0, 0.25, 0.5, 0.9, 0.99, 1.0]
    put("quantile.q", qq, np.float64)
    put("quantile.expected", [quantile(values, q) for q in qq])


# ---------------------------------------------------------------------------------------------
# Bank (AnomalyDINO few-shot)
# ---------------------------------------------------------------------------------------------
def nn_cos_distance(query, keys):
    """1 - max cosine similarity of each query row to any key row (float64)."""
    q = query.astype(np.float64)
    k = keys.astype(np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-12)
    s = q @ k.T
    srt = np.sort(s, axis=1)
    assert (srt[:, -1] - srt[:, -2] > 1e-5).all(), "bank near-tie"
    return 1.0 - s.max(axis=1)


def bank_distance(image, refs):
    taps = len(image)
    return sum(nn_cos_distance(image[t], np.concatenate([r[t] for r in refs]))
               for t in range(taps)) / taps


def bank_case():
    rng = np.random.default_rng(1003)
    dims = [32, 24]
    refs = [[rng.standard_normal((36, d)).astype(np.float32) for d in dims] for _ in range(3)]
    test = [rng.standard_normal((36, d)).astype(np.float32) for d in dims]
    for r, image in enumerate(refs):
        for t, x in enumerate(image):
            put(f"bank.ref{r}.tap{t}", x)
    for t, x in enumerate(test):
        put(f"bank.test.tap{t}", x)
    put("bank.ref0.tap0.unit", unit_rows(refs[0][0]))  # what l2_normalize_rows must give
    dist = bank_distance(test, refs)
    loo = np.concatenate([bank_distance(refs[r], [o for i, o in enumerate(refs) if i != r])
                          for r in range(len(refs))])
    put("bank.distances", dist)
    put("bank.normal_scale", [quantile(loo, 0.99)])
    # Image scores of the stored (float32) distances: k = floor(0.36) = 0 (max), floor(3.6) = 3.
    d32 = dist.astype(np.float32)
    put("bank.top.q", [0.01, 0.1], np.float64)
    put("bank.top.expected", [top_fraction_mean(d32, 0.01), top_fraction_mean(d32, 0.1)])


# ---------------------------------------------------------------------------------------------
# Coreset (PatchCore approximate greedy, SplitMix64-seeded)
# ---------------------------------------------------------------------------------------------
MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def unit(self):
        return (self.next() >> 11) / float(1 << 53)


# The authors' C reference (splitmix64.c), seed 1234567: the first two outputs.
_g = SplitMix64(1234567)
assert (_g.next(), _g.next()) == (6457827717110365317, 3203168211198807973)


def coreset_draws(m, d, projection_dim, starts, seed):
    g = SplitMix64(seed)
    w = None
    if d > projection_dim:
        bound = 1.0 / math.sqrt(d)
        u = np.array([g.unit() for _ in range(projection_dim * d)], dtype=np.float64)
        w = ((2.0 * u - 1.0) * bound).astype(np.float32).reshape(projection_dim, d)
        # Dividing by sqrt(D) instead of multiplying by the bound rounds to the same float32.
        assert (((2.0 * u - 1.0) / math.sqrt(d)).astype(np.float32).reshape(w.shape) == w).all()
    chosen = []
    while len(chosen) < min(starts, m):
        i = g.next() % m
        if i not in chosen:
            chosen.append(i)
    return w, chosen


def greedy(points, starts, target, wide):
    """Greedy k-center on `points`; distances in float64 (wide) or float32. Returns the indices
    and the smallest relative gap between the winner and the runner-up over all steps."""
    ft = np.float64 if wide else np.float32
    p = points.astype(ft)

    def dist_to(j):
        return np.sqrt(((p - p[j]) ** 2).sum(axis=1, dtype=ft)).astype(ft)

    score = (np.mean([dist_to(s).astype(np.float64) for s in starts], axis=0)).astype(ft)
    out, margin = [], np.inf
    for _ in range(target):
        sel = int(np.argmax(score))
        top2 = np.sort(score)[-2:]
        margin = min(margin, rel_gap(top2[1], top2[0]))
        out.append(sel)
        score = np.minimum(score, dist_to(sel))
    return out, margin


def coreset(x, fraction, projection_dim, starts, seed):
    m, d = x.shape
    target = min(max(math.floor(fraction * m), 1), m)
    if target == m:
        return list(range(m)), np.inf
    w, chosen = coreset_draws(m, d, projection_dim, starts, seed)
    if w is None:
        pts = x.astype(np.float64)
    else:
        pts = x.astype(np.float64) @ w.astype(np.float64).T
    # The float32 pipeline of the definition, and a float64 one: they must agree.
    idx32, margin = greedy(pts.astype(np.float32), chosen, target, wide=False)
    idx64, _ = greedy(pts, chosen, target, wide=True)
    assert idx32 == idx64, "coreset selection depends on rounding"
    assert len(set(idx32)) == target
    return idx32, margin


def coreset_cases():
    rng = np.random.default_rng(1004)
    for name, (m, d, f, seed) in {"a": (400, 200, 0.1, 7), "b": (300, 64, 0.05, 3)}.items():
        # Normal rows at log-normal scales: in 200 dimensions rows of one scale are all at
        # nearly the same distance from each other, and the greedy winners would be near-ties.
        x = (rng.standard_normal((m, d)) * np.exp(rng.standard_normal((m, 1)))).astype(np.float32)
        idx, margin = coreset(x, f, 128, 10, seed)
        assert margin > 2e-4, f"coreset {name}: near-tie {margin:e}"
        print(f"coreset {name}: {len(idx)} of {m}, smallest winner margin {margin:.2e}")
        put(f"coreset.{name}.x", x)
        put(f"coreset.{name}.index", idx, np.int64)
        put(f"coreset.{name}.fraction", [f], np.float64)
        put(f"coreset.{name}.seed", [seed], np.int64)
        put(f"coreset.{name}.projection_dim", [128], np.int64)
        put(f"coreset.{name}.starts", [10], np.int64)


# ---------------------------------------------------------------------------------------------
# MuSc mutual scoring and RsCIN
# ---------------------------------------------------------------------------------------------
B, LAYERS, H, W, C = 7, 2, 5, 6, 16
DEGREES = [1, 3, 5]


def lnamd(tokens, r):
    x = tokens.astype(np.float64)  # [L, C], row-major on the H x W grid
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-5)  # biased variance over all L*C values
    if r > 1:
        half = r // 2
        g = np.zeros((H + 2 * half, W + 2 * half, C))
        g[half:half + H, half:half + W] = x.reshape(H, W, C)
        acc = np.zeros((H, W, C))
        for dy in range(r):
            for dx in range(r):
                acc += g[dy:dy + H, dx:dx + W]
        x = (acc / (r * r)).reshape(H * W, C)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


MSM_MIN = [np.inf]  # the smallest distance that enters a score (float32 cancellation check)


def msm(z, fraction):
    b = len(z)
    k = math.floor(fraction * (b - 1))
    scores = np.zeros((b, H * W))
    for i in range(b):
        d = []
        for j in range(b):
            if j == i:
                continue
            cos = z[i] @ z[j].T
            d.append(np.sqrt(np.maximum(0.0, 2.0 - 2.0 * cos)).min(axis=1))
        MSM_MIN[0] = min(MSM_MIN[0], np.min(d))
        d = np.sort(np.stack(d, axis=1), axis=1)  # [L, B-1]
        scores[i] = d[:, :k].mean(axis=1)
    return scores


def mutual(tokens, fraction):
    """tokens[k][b]: [L, C]. Mean over layers per degree, then mean over degrees."""
    per_r = [np.mean([msm([lnamd(t, r) for t in layer], fraction) for layer in tokens], axis=0)
             for r in DEGREES]
    return np.mean(per_r, axis=0)


def rscin(scores, globals_, windows):
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(), s.max()
    st = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
    g = globals_.astype(np.float64)
    w = g @ g.T
    out = np.zeros(len(s))
    for k in windows:
        for i in range(len(s)):
            order = np.argsort(-w[i], kind="stable")  # descending, lower index first on ties
            kept = order[:k]
            total = w[i, kept].sum()
            out[i] += (w[i, kept] * st[kept]).sum() / total if total > 0 else st[i]
    return out / len(windows)


def check_rscin_margins(globals_, planted):
    """No near-tie between distinct columns of W (the planted equal columns excepted)."""
    g = globals_.astype(np.float64)
    w = g @ g.T
    for i in range(len(w)):
        for a in range(len(w)):
            for b in range(a + 1, len(w)):
                if {a, b} == planted or (w[i, a] == 0 and w[i, b] == 0):
                    continue
                assert rel_gap(w[i, a], w[i, b]) > 1e-4, f"rscin near-tie row {i}: {a} {b}"


def mutual_cases():
    rng = np.random.default_rng(1005)
    # Normal patches: one of 4 prototypes per layer plus noise, so that a normal patch has close
    # matches in the other images (distances stay >= ~0.3, far from float32 cancellation).
    tokens = []
    for _ in range(LAYERS):
        protos = rng.standard_normal((4, C))
        tokens.append([(protos[rng.integers(0, 4, H * W)] + 0.5 * rng.standard_normal((H * W, C)))
                       .astype(np.float32) for _ in range(B)])
    # Planted defects: a strong offset on a few patches (in both layers, as a real defect).
    for b, p, scale in [(2, 7, 4.0), (5, 20, 3.0), (5, 21, 3.0), (0, 29, 5.0)]:
        direction = rng.standard_normal(C).astype(np.float32)
        for k in range(LAYERS):
            tokens[k][b][p] += scale * direction
    for k in range(LAYERS):
        for b in range(B):
            put(f"mutual.layer{k}.image{b}", tokens[k][b])
    patch = mutual(tokens, 0.3)
    put("mutual.patch_scores", patch)
    image = patch.astype(np.float32).max(axis=1)
    put("mutual.image_scores", image)
    put("mutual.f05.patch_scores", mutual(tokens, 0.5))
    print("mutual image scores:", np.round(image, 4), "argmax patches:", patch.argmax(axis=1))
    print(f"mutual: smallest patch-to-image distance {MSM_MIN[0]:.3f}")
    assert MSM_MIN[0] > 0.1

    windows = [1, 2, 3]
    put("rscin.windows", windows, np.int64)
    # a: the image scores above; image 6's global feature repeats image 2's (a planted tie).
    ga = rng.standard_normal((B, 8)).astype(np.float32)
    ga[6] = ga[2]
    check_rscin_margins(ga, {2, 6})
    sa = image.astype(np.float64)
    # b: a zero global feature (image 4): its kept weights sum to 0 and it keeps its own score.
    gb = rng.standard_normal((B, 8)).astype(np.float32)
    gb[4] = 0
    check_rscin_margins(gb, set())
    sb = rng.standard_normal(B)
    # c: equal scores scale to 0 everywhere.
    gc = rng.standard_normal((B, 8)).astype(np.float32)
    sc = np.full(B, 0.25)
    for name, s, g in [("a", sa, ga), ("b", sb, gb), ("c", sc, gc)]:
        put(f"rscin.{name}.scores", s, np.float64)
        put(f"rscin.{name}.globals", g)
        put(f"rscin.{name}.expected", rscin(s, g, windows), np.float64)


# ---------------------------------------------------------------------------------------------
# AnomalyDINO's PCA foreground mask (2-D morphology, outside cells ignored)
# ---------------------------------------------------------------------------------------------
def morph(mask, grow):
    """3x3 dilation (grow) or erosion on a 2-D bool grid; cells outside the grid are ignored."""
    h, w = mask.shape
    pad = np.pad(mask, 1, constant_values=not grow)
    stack = np.stack([pad[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)])
    return stack.any(axis=0) if grow else stack.all(axis=0)


def foreground(tokens, h, w, threshold, coverage=0.35):
    x = tokens.astype(np.float64)
    xc = x - x.mean(axis=0)
    v = np.linalg.svd(xc, full_matrices=False)[2][0]
    if v[np.argmax(np.abs(v))] < 0:  # the largest-magnitude coordinate positive
        v = -v
    p = xc @ v
    fg = (p > threshold).reshape(h, w)
    r0, r1, c0, c1 = int(h * 0.2), int(h * 0.8), int(w * 0.2), int(w * 0.8)
    if fg[r0:r1, c0:c1].sum() <= coverage * (r1 - r0) * (c1 - c0):
        fg = (-p > threshold).reshape(h, w)
    return morph(morph(morph(fg, True), True), False)


def foreground_cases():
    rng = np.random.default_rng(31)
    h, w, d = 10, 12, 16
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    for name, sign in [("a", 1.0), ("b", -1.0)]:
        yy, xx = np.mgrid[0:h, 0:w]
        obj = ((yy - 4.5) / 3.2) ** 2 + ((xx - 6.0) / 3.6) ** 2 < 1.0
        obj[4, 6] = False  # a hole the closing fills
        base = np.where(obj, 25.0, -12.0)[..., None] * direction * sign
        tokens = (base + rng.normal(scale=0.8, size=(h, w, d))).reshape(h * w, d)
        mask = foreground(tokens, h, w, threshold=5.0)
        put(f"foreground.{name}.tokens", tokens)
        put(f"foreground.{name}.mask", mask.reshape(-1).astype(np.int64), np.int64)
    put("foreground.grid", [h, w], np.int64)
    put("foreground.threshold", [5.0])


knn_case()
score_cases()
bank_case()
coreset_cases()
mutual_cases()
foreground_cases()
path = os.path.join(OUT, "memory.safetensors")
# One metadata entry only: safetensors writes the metadata map in hash order, and a second key
# would make the file's bytes differ from run to run.
about = (f"reference/gen_memory.py (numpy {np.__version__}); bank: 3 references, taps [36,32] and "
         "[36,24], grid 6x6, rotations 1; mutual: B=7, layers=2, grid 5x6, C=16, degrees "
         "[1,3,5], fraction 0.3 (f05: 0.5)")
save_file(T, path, metadata={"about": about})
print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(T)} tensors)")
