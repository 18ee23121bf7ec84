"""Reference fixtures for ssvp-eval metrics and map post-processing.

Run by hand (never by CI):  /root/venvs/ssvp-ref/bin/python reference/gen_metrics.py
Writes crates/ssvp-eval/tests/fixtures/metrics/{image_cases.json, pixel_cases.json,
pixel_<case>_{maps,masks}.npy, postprocess.json, post_*.npy}.

References:
- image/pixel AUROC, AP: sklearn roc_auc_score / average_precision_score;
  F1-max: max finite 2PR/(P+R) over sklearn precision_recall_curve;
- exact AUPRO: an independent numpy implementation of anomalib's sort-based algorithm
  (8-connected regions via scipy.ndimage.label, per-pixel weights, tie groups, PRO interpolated
  at FPR 0.3, trapezoid / 0.3);
- cflow-style AUPRO: AnomalyCLIP's `cal_pro_score` formula (skimage label/regionprops,
  np.arange thresholds, sklearn auc);
- post-processing: torch F.interpolate bilinear (both align_corners), scipy gaussian_filter,
  PIL bilinear mask resize then /255 > 0.5.
"""

import json
import os

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "ssvp-eval", "tests", "fixtures", "metrics")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(20240611)


def sk_metrics(labels, scores):
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return None
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "ap": float(average_precision_score(labels, scores)),
        "f1_max": float(np.max(f1[np.isfinite(f1)])),
    }


# ---------------------------------------------------------------------------------------------
# Image-level cases
# ---------------------------------------------------------------------------------------------
def image_cases():
    cases = []

    def add(name, scores, labels):
        scores = [float(s) for s in scores]
        labels = [int(l) for l in labels]
        # Bit patterns as well: JSON float parsers need not round-trip the last bit.
        bits = [int(x) for x in np.asarray(scores, dtype=np.float64).view(np.uint64)]
        cases.append({"name": name, "scores": scores, "scores_bits": bits, "labels": labels,
                      "expected": sk_metrics(labels, np.asarray(scores))})

    n = 300
    labels = rng.random(n) < 0.6
    add("continuous", rng.normal(size=n) + 0.8 * labels, labels)
    add("ties_one_decimal", np.round(rng.random(n) * 0.6 + 0.4 * labels, 1), labels)
    # fp32 softmax saturating at exactly 1.0 for many images.
    logits = (rng.normal(size=n) * 4 + 6 * labels).astype(np.float32)
    prob = (1 / (1 + np.exp(-logits.astype(np.float32) * 4))).astype(np.float32)
    add("saturated_softmax_f32", prob.astype(np.float64), labels)
    add("uint8_quantised", np.floor(rng.random(n) * 8 + 3 * labels) / 10, labels)
    add("signed_zeros", [-0.0, 0.0, 0.0, -0.0, 1.0, -1.0, 0.0, 2.0], [0, 1, 0, 1, 1, 0, 1, 0])
    add("all_tied", [0.5] * 10, [0, 1] * 5)
    add("all_normal", rng.random(20), [0] * 20)
    add("all_anomalous", rng.random(20), [1] * 20)
    add("wide_range", np.concatenate([[1e-300, -1e300, 1e300, 5e-324]], axis=0), [0, 0, 1, 1])
    return cases


# ---------------------------------------------------------------------------------------------
# Pixel-level cases
# ---------------------------------------------------------------------------------------------
def label8(mask):
    lab, n = ndi.label(mask, structure=np.ones((3, 3), dtype=int))
    return lab, n


