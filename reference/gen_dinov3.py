"""Golden fixtures for the DINOv3 ViT in crates/ssvp-backbones (src/dinov3/).

Run by hand (never by CI) with the reference venv:
    /root/venvs/ssvp-ref/bin/python reference/gen_dinov3.py
Needs torch and transformers 5.23 (DINOv3ViTModel / DINOv3ViTConfig), safetensors.

Writes crates/ssvp-backbones/tests/fixtures/dinov3/, read by tests/dinov3_parity.rs:
  inputs.safetensors            pixels `nonsquare` [1,3,64,96] (4x6 patches) and `square` [1,3,32,32] (2x2)
  <variant>/config.json         the HF config of a tiny model (hidden 64, 2 layers, 4 heads of dim 16, patch 16)
  <variant>/model.safetensors   its random weights in HF naming (`layer.N.*`, as save_pretrained writes)
  <variant>/meta.pth            the same weights in Meta naming (torch.save state dict: fused qkv with a
                                random NON-ZERO k bias that must be masked, bias_mask, ls1.gamma, w1/w2/w3 or
                                fc1/fc2, storage_tokens, mask_token [1,D], rope_embed.periods, local_cls_norm)
  <variant>/expected.safetensors  for each input <tag>: `<tag>.hidden.<i>` = HF hidden_states[i] (raw output of
                                block i, 0 = embeddings) and `<tag>.normed.<i>` = model.norm(hidden_states[i])
                                applied here explicitly (Meta's get_intermediate_layers norm=True; this also
                                avoids the transformers 4.56 vs 5.x trap on the last hidden state).
variants: `mlp` (GELU MLP, intermediate 72) and `swiglu` (SiLU-gated, intermediate 40).

Weights: every parameter (LayerScale, LayerNorm affine, all biases, tokens included) is drawn at random
with a fixed seed so that a swapped or ignored tensor changes the outputs, then rounded to float16 and
stored as float16 (to keep the fixtures small); the reference forward runs in float32 on those values,
so the Rust model (loading with a cast to f32) must match to f32 accuracy.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import DINOv3ViTConfig, DINOv3ViTModel

OUT = Path(__file__).resolve().parent.parent / "crates/ssvp-backbones/tests/fixtures/dinov3"
SEED = 20250814

VARIANTS = {
    "mlp": dict(intermediate_size=72, use_gated_mlp=False, hidden_act="gelu"),
    "swiglu": dict(intermediate_size=40, use_gated_mlp=True, hidden_act="silu"),
}


def tiny_config(**ffn):
    return DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=16,
        num_register_tokens=4,
        layer_norm_eps=1e-5,
        rope_theta=100.0,
        image_size=64,
        **ffn,
    )


def randomise(model, gen):
    """Every parameter random, scaled so that activations stay O(1) and nothing is at its init default."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                v = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
            elif name.endswith("lambda1"):
                v = 0.5 + 0.3 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.3 * torch.randn(p.shape, generator=gen)
            elif p.dim() >= 2 and "token" not in name:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5)
            else:  # cls / register / mask tokens
                v = torch.randn(p.shape, generator=gen)
            p.copy_(v.half().float())


