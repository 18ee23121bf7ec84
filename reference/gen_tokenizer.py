"""Reference fixtures for the CLIP BPE tokenizer (crates/ssvp-backbones/src/clip/tokenizer.rs).

Run by hand (never by CI):
    /root/venvs/ssvp-ref/bin/pip install --no-deps clip-anytorch==2.6.0   # OpenAI's simple_tokenizer.py, MIT
    /root/venvs/ssvp-ref/bin/python reference/gen_tokenizer.py

Writes
- crates/ssvp-backbones/assets/html5_entities.tsv: Python's `html.entities.html5` table (WHATWG named character
  references), one `name<TAB>code points in hex` per line; the tokenizer embeds it to reproduce `html.unescape`
  and ftfy's entity decoding exactly.
- crates/ssvp-backbones/tests/fixtures/tokenizer/cases.json: a few hundred strings with OpenAI's `encode` ids and,
  for some, the padded/truncated 77-token rows. A case is flagged `ftfy_mojibake` when ftfy's encoding repair
  (`fix_encoding`, a statistical mojibake detector the Rust port does not implement) changes the text.
"""

import html.entities
import importlib.util
import json
import os
import random
from pathlib import Path


import ftfy

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "crates/ssvp-backbones/assets"
OUT = ROOT / "crates/ssvp-backbones/tests/fixtures/tokenizer"


def load_openai_tokenizer():
    import sys

    spec_path = None
    for p in sys.path:
        cand = Path(p) / "clip" / "simple_tokenizer.py"
        if cand.exists():
            spec_path = cand
            break
    spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", spec_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SimpleTokenizer()


