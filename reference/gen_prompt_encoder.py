"""Reference fixtures for the learnable-prompt text encoder (crates/ssvp-model/src/features/prompt.rs).

Run by hand (never by CI):
    /root/venvs/ssvp-ref/bin/pip install --no-deps clip-anytorch==2.6.0   # OpenAI's simple_tokenizer.py, MIT
    /root/venvs/ssvp-ref/bin/python reference/gen_prompt_encoder.py

The reference is transformers' own `CLIPTextModelWithProjection` forward (full 77-token padded
context, its causal mask, its EOT pooling) on a tiny random-weight model; the learnable vectors are
spliced in by a forward hook on the token embedding, which replaces the embeddings of the
placeholder words of "X X ... X <class name>." (Bayes-PFL's template, one "X" per learnable token;
tokenised by OpenAI's simple_tokenizer). Gradients come from torch autograd of
sum(text_embeds * R) with a fixed random R.

Writes crates/ssvp-model/tests/fixtures/prompt_encoder/:
- weights.safetensors: every text-tower tensor under HF names except the 49,408-row token
  embedding; of that only the rows the prompts use (`token_rows` [K, W] with their ids
  `token_ids` [K]); the Rust test rebuilds the full table with zeros elsewhere.
- cases.safetensors: per case c, `c.ids` [77], `c.prompt` [P, L, W], `c.r` [P, D],
  `c.text_embed` [P, D], `c.grad` [P, L, W].
- cases.json: the config and the class name, slot count and EOT position of each case.
Read by crates/ssvp-model/tests/it/prompt_encoder.rs.
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/ssvp-model/tests/fixtures/prompt_encoder"

CONFIG = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=24,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
# (class name, learnable tokens, prompts)
CASES = [("bottle", 10, 6), ("printed circuit board", 10, 6), ("metal nut", 4, 2), ("xylophone box", 3, 2)]
SOT, EOT, CONTEXT = 49406, 49407, 77


def load_openai_tokenizer():
    for p in sys.path:
        cand = Path(p) / "clip" / "simple_tokenizer.py"
        if cand.exists():
            spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", cand)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod.SimpleTokenizer()
    raise SystemExit("install clip-anytorch (see the docstring)")


def tokenize(tok, text):
    ids = [SOT] + tok.encode(text) + [EOT]
    assert len(ids) <= CONTEXT
    return ids + [0] * (CONTEXT - len(ids))


def main():
    torch.manual_seed(0)
    tok = load_openai_tokenizer()
    model = CLIPTextModelWithProjection(CLIPTextConfig(**CONFIG)).eval()
    # Non-trivial norms and biases (the default init makes them 1 and 0).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    width = CONFIG["hidden_size"]
    placeholder = tok.encode("X")
    assert len(placeholder) == 1

    splice = {}

    def hook(_module, _inputs, output):
        # output: [P, 77, W] token embeddings; replace positions 1..=L by the learnable vectors.
        prompt = splice["prompt"]
        n = prompt.shape[1]
        return torch.cat([output[:, :1], prompt, output[:, 1 + n :]], dim=1)

    model.text_model.embeddings.token_embedding.register_forward_hook(hook)

    tensors, meta, used = {}, [], set()
    for c, (name, slots, prompts) in enumerate(CASES):
        text = " ".join(["X"] * slots) + " " + name + "."
        ids = tokenize(tok, text)
        assert ids[1 : 1 + slots] == placeholder * slots, (text, ids)
        used.update(i for i in ids)
        gen = torch.Generator().manual_seed(100 + c)
        prompt = (0.02 * torch.randn(prompts, slots, width, generator=gen)).requires_grad_(True)
        r = torch.randn(prompts, CONFIG["projection_dim"], generator=gen)
        splice["prompt"] = prompt
        batch = torch.tensor([ids] * prompts)
        out = model(input_ids=batch).text_embeds
        (out * r).sum().backward()
        tensors[f"{c}.ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"{c}.prompt"] = prompt.detach().clone()
        tensors[f"{c}.r"] = r
        tensors[f"{c}.text_embed"] = out.detach().clone()
        tensors[f"{c}.grad"] = prompt.grad.clone()
        meta.append(dict(class_name=name, slots=slots, prompts=prompts, eot=ids.index(EOT), text=text))

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    table = sd.pop("text_model.embeddings.token_embedding.weight")
    sd.pop("text_model.embeddings.position_ids", None)
    rows = sorted(used)
    sd["token_ids"] = torch.tensor(rows, dtype=torch.int64)
    sd["token_rows"] = table[rows].contiguous()

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(sd, OUT / "weights.safetensors")
    save_file(tensors, OUT / "cases.safetensors")
    (OUT / "cases.json").write_text(json.dumps(dict(config=CONFIG, cases=meta), indent=1) + "\n")
    print("wrote", OUT, "with", len(CASES), "cases")


if __name__ == "__main__":
    main()