def meta_state_dict(model, cfg, gen):
    """The inverse of the documented Meta -> HF mapping (docs/formats.md §2.3), written independently of the Rust code."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d = cfg.hidden_size
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "storage_tokens": sd["embeddings.register_tokens"],
        "mask_token": sd["embeddings.mask_token"].reshape(1, d),
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
        # Meta's buffer: periods = base ** (2 * arange(d/4) / (d/2)), d = head dim.
        "rope_embed.periods": cfg.rope_theta
        ** (2 * torch.arange(cfg.hidden_size // cfg.num_attention_heads // 4, dtype=torch.float32)
            / (cfg.hidden_size // cfg.num_attention_heads // 2)),
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
        # Present in SAT-493M ViT-L checkpoints, unused at inference: must be ignored.
        "local_cls_norm.weight": torch.randn(d, generator=gen),
        "local_cls_norm.bias": torch.randn(d, generator=gen),
    }
    for i in range(cfg.num_hidden_layers):
        h, m = f"model.layer.{i}.", f"blocks.{i}."
        att = h + "attention."
        out[m + "attn.qkv.weight"] = torch.cat([sd[att + p + "_proj.weight"] for p in "qkv"], 0)
        k_bias = torch.randn(d, generator=gen)  # non-zero garbage, as left by training: masked by Meta
        out[m + "attn.qkv.bias"] = torch.cat([sd[att + "q_proj.bias"], k_bias, sd[att + "v_proj.bias"]], 0)
        out[m + "attn.qkv.bias_mask"] = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)], 0)
        out[m + "attn.proj.weight"] = sd[att + "o_proj.weight"]
        out[m + "attn.proj.bias"] = sd[att + "o_proj.bias"]
        for k in ("1", "2"):
            out[m + f"norm{k}.weight"] = sd[h + f"norm{k}.weight"]
            out[m + f"norm{k}.bias"] = sd[h + f"norm{k}.bias"]
            out[m + f"ls{k}.gamma"] = sd[h + f"layer_scale{k}.lambda1"]
        hf_to_meta = (
            {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"}
            if cfg.use_gated_mlp
            else {"up_proj": "fc1", "down_proj": "fc2"}
        )
        for hf, meta in hf_to_meta.items():
            for s in ("weight", "bias"):
                out[m + f"mlp.{meta}.{s}"] = sd[h + f"mlp.{hf}.{s}"]
    # Stored in float16 like the HF file (bias_mask and periods stay float32 as Meta keeps them).
    return {
        k: (v.half() if k not in ("rope_embed.periods",) and not k.endswith("bias_mask") else v.float()).contiguous()
        for k, v in out.items()
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    inputs = {
        "nonsquare": torch.randn(1, 3, 64, 96, generator=gen).half(),
        "square": torch.randn(1, 3, 32, 32, generator=gen).half(),
    }
    save_file({k: v.contiguous() for k, v in inputs.items()}, OUT / "inputs.safetensors")

    for variant, ffn in VARIANTS.items():
        cfg = tiny_config(**ffn)
        model = DINOv3ViTModel(cfg).eval()
        model.config._attn_implementation = "eager"
        randomise(model, gen)
        vdir = OUT / variant
        vdir.mkdir(exist_ok=True)
        model.save_pretrained(vdir, safe_serialization=True)
        # Re-save the weights as float16 (values are float16-exact already) in save_pretrained's naming.
        from safetensors.torch import load_file

        hf = load_file(vdir / "model.safetensors")
        assert any(k.startswith("layer.0.") for k in hf), "expected save_pretrained to write layer.N names"
        save_file({k: v.half().contiguous() for k, v in hf.items()}, vdir / "model.safetensors")
        torch.save(meta_state_dict(model, cfg, gen), vdir / "meta.pth")

        expected = {}
        with torch.no_grad():
            for tag, px in inputs.items():
                o = model(pixel_values=px.float(), output_hidden_states=True)
                hs = o.hidden_states
                assert len(hs) == cfg.num_hidden_layers + 1
                for i, h in enumerate(hs):
                    expected[f"{tag}.hidden.{i}"] = h[0]
                    if i > 0:
                        expected[f"{tag}.normed.{i}"] = model.norm(h)[0]
                last = expected[f"{tag}.normed.{cfg.num_hidden_layers}"]
                # transformers 5.x keeps hidden_states[-1] raw; last_hidden_state is the normed one.
                assert torch.allclose(o.last_hidden_state[0], last, atol=1e-6)
                assert torch.allclose(o.pooler_output[0], last[0], atol=1e-6)
                assert not torch.allclose(hs[-1][0], last, atol=1e-3)
        save_file({k: v.float().contiguous() for k, v in expected.items()}, vdir / "expected.safetensors")

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