def write_entities():
    lines = []
    for name in sorted(html.entities.html5):
        value = html.entities.html5[name]
        lines.append(name + "\t" + " ".join(f"{ord(c):X}" for c in value))
    (ASSETS / "html5_entities.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def handpicked():
    objects = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
               "screw", "tile", "toothbrush", "transistor", "wood", "zipper", "candle", "capsules", "cashew",
               "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
    states = ["flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
              "damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage"]
    out = [
        "a photo of a damaged bottle.",
        "a photo of a flawless metal_nut.",
        "A person riding a motorcycle",
        "I'm fine, thanks!",
        "hello world!!!",
        "pcb1 with defect",
        "  Multiple   SPACES\tand &amp; html  ",
        "",
        "   ",
        "X X X X X a photo of a X object.",
        "don't won't can't I've we'll they'd she's it's",
        "DON'T WON'T IT'S WE'VE THEY'LL",
        "don’t “quoted” ‘single’ ‚low‛ „double‟",
        "numbers 0123456789 3.14159 1e-5 -42 +7 100%",
        "symbols ~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
        "<|startoftext|> inline specials <|endoftext|>",
        "<|endoftext|>",
        "café naïve Zürich façade jalapeño",
        "Ελληνικά κείμενα ΣΊΣΥΦΟΣ ΟΔΟΣ",
        "русский текст и ЁЖ",
        "日本語のテキストです",
        "中文文本测试",
        "한국어 텍스트",
        "emoji 🙂👍🏽🇩🇪 ❤️",
        "combining e\u0301 a\u0308 n\u0303 vs é ä ñ",
        "angstrom \u212b kelvin \u212a ohm \u2126",
        "fullwidth ＡＢＣ１２３！ and\u3000ideographic space",
        "halfwidth ｶﾀｶﾅ ﾊﾝｸﾞﾙ ￡￥",
        "ligatures ﬁne ﬂow ﬀ ﬃ ﬄ ﬅ ﬆ Ĳssel ǅ",
        "İstanbul ǲ ǈ ß ẞ ŉ",
        "html &amp; &lt;b&gt; &quot;hi&quot; &#39; &#x27; &nbsp;x &copy; &eacute; &EACUTE; &NTILDE;",
        "triple &amp;amp;amp;amp; escaped",
        "no semicolon &amp &lt &copy2 &ampx AT&T &notit; &notin; &not",
        "numeric &#0; &#9; &#13; &#128; &#150; &#x80; &#x110000; &#xD800; &#12ab; &#65 &#x41",
        "angle < brackets &amp; disable ftfy unescape",
        "line one &amp;amp;\n<line two> &amp;amp;\nline three &amp;amp;",
        "crlf\r\nand\rcr and\u2028ls\u2029ps\u0085nel",
        "controls \x00\x01\x08\x0b\x0c\x0e\x1b\x1f\x7f kept?",
        "ansi \x1b[31mred\x1b[0m \x1b[1;4mbold\x1b[m",
        "c1 \x80 \x93quoted\x94 \x81 \x9d",
        "bom \ufeffstart and \u206a\ufff9\ufffc",
        "nbsp\u00a0here thin\u2009space zero\u200bwidth",
        "tabs\t\tand\n\nnewlines\x0bvt\x0cff",
        "mixedCASE CamelCase snake_case kebab-case",
        "a" * 300,
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "http://example.com/path?q=1&x=2#frag user@mail.org",
        "C++ C# F# .NET node.js",
        "1st 2nd 3rd 4th 21st",
        "𝒥ohn ℋancock 𝟙𝟚𝟛",
        "a\u0301\u0301 stacked combining",
        "Hangul jamo \u1100\u1161\u11a8 compose",
        "arabic العربية hebrew עברית",
        "thai ภาษาไทย devanagari हिन्दी",
    ]
    for o in objects:
        for s in states:
            out.append("a photo of a " + s.format(o.replace("_", " ")) + ".")
            out.append("a cropped photo of the " + s.format(o) + ".")
    long_words = " ".join(f"word{i}" for i in range(80))
    out.append(long_words)
    out.append("A very long prompt " + "that keeps going and going " * 20)
    return out


def randomized(n, seed):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        " \t\n",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
        "éèêëàâäôöùûüçñßøåæœ ÉÀÖÜ",
        "αβγδεζηθλμπσςΣΩ",
        "абвгдежзийклмнопрстуфхцчшщъыьэюя",
        "日本語中文字测试",
        "’“”…—–•€™",
        "🙂👍🏽❤",
    ]
    words = ["photo", "defect", "scratch", "&amp;", "&lt;", "&#39;", "'s", "'ll", "n't", "ﬁ", "ＡＢ", "e\u0301"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.2:
                parts.append(rng.choice(words))
            else:
                pool = rng.choice(pools)
                parts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 8))))
        out.append(rng.choice(["", " ", "  "]).join(parts))
    return out


def main():
    ASSETS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    write_entities()
    tok = load_openai_tokenizer()
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    cases = []
    for text in handpicked() + randomized(260, seed=20260101):
        ids = tok.encode(text)
        mojibake = ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False)
        case = {"text": text, "ids": ids, "ftfy_mojibake": mojibake}
        full = [sot] + ids + [eot]
        if len(full) > 77:
            row = full[:77]
            row[-1] = eot
            case["truncated77"] = row
        cases.append(case)
    # decode of a few known sequences
    decode = [{"ids": c["ids"], "text": tok.decode(c["ids"])} for c in cases[:12]]
    doc = {
        "source": "openai/CLIP simple_tokenizer.py via clip-anytorch 2.6.0; ftfy " + ftfy.__version__,
        "context_length": 77,
        "cases": cases,
        "decode": decode,
    }
    (OUT / "cases.json").write_text(json.dumps(doc, ensure_ascii=True, indent=0) + "\n")
    flagged = [c["text"] for c in cases if c["ftfy_mojibake"]]
    print(f"{len(cases)} cases, {len(flagged)} flagged as ftfy mojibake repairs: {flagged!r}")
    print("fixture bytes:", os.path.getsize(OUT / "cases.json"))


if __name__ == "__main__":
    main()
