"""Golden fixtures for crates/ssvp-model (the trainable SSVP head, its losses and one optimiser step).

Run by hand (never by CI) with the reference venv:
    /root/venvs/ssvp-ref/bin/python reference/gen_ssvp_head.py
Writes crates/ssvp-model/tests/fixtures/ssvp_head/ (read by crates/ssvp-model/tests/it/head_parity.rs):
  config.toml              the tiny SsvpConfig used here (Rust parses it with SsvpConfig::from_toml_str)
  params.safetensors       every trainable tensor, random and non-zero (also the ones that start at 0)
  inputs.safetensors       backbone features, stand-in text-encoder weights, VAE noise, masks, labels
  outputs.safetensors      train- and eval-mode maps, scores, T_final and every loss term
  grads.safetensors        d(total train loss)/d(every trainable tensor)
  steps.safetensors        parameters after one and after two AdamW steps (per-group lr, schedule)
  schedule.safetensors     lr multipliers of get_cosine_schedule_with_warmup for steps 0..12

This is an independent PyTorch implementation of docs/method.md (torch modules, SDPA, nn.LayerNorm,
F.interpolate, torch.optim.AdamW, transformers' scheduler), not a translation of the Rust code. It
computes in float64 from float32 parameters, so the fixtures hold the exact answer for those values.
"""

import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import get_cosine_schedule_with_warmup

OUT = Path(__file__).resolve().parent.parent / "crates/ssvp-model/tests/fixtures/ssvp_head"

# Tiny dimensions; every one differs from the others where possible so that a transposed weight
# or a swapped axis cannot pass by accident.
CFG = dict(
    clip_layers=[6, 12, 18, 24],
    clip_dim=16,
    dino_dim=24,
    atf_heads=2,
    atf_width=8,
    atf_mlp_hidden=12,
    prompts_per_state=3,
    context_len=2,
    state_len=3,
    text_width=10,
    vae_hidden=12,
    vae_latent=20,
    latent_tokens=4,
    inject_key_dim=6,
    tau_init=0.07,
    scale_gate_hidden=9,
    gamma=0.5,
)
# margin_floor is lowered from the paper's 0.85 so that some prompts sit above the floor and some
# below: both sides of the hinge are exercised.
LOSS = dict(kl_beta=0.1, vae_weight=1.0, margin_weight=0.5, margin_floor=0.45, focal_gamma=2.0)
OPT = dict(lr_prompts=5e-4, lr_rest=1e-4, beta1=0.5, beta2=0.999, eps=1e-8, weight_decay=0.01, warmup_fraction=0.2)
TOTAL_STEPS = 10
FIRST_STEP = 3  # the two optimiser steps use the schedule at steps 3 and 4
B, GRID, MASK = 2, (4, 4), (7, 7)
EPS = 1e-6


def mlp(*layers):
    return nn.Sequential(OrderedDict(layers))


class Atf(nn.Module):
    """Adaptive token fusion: bidirectional multi-head cross-attention, LN, concat, GELU MLP, residual."""

    def __init__(self, c):
        super().__init__()
        dc, dd, d = c["clip_dim"], c["dino_dim"], c["atf_width"]
        self.heads = c["atf_heads"]
        for side, dim in (("clip", dc), ("dino", dd)):
            # Keys carry no bias: a key bias adds the same logit to every key of a query, which the
            # softmax cancels, so it could never be trained.
            for p in "qkv":
                self.add_module(f"{side}_{p}", nn.Linear(dim, d, bias=p != "k"))
        self.norm_c2d = nn.LayerNorm(d, eps=1e-5)
        self.norm_d2c = nn.LayerNorm(d, eps=1e-5)
        self.mlp = mlp(("fc1", nn.Linear(2 * d, c["atf_mlp_hidden"])), ("act", nn.GELU()),
                       ("fc2", nn.Linear(c["atf_mlp_hidden"], dc)))

    def _split(self, x):
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def _cross(self, q, k, v):
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        b, h, n, dh = out.shape
        return out.transpose(1, 2).reshape(b, n, h * dh)

    def forward(self, fc, fd):
        c_to_d = self._cross(self.clip_q(fc), self.dino_k(fd), self.dino_v(fd))
        d_to_c = self._cross(self.dino_q(fd), self.clip_k(fc), self.clip_v(fc))
        joint = torch.cat([self.norm_c2d(c_to_d), self.norm_d2c(d_to_c)], dim=-1)
        return fc + self.mlp(joint)


