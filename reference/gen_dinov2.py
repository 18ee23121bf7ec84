"""Golden fixtures for the DINOv2 ViT in crates/ssvp-backbones (src/dinov2/).

Run by hand (never by CI) with the reference venv:
    /root/venvs/ssvp-ref/bin/python reference/gen_dinov2.py
Needs torch and transformers 5.23 (Dinov2Model / Dinov2WithRegistersModel), safetensors.

Writes crates/ssvp-backbones/tests/fixtures/dinov2/, read by tests/it/dinov2_*.rs:
  inputs.safetensors   pixels at patch 14, every model trained for a 42x42 image (a 3x3 position grid):
                         `native`    [1,3,42,42]  3x3, the trained grid: no interpolation
                         `square`    [1,3,28,28]  2x2, shrunk (as 448 px is on a 37x37 table)
                         `nonsquare` [1,3,56,84]  4x6, upsampled by different factors per axis
                         `mixed`     [1,3,28,70]  2x5, rows shrunk and columns grown
  <variant>/config.json          the HF config (save_pretrained) of a tiny model
  <variant>/model.safetensors    its random weights in hub naming (what save_pretrained writes in 5.23:
                                 `encoder.layer.N.attention.attention.query`, `mlp.weights_in`, ...)
  <variant>/meta.safetensors or meta.pth
                                 the same weights in Meta naming (facebookresearch/dinov2 vision_transformer.py:
                                 `pos_embed`, fused `blocks.N.attn.qkv`, `ls1.gamma`, `mlp.fc1` or `mlp.w12`/`w3`,
                                 `register_tokens`, `mask_token` [1,D], `norm`), written independently of the Rust
                                 mapping from the in-memory transformers 5 names (`q_proj`, `gate_proj`, ...)
  <variant>/expected.safetensors for each input <tag>: `<tag>.hidden.<i>` = hidden_states[i] (raw output of block i,
                                 0 = embeddings) and `<tag>.normed.<i>` = model.layernorm(hidden_states[i]) for i >= 1
                                 (Meta's get_intermediate_layers(norm=True)); last_hidden_state and pooler_output are
                                 asserted equal to normed.<last> and its CLS row here.
variants:
  `s`      Dinov2Model, ViT-S-like: hidden 24, 2 layers, 2 heads, GELU MLP (mlp_ratio 4), no registers;  meta.pth
  `b_reg`  Dinov2WithRegistersModel, ViT-B-like: hidden 32, 2 layers, 4 heads, mlp_ratio 2, 4 registers
           (antialiased position resampling);                                                          meta.safetensors
  `swiglu` Dinov2Model, ViT-g-like: hidden 24, 2 layers, 2 heads, SwiGLU (mlp_ratio 4 -> 64 per half),
           no registers;                                                                                meta.pth
Widths are small because the fixtures must stay a few hundred KB (the 14x14x3 patch kernel dominates).

Weights: every parameter (LayerScale, LayerNorm affine, all biases, tokens, the position table) is drawn at random
with a fixed seed so that a swapped or ignored tensor changes the outputs, then rounded to float16 and stored as
float16 (to keep the fixtures small); the reference forward runs in float32 on those values, so the Rust model
(loading with a cast to f32) must match to f32 accuracy.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

OUT = Path(__file__).resolve().parent.parent / "crates/ssvp-backbones/tests/fixtures/dinov2"
SEED = 20260214

COMMON = dict(image_size=42, patch_size=14, layer_norm_eps=1e-6, layerscale_value=1.0, hidden_act="gelu")

VARIANTS = {
    "s": (Dinov2Config, Dinov2Model, dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4),
          "meta.pth"),
    "b_reg": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel,
              dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, num_register_tokens=4),
              "meta.safetensors"),
    "swiglu": (Dinov2Config, Dinov2Model,
               dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, use_swiglu_ffn=True),
               "meta.pth"),
}


def randomise(model, gen):
    """Every parameter random, scaled so that activations stay O(1) and nothing is at its init default."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "layernorm.weight":
                v = 1.0 + 0.3 * torch.randn(p.shape, generator=gen)
            elif name.endswith("lambda1"):
                v = 0.5 + 0.3 * torch.randn(p.shape, generator=gen)
            elif name.endswith(".bias"):
                v = 0.3 * torch.randn(p.shape, generator=gen)
            elif "token" in name or name.endswith("position_embeddings"):
                v = torch.randn(p.shape, generator=gen)
            else:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) * (1.5 / fan_in**0.5)
            p.copy_(v.half().float())


