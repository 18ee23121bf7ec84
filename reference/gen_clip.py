"""Golden fixtures for the Rust CLIP backbone (crates/ssvp-backbones/tests/clip_*.rs).

Run by hand (never by CI):  /root/venvs/ssvp-ref/bin/python reference/gen_clip.py

Two tiny random-weight HF `CLIPModel`s (fixed seeds) are built with transformers, then:
- model A (QuickGELU, patch 4, 16 px, 4x4 grid) is written in HF naming (`model.safetensors`,
  `config.json`) and in OpenAI/open_clip naming (`open_clip_model.safetensors`, converted per
  docs/formats.md §1.3(d));
- model B (GELU, patch 8, 32 px, 4x4 grid) in OpenAI naming as a `torch.save` zip (`model.pth`),
  and its vision tower alone in timm naming (`timm_vision.safetensors`).
References, all from transformers' CLIPModel unless said otherwise:
- vision hidden states (HF hidden_states[i]), patch features (visual_projection(post_layernorm(.))
  of every token) and image embeddings at the native grid, at a 7x7 grid with HF
  interpolate_pos_encoding (bicubic), at 7x7 with a bilinear (align_corners=False) table
  (AnomalyCLIP's resample, done here with F.interpolate and run through an HF model built for that
  grid), and at a rectangular 4x7 grid (bicubic);
- DPAM (AnomalyCLIP's V-V dual-path attention) from a re-implementation of their module written
  from docs/formats.md §3;
- text embeddings from token ids; and, from token embeddings with inserted learnable prompt
  vectors and deep prompts, the projected EOT feature and the gradients of
  sum(text_embed * R) w.r.t. the prompt vectors and deep prompts (torch autograd).
"""

import json
import math
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "ssvp-backbones", "tests", "fixtures", "clip")

torch.set_num_threads(2)


def make_model(seed, vision, text, projection_dim, act):
    torch.manual_seed(seed)
    vision = dict(vision, hidden_act=act)
    text = dict(text, hidden_act=act)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    cfg._attn_implementation = "eager"
    model = CLIPModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        # Random everything (not HF's init, whose LayerNorms are exactly 1/0 and would hide
        # ln_1/ln_2 or weight/bias mix-ups).
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(math.log(100.0))
            elif "norm" in name or "layrnorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2 and "embedding" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return model, cfg


def hf_state(model):
    return OrderedDict(
        (k, v.detach().clone().contiguous())
        for k, v in model.state_dict().items()
        if not k.endswith("position_ids")
    )


