"""PyTorch timing references for the SSVP head (issue 5); writes nothing.

Run by hand with the reference venv:
    /root/venvs/ssvp-ref/bin/python reference/bench_ssvp.py train [STEPS=5] [MASK=518] [BATCH=8]
    /root/venvs/ssvp-ref/bin/python reference/bench_ssvp.py eval [RUNS=3] [BATCH=1]
    SSVP_BENCH_DEVICE=cuda python3 reference/bench_ssvp.py eval [RUNS] [BATCH]   (on a GPU)

`train`: counterpart of crates/ssvp-model/examples/train_step_bench.rs. One training step of the
head of reference/gen_ssvp_head.py at the default SsvpConfig sizes (4 scales, CLIP 768, DINO 1024,
ATF 8 heads x 96, prompts 3 + 3 of 5 + 5 tokens, VAE 768 / 512) on random cached features of a
37 x 37 grid, T_init given per image (the text tower is not included), masks MASK x MASK:
forward + every loss + backward + AdamW (two groups, weight decay 0, i.e. Adam) step. Prints the
median of STEPS steps after one warm-up step and VmHWM.

`eval`: counterpart of crates/ssvp-model/examples/eval_image_bench.rs. Time per evaluated image:
transformers CLIPVisionModelWithProjection ViT-L/14-336 at 518 px (interpolate_pos_encoding) and
DINOv3ViTModel ViT-L/16 at 592 px, random weights, the hidden states of the layers the head reads
(CLIP blocks 6/12/18/24 through post-LN + projection, DINO blocks 4/7/10/12 through the final
norm), the head's eval forward, bilinear (align_corners) upsampling of the fused map to 518 and
scipy's gaussian_filter(sigma=4). Prints the median of RUNS images after one warm-up and VmHWM.

Both use f32 and torch.set_num_threads(2), like the Rust benches on the 2-core machine.
"""

import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_ssvp_head as ref  # noqa: E402  (the independent PyTorch head, reused as is)

# The default SsvpConfig (crates/ssvp-model/src/config.rs), in gen_ssvp_head's key names.
CFG = dict(
    clip_layers=[6, 12, 18, 24],
    clip_dim=768,
    dino_dim=1024,
    atf_heads=8,
    atf_width=768,
    atf_mlp_hidden=768,
    prompts_per_state=3,
    context_len=5,
    state_len=5,
    text_width=768,
    vae_hidden=512,
    vae_latent=768,
    latent_tokens=8,
    inject_key_dim=128,
    tau_init=0.07,
    scale_gate_hidden=384,
    gamma=0.5,
)
LOSS = dict(kl_beta=0.1, vae_weight=1.0, margin_weight=0.5, margin_floor=0.85, focal_gamma=2.0)
OPT = dict(lr_prompts=5e-4, lr_rest=1e-4, beta1=0.5, beta2=0.999, eps=1e-8, weight_decay=0.0)
GRID = (37, 37)
DINO_LAYERS = [4, 7, 10, 12]  # DinoLayerSet::PaperLiteral, 1-based


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_avg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def make_head():
    ref.LOSS.update(LOSS)  # the head's forward reads margin_floor from the module
    head = ref.Head(CFG)
    with torch.no_grad():  # values do not matter for timing, only that nothing is degenerate
        for name, p in head.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[-1]))
    return head