class Hsvs(nn.Module):
    def __init__(self, c):
        super().__init__()
        # model.clip_adapter: a trainable Linear(D_c -> D_c) per scale on the CLIP patch features.
        self.clip_adapters = nn.ModuleList([nn.Linear(c["clip_dim"], c["clip_dim"]) for _ in c["clip_layers"]])
        self.scales = nn.ModuleList([Atf(c) for _ in c["clip_layers"]])
        self.add_module("global", Atf(c))


def softplus_mlp(i, h, o):
    return mlp(("fc1", nn.Linear(i, h)), ("a1", nn.Softplus()), ("fc2", nn.Linear(h, h)), ("a2", nn.Softplus()),
               ("fc3", nn.Linear(h, o)))


class Prompts(nn.Module):
    def __init__(self, c):
        super().__init__()
        p, w = c["prompts_per_state"], c["text_width"]
        self.context = nn.Parameter(torch.empty(p, c["context_len"], w))
        self.normal_state = nn.Parameter(torch.empty(p, c["state_len"], w))
        self.abnormal_state = nn.Parameter(torch.empty(p, c["state_len"], w))

    def tokens(self):
        normal = torch.cat([self.context, self.normal_state], dim=1)
        abnormal = torch.cat([self.context, self.abnormal_state], dim=1)
        return torch.cat([normal, abnormal], dim=0)


class Vae(nn.Module):
    def __init__(self, c):
        super().__init__()
        dc, h, dz = c["clip_dim"], c["vae_hidden"], c["vae_latent"]
        self.mu = softplus_mlp(dc, h, dz)
        self.logvar = softplus_mlp(dc, h, dz)
        self.decoder = softplus_mlp(dz, h, dc)
        self.decoder_out = nn.Linear(dc, dc)


class Inject(nn.Module):
    def __init__(self, c):
        super().__init__()
        tok = c["vae_latent"] // c["latent_tokens"]
        self.q = nn.Linear(c["clip_dim"], c["inject_key_dim"])
        self.k = nn.Linear(tok, c["inject_key_dim"], bias=False)
        self.v = nn.Linear(tok, c["clip_dim"])
        self.alpha = nn.Parameter(torch.zeros(1))
        self.norm = nn.LayerNorm(c["clip_dim"], eps=1e-5)


class Vcpg(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.prompts = Prompts(c)
        self.vae = Vae(c)
        self.inject = Inject(c)


class Vtam(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(1 / c["tau_init"])))
        self.scale_gate = mlp(("fc1", nn.Linear(c["clip_dim"], c["scale_gate_hidden"])), ("act", nn.GELU()),
                              ("fc2", nn.Linear(c["scale_gate_hidden"], len(c["clip_layers"]))))
        self.local_gates = nn.ModuleList([nn.Linear(c["clip_dim"], 1) for _ in c["clip_layers"]])