def meta_state_dict(model, cfg):
    """Meta's names from the in-memory transformers 5 names (docs/formats.md §6.3), independent of the Rust code."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert "encoder.layer.0.attention.q_proj.weight" in sd, "expected transformers 5 in-memory names"
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "mask_token": sd["embeddings.mask_token"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    for i in range(cfg.num_hidden_layers):
        h, m = f"encoder.layer.{i}.", f"blocks.{i}."
        att = h + "attention."
        for s in ("weight", "bias"):
            out[m + f"attn.qkv.{s}"] = torch.cat([sd[att + f"{p}_proj.{s}"] for p in "qkv"], 0)
            out[m + f"attn.proj.{s}"] = sd[att + f"o_proj.{s}"]
        for k in ("1", "2"):
            out[m + f"norm{k}.weight"] = sd[h + f"norm{k}.weight"]
            out[m + f"norm{k}.bias"] = sd[h + f"norm{k}.bias"]
            out[m + f"ls{k}.gamma"] = sd[h + f"layer_scale{k}.lambda1"]
        for s in ("weight", "bias"):
            if cfg.use_swiglu_ffn:
                # SwiGLUFFNFused: w12 = [w1 (gated by SiLU); w2], w3 the output.
                out[m + f"mlp.w12.{s}"] = torch.cat([sd[h + f"mlp.gate_proj.{s}"], sd[h + f"mlp.up_proj.{s}"]], 0)
                out[m + f"mlp.w3.{s}"] = sd[h + f"mlp.down_proj.{s}"]
            else:
                out[m + f"mlp.fc1.{s}"] = sd[h + f"mlp.fc1.{s}"]
                out[m + f"mlp.fc2.{s}"] = sd[h + f"mlp.fc2.{s}"]
    return {k: v.half().contiguous() for k, v in out.items()}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(SEED)
    inputs = {
        "native": torch.randn(1, 3, 42, 42, generator=gen).half(),
        "square": torch.randn(1, 3, 28, 28, generator=gen).half(),
        "nonsquare": torch.randn(1, 3, 56, 84, generator=gen).half(),
        "mixed": torch.randn(1, 3, 28, 70, generator=gen).half(),
    }
    save_file({k: v.contiguous() for k, v in inputs.items()}, OUT / "inputs.safetensors")

    for variant, (config_cls, model_cls, arch, meta_file) in VARIANTS.items():
        cfg = config_cls(**COMMON, **arch)
        model = model_cls(cfg).eval()
        model.config._attn_implementation = "eager"
        randomise(model, gen)
        vdir = OUT / variant
        vdir.mkdir(exist_ok=True)
        for stale in vdir.iterdir():
            stale.unlink()
        model.save_pretrained(vdir, safe_serialization=True)
        # Re-save the weights as float16 (values are float16-exact already) in save_pretrained's naming.
        hf = load_file(vdir / "model.safetensors")
        assert "encoder.layer.0.attention.attention.query.weight" in hf, sorted(hf)
        save_file({k: v.half().contiguous() for k, v in hf.items()}, vdir / "model.safetensors")
        meta = meta_state_dict(model, cfg)
        if meta_file.endswith(".pth"):
            torch.save(meta, vdir / meta_file)
        else:
            save_file(meta, vdir / meta_file)

        expected = {}
        with torch.no_grad():
            for tag, px in inputs.items():
                o = model(pixel_values=px.float(), output_hidden_states=True)
                hs = o.hidden_states
                assert len(hs) == cfg.num_hidden_layers + 1
                for i, h in enumerate(hs):
                    expected[f"{tag}.hidden.{i}"] = h[0]
                    if i > 0:
                        expected[f"{tag}.normed.{i}"] = model.layernorm(h)[0]
                last = expected[f"{tag}.normed.{cfg.num_hidden_layers}"]
                assert torch.allclose(o.last_hidden_state[0], last, atol=1e-6)
                assert torch.allclose(o.pooler_output[0], last[0], atol=1e-6)
                assert not torch.allclose(hs[-1][0], last, atol=1e-3)
        save_file({k: v.float().contiguous() for k, v in expected.items()}, vdir / "expected.safetensors")

    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size:8d}  {p.relative_to(OUT)}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
