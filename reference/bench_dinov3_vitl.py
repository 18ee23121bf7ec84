"""PyTorch counterpart of `cargo run -p ssvp-backbones --example dinov3_vitl_bench`.

Run by hand: /root/venvs/ssvp-ref/bin/python reference/bench_dinov3_vitl.py [SIZE] [RUNS] [eager|sdpa] [BLOCKS]
transformers 5.23 DINOv3ViTModel with the ViT-L/16 config and random weights, one 592x592 image, f32 CPU,
torch.set_num_threads(2), requesting all hidden states. BLOCKS (default 24) keeps only the first
BLOCKS blocks, the work of ssvp's early stop (references read blocks up to 12: `ssvp bench
--references K` runs DINOv3 through block 12). Prints the median of RUNS forwards after one
warm-up and the process's peak resident memory (VmHWM). Writes nothing.
"""

import statistics
import sys
import time

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return -1


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 592
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    attn = sys.argv[3] if len(sys.argv) > 3 else "sdpa"
    blocks = int(sys.argv[4]) if len(sys.argv) > 4 else 24
    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        num_register_tokens=4, patch_size=16, image_size=size,
    )
    cfg._attn_implementation = attn
    model = DINOv3ViTModel(cfg).eval()
    model.model.layer = model.model.layer[:blocks]
    pixels = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for run in range(runs + 1):
            t0 = time.perf_counter()
            out = model(pixel_values=pixels, output_hidden_states=True)
            dt = time.perf_counter() - t0
            print(f"run {run}{' (warm-up)' if run == 0 else ''}: {dt:.2f} s", flush=True)
            if run > 0:
                times.append(dt)
    print(f"patch tokens {tuple(out.last_hidden_state.shape)}")
    print(
        f"dinov3_vitl16 {size}x{size}, {blocks} blocks, torch {torch.__version__} f32 CPU ({attn}, 2 threads): "
        f"median {statistics.median(times):.2f} s/image over {runs} runs; VmHWM {vm_hwm_mib()} MiB"
    )


if __name__ == "__main__":
    main()