def bench_train(steps, mask, b):
    n, L = GRID[0] * GRID[1], len(CFG["clip_layers"])
    ref.B, ref.GRID = b, GRID  # gen_ssvp_head.losses reads both from its module
    head = make_head()
    named = list(head.named_parameters())
    groups = [
        {"params": [p for nm, p in named if ref.is_prompt_group(nm)], "lr": OPT["lr_prompts"]},
        {"params": [p for nm, p in named if not ref.is_prompt_group(nm)], "lr": OPT["lr_rest"]},
    ]
    opt = torch.optim.AdamW(groups, betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"])
    clip_local = [torch.randn(b, n, CFG["clip_dim"]) for _ in range(L)]
    dino_local = [torch.randn(b, n, CFG["dino_dim"]) for _ in range(L)]
    clip_global, dino_global = torch.randn(b, CFG["clip_dim"]), torch.randn(b, CFG["dino_dim"])
    t_init = torch.randn(b, 2 * CFG["prompts_per_state"], CFG["clip_dim"])
    masks = (torch.randn(b, mask, mask) > 2.0).float()
    labels = torch.tensor([float(i % 2) for i in range(b)])
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        noise = torch.randn(b, CFG["vae_latent"])
        opt.zero_grad(set_to_none=True)
        out = head(clip_local, dino_local, clip_global, dino_global, t_init, noise)
        total = ref.losses(out, masks, labels)["total"]
        total.backward()
        opt.step()
        dt = time.perf_counter() - t0
        print(f"step {step}{' (warm-up)' if step == 0 else ''}: {dt:.3f} s, loss {float(total.detach()):.4f}",
              file=sys.stderr, flush=True)
        if step > 0:
            times.append(dt)
    med = statistics.median(times)
    print(f"torch head train step (batch {b}, ViT-L sizes, masks {mask}): median {med:.3f} s over {steps}; "
          f"VmHWM {vm_hwm_mib():.0f} MiB; load {load_avg()}")
    return med


def bench_eval(runs, batch=1):
    """`batch` images per pass; SSVP_BENCH_DEVICE=cuda runs the towers and the head on the GPU
    (f32, PyTorch's defaults: no TF32 in matmuls), synchronised before every clock read."""
    device = torch.device(os.environ.get("SSVP_BENCH_DEVICE", "cpu"))

    def clock():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    from scipy.ndimage import gaussian_filter
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, DINOv3ViTConfig, DINOv3ViTModel

    ccfg = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    clip = CLIPVisionModelWithProjection(ccfg).eval().to(device)
    dcfg = DINOv3ViTConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        num_register_tokens=4, patch_size=16, image_size=592,
    )
    dino = DINOv3ViTModel(dcfg).eval().to(device)
    head = make_head().eval().to(device)
    n = GRID[0] * GRID[1]
    prefix = 1 + dcfg.num_register_tokens
    t_init = torch.randn(1, 2 * CFG["prompts_per_state"], CFG["clip_dim"], device=device).expand(batch, -1, -1)
    times, parts = [], []
    with torch.inference_mode():
        for run in range(runs + 1):
            clip_px = torch.randn(batch, 3, 518, 518, device=device)
            dino_px = torch.randn(batch, 3, 592, 592, device=device)
            t0 = clock()
            co = clip.vision_model(pixel_values=clip_px, output_hidden_states=True, interpolate_pos_encoding=True)
            proj = lambda h: clip.visual_projection(clip.vision_model.post_layernorm(h))  # noqa: E731
            clip_local = [proj(co.hidden_states[i][:, 1:1 + n]) for i in CFG["clip_layers"]]
            clip_global = clip.visual_projection(co.pooler_output)
            t1 = clock()
            do = dino(pixel_values=dino_px, output_hidden_states=True)
            dino_local = [dino.norm(do.hidden_states[i])[:, prefix:prefix + n] for i in DINO_LAYERS]
            dino_global = do.last_hidden_state[:, 0]
            t2 = clock()
            out = head(clip_local, dino_local, clip_global, dino_global, t_init, None)
            fused = out["fused"].reshape(batch, 1, *GRID)
            up = F.interpolate(fused, size=(518, 518), mode="bilinear", align_corners=True)[:, 0].cpu()
            smooth = [gaussian_filter(u.numpy(), sigma=4.0) for u in up]
            score = float(out["score"][0])
            t3 = clock()
            assert smooth[0].shape == (518, 518) and math.isfinite(score)
            print(f"run {run}{' (warm-up)' if run == 0 else ''}: {t3 - t0:.2f} s "
                  f"(CLIP {t1 - t0:.2f}, DINO {t2 - t1:.2f}, head + post {t3 - t2:.3f})", file=sys.stderr, flush=True)
            if run > 0:
                times.append((t3 - t0) / batch)
                parts.append(((t1 - t0) / batch, (t2 - t1) / batch, (t3 - t2) / batch))
    med = statistics.median(times)
    mid = sorted(parts, key=sum)[len(parts) // 2]
    print(f"torch eval per image on {device}, batches of {batch} "
          f"(CLIP ViT-L/14-336 @518 + DINOv3 ViT-L/16 @592 + head + post): median {med:.4f} s "
          f"over {runs} (CLIP {mid[0]:.2f}, DINO {mid[1]:.2f}, head + post {mid[2]:.3f}); "
          f"VmHWM {vm_hwm_mib():.0f} MiB; load {load_avg()}")
    return med


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    what = sys.argv[1] if len(sys.argv) > 1 else "train"
    args = [int(a) for a in sys.argv[2:]]
    if what == "train":
        steps, mask, b = (args + [5, 518, 8][len(args):])[:3]
        bench_train(steps, mask, b)
    elif what == "eval":
        runs, batch = (args + [3, 1][len(args):])[:2]
        bench_eval(runs, batch)
    else:
        sys.exit(f"unknown bench `{what}` (train | eval)")


if __name__ == "__main__":
    main()