def to_openai(sd, text_prefix=""):
    """HF CLIPModel names -> OpenAI/open_clip names (docs/formats.md §1.3(d), inverted)."""
    out = OrderedDict()

    def blocks(hf_prefix, oa_prefix):
        n = 0
        while f"{hf_prefix}.{n}.self_attn.q_proj.weight" in sd:
            h, o = f"{hf_prefix}.{n}", f"{oa_prefix}.{n}"
            for kind in ["weight", "bias"]:
                out[f"{o}.attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{h}.self_attn.{p}_proj.{kind}"] for p in "qkv"], 0
                ).contiguous()
            for hf_mod, oa_mod in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ]:
                for kind in ["weight", "bias"]:
                    out[f"{o}.{oa_mod}.{kind}"] = sd[f"{h}.{hf_mod}.{kind}"]
            n += 1

    if "vision_model.embeddings.patch_embedding.weight" in sd:
        e = "vision_model.embeddings"
        out["visual.conv1.weight"] = sd[f"{e}.patch_embedding.weight"]
        out["visual.class_embedding"] = sd[f"{e}.class_embedding"]
        out["visual.positional_embedding"] = sd[f"{e}.position_embedding.weight"]
        for kind in ["weight", "bias"]:
            out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
            out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
        blocks("vision_model.encoder.layers", "visual.transformer.resblocks")
        out["visual.proj"] = sd["visual_projection.weight"].t().contiguous()
    t = text_prefix
    e = "text_model.embeddings"
    out[f"{t}token_embedding.weight"] = sd[f"{e}.token_embedding.weight"]
    out[f"{t}positional_embedding"] = sd[f"{e}.position_embedding.weight"]
    blocks("text_model.encoder.layers", f"{t}transformer.resblocks")
    for kind in ["weight", "bias"]:
        out[f"{t}ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
    out[f"{t}text_projection"] = sd["text_projection.weight"].t().contiguous()
    out["logit_scale"] = sd["logit_scale"]
    # open_clip's causal-mask buffer, which the loader must drop.
    ctx = sd[f"{e}.position_embedding.weight"].shape[0]
    out[f"{t}attn_mask"] = torch.full((ctx, ctx), float("-inf")).triu(1)
    return OrderedDict((k, v.clone().contiguous()) for k, v in out.items())


def to_timm(sd):
    out = OrderedDict()
    e = "vision_model.embeddings"
    out["cls_token"] = sd[f"{e}.class_embedding"].reshape(1, 1, -1)
    out["pos_embed"] = sd[f"{e}.position_embedding.weight"].unsqueeze(0)
    out["patch_embed.proj.weight"] = sd[f"{e}.patch_embedding.weight"]
    for kind in ["weight", "bias"]:
        out[f"norm_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"norm.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
    n = 0
    while f"vision_model.encoder.layers.{n}.self_attn.q_proj.weight" in sd:
        h = f"vision_model.encoder.layers.{n}"
        for kind in ["weight", "bias"]:
            out[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat(
                [sd[f"{h}.self_attn.{p}_proj.{kind}"] for p in "qkv"], 0
            )
            out[f"blocks.{n}.attn.proj.{kind}"] = sd[f"{h}.self_attn.out_proj.{kind}"]
            out[f"blocks.{n}.norm1.{kind}"] = sd[f"{h}.layer_norm1.{kind}"]
            out[f"blocks.{n}.norm2.{kind}"] = sd[f"{h}.layer_norm2.{kind}"]
            out[f"blocks.{n}.mlp.fc1.{kind}"] = sd[f"{h}.mlp.fc1.{kind}"]
            out[f"blocks.{n}.mlp.fc2.{kind}"] = sd[f"{h}.mlp.fc2.{kind}"]
        n += 1
    out["head.weight"] = sd["visual_projection.weight"]
    out["head.bias"] = torch.zeros(sd["visual_projection.weight"].shape[0])
    return OrderedDict((k, v.clone().contiguous()) for k, v in out.items())


def vision_refs(model, pixels, layers, interpolate):
    with torch.no_grad():
        out = model.vision_model(
            pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=interpolate
        )
        # hidden_states[0] is the pre_layrnorm output, [i] the raw output of block i.
        assert len(out.hidden_states) == model.config.vision_config.num_hidden_layers + 1
        hidden = [out.hidden_states[i] for i in layers]
        patch = [model.visual_projection(model.vision_model.post_layernorm(h)) for h in hidden]
        image = model.visual_projection(out.pooler_output)
        direct = model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=interpolate)
        direct = getattr(direct, "pooler_output", direct)
        assert torch.allclose(image, direct, atol=1e-6)
    return hidden, patch, image


def resampled_table(model, rows, cols, mode):
    pos = model.vision_model.embeddings.position_embedding.weight.detach()
    g = int(round(math.sqrt(pos.shape[0] - 1)))
    grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode=mode, align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1)], 0)


