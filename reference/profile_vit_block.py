"""PyTorch's profile of one ViT-L block of each tower at the paper's sizes: the reference half of
the per-op table in docs/speed.md ("Where the time goes").

Run by hand: /root/venvs/ssvp-ref/bin/python reference/profile_vit_block.py [RUNS] [sdpa|eager]

transformers 5.23 with random weights, f32 CPU, torch.set_num_threads(2):
- CLIP ViT-L/14@336 at 518 px: one CLIPEncoderLayer on 1370 tokens (37x37 patches + class),
  quick GELU;
- DINOv3 ViT-L/16 at 592 px: one DINOv3ViTLayer on 1374 tokens (37x37 patches + class + 4
  registers), with its RoPE position embeddings and LayerScale.
The tokens entering the block are made by the model's own embeddings (outside the profile).
torch.profiler records RUNS forwards (default 10) after 2 warm-ups; every op's self CPU time
(exclusive, so the rows add up to the block) is averaged per forward and grouped into the
categories of the table. Prints both tables, markdown. Writes nothing.
"""

import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import CLIPVisionConfig, CLIPVisionModel, DINOv3ViTConfig, DINOv3ViTModel

# aten op -> category of the table (anything else is "other").
CATEGORIES = {
    "aten::addmm": "linear layers (matmul + bias)",
    "aten::mm": "linear layers (matmul + bias)",
    "aten::linear": "linear layers (matmul + bias)",
    "aten::bmm": "attention products",
    "aten::baddbmm": "attention products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (fused SDPA)",
    "aten::scaled_dot_product_attention": "attention (fused SDPA)",
    "aten::_softmax": "softmax",
    "aten::softmax": "softmax",
    "aten::native_layer_norm": "layer norms",
    "aten::layer_norm": "layer norms",
    "aten::gelu": "activations",
    "aten::sigmoid": "activations",
    "aten::add": "residual adds, scaling",
    "aten::add_": "residual adds, scaling",
    "aten::mul": "residual adds, scaling",
    "aten::mul_": "residual adds, scaling",
    "aten::div": "residual adds, scaling",
    "aten::neg": "RoPE",
    "aten::cat": "RoPE",
    "aten::slice": "RoPE",
    "aten::copy_": "copies, reshapes",
    "aten::clone": "copies, reshapes",
    "aten::contiguous": "copies, reshapes",
    "aten::transpose": "copies, reshapes",
    "aten::permute": "copies, reshapes",
    "aten::view": "copies, reshapes",
    "aten::reshape": "copies, reshapes",
    "aten::_unsafe_view": "copies, reshapes",
    "aten::expand": "copies, reshapes",
    "aten::t": "copies, reshapes",
    "aten::as_strided": "copies, reshapes",
    "aten::unsqueeze": "copies, reshapes",
    "aten::select": "copies, reshapes",
    "aten::empty": "allocation",
    "aten::empty_like": "allocation",
    "aten::empty_strided": "allocation",
    "aten::resize_": "allocation",
    "aten::zeros": "allocation",
}


def clip_block(attn):
    cfg = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16,
        image_size=336, patch_size=14, hidden_act="quick_gelu",
    )
    cfg._attn_implementation = attn
    model = CLIPVisionModel(cfg).eval()
    vt = model
    pixels = torch.randn(1, 3, 518, 518)
    with torch.inference_mode():
        tokens = vt.pre_layrnorm(vt.embeddings(pixels, interpolate_pos_encoding=True))
    layer = vt.encoder.layers[0]
    return "CLIP ViT-L/14 block, 1370 tokens", lambda: layer(tokens, None)


def dinov3_block(attn):
    cfg = DINOv3ViTConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16,
        num_register_tokens=4, patch_size=16, image_size=592,
    )
    cfg._attn_implementation = attn
    model = DINOv3ViTModel(cfg).eval()
    pixels = torch.randn(1, 3, 592, 592)
    with torch.inference_mode():
        tokens = model.embeddings(pixels)
        rope = model.rope_embeddings(pixels)
    layer = model.model.layer[0]
    return "DINOv3 ViT-L/16 block, 1374 tokens", lambda: layer(tokens, position_embeddings=rope)


def profile_block(name, forward, runs):
    with torch.inference_mode():
        for _ in range(2):
            forward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                forward()
    per_op = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        per_op[e.key][0] += e.self_cpu_time_total / 1e3 / runs
        per_op[e.key][1] += e.count // runs
    total = sum(ms for ms, _ in per_op.values())
    by_cat = defaultdict(float)
    for op, (ms, _) in per_op.items():
        by_cat[CATEGORIES.get(op, "other")] += ms
    print(f"\n### {name}: {total:.1f} ms per block (torch {torch.__version__}, f32, 2 threads)\n")
    print("| category | ms | share |\n|---|---|---|")
    for cat, ms in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"| {cat} | {ms:.2f} | {100 * ms / total:.1f} % |")
    print("\n| op | calls | ms | share |\n|---|---|---|---|")
    for op, (ms, calls) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        if ms >= 0.01:
            print(f"| `{op}` | {calls} | {ms:.2f} | {100 * ms / total:.1f} % |")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    attn = sys.argv[2] if len(sys.argv) > 2 else "sdpa"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for make in (clip_block, dinov3_block):
        name, forward = make(attn)
        profile_block(f"{name} ({attn})", forward, runs)


if __name__ == "__main__":
    main()