def exact_aupro(masks, maps, limit=0.3):
    """anomalib's sort-based exact AUPRO, written independently in numpy."""
    scores, is_bg, pro_w = [], [], []
    total_regions = 0
    per_image = []
    for mask, amap in zip(masks, maps):
        lab, n = label8(mask)
        per_image.append((lab, n, total_regions))
        total_regions += n
    if total_regions == 0:
        return None
    n_bg = int(sum((m == 0).sum() for m in masks))
    if n_bg == 0:
        return None
    for (lab, n, offset), amap in zip(per_image, maps):
        sizes = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
        w = np.zeros(lab.size)
        fg = lab.ravel() > 0
        w[fg] = 1.0 / sizes[lab.ravel()[fg]]
        scores.append(amap.ravel().astype(np.float64))
        is_bg.append(~fg)
        pro_w.append(w)
    s = np.concatenate(scores) + 0.0
    bg = np.concatenate(is_bg)
    pw = np.concatenate(pro_w)
    order = np.argsort(-s, kind="stable")
    s, bg, pw = s[order], bg[order], pw[order]
    fpr = np.cumsum(bg.astype(np.int64)) / n_bg
    pro = np.cumsum(pw) / total_regions
    last = np.r_[np.diff(s) != 0, True]
    fpr = np.r_[0.0, fpr[last]]
    pro = np.r_[0.0, pro[last]]
    i = np.searchsorted(fpr, limit, side="right") - 1  # last point with fpr <= limit
    f0, p0 = fpr[i], pro[i]
    f1, p1 = fpr[i + 1], pro[i + 1]
    p_lim = p0 + (p1 - p0) * ((limit - f0) / (f1 - f0))
    xs = np.r_[fpr[: i + 1], limit]
    ys = np.r_[pro[: i + 1], p_lim]
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / limit)