class Head(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.hsvs = Hsvs(c)
        self.vcpg = Vcpg(c)
        self.vtam = Vtam(c)

    def forward(self, clip_local, dino_local, clip_global, dino_global, t_init, noise):
        c, P = self.c, self.c["prompts_per_state"]
        v_local = [
            blk(ad(fc), fd)
            for ad, blk, fc, fd in zip(self.hsvs.clip_adapters, self.hsvs.scales, clip_local, dino_local)
        ]
        v_global = getattr(self.hsvs, "global")(clip_global[:, None], dino_global[:, None])[:, 0]

        vae = self.vcpg.vae
        mu, logvar = vae.mu(v_global), vae.logvar(v_global)
        z = mu if noise is None else mu + noise * torch.exp(0.5 * logvar)
        recon = vae.decoder_out(vae.decoder(z))

        inj = self.vcpg.inject
        latent = z.view(z.shape[0], c["latent_tokens"], -1)
        q, k, v = inj.q(t_init), inj.k(latent), inj.v(latent)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
        t_final = inj.norm(t_init + inj.alpha * (attn @ v))
        margin = F.relu(LOSS["margin_floor"] - F.cosine_similarity(t_final, t_init.detach(), dim=-1)).mean()

        scale = self.vtam.log_logit_scale.exp()
        text = F.normalize(t_final, dim=-1)

        def anomaly_prob(feat):
            logits = scale * torch.einsum("bnd,bpd->bnp", F.normalize(feat, dim=-1), text)
            pair = torch.stack([logits[..., :P], logits[..., P:]], dim=-1)
            return torch.softmax(pair, dim=-1)[..., 1].mean(dim=-1)

        maps = [anomaly_prob(f) for f in v_local]
        gates = [torch.sigmoid(g(f))[..., 0] for g, f in zip(self.vtam.local_gates, v_local)]
        weights = torch.softmax(self.vtam.scale_gate(v_global), dim=-1)
        fused = sum(weights[:, l:l + 1] * gates[l] * maps[l] for l in range(len(maps)))
        s_global = anomaly_prob(v_global[:, None])[:, 0]
        s_local = fused.amax(dim=1)
        score = (1 - c["gamma"]) * s_global + c["gamma"] * s_local
        return dict(v_local=v_local, v_global=v_global, mu=mu, logvar=logvar, z=z, recon=recon, t_final=t_final,
                    margin=margin, maps=maps, gates=gates, weights=weights, fused=fused, s_global=s_global,
                    s_local=s_local, score=score)


def losses(o, masks, labels):
    h, w = GRID

    def up(m):
        return F.interpolate(m.reshape(B, 1, h, w), size=masks.shape[1:], mode="bilinear", align_corners=True)[:, 0]

    def focal(p, y):
        p = p.clamp(EPS, 1 - EPS)
        g = LOSS["focal_gamma"]
        return -(y * (1 - p) ** g * torch.log(p) + (1 - y) * p ** g * torch.log(1 - p)).mean()

    def dice(p, y):
        p, y = p.flatten(1), y.flatten(1)
        return (1 - (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)).mean()

    t = {}
    t["focal_scales"] = sum(focal(up(m), masks) for m in o["maps"])
    t["dice_scales"] = sum(dice(up(m), masks) for m in o["maps"])
    t["focal_fused"] = focal(up(o["fused"]), masks)
    t["dice_fused"] = dice(up(o["fused"]), masks)
    t["seg"] = t["focal_scales"] + t["dice_scales"] + t["focal_fused"] + t["dice_fused"]
    t["class"] = F.binary_cross_entropy(o["score"].clamp(EPS, 1 - EPS), labels)
    t["vae_recon"] = F.mse_loss(o["recon"], o["v_global"])
    t["vae_kl"] = (-0.5 * (1 + o["logvar"] - o["mu"] ** 2 - o["logvar"].exp())).mean()
    t["vae"] = t["vae_recon"] + LOSS["kl_beta"] * t["vae_kl"]
    t["margin"] = o["margin"]
    t["total"] = t["seg"] + t["class"] + LOSS["vae_weight"] * t["vae"] + LOSS["margin_weight"] * t["margin"]
    return t


def stand_in_t_init(head, w, class_bias):
    """A differentiable stand-in for the CLIP text tower: tanh(mean over tokens @ W + per-image class bias)."""
    pooled = head.vcpg.prompts.tokens().mean(dim=1)  # [2P, text_width]
    return torch.tanh(pooled @ w + class_bias[:, None, :])  # [B, 2P, D_c]


def is_inert(name):
    """Q/K projections of the global ATF: with one token per side the attention weight is identically 1,
    so they cannot influence anything. The Rust head does not create them; here they are kept (and
    the global block runs the full attention) to show that dropping them is exact."""
    return any(name.startswith(f"hsvs.global.{s}_{p}.") for s in ("clip", "dino") for p in "qk")


def is_prompt_group(name):
    return name.startswith("vcpg.prompts.") or name == "vcpg.inject.alpha"


def config_toml():
    c, l, o = CFG, LOSS, OPT
    return f"""# Tiny SSVP head used by the parity fixtures (written by reference/gen_ssvp_head.py).
[model]
clip_layers = {c['clip_layers']}
dino_layers = "paper_literal"
clip_dim = {c['clip_dim']}
clip_adapter = true
dino_dim = {c['dino_dim']}
atf_heads = {c['atf_heads']}
atf_width = {c['atf_width']}
atf_mlp_hidden = {c['atf_mlp_hidden']}
prompts_per_state = {c['prompts_per_state']}
context_len = {c['context_len']}
state_len = {c['state_len']}
text_width = {c['text_width']}
vae_hidden = {c['vae_hidden']}
vae_latent = {c['vae_latent']}
latent_tokens = {c['latent_tokens']}
inject_key_dim = {c['inject_key_dim']}
tau_init = {c['tau_init']}
tau_learnable = true
scale_gate_hidden = {c['scale_gate_hidden']}
gamma = {c['gamma']}
local_score = {{ kind = "max" }}

[loss]
kl_beta = {l['kl_beta']}
vae_weight = {l['vae_weight']}
margin_weight = {l['margin_weight']}
margin_floor = {l['margin_floor']}
focal_gamma = {l['focal_gamma']}
seg_on_scales = true
seg_on_fused = true
dice = true
class_loss = "bce_on_score"

[optim]
lr_prompts = {o['lr_prompts']}
lr_rest = {o['lr_rest']}
beta1 = {o['beta1']}
beta2 = {o['beta2']}
eps = {o['eps']}
weight_decay = {o['weight_decay']}
warmup_fraction = {o['warmup_fraction']}
cosine_decay = true

[postprocess]
upsample_align_corners = true
"""


def main():
    torch.manual_seed(20260119)
    head = Head(CFG)
    # Random, non-zero values everywhere, including what starts at 0 (last ATF layers, α) and the
    # gate biases: otherwise whole gradient paths would vanish and the comparison would prove nothing.
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("norm_c2d.weight") or name.endswith("norm_d2c.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name == "vtam.log_logit_scale":
                p.copy_(torch.tensor([math.log(1 / CFG["tau_init"]) - 0.7]))
            elif name == "vcpg.inject.alpha":
                p.copy_(torch.tensor([0.8]))
            elif name.startswith("vcpg.prompts."):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 4
                p.copy_(torch.randn_like(p) / math.sqrt(fan_in))
    params32 = {n: p.detach().clone().contiguous() for n, p in head.named_parameters() if not is_inert(n)}

    dc, dd, n = CFG["clip_dim"], CFG["dino_dim"], GRID[0] * GRID[1]
    L = len(CFG["clip_layers"])
    inputs = {}
    for l in range(L):
        inputs[f"clip_local.{l}"] = torch.randn(B, n, dc)
        inputs[f"dino_local.{l}"] = torch.randn(B, n, dd)
    inputs["clip_global"] = torch.randn(B, dc)
    inputs["dino_global"] = torch.randn(B, dd)
    inputs["text_w"] = torch.randn(CFG["text_width"], dc) / math.sqrt(CFG["text_width"]) * 2
    inputs["class_bias"] = 0.5 * torch.randn(B, dc)
    inputs["noise"] = torch.randn(B, CFG["vae_latent"])
    masks = torch.zeros(B, *MASK)
    masks[1, 2:5, 1:4] = 1.0
    masks[1, 5, 5] = 1.0
    inputs["masks"] = masks
    inputs["labels"] = torch.tensor([0.0, 1.0])

    head = head.double()
    x = {k: v.double() for k, v in inputs.items()}
    clip_local = [x[f"clip_local.{l}"] for l in range(L)]
    dino_local = [x[f"dino_local.{l}"] for l in range(L)]

    def run(noise):
        t_init = stand_in_t_init(head, x["text_w"], x["class_bias"])
        o = head(clip_local, dino_local, x["clip_global"], x["dino_global"], t_init, noise)
        o["t_init"] = t_init
        return o, losses(o, x["masks"], x["labels"])

    outputs = {}
    for mode, noise in (("train", x["noise"]), ("eval", None)):
        o, t = run(noise)
        for l in range(L):
            outputs[f"{mode}.scale_maps.{l}"] = o["maps"][l].reshape(B, *GRID)
            outputs[f"{mode}.local_gates.{l}"] = o["gates"][l].reshape(B, *GRID)
            outputs[f"{mode}.local_features.{l}"] = o["v_local"][l]
        for k in ("v_global", "t_init", "t_final", "weights", "s_global", "s_local", "score", "z", "recon"):
            outputs[f"{mode}.{k}"] = o[k]
        outputs[f"{mode}.fused_map"] = o["fused"].reshape(B, *GRID)
        for k, v in t.items():
            outputs[f"{mode}.loss.{k}"] = v.reshape(1)
        print(mode, {k: round(float(v.detach()), 5) for k, v in t.items()})
        print(mode, "score", o["score"].tolist(), "margin cos",
              F.cosine_similarity(o["t_final"], o["t_init"], dim=-1).flatten().tolist())

    head.zero_grad()
    _, t = run(x["noise"])
    t["total"].backward()
    grads = {n: p.grad.detach().clone() for n, p in head.named_parameters()}
    for name, g in grads.items():
        if is_inert(name):
            assert g.abs().max() == 0, f"{name} should be inert"
        else:
            assert g.abs().max() > 1e-6, f"gradient of {name} vanishes: the fixture would prove nothing"
    grads = {n: g for n, g in grads.items() if not is_inert(n)}

    named = list(head.named_parameters())
    groups = [
        {"params": [p for nm, p in named if is_prompt_group(nm)], "lr": OPT["lr_prompts"]},
        {"params": [p for nm, p in named if not is_prompt_group(nm)], "lr": OPT["lr_rest"]},
    ]
    opt = torch.optim.AdamW(groups, betas=(OPT["beta1"], OPT["beta2"]), eps=OPT["eps"],
                            weight_decay=OPT["weight_decay"])
    warmup = int(OPT["warmup_fraction"] * TOTAL_STEPS)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=TOTAL_STEPS)
    factors = []
    for step in range(13):
        factors.append(sched.lr_lambdas[0](step))
    for _ in range(FIRST_STEP):
        sched.step()
    steps = {}
    for k in (1, 2):
        opt.zero_grad()
        _, t = run(x["noise"])
        t["total"].backward()
        opt.step()
        sched.step()
        for nm, p in head.named_parameters():
            if is_inert(nm):
                continue
            steps[f"step{k}.{nm}"] = p.detach().clone()

    def f32(d):
        return {k: v.detach().to(torch.float32).contiguous() for k, v in d.items()}

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "config.toml").write_text(config_toml())
    save_file(f32(params32), OUT / "params.safetensors")
    save_file(f32(inputs), OUT / "inputs.safetensors")
    save_file(f32(outputs), OUT / "outputs.safetensors")
    save_file(f32(grads), OUT / "grads.safetensors")
    save_file(f32(steps), OUT / "steps.safetensors")
    save_file({"factors": torch.tensor(factors, dtype=torch.float64),
               "meta": torch.tensor([TOTAL_STEPS, warmup, FIRST_STEP], dtype=torch.int64)},
              OUT / "schedule.safetensors")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(params32)} parameters, fixtures {total / 1024:.1f} KiB in {OUT}")


if __name__ == "__main__":
    main()