def model_for_grid(model, cfg, side, table):
    """An HF model whose native grid is side x side, carrying `table` as its positional table."""
    vcfg = cfg.vision_config.to_dict()
    vcfg["image_size"] = side * cfg.vision_config.patch_size
    cfg2 = CLIPConfig(
        text_config=cfg.text_config.to_dict(), vision_config=vcfg, projection_dim=cfg.projection_dim
    )
    cfg2._attn_implementation = "eager"
    m2 = CLIPModel(cfg2).eval()
    sd = model.state_dict()
    sd["vision_model.embeddings.position_embedding.weight"] = table
    sd.pop("vision_model.embeddings.position_ids", None)
    missing, unexpected = m2.load_state_dict(sd, strict=False)
    assert all(k.endswith("position_ids") for k in missing), missing
    assert not unexpected, unexpected
    return m2


# --- AnomalyCLIP's dual-path attention, re-implemented from docs/formats.md §3 -------------
class DualPathAttention(torch.nn.Module):
    """AnomalyCLIP `Attention`: one fused qkv (the in_proj), returns (vv, ori)."""

    def __init__(self, hf_attn):
        super().__init__()
        d = hf_attn.embed_dim
        self.heads = hf_attn.num_heads
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        with torch.no_grad():
            self.qkv.weight.copy_(
                torch.cat([hf_attn.q_proj.weight, hf_attn.k_proj.weight, hf_attn.v_proj.weight], 0)
            )
            self.qkv.bias.copy_(
                torch.cat([hf_attn.q_proj.bias, hf_attn.k_proj.bias, hf_attn.v_proj.bias], 0)
            )
            self.proj.load_state_dict(hf_attn.out_proj.state_dict())
        self.scale = (d // self.heads) ** -0.5

    def forward(self, x):  # x: [N, B, C] as in OpenAI's sequence-first layout
        n, b, c = x.shape
        qkv = self.qkv(x).reshape(n, b, 3, self.heads, c // self.heads).permute(2, 1, 3, 0, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, hd]
        ori = (q @ k.transpose(-2, -1) * self.scale).softmax(-1) @ v
        vv = (v @ v.transpose(-2, -1) * self.scale).softmax(-1) @ v
        ori = ori.permute(2, 0, 1, 3).reshape(n, b, c)
        vv = vv.permute(2, 0, 1, 3).reshape(n, b, c)
        return self.proj(vv), self.proj(ori)


def dpam_forward(model, pixels, table, dpam_from, layers):
    """AnomalyCLIP's VisionTransformer.forward with blocks >= dpam_from replaced (ffn=False)."""
    vm = model.vision_model
    emb = vm.embeddings
    with torch.no_grad():
        x = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + table
        x = vm.pre_layrnorm(x).permute(1, 0, 2)  # [N, B, C]
        state = x  # ordinary blocks carry a tensor; replaced blocks a [vv, ori] pair
        collected = {}
        for i, layer in enumerate(vm.encoder.layers):
            block = i + 1
            if block < dpam_from:
                h = layer.layer_norm1(state)
                a = layer.self_attn(h.permute(1, 0, 2), None)[0].permute(1, 0, 2)
                state = state + a
                state = state + layer.mlp(layer.layer_norm2(state))
                current = state
            else:
                if not isinstance(state, list):
                    state = [state, state]
                x_vv, x_ori = state
                a_vv, a_ori = DualPathAttention(layer.self_attn)(layer.layer_norm1(x_ori))
                x_vv = x_vv + a_vv  # no MLP on the v-v path
                x_ori = x_ori + a_ori
                x_ori = x_ori + layer.mlp(layer.layer_norm2(x_ori))
                state = [x_vv, x_ori]
                current = x_vv
            if block in layers:
                collected[block] = current.permute(1, 0, 2).clone()
        x_ori = state[1] if isinstance(state, list) else state
        cls_final = x_ori.permute(1, 0, 2)[:, 0]
        image = model.visual_projection(vm.post_layernorm(cls_final))
        hidden = [collected[l] for l in layers]
        patch = [model.visual_projection(vm.post_layernorm(h)) for h in hidden]
    return hidden, patch, image


# --- text ------------------------------------------------------------------------------------
def random_ids(g, vocab, ctx, lengths):
    """[SOS, random body, EOT, 0-padding] rows; SOS = vocab-2, EOT = vocab-1 (the max id)."""
    rows = []
    for n in lengths:
        body = torch.randint(1, vocab - 2, (n,), generator=g).tolist()
        row = [vocab - 2] + body + [vocab - 1]
        rows.append(row + [0] * (ctx - len(row)))
    return torch.tensor(rows, dtype=torch.int64)


def text_forward_embeds(model, embeds, eot, deep_prompts):
    """CLIP text forward from token embeddings, with AnomalyCLIP deep prompts replacing positions
    1..=n at the input of layers 2..; uses the HF layers with an explicit causal mask."""
    tm = model.text_model
    b, n, _ = embeds.shape
    x = embeds + tm.embeddings.position_embedding.weight[:n]
    mask = torch.full((n, n), float("-inf")).triu(1).reshape(1, 1, n, n)
    for i, layer in enumerate(tm.encoder.layers):
        if i >= 1 and i - 1 < len(deep_prompts):
            p = deep_prompts[i - 1]
            p = p.unsqueeze(0).expand(b, -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1 + p.shape[1]:]], 1)
        x = layer(x, mask)
    x = tm.final_layer_norm(x)
    pooled = x[torch.arange(b), torch.tensor(eot)]
    return model.text_projection(pooled)


