"""Golden fixtures for crates/ssvp-image (decoding, Pillow-compatible resampling, model preprocessing).

Run by hand (never by CI) with the reference venv:
    /root/venvs/ssvp-ref/bin/python reference/gen_image.py
Needs pillow 13, numpy, torch, torchvision (0.29.2 installed --no-deps next to torch 2.15) and
transformers 5.x. Writes crates/ssvp-image/tests/fixtures/image/: small deterministic source images in
several formats, the raw RGB8 each one should decode to, Pillow resizes, and full normalised CLIP / DINOv3
preprocessing outputs. All raw arrays are little-endian: u8 as HWC, f32 as CHW. manifest.json lists them.
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

OUT = Path(__file__).resolve().parent.parent / "crates/ssvp-image/tests/fixtures/image"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)


def pattern(width, height, channels, seed, maxval=255):
    """Smooth gradients plus a sharp edge plus noise, so that both smooth and high-frequency content is
    resampled (the noise makes rounding differences visible)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = []
    for c in range(channels):
        base = (
            0.5
            + 0.35 * np.sin(2 * np.pi * (x / width * (c + 1) + y / height * (2 - c * 0.5)))
            + 0.1 * ((x + 2 * y + 7 * c) % 13 < 6)
        )
        base = base + rng.normal(0.0, 0.08, size=base.shape)
        planes.append(np.clip(np.round(base * maxval), 0, maxval))
    arr = np.stack(planes, axis=-1)
    # a few saturated pixels to exercise clipping of overshooting bicubic taps
    arr[height // 2, :: max(1, width // 6)] = maxval
    arr[height // 3, 1 :: max(1, width // 5)] = 0
    return arr.astype(np.uint16 if maxval > 255 else np.uint8)


def write_png16(path, arr):
    """Minimal 16-bit PNG writer (Pillow cannot write 16-bit RGB/LA/RGBA)."""
    h, w, c = arr.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[row].astype(">u2").tobytes() for row in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    path.write_bytes(png)


def to_rgb8(arr):
    """What ssvp-image promises: gray replicated, alpha dropped, 16-bit -> round(v / 257)."""
    if arr.dtype == np.uint16:
        arr = np.floor(arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    c = arr.shape[2]
    if c in (1, 2):
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def save_bin(name, arr):
    (OUT / name).write_bytes(np.ascontiguousarray(arr).tobytes())
    return name


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        old.unlink()
    manifest = {"decode": [], "resize": [], "preprocess": []}

    sources = {
        "rgb_37x23": pattern(37, 23, 3, seed=1),
        "rgb_64x48": pattern(64, 48, 3, seed=2),
        "rgb_100x80": pattern(100, 80, 3, seed=3),
        "rgb_45x70": pattern(45, 70, 3, seed=4),
        "gray_64x48": pattern(64, 48, 1, seed=5),
    }

    # ---- decoding: one file per (format, bit depth, channel layout) ----
    def add_decode(file, arr, expected=None, tolerance=0):
        expected = to_rgb8(arr) if expected is None else expected
        h, w = expected.shape[:2]
        manifest["decode"].append(
            {
                "file": file,
                "width": w,
                "height": h,
                "expected_rgb8": save_bin(file.replace(".", "_") + ".rgb8.bin", expected),
                "tolerance": tolerance,
            }
        )

    for key in ("rgb_37x23", "rgb_100x80", "rgb_45x70"):
        Image.fromarray(sources[key]).save(OUT / f"{key}.png")
        add_decode(f"{key}.png", sources[key])
    g = sources["gray_64x48"]
    Image.fromarray(g[:, :, 0], mode="L").save(OUT / "gray_64x48.png")
    add_decode("gray_64x48.png", g)
    rgba = np.concatenate([sources["rgb_37x23"], pattern(37, 23, 1, seed=6)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(OUT / "rgba_37x23.png")
    add_decode("rgba_37x23.png", rgba)
    la = np.concatenate([pattern(37, 23, 1, seed=7), pattern(37, 23, 1, seed=8)], axis=2)
    Image.fromarray(la, mode="LA").save(OUT / "la_37x23.png")
    add_decode("la_37x23.png", la)
    for name, c, seed in (("rgb16", 3, 9), ("gray16", 1, 10), ("rgba16", 4, 11), ("la16", 2, 12)):
        arr16 = pattern(23, 17, c, seed=seed, maxval=65535)
        write_png16(OUT / f"{name}_23x17.png", arr16)
        add_decode(f"{name}_23x17.png", arr16)
    Image.fromarray(sources["rgb_64x48"]).save(OUT / "rgb_64x48.bmp")
    add_decode("rgb_64x48.bmp", sources["rgb_64x48"])
    Image.fromarray(g[:, :, 0], mode="L").save(OUT / "gray_64x48.bmp")
    add_decode("gray_64x48.bmp", g)
    Image.fromarray(sources["rgb_37x23"]).save(OUT / "rgb_37x23.tiff")
    add_decode("rgb_37x23.tiff", sources["rgb_37x23"])
    Image.fromarray(sources["rgb_45x70"]).save(OUT / "rgb_45x70_lzw.tiff", compression="tiff_lzw")
    add_decode("rgb_45x70_lzw.tiff", sources["rgb_45x70"])
    # JPEG is lossy and decoders differ in IDCT rounding: the reference is Pillow's (libjpeg-turbo) decode
    # and the test allows a small tolerance. 4:4:4 avoids chroma upsampling differences.
    Image.fromarray(sources["rgb_64x48"]).save(OUT / "rgb_64x48.jpg", quality=92, subsampling=0)
    add_decode("rgb_64x48.jpg", None, expected=np.asarray(Image.open(OUT / "rgb_64x48.jpg").convert("RGB")), tolerance=2)
    Image.fromarray(g[:, :, 0], mode="L").save(OUT / "gray_64x48.jpg", quality=92)
    add_decode("gray_64x48.jpg", None, expected=np.asarray(Image.open(OUT / "gray_64x48.jpg").convert("RGB")), tolerance=2)

    # ---- Pillow resizes: up, down, mixed, one axis only, non-square; RGB and single-channel ----
    source_file = {k: f"{k}.png" for k in sources}
    source_file["rgb_64x48"] = "rgb_64x48.bmp"
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
    cases = [
        ("rgb_37x23", 64, 48),
        ("rgb_37x23", 91, 23),
        ("rgb_64x48", 48, 64),
        ("rgb_64x48", 7, 5),
        ("rgb_100x80", 37, 23),
        ("rgb_100x80", 100, 41),
        ("rgb_100x80", 33, 90),
        ("rgb_45x70", 32, 32),
        ("gray_64x48", 100, 80),
        ("gray_64x48", 13, 17),
        # Pillow 13 runs the vertical pass first when the height shrinks by more than twice the width
        ("rgb_45x70", 40, 20),
        ("rgb_100x80", 110, 30),
        ("gray_64x48", 60, 9),
    ]
    for key, ow, oh in cases:
        arr = sources[key]
        pil = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr)
        for fname, f in filters.items():
            out = np.asarray(pil.resize((ow, oh), f))
            manifest["resize"].append(
                {
                    "source": source_file[key],
                    "channels": arr.shape[2],
                    "out_width": ow,
                    "out_height": oh,
                    "filter": fname,
                    "expected": save_bin(f"resize_{key}_{ow}x{oh}_{fname}.bin", out),
                }
            )

    # ---- full preprocessing ----
    def chw(t):
        return t.detach().to(torch.float32).contiguous().numpy()

    def add_pre(source, kind, mode, width, height, tensor, reference):
        arr = chw(tensor)
        assert arr.shape == (3, height, width), arr.shape
        manifest["preprocess"].append(
            {
                "source": source,
                "kind": kind,
                "mode": mode,
                "width": width,
                "height": height,
                "reference": reference,
                "expected": save_bin(f"pre_{kind}_{mode}_{source.split('.')[0]}_{width}x{height}.f32.bin", arr),
            }
        )

    clip_norm = T.Normalize(CLIP_MEAN, CLIP_STD)
    for key, size in (("rgb_100x80", 32), ("rgb_37x23", 13), ("rgb_45x70", 24)):
        pil = Image.fromarray(sources[key])
        # OpenAI clip._transform / open_clip: shortest side to `size` (bicubic on PIL), centre crop.
        t = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(), clip_norm])
        add_pre(f"{key}.png", "clip", "crop", size, size, t(pil), "torchvision Resize(size, BICUBIC)+CenterCrop on PIL")
        # AnomalyCLIP / AdaCLIP / APRIL-GAN: squash to a square.
        t = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor(), clip_norm])
        add_pre(f"{key}.png", "clip", "squash", size, size, t(pil), "torchvision Resize((size,size), BICUBIC) on PIL")

    from transformers import DINOv3ViTImageProcessor

    for key, w, h, kind, mean, std in (
        ("rgb_100x80", 48, 32, "dinov3", IMAGENET_MEAN, IMAGENET_STD),
        ("rgb_37x23", 48, 48, "dinov3", IMAGENET_MEAN, IMAGENET_STD),
        ("rgb_45x70", 32, 32, "dinov3_sat", SAT_MEAN, SAT_STD),
    ):
        pil = Image.fromarray(sources[key])
        proc = DINOv3ViTImageProcessor(size={"height": h, "width": w}, image_mean=list(mean), image_std=list(std))
        hf = proc(images=pil, return_tensors="pt")["pixel_values"][0]
        x = torch.from_numpy(sources[key]).permute(2, 0, 1)[None].to(torch.float32) / 255.0
        tv = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
        tv = (tv - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        print(f"{kind} {key}: HF processor vs F.interpolate max abs diff {float((hf - tv).abs().max()):.3g}")
        add_pre(f"{key}.png", kind, "squash", w, h, hf, "transformers DINOv3ViTImageProcessor")

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
