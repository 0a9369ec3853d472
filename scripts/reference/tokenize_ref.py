#!/usr/bin/env python3
"""Record llama.cpp's tokenizer outputs for q35-tokenizer's tests.

Loads SmolLM2-135M-Instruct's GGUF vocabulary in llama.cpp (through
llama-cpp-python, `vocab_only=True`) and writes a JSON fixture with:

* `cases`: for hand-picked texts (digits, punctuation, Unicode, whitespace,
  special tokens, a few KB of English) and for deterministic pseudo-random
  strings, the token ids of `llama_tokenize(text, add_special=False,
  parse_special)` for parse_special false and true;
* `pieces`: FNV-1a 64-bit hashes of `llama_token_to_piece(id, special=True)`
  for every token id (one hash per block of 1024 ids, each piece length-
  prefixed), so the Rust side can check every token's bytes without the
  fixture holding the whole vocabulary;
* `codepoints`: for every Unicode scalar value c, the ids of a probe string
  that puts c next to letters, digits, punctuation, spaces and tabs (see
  `codepoint_probe`), hashed per block of 4096 code points: this checks that
  the Unicode classes (letter / number / whitespace / other) agree with
  llama.cpp's tables wherever a difference would change the tokens;
* `chat`: chat-template renderings by llama-cpp-python's
  `Jinja2ChatFormatter` (Jinja2 configured as transformers does), with the
  token ids of the rendered prompt (parse_special = true).

CI does not run llama.cpp; the output is committed. Re-run with:

    python3 scripts/reference/tokenize_ref.py \
        [--model PATH] [--out runtime/tokenizer/tests/fixtures/llamacpp_tokenize.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import pathlib
import random

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / "runtime/tokenizer/tests/fixtures/llamacpp_tokenize.json"
ENGLISH = ROOT / "runtime/tokenizer/tests/fixtures/english.txt"

HAND_PICKED = [
    "Once upon a time, there was a little robot who",
    "",
    " ",
    "12345 and 3.14159",
    "In 2024, 1,000,000 people paid $3.50 (or 4.99€) at 10:30pm.",
    "x² + y³ = z½; ٣ ① Ⅻ",
    "Hello, world! How's it going? I'm fine; you're great, we've won, they'll see, he'd go.",
    "I'M DON'T 'tis 'Quoted' ''s",
    "naïve café 日本語 🤖",
    "Crème brûlée, Straße, Ελληνικά, русский, עברית, العربية, हिन्दी, 한국어",
    "emoji: 👍🏽 👨‍👩‍👧 🇫🇷 ✔️",
    "e\u0301 combining vs é precomposed",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "multiple   spaces    inside",
    "line one\nline two\n\nline four\n",
    "tabs\tand\t\tmore tabs\t",
    "windows\r\nline\r\nendings",
    "mixed \t \n whitespace\u000b\u000c\u0085 runs\u00a0nbsp\u3000ideographic",
    "\n\n\n",
    "    def f(x):\n        return x * 2  # comment\n",
    "<html><body class=\"main\">Text &amp; more</body></html>",
    "https://example.com/path?query=1&b=two#frag",
    "!!!???...,,,;;;:::---___***",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start",
    "a<repo_name>b<file_sep>c<jupyter_code>d<empty_output>",
    "Don't split <|im_end|> inside words:x<|im_end|>y",
    "\u200b\u200d\ufeff zero-width",
    "\U0001F600\U0001F601 \U00010400 \U0001D400 math",
    "private use \ue000 and \U000F0000",
    "\x00\x01\x7f control bytes",
]

ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    + list("0123456789")
    + list(" " * 8)
    + list("\n\t\r")
    + list(".,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S"]
    + list("éèüößñçøåÆ")
    + list("日本語中文한국")
    + list("²³½٣①Ⅻ")
    + ["\u0301", "\u00a0", "\u3000", "\u2003", "\u0085", "\u000b", "\u200b"]
    + ["🤖", "👍", "🏽", "\u200d", "€", "™", "©"]
    + ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_", "|>", "<"]
)


def random_cases(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(ALPHABET) for _ in range(k)))
    return out


def codepoint_probe(c: str) -> str:
    """Keep in sync with `codepoint_probe` in tests/llama_cpp.rs."""
    return f"a{c}a !{c}! 1{c}1  {c}\t{c}{c}"


def id_hash(h: int, ids: list[int]) -> int:
    """FNV-1a over 32-bit ids, each id one step, then a 0xFFFFFFFF terminator."""
    for t in ids + [0xFFFFFFFF]:
        h ^= t
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def piece(vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    return buf.raw[:n]


def fnv1a64(data: bytes, h: int = 0xCBF29CE484222325) -> int:
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.environ.get("Q35_SMOLLM2_GGUF", DEFAULT_MODEL))
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    llm = llama_cpp.Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    texts = HAND_PICKED + [ENGLISH.read_text(encoding="utf-8")] + random_cases(400, 35)
    cases = []
    for text in texts:
        b = text.encode("utf-8")
        cases.append(
            {
                "text": text,
                "plain": llm.tokenize(b, add_bos=False, special=False),
                "special": llm.tokenize(b, add_bos=False, special=True),
            }
        )

    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    block = 1024
    hashes = []
    for start in range(0, n_vocab, block):
        h = 0xCBF29CE484222325
        for t in range(start, min(start + block, n_vocab)):
            p = piece(vocab, t)
            h = fnv1a64(len(p).to_bytes(4, "little") + p, h)
        hashes.append(f"{h:016x}")

    cp_block = 4096
    cp_hashes = []
    for start in range(0, 0x110000, cp_block):
        h = 0xCBF29CE484222325
        for cp in range(start, start + cp_block):
            if 0xD800 <= cp <= 0xDFFF:
                continue
            text = codepoint_probe(chr(cp)).encode("utf-8")
            h = id_hash(h, llm.tokenize(text, add_bos=False, special=False))
        cp_hashes.append(f"{h:016x}")

    meta = llm.metadata
    template = meta["tokenizer.chat_template"]
    bos = piece(vocab, llm.token_bos()).decode()
    eos = piece(vocab, llm.token_eos()).decode()
    conversations = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "You are a pirate."},
            {"role": "user", "content": "Where is the treasure?"},
        ],
        [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?\n  Explain."},
        ],
        [],
    ]
    chat = []
    for msgs in conversations:
        for agp in (False, True):
            fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos, add_generation_prompt=agp)
            prompt = fmt(messages=msgs).prompt
            chat.append(
                {
                    "messages": [[m["role"], m["content"]] for m in msgs],
                    "add_generation_prompt": agp,
                    "prompt": prompt,
                    "ids": llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True),
                }
            )

    out = {
        "generator": "scripts/reference/tokenize_ref.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model": pathlib.Path(args.model).name,
        "n_vocab": n_vocab,
        "bos": llm.token_bos(),
        "eos": llm.token_eos(),
        "cases": cases,
        "pieces": {"block": block, "fnv1a64": hashes},
        "codepoints": {"block": cp_block, "fnv1a64": cp_hashes},
        "chat": chat,
    }
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path}: {len(cases)} cases, {len(chat)} chat renderings, {n_vocab} token pieces")


if __name__ == "__main__":
    main()