def cal_pro_score(masks, amaps, max_step=200, expect_fpr=0.3):
    """AnomalyCLIP / APRIL-GAN cflow-style PRO (the published formula)."""
    binary_amaps = np.zeros_like(amaps, dtype=bool)
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs, ths = [], [], []
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            for region in measure.regionprops(measure.label(mask)):
                tp_pixels = binary_amap[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp_pixels / region.area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        fpr = fp_pixels / inverse_masks.sum()
        pros.append(np.array(pro).mean())
        fprs.append(fpr)
        ths.append(th)
    pros, fprs, ths = np.array(pros), np.array(fprs), np.array(ths)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return float(auc(fprs, pros[idxes])), len(ths)


def blob_masks(n, h, w, normal_every=3, max_blobs=3):
    masks = np.zeros((n, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        if i % normal_every == 0:
            continue
        for _ in range(rng.integers(1, max_blobs + 1)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(1.5, h / 5), rng.uniform(1.5, w / 5)
            masks[i] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    return masks


def smooth_field(n, h, w, sigma=3.0):
    f = rng.normal(size=(n, h, w))
    return np.stack([ndi.gaussian_filter(x, sigma) for x in f])


def pixel_cases():
    n, h, w = 9, 24, 28
    masks = blob_masks(n, h, w)
    field = smooth_field(n, h, w)
    field = field / field.std()
    good = (field + 2.5 * ndi.gaussian_filter(masks.astype(float), (0, 1.5, 1.5))).astype(np.float32)
    cases = {
        "blobs": (good, masks),
        "uint8_ties": (np.floor((good - good.min()) / (good.max() - good.min()) * 15).astype(np.float32), masks),
        "fp16_ties": (good.astype(np.float16).astype(np.float32), masks),
        "long_tailed": (np.exp(3.0 * good).astype(np.float32), masks),
        "constant": (np.full_like(good, 0.25), masks),
        "all_normal": (good, "zeros"),
        "all_anomalous": (good, "ones"),
        "signed_zeros": (np.where(good > 0.5, np.float32(0.0), np.where(good < -0.5, np.float32(-0.0), good)).astype(np.float32), masks),
    }
    out = []
    np.save(os.path.join(OUT, "pixel_masks.npy"), masks.reshape(n * h, w).astype(np.float32))
    for name, (maps, m) in cases.items():
        maps = maps.astype(np.float32)
        mask_ref = m if isinstance(m, str) else "pixel_masks.npy"
        m = {"zeros": np.zeros_like(masks), "ones": np.ones_like(masks)}.get(mask_ref, masks)
        flat_l = (m > 0).ravel().astype(int)
        flat_s = maps.ravel()
        exp = sk_metrics(flat_l, flat_s) or {}
        exp["aupro"] = exact_aupro(m, maps)
        try:
            with np.errstate(all="ignore"):
                cflow, nth = cal_pro_score(m.astype(int), maps)
            exp["aupro_cflow"] = cflow if np.isfinite(cflow) else None
            exp["cflow_thresholds"] = nth
        except Exception as e:  # constant maps: arange step 0; single-class: nan
            exp["aupro_cflow"] = None
            exp["cflow_error"] = type(e).__name__
        exp["regions"] = int(sum(label8(x)[1] for x in m))
        np.save(os.path.join(OUT, f"pixel_{name}_maps.npy"), maps.reshape(n * h, w))
        out.append({"name": name, "images": n, "height": h, "width": w, "maps": f"pixel_{name}_maps.npy",
                    "masks": mask_ref, "expected": exp})
        print(name, exp)
    return out


def cflow_threshold_cases():
    cases = []
    for lo, hi in [(0.0, 1.0), (0.123, 0.987), (-3.5, 7.25), (1e-3, 1.0009), (0.2, 0.2000061)]:
        a = np.array([lo, hi], dtype=np.float32)
        mn, mx = a.min(), a.max()
        t = np.arange(mn, mx, (mx - mn) / 200)
        cases.append({"min": float(mn), "max": float(mx), "thresholds": [float(x) for x in t],
                      "thresholds_bits": [int(x) for x in t.view(np.uint64)]})
    return cases


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------
def postprocess_cases():
    entries = []

    def save(name, arr):
        np.save(os.path.join(OUT, f"post_{name}.npy"), np.ascontiguousarray(arr))
        return f"post_{name}.npy"

    src = rng.random((5, 7)).astype(np.float32)
    src_file = save("interp_src", src)
    for (oh, ow) in [(17, 23), (3, 4), (5, 7), (1, 9)]:
        for ac in (False, True):
            out = F.interpolate(torch.from_numpy(src)[None, None], size=(oh, ow), mode="bilinear",
                                align_corners=ac)[0, 0].numpy()
            entries.append({"op": "bilinear", "src": src_file, "out_height": oh, "out_width": ow,
                            "align_corners": ac, "expected": save(f"bilinear_{oh}x{ow}_{int(ac)}", out)})
    for (h, w, sigma, trunc) in [(30, 40, 4.0, 4.0), (6, 10, 4.0, 4.0), (13, 9, 1.5, 4.0), (12, 12, 2.0, 2.5)]:
        x = (rng.random((h, w)) ** 3).astype(np.float32)
        out = ndi.gaussian_filter(x, sigma, truncate=trunc)
        assert out.dtype == np.float32
        entries.append({"op": "gaussian", "src": save(f"gauss_src_{h}x{w}", x), "sigma": sigma,
                        "truncate": trunc, "expected": save(f"gauss_{h}x{w}", out)})
    mh, mw = 29, 37
    mask = blob_masks(2, mh, mw, normal_every=99, max_blobs=4)[1].astype(bool)
    mask_file = save("mask_src", mask.astype(np.float32))
    for (oh, ow) in [(16, 16), (50, 61), (29, 18), (7, 5)]:
        im = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((ow, oh), Image.BILINEAR)
        t = (np.asarray(im, dtype=np.float32) / 255.0) > 0.5
        entries.append({"op": "mask", "src": mask_file, "out_height": oh, "out_width": ow,
                        "expected": save(f"mask_{oh}x{ow}", t.astype(np.float32))})
    return entries


def main():
    with open(os.path.join(OUT, "image_cases.json"), "w") as f:
        json.dump(image_cases(), f)
    with open(os.path.join(OUT, "pixel_cases.json"), "w") as f:
        json.dump({"cases": pixel_cases(), "cflow_thresholds": cflow_threshold_cases()}, f, indent=1)
    with open(os.path.join(OUT, "postprocess.json"), "w") as f:
        json.dump(postprocess_cases(), f, indent=1)


if __name__ == "__main__":
    main()