def text_refs(model, ids, n_ctx, n_deep, seed):
    g = torch.Generator().manual_seed(seed)
    width = model.config.text_config.hidden_size
    depth = model.config.text_config.num_hidden_layers
    with torch.no_grad():
        text_embed = model.get_text_features(input_ids=ids)
        text_embed = getattr(text_embed, "pooler_output", text_embed)
    eot = ids.argmax(-1).tolist()
    # Learnable context vectors replace positions 1..=n_ctx of the token embeddings.
    ctx = (0.5 * torch.randn(n_ctx, width, generator=g)).requires_grad_(True)
    deep = [
        (0.5 * torch.randn(n_deep, width, generator=g)).requires_grad_(True)
        for _ in range(depth - 1)
    ]
    r = torch.randn(ids.shape[0], model.config.projection_dim, generator=g)
    tok = model.text_model.embeddings.token_embedding(ids).detach()
    b = ids.shape[0]
    embeds = torch.cat([tok[:, :1], ctx.unsqueeze(0).expand(b, -1, -1), tok[:, 1 + n_ctx:]], 1)
    for p in model.parameters():
        p.requires_grad_(False)
    out = text_forward_embeds(model, embeds, eot, deep)
    loss = (out * r).sum()
    loss.backward()
    # Same path without deep prompts must equal HF's own forward when ctx = the true embeddings.
    with torch.no_grad():
        check = text_forward_embeds(model, tok, eot, [])
        assert torch.allclose(check, text_embed, atol=1e-5), (check - text_embed).abs().max()
    refs = {
        "text_embed": text_embed,
        "prompt.ctx": ctx.detach(),
        "prompt.r": r,
        "prompt.text_embed": out.detach(),
        "prompt.grad_ctx": ctx.grad,
    }
    for j, d in enumerate(deep):
        refs[f"prompt.deep.{j}"] = d.detach()
        refs[f"prompt.grad_deep.{j}"] = d.grad
    return refs


def put_vision(refs, tag, layers, hidden, patch, image):
    for l, h, p in zip(layers, hidden, patch):
        refs[f"{tag}.hidden.{l}"] = h
        refs[f"{tag}.patch.{l}"] = p
    refs[f"{tag}.image_embed"] = image


def save_refs(refs, name):
    refs = {k: v.detach().to(torch.float32).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in refs.items()}
    save_file(refs, os.path.join(OUT, name))


