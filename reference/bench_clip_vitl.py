"""PyTorch counterpart of crates/ssvp-backbones/examples/clip_vitl_bench.rs.

transformers CLIPVisionModelWithProjection with the ViT-L/14-336 config and random weights, one
518x518 image (interpolate_pos_encoding=True, i.e. bicubic 24x24 -> 37x37), hidden states of
blocks 6/12/18/24 plus the projected patch features, 2 threads. Prints the median of 3 forwards
after a warm-up and the peak resident memory (VmHWM).

    /root/venvs/ssvp-ref/bin/python reference/bench_clip_vitl.py [SIZE] [RUNS]
"""

import statistics
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 518
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    cfg._attn_implementation = "eager"
    model = CLIPVisionModelWithProjection(cfg).eval()
    pixels = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for run in range(runs + 1):
            start = time.perf_counter()
            out = model.vision_model(
                pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True
            )
            hidden = [out.hidden_states[i] for i in (6, 12, 18, 24)]
            patch = [model.visual_projection(model.vision_model.post_layernorm(h)) for h in hidden]
            image = model.visual_projection(out.pooler_output)
            ms = (time.perf_counter() - start) * 1e3
            if run == 0:
                print(f"warm-up: {ms:.0f} ms, patch.24 {tuple(patch[3].shape)}, image {tuple(image.shape)}")
            else:
                times.append(ms)
    print(
        f"torch {torch.__version__} CLIP ViT-L/14-336 vision (eager attention), {size}x{size}: "
        f"median {statistics.median(times):.0f} ms of {runs} runs "
        f"({', '.join(f'{t:.0f}' for t in times)}); VmHWM {vm_hwm_mib()} MiB"
    )


if __name__ == "__main__":
    main()