def main():
    os.makedirs(OUT, exist_ok=True)

    # ---------------- model A: QuickGELU, patch 4, 16 px ----------------
    a, cfg_a = make_model(
        0,
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                    num_attention_heads=4, image_size=16, patch_size=4),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, vocab_size=64, max_position_embeddings=77,
                  bos_token_id=62, eos_token_id=63, pad_token_id=0),
        projection_dim=24,
        act="quick_gelu",
    )
    sd = hf_state(a)
    save_file(sd, os.path.join(OUT, "a_hf.safetensors"))
    cfg_json = cfg_a.to_dict()
    with open(os.path.join(OUT, "a_hf_config.json"), "w") as f:
        json.dump(cfg_json, f, indent=1, sort_keys=True, default=str)
    save_file(to_openai(sd), os.path.join(OUT, "a_openai.safetensors"))

    g = torch.Generator().manual_seed(7)
    refs = {}
    layers = [1, 2, 3]
    px16 = torch.randn(2, 3, 16, 16, generator=g)
    px28 = torch.randn(1, 3, 28, 28, generator=g)
    px_rect = torch.randn(1, 3, 16, 28, generator=g)
    refs["pixels.native"], refs["pixels.7x7"], refs["pixels.4x7"] = px16, px28, px_rect

    put_vision(refs, "native", layers, *vision_refs(a, px16, layers, False))
    put_vision(refs, "bicubic7", layers, *vision_refs(a, px28, layers, True))
    put_vision(refs, "rect4x7", layers, *vision_refs(a, px_rect, layers, True))
    bil = model_for_grid(a, cfg_a, 7, resampled_table(a, 7, 7, "bilinear"))
    put_vision(refs, "bilinear7", layers, *vision_refs(bil, px28, layers, False))
    # DPAM from block 2, at 7x7 with the bilinear table (AnomalyCLIP's setting), and at native.
    put_vision(refs, "dpam2_bilinear7", layers,
               *dpam_forward(a, px28, resampled_table(a, 7, 7, "bilinear"), 2, layers))
    pos = a.vision_model.embeddings.position_embedding.weight.detach()
    put_vision(refs, "dpam3_native", layers, *dpam_forward(a, px16, pos, 3, layers))
    # Cross-check the DPAM re-implementation: with dpam_from beyond the depth it is the plain model.
    h, p, i = dpam_forward(a, px16, pos, 99, layers)
    assert torch.allclose(i, refs["native.image_embed"], atol=1e-5)

    ids_a = random_ids(g, 64, 77, [3, 9, 20])
    refs["text.ids"] = ids_a
    refs.update(text_refs(a, ids_a, n_ctx=4, n_deep=2, seed=11))
    save_refs(refs, "a_ref.safetensors")

    # ---------------- model B: GELU, patch 8, 32 px; OpenAI .pth + timm vision ----------------
    b, cfg_b = make_model(
        1,
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, image_size=32, patch_size=8),
        text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=2, vocab_size=50, max_position_embeddings=77,
                  bos_token_id=48, eos_token_id=49, pad_token_id=0),
        projection_dim=16,
        act="gelu",
    )
    sd_b = hf_state(b)
    torch.save(to_openai(sd_b, text_prefix="text."), os.path.join(OUT, "b_openai_customtext.pth"))
    save_file(to_timm(sd_b), os.path.join(OUT, "b_timm_vision.safetensors"))

    g = torch.Generator().manual_seed(8)
    refs = {}
    layers = [1, 2]
    px32 = torch.randn(2, 3, 32, 32, generator=g)
    px_rect = torch.randn(2, 3, 24, 40, generator=g)  # 3x5 grid: down on rows, up on columns
    refs["pixels.native"], refs["pixels.3x5"] = px32, px_rect
    put_vision(refs, "native", layers, *vision_refs(b, px32, layers, False))
    put_vision(refs, "rect3x5", layers, *vision_refs(b, px_rect, layers, True))
    ids_b = random_ids(g, 50, 77, [5, 12])
    refs["text.ids"] = ids_b
    refs.update(text_refs(b, ids_b, n_ctx=3, n_deep=2, seed=12))
    save_refs(refs, "b_ref.safetensors")

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
